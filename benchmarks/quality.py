"""Quality of the registered production models on scans the pipeline never saw.

Simulates a fresh dataset with another seed (default 12345; the pipeline's default data uses seed 0),
loads ``models:/porelab-unsupervised@production`` and ``models:/porelab-supervised@production`` BY NAME
through ``mlflow.pyfunc.load_model`` and prints JSON: voxel-wise AP and ROC-AUC of the pore class inside
the part (the dataset's object mask), per scan and model, plus the mean over the held-out cylinders and
the two classical baselines (Algorithm 1 labels as a score, black top-hat).

Targets (``quick`` profile): AP ≥ 0.8 on the cylinders, ≥ 0.65 on the hard cube.

    cd /tmp/quickrun                       # the folder holding mlflow.db
    python <checkout>/benchmarks/quality.py --preset quick --seed 12345
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="quick", help="simulation preset (smoke | quick | paper)")
    ap.add_argument("--seed", type=int, default=12345, help="simulation seed (not the pipeline's)")
    ap.add_argument("--data", default=None, help="reuse this dataset folder instead of simulating")
    ap.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI or ./mlflow.db")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)

    import mlflow.pyfunc
    import numpy as np

    from porelab import tracking
    from porelab.baselines import baseline_rows
    from porelab.config import get_profile
    from porelab.crossval import Context, Scan, load_scans
    from porelab.metrics import evaluate_scores
    from porelab.simulate.dataset import simulate_dataset

    if args.tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    tracking.setup_mlflow(experiment=None)
    data = Path(args.data) if args.data else Path(f"porelab-quality-{args.preset}-seed{args.seed}")
    t0 = time.perf_counter()
    if not (data / "manifest.json").is_file():
        simulate_dataset(data, preset=args.preset, seed=args.seed, progress=False)
    cv, hard, _ = load_scans(data)
    scans: list[Scan] = cv + ([hard] if hard is not None else [])
    result = {"dataset": str(data.resolve()), "preset": args.preset, "seed": args.seed,
              "tracking_uri": tracking.tracking_uri(), "simulate_seconds": time.perf_counter() - t0,
              "models": {}}
    for name in ("porelab-unsupervised", "porelab-supervised"):
        uri = f"models:/{name}@production"
        version = tracking.resolve_version(uri)
        model = mlflow.pyfunc.load_model(uri)
        meta = model.metadata.metadata or {}
        per_scan = {}
        t1 = time.perf_counter()
        for s in scans:
            score = model.predict(s.raw)
            m = evaluate_scores(score, s.truth, mask=s.object, threshold=meta.get("threshold"))
            per_scan[s.name] = {"role": s.role, "ap": m["ap"], "auc": m["auc"], "dice": m["dice"]}
        cyl = [v["ap"] for v in per_scan.values() if v["role"] == "cv"]
        result["models"][name] = {
            "version": str(version.version), "net": meta.get("net"), "threshold": meta.get("threshold"),
            "scans": per_scan, "cv_mean_ap": float(np.mean(cyl)),
            "cv_mean_auc": float(np.mean([v["auc"] for v in per_scan.values() if v["role"] == "cv"])),
            "hard_ap": per_scan[hard.name]["ap"] if hard is not None else None,
            "hard_auc": per_scan[hard.name]["auc"] if hard is not None else None,
            "predict_seconds": time.perf_counter() - t1,
        }
    # classical rows on the same scans (every cylinder "held out")
    ctx = Context(profile=get_profile(args.preset), seed=args.seed, cv=cv, hard=hard, folds=list(range(len(cv))),
                  workdir=data)
    result["baselines"] = {
        k: {"cv_mean_ap": float(np.mean([r["val_ap"] for r in rows])), "hard_ap": rows[0].get("hard_ap")}
        for k, rows in baseline_rows(ctx).items()}
    result["targets"] = {"cv_ap": 0.8, "hard_ap": 0.65}
    text = json.dumps(result, indent=2, default=float)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
