"""The black top-hat row: grey closing with a ball minus the (pre-filtered) scan, inside the part's interior.

A pore is a dark blob; a grey closing with a ball that cannot enter the blob fills it to the level of the
metal around it, so ``closing − x`` is the blob's depth there and ≈ 0 in the metal. The ball must be larger
than the pores (too small: large pores are only partly filled) and no larger than needed (every extra voxel
of radius lets more of the noise's local maxima into the closing and costs r³ in time).

Label-free choices on the training scans (:func:`fit_tophat`):

* **radius** from the scans' own structure: the smallest ball radius whose closing fills the
  99th-percentile Algorithm 1 component (:func:`structure_radius`). A ball of radius ``r`` fits in a component
  exactly when some voxel of it lies more than ``r`` from every voxel outside it (Euclidean distance
  transform), so the closing fills the component when ``r ≥`` its largest distance;
* **pre-filter σ** (Gaussian, voxels) from :data:`SMOOTH_GRID` by the mean AP against Algorithm 1 labels inside
  the interior (``porelab.baselines._common``).
"""

from __future__ import annotations

import math

import numpy as np

from porelab.baselines._common import Predictor, argbest, interior, mean_ap, reference, skin_of
from porelab.config import TOPHAT_RADIUS

#: pre-filter σ (voxels) the fit chooses from; 0.7 is the VAEs' pre-filter (``postprocess.DEFAULT_SMOOTH``)
SMOOTH_GRID = (0.0, 0.5, 0.7, 1.0)
#: ball radii a truth-optimal choice (reporting only) searches
RADIUS_GRID = (2, 3, 4, 5, 6, 7)
#: percentile of the Algorithm 1 components' inscribed radii the ball must fill
RADIUS_PERCENTILE = 99.0


def tophat_score(x: np.ndarray, part: np.ndarray, *, radius: int = TOPHAT_RADIUS,
                 smooth: float | None = None) -> np.ndarray:
    """Black top-hat of a normalised scan inside ``part``: grey closing (ball of ``radius``) minus the scan.

    Dark holes smaller than the ball light up: a classical pore score. The scan is first Gaussian-filtered
    with ``smooth`` (voxels; default the VAEs' pre-filter ``porelab.postprocess.DEFAULT_SMOOTH``; 0: none).

    Parameters
    ----------
    x : np.ndarray float (z, y, x)
        The normalised scan.
    part : np.ndarray bool (z, y, x)
        Where to score (the part's interior); the score is 0 elsewhere.

    Returns
    -------
    np.ndarray float32, ≥ 0.
    """
    from scipy import ndimage
    from skimage.morphology import ball

    from porelab.postprocess import DEFAULT_SMOOTH

    smooth = DEFAULT_SMOOTH if smooth is None else float(smooth)
    x = np.asarray(x, dtype=np.float32)
    x = ndimage.gaussian_filter(x, smooth, mode="nearest") if smooth > 0 else x
    closed = ndimage.grey_closing(x, footprint=ball(int(radius)))
    return np.where(part, closed - x, 0.0).astype(np.float32)


def inscribed_radii(mask: np.ndarray) -> np.ndarray:
    """Per 6-connected component of ``mask``: its largest Euclidean distance to a voxel outside it (float).

    A ball of radius ``r`` (``skimage.morphology.ball``) fits inside a component iff this exceeds ``r``."""
    from scipy import ndimage

    from porelab.labels import SIX_CONNECTED

    lab, n = ndimage.label(mask, structure=SIX_CONNECTED)
    if n == 0:
        return np.zeros(0)
    edt = ndimage.distance_transform_edt(mask)
    return np.asarray(ndimage.maximum(edt, lab, index=np.arange(1, n + 1)), dtype=float)


def structure_radius(masks, percentile: float = RADIUS_PERCENTILE) -> int:
    """The smallest integer ball radius whose closing fills the ``percentile``-th component of ``masks``
    (pooled over scans; :func:`inscribed_radii`), at least 1; :data:`porelab.config.TOPHAT_RADIUS` when the
    masks hold no component."""
    radii = np.concatenate([inscribed_radii(m) for m in masks]) if masks else np.zeros(0)
    if radii.size == 0:
        return int(TOPHAT_RADIUS)
    return max(1, math.ceil(float(np.percentile(radii, percentile)) - 1e-9))


def fit_tophat(train_scans, profile=None, *, seed: int = 0, criterion: str = "alg1",
               smooth_grid=SMOOTH_GRID, radius_grid=RADIUS_GRID) -> Predictor:
    """Choose the top-hat's radius and pre-filter on ``train_scans``; return its predictor.

    ``alg1`` (label-free, the default): radius by :func:`structure_radius` of the Algorithm 1 labels inside
    the interior, then σ from ``smooth_grid`` by mean AP against those labels. ``truth`` (reporting only):
    σ by AP against the truth at that radius, then the radius from ``radius_grid`` at that σ.
    The predictor scores :func:`tophat_score` of the normalised scan inside its interior (skin suppressed
    like the nets' scores, ``Profile.skin``). ``seed`` is unused (nothing random).
    """
    skin = skin_of(profile)
    keeps = [interior(s, skin) for s in train_scans]
    alg1 = [reference(s, k, "alg1") for s, k in zip(train_scans, keeps)]
    refs = alg1 if criterion == "alg1" else [reference(s, k, criterion) for s, k in zip(train_scans, keeps)]

    def ap(radius, smooth):
        return mean_ap([tophat_score(s.scan, k, radius=radius, smooth=smooth) for s, k in zip(train_scans, keeps)],
                       refs, keeps)

    radius = structure_radius(alg1)
    by_smooth = {float(sm): ap(radius, sm) for sm in smooth_grid}
    smooth = float(argbest(by_smooth))
    params = {"radius": radius, "smooth": smooth, "skin": skin, "criterion": criterion,
              "ap_by_smooth": {str(k): v for k, v in by_smooth.items()}}
    if criterion != "alg1":
        by_radius = {r: (by_smooth[smooth] if r == radius else ap(r, smooth)) for r in radius_grid}
        radius = int(argbest(by_radius))
        params.update(radius=radius, ap_by_radius={str(k): v for k, v in by_radius.items()})

    def score(scan):
        return tophat_score(scan.scan, interior(scan, skin), radius=radius, smooth=smooth)

    return Predictor("black top-hat", params, score)


__all__ = ["RADIUS_GRID", "SMOOTH_GRID", "fit_tophat", "inscribed_radii", "structure_radius", "tophat_score"]
