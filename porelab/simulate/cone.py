"""Circular-orbit cone-beam CT: a ray-sampling forward projector and FDK reconstruction, on the CPU.

Geometry (all lengths in voxels, origin at the centre of the volume, ``z`` the rotation axis). The source
turns on a circle of radius ``sod`` (source-to-object distance) in the mid-plane ``z = 0``; at angle ``β``
it sits at ``sod·(cos β, sin β, 0)``. Projections are recorded on a flat detector and kept, as usual for
FDK, at the *virtual detector* through the rotation axis (the real detector's coordinates divided by the
magnification ``sdd / sod``), with one voxel of pixel pitch: ``t`` across (perpendicular to the source
direction in the mid-plane), ``v`` along ``z``. The paper's scanner (Iuso et al. 2024: SDD 650 mm, SOD
43.3 mm) gives a cone half-angle of ≈ 6° at the top and bottom of the 9 mm cube; the same ratio of the
field to ``sod`` is kept at every voxel size (``sod = SOD_MM / voxel_mm``).

FDK (Feldkamp, Davis & Kress 1984, "Practical cone-beam algorithm", J. Opt. Soc. Am. A 1(6):612-619;
Kak & Slaney, *Principles of Computerized Tomographic Imaging*, ch. 3.6):

1. cosine pre-weighting of each projection: ``p · sod / sqrt(sod² + t² + v²)``;
2. ramp filtering along detector rows ``t`` (the band-limited Ram-Lak kernel ``h(0) = 1/4``,
   ``h(n odd) = −1/(π n)²``, zero-padded to a power of two ≥ 2·n_t, times a Hann window, as in MIRT's
   ``fdk_filter`` and scikit-image's ``iradon``);
3. voxel-driven back-projection with distance weighting: a voxel at ``(x, y, z)`` with ``s = x cos β +
   y sin β`` (towards the source) and ``τ = −x sin β + y cos β`` takes, per angle, ``U² · q(τ·U, z·U)`` with
   ``U = sod / (sod − s)`` (bilinear interpolation on the detector), and ``f = ½ Σ_β U² q Δβ`` over a
   full 360° orbit.

FDK is exact in the mid-plane and approximate elsewhere: a circular orbit does not satisfy Tuy's
condition off the mid-plane, so planes perpendicular to the axis (the cube's top and bottom faces) blur
along ``z``, lose density and streak as the cone angle grows — the "cone-beam artefacts" at the
extremities of the paper's cube.

Cost (numpy + scipy, one thread each): the forward projector samples every ray at one-voxel steps with
trilinear interpolation (``scipy.ndimage.map_coordinates``), the back-projector gathers bilinearly; see
``docs/experiments.md`` ("What makes the simulator hard") for the measured seconds per quick-size scan.
"""

from __future__ import annotations

import math

import numpy as np

#: source-to-object and source-to-detector distances of the paper's scans (mm)
SOD_MM = 43.3
SDD_MM = 650.0


def orbit(n: int) -> np.ndarray:
    """``n`` source angles in radians, evenly spaced over a full circle [0, 2π)."""
    return np.linspace(0.0, 2 * math.pi, int(n), endpoint=False)


def detector_shape(shape: tuple[int, int, int], sod: float) -> tuple[int, int]:
    """(rows ``n_v``, columns ``n_t``) of a virtual detector that sees the whole cylindrical field of
    ``shape`` (z, n, n) from every angle: the inscribed circle of radius ``n/2`` subtends ``±R·sod/√(sod²−R²)``
    at the axis, the top slice at its nearest point ``±(nz/2)·sod/(sod − R)``."""
    nz, n = int(shape[0]), int(shape[2])
    r = n / 2
    if sod <= r + 1:
        raise ValueError(f"source distance {sod:.1f} voxels must exceed the field radius {r:.1f}")
    nt = 2 * math.ceil(r * sod / math.sqrt(sod * sod - r * r)) + 4
    nv = 2 * math.ceil(nz / 2 * sod / (sod - r)) + 4
    return nv, nt


def _det_axes(nv: int, nt: int) -> tuple[np.ndarray, np.ndarray]:
    return (np.arange(nv, dtype=np.float32) - (nv - 1) / 2, np.arange(nt, dtype=np.float32) - (nt - 1) / 2)


def cone_project(vol: np.ndarray, betas: np.ndarray, sod: float, *, det: tuple[int, int] | None = None,
                 progress: bool = False) -> np.ndarray:
    """Cone-beam line integrals of ``vol`` (z, n, n) in "attenuation × voxel" units → (n_angles, n_v, n_t).

    Each ray from the source to a virtual-detector pixel ``(v, t)`` is sampled where it crosses the planes
    ``s = const`` (one voxel apart along the source direction, spanning the field's circle), with
    trilinear interpolation, and the sum is multiplied by the ray's length per unit ``s``,
    ``√(sod² + t² + v²) / sod``. The ray meets plane ``s`` at ``(t, v) · (sod − s) / sod``, so the
    interpolation separates: bilinear in ``(y, x)`` at the ``(s, t)`` points of this angle (all slices at
    once), then linear in ``z`` with weights that depend on ``(s, v)`` only, the same for every angle (a
    sparse matrix applied by one product per angle). Values outside the field's inscribed cylinder must be
    zero.
    """
    from scipy import sparse

    vol = np.asarray(vol, np.float32)
    nz, ny, nx = vol.shape
    nv, nt = det or detector_shape(vol.shape, sod)
    v, t = _det_axes(nv, nt)
    r = nx / 2
    s = np.arange(-math.ceil(r), math.ceil(r) + 1, dtype=np.float32)  # plane positions along the source axis
    ns = s.size
    mag = (sod - s) / sod
    zc, yc, xc = (nz - 1) / 2, (ny - 1) / 2, (nx - 1) / 2
    # z interpolation: row v, column (s, z) of a sparse (nv, ns·nz) matrix, two entries per (v, s)
    fz = v[:, None] * mag[None, :] + zc  # (nv, ns)
    iz = np.floor(fz).astype(np.int64)
    wz = (fz - iz).astype(np.float32)
    rows, cols, vals = [], [], []
    for dz, w in ((0, 1 - wz), (1, wz)):
        z = iz + dz
        ok = (z >= 0) & (z < nz) & (w > 0)
        vv, ss = np.nonzero(ok)
        rows.append(vv)
        cols.append(ss * nz + z[ok])
        vals.append(w[ok])
    zmat = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                             shape=(nv, ns * nz), dtype=np.float32)
    length = (np.sqrt(sod * sod + t[None, :] ** 2 + v[:, None] ** 2) / sod).astype(np.float32)
    flat = np.zeros((ny * nx + 1, nz), np.float32)  # (y, x) rows of z columns; the last row is air
    flat[:-1] = vol.reshape(nz, ny * nx).T
    tt = t[None, :] * mag[:, None]  # (ns, nt)
    out = np.empty((len(betas), nv, nt), np.float32)
    for i in _progress(range(len(betas)), progress, "cone project"):
        c, sn = math.cos(betas[i]), math.sin(betas[i])
        x = s[:, None] * c - tt * sn + xc
        y = s[:, None] * sn + tt * c + yc
        ix, iy = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
        wx, wy = (x - ix).astype(np.float32).ravel()[:, None], (y - iy).astype(np.float32).ravel()[:, None]
        ix, iy = ix.ravel(), iy.ravel()

        def at(dy, dx, iy=iy, ix=ix):   # used at once, inside this iteration
            yy, xx = iy + dy, ix + dx
            idx = np.where((yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx), yy * nx + xx, ny * nx)
            return flat[idx]  # (ns·nt, nz)

        a = (at(0, 0) * (1 - wx) + at(0, 1) * wx) * (1 - wy) + (at(1, 0) * (1 - wx) + at(1, 1) * wx) * wy
        a = a.reshape(ns, nt, nz).transpose(0, 2, 1).reshape(ns * nz, nt)
        out[i] = np.asarray(zmat @ a) * length
    return out


def ramp_filter(n: int, window: str = "hann") -> np.ndarray:
    """Frequency response (length ``2^⌈log2(2n)⌉``) of the band-limited ramp for unit pixel pitch, with an
    optional Hann window (``ramp`` = none): the spatial Ram-Lak kernel ``1/4, −1/(π n)²`` (odd ``n``), 0
    (even), transformed, so that the zero frequency is exact after zero padding."""
    size = max(64, 2 ** math.ceil(math.log2(2 * n)))
    k = np.concatenate([np.arange(1, size // 2 + 1, 2), np.arange(size // 2 - 1, 0, -2)])
    h = np.zeros(size)
    h[0] = 0.25
    h[1::2] = -1.0 / (np.pi * k) ** 2
    filt = 2 * np.real(np.fft.fft(h))
    if window == "hann":
        filt *= 0.5 * (1 + np.cos(2 * np.pi * np.fft.fftfreq(size)))
    elif window != "ramp":
        raise ValueError(f"unknown FDK window {window!r}; use 'hann' or 'ramp'")
    return filt / 2


def fdk(proj: np.ndarray, betas: np.ndarray, sod: float, shape: tuple[int, int, int], *,
        window: str = "hann", progress: bool = False) -> np.ndarray:
    """FDK reconstruction of cone-beam projections (n_angles, n_v, n_t) on a full orbit → (z, n, n) float32,
    in the projections' units per voxel (steps 1-3 of the module doc)."""
    nz, ny, nx = (int(a) for a in shape)
    na, nv, nt = proj.shape
    v, t = _det_axes(nv, nt)
    weight = (sod / np.sqrt(sod * sod + t[None, :] ** 2 + v[:, None] ** 2)).astype(np.float32)
    filt = ramp_filter(nt, window)
    size = len(filt)
    zc, yc, xc = (nz - 1) / 2, (ny - 1) / 2, (nx - 1) / 2
    yy, xx = np.meshgrid(np.arange(ny, dtype=np.float32) - yc, np.arange(nx, dtype=np.float32) - xc,
                         indexing="ij")
    zz = (np.arange(nz, dtype=np.float32) - zc)[:, None]
    inside = (yy ** 2 + xx ** 2 <= (nx / 2) ** 2).ravel()
    yy, xx = yy.ravel()[inside], xx.ravel()[inside]
    m = yy.size
    cols = np.arange(m, dtype=np.int32)[None, :]
    acc = np.zeros((nz, m), np.float32)
    dbeta = 2 * math.pi / na
    for i in _progress(range(na), progress, "FDK"):
        q = np.fft.irfft(np.fft.rfft(proj[i] * weight, n=size, axis=1) * filt[: size // 2 + 1], n=size,
                         axis=1)[:, :nt].astype(np.float32)
        c, sn = math.cos(betas[i]), math.sin(betas[i])
        s = xx * c + yy * sn
        tau = -xx * sn + yy * c
        u = sod / (sod - s)  # magnification of this voxel onto the virtual detector
        # bilinear interpolation: first along t (depends on (y, x) only), then along v
        ft = tau * u + (nt - 1) / 2
        it = np.clip(np.floor(ft).astype(np.int32), 0, nt - 2)
        wt = np.clip(ft - it, 0.0, 1.0)
        qt = q[:, it] * (1 - wt) + q[:, it + 1] * wt  # (nv, m)
        fv = zz * u[None, :] + (nv - 1) / 2  # (nz, m), inside [0, nv - 1) by the detector's size
        iv = np.clip(fv.astype(np.int32), 0, nv - 2)
        wv = fv - iv
        idx = iv * m + cols
        lo = np.take(qt, idx)
        acc += (lo + (np.take(qt, idx + m) - lo) * wv) * (u * u)[None, :]
    out = np.zeros((nz, ny * nx), np.float32)
    out[:, inside] = acc * (0.5 * dbeta)
    return out.reshape(nz, ny, nx)


def _progress(it, enabled, desc):
    from porelab.runtime import progress

    return progress(it, enabled=enabled, desc=desc, unit="view")
