"""What makes real additively manufactured parts hard for filters, added to a phantom with exact truth.

* **Microstructure texture** (:func:`texture_field`): band-limited noise in the attenuation at the scale
  of the melt-pool / grain structure (a Gaussian-filtered white noise, correlation length ``grain``
  voxels), a few percent of µ — it does not average out like the counting noise and looks like small,
  faint pores to a filter.
* **Slow density drift** (:func:`drift_field`): a smooth low-order polynomial in (z, y, x) (e.g. denser at
  the bottom of the build, lighter towards the skin), a few percent of µ — grey-value thresholds and
  global normalisations no longer fit the whole part.
* **Extra pores** (:func:`add_extra_pores`), each with exact truth and recorded in the pore list:

  - ``small``: spheres of radius 0.9-1.8 voxels at the resolution limit, rendered with their *partial
    volume*: a voxel's attenuation is scaled by the fraction of it outside the sphere (4³ sub-samples),
    the truth is the voxels whose centre lies inside (at least one: ``r ≥ 0.9 > √3/2``);
  - ``cluster``: 3-5 gas spheres (radius 1.5-3) chained so each overlaps the previous one — one connected
    pore (``"cluster": n``) that a blob detector splits or misses;
  - ``surface``: spheres (radius 2-4) whose centre lies within 0.6 r below the part's core surface, so
    they open to the outside; the truth is the sphere inside the nominal part (``"surface": true``), the
    part's skin suppression removes most of it;
  - ``large``: rounded pores (ellipsoids, mean radius 6-10 voxels, axes within ±15 %) wider than a
    closing's ball of a few voxels (``"large": true``).

All extra pores keep the phantom's rule that pores do not touch one another (a pore grown by one voxel,
26-neighbourhood, must not meet another), except the members of one cluster.
"""

from __future__ import annotations

import math

import numpy as np

#: kinds of extra pores and their keys in ``extra_pores``
EXTRA_KINDS = ("large", "cluster", "surface", "small")


def texture_field(shape, rng: np.random.Generator, grain: float = 1.0) -> np.ndarray:
    """Zero-mean, unit-std band-limited noise: white noise filtered by a Gaussian of ``grain`` voxels."""
    from scipy.ndimage import gaussian_filter

    f = gaussian_filter(rng.standard_normal(shape).astype(np.float32), grain, mode="wrap")
    f -= f.mean()
    return (f / max(1e-6, float(f.std()))).astype(np.float32)


def drift_field(shape, rng: np.random.Generator) -> np.ndarray:
    """A smooth low-order density drift in [-1, 1]: a random linear trend along the build direction z, a
    weaker one across (y, x) and a radial quadratic term (lighter or denser towards the skin)."""
    nz, ny, nx = shape
    z = np.linspace(-1, 1, nz, dtype=np.float32)[:, None, None]
    y = np.linspace(-1, 1, ny, dtype=np.float32)[None, :, None]
    x = np.linspace(-1, 1, nx, dtype=np.float32)[None, None, :]
    a = rng.uniform(0.6, 1.0) * rng.choice([-1, 1])
    b, c = rng.uniform(-0.4, 0.4, 2)
    d = rng.uniform(0.3, 0.7) * rng.choice([-1, 1])
    f = a * z + b * y + c * x + d * (y * y + x * x - 0.5)
    f = f - f.mean()
    return (f / max(1e-6, float(np.abs(f).max()))).astype(np.float32)


def add_extra_pores(labels: np.ndarray, pores: list[dict], core: np.ndarray, counts: dict,
                    rng: np.random.Generator, *, whole_z: bool) -> np.ndarray:
    """Add the ``counts`` of extra pores (keys of :data:`EXTRA_KINDS`) to ``labels`` and ``pores`` in place.

    Returns the partial-volume map: per voxel the fraction of metal left by the small pores (1 elsewhere),
    by which the caller multiplies the attenuation. A pore that finds no room after 200 tries is skipped.
    """
    from scipy.ndimage import distance_transform_edt

    unknown = set(counts) - set(EXTRA_KINDS)
    if unknown:
        from porelab.errors import ConfigError

        raise ConfigError(f"unknown extra pore kind(s) {sorted(unknown)}; use {', '.join(EXTRA_KINDS)}")
    keep = np.ones(labels.shape, np.float32)
    edt = distance_transform_edt(np.pad(core, ((0, 0), (1, 1), (1, 1))))[:, 1:-1, 1:-1]
    if whole_z:
        nz = core.shape[0]
        zdist = np.minimum(np.arange(nz), nz - 1 - np.arange(nz)) + 1.0
        edt = np.minimum(edt, zdist[:, None, None])
    flat = edt.ravel()
    for kind in EXTRA_KINDS:
        for _ in range(int(counts.get(kind, 0))):
            for _try in range(200):
                spheres, lo_d, hi_d, size = _sample(kind, rng)
                cand = np.flatnonzero((flat >= lo_d) & (flat <= hi_d))
                if cand.size == 0:
                    break
                centre = np.array(np.unravel_index(cand[rng.integers(cand.size)], core.shape), float)
                centre += rng.uniform(-0.5, 0.5, 3)
                if _try_place(labels, pores, keep, core, centre, spheres, kind, size):
                    break
    return keep


def _sample(kind, rng):
    """One extra pore: (list of (offset, semi-axes) ellipsoids, min and max core depth of its centre, size)."""
    if kind == "small":
        r = rng.uniform(0.9, 1.8)
        return [(np.zeros(3), np.full(3, r))], r + 2, np.inf, {"radius": round(r, 2)}
    if kind == "large":
        r = rng.uniform(6.0, 10.0)
        axes = r * rng.uniform(0.85, 1.15, 3)
        return [(np.zeros(3), axes)], axes.max() + 2, np.inf, {"radius": round(r, 2),
                                                               "axes": [round(float(a), 2) for a in axes]}
    if kind == "surface":
        r = rng.uniform(2.0, 4.0)
        return [(np.zeros(3), np.full(3, r))], 1.0, 0.6 * r + 1.0, {"radius": round(r, 2)}
    # cluster: a chain of overlapping spheres
    n = int(rng.integers(3, 6))
    parts, pos, prev = [], np.zeros(3), None
    for _ in range(n):
        r = rng.uniform(1.5, 3.0)
        if prev is not None:
            d = rng.standard_normal(3)
            pos = pos + d / np.linalg.norm(d) * 0.8 * (r + prev)
        parts.append((pos.copy(), np.full(3, r)))
        prev = r
    centre = np.mean([p for p, _ in parts], 0)
    parts = [(p - centre, a) for p, a in parts]
    extent = max(np.linalg.norm(p) + a.max() for p, a in parts)
    return parts, extent + 2, np.inf, {"members": n, "radii": [round(float(a[0]), 2) for _, a in parts]}


def _try_place(labels, pores, keep, core, centre, spheres, kind, size) -> bool:
    from scipy.ndimage import binary_dilation

    extent = max(np.linalg.norm(o) + a.max() for o, a in spheres)
    e = math.ceil(extent) + 2
    lo = np.floor(centre).astype(int) - e
    hi = np.floor(centre).astype(int) + e + 1
    if np.any(lo < 0) or np.any(hi > np.array(labels.shape)):
        return False
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    z, y, x = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    mask = np.zeros(tuple(hi - lo), bool)
    for off, axes in spheres:
        c = centre + off
        mask |= ((z - c[0]) / axes[0]) ** 2 + ((y - c[1]) / axes[1]) ** 2 + ((x - c[2]) / axes[2]) ** 2 <= 1.0
    mask &= core[sl]
    if kind != "surface" and not core[sl][mask].all():
        return False
    nvox = int(mask.sum())
    if nvox == 0 or (labels[sl] > 0)[binary_dilation(mask, np.ones((3, 3, 3), bool))].any():
        return False
    if kind == "surface" and not (~core[sl] & binary_dilation(mask, np.ones((3, 3, 3), bool))).any():
        return False  # must open to the outside
    pid = (max(p["id"] for p in pores) if pores else 0) + 1
    labels[sl][mask] = pid
    if kind == "small":
        own = (labels[sl] == 0) | (labels[sl] == pid)  # never lighten a neighbouring pore's voxels
        keep[sl] *= np.where(own, 1.0 - _occupancy(z, y, x, centre, spheres[0][1][0]), 1.0)
    entry = {"id": pid, "kind": "gas", "centre": [round(float(c), 2) for c in centre], "size": size,
             "voxels": nvox}
    if kind == "cluster":
        entry["cluster"] = size["members"]
    elif kind != "gas":
        entry[kind] = True
    pores.append(entry)
    return True


def _occupancy(z, y, x, c, r, k: int = 4) -> np.ndarray:
    """Fraction of each voxel (unit cube around its centre) inside the sphere (centre ``c``, radius ``r``),
    from ``k³`` regular sub-samples."""
    sub = (np.arange(k) + 0.5) / k - 0.5
    frac = np.zeros(np.broadcast_shapes(z.shape, y.shape, x.shape), np.float32)
    for dz in sub:
        for dy in sub:
            for dx in sub:
                frac += (((z + dz - c[0]) ** 2 + (y + dy - c[1]) ** 2 + (x + dx - c[2]) ** 2) <= r * r)
    return frac / k ** 3
