"""A second, independent CT generator: other parts, other pores, other texture, other imaging physics.

porelab's own simulator (:mod:`porelab.simulate.phantom`, :mod:`porelab.simulate.ct`) scans a cylinder or a
cube by projection physics (line integrals, Poisson counts, filtered back-projection) in 1/mm. A method tuned
on it can quietly depend on its look: its grey scale, its noise texture, its pore shapes. This module makes
scans of the same kind of object by other means and shares no code with those modules, so a method can be
checked on scans that porelab's simulator did not make (docs/simulator.md, "Another generator (othergen)").

* **parts**: a hexagonal prism (vertical edges and top and bottom rims chamfered) or a tube (a cylinder with
  an eccentric through-bore, outer rims chamfered), both ending inside the field with air above and below,
  with layer lines and a smooth waviness on the surface; partial volume by 3³ supersampling;
* **pores**: randomly oriented triaxial ellipsoids (``gas``), chains of separate small beads along the build
  axis (``keyhole``, one entry per bead, ``chain`` its chain), thin irregular sheets near the build plane cut
  from thresholded smooth noise (``lof``); partial volume by 4³ supersampling; the truth is the voxels that
  are at least half pore, one 26-connected component per entry of the pore list;
* **texture**: columnar grains along z (a Voronoi tessellation of each slice whose seeds drift slowly with
  height, each column split into grains of random length), each grain ±2 % in density;
* **imaging**, in the image domain (:func:`image_part`): a non-Gaussian point spread (a sharp core with a
  negative overshoot and a wide tail), beam-hardening cupping as a radial profile about the part's centre,
  spatially correlated noise whose amplitude grows toward the part's centre, concentric rings about the
  rotation axis (the field's centre), dark streaks along the prism's corner-to-corner diagonals, a slow
  drift along z, and uint16-like grey values (air ≈ 10000-12000, metal 24000-46000, rounded to integers)
  stored as float32.

Arrays are (z, y, x), z the build direction and the rotation axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from porelab.errors import ConfigError

PARTS = ("hexprism", "tube")
PORE_KINDS = ("gas", "keyhole", "lof")
_STRUCT26 = np.ones((3, 3, 3), bool)
_PART_SS = 3  # sub-samples per voxel edge for the part's partial volume
_PORE_SS = 4  # ... for the pores'


@dataclass
class OtherPhantom:
    """A part of the other generator. ``density`` is the metal fraction of each voxel times the grain density
    (float32, ≈ 1 in metal, 0 in air and pores, fractions at edges), ``truth`` the pore mask (uint8, voxels at
    least half pore), ``object`` the part (uint8, voxels at least half part; pores count as part, the bore
    does not), ``labels`` int32 pore ids matching ``pores`` (``id``, ``kind``, ``centre`` (z, y, x), ``size``,
    ``voxels``, ``volume`` (sub-voxel pore volume in voxels)), ``geometry`` what the imaging needs (part
    centre, radius, z-range, corner directions)."""

    density: np.ndarray
    truth: np.ndarray
    object: np.ndarray
    labels: np.ndarray
    pores: list[dict]
    part: str
    geometry: dict = field(default_factory=dict)

    @property
    def porosity_percent(self) -> float:
        return 100.0 * float(self.truth.sum()) / max(1, int(self.object.sum()))


# ---------------------------------------------------------------------------------------------- parts
def _geometry(shape, part: str, rng: np.random.Generator) -> dict:
    """Size and placement of a part: centre a little off the rotation axis, z-range inside the field."""
    nz, ny, nx = shape
    n = min(ny, nx)
    g = {"part": part, "cy": (ny - 1) / 2 + rng.uniform(-0.03, 0.03) * n,
         "cx": (nx - 1) / 2 + rng.uniform(-0.03, 0.03) * n,
         "z0": rng.uniform(0.07, 0.12) * nz, "z1": rng.uniform(0.88, 0.93) * (nz - 1)}
    if part == "hexprism":
        a = rng.uniform(0.21, 0.23) * n  # apothem: across flats ≈ 0.44 of the field
        g.update(apothem=a, theta=rng.uniform(0, math.pi / 3), corner=a * 1.09, chamfer=max(1.0, 0.08 * a),
                 radius=a / math.cos(math.pi / 6))
    elif part == "tube":
        r = rng.uniform(0.22, 0.24) * n
        off = rng.uniform(0, 0.08 * r)
        ang = rng.uniform(0, 2 * math.pi)
        g.update(outer=r, bore=rng.uniform(0.3, 0.38) * r, ey=off * math.sin(ang), ex=off * math.cos(ang),
                 chamfer=max(1.0, 0.08 * r), radius=r)
    else:
        raise ConfigError(f"unknown part {part!r}; choose one of: {', '.join(PARTS)}")
    g["period"], g["phase"] = rng.uniform(2.5, 4.0), rng.uniform(0, 2 * math.pi)
    return g


def _section(g: dict, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(signed distance of the cross-section, signed distance of the chamfered outer wall), voxels, < 0
    inside; for the tube the first includes the bore."""
    py, px = y - g["cy"], x - g["cx"]
    if g["part"] == "hexprism":
        t = g["theta"]
        u, v = py * math.cos(t) + px * math.sin(t), -py * math.sin(t) + px * math.cos(t)
        flats = [np.abs(u * math.cos(p) + v * math.sin(p)) for p in (0, math.pi / 3, 2 * math.pi / 3)]
        cuts = [np.abs(u * math.cos(p) + v * math.sin(p)) for p in (math.pi / 6, math.pi / 2, 5 * math.pi / 6)]
        d = np.maximum(np.maximum.reduce(flats) - g["apothem"], np.maximum.reduce(cuts) - g["corner"])
        return d, d
    outer = np.hypot(py, px) - g["outer"]
    bore = g["bore"] - np.hypot(py - g["ey"], px - g["ex"])
    return np.maximum(outer, bore), outer


def _sdf(g: dict, d2: np.ndarray, wall: np.ndarray, z) -> np.ndarray:
    """Signed distance of the part at heights ``z`` from its section distances: the prism between z0 and z1
    with 45° chamfers of size ``chamfer`` at the outer rims."""
    dz = np.maximum(g["z0"] - z, z - g["z1"])
    return np.maximum(np.maximum(d2, dz), (wall + dz + g["chamfer"]) / math.sqrt(2))


def _smooth_noise(shape, sigma, rng: np.random.Generator) -> np.ndarray:
    """White Gaussian noise filtered by a Gaussian of ``sigma`` voxels, scaled to zero mean and unit std."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, mode="wrap")
    f -= f.mean()
    return (f / max(float(f.std()), 1e-12)).astype(np.float32)


def _render_part(shape, g: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(occupancy of each voxel by the part (float32, 3³ sub-samples), signed distance at voxel centres
    without the surface roughness)."""
    nz, ny, nx = shape
    s = _PART_SS
    sub = (np.arange(s) + 0.5) / s - 0.5
    yf = (np.arange(ny)[:, None] + sub).ravel()[:, None]
    xf = (np.arange(nx)[:, None] + sub).ravel()[None, :]
    d2f, wallf = _section(g, yf, xf)
    # surface roughness (voxels, + = the surface recedes): layer lines along z and a smooth waviness
    rough = 0.3 * _smooth_noise(shape, 3.0, rng)
    layer = 0.25 * np.sin(2 * math.pi * np.arange(nz) / g["period"] + g["phase"])
    occ = np.empty(shape, np.float32)
    for iz in range(nz):
        r = np.repeat(np.repeat(rough[iz] + layer[iz], s, 0), s, 1)
        inside = np.zeros((ny * s, nx * s), np.float32)
        for dz in sub:
            inside += _sdf(g, d2f, wallf, iz + dz) + r <= 0
        occ[iz] = inside.reshape(ny, s, nx, s).mean((1, 3)) / s
    d2c, wallc = _section(g, np.arange(ny, dtype=np.float64)[:, None], np.arange(nx, dtype=np.float64)[None, :])
    sdf = _sdf(g, d2c[None], wallc[None], np.arange(nz, dtype=np.float64)[:, None, None]).astype(np.float32)
    return occ, sdf


def _grains(shape, rng: np.random.Generator, width: float = 7.0, length: float = 24.0) -> np.ndarray:
    """Columnar grain field (float32, unit std, constant within a grain): a Voronoi tessellation of each
    slice whose seeds drift slowly with z (tilted, wandering columns), each column split along z into grains
    of exponentially distributed length (mean ``length`` voxels)."""
    from scipy.spatial import cKDTree

    nz, ny, nx = shape
    n = max(4, int(1.3 * ny * nx / width**2))
    seeds = rng.uniform((0, 0), (ny, nx), (n, 2))
    drift = rng.normal(0.0, 0.05, (n, 2))
    values = np.empty((n, nz), np.float32)
    for k in range(n):  # piecewise-constant value per column along z
        z, start = 0, -rng.uniform(0, length)
        while z < nz:
            end = int(start + rng.exponential(length)) + 1
            values[k, z:max(end, z + 1)] = rng.standard_normal()
            z, start = max(end, z + 1), end
    pix = np.stack(np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij"), -1).reshape(-1, 2)
    out = np.empty(shape, np.float32)
    for iz in range(nz):
        _, idx = cKDTree(seeds + drift * iz).query(pix)
        out[iz] = values[idx, iz].reshape(ny, nx)
    return np.clip(out, -2.5, 2.5)


# ---------------------------------------------------------------------------------------------- pores
def _rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random rotation matrix (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _frame(normal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows: two in-plane unit vectors (random in-plane angle) and ``normal``."""
    a = np.array([0.0, 1.0, 0.0]) if abs(normal[1]) < 0.9 else np.array([0.0, 0.0, 1.0])
    e1 = np.cross(normal, a)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(normal, e1)
    t = rng.uniform(0, 2 * math.pi)
    return np.stack([e1 * math.cos(t) + e2 * math.sin(t), -e1 * math.sin(t) + e2 * math.cos(t), normal])


def _tilted(max_deg: float, rng: np.random.Generator) -> np.ndarray:
    """A unit (z, y, x) vector within ``max_deg`` of the z axis."""
    t, a = math.radians(rng.uniform(0, max_deg)), rng.uniform(0, 2 * math.pi)
    return np.array([math.cos(t), math.sin(t) * math.sin(a), math.sin(t) * math.cos(a)])


def _ellipsoid(axes, rot):
    """Inside-test of an ellipsoid with semi-axes ``axes`` along the rows of ``rot``."""
    def inside(dz, dy, dx):
        q = 0.0
        for (rz, ry, rx), a in zip(rot, axes):
            q = q + ((rz * dz + ry * dy + rx * dx) / a) ** 2
        return q <= 1.0
    return inside


def _sheet(rng: np.random.Generator, room: float):
    """A lack-of-fusion sheet: a footprint in its plane from a radial bump plus smooth noise, thresholded
    and kept connected; a thickness tapering toward the rim; a gently curved mid-surface; the plane within
    20° of the build plane; its half-width 3-6.5 voxels (at most ``room`` − 4.5, ``room`` the depth of the
    part's deepest voxel, so that a sheet fits a small part). Returns (inside-test, extent, size)."""
    half = rng.uniform(3.0, max(3.0, min(6.5, room - 4.5)))
    tmax = rng.uniform(1.4, 2.5)
    step = 0.25
    m = math.ceil(2 * (half + 1) / step) + 1
    c = np.linspace(-(half + 1), half + 1, m)
    rho2 = c[:, None] ** 2 + c[None, :] ** 2
    f = 1.0 - rho2 / half**2 + 0.6 * _smooth_noise((m, m), half / 2.5 / step, rng)
    f[rho2 > (half + 1) ** 2] = -1.0
    mask = f > 0.3
    lab, nlab = ndimage.label(mask, np.ones((3, 3), bool))
    if nlab > 1:
        mask = lab == 1 + int(np.argmax(ndimage.sum_labels(mask, lab, np.arange(1, nlab + 1))))
    thick = np.where(mask, tmax * np.sqrt(np.clip((f - 0.3) / max(float(f.max()) - 0.3, 1e-6), 0, 1)), 0.0)
    bend = 0.6 * _smooth_noise((m, m), half / 1.5 / step, rng)
    frame = _frame(_tilted(20.0, rng), rng)

    reach_w = tmax / 2 + float(np.abs(bend).max())

    def inside(dz, dy, dx):
        u, v, w = np.broadcast_arrays(*((r[0] * dz + r[1] * dy + r[2] * dx) for r in frame))
        out = np.zeros(u.shape, bool)
        near = np.abs(w) <= reach_w  # only points near the plane can be inside: look those up
        coords = np.stack([(u[near] + half + 1) / step, (v[near] + half + 1) / step])
        t = ndimage.map_coordinates(thick, coords, order=1, cval=0.0)
        h = ndimage.map_coordinates(bend, coords, order=1, mode="nearest")
        out[near] = np.abs(w[near] - h) <= t / 2
        return out

    extent = half + 1 + reach_w  # the footprint lies within the disc of radius half + 1
    return inside, extent, {"half_width": round(half, 2), "thickness": round(tmax, 2),
                            "tilt_deg": round(math.degrees(math.acos(min(1.0, abs(frame[2][0])))), 1)}


def _sample(kind: str, rng: np.random.Generator, room: float) -> list[tuple]:
    """One pore (or a keyhole chain): a list of bodies (offset (z, y, x), inside-test, extent, size). A chain
    has 3-5 beads, fewer (not under 3) when it would be longer than the part's depth ``room`` allows."""
    if kind == "gas":
        a = 1.2 + 4.3 * rng.uniform() ** 1.8
        axes = (a, a * rng.uniform(0.6, 1.0), a * rng.uniform(0.4, 0.85))
        return [(np.zeros(3), _ellipsoid(axes, _rotation(rng)), axes[0],
                 {"semi_axes": [round(v, 2) for v in axes]})]
    if kind == "keyhole":
        axis = _tilted(8.0, rng)
        rot = _frame(axis, rng)
        beads, t = [], 0.0
        for i in range(int(rng.integers(3, 6))):
            r = rng.uniform(0.9, 2.0)
            e = rng.uniform(1.0, 1.4) * r  # elongated along the chain
            if i:
                t += beads[-1][1] + e + rng.uniform(1.6, 3.0)
            beads.append((t, e, r))
        while len(beads) > 3 and beads[-1][0] / 2 + beads[-1][1] > room - 3.0:
            beads.pop()
        t = beads[-1][0]
        mid = t / 2
        return [(axis * (tb - mid), _ellipsoid((r, r, e), rot), e,
                 {"radius": round(r, 2), "length": round(2 * e, 2)}) for tb, e, r in beads]
    inside, extent, size = _sheet(rng, room)
    return [(np.zeros(3), inside, extent, size)]


def _occupancy(lo, hi, centre, inside) -> np.ndarray:
    """Fraction of each voxel of the box [lo, hi) inside a body centred at ``centre`` (4³ sub-samples)."""
    s = _PORE_SS
    sub = (np.arange(s) + 0.5) / s - 0.5
    axes = [(np.arange(a, b)[:, None] + sub).ravel() - c for a, b, c in zip(lo, hi, centre)]
    m = inside(axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :])
    n = [b - a for a, b in zip(lo, hi)]
    return m.reshape(n[0], s, n[1], s, n[2], s).mean((1, 3, 5), dtype=np.float32)


def _place_pores(sdf, n_object: int, porosity: float, rng: np.random.Generator, weights: dict):
    """Place pores strictly inside the part (2.5 voxels below the surface) until their truth reaches
    ``porosity`` % of the part (never more than 25 % + 8 voxels over); a pore's footprint grown by one
    voxel touches no other. The first pores placed are one of each kind, so every kind is present when it
    fits (the widest kinds first, while the deepest interior is free); a kind that fails 30 times in a row
    is not drawn again (it does not fit this part). Returns (pore occupancy float32, int32
    labels, pore list)."""
    shape = sdf.shape
    occ = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.int32)
    pores: list[dict] = []
    target = porosity / 100.0 * n_object
    kinds = [k for k in PORE_KINDS if weights.get(k, 0) > 0]
    if not kinds:
        raise ConfigError(f"kind weights {weights} select no pore kind; use {', '.join(PORE_KINDS)}")
    p = np.array([weights[k] for k in kinds], float)
    p /= p.sum()
    forced = sorted(kinds, key=lambda k: {"lof": 0, "keyhole": 1}.get(k, 2))  # the widest first
    placed, failures, forced_failures, chains = 0, 0, 0, 0
    streak: dict[str, int] = {}  # failures of each kind since its last success
    cand_cache: dict[int, np.ndarray] = {}
    flat = sdf.ravel()
    room = -float(sdf.min())
    while placed < target and failures < 400:
        kind = forced[0] if forced else kinds[rng.choice(len(kinds), p=p)]
        bodies = _sample(kind, rng, room)
        # candidate centres deep enough for the widest body (the footprint test below decides)
        need = min(math.ceil(max(ext for _, _, ext, _ in bodies) + 2.5), math.floor(room))
        if need not in cand_cache:
            cand_cache[need] = np.flatnonzero(flat <= -need)
        cand = cand_cache[need]
        ok = cand.size > 0
        if ok:
            centre = np.array(np.unravel_index(cand[rng.integers(cand.size)], shape), float)
            centre += rng.uniform(-0.5, 0.5, 3)
            ok, rendered = _render_bodies(bodies, centre, occ, sdf)
        if ok:
            nvox = sum(int(t.sum()) for _, _, t, _ in rendered)
            ok = placed + nvox <= 1.25 * target + 8 or not pores
        if not ok:
            failures += 1
            if forced:
                forced_failures += 1
                if forced_failures >= 25:
                    forced.pop(0)
                    forced_failures = 0
            else:
                streak[kind] = streak.get(kind, 0) + 1
                if streak[kind] >= 30 and len(kinds) > 1:  # too wide for this part (a thin wall): stop trying
                    keep = [i for i, k in enumerate(kinds) if k != kind]
                    kinds, p = [kinds[i] for i in keep], p[keep] / p[keep].sum()
            continue
        streak[kind] = 0
        if forced:
            forced.pop(0)
            forced_failures = 0
        chain = None
        if kind == "keyhole":
            chains += 1
            chain = chains
        for (sl, o, t, c), (_, _, _, size) in zip(rendered, bodies):
            pid = len(pores) + 1
            occ[sl] = np.maximum(occ[sl], o)
            labels[sl][t] = pid
            entry = {"id": pid, "kind": kind, "centre": [round(float(v), 2) for v in c], "size": size,
                     "voxels": int(t.sum()), "volume": round(float(o.sum()), 2)}
            if chain is not None:
                entry["chain"] = chain
            pores.append(entry)
            placed += int(t.sum())
    return occ, labels, pores


def _render_bodies(bodies, centre, occ, sdf):
    """Render the bodies of one pore at ``centre``; (ok, [(slice, occupancy, truth, body centre)]). Not ok
    when a body has no truth voxel, a truth is not one 26-connected component, two bodies' truths touch, a
    footprint leaves the part's interior or comes within one voxel of an existing pore."""
    shape = np.array(sdf.shape)
    out = []
    for off, inside, ext, _ in bodies:
        c = centre + off
        ci = tuple(np.clip(np.rint(c).astype(int), 0, shape - 1))
        if sdf[ci] > -2.5 or occ[ci] > 0:  # cheap test before rendering: the centre itself is not free
            return False, []
        lo = np.floor(c - ext).astype(int) - 1
        hi = np.ceil(c + ext).astype(int) + 2
        if np.any(lo < 1) or np.any(hi > shape - 1):
            return False, []
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        o = _occupancy(lo, hi, c, inside)
        t = o >= 0.5
        if not t.any() or ndimage.label(t, _STRUCT26)[1] != 1:
            return False, []
        foot = o > 0.01
        if (sdf[sl][foot] > -2.5).any():
            return False, []
        big = tuple(slice(a - 1, b + 1) for a, b in zip(lo, hi))  # lo ≥ 1, hi ≤ shape - 1: inside
        pad = np.zeros(tuple(s.stop - s.start for s in big), bool)
        inner = tuple(slice(a - s.start, a - s.start + (b - a)) for a, b, s in zip(lo, hi, big))
        pad[inner] = foot
        if (occ[big][ndimage.binary_dilation(pad, _STRUCT26)] > 0.01).any():
            return False, []
        out.append((sl, o, t, c))
    if len(out) > 1:  # the beads of a chain: separate components
        lo = np.min([[s.start for s in sl] for sl, *_ in out], 0)
        hi = np.max([[s.stop for s in sl] for sl, *_ in out], 0)
        union = np.zeros(hi - lo, bool)
        for sl, _, t, _ in out:
            union[tuple(slice(s.start - a, s.stop - a) for s, a in zip(sl, lo))] |= t
        if ndimage.label(union, _STRUCT26)[1] != len(out):
            return False, []
    return True, out


def make_other_phantom(shape=(96, 128, 128), *, part: str = "hexprism", porosity: float = 0.75,
                       seed: int | np.random.Generator = 0, grain_contrast: float = 0.02,
                       kind_weights: dict | None = None) -> OtherPhantom:
    """A part of the other generator with gas, keyhole-chain and lack-of-fusion pores.

    Parameters
    ----------
    shape : (z, y, x) voxels of the field.
    part : ``hexprism`` or ``tube``.
    porosity : target pore volume (truth voxels) in % of the part.
    seed : int or Generator; the same seed gives identical arrays.
    grain_contrast : relative std of the columnar grains' density.
    kind_weights : relative frequency of ``gas``, ``keyhole`` (chains), ``lof`` (default 0.45 / 0.25 / 0.3).
    """
    if len(shape) != 3 or min(shape) < 16:
        raise ConfigError(f"shape {shape} must be three sizes (z, y, x) of at least 16 voxels")
    if not 0.0 <= porosity <= 5.0:
        raise ConfigError(f"porosity {porosity} % is out of range (0-5 %)")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    shape = tuple(int(v) for v in shape)
    g = _geometry(shape, part, rng)
    part_occ, sdf = _render_part(shape, g, rng)
    obj = part_occ >= 0.5
    weights = {"gas": 0.45, "keyhole": 0.25, "lof": 0.3} if kind_weights is None else dict(kind_weights)
    pore_occ, labels, pores = _place_pores(sdf, int(obj.sum()), porosity, rng, weights)
    grains = 1.0 + grain_contrast * _grains(shape, rng)
    density = (part_occ * (1.0 - pore_occ) * grains).astype(np.float32)
    return OtherPhantom(density=density, truth=(labels > 0).astype(np.uint8), object=obj.astype(np.uint8),
                        labels=labels, pores=pores, part=part, geometry=g)


# ---------------------------------------------------------------------------------------------- imaging
def _z_window(g: dict, nz: int) -> np.ndarray:
    """1 within the part's z-range, 0 outside, soft over ≈ 2 voxels (where the beam crosses metal)."""
    z = np.arange(nz, dtype=np.float32)
    return (1 / (1 + np.exp(-(z - g["z0"]) / 0.7)) * 1 / (1 + np.exp((z - g["z1"]) / 0.7))).astype(np.float32)


def image_part(ph: OtherPhantom, *, seed: int | np.random.Generator = 0, metal: float = 40000.0,
               air: float = 8000.0, noise: float = 0.09, noise_gain: float = 0.6, psf: float = 0.75,
               overshoot: float = 0.12, tail: float = 0.08, tail_sigma: float = 5.0, cupping: float = 0.08,
               rings: float = 0.01, streaks: float = 0.03, drift: float = 0.01) -> np.ndarray:
    """Image a phantom in the image domain; float32 grey values (integers in 0-65535, arbitrary units).

    ``grey = (air + (metal − air) · (B * density) · (1 − cupping · P) − streaks + rings + σ · N) · (1 + drift)``:

    * ``B`` the point spread: ``(1 − tail) · [(1 + overshoot) G(psf) − overshoot G(2 psf)] + tail G(tail_sigma)``
      (Gaussians ``G(σ)``, 1.2× wider along z): a sharp core whose negative overshoot brightens the metal
      next to a pore and darkens the pore's rim, as sharp reconstruction filters do, and a wide tail that
      spreads a little of every edge far away (scatter, focal-spot halo);
    * ``P = max(0, 1 − (r / 1.05 R)²)`` inside the part's z-range, ``r`` the distance to the part's centre and
      ``R`` its outer radius: cupping, the metal darker toward the centre (beam hardening);
    * streaks (prism only): dark lines of depth ``streaks · (metal − air)`` along its three corner-to-corner
      diagonals, the longest paths through the metal;
    * rings: 5-8 concentric rings about the rotation axis (the field's centre, not the part's), each of
      amplitude up to ``rings · (metal − air)``, either sign, slowly modulated along z;
    * ``N`` white noise filtered by a Gaussian (σ 0.8 voxel in-plane, 0.6 along z) scaled to unit std:
      correlated noise, of std ``σ = noise · (metal − air) · (1 + noise_gain · P)``, larger toward the centre
      (fewer photons cross the middle of the part);
    * ``drift``: a linear gain change from bottom to top of ``± drift / 2``.

    Parameters are fractions of the contrast ``metal − air`` unless named in voxels (``psf``, ``tail_sigma``).
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    d = ph.density.astype(np.float32)
    nz, ny, nx = d.shape
    g = ph.geometry
    gauss = ndimage.gaussian_filter
    sig = (1.2 * psf, psf, psf)
    b = (1 + overshoot) * gauss(d, sig, mode="nearest") - overshoot * gauss(d, tuple(2 * s for s in sig),
                                                                             mode="nearest")
    b = (1 - tail) * b + tail * gauss(d, (1.2 * tail_sigma, tail_sigma, tail_sigma), mode="nearest")
    contrast = metal - air
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    wz = _z_window(g, nz)[:, None, None]
    prof = np.clip(1 - (np.hypot(yy - g["cy"], xx - g["cx"]) / (1.05 * g["radius"])) ** 2, 0, 1)[None]
    grey = air + contrast * b * (1 - cupping * prof * wz)
    if g["part"] == "hexprism" and streaks:
        py, px = yy - g["cy"], xx - g["cx"]
        band = np.zeros((ny, nx), np.float32)
        for p in (math.pi / 6, math.pi / 2, 5 * math.pi / 6):  # corner directions in the prism's frame
            dy = math.cos(p) * math.cos(g["theta"]) - math.sin(p) * math.sin(g["theta"])
            dx = math.cos(p) * math.sin(g["theta"]) + math.sin(p) * math.cos(g["theta"])
            band += np.exp(-((py * dx - px * dy) ** 2) / (2 * 0.9**2))
        grey -= streaks * contrast * np.minimum(band, 1.5)[None] * wz
    if rings:
        r_axis = np.hypot(yy - (ny - 1) / 2, xx - (nx - 1) / 2)
        z = np.arange(nz, dtype=np.float32)[:, None, None]
        for _ in range(int(rng.integers(5, 9))):
            r0, w = rng.uniform(2.0, 0.5 * min(ny, nx)), rng.uniform(0.5, 1.0)
            amp = rings * contrast * rng.uniform(0.4, 1.0) * rng.choice((-1.0, 1.0))
            mod = 1 + 0.3 * np.sin(2 * math.pi * z / nz * rng.uniform(0.5, 2.0) + rng.uniform(0, 2 * math.pi))
            grey += (amp * np.exp(-((r_axis - r0) ** 2) / (2 * w * w)))[None] * mod
    n = gauss(rng.standard_normal(d.shape, dtype=np.float32), (0.6, 0.8, 0.8), mode="wrap")
    n /= max(float(n.std()), 1e-12)
    grey += noise * contrast * (1 + noise_gain * prof * wz) * n
    grey *= 1 + drift * (np.arange(nz, dtype=np.float32) / max(nz - 1, 1) - 0.5)[:, None, None]
    return np.clip(np.rint(grey), 0, 65535).astype(np.float32)


# ---------------------------------------------------------------------------------------------- dataset
@dataclass(frozen=True)
class OtherPreset:
    """Sizes of the other generator's dataset: every scan ``shape`` (z, y, x) with isotropic voxels of
    ``voxel_mm``; ``noise`` the noise std at the part's rim as a fraction of the metal-air contrast at dose 1
    (a sample's noise is ``noise / √dose``)."""

    name: str
    shape: tuple[int, int, int] = (96, 128, 128)
    voxel_mm: float = 0.025
    porosity: float = 0.75
    noise: float = 0.09


PRESETS: dict[str, OtherPreset] = {"othergen": OtherPreset("othergen")}

# name, role, part, material (a label: grey levels are arbitrary units), metal grey, air grey, relative dose,
# cupping, ring amplitude, streak depth. The test scan is the hard one: half the dose, almost twice the cupping,
# stronger rings and streaks.
SAMPLES = [
    ("hex1", "cv", "hexprism", "IN718", 46000.0, 11000.0, 1.00, 0.08, 0.010, 0.03),
    ("tube1", "cv", "tube", "IN718", 45000.0, 11500.0, 0.90, 0.08, 0.010, 0.0),
    ("hex2", "cv", "hexprism", "Ti6Al4V", 33000.0, 11000.0, 1.10, 0.05, 0.008, 0.02),
    ("tube2", "cv", "tube", "AlSi10Mg", 24000.0, 10000.0, 1.00, 0.03, 0.008, 0.0),
    ("hex3", "cv", "hexprism", "AlSi10Mg", 25000.0, 10500.0, 0.95, 0.03, 0.010, 0.02),
    ("hex4", "test", "hexprism", "IN718", 44000.0, 12000.0, 0.50, 0.14, 0.020, 0.05),
]


def get_preset(name: str) -> OtherPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown othergen preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


def sample_plan(pr: OtherPreset) -> list[dict]:
    """Every sample's part, material and imaging settings (what the manifest's ``quality`` records).
    ``exposure`` is the relative dose and ``hardening`` the cupping depth, so tables listing porelab's
    own presets can list these scans too; there are no projections (an image-domain model)."""
    plan = []
    for name, role, part, material, metal, air, dose, cupping, ring, streak in SAMPLES:
        plan.append({"name": name, "role": role, "part": part, "material": material, "quality": {
            "generator": "othergen", "exposure": dose, "hardening": cupping, "ring": ring, "streaks": streak,
            "metal": metal, "air": air, "noise": round(pr.noise / math.sqrt(dose), 4)}})
    return plan


def write_dataset(out: Path, pr: OtherPreset, seed: int, porosity: float | None = None,
                  progress: bool = False) -> Path:
    """Write the other generator's dataset into the existing folder ``out`` (five cv scans, one test scan,
    truth and object masks, pore lists, ``manifest.json`` last) in the layout of
    :func:`porelab.simulate.dataset.simulate_dataset`, which calls this for the ``othergen`` preset inside
    its temporary folder. Returns the manifest's path."""
    from porelab.dataset import FORMAT
    from porelab.io import write_json
    from porelab.runtime import progress as progress_bar
    from porelab.simulate.dataset import write_sample

    porosity = pr.porosity if porosity is None else float(porosity)
    seeds = np.random.SeedSequence(int(seed)).spawn(2 * len(SAMPLES))
    vox = float(pr.voxel_mm)
    entries = []
    bar = progress_bar(enabled=progress, total=len(SAMPLES), desc=f"simulate ({pr.name})", unit="scan",
                       leave=True)
    for i, plan in enumerate(sample_plan(pr)):
        name, q = plan["name"], plan["quality"]
        ph = make_other_phantom(pr.shape, part=plan["part"], porosity=porosity,
                                seed=np.random.default_rng(seeds[2 * i]))
        scan = image_part(ph, seed=np.random.default_rng(seeds[2 * i + 1]), metal=q["metal"], air=q["air"],
                          noise=q["noise"], cupping=q["hardening"], rings=q["ring"], streaks=q["streaks"])
        entries.append(write_sample(out, name, plan["role"], scan, ph, voxel_mm=vox, part=plan["part"],
                                    material=plan["material"], quality=q))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return write_json(out / "manifest.json", {"format": FORMAT, "created_by": "porelab simulate",
                                              "preset": pr.name, "generator": "othergen", "seed": int(seed),
                                              "samples": entries})


__all__ = ["PARTS", "PORE_KINDS", "PRESETS", "SAMPLES", "OtherPhantom", "OtherPreset", "get_preset",
           "image_part", "make_other_phantom", "sample_plan", "write_dataset"]
