"""Digital phantoms of additively manufactured (L-PBF) metal parts with exact pore ground truth.

A phantom is a part inside a field of view, arrays ``(z, y, x)`` with ``z`` the build direction:

* a **cylinder** (axis along z, diameter ≈ 0.45 of the field: the Ø5 × 20 mm parts of Iuso et al. 2024,
  scaled) or a **cube** (edge ≈ 0.5 of the field, turned about z by a random angle, faces inside the field);
* one of three **materials** (:data:`MATERIALS`) with its linear attenuation coefficient at ≈ 100 keV;
* a rough **as-built skin**: a gently wavy surface and half-fused powder particles (small spheres partially
  embedded in the surface);
* a gently varying **density** (a low-frequency field of a few percent);
* **pores** of three kinds, strictly inside the part (never cutting the surface, never touching each other):
  gas (spheres, radius 1-4 voxels), keyhole (capsules elongated along z, radius 1-3, length 3-10 voxels,
  tilted ≤ 15°) and lack-of-fusion (flat in z, irregular unions of 3-6 flattened ellipsoidal lobes with a
  larger lateral extent).

The truth is exact by construction: the attenuation map is zero in every pore voxel and the truth mask is
the union of the placed pores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from porelab.errors import ConfigError

# Linear attenuation coefficients (1/mm) at an effective energy of ≈ 100 keV (a 200-225 kV micro-CT spectrum
# behind a Cu/Sn filter). Mass attenuation coefficients are NIST XCOM elemental values at 100 keV
# (Ti 0.272, Al 0.170, V 0.287, Fe 0.372, Cr 0.318, Ni 0.444, Co 0.409, Mo ≈ 1.03 cm²/g), mixed by weight
# fraction (mixture rule) and multiplied by the alloy density; rounded to two digits. What matters for the
# simulation is the ratio: Ti6Al4V attenuates ≈ 2.7× less than the steels, CoCr ≈ 10 % more than 316L.
MATERIALS: dict[str, dict] = {
    "Ti6Al4V": {"mu": 0.12, "density_g_cm3": 4.43, "composition": "Ti-6Al-4V (wt %)"},
    "CoCr": {"mu": 0.34, "density_g_cm3": 8.30, "composition": "Co-28Cr-6Mo (wt %, CoCr-DG1-like)"},
    "316L": {"mu": 0.31, "density_g_cm3": 7.99, "composition": "Fe-17Cr-12Ni-2.5Mo (wt %)"},
}

PORE_KINDS = ("gas", "keyhole", "lof")


@dataclass
class Phantom:
    """A simulated part. ``mu`` is the attenuation map in 1/mm (float32, 0 in air and pores), ``truth`` the
    exact pore mask (uint8), ``object`` the watertight part (uint8, pores count as object), ``pores`` one dict
    per placed pore (``id``, ``kind``, ``centre`` (z, y, x) voxels, ``size`` in voxels, ``voxels``)."""

    mu: np.ndarray
    truth: np.ndarray
    object: np.ndarray
    pores: list[dict]
    material: str
    shape_kind: str
    labels: np.ndarray = field(repr=False, default=None)  # int32 pore ids (0 = no pore), for checks

    @property
    def porosity_percent(self) -> float:
        return 100.0 * float(self.truth.sum()) / max(1, int(self.object.sum()))


def make_phantom(
    shape: tuple[int, int, int] = (96, 128, 128),
    *,
    part: str = "cylinder",
    material: str = "316L",
    porosity: float = 0.75,
    seed: int | np.random.Generator = 0,
    size_fraction: float | None = None,
    roughness: float = 1.0,
    density_variation: float = 0.02,
    kind_weights: dict[str, float] | None = None,
    texture: float = 0.0,
    drift: float = 0.0,
    extra_pores: dict[str, int] | None = None,
) -> Phantom:
    """Build a phantom part with pores of three kinds.

    Parameters
    ----------
    shape : (z, y, x) voxels; y and x must be equal (a square axial field of view).
    part : ``"cylinder"`` (axis along z, spans all slices) or ``"cube"`` (whole cube inside the field).
    material : a key of :data:`MATERIALS`.
    porosity : target pore volume in percent of the watertight part (0.05-5; the paper's parts: ~0.1-2 %).
    seed : integer seed or a numpy Generator; the same seed gives the same phantom.
    size_fraction : part diameter (cylinder) or edge (cube) as a fraction of the field; default 0.45 / 0.5.
    roughness : scales the surface particles' number (0 = smooth machined surface).
    density_variation : peak relative amplitude of the low-frequency density field (0.02 = ±2 %).
    kind_weights : relative frequency of ``gas``, ``keyhole``, ``lof`` pores (default 0.5/0.3/0.2).
    texture : relative std of the microstructure texture in µ (``extras.texture_field``; 0 = none).
    drift : peak relative amplitude of the low-order density drift (``extras.drift_field``; 0 = none).
    extra_pores : counts of extra pores by kind ``small``, ``cluster``, ``surface``, ``large``
        (``extras.add_extra_pores``), placed after the regular pores and on top of ``porosity``.

    Returns
    -------
    Phantom
    """
    nz, ny, nx = (int(s) for s in shape)
    if ny != nx:
        raise ConfigError(f"phantom field must be square in (y, x), got shape {tuple(shape)}")
    if material not in MATERIALS:
        raise ConfigError(f"unknown material {material!r}; choose one of: {', '.join(MATERIALS)}")
    if part not in ("cylinder", "cube"):
        raise ConfigError(f"unknown part shape {part!r}; choose 'cylinder' or 'cube'")
    if ny < 16 or nz < (16 if part == "cube" else 4):
        raise ConfigError(f"phantom shape {tuple(shape)} is too small (need y, x >= 16; z >= 4, cube z >= 16)")
    if not 0.0 <= porosity <= 5.0:
        raise ConfigError(f"porosity {porosity} % is out of range (0-5 %)")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    zz, yy, xx = _grid(nz, ny, nx)
    cy = (ny - 1) / 2 + rng.uniform(-0.02, 0.02) * ny
    cx = (nx - 1) / 2 + rng.uniform(-0.02, 0.02) * nx
    if part == "cylinder":
        frac = 0.45 if size_fraction is None else float(size_fraction)
        radius = frac * nx / 2
        core, particles_at = _cylinder(zz, yy, xx, nz, cy, cx, radius, rng)
    else:
        frac = 0.5 if size_fraction is None else float(size_fraction)
        core, particles_at = _cube(zz, yy, xx, nz, cy, cx, frac * nx, rng)

    solid = core.copy()
    _add_powder_particles(solid, core, particles_at, rng, roughness)
    # keep everything inside the inscribed circle of the field (a parallel-beam CT requirement)
    solid &= ((yy - (ny - 1) / 2) ** 2 + (xx - (nx - 1) / 2) ** 2) < (nx / 2 - 1.5) ** 2

    labels, pores = _place_pores(core, solid, porosity, rng, kind_weights, whole_z=(part == "cylinder"))
    density = 1.0 + density_variation * _smooth_field((nz, ny, nx), rng)
    if texture > 0 or drift > 0 or extra_pores:
        mu = _with_extras(solid, core, labels, pores, density, MATERIALS[material]["mu"], rng,
                          texture=texture, drift=drift, extra_pores=extra_pores or {},
                          whole_z=(part == "cylinder"))
    else:
        mu = np.where(solid & (labels == 0), MATERIALS[material]["mu"] * density, 0.0).astype(np.float32)
    return Phantom(mu=mu, truth=(labels > 0).astype(np.uint8), object=solid.astype(np.uint8), pores=pores,
                   material=material, shape_kind=part, labels=labels)


def _with_extras(solid, core, labels, pores, density, mu_metal, rng, *, texture, drift, extra_pores, whole_z):
    """Attenuation map with texture, drift and extra pores (``porelab.simulate.extras``); ``labels`` and
    ``pores`` gain the extra pores in place. Small pores keep their partial volume: their voxels hold the
    metal's attenuation times the fraction of the voxel outside the pore."""
    from porelab.simulate import extras

    if texture > 0:
        density = density + texture * extras.texture_field(labels.shape, rng)
    if drift > 0:
        density = density + drift * extras.drift_field(labels.shape, rng)
    keep = extras.add_extra_pores(labels, pores, core, extra_pores, rng, whole_z=whole_z)
    partial = keep < 1.0
    metal = solid & ((labels == 0) | partial)
    return np.where(metal, mu_metal * np.maximum(density, 0.0) * keep, 0.0).astype(np.float32)


# --------------------------------------------------------------------------------------------- geometry


def _grid(nz, ny, nx):
    return (np.arange(nz, dtype=np.float32)[:, None, None], np.arange(ny, dtype=np.float32)[None, :, None],
            np.arange(nx, dtype=np.float32)[None, None, :])


def _cylinder(zz, yy, xx, nz, cy, cx, radius, rng):
    """Cylinder along z whose radius wavers gently with angle and height (layer-wise melt-track waviness)."""
    theta = np.arctan2(yy - cy, xx - cx)
    wave = np.zeros((nz, 1, 1), np.float32) + np.zeros_like(theta)
    for _ in range(4):
        k, m = rng.integers(1, 6), rng.uniform(0.5, 3.0)
        wave = wave + rng.uniform(0.1, 0.3) * np.sin(k * theta + m * 2 * np.pi * zz / max(nz, 1)
                                                     + rng.uniform(0, 2 * np.pi))
    r = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    core = r <= radius + wave

    def particles_at(n):
        """Centres (z, y, x) of surface particles and the local outward normal."""
        th = rng.uniform(0, 2 * np.pi, n)
        z = rng.uniform(0, nz - 1, n)
        normal = np.stack([np.zeros(n), np.sin(th), np.cos(th)], 1)
        base = np.stack([z, cy + radius * np.sin(th), cx + radius * np.cos(th)], 1)
        area = 2 * np.pi * radius * nz
        return base, normal, area

    return core, particles_at


def _cube(zz, yy, xx, nz, cy, cx, edge, rng):
    """Cube of the given edge turned about z by a random angle; its top and bottom faces inside the field."""
    edge_z = min(edge, nz - 8)
    cz = (nz - 1) / 2
    ang = rng.uniform(0, np.pi / 2)
    ca, sa = math.cos(ang), math.sin(ang)
    u = (yy - cy) * ca + (xx - cx) * sa
    v = -(yy - cy) * sa + (xx - cx) * ca
    h = edge / 2
    core = (np.abs(u) <= h) & (np.abs(v) <= h) & (np.abs(zz - cz) <= edge_z / 2)

    def particles_at(n):
        side_area, top_area = 4 * edge * edge_z, 2 * edge * edge
        p_side = side_area / (side_area + top_area)
        face = np.where(rng.uniform(size=n) < p_side, rng.integers(0, 4, n), rng.integers(4, 6, n))
        a, b = rng.uniform(-h, h, n), rng.uniform(-h, h, n)
        zc = rng.uniform(-edge_z / 2, edge_z / 2, n)
        U = np.select([face == 0, face == 1, face == 2, face == 3], [h, -h, a, a], a)
        V = np.select([face == 0, face == 1, face == 2, face == 3], [a, a, h, -h], b)
        Z = np.select([face == 4, face == 5], [edge_z / 2, -edge_z / 2], zc)
        nu = np.select([face == 0, face == 1], [1.0, -1.0], 0.0)
        nv = np.select([face == 2, face == 3], [1.0, -1.0], 0.0)
        nzn = np.select([face == 4, face == 5], [1.0, -1.0], 0.0)
        y = cy + U * ca - V * sa
        x = cx + U * sa + V * ca
        base = np.stack([cz + Z, y, x], 1)
        normal = np.stack([nzn, nu * ca - nv * sa, nu * sa + nv * ca], 1)
        return base, normal, side_area + top_area

    return core, particles_at


def _add_powder_particles(solid, core, particles_at, rng, roughness):
    """Half-fused powder particles: spheres (radius 0.8-2 voxels) whose centres sit between 0.3 r inside and
    0.6 r outside the surface, covering about a third of it. Marked in ``solid`` in place."""
    if roughness <= 0:
        return
    area = particles_at(0)[2]
    n = int(roughness * 0.35 * area / (np.pi * 1.3 ** 2))
    base, normal, _ = particles_at(n)
    radii = rng.uniform(0.8, 2.0, n)
    depth = rng.uniform(-0.3, 0.6, n) * radii
    centres = base + normal * depth[:, None]
    for c, r in zip(centres, radii):
        _paint_sphere(solid, c, r)


def _paint_sphere(mask, c, r):
    lo = np.maximum(np.floor(c - r).astype(int), 0)
    hi = np.minimum(np.ceil(c + r).astype(int) + 1, mask.shape)
    if np.any(hi <= lo):
        return
    z, y, x = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] |= ((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) <= r * r


def _smooth_field(shape, rng):
    """Zero-mean low-frequency field in [-1, 1]: random values on a coarse (every ~16 voxels) grid,
    interpolated with cubic splines."""
    from scipy.ndimage import zoom

    coarse = [max(2, round(s / 16) + 1) for s in shape]
    f = rng.standard_normal(coarse)
    f = zoom(f, [s / c for s, c in zip(shape, coarse)], order=3, mode="nearest", grid_mode=True)
    f = f[: shape[0], : shape[1], : shape[2]]
    f -= f.mean()
    return (f / max(1e-6, np.abs(f).max())).astype(np.float32)


# ---------------------------------------------------------------------------------------------- pores


def _pore_shape(kind, rng):
    """Sample one pore: returns (size dict, extent in voxels, function(dz, dy, dx) -> bool)."""
    if kind == "gas":
        r = 1.0 + 3.0 * rng.uniform() ** 1.5
        return {"radius": round(r, 2)}, r, lambda dz, dy, dx: dz * dz + dy * dy + dx * dx <= r * r
    if kind == "keyhole":
        r = rng.uniform(1.0, 3.0)
        length = rng.uniform(max(3.0, 2 * r + 1), 10.0)  # total length along the axis, caps included
        half = max(0.0, length / 2 - r)
        tilt, az = rng.uniform(0, np.radians(15)), rng.uniform(0, 2 * np.pi)
        a = np.array([math.cos(tilt), math.sin(tilt) * math.sin(az), math.sin(tilt) * math.cos(az)])

        def inside(dz, dy, dx):
            t = np.clip(dz * a[0] + dy * a[1] + dx * a[2], -half, half)
            return (dz - t * a[0]) ** 2 + (dy - t * a[1]) ** 2 + (dx - t * a[2]) ** 2 <= r * r

        return {"radius": round(r, 2), "length": round(length, 2), "tilt_deg": round(math.degrees(tilt), 1)}, \
            half + r, inside
    # lack of fusion: flat, irregular, several lobes
    n = int(rng.integers(3, 7))
    lobes = []
    for _ in range(n):
        a, b = rng.uniform(1.5, 4.0), rng.uniform(1.2, 3.0)
        c = rng.uniform(1.0, 1.7)
        off = rng.uniform(-1, 1, 2) * rng.uniform(1.0, 4.0)
        lobes.append((a, b, c, rng.uniform(0, np.pi), rng.uniform(-0.4, 0.4), off[0], off[1]))
    extent = max(math.hypot(o1, o2) + max(a, b) for a, b, c, ang, oz, o1, o2 in lobes)

    def inside(dz, dy, dx):
        m = np.zeros(np.broadcast_shapes(np.shape(dz), np.shape(dy), np.shape(dx)), bool)
        for a, b, c, ang, oz, o1, o2 in lobes:
            py, px = dy - o1, dx - o2
            u = py * math.cos(ang) + px * math.sin(ang)
            v = -py * math.sin(ang) + px * math.cos(ang)
            m |= (u / a) ** 2 + (v / b) ** 2 + ((dz - oz) / c) ** 2 <= 1.0
        return m

    thickness = max(2 * c + 2 * abs(oz) for a, b, c, ang, oz, o1, o2 in lobes)
    size = {"lobes": n, "lateral_extent": round(2 * extent, 2), "thickness": round(thickness, 2)}
    return size, max(extent, thickness / 2), inside


def _place_pores(core, solid, porosity, rng, kind_weights, *, whole_z):
    """Place non-touching pores strictly inside ``core`` until the pore volume reaches ``porosity`` % of the
    watertight part. Returns (int32 label volume, list of pore dicts)."""
    from scipy.ndimage import binary_dilation, distance_transform_edt

    labels = np.zeros(core.shape, np.int32)
    pores: list[dict] = []
    target = porosity / 100.0 * float(solid.sum())
    if target <= 0:
        return labels, pores
    edt = distance_transform_edt(np.pad(core, ((0, 0), (1, 1), (1, 1))))[:, 1:-1, 1:-1]
    if whole_z:  # the cylinder leaves the field at z = 0 and z = nz-1: keep pores whole inside the field
        zdist = np.minimum(np.arange(core.shape[0]), core.shape[0] - 1 - np.arange(core.shape[0])) + 1.0
        edt = np.minimum(edt, zdist[:, None, None])
    flat = edt.ravel()
    weights = {"gas": 0.5, "keyhole": 0.3, "lof": 0.2} if kind_weights is None else dict(kind_weights)
    kinds = [k for k in PORE_KINDS if weights.get(k, 0) > 0]
    if not kinds:
        raise ConfigError(f"kind_weights {kind_weights} select no pore kind; use {', '.join(PORE_KINDS)}")
    p = np.array([weights[k] for k in kinds], float)
    p /= p.sum()
    margin = 2.0
    cand_cache: dict[int, np.ndarray] = {}
    placed, failures = 0.0, 0
    struct = np.ones((3, 3, 3), bool)
    while placed < target and failures < 400:
        kind = kinds[rng.choice(len(kinds), p=p)]
        size, extent, inside = _pore_shape(kind, rng)
        need = math.ceil(extent + margin)
        if need not in cand_cache:
            cand_cache[need] = np.flatnonzero(flat >= need)
        cand = cand_cache[need]
        if cand.size == 0:
            failures += 1
            continue
        centre = np.array(np.unravel_index(cand[rng.integers(cand.size)], core.shape), float)
        centre += rng.uniform(-0.5, 0.5, 3)
        e = math.ceil(extent) + 1
        lo = np.floor(centre).astype(int) - e
        hi = np.floor(centre).astype(int) + e + 1
        if np.any(lo < 0) or np.any(hi > np.array(core.shape)):
            failures += 1
            continue
        z, y, x = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        shape_mask = inside(z - centre[0], y - centre[1], x - centre[2])
        nvox = int(shape_mask.sum())
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        # a pore must be whole, inside the part core (not the skin), touch no other pore (26-neighbourhood),
        # and not overshoot the target by much
        if (nvox == 0 or not core[sl][shape_mask].all()
                or (labels[sl] > 0)[binary_dilation(shape_mask, struct)].any()
                or placed + nvox > 1.25 * target + 8):
            failures += 1
            continue
        pid = len(pores) + 1
        labels[sl][shape_mask] = pid
        placed += nvox
        pores.append({"id": pid, "kind": kind, "centre": [round(float(c), 2) for c in centre], "size": size,
                      "voxels": nvox})
    return labels, pores
