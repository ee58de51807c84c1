"""Streaming (histogram-binned) voxel metrics on 10⁸-10⁹ voxels from memory-mapped files.

    python benchmarks/metrics.py --shape 1000 1000 1000 --json

The parent writes a float32 score and a uint8 truth (1 % pores, score = N(0, 1) + 2·truth) as .npy files
slab by slab; a child process memory-maps them and runs ``evaluate_scores(method="binned")`` (two
streaming passes for the curve, one for the Dice at the F1-optimal threshold). Reported: wall time,
voxels/s, ``peak_rss_mb`` (``ru_maxrss``: includes the clean file pages of the memmaps that the kernel may
drop at any time) and ``peak_anon_mb`` (the process's own memory, ``RssAnon`` sampled every 20 ms: what
the computation really needs). ``--exact-check N`` also compares with scikit-learn on the first N voxels.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from _proc import status_mb


def make_inputs(shape, folder: Path, seed: int = 0) -> None:
    from numpy.lib.format import open_memmap

    rng = np.random.default_rng(seed)
    s = open_memmap(folder / "score.npy", mode="w+", dtype=np.float32, shape=tuple(shape))
    t = open_memmap(folder / "truth.npy", mode="w+", dtype=np.uint8, shape=tuple(shape))
    step = max(1, (1 << 23) // (shape[1] * shape[2]))
    for z0 in range(0, shape[0], step):
        sl = slice(z0, min(z0 + step, shape[0]))
        tt = rng.random(t[sl].shape, dtype=np.float32) < 0.01
        t[sl] = tt
        s[sl] = rng.standard_normal(tt.shape, dtype=np.float32) + np.float32(2.0) * tt
    s.flush()
    t.flush()
    del s, t




def child(folder: Path, exact_check: int) -> dict:
    from porelab.metrics import average_precision, evaluate_scores

    s = np.load(folder / "score.npy", mmap_mode="r")
    t = np.load(folder / "truth.npy", mmap_mode="r")
    peak = [status_mb("RssAnon")]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], status_mb("RssAnon"))
            time.sleep(0.02)

    th = threading.Thread(target=sample, daemon=True)
    base = status_mb("RssAnon")
    th.start()
    t0, c0 = time.perf_counter(), time.process_time()
    res = evaluate_scores(s, t, method="binned")
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    stop.set()
    th.join()
    out = {"shape": list(s.shape), "voxels": int(s.size), "seconds": round(seconds, 2),
           "cpu_seconds": round(cpu, 2), "voxels_per_s": round(s.size / seconds), "peak_rss_mb": round(
               resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           "peak_anon_mb": round(peak[0], 1), "anon_before_mb": round(base, 1),
           "ap": res["ap"], "auc": res["auc"], "best_dice": res["best_dice"], "method": res["method"]}
    if exact_check:
        n = min(exact_check, s.size)
        plane = s.shape[1] * s.shape[2]
        nz = max(1, n // plane)
        sub_s, sub_t = np.asarray(s[:nz]), np.asarray(t[:nz])
        ex = average_precision(sub_s, sub_t, method="exact")
        bi = average_precision(sub_s, sub_t, method="binned")
        out["exact_check"] = {"voxels": int(sub_s.size), "ap_exact": ex, "ap_binned": bi, "abs_diff": abs(ex - bi)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[1000, 1000, 1000], metavar=("Z", "Y", "X"))
    ap.add_argument("--exact-check", type=int, default=10_000_000, help="voxels for the sklearn comparison")
    ap.add_argument("--json", action="store_true", help="print JSON on one line")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.exact_check)))
        return
    with tempfile.TemporaryDirectory(prefix="porelab_metrics_bench_", dir=Path.cwd()) as tmp:
        t0 = time.perf_counter()
        make_inputs(args.shape, Path(tmp))
        gen = time.perf_counter() - t0
        proc = subprocess.run([sys.executable, __file__, "--child", tmp, "--exact-check", str(args.exact_check)],
                              capture_output=True, text=True, check=False)
        if proc.returncode:
            sys.exit(proc.stderr)
        res = json.loads(proc.stdout)
        res["generate_seconds"] = round(gen, 1)
    print(json.dumps(res, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
