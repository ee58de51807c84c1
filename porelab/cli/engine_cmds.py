"""``porelab train`` and ``porelab segment``: thin wrappers over :mod:`porelab.crossval` and :mod:`porelab.segment`."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import click

from porelab.cli.scan_cmds import _SCHEDULER_HELP, _WORKERS_HELP
from porelab.nets import NAMES

MASK_FORMATS = ("npy", "tif", "nii.gz", "mha", "nrrd", "zarr")


# ---------------------------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------------------------
@click.command("train")
@click.option("--data", "data", required=True, type=click.Path(), help="Dataset folder with manifest.json "
              "(from `porelab dataset` or `porelab simulate`).")
@click.option("--net", "net_name", required=True, type=click.Choice(NAMES), help="Network to train.")
@click.option("-o", "--output", "output", required=True, type=click.Path(), help="Model folder to write.")
@click.option("--profile", default="quick", show_default=True, help="smoke | quick | paper: sizes and budgets.")
@click.option("--labels", type=click.Choice(["heuristic", "truth"]), default="heuristic", show_default=True,
              help="Labels for supervised training and for choosing the threshold: Algorithm 1 heuristic "
              "labels of each scan, or the dataset's labels (a simulation's exact truth; every cv scan needs "
              "them).")
@click.option("--scale", type=float, default=None, help="Width multiplier of the net (default: the profile's).")
@click.option("--max-epochs", type=int, default=None, help="Override the profile's epoch budget.")
@click.option("--seed", type=int, default=0, show_default=True, help="One seed for numpy, torch and TorchIO.")
@click.option("--checkpoints", type=click.Path(), default=None,
              help="Folder for best.pt/last.pt; training resumes from last.pt when it exists.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT when it holds an earlier porelab output.")
def train(data, net_name, output, profile, labels, scale, max_epochs, seed, checkpoints, overwrite):
    """Train one network on a dataset's cylinders and save a model folder.

    All cv scans but the last train the net; the last one is the validation scan (early stopping and the
    decision threshold: F1-optimal against its labels). Scans are (z, y, x), each normalised per scan
    (air -> 0, metal -> 0.8). The model folder holds model.json + weights.pt and is what
    `porelab segment --model` takes.

    \b
    Example:
      porelab simulate data --preset smoke
      porelab train --data data --net unet -o models/unet --profile smoke
      porelab segment data/cyl1_scan.npy -o seg --model models/unet
    """
    from porelab.config import get_profile
    from porelab.crossval import default_net_kwargs, fit_fold, label_source, make_context
    from porelab.errors import ConfigError
    from porelab.io import prepare_output
    from porelab.nets import is_supervised

    output = prepare_output(output, inputs=[data], overwrite=overwrite, is_dir=True)  # before any training
    prof = get_profile(profile)
    overrides = {"max_epochs": max_epochs} if max_epochs is not None else {}
    if max_epochs is not None and max_epochs < 1:
        raise ConfigError(f"--max-epochs must be >= 1, got {max_epochs}")
    if scale is not None and not scale > 0:
        raise ConfigError(f"--scale must be > 0, got {scale}")
    net_kwargs = default_net_kwargs(prof, net_name, scale)

    t0 = time.perf_counter()
    # one fold: the last cv scan validates (early stopping, threshold), all the others train
    ctx = make_context(prof, data, seed, progress=True, folds=[-1], hard=False)
    fold = ctx.folds[0]
    lab = label_source(ctx, labels)
    result = fit_fold(ctx, net_name, net_kwargs, {}, fold, labels=lab if is_supervised(net_name) else None,
                      seed=seed, overrides=overrides, checkpoint_dir=checkpoints)
    model, history, metrics = result.model, result.history, result.metrics
    val = ctx.cv[fold]
    model.meta.update({
        "labels": labels, "seed": seed, "profile": prof.name, "dataset": str(Path(data).resolve()),
        "validation_scan": val.name, "train_scans": [s.name for i, s in enumerate(ctx.cv) if i != fold],
        "history": {k: history[k] for k in ("train_loss", "val_loss", "seconds", "best_epoch", "stopped_early",
                                            "epochs")},
        "validation_metrics": metrics,
    })
    model.save(output)
    summary = {"model": str(output), "net": net_name, "epochs": history["epochs"],
               "best_epoch": history["best_epoch"], "threshold": model.threshold,
               "threshold_policy": model.meta["threshold_policy"],
               "val_ap_inj": metrics.get("val_ap_pp_inj", metrics.get("val_ap_inj")),
               "val_ap": metrics.get("val_ap"),
               "val_auc": metrics.get("val_auc"), "val_dice": metrics.get("val_dice"),
               "val_ap_alg1": metrics.get("val_ap_alg1"),
               "seconds": round(time.perf_counter() - t0, 1)}
    click.echo(json.dumps(summary, indent=2, default=float))


# ---------------------------------------------------------------------------------------------------------------
# segment
# ---------------------------------------------------------------------------------------------------------------
@click.command("segment")
@click.argument("scan", type=click.Path())
@click.option("-o", "--output", "output", required=True, type=click.Path(),
              help="Output folder: new or empty (an earlier porelab output only with --overwrite).")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT when it holds an earlier porelab output.")
@click.option("--model", "model_spec", required=True,
              help="A model folder saved by `porelab train`, or a registered model name / models:/ URI.")
@click.option("--threshold", type=float, default=None, help="Score threshold (default: the model's).")
@click.option("--skin", type=int, default=None, metavar="VOXELS",
              help="Score nothing within this many voxels of the part's surface (default: the model's, 2 for "
                   "models trained by this version); 0 also scores surface-connected pores.")
@click.option("--spacing", type=float, nargs=3, default=None, metavar="Z Y X",
              help="Voxel size in mm, (z, y, x) order; overrides the file's metadata.")
@click.option("--no-score", is_flag=True, help="Do not write the score (saves disk on large scans; with "
              "--scheduler pores.csv then has no score_mean, score_max).")
@click.option("--mask-format", type=click.Choice(MASK_FORMATS), default=None,
              help="File format of the uint8 mask (default: npy; zarr with --scheduler).")
@click.option("--no-report", is_flag=True, help="Write no pore report (pores.csv, summary.json, plots).")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 … (default: CUDA when present).")
@click.option("--scheduler", default=None, metavar="local|tcp://HOST:PORT",
              help=_SCHEDULER_HELP + " Supervised models only.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help=_WORKERS_HELP)
@click.option("--chunk", type=click.IntRange(min=8), default=256, show_default=True,
              help="With --scheduler: chunk edge in voxels (rounded up to a multiple of half the patch).")
def segment(scan, output, model_spec, threshold, skin, spacing, no_score, mask_format, no_report, device,
            overwrite, scheduler, workers, chunk):
    """Segment pores in a CT scan with a trained model.

    Writes into OUTPUT: score.npy (float32 voxel score, higher = more likely pore; (z, y, x)), mask.<ext>
    (uint8, score >= threshold), pores.csv and summary.json (the per-pore report), overlay.png (mid-slices
    with the mask in red) and segment.json (model, threshold, timings). The scan is read lazily
    (memory-mapped where the format allows) and scored patch by patch; the score streams to disk.

    The score is 0 within --skin voxels of the part's surface (the part: Otsu threshold and flood fill
    of the scan, as in Algorithm 1), where the surface's partial volume looks like porosity to every
    model; give --skin 0 to score surface-connected pores as well.

    NaN and infinite voxels are missing data: they are filled from their nearest finite neighbours for
    scoring, their score is NaN (never a pore), a warning gives their number, and segment.json records it
    (nonfinite_voxels). A scan without any finite voxel is refused.

    With --scheduler the scan is scored chunk by chunk on Dask workers (the same score, within float32
    rounding, and the same mask; docs/cluster.md): they read the scan lazily and write score.zarr and
    mask.zarr chunk by chunk (--mask-format npy: score.npy and mask.npy, filled by the workers; another
    mask format: score.zarr, and the mask gathered here, 1 byte per voxel). Paths must be visible to
    every worker. The pore report is computed in this process and needs the whole mask and the part's
    object in memory (about 7 bytes per voxel: 1 each, and 4 for the labels of the pores' bounding box);
    --no-report skips it for scans too big for that.
    Unsupervised models are refused: their eq. (2)-(3) surface compensation fits on the whole scan.

    \b
    Example:
      porelab segment part.tif -o part_pores --model models/unet --spacing 0.01 0.01 0.01
      porelab segment part.zarr -o part_pores --model models/unet --scheduler local --workers 8
    """
    import numpy as np

    from porelab.errors import ConfigError
    from porelab.io import atomic_path, prepare_output, read_volume, write_json, write_volume
    from porelab.pores import write_report
    from porelab.runtime import get_device
    from porelab.segment import segment as segment_scan
    from porelab.tracking import resolve_model

    out_dir = prepare_output(output, inputs=[scan, model_spec], overwrite=overwrite, is_dir=True)
    if skin is not None and skin < 0:
        raise ConfigError(f"--skin must be >= 0 voxels, got {skin}")
    if threshold is not None and not math.isfinite(threshold):
        raise ConfigError(f"--threshold must be a finite number, got {threshold}")
    device_name = device
    device = get_device(device)                   # an unavailable --device fails before anything is read
    model = resolve_model(model_spec)             # fail early: nothing written for a bad model
    vol = read_volume(scan, spacing=spacing)      # ... or a bad scan
    if scheduler is not None:
        from porelab.inference.dask import check_dask_model

        check_dask_model(model)                   # before a cluster starts or anything is written
        _segment_on_dask(scan, out_dir, model, model_spec, vol, threshold=threshold, skin=skin,
                         no_score=no_score, mask_format=mask_format or "zarr", no_report=no_report,
                         device=device_name, overwrite=overwrite, scheduler=scheduler, workers=workers,
                         chunk=chunk)
        return
    mask_format = mask_format or "npy"
    t0 = time.perf_counter()
    with atomic_path(out_dir, is_dir=True, overwrite=overwrite, marker="segment") as tmp:
        tmp.mkdir(exist_ok=True)
        out = None
        if not no_score:
            out = np.lib.format.open_memmap(tmp / "score.npy", mode="w+", dtype=np.float32, shape=vol.shape)
        seg = segment_scan(vol, model, threshold=threshold, skin=skin, progress=True, out=out, device=device)
        score, info, thr = seg.score, seg.info, seg.threshold
        model = model.replace(skin=int(info.get("skin", model.skin)))
        n_missing = int(info.get("nonfinite_voxels", 0))
        mask = seg.mask.view(np.uint8)
        if out is not None:
            out.flush()
        write_volume(tmp / f"mask.{mask_format}", mask, spacing=vol.spacing)
        # pores.csv, summary.json, size_histogram.png, overlay.png
        report = {} if no_report else write_report(
            seg.mask, tmp, volume=vol, spacing=vol.spacing if vol.spacing_known else None, score=score,
            progress=True, parameters=_report_parameters(model_spec, model, thr, n_missing)) or {}
        del score, out, seg
        seconds = time.perf_counter() - t0
        summary = {"scan": str(scan), "shape": list(vol.shape), "spacing": list(vol.spacing),
                   "spacing_known": vol.spacing_known, "model": str(model_spec), "net": model.name,
                   "kind": model.kind, "threshold": thr, "postprocess": model.postprocess, "skin": model.skin,
                   "smooth": model.smooth if model.kind == "unsupervised" else None,
                   "normalisation": info, "nonfinite_voxels": n_missing, "mask_voxels": int(mask.sum()),
                   "seconds": round(seconds, 2),
                   "pore_count": report.get("pore_count"), "porosity_percent": report.get("porosity_percent")}
        write_json(tmp / "segment.json", summary)
    _echo_summary(summary, n_missing, vol.spacing_known)


def _report_parameters(model_spec, model, thr, n_missing) -> dict:
    return {"model": str(model_spec), "net": model.name, "threshold": thr,
            "threshold_policy": model.meta.get("threshold_policy"), "nonfinite_voxels": n_missing}


def _echo_summary(summary: dict, n_missing: int, spacing_known: bool) -> None:
    click.echo(json.dumps(summary, indent=2, default=float))
    if n_missing:
        click.echo(f"porelab: warning: {n_missing} non-finite voxels treated as missing (score NaN there, "
                   "never a pore)", err=True)
    if not spacing_known:
        click.echo("porelab: note: voxel size unknown; lengths are in voxels (give --spacing Z Y X in mm)",
                   err=True)
    sys.stdout.flush()


_FROM_SCAN = "watertight object from the scan (Algorithm 1 steps 6-8)"


def _segment_on_dask(scan, out_dir, model, model_spec, vol, *, threshold, skin, no_score, mask_format,
                     no_report, device, overwrite, scheduler, workers, chunk):
    """``porelab segment --scheduler``: ``porelab.inference.dask.segment_dask`` on a Dask cluster.

    One pass over the cluster writes the score, the mask and (for the report) Algorithm 1's object of the
    scan, each chunk by chunk: zarr stores, or ``.npy`` files the workers fill. The model goes to the workers
    as a folder inside the output's temporary folder (on the output's file system, which they must see). The
    report then reads the mask and the object whole into this process and the score pore by pore; its
    numbers are those of the one-process command, whose object is the same Algorithm 1 object."""
    import shutil

    import numpy as np

    from porelab.cli.scan_cmds import _one_line_warnings
    from porelab.distributed import connect, write_zarr_dask
    from porelab.inference.dask import segment_dask, write_npy_dask
    from porelab.io import atomic_path, iter_slabs, write_json, write_volume
    from porelab.pores import write_report

    t0 = time.perf_counter()
    ext = "npy" if mask_format == "npy" else "zarr"          # how the workers write
    with connect(scheduler, workers) as client, _one_line_warnings(), \
            atomic_path(out_dir, is_dir=True, overwrite=overwrite, marker="segment") as tmp:
        tmp.mkdir(exist_ok=True)
        folder = model.save(tmp / ".model")
        res = segment_dask(scan, folder, client=client, chunks=chunk, threshold=threshold, skin=skin,
                           spacing=vol.spacing, device=device, with_object=not no_report)
        info, thr = res["info"], res["info"]["threshold"]
        paths = {"score": tmp / f"score.{ext}", "mask": tmp / (f"mask.{ext}" if ext == mask_format else f".mask.{ext}"),
                 "object": tmp / f".object.{ext}"}
        arrays = {paths["mask"]: res["mask"]}
        if not no_score:
            arrays[paths["score"]] = res["score"]
        if not no_report:
            arrays[paths["object"]] = res["object"]
        if ext == "npy":
            write_npy_dask(arrays, client=client)
        else:
            write_zarr_dask(arrays, spacing=vol.spacing, client=client)

        def _open(path):
            if ext == "npy":
                return np.load(path, mmap_mode="r")
            import zarr

            return zarr.open_array(str(path), mode="r")

        def _whole(path):
            store, whole = _open(path), np.empty(vol.shape, dtype=bool)
            for sl in iter_slabs(vol.shape):
                whole[sl] = np.asarray(store[sl]) != 0
            return whole

        mask = None if no_report and ext == mask_format else _whole(paths["mask"])
        if ext != mask_format:                                 # tif, nii.gz, …: gathered here, then written
            write_volume(tmp / f"mask.{mask_format}", mask.view(np.uint8), spacing=vol.spacing)
        store = _open(paths["mask"])
        n_mask = sum(int(np.count_nonzero(np.asarray(store[sl]))) for sl in iter_slabs(vol.shape))
        report = {}
        if not no_report:
            report = write_report(mask, tmp, volume=vol, spacing=vol.spacing if vol.spacing_known else None,
                                  object_mask=_whole(paths["object"]),
                                  score=None if no_score else _open(paths["score"]), progress=True,
                                  parameters=_report_parameters(model_spec, model, thr, info["nonfinite_voxels"]))
            # the object is Algorithm 1's of the scan, as in one process: say so (write_report names an object
            # it is given "given object mask")
            given = report["porosity_reference"]
            report["porosity_reference"] = _FROM_SCAN
            write_json(tmp / "summary.json", report)
            page = tmp / "report.html"
            if page.exists():
                page.write_text(page.read_text(encoding="utf-8").replace(given, _FROM_SCAN), encoding="utf-8")
        for hidden in (tmp / ".model", paths["object"], *([paths["mask"]] if ext != mask_format else [])):
            if hidden.is_dir():
                shutil.rmtree(hidden)
            elif hidden.exists():
                hidden.unlink()
        del mask, store
        n_missing = int(info["nonfinite_voxels"])
        summary = {"scan": str(scan), "shape": list(vol.shape), "spacing": list(vol.spacing),
                   "spacing_known": vol.spacing_known, "model": str(model_spec), "net": model.name,
                   "kind": model.kind, "threshold": thr, "postprocess": model.postprocess, "skin": info["skin"],
                   "smooth": None,
                   "normalisation": {k: info[k] for k in ("air", "material", "skin", "nonfinite_voxels")},
                   "nonfinite_voxels": n_missing, "mask_voxels": n_mask,
                   "seconds": round(time.perf_counter() - t0, 2),
                   "pore_count": report.get("pore_count"), "porosity_percent": report.get("porosity_percent"),
                   "dask": {"scheduler": scheduler, "workers": len(client.scheduler_info()["workers"]),
                            "chunks": info["chunks"], "depth": info["depth"]}}
        write_json(tmp / "segment.json", summary)
    _echo_summary(summary, n_missing, vol.spacing_known)
