"""What makes the simulator hard: each effect of the ``hard`` preset alone and all together, on a quick-size
316L cylinder and cube (seed 0), measured by the pores' contrast-to-noise ratio and a black top-hat's AP.

For every configuration the phantom and scan are simulated as the dataset writer does (quick preset sizes,
voxel sizes, photon counts, projections; the effect's setting from the ``hard`` preset), then:

* CNR per pore size class: ``(mean metal − mean pore) / std metal`` (positive: the pore is darker), the
  median over the pores of the class by equivalent radius (``small`` < 1.5 voxels ≤ ``mid`` < 3 ≤
  ``large``); "metal" is the object more than 2 voxels below its surface and more than 2 voxels from any
  pore, its std includes everything that varies (noise, cupping, rings, texture, drift, cone artefacts);
* top-hat AP: ``porelab.baselines.tophat_score`` of the normalised scan (``Normalisation.fit``) at the
  project's default radius (``porelab.config.TOPHAT_RADIUS``) and pre-filter, inside the skin-suppressed
  interior (``porelab.postprocess.interior_mask``, ``DEFAULT_SKIN``), voxel AP against the truth over the
  object (as ``porelab.crossval`` scores every row: truth the interior misses counts as missed).

Prints one JSON document: per configuration and part the CNRs, pore counts, AP and seconds.

    OMP_NUM_THREADS=1 python benchmarks/simulate_hard.py            # all configurations (≈ 10 min, 2 cores)
    python benchmarks/simulate_hard.py --only baseline all --parts cube
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

#: configuration name -> (phantom settings, scan settings) taken from the hard preset
CONFIGS = ("baseline", "cone", "starvation", "scatter", "cupping", "rings", "texture", "small", "cluster",
           "surface", "large", "all")


def settings(name: str, part: str) -> tuple[dict, dict]:
    """(make_phantom keywords, scan_phantom keywords) of configuration ``name`` for ``part``."""
    from porelab.simulate.dataset import get_preset

    q, h = get_preset("quick"), get_preset("hard")
    cube = part == "cube"
    scan = {"projections": q.cube_projections if cube else q.cyl_projections,
            "exposure": q.exposure["cube" if cube else "316L"],
            "hardening": q.cube_hardening if cube else q.cyl_hardening,
            "blur": q.cube_blur if cube else q.cyl_blur, "ring": q.cube_ring if cube else q.cyl_ring}
    phantom: dict = {}
    hard_scan = {"cone": h.cone, "readout": h.readout, "scatter": h.scatter,
                 "hardening": h.cube_hardening if cube else h.cyl_hardening,
                 "ring": h.cube_ring if cube else h.cyl_ring}
    if name == "all":
        scan.update(hard_scan)
        phantom = {"texture": h.texture, "drift": h.drift, "extra_pores": dict(h.extra_pores)}
    elif name == "cone":
        scan["cone"] = True
    elif name == "starvation":
        scan["readout"] = h.readout
    elif name == "scatter":
        scan["scatter"] = h.scatter
    elif name == "cupping":
        scan["hardening"] = hard_scan["hardening"]
    elif name == "rings":
        scan["ring"] = hard_scan["ring"]
    elif name == "texture":
        phantom = {"texture": h.texture, "drift": h.drift}
    elif name in ("small", "cluster", "surface", "large"):
        phantom = {"extra_pores": {name: h.extra_pores[name]}}
    elif name != "baseline":
        raise SystemExit(f"unknown configuration {name!r}; choose from {', '.join(CONFIGS)}")
    return phantom, scan


def pore_cnr(rec: np.ndarray, labels: np.ndarray, obj: np.ndarray) -> dict:
    """Median CNR per size class (``small`` r_eq < 1.5, ``mid`` < 3, ``large``) and pore counts."""
    from scipy import ndimage

    pores = labels > 0
    solid = ndimage.binary_erosion(obj > 0, iterations=2) & ~ndimage.binary_dilation(pores, iterations=2)
    metal = rec[solid]
    mean, std = float(metal.mean()), float(metal.std())
    ids = np.arange(1, int(labels.max()) + 1)
    sizes = ndimage.sum_labels(np.ones_like(labels, np.float32), labels, ids)
    means = ndimage.mean(rec, labels, ids)
    out = {"metal_mean": round(mean, 4), "metal_std": round(std, 4)}
    req = (3 * sizes / (4 * np.pi)) ** (1 / 3)
    for cls, sel in (("small", req < 1.5), ("mid", (req >= 1.5) & (req < 3)), ("large", req >= 3)):
        sel &= sizes > 0
        cnr = (mean - means[sel]) / std
        out[f"cnr_{cls}"] = round(float(np.median(cnr)), 2) if sel.any() else None
        out[f"n_{cls}"] = int(sel.sum())
    return out


def tophat_ap(rec: np.ndarray, truth: np.ndarray, obj: np.ndarray) -> float:
    """Voxel AP of the default black top-hat (skin suppressed) against the truth over the object."""
    from porelab.baselines import tophat_score
    from porelab.metrics import average_precision
    from porelab.normalise import Normalisation
    from porelab.postprocess import DEFAULT_SKIN, interior_mask

    keep = interior_mask(rec, DEFAULT_SKIN)
    keep = obj > 0 if keep is None else keep
    score = tophat_score(Normalisation.fit(rec).apply(rec), keep)
    return round(float(average_precision(score, truth > 0, mask=obj > 0)), 4)


def run(name: str, part: str, seed: int = 0) -> dict:
    from porelab.simulate.ct import scan_phantom
    from porelab.simulate.dataset import get_preset
    from porelab.simulate.phantom import make_phantom

    q = get_preset("quick")
    shape = q.cube_shape if part == "cube" else q.cyl_shape
    vox = q.cube_voxel_mm if part == "cube" else q.cyl_voxel_mm
    ph_kw, scan_kw = settings(name, part)
    t0 = time.perf_counter()
    ph = make_phantom(shape, part=part, material="316L", porosity=q.porosity, seed=seed, **ph_kw)
    t1 = time.perf_counter()
    rec = scan_phantom(ph.mu, voxel_mm=vox, seed=seed, **scan_kw)
    t2 = time.perf_counter()
    row = {"config": name, "part": part, **pore_cnr(rec, ph.labels, ph.object), "pores": len(ph.pores),
           "porosity_percent": round(ph.porosity_percent, 3), "tophat_ap": tophat_ap(rec, ph.truth, ph.object),
           "phantom_s": round(t1 - t0, 1), "scan_s": round(t2 - t1, 1), "measure_s": round(time.perf_counter() - t2, 1)}
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    ap.add_argument("--parts", nargs="+", default=["cylinder", "cube"], choices=["cylinder", "cube"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows = [run(c, p, args.seed) for c in args.only for p in args.parts]
    print(json.dumps({"seed": args.seed, "rows": rows, "seconds": round(time.perf_counter() - t0, 1)}, indent=1))


if __name__ == "__main__":
    main()
