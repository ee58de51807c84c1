"""What every classical row shares: the part it scores (the nets' skin suppression), the fitted predictor,
and the label-free criterion its choices are made with.

Label-free criterion. A row's free parameters (a radius, a window, a pre-filter) are chosen on the training
scans by the mean voxel AP of its score against Algorithm 1 labels (Iuso et al. 2024, Algorithm 1, computed
from each scan's own grey values), counted inside the skin-suppressed part: the paper's own route to a
reference without ground truth. The truth never enters a choice; ``criterion="truth"`` exists only to report
what a choice made with the truth would have been (``benchmarks/quality.py --truth-optimal``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from porelab.errors import ConfigError

#: the choice criteria: ``alg1`` (label-free, the default) and ``truth`` (reporting only)
CRITERIA = ("alg1", "truth")


@dataclass
class Predictor:
    """A fitted classical row: ``predictor(scan) -> score`` (float32, the scan's shape, 0 outside the part's
    interior), with the parameters its fit chose (plain values, for tables and logs)."""

    name: str
    params: dict
    score: Callable = field(repr=False)
    model: object = field(default=None, repr=False)   # a fitted estimator, when the row has one

    def __call__(self, scan) -> np.ndarray:
        return self.score(scan)


def skin_of(profile) -> int:
    """Voxels of skin suppression: the profile's (``Profile.skin``), else ``postprocess.DEFAULT_SKIN``."""
    from porelab.postprocess import DEFAULT_SKIN

    return int(DEFAULT_SKIN if profile is None else profile.skin)


def interior(scan, skin: int) -> np.ndarray:
    """The voxels a row may score (bool): the part more than ``skin`` voxels below its surface, found from
    the raw scan alone (``porelab.postprocess.interior_mask``, exactly the nets' skin suppression); with
    ``skin`` 0 the whole part (``porelab.labels.object_mask``). Neither the truth nor the dataset's object
    mask is used."""
    from porelab.postprocess import interior_mask

    keep = interior_mask(scan.raw, skin)
    if keep is None:
        from porelab.labels import object_mask
        from porelab.normalise import fill_nonfinite

        keep = object_mask(fill_nonfinite(np.asarray(scan.raw))[0])
    return np.asarray(keep, dtype=bool)


def reference(scan, keep: np.ndarray, criterion: str) -> np.ndarray:
    """The mask a choice is scored against inside ``keep``: Algorithm 1 labels (``alg1``) or the truth
    (``truth``, reporting only)."""
    if criterion not in CRITERIA:
        raise ConfigError(f"unknown choice criterion {criterion!r}; available: {', '.join(CRITERIA)}")
    if criterion == "alg1":
        labels = scan.alg1
    else:     # only a porelab.crossval.LabelledScan carries labels: the pipeline's scans cannot reach here
        labels = getattr(scan, "truth", None)
        if labels is None:
            raise ConfigError(f"criterion 'truth' needs scans with labels (porelab.crossval.labelled); "
                              f"{scan.name} has none")
    return np.asarray(labels, dtype=bool) & keep


def mean_ap(scores: Sequence[np.ndarray], refs: Sequence[np.ndarray], keeps: Sequence[np.ndarray]) -> float:
    """Mean over scans of the voxel AP of ``score`` against ``ref`` inside ``keep`` (scans whose reference is
    empty inside ``keep`` are skipped; NaN when all are)."""
    from porelab.metrics import average_precision

    aps = [average_precision(s, r, mask=k) for s, r, k in zip(scores, refs, keeps) if r[k].any()]
    return float(np.mean(aps)) if aps else float("nan")


def argbest(values: dict) -> object:
    """The key of the largest value; ties go to the first key in insertion order (NaN never wins)."""
    best, best_v = None, -np.inf
    for key, v in values.items():
        if best is None or (np.isfinite(v) and v > best_v):
            best, best_v = key, (v if np.isfinite(v) else -np.inf)
    return best


__all__ = ["CRITERIA", "Predictor", "argbest", "interior", "mean_ap", "reference", "skin_of"]
