"""Are synthetic injected pores (``porelab.injection``) about as hard to find as a scan's native pores? Prints JSON.

    OMP_NUM_THREADS=1 python benchmarks/injection.py DATA [--seed 0] [--scans cyl1 cube] [--exclude alg1|truth]
                                                        [--contrast 1.0]

DATA is a dataset with truth masks written by ``porelab simulate`` (e.g. ``--preset quick``). Per scan, as the
cross-validation does it (``porelab.crossval.injection_for``): the part is Algorithm 1's watertight object
(Iuso et al. 2024, steps 6-8), ``exclude`` is Algorithm 1's candidate pores grown by 2 voxels, the margin
is the nets' skin + 1 = 3 voxels. The truth is only read here to compare.

Output per scan:

* ``acquisition``: :func:`porelab.injection.estimate_acquisition` (metal, air, noise, blur);
  ``simulator``: the scan's settings from the manifest (detector blur in detector pixels, photons, …);
  ``edge_fit_sigma``: an independent blur measurement with the exact object mask: the σ for which
  ``air + h · G_σ * object`` fits the scan best (least squares over σ on a 0.05 grid, within 4 voxels of the
  object's surface, away from pores), to compare with ``√(blur² + 1/12)`` (the estimate plus the voxel box
  that a binary object's staircase stands in for);
* ``injected``: :func:`porelab.injection.injected_metrics` of the score ``−(scan − air) / (metal − air)``
  (the normalised scan, dark = pore) on the injected scan, in the whole part and in the part minus its
  3-voxel skin (``interior``); ``native``: AP and ROC-AUC of the same score against the truth pores on the
  original scan in the same regions, all voxels counted (``all``) and with a one-voxel shell around each
  truth pore ignored as for the injected ones (``shell_ignored``); ``positive_fraction`` beside each AP,
  which bounds it from below;
* ``contrast``: per-pore contrast (local metal level − mean of the pore's voxels) / noise, median over the
  pores with an equivalent radius below and above 1.5 voxels, injected vs native;
* ``injected_on_native``: injected positive voxels that fall on truth pores (0 expected).

``--exclude truth`` keeps the injected pores clear of the truth pores instead of Algorithm 1's (a measurement
only, for scans where Algorithm 1 marks most of the part); ``--contrast`` is ``inject_pores``' fraction of
the metal-air step. ``speed``: seconds (best of 3) to estimate the acquisition of, and inject 60 pores into,
a 128³ scan of a cylinder (radius 55 voxels, blur 1, noise 0.05) on the threads allowed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage


def _load(data: Path, sample: dict, key: str):
    return np.load(data / sample[key], mmap_mode="r")


def edge_fit_sigma(scan: np.ndarray, obj: np.ndarray, truth: np.ndarray) -> float:
    """σ of the Gaussian that best turns the exact object mask into the scan near its surface."""
    dist_in = ndimage.distance_transform_cdt(obj, metric="chessboard")
    dist_out = ndimage.distance_transform_cdt(~obj, metric="chessboard")
    band = np.where(obj, dist_in, dist_out) <= 4
    band &= ~ndimage.binary_dilation(truth, iterations=4)
    y = scan[band].astype(np.float64)
    best = (math.inf, math.nan)
    for s in np.arange(0.3, 3.0001, 0.05):
        m = ndimage.gaussian_filter(obj.astype(np.float32), s)[band].astype(np.float64)
        a = np.stack([np.ones_like(m), m], axis=1)
        coef, *_ = np.linalg.lstsq(a, y, rcond=None)
        sse = float(np.sum((y - a @ coef) ** 2))
        best = min(best, (sse, float(s)))
    return round(best[1], 2)


def one_scan(data: Path, sample: dict, seed: int, exclude_from: str = "alg1", contrast: float = 1.0) -> dict:
    from porelab.injection import estimate_acquisition, inject_pores, injected_metrics
    from porelab.labels import run_algorithm1
    from porelab.metrics import average_precision, roc_auc

    scan = np.asarray(_load(data, sample, "path"), dtype=np.float32)
    truth = np.asarray(_load(data, sample, "labels")).astype(bool)
    exact_obj = np.asarray(_load(data, sample, "object")).astype(bool)
    alg1 = run_algorithm1(scan, min_extent=2)
    part = alg1.object
    exclude = ndimage.binary_dilation(alg1.pores if exclude_from == "alg1" else truth, iterations=2)
    t0 = time.perf_counter()
    acq = estimate_acquisition(scan, part)
    t1 = time.perf_counter()
    inj = inject_pores(scan, part, seed=seed, exclude=exclude, acquisition=acq, margin=3, contrast=contrast)
    t2 = time.perf_counter()
    interior = ndimage.distance_transform_cdt(part, metric="chessboard") > 3
    regions = {"part": part, "interior": interior}

    def norm(x):
        return -(x - acq.air) / (acq.metal - acq.air)

    shell = ndimage.binary_dilation(truth, structure=np.ones((3, 3, 3), bool)) & ~truth
    out = {"name": sample["name"], "exclude": exclude_from, "contrast": contrast,
           "exclude_fraction_of_part": round(float(exclude[part].mean()), 4), "material": sample.get("material"), "simulator": sample.get("quality"),
           "acquisition": {k: round(v, 5) for k, v in acq.to_dict().items()},
           "blur_with_voxel_box": round(math.sqrt(acq.blur ** 2 + 1 / 12), 3),
           "edge_fit_sigma": edge_fit_sigma(scan, exact_obj, truth),
           "seconds": {"estimate": round(t1 - t0, 2), "inject": round(t2 - t1, 2)},
           "injected_pores": len(inj.pores), "requested": inj.requested,
           "injected_on_native": int(np.count_nonzero(inj.mask & truth)),
           "injected": {}, "native": {}}
    s_inj, s_raw = norm(inj.scan), norm(scan)
    for name, reg in regions.items():
        m = injected_metrics(s_inj, inj, reg)
        out["injected"][name] = {"ap": round(m["ap"], 4), "auc": round(m["auc"], 4),
                                 "positive_fraction": round(m["positives"] / (m["positives"] + m["negatives"]), 5)}
        nat = {}
        for label, mask in (("all", reg), ("shell_ignored", reg & ~shell)):
            nat[label] = {"ap": round(average_precision(s_raw, truth, mask=mask), 4),
                          "auc": round(roc_auc(s_raw, truth, mask=mask), 4),
                          "positive_fraction": round(float(truth[mask].mean()), 5)}
        out["native"][name] = nat
    # per-pore contrast in noise units, each pore against its own local metal level
    inj_pores = []
    for p in inj.pores:
        box = tuple(slice(a, b) for a, b in zip(*p["box"]))
        inj_pores.append((inj.mask[box], p["metal"], box))
    lab, _ = ndimage.label(truth, structure=np.ones((3, 3, 3), bool))
    nat_pores = []
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        big = tuple(slice(max(0, s.start - 3), s.stop + 3) for s in sl)
        metal_vox = part[big] & ~ndimage.binary_dilation(lab[big] > 0, iterations=2)
        nat_pores.append((lab[big] == i, float(np.median(scan[big][metal_vox])), big))
    out["contrast"] = {
        "injected": pore_contrasts(inj.scan, inj_pores, acq.noise),
        "native": pore_contrasts(scan, nat_pores, acq.noise)}
    return out


def pore_contrasts(scan, pores, noise: float) -> dict:
    """Median (metal − mean of the pore) / noise over pores below / at least 1.5 voxels of equivalent radius;
    ``pores``: (mask in its box, local metal level, box)."""
    small, large = [], []
    for m, metal, box in pores:
        n = int(m.sum())
        if n == 0:
            continue
        c = (metal - float(scan[box][m].mean())) / noise
        (small if (3 * n / (4 * math.pi)) ** (1 / 3) < 1.5 else large).append(c)
    return {"small_median": round(float(np.median(small)), 2) if small else None, "small_n": len(small),
            "large_median": round(float(np.median(large)), 2) if large else None, "large_n": len(large)}


def speed() -> dict:
    from porelab.injection import estimate_acquisition, inject_pores

    n = 128
    y, x = np.ogrid[:n, :n]
    part = np.repeat(((y - 63.7) ** 2 + (x - 63.2) ** 2 <= 55.0 ** 2)[None], n, axis=0)
    scan = ndimage.gaussian_filter(part.astype(np.float32), 1.0)
    scan += np.random.default_rng(0).normal(0, 0.05, scan.shape).astype(np.float32)
    est, inj = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        acq = estimate_acquisition(scan, part)
        t1 = time.perf_counter()
        placed = len(inject_pores(scan, part, seed=0, acquisition=acq, n_pores=60).pores)
        inj.append(time.perf_counter() - t1)
        est.append(t1 - t0)
    return {"shape": [n, n, n], "pores": placed, "estimate_seconds": round(min(est), 3),
            "inject_seconds": round(min(inj), 3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="dataset folder with manifest.json and truth masks")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scans", nargs="*", help="scan names (default: all)")
    ap.add_argument("--exclude", choices=("alg1", "truth"), default="alg1",
                    help="keep injected pores clear of Algorithm 1's pores (as the pipeline does) or of the "
                         "truth pores (a measurement only: where Algorithm 1 marks most of the part)")
    ap.add_argument("--contrast", type=float, default=1.0,
                    help="fraction of the metal-air step the injected pores show (porelab.injection)")
    args = ap.parse_args(argv)
    manifest = json.loads((args.data / "manifest.json").read_text())
    samples = [s for s in manifest["samples"] if not args.scans or s["name"] in args.scans]
    results = [one_scan(args.data, s, args.seed, args.exclude, args.contrast) for s in samples if s.get("labels")]
    json.dump({"data": str(args.data), "seed": args.seed, "exclude": args.exclude, "contrast": args.contrast,
               "speed": speed(), "scans": results}, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
