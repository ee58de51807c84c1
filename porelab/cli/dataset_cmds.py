"""``porelab dataset``: a dataset manifest over the user's own scans, where they are (labels optional)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

#: options that take several values after one flag
LIST_OPTIONS = ("--cv", "--test", "--labels")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def expand_lists(args: list[str], options=LIST_OPTIONS) -> list[str]:
    """``--cv a b --test c`` → ``--cv a --cv b --test c``: each of ``options`` takes every value up to the next
    option (a shell glob such as ``--cv scans/*.tif``), click taking one value per occurrence."""
    out, current = [], None
    for a in args:
        if a == "--" or (a.startswith("-") and len(a) > 1 and not _is_number(a)):
            current = a if a in options else None
            out.append(a)
        elif current is not None and out[-1] != current:
            out.extend([current, a])
        else:
            out.append(a)
    return out


class ListCommand(click.Command):
    """A command whose list options (:data:`LIST_OPTIONS`) take several values after one flag."""

    def parse_args(self, ctx, args):
        return super().parse_args(ctx, expand_lists(list(args)))


@click.command(name="dataset", cls=ListCommand)
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--cv", "cv", multiple=True, required=True, metavar="SCAN [SCAN ...]",
              help="Training / cross-validation scans (at least 2). Repeat the option or list several after it.")
@click.option("--test", "test", multiple=True, metavar="SCAN [SCAN ...]",
              help="Test scans: scored, never trained on.")
@click.option("--labels", "labels", multiple=True, metavar="SCAN=MASK [...]",
              help="A binary pore mask (hand labels) for one scan, the scan given by its path or its name "
                   "(file name without extension). Scans without labels are fine.")
@click.option("--spacing", type=float, nargs=3, default=None, metavar="Z Y X",
              help="Voxel size in mm (z, y, x) for every scan, replacing the files' own; needed when a file "
                   "records none (.npy without sidecar, TIFF without resolution tags).")
@click.option("--overwrite", is_flag=True, help="Replace OUT when it holds an earlier porelab output.")
def dataset(out: Path, cv, test, labels, spacing, overwrite: bool):
    """Describe your own CT scans as a dataset: write OUT/manifest.json, which `porelab train --data OUT`,
    `porelab cv`, `porelab search` and `mlflow run . -e search -P data=OUT` read.

    The scans stay where they are: the manifest records each one's absolute path, role (cv or test), shape,
    dtype, voxel spacing, optional labels and a fingerprint (size and a hash of its ends), so a scan changed
    afterwards is refused when the dataset is loaded. Any format porelab reads works (TIFF stack or folder of
    TIFF slices, NIfTI, MHD/MHA, NRRD, raw + .vgi/.json, .npy, zarr, DICOM). A scan's name is its file name
    without the extension (two scans with one name are an error). The part's object mask is derived from each
    scan when the dataset is loaded (Algorithm 1, steps 6-8); nothing is written beside your scans.

    \b
    Example (a folder of TIFF stacks, two of them hand-labelled):
      porelab dataset my-data --cv scans/part*.tif --test scans/hard.tif \\
          --labels part1=labels/part1_mask.tif --labels part2=labels/part2_mask.tif
      porelab dataset my-data --cv scans/*.npy --spacing 0.01 0.01 0.01 --overwrite
      mlflow run . -e search -P data=$PWD/my-data -P profile=quick
    """
    from porelab.dataset import load_manifest, make_dataset

    t0 = time.perf_counter()
    manifest = make_dataset(out, list(cv), list(test), list(labels), spacing=spacing, overwrite=overwrite)
    ds = load_manifest(manifest)
    rows = [("name", "role", "shape (z,y,x)", "dtype", "spacing mm (z,y,x)", "labels", "path")]
    raw = {s["name"]: s for s in json.loads(manifest.read_text())["samples"]}
    for s in ds.samples:
        rows.append((s.name, s.role, "×".join(str(v) for v in s.dims), str(s.dtype),
                     " ".join(f"{v:g}" for v in s.spacing) + (" (option)" if raw[s.name]["spacing_source"] ==
                                                              "option" else ""),
                     "yes" if s.labels is not None else "-", str(s.scan)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    click.echo(f"wrote {manifest} ({len(ds.cv)} cv, {len(ds.test)} test, "
               f"{sum(s.labels is not None for s in ds.samples)} labelled; {time.perf_counter() - t0:.1f} s)")
