"""The unsupervised anomaly score and the paper's surface compensation (Iuso et al. 2024, Sect. 3.4).

A VAE reconstructs the smooth interior of a part well but never its surface, so the raw anomaly score
``A = |x − x̂|`` is high along the whole skin of the part. The paper suppresses that band by subtracting a
blurred map of the reconstruction's derivatives::

    D        = |∂x V̂| + |∂y V̂| + |∂z V̂|                                   (Sect. 3.4)
    A_pores  = max(0, A − λ* G_σ*(D))                                         eq. (2)
    λ*, σ*   = argmin_{λ>0, σ>0} mean |A − λ G_σ(D)|                          eq. (3)

How porelab solves eq. (3)
--------------------------
For a fixed σ the objective ``Σ_i |a_i − λ g_i|`` (``g = G_σ(D) ≥ 0``) equals ``Σ_i g_i |a_i/g_i − λ|`` plus
a constant (voxels with ``g_i = 0``), so its minimiser is the **weighted median** of ``a_i / g_i`` with
weights ``g_i``: exact, no iterative optimiser. What is left is a 1-D search over σ: a log-spaced grid
(0.25 … 16 voxels, ratio 2) followed by golden-section refinement in log σ between the best grid point's
neighbours (down to a quarter of the smallest σ when the best is the smallest). Each
step blurs the whole ``D`` once (the expensive part) and solves λ on a random subsample of voxels.

The subsample (``n_sample = 2·10⁶`` voxels by default, drawn with a fixed seed) makes the weighted median
cheap on 10⁸-10⁹ voxel scans; ``benchmarks/postprocess.py`` reports λ from 2·10⁵, 2·10⁶ and all voxels
on the same volume, and ``tests/test_postprocess.py`` checks that the subsample moves λ by < 1 %.

The public code of the paper does not contain this function; its configuration files
carry fixed ``pars: [2.43, 5.98]``, presumably λ and σ. porelab always optimises on the fly, as the
paper's text says, and returns the values it found so that they can be logged.
"""

from __future__ import annotations

import math

import numpy as np

from porelab.io import iter_slabs

__all__ = [
    "DEFAULT_N_SAMPLE",
    "DEFAULT_SIGMAS",
    "DEFAULT_SKIN",
    "DEFAULT_SMOOTH",
    "RESIDUALS",
    "anomaly_map",
    "apply_skin",
    "derivative_sum",
    "fit_lambda",
    "interior_mask",
    "surface_compensation",
    "unsupervised_score",
    "weighted_median",
]

#: the σ grid (voxels) searched before golden-section refinement
DEFAULT_SIGMAS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
#: voxels drawn (with a fixed seed) to solve λ for each σ
DEFAULT_N_SAMPLE = 2_000_000
_SLAB_VOXELS = 1 << 22   # planes per slab chosen so a slab holds about 4 M voxels (16 MB float32)


#: residual modes of :func:`anomaly_map`
RESIDUALS = ("abs", "dark")

#: σ (voxels) of the Gaussian pre-filter of the scan in :func:`anomaly_map` for new unsupervised models.
#: Chosen on the pipeline's own development scans (``quick`` data, seed 0; the production VAE; dark residual
#: with the skin suppressed), voxel AP inside the part for σ = 0 / 0.5 / 0.6 / 0.7 / 0.85 / 1.0:
#: hard cube 0.425 / 0.529 / 0.564 / 0.578 / 0.582 / 0.576, cylinders 0.947-0.969 / … / 0.935-0.962 /
#: 0.923-0.953 / 0.907-0.943. The cube's reconstruction noise is strongly correlated (its relative noise
#: only falls 0.13 → 0.095 at σ = 0.7, the cylinders' white-ish noise 0.059 → 0.030), so most of the gain
#: comes early; 0.7 buys +0.15 on the noisy scan for −0.01 on the clean ones. Those were label-based
#: measurements; the value is chosen on the training seed 0, label-free, by ``benchmarks/choose_postprocess.py``
#: (mean AP on pores injected into the cv scans: σ 0 / 0.5 / 0.7 / 1.0 → 0.9933 / 0.9972 / 0.9977 / 0.9955,
#: docs/experiments.md), which keeps 0.7.
DEFAULT_SMOOTH = 0.7

#: voxels below the part's surface whose score :func:`apply_skin` sets to 0 for new models (both kinds).
#: Chosen on the training seed 0 by ``benchmarks/choose_postprocess.py``, which keeps 2: its label-free
#: criterion cannot tell 0-4 apart there (docs/experiments.md).
DEFAULT_SKIN = 2


def anomaly_map(x, x_hat, *, out=None, residual: str = "abs", smooth: float = 0.0) -> np.ndarray:
    """Voxel-wise anomaly score of a reconstruction, float32 (Iuso et al. 2024, Sect. 3.2 / 3.4).

    ``residual="abs"`` is the paper's ``A = |x − x̂|``. ``residual="dark"`` is the one-sided
    ``A = max(0, x̂ − x)``: a pore is a void, so it is always *darker* than the metal the VAE reconstructs
    in its place, while bright anomalies (noise spikes, the bright side of streaks, the inner side of the
    blurred skin where ``x > x̂``) are not pores. Measured on the ``quick`` simulated scans with the same
    trained VAE (``benchmarks/quality.py``-style evaluation, voxel AP inside the part, after eq. (2)-(3)):
    unseen cylinders 0.67 → 0.78-0.81, hard cube 0.017 → 0.16. Which one a model uses is chosen on the
    validation scan by the AutoML pipeline and saved with the model.

    Parameters
    ----------
    x, x_hat : array_like (z, y, x)
        The (normalised) scan and the net's deterministic reconstruction, same shape.
    out : np.ndarray float32, optional
        Where to write the result (may be ``x_hat`` itself to save memory, or a memmap).
    residual : {"abs", "dark"}
    smooth : float
        σ (voxels) of a Gaussian pre-filter of ``x`` (``scipy.ndimage.gaussian_filter``, ``mode="nearest"``);
        0 = none (the paper). The VAE's x̂ is already smooth, so without it the residual carries the scan's
        full voxel noise; on the noisy hard cube a σ of 0.7 lifts the AP from 0.43 to 0.58
        (:data:`DEFAULT_SMOOTH` gives the measurements). Costs one float32 copy of the scan.

    Returns
    -------
    np.ndarray float32, same shape.
    """
    if residual not in RESIDUALS:
        raise ValueError(f"anomaly_map: residual must be one of {RESIDUALS}, got {residual!r}")
    x = np.asarray(x)
    x_hat = np.asarray(x_hat)
    if x.shape != x_hat.shape:
        raise ValueError(f"anomaly_map: shapes differ: x {x.shape} vs x_hat {x_hat.shape}")
    if not smooth >= 0:
        raise ValueError(f"anomaly_map: smooth must be >= 0, got {smooth!r}")
    if smooth > 0:
        from scipy.ndimage import gaussian_filter

        x = gaussian_filter(np.asarray(x, dtype=np.float32), float(smooth), mode="nearest")
    if out is None:
        out = np.empty(x.shape, dtype=np.float32)
    for sl in iter_slabs(x.shape, _SLAB_VOXELS):
        if residual == "abs":
            np.subtract(x[sl], x_hat[sl], out=out[sl], dtype=np.float32, casting="unsafe")
            np.abs(out[sl], out=out[sl])
        else:
            np.subtract(x_hat[sl], x[sl], out=out[sl], dtype=np.float32, casting="unsafe")
            np.maximum(out[sl], 0, out=out[sl])
    return out


def interior_mask(scan, skin: int = DEFAULT_SKIN, *, progress: bool = False) -> np.ndarray | None:
    """Voxels of the part more than ``skin`` voxels below its surface (bool), or ``None`` when ``skin`` is 0.

    The part is Algorithm 1's watertight object mask (Otsu threshold, flood fill of the low voxels from a
    corner: ``porelab.labels.object_mask``) computed on the raw ``scan`` itself.
    It is eroded by a ball of radius ``skin`` (``scipy.ndimage.binary_erosion``; the scan's border counts
    as part, so a part cut by the field of view is not eroded there).

    Why: every score (the VAEs' residuals and the supervised nets' probabilities) is high on the outermost
    voxel layers of the part, where the surface's partial volume and roughness make the scan darker than
    bulk metal. The paper's surface compensation (eq. (2)-(3)) models that band from the reconstruction
    x̂, which fails when x̂ is wrong at the surface: the ``quick`` VAE, trained on cylinders, reconstructs
    the hard cube 16 % too large, and with the dark residual eq. (3)'s L1 fit is degenerate (most voxels
    have a score of 0, so λ* → 0 and eq. (2) changes nothing). Measured on the scans of seed 12345 with the
    production models: at the top-k threshold 1,446 of the cube's 1,537 false-positive voxels lie within
    one voxel of the surface, no true pore voxel lies within 2 (the simulator's pores are internal); the
    skin suppression lifts the cube's AP 0.18 → 0.69 (VAE) and 0.66 → 0.85 (UNet), the cylinders' by
    +0.00-0.03. A pore open to, or within ``skin`` voxels of, the surface is not scored: in AM quality
    control such pores belong to the surface-roughness analysis, not internal porosity; set ``skin=0`` to
    keep them.
    """
    skin = int(skin)
    if skin < 0:
        raise ValueError(f"skin must be >= 0 voxels, got {skin}")
    if skin == 0:
        return None
    from scipy.ndimage import binary_erosion
    from skimage.morphology import ball

    from porelab.labels import object_mask
    from porelab.normalise import fill_nonfinite

    # NaN/inf voxels would fall on neither side of Otsu's threshold and break the flood fill: fill them first
    part = object_mask(fill_nonfinite(np.asarray(scan))[0], progress=progress)
    return binary_erosion(part, structure=ball(skin).astype(bool), border_value=1)


def apply_skin(score: np.ndarray, keep: np.ndarray | None) -> np.ndarray:
    """``score`` set to 0 outside ``keep`` (:func:`interior_mask`), in place, slab by slab (memmaps too).

    A NaN score (a missing voxel) stays NaN."""
    if keep is None:
        return score
    if np.shape(keep) != np.shape(score):
        raise ValueError(f"apply_skin: mask {np.shape(keep)} and score {np.shape(score)} differ in shape")
    for sl in iter_slabs(np.shape(score), _SLAB_VOXELS):
        score[sl] *= keep[sl]
    return score


def unsupervised_score(x, x_hat, *, residual: str = "abs", smooth: float = 0.0, postprocess: bool = True,
                       keep: np.ndarray | None = None, keep_raw: bool = True, return_info: bool = False):
    """The anomaly score of an unsupervised net, without and with the post-processing (one scoring path).

    ``A`` is :func:`anomaly_map` of the scan ``x`` against the reconstruction ``x_hat`` (``residual``,
    ``smooth``); ``A_pores`` is eq. (2)-(3) (:func:`surface_compensation`) applied to it when
    ``postprocess`` (else ``A`` itself), then set to 0 outside ``keep`` (:func:`apply_skin`; ``None``: nowhere).

    Parameters
    ----------
    x, x_hat : array_like float (z, y, x)
        The normalised scan (missing voxels already filled) and the net's reconstruction.
    keep : bool array or None
        :func:`interior_mask` of the raw scan.
    keep_raw : bool
        Return ``A`` as well (a separate array). ``False`` returns ``None`` for it, which lets ``A_pores``
        reuse its buffer when ``postprocess`` is off (one full-size array less).
    return_info : bool
        Also return ``{"lambda": λ*, "sigma": σ*}`` (empty without ``postprocess``).

    Returns
    -------
    A, A_pores : np.ndarray float32 (``A`` may be ``None``, see ``keep_raw``); info, if ``return_info``.

    References
    ----------
    Iuso D. et al. (2024), Sect. 3.2 and 3.4, eq. (2) and (3).
    """
    a = anomaly_map(x, x_hat, residual=residual, smooth=smooth)
    info = {}
    if postprocess:
        pp, lam, sigma = surface_compensation(a, x_hat)
        pp = np.asarray(pp, dtype=np.float32)
        info = {"lambda": float(lam), "sigma": float(sigma)}
    else:
        pp = a.copy() if keep_raw else a
    apply_skin(pp, keep)
    out = (a if keep_raw else None), pp
    return (*out, info) if return_info else out


def derivative_sum(v_hat, *, out=None) -> np.ndarray:
    """``D = |∂x V̂| + |∂y V̂| + |∂z V̂|`` (Iuso et al. 2024, Sect. 3.4), float32.

    The derivatives are ``np.gradient``'s: second-order central differences ``(v[i+1] − v[i−1]) / 2`` inside,
    first-order one-sided differences at the array's faces, unit voxel spacing. An axis of length 1 has
    zero derivative. Computed slab by slab along z (one-plane halo), so the temporaries are one slab, not
    three full-size gradient volumes; the result equals the full-volume ``np.gradient`` exactly.
    """
    v_hat = np.asarray(v_hat) if not isinstance(v_hat, np.memmap) else v_hat
    shape = v_hat.shape
    if len(shape) != 3:
        raise ValueError(f"derivative_sum expects a 3-D volume, got shape {shape}")
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    nz = shape[0]
    for sl in iter_slabs(shape, _SLAB_VOXELS):
        z0, z1 = sl.start, sl.stop
        h0, h1 = max(z0 - 1, 0), min(z1 + 1, nz)
        sub = np.asarray(v_hat[h0:h1], dtype=np.float32)
        acc = out[z0:z1]
        acc[...] = 0
        for axis in range(3):
            if shape[axis] < 2:
                continue
            g = np.gradient(sub, axis=axis)[z0 - h0: z0 - h0 + (z1 - z0)]
            np.abs(g, out=g)
            acc += g
    return out


def weighted_median(values, weights) -> float:
    """The minimiser of ``Σ w_i |v_i − m|``: the smallest ``v_k`` whose cumulative weight reaches half the total.

    ``weights`` must be ≥ 0 with a positive sum.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    weights = np.asarray(weights, dtype=np.float64).ravel()
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weights[order])
    if not cum[-1] > 0:
        raise ValueError("weighted_median: the weights sum to zero")
    k = int(np.searchsorted(cum, 0.5 * cum[-1], side="left"))
    return float(values[order][min(k, values.size - 1)])


def fit_lambda(a, g) -> tuple[float, float]:
    """L1-optimal scale ``λ = argmin_{λ>0} mean |a − λ g|`` and the objective's value there (eq. 3, σ fixed).

    ``λ`` is the weighted median of ``a/g`` with weights ``g`` over the voxels where ``g > 0`` (exact).
    If that median is 0 the infimum over λ > 0 is approached as λ → 0; the smallest positive float32 is
    returned so that λ stays > 0 as the paper requires.
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    g = np.asarray(g, dtype=np.float64).ravel()
    pos = g > 0
    if not pos.any():
        return float(np.finfo(np.float32).tiny), float(np.mean(np.abs(a)))
    lam = weighted_median(a[pos] / g[pos], g[pos])
    lam = max(lam, float(np.finfo(np.float32).tiny))
    return lam, float(np.mean(np.abs(a - lam * g)))


def surface_compensation(A, V_hat, *, sigmas=None, mask=None, n_sample: int = DEFAULT_N_SAMPLE,
                         refine: int = 6, seed: int = 0, truncate: float = 4.0, out=None,
                         return_info: bool = False):
    """Suppress the surface band of an anomaly score (Iuso et al. 2024, eq. (2)-(3)).

    Parameters
    ----------
    A : array_like float (z, y, x)
        Anomaly score ``|x − x̂|`` (see :func:`anomaly_map`); may be a memmap. Not modified. NaN voxels
        (missing data) are left out of the fit and stay NaN in ``A_pores``.
    V_hat : array_like float (z, y, x)
        The reconstruction x̂ (same shape). Not modified.
    sigmas : sequence of float, optional
        σ values (voxels) to try. ``None`` (default): the grid ``DEFAULT_SIGMAS`` followed by ``refine``
        golden-section steps in log σ around the best grid point. Given: exactly these values (a single
        value fixes σ; only λ is optimised), no refinement.
    mask : array_like bool, optional
        Voxels used to *fit* λ and σ (e.g. the object mask plus a margin). The output covers every voxel.
    n_sample : int
        Voxels drawn at random (seed ``seed``, with replacement, then de-duplicated) to solve λ for each σ;
        all voxels are used when the volume (or mask) is smaller.
    refine : int
        Golden-section steps after the grid (each costs one full blur).
    truncate : float
        Gaussian kernel radius in σ (scipy's default 4).
    out : np.ndarray float32, optional
        Buffer (e.g. a memmap) for the result; must not be ``A`` or ``V_hat``.
    return_info : bool
        Also return a dict with the objective at every σ tried.

    Returns
    -------
    A_pores : np.ndarray float32
        ``max(0, A − λ* G_σ*(D))``, ≥ 0.
    lam, sigma : float
        λ* > 0 and σ* > 0 (voxels).
    info : dict, only if ``return_info``.

    Notes
    -----
    Memory: besides the inputs, two float32 volumes (``D`` and the blur buffer, which becomes the result).
    The Gaussian blur is ``scipy.ndimage.gaussian_filter`` (separable, float32, ``mode="nearest"``).
    Time: one full blur per σ tried (7 grid + ``refine`` steps); see ``benchmarks/postprocess.py``.

    References
    ----------
    Iuso D. et al. (2024), Sect. 3.4, eq. (2) and (3).
    """
    from scipy.ndimage import gaussian_filter

    shape = np.shape(A)
    if np.shape(V_hat) != shape:
        raise ValueError(f"surface_compensation: A {shape} and V_hat {np.shape(V_hat)} differ in shape")
    if len(shape) != 3:
        raise ValueError(f"surface_compensation expects 3-D volumes, got shape {shape}")
    if mask is not None and np.shape(mask) != shape:
        raise ValueError(f"surface_compensation: mask {np.shape(mask)} and A {shape} differ in shape")
    if sigmas is not None:
        sigmas = [float(s) for s in np.atleast_1d(sigmas)]
        if not sigmas or min(sigmas) <= 0:
            raise ValueError(f"surface_compensation: sigmas must be > 0, got {sigmas}")

    D = derivative_sum(V_hat)
    G = np.empty(shape, dtype=np.float32) if out is None else out
    idx = _sample_indices(shape, mask, n_sample, seed)
    a_s = _take(A, idx)
    finite = np.isfinite(a_s)
    if not finite.all():  # missing voxels (NaN score) take no part in the fit; they stay NaN in the result
        idx, a_s = idx[finite], a_s[finite]
        if idx.size == 0:
            raise ValueError("surface_compensation: no finite anomaly score to fit")

    tried: dict[float, tuple[float, float]] = {}

    def evaluate(sigma: float) -> float:
        sigma = float(sigma)
        if sigma not in tried:
            gaussian_filter(D, sigma, output=G, mode="nearest", truncate=truncate)
            tried[sigma] = fit_lambda(a_s, G.reshape(-1)[idx])
        return tried[sigma][1]

    grid = list(DEFAULT_SIGMAS) if sigmas is None else sigmas
    for s in grid:
        evaluate(s)
    if sigmas is None and refine > 0:
        best = min(range(len(grid)), key=lambda i: tried[grid[i]][1])
        # an optimum at the smallest grid value may lie below it (σ → 0 means G = D): look down to a quarter
        lo = math.log(grid[best - 1]) if best > 0 else math.log(grid[0] / 4)
        hi = math.log(grid[min(best + 1, len(grid) - 1)])
        _golden(lambda t: evaluate(math.exp(t)), lo, hi, refine)

    sigma = min(tried, key=lambda s: tried[s][1])
    lam = tried[sigma][0]
    # final: G = G_σ*(D), then G ← max(0, A − λ G) in place, slab by slab (A may be a memmap)
    gaussian_filter(D, sigma, output=G, mode="nearest", truncate=truncate)
    D = None  # free it before the final pass
    for sl in iter_slabs(shape, _SLAB_VOXELS):
        g = G[sl]
        g *= -lam
        g += np.asarray(A[sl], dtype=np.float32)
        np.maximum(g, 0, out=g)
    if return_info:
        info = {"objective": {s: v[1] for s, v in sorted(tried.items())},
                "lambda": {s: v[0] for s, v in sorted(tried.items())}, "n_sample": int(idx.size)}
        return G, lam, sigma, info
    return G, lam, sigma


# ----------------------------------------------------------------------------------------------- helpers

def _sample_indices(shape, mask, n_sample: int, seed: int) -> np.ndarray:
    """Sorted flat indices of at most ``n_sample`` distinct voxels (inside ``mask`` if given)."""
    n = int(np.prod(shape))
    rng = np.random.default_rng(seed)
    if mask is None:
        if n <= n_sample:
            return np.arange(n)
        return np.unique(rng.integers(0, n, size=n_sample))
    flat_mask = np.asarray(mask).reshape(-1) if not isinstance(mask, np.memmap) else mask.reshape(-1)
    n_in = sum(int(np.count_nonzero(np.asarray(mask[sl]))) for sl in iter_slabs(shape, _SLAB_VOXELS))
    if n_in == 0:
        raise ValueError("surface_compensation: the fitting mask is empty")
    if n_in <= n_sample:
        return np.flatnonzero(np.asarray(mask).reshape(-1))
    # rejection sampling keeps memory at O(n_sample) for huge volumes
    chosen: list[np.ndarray] = []
    need = n_sample
    for _ in range(64):
        cand = np.unique(rng.integers(0, n, size=int(need * n / n_in * 1.2) + 16))
        chosen.append(cand[np.asarray(flat_mask[cand], dtype=bool)])
        need -= chosen[-1].size
        if need <= 0:
            break
    return np.unique(np.concatenate(chosen))


def _take(arr, idx) -> np.ndarray:
    flat = arr.reshape(-1) if isinstance(arr, np.ndarray) else np.asarray(arr).reshape(-1)
    return np.asarray(flat[idx], dtype=np.float32)


def _golden(f, lo: float, hi: float, steps: int) -> None:
    """Golden-section minimisation of ``f`` on ``[lo, hi]`` with ``steps`` new evaluations (results cached by f)."""
    if hi <= lo:
        return
    r = (math.sqrt(5) - 1) / 2
    c, d = hi - r * (hi - lo), lo + r * (hi - lo)
    fc, fd = f(c), f(d)
    for _ in range(max(steps - 2, 0)):
        if fc <= fd:
            hi, d, fd = d, c, fc
            c = hi - r * (hi - lo)
            fc = f(c)
        else:
            lo, c, fc = c, d, fd
            d = lo + r * (hi - lo)
            fd = f(d)
