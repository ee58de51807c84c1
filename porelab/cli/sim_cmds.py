"""``porelab simulate`` and ``porelab degrade``: simulated CT datasets with exact truth, and re-scans of any
scan with fewer projections and lower exposure."""

from __future__ import annotations

import time
from pathlib import Path

import click


@click.command(name="simulate")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--preset", type=click.Choice(["smoke", "quick", "hard", "paper", "othergen"]), default="quick",
              show_default=True,
              help="smoke: 32×48×48 scans in seconds; quick: 96×128×128, about a minute on 2 cores; "
                   "hard: quick's sizes with cone beam (FDK), scatter, photon starvation, strong cupping and "
                   "rings, texture, density drift and small / clustered / surface / large pores (a few "
                   "minutes); paper: 10 µm voxels (2000×1111×1111 cylinders), big machines only; "
                   "othergen: 96×128×128 scans from another, independent generator (hexagonal prisms and "
                   "tubes, ellipsoidal / chained / sheet-like pores, columnar grains, an image-domain scanner "
                   "model, grey values in arbitrary units 0-65535): five cv scans and one hard test scan.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same files.")
@click.option("--porosity", type=float, default=None, metavar="PCT",
              help="Target pore volume in % of each part (realistic 0.1-2; default 0.75, smoke 2).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--overwrite", is_flag=True, help="Replace OUT when it holds an earlier porelab dataset.")
def simulate(out: Path, preset: str, seed: int, porosity: float | None, quiet: bool, overwrite: bool):
    """Simulate the paper's dataset: five cylinders (cross-validation: one Ti6Al4V, two CoCr, two 316L, of
    comparable image quality) and one hard 316L cube (fewer projections, lower exposure, stronger beam
    hardening, rings), by X-ray CT physics with exact pore truth.

    \b
    Writes into OUT, for each sample NAME (cyl1..cyl5, cube):
      NAME_scan.npy    float32 reconstructed attenuation (1/mm), (z, y, x), z = build direction
      NAME_truth.npy   uint8 exact pore mask
      NAME_object.npy  uint8 watertight part (pores count as part)
      NAME_pores.json  the placed pores (kind gas|keyhole|lof, centre (z, y, x) voxels, size)
    and manifest.json. Voxel sizes (mm) are in the manifest and in NAME_*.npy.json. The dataset is written
    into a temporary folder beside OUT and renamed to OUT when complete; an existing OUT must be empty, or an
    earlier porelab dataset and --overwrite given.

    \b
    Example:
      porelab simulate data --preset quick --seed 0
      porelab simulate tiny --preset smoke --porosity 1.5
    """
    from porelab.simulate.dataset import load_manifest, simulate_dataset

    t0 = time.perf_counter()
    manifest = simulate_dataset(out, preset=preset, seed=seed, progress=not quiet, porosity=porosity,
                                overwrite=overwrite)
    ds = load_manifest(manifest)
    rows = [("name", "role", "material", "shape", "voxels (z,y,x)", "voxel µm", "projections", "exposure",
             "hardening", "porosity %", "pores")]
    import numpy as np

    for s in ds.samples:
        shape = np.load(s.scan, mmap_mode="r").shape
        q = s.quality
        rows.append((s.name, s.role, s.material, s.shape, "×".join(str(v) for v in shape),
                     f"{1000 * s.spacing[0]:.1f}", str(q.get("projections")), f"{q.get('exposure'):g}",
                     f"{q.get('hardening'):g}", f"{s.porosity_percent:.2f}", str(s.pore_count)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    click.echo(f"wrote {manifest} ({time.perf_counter() - t0:.1f} s)")


@click.command(name="degrade")
@click.argument("scan", type=click.Path(path_type=Path))
@click.option("-o", "--out", "out", type=click.Path(path_type=Path), required=True,
              help="Output scan; the format follows the extension (.npy, .tif, .nii.gz, .mhd, .nrrd, .raw, ...).")
@click.option("--projections", type=float, default=1.0, show_default=True,
              help="Fraction of the original projections to keep, in (0, 1] (paper: 1, 0.5, 0.333).")
@click.option("--exposure", type=float, default=1.0, show_default=True,
              help="Fraction of the original exposure, in (0, 1] (paper: 1, 0.75, 0.5, 0.25).")
@click.option("--seed", type=int, default=0, show_default=True, help="Noise seed.")
@click.option("--base-projections", type=int, default=None,
              help="Projections of the original scan [default: from a dataset manifest next to SCAN, "
                   "else π/2 × the padded slice width].")
@click.option("--base-exposure", type=float, default=None,
              help="Photon count per detector pixel of the original scan [default: from the manifest, "
                   "else estimated from the scan's noise].")
@click.option("--spacing", type=float, default=None, metavar="MM",
              help="Voxel size to use when SCAN's file carries none.")
@click.option("--cone", is_flag=True,
              help="Re-scan in the paper's circular cone-beam geometry and reconstruct by FDK "
                   "(projections over 360°).")
@click.option("--scatter", type=float, default=0.0, show_default=True, metavar="F",
              help="Add scatter: scatter-to-primary ratio of the open beam (e.g. 0.1).")
@click.option("--starvation", type=float, default=0.0, show_default=True, metavar="COUNTS",
              help="Add photon starvation: electronic noise of COUNTS (std) with a one-count floor (e.g. 3).")
@click.option("--hardening", type=float, default=0.0, show_default=True, metavar="B",
              help="Add beam hardening p / (1 + B·p) to the re-projections (cupping).")
@click.option("--rings", type=float, default=0.0, show_default=True, metavar="STD",
              help="Add detector gain errors of relative std STD (rings, e.g. 0.01).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--overwrite", is_flag=True, help="Replace OUT when it exists (never SCAN itself).")
def degrade(scan: Path, out: Path, projections: float, exposure: float, seed: int, base_projections,
            base_exposure, spacing, cone: bool, scatter: float, starvation: float, hardening: float,
            rings: float, quiet: bool, overwrite: bool):
    """Re-scan SCAN with fewer projections and lower exposure (Iuso et al. 2024, section 4.8).

    Each axial slice (z, y, x order; z = rotation axis) is re-projected, every k-th projection is kept,
    Poisson noise for the lower exposure is added to the projections, and the slices are reconstructed by
    filtered back-projection. Works on any scan: a simulated one (its manifest gives the original settings
    and physical units) or a real one (settings estimated from the scan).

    \b
    The effects that make real scans hard can be added the same way (--cone, --scatter, --starvation,
    --hardening, --rings); texture, density drift and pores belong to the part and need a new simulation
    (porelab simulate --preset hard).

    \b
    Example:
      porelab degrade data/cube_scan.npy -o cube_p50_e25.npy --projections 0.5 --exposure 0.25
      porelab degrade data/cyl4_scan.npy -o cyl4_hard.npy --cone --scatter 0.1 --starvation 3
    """
    import json
    import math

    from porelab.cli.scan_cmds import _check_output
    from porelab.errors import ConfigError
    from porelab.io import read_volume, write_volume
    from porelab.simulate.ct import degrade as degrade_scan

    if not 0 < projections <= 1:
        raise ConfigError(f"--projections {projections} must be a fraction in (0, 1]")
    if not 0 < exposure <= 1:
        raise ConfigError(f"--exposure {exposure} must be a fraction in (0, 1]")
    if base_projections is not None and base_projections < 1:
        raise ConfigError(f"--base-projections {base_projections} must be a positive number of projections")
    if base_exposure is not None and not (base_exposure > 0 and math.isfinite(base_exposure)):
        raise ConfigError(f"--base-exposure {base_exposure} must be a positive photon count")
    if spacing is not None and not (spacing > 0 and math.isfinite(spacing)):
        raise ConfigError(f"--spacing {spacing} must be a positive voxel size in mm")
    for opt, val in (("--scatter", scatter), ("--starvation", starvation), ("--hardening", hardening),
                     ("--rings", rings)):
        if not (val >= 0 and math.isfinite(val)):
            raise ConfigError(f"{opt} {val} must be a finite number >= 0")
    target = _check_output(Path(out), inputs=[scan], overwrite=overwrite)
    sp = None if spacing is None else (spacing, spacing, spacing)
    vol = read_volume(scan, spacing=sp)
    base_projections, base_exposure, voxel_mm = simulated_settings(scan, base_projections, base_exposure)
    result = degrade_scan(vol.array, projections=projections, exposure=exposure, seed=seed,
                          base_projections=base_projections, base_exposure=base_exposure, voxel_mm=voxel_mm,
                          progress=not quiet, cone=cone, scatter=scatter, readout=starvation,
                          hardening=hardening, ring=rings)
    write_volume(target, result, spacing=vol.spacing)
    click.echo(json.dumps({"out": str(out), "shape": list(result.shape), "projections": projections,
                           "exposure": exposure, "base_projections": base_projections,
                           "base_exposure": base_exposure}))


def simulated_settings(scan, base_projections, base_exposure) -> tuple:
    """``(base_projections, base_exposure, voxel_mm)`` for re-scanning ``scan``: the given values, completed
    from the manifest entry when ``scan`` sits in a simulated dataset (attenuation in 1/mm, settings known);
    ``voxel_mm`` is None for any other scan."""
    entry = _manifest_entry(Path(scan))
    if entry is None:
        return base_projections, base_exposure, None
    q = entry.get("quality", {})
    return (base_projections or q.get("projections"), base_exposure or q.get("exposure"),
            float(entry["spacing"][1]))


def _manifest_entry(scan: Path) -> dict | None:
    """The manifest entry of ``scan`` when it sits in a simulated dataset folder, else None."""
    import json

    mpath = scan.parent / "manifest.json"
    if not mpath.is_file():
        return None
    try:
        data = json.loads(mpath.read_text())
        for s in data.get("samples", []):
            if (scan.parent / s.get("path", s.get("scan", ""))).resolve() == scan.resolve():  # format 2, 1
                return s
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return None
