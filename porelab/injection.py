"""Label-free validation: synthetic pores injected into a scan at the scan's own contrast, blur and noise.

No label may decide anything in porelab (thresholds, residuals, folds, trials, registration). What decides
instead is how well a model finds pores whose position is known because they were put there: on a held-out
scan, :func:`inject_pores` inserts a few dozen synthetic pores, a model scores the injected scan, and
:func:`injected_metrics` measures the AP of the injected pores against the part's other voxels and the
F1-optimal threshold on them.

The physics of the insertion
----------------------------
A pore is gas: inside it the scan shows the grey level of air, which is the background outside the part.
:func:`estimate_acquisition` measures, from the scan and its part mask alone, the metal and air levels,
the metal's noise and the system blur (:class:`Acquisition`). A pore is rendered as its partial-volume
occupancy ``o`` in [0, 1] (the fraction of each voxel inside the pore, from 3 × 3 × 3 sub-samples, i.e. the
ideal shape integrated over the voxel), ``o`` is blurred with a Gaussian of ``sigma = acquisition.blur``,
and::

    scan = raw + contrast · (air − metal_local) · G_blur * o

where ``metal_local`` is the median grey level of the metal around the pore (``level="local"``, so a pore
in a part darkened by cupping or a density drift gets the contrast it would really have) or the scan's
metal level (``level="global"``), and ``contrast`` is 1 (a pore at the air level) unless the caller models
a reconstruction that shows internal voids with less than the full step (docs/labelfree.md). Since the
pore replaces metal, the scan's own noise, texture and artefacts stay in it, as in a real pore. The truth is ``mask = o ≥ 0.5``; a one-voxel shell around each
pore and any voxel with ``0 < o < 0.5`` (its partial volume) are neither positive nor negative.

Shapes (radii log-uniform in ``radius_range``, so pores near the resolution limit dominate in number, as
in real parts; z is the build axis):

* ``gas``: a sphere of radius r;
* ``keyhole``: a capsule (rod with round caps) of radius min(r, 3) and length 3-5 radii, along z tilted by
  at most 15°;
* ``lack_of_fusion``: flat in the xy plane, thickness 1-2 voxels, lateral extent r..2r, irregular: a union
  of 2-4 flattened ellipsoids of random orientation.

Placement: centres are drawn with a seeded generator inside the part eroded by ``margin`` + the pore's
extent + 1 (the edge of the field counts as outside), every injected pore keeps more than 2 voxels from
every other and from ``exclude`` (the caller's candidate native pores), so an injected pore never lands on
a real one. The same inputs and seed give the same injection bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from porelab.errors import ConfigError

__all__ = ["BLUR_RANGE", "PORE_KINDS", "Acquisition", "Injection", "estimate_acquisition", "inject_pores",
           "injected_metrics"]

#: kinds of synthetic pores
PORE_KINDS = ("gas", "keyhole", "lack_of_fusion")
#: the estimated blur sigma (voxels) is clamped to this range
BLUR_RANGE = (0.3, 3.0)
_EDGE_SIGMA = 1.0        # Gaussian pre-smoothing of the surface gradient (voxels)
_NOISE_SIGMA = 2.0       # smoothing whose residual measures the noise (voxels)
_VOXEL_VARIANCE = 1.0 / 12.0   # variance of the unit box: the voxel's own integration of the edge
_SUB = 3                 # sub-samples per axis for the partial-volume occupancy
_GAP = 2.0               # injected pores keep more than this many voxels from each other and from `exclude`
_TRIES = 120             # placement attempts per pore (its size shrinks every _SHRINK_EVERY failures)
_SHRINK_EVERY = 30
_KEYHOLE_MAX_RADIUS = 3.0
_MAX_SAMPLE = 4_000_000  # voxels used for a median at most (a strided subsample beyond)


# ------------------------------------------------------------------------------------------ acquisition

@dataclass(frozen=True)
class Acquisition:
    """What the scanner did to this scan, estimated from the scan and its part mask alone (no label).

    ``metal``: grey level of the metal (median inside the part, away from its surface). ``air``: grey level
    of a gas-filled pore, taken as the background outside the part (median of the outside, away from the
    surface). ``noise``: standard deviation of the metal's fine-scale variation (see
    :func:`estimate_acquisition`). ``blur``: Gaussian sigma (voxels) of the system blur on top of the
    voxel's own integration, from the sharpness of the part's surface, in ``BLUR_RANGE``.
    """

    metal: float
    air: float
    noise: float
    blur: float

    def to_dict(self) -> dict:
        return {k: float(v) for k, v in asdict(self).items()}


def estimate_acquisition(raw: np.ndarray, part: np.ndarray) -> Acquisition:
    """Metal and air levels, noise and blur of a scan, from the scan and its part mask.

    Parameters
    ----------
    raw : float (z, y, x)
        The scan, any grey scale with metal brighter than air.
    part : bool (z, y, x)
        The part, pores counted as part (e.g. Algorithm 1's watertight object). The faces of the field of
        view are not surfaces of the part.

    Returns
    -------
    Acquisition
        * ``metal`` = median of the part farther than 3 voxels from its surface;
        * ``air`` = median of the outside farther than 4 voxels from the part;
        * ``noise`` = 1.4826 × MAD of the residual ``raw − G₂ * raw`` inside the part eroded by 4 voxels
          (the smoothing G₂, a Gaussian of 2 voxels, is normalised over those voxels so that the surface
          does not leak in), scaled by the exact factor that makes it the std of white noise. It includes
          everything that varies faster than about 2 voxels: counting noise, microstructure texture, fine
          rings; slow variations (cupping, density drift) are left out, and the MAD ignores the pores;
        * ``blur``: a step of height ``h = metal − air`` blurred by a Gaussian of sigma ``s`` has the
          maximum gradient ``h / (√(2π) s)``. The gradient (derivative-of-Gaussian filters of 1 voxel) is
          taken in a band of ±2 voxels around the surface; each voxel that is a maximum along its own
          gradient direction gives the peak of the edge profile through a parabola on the log-gradient
          of it and its two neighbours (exact for a Gaussian edge wherever the voxel lies); the median
          peak gives ``s``, from which the pre-smoothing (1 voxel²) and the voxel's own box (1/12 voxel²)
          are removed in quadrature, so ``blur`` is the sigma to apply to a rendered partial-volume
          occupancy to reproduce the scan's edges. Clamped to ``BLUR_RANGE``.

    Raises
    ------
    ConfigError
        A scan that is not 3-D, a part mask of another shape, an empty part, a part that fills the field
        (no air to measure) or a part not brighter than the outside.
    """
    raw, part = _check_scan_part(raw, part, "estimate_acquisition")
    box = _bbox(part, pad=6)
    r = np.asarray(raw[box], dtype=np.float32)
    p = part[box]
    # chessboard distances (in voxels, never more than the Euclidean ones): cheap, and only compared with
    # small thresholds
    dist_in = ndimage.distance_transform_cdt(p, metric="chessboard")
    dist_out = ndimage.distance_transform_cdt(~p, metric="chessboard")

    metal = _median(r[_first_nonempty(dist_in > 3, dist_in > 1, p)])
    far = np.ones(raw.shape, dtype=bool)
    far[box] = dist_out > 4
    if not far.any():
        far[box] = ~p
    if not far.any():
        raise ConfigError("estimate_acquisition: the part fills the whole scan, no air outside it to measure")
    air = _median(raw[far] if far.size <= 4 * _MAX_SAMPLE else raw[::2, ::2, ::2][far[::2, ::2, ::2]])
    if not metal > air:
        raise ConfigError(f"estimate_acquisition: the part (median {metal:.4g}) is not brighter than the "
                          f"outside (median {air:.4g}); the scan needs metal brighter than air")
    noise = _noise(r, _first_nonempty(dist_in > 4, dist_in > 2, p))
    blur = _blur(r, p, dist_in, dist_out, metal - air)
    return Acquisition(metal=float(metal), air=float(air), noise=float(noise), blur=float(blur))


def _noise(r: np.ndarray, sel: np.ndarray) -> float:
    w = sel.astype(np.float32)
    num = ndimage.gaussian_filter(r * w, _NOISE_SIGMA, mode="constant")
    den = ndimage.gaussian_filter(w, _NOISE_SIGMA, mode="constant")
    res = (r - num / np.maximum(den, 1e-6))[sel]
    res = _subsample(res)
    mad = float(np.median(np.abs(res - np.median(res)))) * 1.4826
    # white noise: var(x − g*x) = σ²(1 − 2 g₀ + Σ g²) for the normalised 3-D kernel g (g₀ its centre)
    k = _gauss_kernel(_NOISE_SIGMA)
    g0, g2 = float(k[k.size // 2]) ** 3, float(np.sum(k * k)) ** 3
    return mad / math.sqrt(1.0 - 2.0 * g0 + g2)


def _blur(r, p, dist_in, dist_out, height: float) -> float:
    grads = [ndimage.gaussian_filter(r, _EDGE_SIGMA, order=o, mode="nearest")
             for o in ((1, 0, 0), (0, 1, 0), (0, 0, 1))]
    mag = np.sqrt(grads[0] ** 2 + grads[1] ** 2 + grads[2] ** 2)
    band = np.where(p, dist_in, dist_out) <= 2
    band[[0, -1]] = False
    band[:, [0, -1]] = False
    band[:, :, [0, -1]] = False
    # gradients weaker than half what the widest clamped blur gives are noise, not the surface
    widest = math.sqrt(BLUR_RANGE[1] ** 2 + _EDGE_SIGMA ** 2 + _VOXEL_VARIANCE)
    band &= mag > 0.5 * height / (math.sqrt(2 * math.pi) * widest)
    idx = np.nonzero(band)
    if idx[0].size == 0:
        return BLUR_RANGE[1]
    g = np.stack([gr[idx] for gr in grads], axis=1)
    g0 = mag[idx]
    u = g / g0[:, None]
    step = np.rint(u / np.abs(u).max(axis=1, keepdims=True)).astype(np.int64)
    pos = np.stack(idx, axis=1)
    gm = mag[tuple((pos - step).T)]
    gp = mag[tuple((pos + step).T)]
    peak = (g0 >= gm) & (g0 >= gp) & (gm > 0) & (gp > 0)
    if not peak.any():
        return BLUR_RANGE[1]
    a, b, c = np.log(gm[peak]), np.log(g0[peak]), np.log(gp[peak])
    den = a - 2.0 * b + c
    top = np.where(den < 0, b - (a - c) ** 2 / (8.0 * np.where(den < 0, den, -1.0)), b)
    g_max = float(np.median(np.exp(top)))
    s_eff = height / (math.sqrt(2 * math.pi) * g_max)
    s2 = s_eff ** 2 - _EDGE_SIGMA ** 2 - _VOXEL_VARIANCE
    return float(np.clip(math.sqrt(max(s2, 0.0)), *BLUR_RANGE))


# -------------------------------------------------------------------------------------------- injection

@dataclass
class Injection:
    """A scan with synthetic pores inserted, and their truth.

    ``scan``: float32, the raw scan with the pores inserted. ``mask``: bool, voxels at least half inside
    an injected pore (the positives). ``ignore``: bool, voxels neither positive nor negative: a one-voxel
    shell around each injected pore and any other voxel partly inside it (its partial volume: the thin rim
    of a flat pore), and the caller's ``exclude`` voxels (candidate native pores). ``pores``: one dict per
    injected pore: ``id``, ``kind``, ``centre`` (z, y, x), ``size`` (the shape's parameters), ``voxels``
    (its positives), ``metal`` (the level it replaced), ``box`` (``[lo, hi)`` corners of the region of the
    scan it changed). ``requested``: how many pores were asked for (fewer are placed when the part cannot
    hold them). ``level`` and ``contrast``: as given to :func:`inject_pores`.
    """

    scan: np.ndarray
    mask: np.ndarray
    ignore: np.ndarray
    pores: list[dict]
    acquisition: Acquisition
    seed: int
    requested: int = 0
    level: str = "local"
    contrast: float = 1.0

    def negatives(self, region: np.ndarray) -> np.ndarray:
        """The negatives inside ``region``: ``region & ~mask & ~ignore``."""
        region = np.asarray(region, dtype=bool)
        if region.shape != self.mask.shape:
            raise ConfigError(f"region shape {region.shape} differs from the injected scan's {self.mask.shape}")
        return region & ~self.mask & ~self.ignore


def inject_pores(raw: np.ndarray, part: np.ndarray, *, seed: int, exclude: np.ndarray | None = None,
                 acquisition: Acquisition | None = None, n_pores: int | None = None,
                 radius_range: tuple[float, float] = (1.0, 8.0), margin: int = 2,
                 kinds: tuple[str, ...] = PORE_KINDS, level: str = "local", contrast: float = 1.0) -> Injection:
    """Insert synthetic gas-filled pores into ``raw`` at the scan's own contrast, blur and noise.

    Parameters
    ----------
    raw : float (z, y, x)
        The scan (not modified).
    part : bool (z, y, x)
        The part, pores counted as part.
    seed : int
        Seed of the placement and the shapes.
    exclude : bool (z, y, x), optional
        Voxels to keep clear of (e.g. Algorithm 1's candidate pores): no injected pore comes within 2
        voxels of them, and they are ignored by :func:`injected_metrics`.
    acquisition : Acquisition, optional
        Default: :func:`estimate_acquisition` of ``raw`` and ``part``.
    n_pores : int, optional
        Default ``max(12, min(60, part voxels // 20000))``: enough pores for a stable AP, a small injected
        volume. Split evenly over ``kinds`` (placed in turn, so each kind gets one before any gets two).
    radius_range : (float, float)
        Pore radii are log-uniform in it (see the module docstring for each kind's use of r).
    margin : int
        Voxels of the part's surface kept free besides the pore's own extent + 1.
    kinds : tuple of str
        Kinds to inject, among ``PORE_KINDS``.
    level : "local" or "global"
        The metal level a pore replaces: the median around it (default) or the scan's.
    contrast : float in (0, 1]
        Fraction of the step from metal to air that a pore shows: 1 (default) is the physics above, a gas
        pore at the air level; less models a reconstruction that shows internal voids with less than the
        full step (beam hardening flattens the line integrals through long metal paths, so a pore deep in
        a large part comes out brighter than the air around the part).

    Returns
    -------
    Injection
        A pore that does not fit after 120 tries (shrinking towards the smallest radius every 30) is
        skipped; ``len(pores)`` says how many were placed, ``requested`` how many were asked for.

    Raises
    ------
    ConfigError
        Bad shapes or options, or no pore fits in the part.
    """
    raw, part = _check_scan_part(raw, part, "inject_pores")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(f"inject_pores: seed must be an integer, got {seed!r}")
    if exclude is not None:
        exclude = np.asarray(exclude).astype(bool, copy=False)
        if exclude.shape != raw.shape:
            raise ConfigError(f"inject_pores: exclude shape {exclude.shape} differs from the scan's {raw.shape}")
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in PORE_KINDS]
    if not kinds or bad:
        raise ConfigError(f"inject_pores: unknown pore kind(s) {bad or '(none given)'}; use {', '.join(PORE_KINDS)}")
    lo_r, hi_r = (float(v) for v in radius_range)
    if not (0 < lo_r <= hi_r) or not math.isfinite(hi_r):
        raise ConfigError(f"inject_pores: radius_range must be 0 < low <= high, got {tuple(radius_range)}")
    if int(margin) < 0:
        raise ConfigError(f"inject_pores: margin must be >= 0, got {margin}")
    if n_pores is not None and int(n_pores) < 1:
        raise ConfigError(f"inject_pores: n_pores must be >= 1, got {n_pores}")
    if not 0.0 < float(contrast) <= 1.0:
        raise ConfigError(f"inject_pores: contrast must be in (0, 1], got {contrast}")
    if level not in ("local", "global"):
        raise ConfigError(f"inject_pores: level must be 'local' or 'global', got {level!r}")
    acq = acquisition if acquisition is not None else estimate_acquisition(raw, part)

    rng = np.random.default_rng(int(seed))
    n_part = int(np.count_nonzero(part))
    n = int(n_pores) if n_pores is not None else max(12, min(60, n_part // 20000))
    # distance to the outside, the edge of the field counting as outside; candidate centres by depth
    # (chessboard distance: never more than the Euclidean one, so the erosion is at least as deep as asked)
    depth = ndimage.distance_transform_cdt(np.pad(part, 1), metric="chessboard")[1:-1, 1:-1, 1:-1]
    flat = np.flatnonzero(depth > int(margin) + 1)
    order = np.argsort(-depth.ravel()[flat], kind="stable")
    cand, cand_depth = flat[order], depth.ravel()[flat][order]
    if exclude is not None and exclude.any():
        # a centre voxel lies in its pore, so it must itself be clear of `exclude` (cheap early rejection)
        clear = ndimage.distance_transform_cdt(~exclude, metric="chessboard").ravel()[cand] > _GAP
        cand, cand_depth = cand[clear], cand_depth[clear]

    scan = np.array(raw, dtype=np.float32, copy=True)
    mask = np.zeros(raw.shape, dtype=bool)
    ignore = np.zeros(raw.shape, dtype=bool) if exclude is None else exclude.copy()
    taken = np.zeros(raw.shape, dtype=bool)          # placed pores grown by the gap
    pad = int(4.0 * acq.blur + 0.5) + 1
    pores: list[dict] = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        r = float(np.exp(rng.uniform(math.log(lo_r), math.log(hi_r))))
        placed = None
        for attempt in range(_TRIES):
            if attempt and attempt % _SHRINK_EVERY == 0:
                r = max(lo_r, r * 0.7)
            shape = _draw(kind, r, rng)
            need = int(margin) + shape.extent + 1.0
            k = int(np.searchsorted(-cand_depth, -need, side="left"))   # candidates deeper than `need`
            if k == 0:
                continue
            centre = np.array(np.unravel_index(cand[int(rng.integers(k))], raw.shape), dtype=np.float64)
            centre += rng.uniform(-0.5, 0.5, 3)
            if taken[tuple(np.floor(centre + 0.5).astype(np.int64))]:
                continue
            placed = _try(shape, centre, raw.shape, exclude, taken)
            if placed is not None:
                break
        if placed is None:
            continue
        sl, occ = placed
        metal = acq.metal if level == "global" else _local_metal(raw, part, exclude, sl, occ > 0, acq.metal)
        box = _paint(scan, occ, sl, pad, np.float32(float(contrast) * (acq.air - metal)), acq.blur)
        own = occ >= 0.5
        mask[sl] |= own
        shell = (ndimage.binary_dilation(np.pad(own, 1), _CUBE)[1:-1, 1:-1, 1:-1] | (occ > 0)) & ~own
        ignore[sl] |= shell
        grow = _grow(occ > 0)
        taken[_expand(sl, 2, raw.shape)] |= grow[_crop_of(sl, raw.shape)]
        pores.append({"id": len(pores) + 1, "kind": kind, "centre": [round(float(c), 3) for c in centre],
                      "size": shape.size, "voxels": int(np.count_nonzero(own)), "metal": float(metal),
                      "box": [[s.start for s in box], [s.stop for s in box]]})
    if not pores:
        raise ConfigError(f"inject_pores: no synthetic pore fits in the part ({n_part} voxels, margin {margin}, "
                          f"radius {lo_r:g}-{hi_r:g})")
    ignore &= ~mask
    return Injection(scan=scan, mask=mask, ignore=ignore, pores=pores, acquisition=acq, seed=int(seed),
                     requested=n, level=level, contrast=float(contrast))


# ---------------------------------------------------------------------------------------------- shapes

@dataclass
class _Shape:
    kind: str
    extent: float            # largest distance of the pore from its centre
    size: dict
    inside: object           # (dz, dy, dx) relative coordinates → bool


def _draw(kind: str, r: float, rng: np.random.Generator) -> _Shape:
    """One pore's shape around the origin (see the module docstring)."""
    if kind == "gas":
        return _Shape(kind, r, {"radius": round(r, 3)}, lambda z, y, x: z * z + y * y + x * x <= r * r)
    if kind == "keyhole":
        rk = min(r, _KEYHOLE_MAX_RADIUS)
        length = rng.uniform(3.0, 5.0) * rk
        tilt, phi = math.radians(rng.uniform(0.0, 15.0)), rng.uniform(0.0, 2 * math.pi)
        a = (math.cos(tilt), math.sin(tilt) * math.sin(phi), math.sin(tilt) * math.cos(phi))
        half = length / 2 - rk                       # half-length of the axis segment

        def capsule(z, y, x):
            t = np.clip(z * a[0] + y * a[1] + x * a[2], -half, half)
            return (z - t * a[0]) ** 2 + (y - t * a[1]) ** 2 + (x - t * a[2]) ** 2 <= rk * rk

        return _Shape(kind, length / 2, {"radius": round(rk, 3), "length": round(length, 3),
                                         "tilt_deg": round(math.degrees(tilt), 2)}, capsule)
    thickness = rng.uniform(1.0, 2.0)
    lateral = rng.uniform(r, 2 * r)
    lobes = []
    for j in range(int(rng.integers(2, 5))):
        ax = max(1.0, lateral * rng.uniform(0.45, 0.7))
        bx = max(1.0, ax * rng.uniform(0.4, 1.0))
        room = max(0.0, lateral - ax)
        dist = 0.0 if j == 0 else rng.uniform(0.0, min(room, 0.8 * ax))
        ang, rot = rng.uniform(0, 2 * math.pi), rng.uniform(0, math.pi)
        lobes.append((dist * math.sin(ang), dist * math.cos(ang), ax, bx, math.cos(rot), math.sin(rot)))
    half_t = thickness / 2

    def sheet(z, y, x):
        out = None
        for oy, ox, ax, bx, c, s in lobes:
            u = (y - oy) * c + (x - ox) * s
            v = (x - ox) * c - (y - oy) * s
            inside = (z / half_t) ** 2 + (u / ax) ** 2 + (v / bx) ** 2 <= 1.0
            out = inside if out is None else out | inside
        return out

    extent = max(math.hypot(oy, ox) + ax for oy, ox, ax, *_ in lobes)
    return _Shape(kind, max(extent, half_t), {"lateral": round(extent, 3), "thickness": round(thickness, 3),
                                              "lobes": len(lobes)}, sheet)


def _occupancy(shape: _Shape, centre: np.ndarray, sl: tuple) -> np.ndarray:
    """Fraction of each voxel of the box ``sl`` inside the pore, from ``_SUB³`` regular sub-samples."""
    z, y, x = (np.arange(s.start, s.stop, dtype=np.float64) - c for s, c in zip(sl, centre))
    z, y, x = z[:, None, None], y[None, :, None], x[None, None, :]
    sub = (np.arange(_SUB) + 0.5) / _SUB - 0.5
    occ = np.zeros((z.shape[0], y.shape[1], x.shape[2]), dtype=np.float32)
    for dz in sub:
        for dy in sub:
            for dx in sub:
                occ += shape.inside(z + dz, y + dy, x + dx)
    return occ / np.float32(_SUB ** 3)


def _try(shape: _Shape, centre, full_shape, exclude, taken):
    """The pore's box and occupancy if it fits there (positives, clear of ``exclude`` and other pores)."""
    e = shape.extent + 2.0            # the support stays a voxel inside the box (room for its shell)
    sl = tuple(slice(max(0, math.floor(c - e)), min(n, math.ceil(c + e) + 1)) for c, n in zip(centre, full_shape))
    occ = _occupancy(shape, centre, sl)
    support = occ > 0
    if not (occ >= 0.5).any() or taken[sl][support].any():
        return None
    if exclude is not None:
        grown = _grow(support)
        if (exclude[_expand(sl, 2, full_shape)] & grown[_crop_of(sl, full_shape)]).any():
            return None
    return sl, occ


_CUBE = np.ones((3, 3, 3), dtype=bool)
_BALL = np.add.outer(np.add.outer(np.arange(-2, 3) ** 2, np.arange(-2, 3) ** 2), np.arange(-2, 3) ** 2) <= _GAP ** 2


def _grow(support: np.ndarray) -> np.ndarray:
    """``support`` (a box) padded by 2 and grown by every voxel within 2 voxels (Euclidean)."""
    return ndimage.binary_dilation(np.pad(support, 2), _BALL)


def _expand(sl: tuple, by: int, full_shape) -> tuple:
    return tuple(slice(max(0, s.start - by), min(n, s.stop + by)) for s, n in zip(sl, full_shape))


def _crop_of(sl: tuple, full_shape, by: int = 2) -> tuple:
    """Slices of a box padded by ``by`` that fall inside the field (matches :func:`_expand`)."""
    out = []
    for s, n in zip(sl, full_shape):
        lo = by - (s.start - max(0, s.start - by))
        hi = (s.stop - s.start) + by + (min(n, s.stop + by) - s.stop)
        out.append(slice(lo, hi))
    return tuple(out)


def _within(inner: tuple, outer: tuple) -> tuple:
    """Slices of the box ``inner`` in the coordinates of the box ``outer`` that holds it."""
    return tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer))


def _local_metal(raw, part, exclude, sl, support, fallback: float) -> float:
    """Median of the metal around a pore: the part in its box grown by 3, minus ``exclude`` and the pore."""
    big = _expand(sl, 3, raw.shape)
    keep = part[big].copy()
    keep[_within(sl, big)] &= ~support
    if exclude is not None:
        keep &= ~exclude[big]
    vals = np.asarray(raw[big], dtype=np.float32)[keep]
    return float(np.median(vals)) if vals.size >= 8 else float(fallback)


def _paint(scan, occ, sl, pad: int, delta: np.float32, blur: float) -> tuple:
    """Add ``delta × G_blur * occ`` to ``scan`` in the box ``sl`` grown by ``pad`` (the blur's reach)."""
    big = _expand(sl, pad, scan.shape)
    local = np.zeros(tuple(s.stop - s.start for s in big), dtype=np.float32)
    local[_within(sl, big)] = occ
    blurred = ndimage.gaussian_filter(local, blur, mode="constant", truncate=4.0)
    scan[big] += delta * blurred
    return big


# ---------------------------------------------------------------------------------------------- metrics

def injected_metrics(score: np.ndarray, injection: Injection, region: np.ndarray) -> dict:
    """How well ``score`` finds the injected pores among the other voxels of ``region``.

    Counted voxels: the injected positives inside ``region`` and :meth:`Injection.negatives` of
    ``region``; voxels with a non-finite score (missing) are left out. Uses :mod:`porelab.metrics`.

    Returns
    -------
    dict
        ``ap`` (step-wise average precision), ``auc`` (ROC-AUC), ``threshold`` (F1-optimal on the injected
        positives vs the negatives; a voxel is a pore when ``score >= threshold``), ``f1`` (its F1),
        ``dice`` (Dice at that threshold), ``positives``, ``negatives`` (voxels counted). AP, AUC,
        threshold, F1 and Dice are NaN when either class is empty.
    """
    from porelab.metrics import compute_curve, dice

    score = np.asarray(score)
    region = np.asarray(region).astype(bool, copy=False)
    if score.shape != injection.mask.shape or region.shape != injection.mask.shape:
        raise ConfigError(f"injected_metrics: score {score.shape}, region {region.shape} and injected scan "
                          f"{injection.mask.shape} must have one shape")
    finite = np.isfinite(score)
    pos = injection.mask & region & finite
    counted = (injection.negatives(region) & finite) | pos
    s = score[counted].astype(np.float64)
    t = injection.mask[counted]
    n_pos = int(np.count_nonzero(t))
    n_neg = int(t.size - n_pos)
    out = {"ap": math.nan, "auc": math.nan, "threshold": math.nan, "f1": math.nan, "dice": math.nan,
           "positives": n_pos, "negatives": n_neg}
    if n_pos == 0 or n_neg == 0:
        return out
    curve = compute_curve(s, t)              # one sort for AP, AUC and the F1-optimal threshold
    threshold, f1 = curve.best_f1()
    out.update(ap=curve.average_precision(), auc=curve.roc_auc(), threshold=float(threshold), f1=float(f1),
               dice=float(dice(s, t, threshold)))
    return out


# ---------------------------------------------------------------------------------------------- helpers

def _check_scan_part(raw, part, who: str):
    if not hasattr(raw, "shape") or np.ndim(raw) != 3:
        raise ConfigError(f"{who}: the scan must be a 3-D (z, y, x) array, got shape {getattr(raw, 'shape', None)}")
    part = np.asarray(part)
    if part.shape != raw.shape:
        raise ConfigError(f"{who}: part mask shape {part.shape} differs from the scan's {tuple(raw.shape)}")
    part = part.astype(bool, copy=False)
    if not part.any():
        raise ConfigError(f"{who}: the part mask is empty")
    return raw, part


def _bbox(mask: np.ndarray, pad: int) -> tuple:
    sl = []
    for ax in range(3):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax)))
        sl.append(slice(max(0, int(hit[0]) - pad), min(mask.shape[ax], int(hit[-1]) + pad + 1)))
    return tuple(sl)


def _first_nonempty(*masks):
    for m in masks:
        if m.any():
            return m
    return masks[-1]


def _subsample(values: np.ndarray) -> np.ndarray:
    step = max(1, values.size // _MAX_SAMPLE)
    return values[::step]


def _median(values: np.ndarray) -> float:
    return float(np.median(_subsample(np.asarray(values, dtype=np.float32))))


def _gauss_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """scipy.ndimage's sampled, normalised 1-D Gaussian kernel."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()
