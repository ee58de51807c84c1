"""The local adaptive threshold row: Sauvola's threshold in 3-D, turned into a score.

Sauvola & Pietikäinen (2000) threshold every voxel against the mean ``m`` and standard deviation ``s`` of a
window around it::

    T = m · (1 + k · (s / R − 1))

(``skimage.filters.threshold_sauvola``, n-D, odd window). ``R`` is the dynamic range of ``s``; on porelab's
normalised scans (air 0, metal 0.8, ``porelab.normalise``) it is fixed at half the air-metal contrast,
:data:`SAUVOLA_R` = 0.4 (Sauvola's 128 of 255 grey levels), so that one ``k`` means the same on every scan.
A voxel below ``T`` is dark for its neighbourhood; the score is ``max(0, T − x) / 0.8``, the margin in units
of the metal's grey level (higher = more likely pore; clipped at 0 so that voxels above their threshold tie
with the suppressed skin instead of ranking below it).

``T`` is linear in ``k``: ``T(k) = m + k · m · (s / R − 1)``, so two calls per window (``k`` = 0 and 1) give
the threshold of every ``k`` of :data:`K_GRID`. Window and ``k`` are chosen label-free on the training scans
by the mean AP against Algorithm 1 labels inside the interior (:func:`fit_sauvola`).
"""

from __future__ import annotations

import numpy as np

from porelab.baselines._common import Predictor, argbest, interior, mean_ap, reference, skin_of

#: window edges (voxels, odd) the fit chooses from
WINDOW_GRID = (7, 11, 15, 21, 31)
#: Sauvola's k the fit chooses from
K_GRID = (0.05, 0.1, 0.2, 0.3, 0.5)
#: R of Sauvola's formula on normalised scans: half the air (0) - metal (0.8) contrast
SAUVOLA_R = 0.4
_METAL = 0.8


def _mean_and_slope(x: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """``(m, m · (s / R − 1))`` of Sauvola's formula from two ``threshold_sauvola`` calls (k = 0 and 1)."""
    from skimage.filters import threshold_sauvola

    m = threshold_sauvola(x, window_size=int(window), k=0.0, r=SAUVOLA_R)
    t1 = threshold_sauvola(x, window_size=int(window), k=1.0, r=SAUVOLA_R)
    return m, t1 - m


def sauvola_score(x: np.ndarray, part: np.ndarray, *, window: int = 15, k: float = 0.2) -> np.ndarray:
    """``max(0, T − x) / 0.8`` inside ``part`` (0 elsewhere), ``T`` Sauvola's threshold of the normalised scan
    ``x`` in a cubic ``window`` (odd) with ``k``, float32 (Sauvola & Pietikäinen 2000)."""
    x = np.asarray(x, dtype=np.float32)
    m, slope = _mean_and_slope(x, window)
    return _score(x, part, m, slope, k)


def _score(x, part, m, slope, k) -> np.ndarray:
    t = m + float(k) * slope
    return np.where(part, np.maximum(t - x, 0.0) / _METAL, 0.0).astype(np.float32)


def fit_sauvola(train_scans, profile=None, *, seed: int = 0, criterion: str = "alg1",
                windows=WINDOW_GRID, ks=K_GRID) -> Predictor:
    """Choose Sauvola's window and ``k`` on ``train_scans`` (every pair of ``windows`` × ``ks``) by the mean AP of :func:`sauvola_score` against Algorithm 1 labels inside the interior
    (``criterion="truth"``: against the truth, reporting only); the predictor scores the normalised scan
    inside its interior (skin suppressed like the nets' scores). ``seed`` is unused (nothing random)."""
    skin = skin_of(profile)
    keeps = [interior(s, skin) for s in train_scans]
    refs = [reference(s, k, criterion) for s, k in zip(train_scans, keeps)]
    xs = [np.asarray(s.scan, dtype=np.float32) for s in train_scans]
    grid = {}
    for w in windows:
        parts = [_mean_and_slope(x, w) for x in xs]
        for k in ks:
            grid[(w, k)] = mean_ap([_score(x, kp, m, sl, k) for x, kp, (m, sl) in zip(xs, keeps, parts)],
                                   refs, keeps)
    window, k = argbest(grid)
    params = {"window": int(window), "k": float(k), "r": SAUVOLA_R, "skin": skin, "criterion": criterion,
              "ap_grid": {f"{w},{kk}": v for (w, kk), v in grid.items()}}

    def score(scan):
        return sauvola_score(scan.scan, interior(scan, skin), window=window, k=k)

    return Predictor("Sauvola threshold", params, score)


__all__ = ["K_GRID", "SAUVOLA_R", "WINDOW_GRID", "fit_sauvola", "sauvola_score"]
