"""Speed and memory of the eq. (2)-(3) surface compensation on a synthetic scan, and λ versus subsample size.

    python benchmarks/postprocess.py --shape 384 512 512 --json

The parent process writes a synthetic anomaly score A and reconstruction V̂ (a cylinder with a sharp skin,
V̂ = the blurred part, small pores) to .npy files; a child process loads them into RAM, runs
``surface_compensation`` and reports its wall time and peak RSS (``ru_maxrss``), so that the synthetic
generation does not pollute the figures. The child then recomputes λ at σ* from subsamples of 2·10⁵, 2·10⁶
and 2·10⁷ voxels (and all voxels when the volume has ≤ 3·10⁷) to show what the default subsample costs.
Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_inputs(shape, folder: Path, seed: int = 0) -> None:
    from scipy.ndimage import gaussian_filter

    from porelab.postprocess import anomaly_map

    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    y, x = np.ogrid[:ny, :nx]
    disk = ((y - (ny - 1) / 2) ** 2 + (x - (nx - 1) / 2) ** 2) < (0.4 * min(ny, nx)) ** 2
    part = np.zeros(shape, np.float32)
    part[4:nz - 4] = disk * np.float32(0.8)
    v_hat = gaussian_filter(part, 1.5, output=np.float32)
    scan = part
    for _ in range(max(10, int(np.prod(shape) // 200_000))):      # small dark pores inside the part
        c = rng.integers([8, ny // 4, nx // 4], [nz - 8, 3 * ny // 4, 3 * nx // 4])
        r = rng.uniform(1.0, 3.0)
        zz, yy, xx = np.ogrid[-4:5, -4:5, -4:5]
        ball = (zz**2 + yy**2 + xx**2) <= r * r
        sl = tuple(slice(int(ci) - 4, int(ci) + 5) for ci in c)
        scan[sl][ball] -= 0.3
    for z0 in range(0, nz, 16):                                    # noise, slab by slab
        scan[z0:z0 + 16] += rng.standard_normal(scan[z0:z0 + 16].shape, dtype=np.float32) * np.float32(0.02)
    A = anomaly_map(scan, v_hat, out=scan)                         # in place: scan becomes A
    np.save(folder / "A.npy", A)
    np.save(folder / "V.npy", v_hat)


def child(folder: Path) -> dict:
    from scipy.ndimage import gaussian_filter

    from porelab.postprocess import _sample_indices, derivative_sum, fit_lambda, surface_compensation

    A = np.load(folder / "A.npy")
    V = np.load(folder / "V.npy")
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0, c0 = time.perf_counter(), time.process_time()
    out, lam, sigma, info = surface_compensation(A, V, return_info=True)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res = {"shape": list(A.shape), "voxels": int(A.size), "seconds": round(seconds, 2),
           "cpu_seconds": round(cpu, 2), "sigmas_tried": len(info["objective"]), "seconds_per_sigma": round(seconds / (len(info["objective"]) + 1), 2),
           "peak_rss_mb": round(peak, 1), "inputs_rss_mb": round(rss0, 1),
           "inputs_mb": round((A.nbytes + V.nbytes) / 2**20, 1), "lambda": lam, "sigma": sigma,
           "n_sample": info["n_sample"]}
    del out
    # λ at σ* from different subsample sizes
    G = gaussian_filter(derivative_sum(V), sigma, output=np.float32, mode="nearest")
    lams = {}
    sizes = [200_000, 2_000_000, 20_000_000] + ([A.size] if A.size <= 30_000_000 else [])
    for n in sizes:
        if n > A.size:
            continue
        idx = _sample_indices(A.shape, None, n, seed=1)
        lams[str(n) if n < A.size else "all"] = fit_lambda(A.reshape(-1)[idx], G.reshape(-1)[idx])[0]
    ref = lams[list(lams)[-1]]                  # sizes ascend: "all" or the largest subsample
    res["lambda_by_subsample"] = lams
    res["lambda_rel_diff_vs_largest"] = {k: abs(v - ref) / ref for k, v in lams.items()}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[384, 512, 512], metavar=("Z", "Y", "X"))
    ap.add_argument("--json", action="store_true", help="print JSON only")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return
    with tempfile.TemporaryDirectory(prefix="porelab_pp_bench_") as tmp:
        t0 = time.perf_counter()
        make_inputs(tuple(args.shape), Path(tmp))
        gen = time.perf_counter() - t0
        proc = subprocess.run([sys.executable, __file__, "--child", tmp], capture_output=True, text=True,
                              check=False)
        if proc.returncode:
            sys.exit(proc.stderr)
        res = json.loads(proc.stdout)
        res["generate_seconds"] = round(gen, 1)
        res["threads"] = os.environ.get("OMP_NUM_THREADS", "default")
    print(json.dumps(res, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
