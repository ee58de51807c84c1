"""Test-time flips: does averaging a production model's score over mirrored copies of the scan raise its AP?

For each registered production model (``porelab-unsupervised``, ``porelab-supervised``, loaded by name) and
each dataset folder given, every scan is scored as it is and as the mean of ``flip⁻¹(score(flip(scan)))``
over the flips of the axes in ``--axes`` (all 2^k combinations, the identity included). Voxel AP and ROC-AUC
of the pore class inside the part (the dataset's labels, reporting only) per scan, the mean over the
cylinders and the cube, plus the seconds each variant took. The decision whether flips pay is made on the
training dataset (the first ``--data``); the others are unseen.

    python benchmarks/tta.py --tracking-uri sqlite:///mlflow.db --data TRAIN UNSEEN --axes 0 1 2 --out tta.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np


def flipped_mean(predict, raw: np.ndarray, axes) -> np.ndarray:
    """Mean of ``flip⁻¹(predict(flip(raw)))`` over every subset of ``axes`` (the identity included)."""
    total = None
    subsets = [c for k in range(len(axes) + 1) for c in itertools.combinations(axes, k)]
    for sub in subsets:
        x = np.ascontiguousarray(np.flip(raw, axis=sub)) if sub else raw
        s = np.asarray(predict(x), dtype=np.float64)
        s = np.flip(s, axis=sub) if sub else s
        total = s if total is None else total + s
    return (total / len(subsets)).astype(np.float32)


def score_dataset(model, folder, axes) -> dict:
    from porelab.crossval import labelled, load_scans
    from porelab.metrics import evaluate_scores

    cv, hard, _, refs = load_scans(folder)
    scans = labelled(cv + ([hard] if hard is not None else []), refs)
    out = {"plain": {}, "flips": {}}
    secs = {"plain": 0.0, "flips": 0.0}
    for s in scans:
        for variant in ("plain", "flips"):
            t0 = time.perf_counter()
            score = model.predict(s.raw) if variant == "plain" else flipped_mean(model.predict, s.raw, axes)
            secs[variant] += time.perf_counter() - t0
            m = evaluate_scores(score, s.truth, mask=s.region)
            out[variant][s.name] = {"role": s.role, "ap": m["ap"], "auc": m["auc"]}
    summary = {}
    for variant, per in out.items():
        cyl = [v["ap"] for v in per.values() if v["role"] == "cv"]
        cube = [v["ap"] for v in per.values() if v["role"] != "cv"]
        summary[variant] = {"scans": per, "cv_mean_ap": float(np.mean(cyl)),
                            "hard_ap": float(cube[0]) if cube else None, "seconds": secs[variant]}
    return summary


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", required=True, help="dataset folders: the training one first")
    ap.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI or ./mlflow.db")
    ap.add_argument("--axes", nargs="+", type=int, default=[0, 1, 2], help="axes to flip (z=0, y=1, x=2)")
    ap.add_argument("--models", nargs="+", default=["porelab-unsupervised", "porelab-supervised"])
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    import os

    from porelab import tracking

    if args.tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    tracking.setup_mlflow(experiment=None)
    result = {"axes": args.axes, "models": {}}
    for name in args.models:
        model = tracking.resolve_model(name)
        result["models"][name] = {str(Path(d).resolve()): score_dataset(model, d, tuple(args.axes))
                                  for d in args.data}
        for d, r in result["models"][name].items():
            print(f"{name} {Path(d).name}: cylinders {r['plain']['cv_mean_ap']:.3f} → {r['flips']['cv_mean_ap']:.3f}"
                  f", cube {r['plain']['hard_ap']:.3f} → {r['flips']['hard_ap']:.3f} "
                  f"({r['plain']['seconds']:.0f} s → {r['flips']['seconds']:.0f} s)", file=sys.stderr)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        tmp = Path(args.out).with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(args.out)
    return result


if __name__ == "__main__":
    main()
