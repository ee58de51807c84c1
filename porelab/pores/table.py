"""The per-pore table: one row per 6-connected pore, every number defined.

* **Pores** are the 6-connected components of the mask (as in Algorithm 1 of Iuso et al. 2024).
* **Volume** = voxel count × voxel volume; **equivalent diameter** = diameter of the sphere of that volume.
* **Sphericity** is Wadell's, ψ = π^(1/3) (6V)^(2/3) / A ≤ 1 (Wadell 1935; 1 for a sphere, 0.806 for a
  cube; porespy's form, not the ≥ 1 "compactness" of some vendor pages), measured on the pore's smoothed
  surface (Gaussian σ = 0.5 voxel, marching cubes at level 0.5, in mm; :mod:`porelab.pores.shape`). The
  reported area A is that surface rescaled to the pore's voxel volume V, so ψ = π^(1/3) (6V)^(2/3) / A.
* **Principal axes**: full lengths 2·√(5λ) of the solid ellipsoid with the same second moments (λ:
  eigenvalues of the covariance of the voxel positions in mm, plus s²/12 per axis for each voxel's own
  extent, so a one-voxel pore has finite axes, 1.29 s); a ball of diameter D gives three lengths ≈ D.
  ``aspect_ratio`` = major / minor, ``elongation`` = major / mid, ``flatness`` = minor / mid;
  ``axis_tilt_deg`` is the angle between the major axis and z (the build direction), ``normal_tilt_deg``
  between the minor axis and z (0 for a pore lying flat in the layer plane).
* **touches_edge**: the pore reaches the first or last voxel of the field along some axis, so the field of
  view may cut it (its volume and shape are then lower bounds / unreliable).
* **Distance to surface** (when a watertight object mask is known): Euclidean distance in mm from the pore
  voxel nearest the part's surface to the nearest voxel outside the object, i.e. the minimum over the
  pore's voxels of the Euclidean distance transform (``scipy.ndimage``) of the object. The object for this
  is the given one plus every pore enclosed by it (so a pore the object mask leaves out, e.g. one that a
  flood fill entered at a corner of the field, still measures to the real surface). The edges of the field
  are never the surface: the EDT measures to outside voxels within the field only (the part continues
  beyond the edge as far as the data can tell). A pore open to the surface (a 6-neighbour that is neither
  object nor pore) has distance 0 and kind ``surface``. The EDT runs on the object's bounding box; above
  2^23 voxels (it costs ~50 B/voxel) the object is subsampled by an integer factor per axis first, chosen
  so the subsampled voxel is about cubic (error up to about the subsampled voxel's diagonal), and
  ``parameters.distance_grid_factor`` says the factors (z, y, x).
* **Kind**: ``gas``, ``keyhole``, ``lack_of_fusion`` or ``surface`` by the rule of
  :mod:`porelab.pores.kinds` (without an object mask no pore is ``surface``).
* **Bounding box**: voxel indices ``z0, y0, x0`` (first) to ``z1, y1, x1`` (one past the last), as slices.

References
----------
Wadell, H. (1935). Volume, shape, and roundness of quartz particles. The Journal of Geology 43(3), 250-280.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy import ndimage

from porelab.io import iter_slabs
from porelab.labels import SIX_CONNECTED
from porelab.pores.kinds import RULE, classify
from porelab.pores.shape import SMOOTH_SIGMA, principal_axes, sphericity, tilt_from_z_deg

EDT_MAX_VOXELS = 1 << 23  # the exact EDT costs ~50 B/voxel (scipy's feature transform + float64 output)

COLUMNS = ["id", "kind", "voxels", "volume_mm3", "eq_diameter_mm", "sphericity", "surface_area_mm2",
           "z0", "y0", "x0", "z1", "y1", "x1", "centroid_z_mm", "centroid_y_mm", "centroid_x_mm",
           "axis_major_mm", "axis_mid_mm", "axis_minor_mm", "aspect_ratio", "elongation", "flatness",
           "axis_tilt_deg", "normal_tilt_deg", "touches_edge", "distance_to_surface_mm", "score_mean",
           "score_max"]

DEFINITIONS = {
    "connectivity": 6,
    "sphericity": f"Wadell pi^(1/3) (6V)^(2/3) / A <= 1 of the pore's smoothed surface (Gaussian sigma "
                  f"{SMOOTH_SIGMA} voxel, marching cubes level 0.5, its own enclosed volume); surface_area_mm2 "
                  "is that surface rescaled to the voxel volume V",
    "eq_diameter": "diameter of the sphere with the pore's volume",
    "principal_axes": "2 sqrt(5 eigenvalues) of the voxel covariance (+ s^2/12): equal-moment solid ellipsoid; "
                      "elongation = major/mid, flatness = minor/mid, tilts = angle of the major (axis_tilt_deg) "
                      "and minor (normal_tilt_deg) axis to z",
    "touches_edge": "the pore reaches the first or last voxel of the field along some axis",
    "distance_to_surface": "min over the pore's voxels of the Euclidean distance to the nearest voxel outside "
                           "the watertight object (plus the pores it encloses) within the field; the field's "
                           "edges are not the surface (EDT; see distance_grid_factor); 0 for surface pores",
    "kind": "gas | keyhole | lack_of_fusion | surface by the rule of porelab.pores.kinds",
    "kind_rule": dict(RULE),
    "bbox": "z0,y0,x0 first voxel, z1,y1,x1 one past the last (voxel indices)",
}


def _as_bool(mask) -> np.ndarray:
    from porelab.errors import ScanError

    if not hasattr(mask, "ndim") or mask.ndim != 3:
        raise ScanError(f"pore analysis needs a 3-D (z, y, x) mask, got shape {getattr(mask, 'shape', None)}")
    if mask.dtype == bool:
        return mask
    if np.issubdtype(mask.dtype, np.floating) and not np.isfinite(mask).all():
        raise ScanError("pore mask contains NaN or infinite values; a mask is boolean or 0/1")
    return np.asarray(mask) != 0


def check_binary_file(path, *, role: str = "mask") -> None:
    """Refuse a file that is not a binary mask: its voxels must be boolean, or 0/1 (0/255 in uint8 files).

    A CT scan (many grey values) or a float volume with NaN/inf given as a truth or object mask would
    otherwise be read as "every non-zero voxel is a pore" without a word. Reads slab by slab (memmaps too);
    the message is one line naming the file and the ``role`` ("truth", "object mask", …).
    """
    from porelab.errors import ScanError
    from porelab.io import read_array

    path = Path(path)
    array, _, _ = read_array(path)
    if array.dtype == bool:
        return
    allowed = (0, 1, 255) if array.dtype == np.uint8 else (0, 1)
    seen: set = set()
    for sl in iter_slabs(array.shape):
        block = np.asarray(array[sl])
        if block.dtype.kind == "f" and not np.isfinite(block).all():
            raise ScanError(f"{path}: the {role} has NaN or infinite voxels; a {role} is boolean or 0/1")
        values = np.unique(block)
        bad = values[~np.isin(values, allowed)]
        if bad.size:
            raise ScanError(f"{path}: not a {role}: it holds values such as {float(bad[0]):g} (a {role} is "
                            f"boolean or 0/1 integers; is this a scan?)")
        seen.update(values.tolist())
    if {1, 255} <= seen:
        raise ScanError(f"{path}: not a {role}: it mixes 1 and 255 (a {role} is boolean, 0/1 or 0/255)")


def _check_spacing(spacing) -> tuple[float, float, float]:
    """Three finite voxel sizes > 0 (mm, z y x), else a one-line ``ConfigError``."""
    from porelab.errors import ConfigError
    from porelab.io._base import as_spacing

    return as_spacing(spacing, "pore table", error=ConfigError)


def _object_from_scan(scan, progress: bool = False):
    """Algorithm 1's watertight object of ``scan``, its NaN/inf voxels filled from finite neighbours first."""
    from porelab.labels import object_mask as _object_mask
    from porelab.normalise import fill_nonfinite

    return _object_mask(fill_nonfinite(scan)[0], progress=progress)


def _crop_box(m: np.ndarray) -> tuple[slice, slice, slice] | None:
    """Bounding box of the True voxels (projections, one pass per axis pair), or None if there are none."""
    pz = np.flatnonzero(m.any(axis=(1, 2)))
    if pz.size == 0:
        return None
    sub = m[pz[0]: pz[-1] + 1]
    proj = sub.any(axis=0)
    py, px = np.flatnonzero(proj.any(axis=1)), np.flatnonzero(proj.any(axis=0))
    return slice(pz[0], pz[-1] + 1), slice(py[0], py[-1] + 1), slice(px[0], px[-1] + 1)


def grid_factors(shape, spacing, max_voxels: int = EDT_MAX_VOXELS) -> tuple[int, int, int]:
    """Integer subsampling factors (z, y, x) that bring a box of ``shape`` voxels to ≤ ``max_voxels`` with a
    subsampled voxel as close to cubic as the spacing allows: each axis keeps every f-th voxel with
    f = ⌈c / s⌉ for the smallest edge c (mm) that fits. (1, 1, 1) when the box already fits."""
    shape = [int(n) for n in shape]
    if math.prod(shape) <= max_voxels:
        return (1, 1, 1)
    c = max(max(spacing), (math.prod(n * s for n, s in zip(shape, spacing, strict=True)) / max_voxels) ** (1 / 3))
    while True:
        f = tuple(max(1, math.ceil(c / s - 1e-9)) for s in spacing)
        if math.prod(-(-n // k) for n, k in zip(shape, f, strict=True)) <= max_voxels:
            return f
        c *= 1.02


def _grown_box(obj: np.ndarray):
    box = _crop_box(obj)
    if box is None:
        return None
    return tuple(slice(max(b.start - 1, 0), min(b.stop + 1, s)) for b, s in zip(box, obj.shape, strict=True))


def _surface_distance(obj, pts, ids, n: int, spacing, max_voxels: int = EDT_MAX_VOXELS, *, add=None):
    """Per pore: min over its voxels ``pts`` (k, 3 full-volume indices) of the Euclidean distance (mm) to
    the nearest voxel outside ``obj`` (bool) within the field; returns (distances (n,), grid factors).
    ``add`` = (box, mask): voxels united with the object first (the pores it encloses).

    ``scipy.ndimage.distance_transform_edt`` measures to zero voxels inside its array only, so the field's
    edges never count as surface. It runs on the object's bounding box grown by one voxel; when that box
    exceeds ``max_voxels`` the object is subsampled by :func:`grid_factors` first (error up to about the
    subsampled voxel's diagonal). Measured: the exact EDT peaks at ~50 B/voxel, and a k-d tree on the
    surface voxels took 70-290 µs per query point, too slow for 10^6 pore voxels.
    """
    box = _grown_box(obj)
    if box is None:
        return np.full(n, np.nan), (1, 1, 1)
    sub = np.array(obj[box], dtype=bool)
    if add is not None:  # enclosed pores lie within the object's grown box; unite the overlap
        abox, amask = add
        ov = [slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(abox, box, strict=True)]
        if all(o.stop > o.start for o in ov):
            sub[tuple(slice(o.start - b.start, o.stop - b.start) for o, b in zip(ov, box, strict=True))] |= \
                amask[tuple(slice(o.start - a.start, o.stop - a.start) for o, a in zip(ov, abox, strict=True))]
    if sub.all():
        return np.full(n, np.nan), (1, 1, 1)  # the object fills the field: nothing to measure to
    f = grid_factors(sub.shape, spacing, max_voxels)
    sub = sub[::f[0], ::f[1], ::f[2]]
    edt = ndimage.distance_transform_edt(sub, sampling=[s * k for s, k in zip(spacing, f, strict=True)])
    q = (pts - np.array([b.start for b in box])) // np.array(f)
    q = np.clip(q, 0, np.array(sub.shape) - 1)
    d = edt[q[:, 0], q[:, 1], q[:, 2]]
    out = np.full(n + 1, np.inf)
    np.minimum.at(out, ids, d)
    return out[1:], f


def _open_to_surface(obj, m, pts, ids, n: int) -> np.ndarray:
    """(n,) bool: the pore has a voxel (among ``pts``) whose 6-neighbour is neither object nor pore. Beyond
    the field's edge the voxel itself stands in for its neighbour (replicated border), so the edge is never
    an opening."""
    open_ = np.zeros(n + 1, dtype=bool)
    hi = np.array(obj.shape) - 1
    for axis in range(3):
        for step in (-1, 1):
            nb = pts.copy()
            nb[:, axis] = np.clip(nb[:, axis] + step, 0, hi[axis])
            outside = ~obj[nb[:, 0], nb[:, 1], nb[:, 2]] & ~m[nb[:, 0], nb[:, 1], nb[:, 2]]
            open_[ids[outside]] = True
    return open_[1:]


def pore_table(mask, *, spacing=(1.0, 1.0, 1.0), object_mask=None, score=None, progress: bool = False,
               max_edt_voxels: int = EDT_MAX_VOXELS) -> list[dict]:
    """One row (dict) per 6-connected pore of ``mask``; columns :data:`COLUMNS` (see the module docstring).

    Parameters
    ----------
    mask : (z, y, x) bool/uint8 array
    spacing : 3 floats
        Voxel size (z, y, x) in mm (pass (1, 1, 1) for voxel units).
    object_mask : (z, y, x) bool array, optional
        Watertight object; enables ``distance_to_surface_mm`` (otherwise None) and the ``surface`` kind.
    score : (z, y, x) float array, optional
        A voxel score (e.g. a net's probability); adds ``score_mean`` / ``score_max`` per pore.
    max_edt_voxels : int
        Above this many voxels in the object's box the distance transform runs on a subsampled grid.

    Returns
    -------
    list of dict, ordered by ``id`` (raster order of each pore's first voxel).

    Memory: an int32 label array over the mask's bounding box, plus a few arrays per pore voxel; the scan
    itself is never touched. Time: one Gaussian filter and marching cubes per pore (≈ 0.5 ms for a small one).
    """
    from porelab.errors import ScanError

    m = _as_bool(mask)
    sz, sy, sx = _check_spacing(spacing)
    box = _crop_box(m)
    if box is None:
        return []
    mc = m[box]
    lab, n = ndimage.label(mc, structure=SIX_CONNECTED)
    idx = np.nonzero(lab)
    ids = lab[idx]
    z, y, x = (i.astype(np.int64) for i in idx)
    vox = np.bincount(ids, minlength=n + 1)[1:].astype(np.int64)
    off = np.array([box[0].start, box[1].start, box[2].start], dtype=np.int64)

    # centroids and second moments (mm), voxel-centre coordinates in the crop (shifted for precision)
    pz, py, px = z * sz, y * sy, x * sx

    def s(w):
        return np.bincount(ids, weights=w, minlength=n + 1)[1:]

    cz, cy, cx = s(pz) / vox, s(py) / vox, s(px) / vox
    dz, dy, dx = pz - cz[ids - 1], py - cy[ids - 1], px - cx[ids - 1]
    cov = np.empty((n, 3, 3))
    cov[:, 0, 0] = s(dz * dz) / vox + sz * sz / 12
    cov[:, 1, 1] = s(dy * dy) / vox + sy * sy / 12
    cov[:, 2, 2] = s(dx * dx) / vox + sx * sx / 12
    cov[:, 0, 1] = cov[:, 1, 0] = s(dz * dy) / vox
    cov[:, 0, 2] = cov[:, 2, 0] = s(dz * dx) / vox
    cov[:, 1, 2] = cov[:, 2, 1] = s(dy * dx) / vox
    axes, vec = principal_axes(cov)
    axis_tilt, normal_tilt = tilt_from_z_deg(vec[:, :, 0]), tilt_from_z_deg(vec[:, :, 2])
    del dz, dy, dx

    # voxels with a 6-neighbour outside their pore (the crop's outside is empty): the nearest voxel to the
    # surface and any opening to the outside are always among them
    padded = np.pad(mc, 1)
    exposed = np.zeros(ids.size, dtype=bool)
    for axis in range(3):
        for step in (-1, 1):
            nb = [z + 1, y + 1, x + 1]
            nb[axis] = nb[axis] + step
            exposed |= ~padded[nb[0], nb[1], nb[2]]
    del padded

    volume = vox * (sz * sy * sx)
    eq_d = np.cbrt(6.0 * volume / np.pi)
    objs = ndimage.find_objects(lab)
    sph, area = np.empty(n), np.empty(n)
    it = range(n)
    if n > 1000:
        from porelab.runtime import progress as progress_bar

        it = progress_bar(it, enabled=progress, desc="pore shapes", unit="pore")
    for i in it:
        sph[i], area[i] = sphericity(lab[objs[i]] == i + 1, (sz, sy, sx))

    full = np.array(m.shape) - 1
    edge = np.array([any(o[k].start + off[k] == 0 or o[k].stop + off[k] - 1 == full[k] for k in range(3))
                     for o in objs], dtype=bool)

    dist, surface = None, np.zeros(n, dtype=bool)
    if object_mask is not None:
        if tuple(object_mask.shape) != tuple(m.shape):
            raise ScanError(f"object mask shape {tuple(object_mask.shape)} differs from the mask's {m.shape}")
        obj = object_mask if object_mask.dtype == bool else np.asarray(object_mask) != 0
        pts = np.stack([z[exposed] + off[0], y[exposed] + off[1], x[exposed] + off[2]], axis=1)
        surface = _open_to_surface(obj, m, pts, ids[exposed], n)
        enclosed = mc & ~surface[np.maximum(lab, 1) - 1]  # pores the object encloses belong to the part
        dist, _ = _surface_distance(obj, pts, ids[exposed], n, (sz, sy, sx), max_edt_voxels,
                                    add=(box, enclosed))
        dist[surface] = 0.0
        del enclosed

    with np.errstate(divide="ignore", invalid="ignore"):
        elong, flat = axes[:, 0] / axes[:, 1], axes[:, 2] / axes[:, 1]
    kinds = classify(sph, elong, flat, axis_tilt, normal_tilt, surface)

    smean = smax = None
    if score is not None:
        if tuple(score.shape) != tuple(m.shape):
            raise ScanError(f"score shape {tuple(score.shape)} differs from the mask's {m.shape}")
        vals = np.asarray(score[box], dtype=np.float64)[idx]
        smean = s(vals) / vox
        smax = np.full(n + 1, -np.inf)
        np.maximum.at(smax, ids, vals)
        smax = smax[1:]

    rows = []
    for i in range(n):
        o = objs[i]
        rows.append({
            "id": i + 1,
            "kind": str(kinds[i]),
            "voxels": int(vox[i]),
            "volume_mm3": float(volume[i]),
            "eq_diameter_mm": float(eq_d[i]),
            "sphericity": _num(sph[i]),
            "surface_area_mm2": _num(area[i]),
            "z0": int(o[0].start + off[0]), "y0": int(o[1].start + off[1]), "x0": int(o[2].start + off[2]),
            "z1": int(o[0].stop + off[0]), "y1": int(o[1].stop + off[1]), "x1": int(o[2].stop + off[2]),
            "centroid_z_mm": float(cz[i] + off[0] * sz),
            "centroid_y_mm": float(cy[i] + off[1] * sy),
            "centroid_x_mm": float(cx[i] + off[2] * sx),
            "axis_major_mm": float(axes[i, 0]),
            "axis_mid_mm": float(axes[i, 1]),
            "axis_minor_mm": float(axes[i, 2]),
            "aspect_ratio": _num(axes[i, 0] / axes[i, 2]) if axes[i, 2] > 0 else None,
            "elongation": _num(elong[i]),
            "flatness": _num(flat[i]),
            "axis_tilt_deg": float(axis_tilt[i]),
            "normal_tilt_deg": float(normal_tilt[i]),
            "touches_edge": bool(edge[i]),
            "distance_to_surface_mm": _num(dist[i]) if dist is not None else None,
            "score_mean": _num(smean[i]) if smean is not None else None,
            "score_max": _num(smax[i]) if smax is not None else None,
        })
    return rows


def _num(v):
    v = float(v)
    return v if math.isfinite(v) else None
