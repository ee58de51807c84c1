"""The pixel-classification row: a random forest on multiscale filter features, trained on Algorithm 1 labels.

This is the workflow CT users run in ilastik's pixel classification (Berg et al. 2019, "ilastik: interactive
machine learning for (bio)image analysis"): a bank of Gaussian-derived filters at several scales per voxel
and a random forest that maps them to a class probability. Here the labels are not drawn by hand but are
Algorithm 1's (Iuso et al. 2024) on the training scans, so the row is label-free, and its probability of the
pore class is the score.

Features (:func:`voxel_features`), per σ in :data:`SIGMAS`: the Gaussian-smoothed intensity, its gradient
magnitude (Sobel) and the three Hessian eigenvalues (``skimage.feature.multiscale_basic_features``, 3-D,
``channel_axis=None``), plus the differences of Gaussians between consecutive σ: 17 features.

Training (:func:`fit_forest`): inside each training scan's interior (the nets' skin suppression), every
Algorithm 1 pore voxel up to :data:`MAX_PORE_VOXELS` in all (an equal share per scan, drawn at random) and
as many part voxels drawn at random from the rest: a balanced sample, so the forest's probability is not
swamped by the metal (pores are < 1 % of the part). ``RandomForestClassifier(n_estimators=50,
max_depth=12, n_jobs=1)``, seeded.

Prediction slab by slab (``porelab.io.iter_slabs``) over the interior's bounding box: each slab's features
are computed on the slab grown by :func:`halo` voxels (the filters' reach), so they equal the whole-volume
computation voxel for voxel, and only interior voxels go through the forest.
"""

from __future__ import annotations

import numpy as np

from porelab.baselines._common import Predictor, interior, reference, skin_of

#: Gaussian scales (voxels) of the features; the simulator's and the AM parts' gas pores are 1-4 voxels in radius
SIGMAS = (0.7, 1.4, 2.8)
#: forest size and depth (ilastik uses 100 trees; 50 of depth 12 lose nothing measurable here and halve the time)
N_ESTIMATORS = 50
MAX_DEPTH = 12
#: Algorithm 1 pore voxels drawn for training, over all training scans (as many part voxels are added)
MAX_PORE_VOXELS = 20_000
#: voxels per prediction slab (before the halo); 17 float32 features per voxel: 136 MB per 2 M voxels
SLAB_VOXELS = 1 << 21
#: scipy's Gaussian reaches ``int(4 σ + 0.5)`` voxels (truncate 4)
_TRUNCATE = 4.0


def halo(sigmas=SIGMAS) -> int:
    """Voxels a feature at one voxel depends on along each axis: the largest Gaussian's reach plus the Sobel
    filter (1) and the Hessian's two nested central differences (2)."""
    return int(_TRUNCATE * max(sigmas) + 0.5) + 3


def voxel_features(x: np.ndarray, sigmas=SIGMAS) -> np.ndarray:
    """Multiscale filter features of a (z, y, x) volume, float32 (z, y, x, 5·len(sigmas) + len(sigmas) − 1).

    ``skimage.feature.multiscale_basic_features`` at ``sigmas`` (intensity, Sobel edges, Hessian eigenvalues
    per σ; one thread) followed by the differences of consecutive Gaussian intensities (DoG)."""
    from skimage.feature import multiscale_basic_features

    sig = np.asarray(sigmas, dtype=float)
    f = multiscale_basic_features(np.asarray(x, dtype=np.float32), intensity=True, edges=True, texture=True,
                                  sigma_min=float(sig[0]), sigma_max=float(sig[-1]), num_sigma=len(sig),
                                  workers=1, channel_axis=None)
    per = f.shape[-1] // len(sig)                 # intensity, edges, 3 eigenvalues per σ, in σ order
    gauss = f[..., ::per]
    dog = gauss[..., 1:] - gauss[..., :-1]
    return np.concatenate([f, dog], axis=-1).astype(np.float32, copy=False)


def _bbox(keep: np.ndarray) -> tuple[slice, ...] | None:
    """Bounding box of the ``True`` voxels, or ``None``."""
    from scipy import ndimage

    boxes = ndimage.find_objects(keep.astype(np.uint8))
    return boxes[0] if boxes and boxes[0] is not None else None


def slab_features(x: np.ndarray, keep: np.ndarray, *, sigmas=SIGMAS, max_voxels: int = SLAB_VOXELS):
    """Yield ``(box, features)`` over the bounding box of ``keep``, slab by slab along z: ``box`` is a tuple
    of slices of the volume, ``features`` (:func:`voxel_features`) of that box, computed on the box grown by
    :func:`halo` voxels within the volume and cropped, so equal to the whole-volume features there."""
    bb = _bbox(keep)
    if bb is None:
        return
    h = halo(sigmas)
    shape = np.shape(x)
    zs, ys, xs = bb
    inner = (zs.stop - zs.start, ys.stop - ys.start, xs.stop - xs.start)
    for sl in _iter_slabs(inner, max_voxels):
        box = (slice(zs.start + sl.start, zs.start + sl.stop), ys, xs)
        lo = [max(0, b.start - h) for b in box]
        hi = [min(n, b.stop + h) for b, n in zip(box, shape)]
        f = voxel_features(x[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], sigmas)
        crop = tuple(slice(b.start - l0, b.stop - l0) for b, l0 in zip(box, lo))
        yield box, f[crop]


def _iter_slabs(shape, max_voxels):
    from porelab.io import iter_slabs

    return iter_slabs(shape, max_voxels)


def _sample(keep: np.ndarray, pores: np.ndarray, n_max: int, rng) -> np.ndarray:
    """A bool mask of up to ``n_max`` pore voxels and as many non-pore voxels of ``keep``, drawn at random."""
    pos = np.flatnonzero(pores & keep)
    neg = np.flatnonzero(keep & ~pores)
    n = min(len(pos), int(n_max), len(neg))
    chosen = np.zeros(keep.size, dtype=bool)
    if n:
        chosen[rng.choice(pos, n, replace=False)] = True
        chosen[rng.choice(neg, n, replace=False)] = True
    return chosen.reshape(keep.shape)


def fit_forest(train_scans, profile=None, *, seed: int = 0, criterion: str = "alg1",
               max_pore_voxels: int = MAX_PORE_VOXELS, n_estimators: int = N_ESTIMATORS,
               max_depth: int = MAX_DEPTH, max_voxels: int = SLAB_VOXELS) -> Predictor:
    """Train the forest on Algorithm 1 labels of ``train_scans`` (``criterion="truth"``: on the truth,
    reporting only) and return its predictor: the forest's pore probability inside the scan's interior,
    0 elsewhere, predicted slab by slab (``max_voxels`` per slab)."""
    from sklearn.ensemble import RandomForestClassifier

    skin = skin_of(profile)
    rng = np.random.default_rng(seed)
    share = max(1, int(max_pore_voxels) // max(1, len(train_scans)))
    feats, ys = [], []
    for s in train_scans:
        keep = interior(s, skin)
        pores = reference(s, keep, criterion)
        chosen = _sample(keep, pores, share, rng)
        if not chosen.any():
            continue
        for box, f in slab_features(s.scan, chosen, max_voxels=max_voxels):
            c = chosen[box]
            feats.append(f[c])
            ys.append(pores[box][c])
    params = {"sigmas": list(SIGMAS), "n_estimators": int(n_estimators), "max_depth": int(max_depth),
              "skin": skin, "criterion": criterion, "seed": int(seed)}
    y = np.concatenate(ys) if ys else np.zeros(0, dtype=bool)
    params["training_voxels"] = int(y.size)
    params["training_pore_voxels"] = int(y.sum())
    if y.size == 0 or y.all() or not y.any():
        forest = None                      # no pore (or no metal) to learn from: the score is 0 everywhere
    else:
        forest = RandomForestClassifier(n_estimators=int(n_estimators), max_depth=int(max_depth), n_jobs=1,
                                        random_state=int(seed))
        forest.fit(np.concatenate(feats), y)

    def score(scan):
        return forest_score(forest, scan.scan, interior(scan, skin), max_voxels=max_voxels)

    return Predictor("random forest (Alg. 1 labels)", params, score, forest)


def forest_score(forest, x: np.ndarray, keep: np.ndarray, *, max_voxels: int = SLAB_VOXELS) -> np.ndarray:
    """The forest's pore probability at every voxel of ``keep`` (0 elsewhere), float32, slab by slab."""
    out = np.zeros(np.shape(x), dtype=np.float32)
    if forest is None:
        return out
    pore_col = int(np.flatnonzero(forest.classes_ == True)[0])
    for box, f in slab_features(x, keep, max_voxels=max_voxels):
        k = keep[box]
        if k.any():
            view = out[box]
            view[k] = forest.predict_proba(f[k])[:, pore_col]
    return out


__all__ = ["MAX_DEPTH", "MAX_PORE_VOXELS", "N_ESTIMATORS", "SIGMAS", "fit_forest", "forest_score", "halo",
           "slab_features", "voxel_features"]
