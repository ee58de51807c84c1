"""``porelab info``, ``porelab label`` and ``porelab report``: scans in, Algorithm 1 labels, the pore report."""

from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from pathlib import Path

import click

_SPACING_HELP = "Voxel size in mm, order z y x (overrides the file's metadata), e.g. --spacing 0.01 0.01 0.01."


@contextmanager
def _one_line_warnings():
    """Show library warnings as one ``porelab: warning: …`` line each, not Python's two-line format."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for w in caught:
                if issubclass(w.category, (DeprecationWarning, FutureWarning)):
                    continue
                click.echo(f"porelab: warning: {' '.join(str(w.message).split())}", err=True)


def _check_output(path: Path, *, inputs=(), overwrite: bool = False) -> Path:
    """Fail before any work when the output path has an unknown format, would overwrite or hold an input, or
    exists (see :func:`porelab.io.prepare_output`); return it resolved."""
    from porelab.errors import ConfigError
    from porelab.io import SCAN_SUFFIXES, prepare_output

    name = path.name.lower()
    if path.suffix and not any(name.endswith(s) for s in SCAN_SUFFIXES):
        raise ConfigError(f"{path}: unknown output format {path.suffix}; use one of {', '.join(SCAN_SUFFIXES)}")
    is_dir = not path.suffix or name.endswith(".zarr")  # a folder of TIFF slices, or a zarr store
    return prepare_output(path, inputs=inputs, overwrite=overwrite, is_dir=is_dir)


_OVERWRITE_HELP = "Replace an existing output (a folder only when porelab wrote it)."
_SCHEDULER_HELP = ("Run on Dask (needs porelab[cluster]): 'local' starts a cluster of worker processes on this "
                   "machine, tcp://HOST:PORT joins a running scheduler (docs/cluster.md).")
_WORKERS_HELP = "Worker processes of --scheduler local (default: one per CPU)."


@click.command(name="info")
@click.argument("scan", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option("--spacing", nargs=3, type=float, default=None, metavar="Z Y X", help=_SPACING_HELP)
def info(scan: Path, as_json: bool, spacing):
    """Shape, dtype, voxel spacing and value range of a scan.

    SCAN is a .tif/.tiff stack, a folder of 2-D TIFF slices, .npy, .nii/.nii.gz, .mhd/.mha, .nrrd,
    .raw/.vol (with a <file>.json sidecar or a .vgi header), .vgi or .zarr. Arrays are reported in
    (z, y, x) order and spacing in mm (z, y, x); min/max/mean are exact, computed slab by slab, so a
    10^9-voxel scan is read once without loading it into memory.

    \b
    Example (a scan of `porelab simulate data --preset smoke`):
      porelab info data/cyl1_scan.npy --json
      {"path": "data/cyl1_scan.npy", "format": "npy", "shape": [32, 48, 48], "dtype": "float32",
       "spacing": [0.2315, 0.2315, 0.2315], "spacing_known": true, "min": -0.0242, "max": 0.1402,
       "mean": 0.0198, "nan_count": 0}
    """
    from porelab.io import read_volume, scan_stats

    vol = read_volume(scan, spacing=spacing)
    stats = scan_stats(vol.array, progress=vol.array.size > (1 << 26))
    out = {"path": str(scan), "format": vol.meta.get("format"), "shape": list(vol.shape),
           "dtype": str(vol.dtype), "spacing": list(vol.spacing), "spacing_known": vol.spacing_known,
           "min": stats["min"], "max": stats["max"], "mean": stats["mean"], "nan_count": stats["nan_count"]}
    if as_json:
        click.echo(json.dumps(out))
        return
    z, y, x = vol.shape
    sz, sy, sx = vol.spacing
    unit = "mm" if vol.spacing_known else "(unknown: voxel units; pass --spacing Z Y X in mm)"
    click.echo(f"{scan}  [{out['format']}]")
    click.echo(f"  shape (z, y, x)   {z} x {y} x {x}  ({vol.array.size:,} voxels, {out['dtype']})")
    click.echo(f"  spacing (z, y, x) {sz:g} x {sy:g} x {sx:g} {unit}")
    click.echo(f"  values            min {out['min']:g}  max {out['max']:g}  mean {out['mean']:g}"
               + (f"  ({out['nan_count']} NaN/inf ignored)" if out["nan_count"] else ""))


@click.command(name="label")
@click.argument("scan", type=click.Path(path_type=Path))
@click.option("-o", "--output", "output", type=click.Path(path_type=Path), required=True,
              help="Mask to write (uint8, 1 = pore); its extension picks the format (.npy, .tif, .nii.gz, …).")
@click.option("--min-extent", type=click.IntRange(min=1), default=2, show_default=True,
              help="Drop a pore whose bounding box is shorter than this many voxels along any axis.")
@click.option("--corners", type=click.Choice(["one", "all"]), default="one", show_default=True,
              help="Flood-fill the background from the first low corner (the paper) or from all of them.")
@click.option("--surface-margin", type=click.IntRange(min=0), default=0, show_default=True,
              help="Not in the paper: ignore candidates within this many voxels of the outside, so the "
                   "part's blurred skin is not labelled as one big pore (2 suits blurred scans).")
@click.option("--spacing", nargs=3, type=float, default=None, metavar="Z Y X", help=_SPACING_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the counts and thresholds as JSON.")
@click.option("--overwrite", is_flag=True, help=_OVERWRITE_HELP)
@click.option("--scheduler", default=None, metavar="local|tcp://HOST:PORT", help=_SCHEDULER_HELP)
@click.option("--workers", type=click.IntRange(min=1), default=None, help=_WORKERS_HELP)
@click.option("--chunk", type=click.IntRange(min=8), default=256, show_default=True,
              help="With --scheduler: chunk edge in voxels. A .zarr output is written chunk by chunk; other "
                   "formats gather the mask (1 byte per voxel) in this process first.")
def label(scan: Path, output: Path, min_extent: int, corners: str, surface_margin: int, spacing,
          as_json: bool, overwrite: bool, scheduler: str | None, workers: int | None, chunk: int):
    """Heuristic pore labels by Algorithm 1 of Iuso et al. (2024).

    Otsu threshold over the scan -> low voxels; flood fill of the low voxels 6-connected to a corner
    (the first of (0,0,0), (0,0,X-1), (0,Y-1,0), ... that is low) -> background; its inverse is the
    watertight object; Otsu again inside the object -> pore candidates; 6-connected components whose
    bounding box is shorter than --min-extent voxels along any axis (z, y, x) are dropped.
    With the paper's settings a blurred surface skin can become one shell-shaped "pore"; --surface-margin 2
    avoids that. Prints the pore count and the porosity in % of the watertight object. The mask keeps the scan's
    spacing (mm, z y x) where the format can store it.

    \b
    Example (a scan of `porelab simulate data --preset smoke`, true porosity 2.2 %):
      porelab label data/cyl1_scan.npy -o cyl1_labels.npy --surface-margin 2
      cyl1_labels.npy: 4 pores, porosity 3.910 % of the watertight object (503 of 12,866 voxels;
      Otsu thresholds 0.05253 (air) and 0.09286 (pores), min extent 2, surface margin 2)
    """
    from porelab.io import read_volume, write_volume
    from porelab.labels import run_algorithm1

    target = _check_output(output, inputs=[scan], overwrite=overwrite)
    vol = read_volume(scan, spacing=spacing)
    if scheduler is not None:
        from porelab.distributed import compute, connect, label_dask

        zarr_out = target.name.lower().endswith(".zarr")
        with connect(scheduler, workers) as client, _one_line_warnings():
            res = label_dask(scan, client=client, chunks=chunk, min_extent=min_extent, corners=corners,
                             surface_margin=surface_margin, spacing=vol.spacing,
                             out=target if zarr_out else None)
            if not zarr_out:
                pores, = compute(res.pores, client=client)
                write_volume(target, pores.view("uint8"), spacing=vol.spacing)
    else:
        with _one_line_warnings():
            res = run_algorithm1(vol.array, min_extent=min_extent, corners=corners,
                                 surface_margin=surface_margin, progress=True)
        write_volume(target, res.pores.view("uint8"), spacing=vol.spacing)
    s = res.summary()
    if as_json:
        click.echo(json.dumps(dict(s, output=str(output), spacing=list(vol.spacing))))
        return
    click.echo(f"{output}: {s['pores']} pores, porosity {s['porosity_percent']:.3f} % of the watertight "
               f"object ({s['pore_voxels']:,} of {s['object_voxels']:,} voxels; Otsu thresholds "
               f"{s['low_threshold']:.4g} (air) and {s['pore_threshold']:.4g} (pores), min extent {min_extent}, "
               f"surface margin {surface_margin})")


@click.command(name="report")
@click.argument("mask", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Folder for pores.csv, summary.json, size_histogram.png and overlay.png.")
@click.option("--volume", "volume", type=click.Path(path_type=Path), default=None,
              help="The scan: grey overlay, voxel size and the watertight object (for porosity %% and "
                   "distance to surface).")
@click.option("--object", "object_path", type=click.Path(path_type=Path), default=None,
              help="A watertight object mask to use instead of the one found in --volume.")
@click.option("--spacing", nargs=3, type=float, default=None, metavar="Z Y X",
              help="Voxel size in mm, order z y x; default: from the scan's (else the mask's) metadata.")
@click.option("--overwrite", is_flag=True, help=_OVERWRITE_HELP)
@click.option("--scheduler", default=None, metavar="local|tcp://HOST:PORT",
              help=_SCHEDULER_HELP + " Finds the watertight object in --volume (Algorithm 1 steps 6-8) on Dask; "
                   "the per-pore table is computed in this process.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help=_WORKERS_HELP)
def report(mask: Path, out_dir: Path, volume: Path | None, object_path: Path | None, spacing, overwrite: bool,
           scheduler: str | None, workers: int | None):
    """Per-pore analysis of a pore mask: table, porosity %, size histogram and slice overlay.

    Pores are the 6-connected components of MASK (non-zero = pore). Writes into DIR:
    pores.csv (one row per pore: id, kind (gas, keyhole, lack_of_fusion, or surface when open to the part's
    skin), voxels, volume mm^3, equivalent sphere diameter, Wadell sphericity (<= 1, of the smoothed
    surface), bounding box z0 y0 x0 z1 y1 x1, centroid z y x in mm, principal-axis lengths, aspect ratio,
    elongation, flatness and tilts from z, touches_edge (cut by the field of view), distance to the part's
    surface when the object is known), summary.json (pore_count, pore_volume_voxels, porosity_percent
    relative to the watertight object, with and without the pores cut by the field's edge, count and
    porosity per kind, eq. diameter percentiles, largest pore, definitions), size_histogram.png and
    overlay.png. Arrays are (z, y, x); lengths are in mm, or in voxels when no spacing is known.

    \b
    Examples:
      porelab report cyl1_labels.npy --volume data/cyl1_scan.npy -o cyl1_report
      cyl1_report: 4 pores, porosity 3.910 % (watertight object from the scan (Algorithm 1 steps
      6-8)), median eq. diameter 1.177 mm
      porelab report mask.tif --spacing 0.01 0.01 0.01 -o report
    """
    from porelab.io import atomic_path, prepare_output, read_mask, read_volume
    from porelab.pores import check_binary_file, write_report

    target = prepare_output(out_dir, inputs=[mask, volume, object_path], overwrite=overwrite, is_dir=True)
    check_binary_file(mask, role="pore mask")        # an all-NaN or grey-value file is no mask
    if object_path is not None:
        check_binary_file(object_path, role="object mask")
    m, mask_spacing = read_mask(mask, with_spacing=True)
    vol = read_volume(volume, spacing=spacing) if volume is not None else None
    if vol is not None and vol.shape != m.shape:
        from porelab.errors import ScanError

        raise ScanError(f"{volume}: scan shape {vol.shape} differs from the mask's {m.shape} ({mask})")
    obj = read_mask(object_path, like=m) if object_path is not None else None
    if obj is None and vol is not None and scheduler is not None:
        from porelab.distributed import compute, connect, object_mask_dask

        with connect(scheduler, workers) as client, _one_line_warnings():
            obj, = compute(object_mask_dask(volume, client=client), client=client)
    if spacing is None:
        if vol is not None and vol.spacing_known:
            spacing = vol.spacing
        elif mask_spacing is not None:
            spacing = mask_spacing
        else:
            click.echo("porelab: warning: no voxel size known (pass --spacing Z Y X in mm); "
                       "lengths and volumes are in voxel units", err=True)
    with _one_line_warnings(), atomic_path(target, is_dir=True, overwrite=overwrite, marker="report") as tmp:
        s = write_report(m, tmp, volume=vol, spacing=spacing, object_mask=obj, progress=True)
        if scheduler is not None and object_path is None and vol is not None:
            # the object came from the scan, found on Dask: say so, as the in-process path does
            from porelab.io import write_json

            s["porosity_reference"] = "watertight object from the scan (Algorithm 1 steps 6-8)"
            write_json(tmp / "summary.json", s)
    unit = "mm" if s["units"] == "mm" else "voxels"
    p50 = s["eq_diameter_mm"]["p50"]
    click.echo(f"{out_dir}: {s['pore_count']} pores, porosity {s['porosity_percent']:.3f} % "
               f"({s['porosity_reference']})" + (f", median eq. diameter {p50:.4g} {unit}" if p50 else ""))
    kinds = ", ".join(f"{k} {v['count']}" for k, v in s["kinds"].items())
    click.echo(f"  kinds: {kinds}; {s['edge_pore_count']} cut by the field's edge (porosity without them "
               f"{s['porosity_percent_without_edge_pores']:.3f} %)")
