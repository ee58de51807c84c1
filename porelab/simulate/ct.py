"""X-ray CT acquisition physics and filtered back-projection, slice by slice (parallel beam per z-slice).

The chain (:func:`scan_phantom`), for an attenuation map ``mu`` in 1/mm with isotropic voxels of ``voxel_mm``:

1. forward projection: line integrals ``p = ∫ mu dl`` (dimensionless) per axial slice over ``projections``
   angles in [0°, 180°) (scikit-image ``radon``, ``circle=True``);
2. beam hardening on the line integrals: ``p_h = p / (1 + b·p)`` (a saturating polynomial-free model: the
   measured attenuation of a polychromatic beam grows less than linearly with the path length; it causes
   cupping and dark streaks between thick parts);
3. detector blur: Gaussian of ``blur`` detector pixels on the expected transmission ``exp(-p_h)``, across
   detector columns and rows (z);
4. exposure: photon counts ``N ~ Poisson(g · I0 · exp(-p_h))`` with ``I0`` the unattenuated counts per
   detector pixel and projection; ``g`` a per-detector-pixel gain error ``1 + ring·ε`` (ε ~ N(0, 1)) that the
   flat-field (which assumes ``g = 1``) does not remove, producing ring artefacts;
5. log: ``p̂ = -log(max(N, 0.5) / I0)`` (zero counts are clipped: photon starvation → streaks);
   optionally electronic noise and a floor of one count (``readout``) and scatter (``scatter``), see
   :func:`acquire`;
6. FBP: ``iradon`` with a ramp·Hann filter (``filter``), divided by the voxel size → attenuation in 1/mm
   (air ≈ 0, metal ≈ mu; not normalised). With ``cone=True`` steps 1 and 6 are the circular-orbit
   cone-beam projector and FDK of :mod:`porelab.simulate.cone` instead.

:func:`degrade` re-projects an existing reconstruction and reconstructs it with a fraction of the
projections and of the exposure (Iuso et al. 2024, section 4.8).
"""

from __future__ import annotations

import math

import numpy as np

from porelab.errors import ConfigError, ScanError


def angles(n: int) -> np.ndarray:
    """``n`` projection angles in degrees, evenly spaced over [0, 180)."""
    return np.linspace(0.0, 180.0, int(n), endpoint=False)


def forward_project(vol: np.ndarray, theta: np.ndarray, *, progress: bool = False, desc: str = "project"
                    ) -> np.ndarray:
    """Parallel-beam line integrals of every axial slice: (z, n, n) → sinograms (z, n_det = n, n_angles).

    Values outside the inscribed circle of each slice must be zero (``radon(circle=True)``); the unit is
    "attenuation × voxel", multiply by the voxel size in mm for dimensionless line integrals.
    scikit-image's ``radon`` holds the GIL, so threads do not help (docs/experiments.md, "Simulator");
    the loop over slices is plain.
    """
    import warnings

    from skimage.transform import radon

    nz, n, _ = vol.shape
    out = np.empty((nz, n, len(theta)), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "image must be zero outside the circle": we ensure it
        for z in _progress(range(nz), progress, desc):
            out[z] = radon(np.asarray(vol[z], np.float64), theta, circle=True)
    return out


def fbp(sino: np.ndarray, theta: np.ndarray, *, filter: str = "hann", progress: bool = False,
        desc: str = "reconstruct") -> np.ndarray:
    """Filtered back-projection of sinograms (z, n_det, n_angles) → slices (z, n_det, n_det), float32."""
    from skimage.transform import iradon

    nz, n, _ = sino.shape
    out = np.empty((nz, n, n), np.float32)
    for z in _progress(range(nz), progress, desc):
        out[z] = iradon(np.asarray(sino[z], np.float64), theta, output_size=n, circle=True,
                        filter_name=filter)
    return out


def gain_map(shape: tuple[int, int], ring: float, rng: np.random.Generator) -> np.ndarray:
    """Per-detector-pixel gain ``1 + ring·ε`` (rows z × columns u). Detector columns share most of their
    error along z (a column defect), so rings are coherent over slices, plus a weaker per-pixel part."""
    nz, nu = shape
    col = rng.standard_normal(nu)
    pix = rng.standard_normal((nz, nu))
    return (1.0 + ring * (0.8 * col[None, :] + 0.6 * pix)).clip(0.5, 1.5)


def scatter_offset(t: np.ndarray, fraction: float, sigma: float) -> np.ndarray:
    """Scattered photons reaching the detector, relative to the open-beam primary: ``κ · G_σ * t``.

    Scatter from the part spreads over the detector as a smooth halo (a Gaussian of ``sigma`` detector
    pixels over rows and columns of each projection) whose strength follows the transmitted primary ``t``;
    ``κ`` (``fraction``) is the scatter-to-primary ratio of an open beam. It is an additive offset in the
    intensities, so behind thick metal (small ``t``) it dominates: the measured attenuation is too low
    there (cupping, dark-bright streaks between thick parts) and the contrast of a pore shrinks by
    ``t / (t + S)``.
    """
    from scipy.ndimage import gaussian_filter

    return fraction * gaussian_filter(t, sigma=(sigma, sigma, 0.0), mode="nearest")


def acquire(p: np.ndarray, *, exposure: float, hardening: float = 0.0, blur: float = 0.0, ring: float = 0.0,
            rng: np.random.Generator, scatter: float = 0.0, scatter_sigma: float | None = None,
            readout: float = 0.0) -> np.ndarray:
    """Turn ideal line integrals ``p`` (rows z, detector columns, angles) into measured, log-converted
    line integrals.

    Applies beam hardening ``p / (1 + b·p)``, detector blur on the transmission, scatter
    (:func:`scatter_offset`, ``scatter`` = κ; the flat field includes the open beam's ``1 + κ``),
    per-pixel gain errors and Poisson counting at ``exposure`` photons per unattenuated detector pixel
    (steps 2-5 of the module doc). ``readout`` > 0 adds Gaussian electronic noise of that many counts
    (std) and floors the counts at 1 before the log: along long chords through metal the counts
    ``I0·exp(−p)`` fall to a few photons, the noise there is of the order of the signal, the log of a few
    noisy counts is biased (high) and capped at ``log I0`` by the floor — photon starvation, the streaks
    along the longest paths ("metal streaks").
    ``scatter_sigma`` defaults to an eighth of the detector width.
    """
    from scipy.ndimage import gaussian_filter

    if exposure <= 0:
        raise ConfigError(f"exposure (photon count) must be > 0, got {exposure}")
    p = np.maximum(p, 0.0, dtype=np.float64)
    if hardening > 0:
        p = p / (1.0 + hardening * p)
    t = np.exp(-p)
    if blur > 0:
        t = gaussian_filter(t, sigma=(blur, blur, 0.0), mode="nearest")
    if scatter > 0:
        sigma = p.shape[1] / 8 if scatter_sigma is None else float(scatter_sigma)
        t = (t + scatter_offset(t, scatter, sigma)) / (1.0 + scatter)
    if ring > 0:
        t *= gain_map(p.shape[:2], ring, rng)[:, :, None]
    counts = rng.poisson(exposure * t)
    if readout > 0:
        counts = np.maximum(counts + readout * rng.standard_normal(counts.shape), 1.0)
    return (-np.log(np.maximum(counts, 0.5) / exposure)).astype(np.float32)


def scan_phantom(mu: np.ndarray, *, voxel_mm: float, projections: int, exposure: float,
                 hardening: float = 0.0, blur: float = 0.0, ring: float = 0.0, seed: int = 0,
                 filter: str = "hann", progress: bool = False, cone: bool = False, scatter: float = 0.0,
                 readout: float = 0.0) -> np.ndarray:
    """Simulate a CT scan of an attenuation map and reconstruct it (FBP per slice, or FDK with ``cone``).

    Parameters
    ----------
    mu : (z, y, x) attenuation in 1/mm, square slices, zero outside the inscribed circle of each slice.
    voxel_mm : isotropic voxel size in mm (line integrals are ``sum(mu) · voxel_mm``).
    projections : number of projection angles over 180° (parallel beam) or 360° (cone beam).
    exposure : unattenuated photon counts per detector pixel and projection (``I0``).
    hardening : beam-hardening coefficient ``b`` in ``p / (1 + b·p)`` (0 = monochromatic).
    blur : detector blur, Gaussian sigma in detector pixels.
    ring : relative standard deviation of the detector gain errors (rings).
    seed : noise seed (same seed → same scan).
    filter : FBP filter (``ramp``, ``shepp-logan``, ``cosine``, ``hamming``, ``hann``; FDK: ``ramp`` or
        ``hann``).
    cone : circular-orbit cone-beam geometry of the paper's scanner (:mod:`porelab.simulate.cone`: source
        at 43.3 mm, flat detector, FDK) instead of parallel beam per slice.
    scatter : scatter-to-primary ratio κ of the open beam (:func:`scatter_offset`; 0 = none).
    readout : electronic noise in counts (std) with a floor of one count (photon starvation; 0 = off).

    Returns
    -------
    np.ndarray
        float32 (z, y, x) reconstructed attenuation in 1/mm (air ≈ 0, metal ≈ mu; not normalised).
    """
    _check_volume(mu, "mu")
    if int(projections) < 4:
        raise ConfigError(f"projections must be >= 4, got {projections}")
    if scatter < 0 or readout < 0:
        raise ConfigError(f"scatter ({scatter}) and readout ({readout}) must be >= 0")
    rng = np.random.default_rng(seed)
    effects = {"exposure": exposure, "hardening": hardening, "blur": blur, "ring": ring, "rng": rng, "scatter": scatter,
                   "readout": readout}
    if cone:
        from porelab.simulate.cone import SOD_MM, cone_project, fdk, orbit

        sod = SOD_MM / float(voxel_mm)
        betas = orbit(projections)
        p = cone_project(mu, betas, sod, progress=progress) * float(voxel_mm)  # (angles, rows, columns)
        pm = acquire(p.transpose(1, 2, 0), **effects).transpose(2, 0, 1)
        del p
        rec = fdk(pm, betas, sod, mu.shape, window="ramp" if filter == "ramp" else "hann", progress=progress)
        rec /= float(voxel_mm)
        return rec
    theta = angles(projections)
    p = forward_project(mu, theta, progress=progress) * float(voxel_mm)
    pm = acquire(p, **effects)
    del p
    rec = fbp(pm, theta, filter=filter, progress=progress)
    rec /= float(voxel_mm)
    return rec


# ----------------------------------------------------------------------------------------------- degrade


def degrade(scan: np.ndarray, *, projections: float = 1.0, exposure: float = 1.0, seed: int = 0,
            base_projections: int | None = None, base_exposure: float | None = None,
            voxel_mm: float | None = None, filter: str = "hann", progress: bool = False,
            cone: bool = False, scatter: float = 0.0, readout: float = 0.0, hardening: float = 0.0,
            ring: float = 0.0) -> np.ndarray:
    """Re-scan a reconstructed scan with a fraction of the projections and of the exposure (Iuso et al.
    2024, section 4.8: projections 100/50/33 %, exposure 100/75/50/25 %).

    The scan is re-projected (per axial slice, each slice zero-padded to its circumscribed circle so any
    scan works) at ``base_projections`` angles, every ``1/projections``-th angle is kept, noise for the
    lower exposure is added in the projection domain, and the slices are reconstructed by FBP and cropped
    back. The scan already carries the noise of its own exposure ``I0`` and ``N`` projections (FBP noise
    variance ∝ 1 / (I0 · T · N), ``T`` the transmission along a line), and a reconstruction from the exact
    re-projections keeps that noise. A real scan at a fraction ``f`` of the exposure and ``k·N``
    projections has ``1 / (f·k)`` times that variance, so noise of variance ``(1/f - k) / (I0 · T)`` per line
    integral is added to the ``k·N`` kept projections, drawn as Poisson counts: ``p += -log(K / λ)``,
    ``K ~ Poisson(λ)``, ``λ = I0·T / (1/f - k)`` (exact in variance to first order in ``1/λ``; photon
    starvation where ``λ`` is small). ``projections=1, exposure=1`` adds no noise; fewer projections add
    both noise and undersampling streaks, as when the paper dropped real projections.

    Parameters
    ----------
    scan : (z, y, x) reconstructed scan, any units (e.g. a real scan read with ``read_volume``).
    projections : fraction of the base projections to keep, in (0, 1].
    exposure : fraction of the base exposure, in (0, 1].
    seed : noise seed.
    base_projections : number of projections of the original scan; default ``ceil(π/2 · n_det)`` (the
        angular sampling an n-pixel detector needs).
    base_exposure : original photon count per detector pixel ``I0``; default: estimated from the noise of
        the scan (a noise-only simulation at a reference count is reconstructed and measured the same way,
        and ``I0`` is scaled by the ratio of the variances).
    voxel_mm : when the scan is attenuation in 1/mm (e.g. a simulated scan), its voxel size: line integrals
        are then physical. Default None: the scan is scaled so the longest line integral is 2.0
        (≈ 14 % transmission, the usual operating point of an industrial scan).
    filter : FBP filter.
    cone : re-scan in the paper's circular cone-beam geometry and reconstruct by FDK
        (:mod:`porelab.simulate.cone`; ``base_projections`` then cover 360°). The source distance is
        ``SOD_MM / voxel_mm`` voxels, without ``voxel_mm`` that of an 18 mm field (the paper's cube scan).
        The scan's own (parallel-beam) artefacts stay; the cone-beam ones are added.
    scatter, readout, hardening, ring : add scatter (κ), photon starvation (electronic noise in counts,
        one-count floor; needs ``base_exposure``, else estimated), extra beam hardening ``b`` and detector
        gain errors to the re-projections, as :func:`acquire` does (0 = off). Texture, drift and pores
        belong to the part and cannot be added to a reconstructed scan without truth.

    Returns
    -------
    np.ndarray
        float32 (z, y, x), same shape and units as ``scan``.
    """
    scan = _check_volume(scan, "scan", square=False)
    if not 0 < projections <= 1:
        raise ConfigError(f"projections fraction must be in (0, 1], got {projections}")
    if not 0 < exposure <= 1:
        raise ConfigError(f"exposure fraction must be in (0, 1], got {exposure}")
    nz, ny, nx = scan.shape
    n = math.ceil(math.hypot(ny, nx)) + 2
    if base_projections is None:
        base_projections = math.ceil(math.pi / 2 * n)
    base_projections = int(base_projections)
    keep = max(4, round(base_projections * projections))
    theta_all = angles(base_projections)
    idx = np.unique(np.round(np.linspace(0, base_projections, keep, endpoint=False)).astype(int))
    theta = theta_all[idx]

    y0, x0 = (n - ny) // 2, (n - nx) // 2
    offset = float(np.median(_corners(np.asarray(scan[:: max(1, nz // 16)], np.float32))))
    vol = _pad_square(np.asarray(scan, np.float32) - offset, n)  # air ≈ 0 so the padding is seamless
    if cone:
        from porelab.simulate.cone import SOD_MM, cone_project, fdk, orbit

        vol *= _disc(n)[None]  # the cone projector needs zero outside the inscribed cylinder
        sod = SOD_MM / float(voxel_mm) if voxel_mm is not None else SOD_MM / 18.0 * n
        betas = orbit(base_projections)[idx]
        sino = cone_project(vol, betas, sod, progress=progress).transpose(1, 2, 0)  # (rows, columns, angles)
    else:
        sino = forward_project(vol, theta, progress=progress, desc="re-project")
    if voxel_mm is not None:  # scan in 1/mm: physical line integrals
        scale = float(voxel_mm)
    else:
        peak = float(np.percentile(sino, 99.9))
        scale = 2.0 / peak if peak > 0 else 1.0
    p = np.maximum(sino * scale, 0.0)
    del sino
    rng = np.random.default_rng(seed)
    kept = len(theta) / base_projections
    extra = 1.0 / exposure - kept  # added noise variance per line integral, in units of 1 / (I0 · T)
    if base_exposure is None and (extra > 1e-6 or readout > 0):
        p_par = p if not cone else np.maximum(forward_project(vol, theta) * scale, 0.0)
        base_exposure = estimate_exposure(scan, p_par, theta, base_projections=base_projections, scale=scale,
                                          offset=offset, filter=filter, rng=np.random.default_rng(seed + 7919))
        del p_par
    del vol
    if extra > 1e-6:
        lam = float(base_exposure) * np.exp(-p) / extra
        counts = rng.poisson(lam)
        p = p - np.log(np.maximum(counts, 0.5) / np.maximum(lam, 1e-12))
    p = _add_effects(p, scatter=scatter, readout=readout, hardening=hardening, ring=ring,
                     exposure=base_exposure, rng=rng)
    if cone:
        rec = fdk((p / scale).astype(np.float32).transpose(2, 0, 1), betas, sod, (nz, n, n),
                  window="ramp" if filter == "ramp" else "hann", progress=progress)
    else:
        rec = fbp((p / scale).astype(np.float32), theta, filter=filter, progress=progress)
    out = np.ascontiguousarray(rec[:, y0:y0 + ny, x0:x0 + nx])
    out += offset
    return out


def _add_effects(p, *, scatter, readout, hardening, ring, exposure, rng):
    """Scatter, starvation, beam hardening and gain errors on measured line integrals ``p`` (rows,
    columns, angles), as :func:`acquire` applies them to ideal ones; ``p`` unchanged when all are 0."""
    if not (scatter > 0 or readout > 0 or hardening > 0 or ring > 0):
        return p
    p = np.maximum(p, 0.0)
    if hardening > 0:
        p = p / (1.0 + hardening * p)
    t = np.exp(-p)
    if scatter > 0:
        t = (t + scatter_offset(t, scatter, p.shape[1] / 8)) / (1.0 + scatter)
    if ring > 0:
        t = t * gain_map(p.shape[:2], ring, rng)[:, :, None]
    if readout > 0:
        i0 = float(exposure)
        t = np.maximum(i0 * t + readout * rng.standard_normal(t.shape), 1.0) / i0
    return -np.log(t)


def estimate_exposure(scan: np.ndarray, p: np.ndarray, theta: np.ndarray, *, base_projections: int,
                      scale: float, offset: float = 0.0, filter: str = "hann", rng: np.random.Generator,
                      slices: int = 6) -> float:
    """Estimate the photon count ``I0`` a scan was taken at from its noise.

    ``p`` are the scan's re-projected line integrals at angles ``theta`` (a subset of the scan's
    ``base_projections``). The noise of the scan is measured by a robust high-pass estimator
    (:func:`_noise_sigma`) over its brightest 10 % of voxels. Noise-only projections at a reference count
    ``I0_ref`` along the same rays (``Poisson(I0_ref·exp(-p))``) are reconstructed and measured the same way
    over the same voxels. FBP noise variance scales as ``1 / (I0 · n_angles)``, so
    ``I0 = I0_ref · (n_kept / n_base) · σ_ref² / σ_scan²``.
    """
    nz, ny, nx = scan.shape
    n = p.shape[1]
    y0, x0 = (n - ny) // 2, (n - nx) // 2
    zs = np.unique(np.linspace(1, max(1, nz - 2), min(slices, nz)).astype(int)).clip(0, nz - 1)
    zz = np.unique(np.clip(np.concatenate([zs - 1, zs, zs + 1]), 0, nz - 1))
    sub = np.asarray(scan[zz], np.float32) - offset
    mask = sub > np.percentile(sub, 90)
    sigma_scan = _noise_sigma(sub, mask)
    if not (sigma_scan > 0 and np.isfinite(sigma_scan)):
        return 1e12  # a noise-free scan: lowering the exposure adds noise as if it was taken at a huge count
    i0_ref = 1e4
    lam = i0_ref * np.exp(-p[zz].astype(np.float64))
    k = rng.poisson(lam)
    pn = -np.log(np.maximum(k, 0.5) / lam)
    rec = fbp((pn / scale).astype(np.float32), theta, filter=filter)[:, y0:y0 + ny, x0:x0 + nx]
    sigma_ref = _noise_sigma(rec, mask)
    return float(i0_ref * len(theta) / base_projections * (sigma_ref / sigma_scan) ** 2)


def _noise_sigma(vol: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Robust noise std: MAD of ``v - mean(6 neighbours)`` over ``mask`` (default: the brightest half).

    Only ratios of this estimate are used, so its scale for correlated (FBP) noise does not matter."""
    v = vol.astype(np.float32)
    nb = (np.roll(v, 1, 0) + np.roll(v, -1, 0) + np.roll(v, 1, 1) + np.roll(v, -1, 1) + np.roll(v, 1, 2)
          + np.roll(v, -1, 2)) / 6.0
    d = (v - nb)[1:-1, 2:-2, 2:-2]
    m = (v > np.percentile(v, 50)) if mask is None else mask
    d = d[m[1:-1, 2:-2, 2:-2]]
    if d.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(d - np.median(d))))


# ----------------------------------------------------------------------------------------------- helpers


def _check_volume(a, name, square=True) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 3:
        raise ScanError(f"{name} must be a 3-D (z, y, x) array, got shape {a.shape}")
    if square and a.shape[1] != a.shape[2]:
        raise ScanError(f"{name} slices must be square for the simulator, got shape {a.shape}")
    if a.size == 0 or not np.isfinite(a).any():
        raise ScanError(f"{name} has no finite values (shape {a.shape})")
    if not np.isfinite(a).all():
        a = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    return a


def _pad_square(vol: np.ndarray, n: int) -> np.ndarray:
    """Zero-pad slices to n × n (centred) so that the whole original slice lies inside the inscribed circle;
    the background value (median of the slice corners) is subtracted by the caller."""
    nz, ny, nx = vol.shape
    out = np.zeros((nz, n, n), np.float32)
    y0, x0 = (n - ny) // 2, (n - nx) // 2
    out[:, y0:y0 + ny, x0:x0 + nx] = vol
    return out


def _corners(vol: np.ndarray, k: int = 4) -> np.ndarray:
    return np.concatenate([vol[:, :k, :k].ravel(), vol[:, :k, -k:].ravel(), vol[:, -k:, :k].ravel(),
                           vol[:, -k:, -k:].ravel()])


def _disc(n: int) -> np.ndarray:
    c = (n - 1) / 2
    y, x = np.ogrid[:n, :n]
    return (((y - c) ** 2 + (x - c) ** 2) <= (n / 2) ** 2).astype(np.float32)


def _progress(it, enabled, desc):
    from porelab.runtime import progress

    return progress(it, enabled=enabled, desc=desc, unit="slice")
