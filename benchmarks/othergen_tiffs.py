"""Turn a simulated dataset into what a user brings: a folder of TIFF stacks, and labels kept apart.

Every scan of a simulated dataset (``porelab simulate OUT --preset othergen``, or any other preset) is
written as one multi-page TIFF ``<name>.tif`` (uint16; the voxel size in mm in its ImageJ tags, z, y, x) into
``--tiffs``, and its truth as ``<name>.tif`` (uint8, 0/1) into ``--labels``, a folder the pipeline is not
given: the labels exist only to score the pipeline's results afterwards. Scans whose grey values are already
integers in 0-65535 (the ``othergen`` preset's) are written unchanged; others (attenuation in 1/mm) are
mapped linearly, one map for the whole dataset, from their joint minimum and maximum onto 0-65535, so the
scans keep their relative grey levels as one scanner's exports would.

Prints one JSON document (files written, the grey-value map, the command) and then, on its own line, the
``porelab dataset`` command that describes the TIFFs as a labelless dataset (cv and test roles as in the
simulated manifest, ``--spacing`` when all scans share one voxel size).

    python benchmarks/othergen_tiffs.py og --tiffs og-tiffs --labels og-labels --dataset og-user

Both output folders are written into temporary folders and renamed when complete; an existing one must be
empty, or an earlier output of this script given ``--overwrite``. Bad input: one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

UINT16_MAX = 65535


def grey_map(scans) -> tuple[float, float]:
    """``(scale, offset)`` with ``uint16 = round(scale · value + offset)`` for all ``scans`` together:
    ``(1, 0)`` when every value is already an integer in 0-65535, else the joint [min, max] onto 0-65535."""
    lo, hi, integral = np.inf, -np.inf, True
    for a in scans:
        a = np.asarray(a)
        lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
        integral = integral and bool(np.all(a == np.rint(a)))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError("the scans hold non-finite values")
    if integral and lo >= 0 and hi <= UINT16_MAX:
        return 1.0, 0.0
    scale = UINT16_MAX / (hi - lo) if hi > lo else 1.0
    return scale, -lo * scale


def export(dataset, tiffs, labels, out_dataset=None, overwrite: bool = False) -> dict:
    """Write the TIFF stacks and the hidden labels; return the summary (with the ``porelab dataset``
    command). Raises ``porelab.errors.PorelabError`` for bad input."""
    from porelab.dataset import load_manifest
    from porelab.errors import ConfigError
    from porelab.io import atomic_path, prepare_output, write_volume

    ds = load_manifest(dataset)
    if not ds.labelled:
        raise ConfigError(f"{dataset}: not every scan has labels; export a simulated dataset")
    tiffs, labels = Path(tiffs).resolve(), Path(labels).resolve()
    if tiffs == labels or tiffs in labels.parents or labels in tiffs.parents:
        raise ConfigError(f"--tiffs {tiffs} and --labels {labels} must be two separate folders")
    inputs = [s.scan for s in ds.samples] + [s.labels for s in ds.samples]
    for out in (tiffs, labels):
        prepare_output(out, inputs=inputs, overwrite=overwrite, is_dir=True)
    scale, offset = grey_map(s.load(mmap=True, derive_object=False)[0] for s in ds.samples)
    written = {"tiffs": [], "labels": []}
    with atomic_path(tiffs, is_dir=True, overwrite=overwrite, marker="othergen_tiffs") as tmp_t, \
            atomic_path(labels, is_dir=True, overwrite=overwrite, marker="othergen_tiffs") as tmp_l:
        for s in ds.samples:
            scan, lab, _ = s.load(mmap=True, derive_object=False)
            grey = np.clip(np.rint(np.asarray(scan, np.float64) * scale + offset), 0, UINT16_MAX)
            write_volume(tmp_t / f"{s.name}.tif", grey.astype(np.uint16), spacing=s.spacing)
            write_volume(tmp_l / f"{s.name}.tif", (np.asarray(lab) > 0).astype(np.uint8), spacing=s.spacing)
            written["tiffs"].append(str(tiffs / f"{s.name}.tif"))
            written["labels"].append(str(labels / f"{s.name}.tif"))
    out_dataset = Path(out_dataset) if out_dataset is not None else tiffs.parent / "user-dataset"
    words = ["porelab", "dataset", str(out_dataset), "--cv", *(str(tiffs / f"{s.name}.tif") for s in ds.cv)]
    if ds.test:
        words += ["--test", *(str(tiffs / f"{s.name}.tif") for s in ds.test)]
    spacings = {s.spacing for s in ds.samples}
    if len(spacings) == 1:  # one voxel size for all: say it (the TIFF tags carry it too)
        words += ["--spacing", *(f"{v:g}" for v in spacings.pop())]
    return {"dataset": str(Path(dataset).resolve()), **written, "scale": scale, "offset": offset,
            "dtype": "uint16", "command": " ".join(shlex.quote(w) for w in words)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", help="a simulated dataset folder (holding manifest.json)")
    ap.add_argument("--tiffs", required=True, help="output folder of the scans as <name>.tif (uint16)")
    ap.add_argument("--labels", required=True, help="output folder of the labels, kept from the pipeline")
    ap.add_argument("--dataset", dest="out_dataset", default=None,
                    help="the folder the printed `porelab dataset` command writes [default: TIFFS/../user-dataset]")
    ap.add_argument("--overwrite", action="store_true", help="replace earlier outputs of this script")
    args = ap.parse_args(argv)
    from porelab.errors import PorelabError

    try:
        summary = export(args.dataset, args.tiffs, args.labels, args.out_dataset, args.overwrite)
    except (PorelabError, OSError, ValueError) as exc:
        print(f"othergen_tiffs: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
              file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    print(summary["command"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
