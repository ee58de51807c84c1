"""Speed and memory of Algorithm 1 (``porelab.labels.heuristic_labels``) on a synthetic N³ scan.

The scan: a cylinder along z (radius 0.4·N/2, soft one-voxel edge, grey value 1) in air (0), with
non-overlapping spherical pores (grey 0, radius 2-5 voxels) filling about 1 % of the part, plus
Gaussian noise (σ = 0.1). It is written to a temporary ``.npy``; a child process loads it into RAM
(as a user's scan would be) and runs the labelling, so the child's peak RSS measures the labelling step
plus the scan itself.

Prints JSON::

    {"shape", "seconds", "peak_rss_mb", "scan_rss_mb", "bytes_per_voxel", "bytes_per_voxel_with_scan",
     "pores_found", "pores_placed", "pores_matched", "threads"}

``bytes_per_voxel`` = (peak RSS during labelling − RSS with the scan loaded) / voxels: the working memory.
``pores_matched`` = placed pores whose centre voxel is in the mask.

Usage: ``python benchmarks/label.py [--size 512] [--seed 0] --json``
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
from _proc import status_mb


def synthetic_scan(n: int, seed: int = 0, porosity: float = 0.01):
    """(scan float32 (n, n, n), centres (k, 3), radii (k,)) — a noisy cylinder with spherical pores."""
    rng = np.random.default_rng(seed)
    c = (n - 1) / 2
    r_part = 0.4 * n / 2 if n >= 64 else 0.35 * n
    yy, xx = np.mgrid[:n, :n]
    rr = np.hypot(yy - c, xx - c)
    disc = np.clip(r_part - rr + 0.5, 0, 1).astype(np.float32)  # soft (partial-volume) edge
    scan = rng.standard_normal((n, n, n), dtype=np.float32)
    scan *= 0.1
    scan += disc  # broadcast over z
    part_voxels = np.pi * r_part**2 * n
    target = porosity * part_voxels
    centres, radii, placed = [], [], 0.0
    margin = 3
    tries = 0
    while placed < target and tries < 200000:
        tries += 1
        r = rng.uniform(2.0, 5.0)
        z = rng.uniform(r + margin, n - 1 - r - margin)
        ang, rad = rng.uniform(0, 2 * np.pi), np.sqrt(rng.uniform(0, 1)) * (r_part - r - margin)
        y, x = c + rad * np.sin(ang), c + rad * np.cos(ang)
        p = np.array([z, y, x])
        if centres:
            d = np.linalg.norm(np.asarray(centres) - p, axis=1)
            if (d < np.asarray(radii) + r + 2).any():
                continue
        centres.append(p)
        radii.append(r)
        lo = np.floor(p - r).astype(int)
        hi = np.ceil(p + r).astype(int) + 1
        g = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        ball = (g[0] - z) ** 2 + (g[1] - y) ** 2 + (g[2] - x) ** 2 <= r * r
        box = scan[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        box[ball] -= 1.0  # material -> void (the noise stays)
        placed += ball.sum()
    return scan, np.asarray(centres), np.asarray(radii)


def _child(npy: str, centres_path: str) -> None:
    import resource

    import scipy.sparse.csgraph  # noqa: F401 - libraries are loaded before the baseline is taken
    import skimage.filters  # noqa: F401

    from porelab.labels import run_algorithm1

    scan = np.load(npy)  # in RAM, like a user's scan
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cur = int(status_mb("VmRSS") * 1024)
    t0 = time.perf_counter()
    res = run_algorithm1(scan)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    centres = np.load(centres_path)
    idx = np.round(centres).astype(int)
    matched = int(res.pores[idx[:, 0], idx[:, 1], idx[:, 2]].sum()) if len(idx) else 0
    print(json.dumps({"seconds": seconds, "peak_kb": peak, "base_peak_kb": base, "scan_kb": cur,
                      "pores_found": res.pores_kept, "pores_matched": matched,
                      "thresholds": [res.low_threshold, res.pore_threshold]}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=512, help="edge N of the N³ scan (default 512)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print only the JSON result")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(*args.child)
        return 0
    t0 = time.perf_counter()
    scan, centres, _ = synthetic_scan(args.size, args.seed)
    build = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        npy, cen = Path(tmp) / "scan.npy", Path(tmp) / "centres.npy"
        np.save(npy, scan)
        np.save(cen, centres)
        del scan
        out = subprocess.run([sys.executable, __file__, "--child", str(npy), str(cen)], capture_output=True,
                             text=True, check=False)
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        return out.returncode
    child = json.loads(out.stdout.strip().splitlines()[-1])
    voxels = args.size**3
    peak = max(child["peak_kb"], child["base_peak_kb"])
    work_kb = child["peak_kb"] - child["scan_kb"]
    result = {
        "shape": [args.size] * 3,
        "seconds": round(child["seconds"], 2),
        "peak_rss_mb": round(peak / 1024, 1),
        "scan_rss_mb": round(child["scan_kb"] / 1024, 1),
        "bytes_per_voxel": round(work_kb * 1024 / voxels, 2),
        "bytes_per_voxel_with_scan": round(peak * 1024 / voxels, 2),
        "pores_found": child["pores_found"],
        "pores_placed": len(centres),
        "pores_matched": child["pores_matched"],
        "thresholds": [round(t, 4) for t in child["thresholds"]],
        "threads": os.environ.get("OMP_NUM_THREADS", "unset"),
        "build_seconds": round(build, 1),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
