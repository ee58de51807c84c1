"""The pore report: per-pore table (size, shape, kind, distance to the surface), porosity %, size
percentiles, histogram and slice overlay.

What users otherwise click together in VGSTUDIO MAX / Dragonfly / porespy, with every definition stated:
:mod:`porelab.pores.table` (the per-pore numbers), :mod:`porelab.pores.shape` (Wadell sphericity of the
smoothed surface, principal axes), :mod:`porelab.pores.kinds` (gas / keyhole / lack of fusion / surface),
:mod:`porelab.pores.report` (``summary.json``, ``pores.csv``, figures).
"""

from porelab.pores.kinds import KINDS
from porelab.pores.report import summarise, write_report
from porelab.pores.table import COLUMNS, check_binary_file, pore_table

__all__ = ["COLUMNS", "KINDS", "check_binary_file", "pore_table", "summarise", "write_report"]
