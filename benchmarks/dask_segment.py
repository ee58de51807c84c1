"""Dask against one process: segmentation (``segment_dask`` vs ``PoreModel.predict``) and Algorithm 1
(``label_dask`` vs ``run_algorithm1``) on synthetic scans, on a ``LocalCluster`` of worker processes.

The scan is ``benchmarks/label.py``'s noisy cylinder with spherical pores, written to a temporary ``.npy`` that
the workers read lazily (memory-mapped). The model is an untrained UNet (``--scale``, ``--patch``): the speed of
the grid, the net and the post-processing does not depend on the weights. The single-process run uses all
cores (torch's threads); each worker runs one thread, so the ratio compares the same cores.

Prints JSON::

    {"segment": {"shape", "single_s", "dask_s", "throughput_ratio", "voxels_per_s_per_worker",
                 "max_abs_diff", "masks_equal", "peak_rss_mb_per_worker", "single_peak_rss_mb", ...},
     "label": {"shape", "voxels", "single_s", "dask_s", "masks_equal", "peak_rss_mb_per_worker", ...}}

Usage: ``python benchmarks/dask_segment.py [--size 512] [--label-size 512] [--workers 2] [--chunk 256]``

``--skip-single`` leaves out the one-process runs (and with them the equality checks, reported as null): for
sizes whose one-process run would not fit in memory or time, to measure the cluster alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _peak_mb() -> float:
    """This process's peak RSS (``VmHWM``, MiB). Not ``ru_maxrss``: Linux carries that over ``exec`` from the
    forking process, so a spawned worker would report its parent's peak."""
    from _proc import status_mb

    return status_mb("VmHWM")


def _peaks(client) -> list[float]:
    """Peak RSS (MiB) of every worker process since it started."""
    return sorted(round(v, 1) for v in client.run(_peak_mb).values())


def _single(kind: str, scan_path: str, model_dir: str, out: str) -> dict:
    """One-process run in a child (its own peak RSS): ``segment`` (PoreModel.predict) or ``label``."""
    code = f"""
import json, time, numpy as np
from _proc import status_mb
t = time.perf_counter()
scan = np.load({scan_path!r}, mmap_mode="r")
if {kind!r} == "segment":
    from porelab.model import PoreModel
    res = PoreModel.load({model_dir!r}).predict(scan)
else:
    from porelab.labels import run_algorithm1
    res = run_algorithm1(np.asarray(scan)).pores
np.save({out!r}, res)
print(json.dumps({{"seconds": time.perf_counter() - t,
                   "peak_rss_mb": status_mb("VmHWM")}}))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       cwd=Path(__file__).resolve().parent)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--label-size", type=int, default=512)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=256, help="chunk edge of the segmentation")
    ap.add_argument("--label-chunk", type=int, default=256, help="chunk edge of Algorithm 1")
    ap.add_argument("--only", choices=["segment", "label"], default=None)
    ap.add_argument("--patch", type=int, default=32)
    ap.add_argument("--scale", type=float, default=0.125)
    ap.add_argument("--memory-limit", default="4GiB")
    ap.add_argument("--skip-single", action="store_true", help="no one-process run, no equality check")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    result = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("PORELAB_BENCH_DIR")) as tmp:
        tmp = Path(tmp)
        if args.only != "label":
            result["segment"] = _segment(args, tmp)
        if args.only != "segment":
            result["label"] = _label(args, tmp)
    print(json.dumps(result))


def _segment(args, tmp: Path) -> dict:
    import torch
    from distributed import Client, LocalCluster
    from label import synthetic_scan

    from porelab.distributed import read_zarr_dask
    from porelab.inference.dask import segment_dask
    from porelab.model import PoreModel
    from porelab.nets import build
    from porelab.normalise import Normalisation

    scan, _, _ = synthetic_scan(args.size, seed=0)
    np.save(tmp / "scan.npy", scan)
    torch.manual_seed(0)
    net = build("unet", scale=args.scale)
    model = PoreModel.from_trained(net, "unet", Normalisation.fit(scan), "smoke", net_kwargs={"scale": args.scale},
                                   patch=args.patch, threshold=0.5)
    model.save(tmp / "model")
    del scan
    single = None if args.skip_single else _single("segment", str(tmp / "scan.npy"), str(tmp / "model"),
                                                   str(tmp / "ref.npy"))
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      memory_limit=args.memory_limit) as lc, Client(lc) as client:
        t = time.perf_counter()
        res = segment_dask(tmp / "scan.npy", tmp / "model", client=client, chunks=args.chunk, out=tmp / "seg")
        dask_s = time.perf_counter() - t
        peaks = _peaks(client)
    diff = equal = None
    if single is not None:
        ref = np.load(tmp / "ref.npy", mmap_mode="r")
        score = read_zarr_dask(tmp / "seg" / "score.zarr")
        diff, equal = 0.0, True
        for z0 in range(0, args.size, 64):
            a, b = np.asarray(ref[z0:z0 + 64]), score[z0:z0 + 64].compute(scheduler="sync")
            diff = max(diff, float(np.nanmax(np.abs(a - b))))
            equal &= bool(np.array_equal(a >= model.threshold, b >= model.threshold))
    vox = args.size ** 3
    return {
        "shape": [args.size] * 3, "patch": args.patch, "chunk": args.chunk, "workers": args.workers,
        "chunks": res["info"]["chunks"], "depth": res["info"]["depth"], **_single_fields(single, dask_s),
        "dask_s": round(dask_s, 1), "voxels_per_s_per_worker": round(vox / dask_s / args.workers),
        "max_abs_diff": diff, "masks_equal": equal, "peak_rss_mb_per_worker": peaks}


def _single_fields(single: dict | None, dask_s: float) -> dict:
    if single is None:
        return {"single_s": None, "single_peak_rss_mb": None, "throughput_ratio": None}
    return {"single_s": round(single["seconds"], 1), "single_peak_rss_mb": round(single["peak_rss_mb"], 1),
            "throughput_ratio": round(single["seconds"] / dask_s, 3)}


def _label(args, tmp: Path) -> dict:
    from distributed import Client, LocalCluster
    from label import synthetic_scan

    from porelab.distributed import label_dask, read_zarr_dask

    n = args.label_size
    scan, _, _ = synthetic_scan(n, seed=1)
    np.save(tmp / "lscan.npy", scan)
    del scan
    single = None if args.skip_single else _single("label", str(tmp / "lscan.npy"), "", str(tmp / "lref.npy"))
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      memory_limit=args.memory_limit) as lc, Client(lc) as client:
        t = time.perf_counter()
        lab = label_dask(tmp / "lscan.npy", client=client, chunks=args.label_chunk, out=tmp / "pores.zarr")
        dask_s = time.perf_counter() - t
        peaks = _peaks(client)
    equal = None
    if single is not None:
        ref = np.load(tmp / "lref.npy", mmap_mode="r")
        got = read_zarr_dask(tmp / "pores.zarr", bool)
        equal = all(np.array_equal(np.asarray(ref[z0:z0 + 64]), got[z0:z0 + 64].compute(scheduler="sync"))
                    for z0 in range(0, n, 64))
    return {
        "shape": [n] * 3, "voxels": n ** 3, "chunk": args.label_chunk, "workers": args.workers,
        **_single_fields(single, dask_s), "dask_s": round(dask_s, 1),
        "voxels_per_s_per_worker": round(n ** 3 / dask_s / args.workers), "masks_equal": equal,
        "pores": lab.pores_kept, "peak_rss_mb_per_worker": peaks,
        "memory_limit_per_worker": args.memory_limit}


if __name__ == "__main__":
    main()
