"""``porelab robustness``: the scan-time trade-off (Iuso et al. 2024, section 4.8, Fig. 9) of one model on one
scan, a thin wrapper over :mod:`porelab.robustness`."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import click


def _fraction_list(text: str, option: str) -> tuple[float, ...]:
    from porelab.errors import ConfigError

    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{option} {text!r}: give fractions separated by commas, e.g. 1,0.5,0.333") from None
    if not values:
        raise ConfigError(f"{option} {text!r}: give at least one fraction")
    return values


@click.command("robustness")
@click.argument("scan", type=click.Path(path_type=Path))
@click.option("--model", "model_spec", required=True,
              help="A model folder saved by `porelab train`, or a registered model name / models:/ URI.")
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path),
              help="Output folder: new or empty (an earlier porelab output only with --overwrite).")
@click.option("--labels", default=None, metavar="MASK",
              help="Truth mask of SCAN (same shape): report AP, ROC-AUC and Dice. Without it (or with \"\"): "
                   "the detected porosity and pore count against those of the original scan.")
@click.option("--projections", "projections", default="1,0.5,0.333", show_default=True,
              help="Fractions of the original projections to keep, comma-separated.")
@click.option("--exposures", "exposures", default="1,0.75,0.5,0.25", show_default=True,
              help="Fractions of the original exposure, comma-separated.")
@click.option("--base-projections", type=int, default=None,
              help="Projections of the original scan [default: from a dataset manifest next to SCAN, "
                   "else π/2 × the padded slice width].")
@click.option("--base-exposure", type=float, default=None,
              help="Photon count per detector pixel of the original scan [default: from the manifest, "
                   "else estimated from the scan's noise].")
@click.option("--spacing", type=float, nargs=3, default=None, metavar="Z Y X",
              help="Voxel size in mm, (z, y, x) order; overrides the file's metadata.")
@click.option("--seed", type=int, default=0, show_default=True, help="Noise seed of the first re-scan.")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 … (default: CUDA when present).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT when it holds an earlier porelab output.")
def robustness(scan: Path, model_spec: str, output: Path, labels: str | None, projections: str, exposures: str,
               base_projections: int | None, base_exposure: float | None, spacing, seed: int, device,
               quiet: bool, overwrite: bool):
    """How a model's segmentation holds up when SCAN is scanned faster (Iuso et al. 2024, section 4.8).

    SCAN ((z, y, x), z = rotation axis) is re-scanned with fewer projections (default 100, 50, 33 %) and a
    lower exposure (100, 75, 50, 25 %): every combination (12 by default) is re-projected, thinned, given
    the Poisson noise of the lower exposure and reconstructed by FBP (as `porelab degrade`), then
    segmented with the model at its threshold. With --labels each re-scan gets AP, ROC-AUC and Dice
    inside the part; without, its detected porosity (% of the part), pore count and Dice agreement with
    the segmentation of the original scan. Writes into OUTPUT: robustness.csv (one row per re-scan),
    robustness.json (rows, the original scan's numbers, settings) and robustness.png (AP or porosity
    against exposure, one line per projection fraction).

    \b
    Example:
      porelab robustness data/cube_scan.npy --model models/unet --labels data/cube_truth.npy -o cube_rob
    """
    from porelab.cli.sim_cmds import simulated_settings
    from porelab.errors import ConfigError
    from porelab.io import atomic_path, prepare_output, read_mask, read_volume
    from porelab.pores import check_binary_file
    from porelab.robustness import run_robustness, write_robustness
    from porelab.runtime import get_device
    from porelab.tracking import resolve_model

    labels = labels or None                       # "" (the MLproject default) = no labels
    out_dir = prepare_output(output, inputs=[scan, labels, model_spec], overwrite=overwrite, is_dir=True)
    proj = _fraction_list(projections, "--projections")
    expo = _fraction_list(exposures, "--exposures")
    for name, values in (("--projections", proj), ("--exposures", expo)):
        if any(not (math.isfinite(v) and 0 < v <= 1) for v in values):
            raise ConfigError(f"{name} {','.join(f'{v:g}' for v in values)}: every fraction must be in (0, 1]")
    if base_projections is not None and base_projections < 4:
        raise ConfigError(f"--base-projections {base_projections} must be at least 4 projections")
    if base_exposure is not None and not (base_exposure > 0 and math.isfinite(base_exposure)):
        raise ConfigError(f"--base-exposure {base_exposure} must be a positive photon count")
    device = get_device(device)
    model = resolve_model(model_spec)             # a bad model fails before anything is read or written
    vol = read_volume(scan, spacing=spacing)      # ... and so does a bad scan
    truth = None
    if labels is not None:
        check_binary_file(labels, role="truth mask")
        truth = read_mask(labels, like=vol.array)
    base_projections, base_exposure, voxel_mm = simulated_settings(scan, base_projections, base_exposure)
    t0 = time.perf_counter()
    result = run_robustness(vol, model, labels=truth, projections=proj, exposures=expo,
                            base_projections=base_projections, base_exposure=base_exposure, voxel_mm=voxel_mm,
                            seed=seed, progress=not quiet, device=device)
    extra = {"scan": str(scan), "model_spec": str(model_spec), "labels": None if labels is None else str(labels),
             "seconds": round(time.perf_counter() - t0, 1)}
    with atomic_path(out_dir, is_dir=True, overwrite=overwrite, marker="robustness") as tmp:
        write_robustness(tmp, result, title=f"{Path(scan).name}: {model.name}", extra=extra)
    metric = result["metric"]
    ref = result["reference"]
    click.echo(f"{'projections %':>13}  {'exposure %':>10}  {metric:>16}  {'pores':>5}")
    for r in result["rows"]:
        v = r.get(metric)
        shown = "nan" if v is None or not math.isfinite(v) else f"{v:.4f}"
        click.echo(f"{r['projections_percent']:>13}  {r['exposure_percent']:>10}  {shown:>16}  {r['pore_count']:>5}")
    refv = ref.get(metric)
    click.echo(f"{'original':>13}  {'':>10}  {refv:>16.4f}  {ref['pore_count']:>5}")
    click.echo(json.dumps({"out": str(output), "rows": len(result["rows"]), "metric": metric,
                           "seconds": extra["seconds"]}))
