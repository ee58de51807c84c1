"""Segment a scan with a trained model: score → threshold → mask → pore table (design note §1).

>>> seg = segment(volume, PoreModel.load("models/unet"))          # doctest: +SKIP
>>> seg.mask.sum(), len(seg.pores)                                 # doctest: +SKIP
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

from porelab.errors import ConfigError


@dataclass
class Segmentation:
    """The result of :func:`segment`.

    Attributes
    ----------
    score : float32 (z, y, x), higher = more likely pore; NaN at missing voxels (possibly a memmap).
    mask : bool (z, y, x), ``score >= threshold``.
    threshold : the threshold used.
    spacing : voxel size (z, y, x) in mm, (1, 1, 1) when unknown.
    info : what ``PoreModel.predict`` reports (normalisation levels, λ*, σ*, ``nonfinite_voxels``, skin).
    pores : the per-pore table of ``mask`` (``porelab.pores.pore_table``), computed when first read.
    """

    score: np.ndarray
    mask: np.ndarray
    threshold: float
    spacing: tuple = (1.0, 1.0, 1.0)
    info: dict = field(default_factory=dict)

    @functools.cached_property
    def pores(self) -> list[dict]:
        from porelab.pores import pore_table

        return pore_table(self.mask, spacing=self.spacing)


def segment(scan, model, *, threshold: float | None = None, skin: int | None = None, progress: bool = False,
            out: np.ndarray | None = None, device=None) -> Segmentation:
    """Score ``scan`` with ``model`` and threshold the score.

    Parameters
    ----------
    scan : np.ndarray (z, y, x) or ``porelab.io.Volume``
        Raw grey values (a Volume's spacing goes to the pore table).
    model : ``porelab.model.PoreModel``
    threshold : float, optional
        Decision threshold (default: the model's own).
    skin : int, optional
        Voxels below the part's surface that are not scored (default: the model's).
    out : np.ndarray float32, optional
        Receives the score (e.g. an ``np.memmap`` for scans larger than memory).

    Returns
    -------
    Segmentation
    """
    from porelab.io import Volume, iter_slabs

    if threshold is not None and not math.isfinite(threshold):
        raise ConfigError(f"threshold must be a finite number, got {threshold}")
    if skin is not None:
        if skin < 0:
            raise ConfigError(f"skin must be >= 0 voxels, got {skin}")
        model = model.replace(skin=int(skin))
    spacing = (1.0, 1.0, 1.0)
    if isinstance(scan, Volume):
        spacing = tuple(scan.spacing) if scan.spacing_known else spacing
        scan = scan.array
    thr = model.threshold if threshold is None else float(threshold)
    score, info = model.predict(scan, progress=progress, out=out, device=device, return_info=True)
    mask = np.empty(np.shape(score), dtype=bool)
    for sl in iter_slabs(mask.shape):
        mask[sl] = np.asarray(score[sl]) >= thr
    return Segmentation(score, mask, thr, spacing, info)


__all__ = ["Segmentation", "segment"]
