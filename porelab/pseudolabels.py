"""Pseudo-labels: the unsupervised model's decisions turned into training labels for the supervised nets."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from porelab.errors import ConfigError


def pseudo_labels(scans: Sequence, predict: Callable[[np.ndarray], np.ndarray], *, threshold: float,
                  min_voxels: int = 1, min_extent: int = 1,
                  references: dict | None = None) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """Pseudo-labels of scans from a pore score: the best unsupervised model labels the training scans of the
    supervised nets (Iuso et al. 2024, §4.6 and §5.4).

    Each scan is scored (``predict(scan.raw)``), thresholded (``score >= threshold``) inside the part
    (``scan.object``), and connected pores smaller than ``min_voxels`` voxels or spanning fewer than
    ``min_extent`` voxels along an axis are removed (``porelab.labels.suppress_small``). Missing voxels (a
    NaN score) are never labelled.

    Parameters
    ----------
    scans : sequence of ``porelab.crossval.Scan``
        Labels are made for the scans of role ``"cv"``; the others (the hard scan) are scored for the
        statistics only: they are never training labels.
    predict : callable
        Raw float32 (z, y, x) scan → score of the same shape (a ``PoreModel.predict`` or a pyfunc model's).
    threshold, min_voxels, min_extent : float, int, int
    references : dict, optional
        Scan name → ``porelab.crossval.Reference`` (the dataset's labels): read only for the statistics
        against them, after the labels are made.

    Returns
    -------
    labels : dict
        Scan name → bool mask, for the cv scans.
    stats : dict
        Scan name → ``role``, ``porosity_percent`` (labelled voxels / part), ``true_porosity_percent``,
        ``pore_count`` (6-connected components), ``dice_vs_truth``, ``dice_vs_alg1`` and
        ``alg1_dice_vs_truth`` (inside the part; those against the labels inside the reference's region, NaN
        for a scan without a reference).
    """
    from scipy import ndimage

    from porelab.labels import suppress_small
    from porelab.metrics import dice

    labels, stats = {}, {}
    for s in scans:
        score = np.asarray(predict(s.raw), dtype=np.float32)
        if score.shape != s.raw.shape:
            raise ConfigError(f"pseudo-labels: predicted shape {score.shape} != scan shape {s.raw.shape} "
                              f"({s.name})")
        mask = suppress_small((score >= threshold) & s.object, min_voxels=int(min_voxels),
                              min_extent=int(min_extent))
        n_obj = int(s.object.sum())
        ref = (references or {}).get(s.name)
        nan = float("nan")    # a scan without labels: the statistics against them are NaN
        stats[s.name] = {
            "role": s.role, "porosity_percent": 100.0 * int(mask.sum()) / max(n_obj, 1),
            "pore_count": int(ndimage.label(mask)[1]),
            "dice_vs_alg1": float(dice(mask.astype(np.float32), s.alg1, 0.5, mask=s.object)),
            "true_porosity_percent": nan, "dice_vs_truth": nan, "alg1_dice_vs_truth": nan,
        }
        if ref is not None:   # reporting, after the labels are made
            truth, region = ref.labels, ref.region
            stats[s.name].update({
                "true_porosity_percent": 100.0 * int((truth & region).sum()) / max(int(region.sum()), 1),
                "dice_vs_truth": float(dice(mask.astype(np.float32), truth, 0.5, mask=region)),
                "alg1_dice_vs_truth": float(dice(s.alg1.astype(np.float32), truth, 0.5, mask=region)),
            })
        if s.role == "cv":
            labels[s.name] = mask
    return labels, stats


__all__ = ["pseudo_labels"]
