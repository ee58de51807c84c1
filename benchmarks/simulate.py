"""Realism and speed of the simulated dataset; prints JSON.

    OMP_NUM_THREADS=1 python benchmarks/simulate.py --preset quick [--out DIR] [--seed 0]

Per scan: generation seconds (phantom + CT), metal/air means, ``metal_std`` (all variation in the eroded
metal: noise, density field, cupping, rings), ``noise_std`` (the noise alone: the std of the difference of
two scans of the same phantom with different noise seeds, / √2), ``cnr`` = (metal − air) / metal_std,
``cnr_noise`` = (metal − air) / noise_std, the pore contrast of pores with an equivalent radius ≥ 1.5
voxels ((metal − mean of the pore's voxels) / noise_std, median over pores), porosity % and pore count,
and the fraction of such pores that Algorithm 1 (Iuso et al. 2024) finds (a labelled component overlaps).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def algorithm1(scan: np.ndarray) -> np.ndarray:
    """Algorithm 1 of Iuso et al. 2024 (porelab.labels when present, else the same steps inline)."""
    try:
        from porelab.labels import heuristic_labels

        return heuristic_labels(scan, min_extent=2)
    except ImportError:
        pass
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    low = scan < threshold_otsu(scan)
    bg = ndi.label(low)[0]
    obj = bg != bg[0, 0, 0]
    obj = ndi.binary_fill_holes(obj) | obj
    t2 = threshold_otsu(scan[obj])
    cand = obj & (scan < t2) & (bg != bg[0, 0, 0])
    lab, n = ndi.label(cand)
    keep = np.zeros(n + 1, bool)
    for i, sl in enumerate(ndi.find_objects(lab), 1):
        keep[i] = sl is not None and min(s.stop - s.start for s in sl) >= 2
    return keep[lab]


def measure(out: Path, preset: str, seed: int) -> dict:
    from scipy import ndimage as ndi

    from porelab.simulate.ct import scan_phantom
    from porelab.simulate.dataset import get_preset, sample_plan
    from porelab.simulate.phantom import make_phantom

    pr = get_preset(preset)
    seeds = np.random.SeedSequence(seed).spawn(2 * 6)
    rows = []
    t_all = time.perf_counter()
    for i, plan in enumerate(sample_plan(pr)):
        q = plan["quality"]
        t0 = time.perf_counter()
        ph = make_phantom(plan["dims"], part=plan["shape"], material=plan["material"], porosity=pr.porosity,
                          seed=np.random.default_rng(seeds[2 * i]))
        t_ph = time.perf_counter() - t0
        kw = {"voxel_mm": plan["voxel_mm"], "projections": q["projections"], "exposure": q["exposure"],
                  "hardening": q["hardening"], "blur": q["blur"], "ring": q["ring"]}
        rec = scan_phantom(ph.mu, seed=1, **kw)
        t_gen = time.perf_counter() - t0
        rec2 = scan_phantom(ph.mu, seed=2, **kw)
        obj = ph.object.astype(bool)
        metal = ndi.binary_erosion(obj & (ph.truth == 0), iterations=3)
        ny = rec.shape[1]
        yy, xx = np.ogrid[:ny, :ny]
        r = np.hypot(yy - (ny - 1) / 2, xx - (ny - 1) / 2)
        far = ~ndi.binary_dilation(obj, iterations=4)
        air = far & (r < ny / 2 - 3)[None]
        m, a = float(rec[metal].mean()), float(rec[air].mean())
        mstd = float(rec[metal].std())
        nstd = float((rec - rec2)[metal].std() / np.sqrt(2))
        contrasts, big, found = [], 0, 0
        lab = ph.labels
        heur = algorithm1(rec)
        hl, _ = ndi.label(heur)
        for p in ph.pores:
            if (3 * p["voxels"] / (4 * np.pi)) ** (1 / 3) < 1.5:
                continue
            big += 1
            sel = lab == p["id"]
            contrasts.append((m - float(rec[sel].mean())) / nstd)
            found += bool(hl[sel].any())
        rows.append({
            "name": plan["name"], "material": plan["material"], "shape": plan["shape"], **q,
            "seconds": round(t_gen, 2), "phantom_seconds": round(t_ph, 2),
            "metal_mean": round(m, 4), "air_mean": round(a, 5), "metal_std": round(mstd, 4),
            "noise_std": round(nstd, 4), "cnr": round((m - a) / mstd, 1), "cnr_noise": round((m - a) / nstd, 1),
            "pore_contrast_median": round(float(np.median(contrasts)), 2) if contrasts else None,
            "pores_r_ge_1p5": big, "algorithm1_found": round(found / big, 3) if big else None,
            "porosity_percent": round(ph.porosity_percent, 3), "pores": len(ph.pores),
            "algorithm1_porosity_percent": round(100 * float(heur.sum()) / float(obj.sum()), 3),
        })
        print(json.dumps(rows[-1]), file=sys.stderr)
    from porelab.simulate.dataset import simulate_dataset

    t0 = time.perf_counter()
    simulate_dataset(out, preset=preset, seed=seed, progress=False)
    return {"preset": preset, "dataset_seconds": round(time.perf_counter() - t0, 1),
            "measure_seconds": round(time.perf_counter() - t_all, 1), "scans": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        res = measure(Path(args.out or tmp), args.preset, args.seed)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
