"""Quality of the registered production models and of every classical row on scans the pipeline never saw.

Per preset: simulates a fresh dataset with another seed (default 12345; the pipeline's default data uses
seed 0), loads ``models:/porelab-unsupervised@production`` and ``models:/porelab-supervised@production`` BY
NAME through ``mlflow.pyfunc.load_model``, fits every registered classical row (``porelab.baselines``) on the
cv scans of the training dataset (seed ``--train-seed``, default 0: the pipeline's own data, so the rows see
what the nets saw; their choices are label-free), and prints JSON: voxel-wise AP and ROC-AUC of the pore
class inside the part (the dataset's object mask), per scan and row, the mean over the unseen cylinders, the
hard cube, and a markdown table of all rows (``table``).

``--truth-optimal`` also fits every classical row with its choices made against the truth of the training
scans (the random forest: trained on the truth), to report what the label-free choices cost; ``--no-models``
skips the registered models (no tracking store needed).

Targets (``quick`` profile): AP ≥ 0.8 on the cylinders, ≥ 0.65 on the hard cube. ``margins`` compares the
better production model with the best label-free classical row, on the cylinders (mean AP) and on the cube:
on ``hard`` scans the nets should lead by ≥ 0.10 AP, on the easy presets at least match (``MARGINS``).

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

TARGETS = {"cv_ap": 0.8, "hard_ap": 0.65}
#: the lead over the best classical row the production models should have, per preset (default: 0)
MARGINS = {"hard": 0.10}


def _manifest_seed(data: Path, default: int):
    """The simulation seed a dataset's manifest records (a reused ``--data`` folder), else ``default``."""
    import json

    try:
        return json.loads((Path(data) / "manifest.json").read_text()).get("seed", default)
    except (OSError, ValueError):
        return default


def _dataset(folder, preset: str, seed: int) -> Path:
    from porelab.simulate.dataset import simulate_dataset

    data = Path(folder) if folder else Path(f"porelab-quality-{preset}-seed{seed}")
    if not (data / "manifest.json").is_file():
        simulate_dataset(data, preset=preset, seed=seed, progress=False)
    return data


def _summary(per_scan: dict) -> dict:
    import numpy as np

    cyl = [v for v in per_scan.values() if v["role"] == "cv"]
    hard = [v for v in per_scan.values() if v["role"] != "cv"]
    return {"scans": per_scan,
            "cv_mean_ap": float(np.mean([v["ap"] for v in cyl])),
            "cv_min_ap": float(np.min([v["ap"] for v in cyl])), "cv_max_ap": float(np.max([v["ap"] for v in cyl])),
            "cv_mean_auc": float(np.mean([v["auc"] for v in cyl])),
            "hard_ap": hard[0]["ap"] if hard else None, "hard_auc": hard[0]["auc"] if hard else None}


def _score_all(predict, scans, threshold=None) -> dict:
    from porelab.metrics import evaluate_scores

    out = {}
    for s in scans:
        m = evaluate_scores(predict(s), s.truth, mask=s.region, threshold=threshold)
        out[s.name] = {"role": s.role, "ap": m["ap"], "auc": m["auc"], "dice": m["dice"]}
    return out


def registered_models(scans) -> dict:
    """Both production models by name, scored on ``scans``."""
    import mlflow.pyfunc

    from porelab import tracking

    out = {}
    for name in ("porelab-unsupervised", "porelab-supervised"):
        uri = f"models:/{name}@production"
        version = tracking.resolve_version(uri)
        model = mlflow.pyfunc.load_model(uri)
        meta = model.metadata.metadata or {}
        t1 = time.perf_counter()
        per_scan = _score_all(lambda s, m=model: m.predict(s.raw), scans, threshold=meta.get("threshold"))
        out[name] = {"version": str(version.version), "net": meta.get("net"), "threshold": meta.get("threshold"),
                     **_summary(per_scan), "predict_seconds": time.perf_counter() - t1}
    return out


def classical_rows(train, scans, profile, *, seed: int = 0, criterion: str = "alg1") -> dict:
    """Every registered classical row fitted on ``train`` (choices by ``criterion``), scored on ``scans``."""
    from porelab.baselines import NAMES, chosen, get_baseline

    out = {}
    for name in NAMES:
        t1 = time.perf_counter()
        pred = get_baseline(name)(train, profile, seed=seed, criterion=criterion)
        t2 = time.perf_counter()
        out[name] = {"params": chosen(pred.params), "criterion": criterion, **_summary(_score_all(pred, scans)),
                     "fit_seconds": t2 - t1, "predict_seconds": time.perf_counter() - t2}
    return out


def margins(result: dict, preset: str) -> dict:
    """Per scan group (``cylinders``: mean AP over the cv scans; ``cube``: the test scan): the better production
    model, the best label-free classical row, the lead (model − row) and whether it reaches ``MARGINS``."""
    need = MARGINS.get(preset, 0.0)
    out = {"required_lead": need}
    for group, key in (("cylinders", "cv_mean_ap"), ("cube", "hard_ap")):
        models = {n: r[key] for n, r in result.get("models", {}).items() if r.get(key) is not None}
        rows = {n: r[key] for n, r in result.get("classical", {}).items() if r.get(key) is not None}
        if not models or not rows:
            continue
        m, c = max(models, key=models.get), max(rows, key=rows.get)
        lead = models[m] - rows[c]
        out[group] = {"model": m, "model_ap": models[m], "classical": c, "classical_ap": rows[c],
                      "lead": lead, "met": bool(lead >= need - 1e-12)}
    return out


def margins_text(m: dict) -> str:
    """One line per scan group: who leads and by how much."""
    lines = []
    for group in ("cylinders", "cube"):
        if group in m:
            g = m[group]
            lines.append(f"{group}: {g['model']} {g['model_ap']:.3f} vs {g['classical']} {g['classical_ap']:.3f}: "
                         f"lead {g['lead']:+.3f} (required ≥ {m['required_lead']:+.2f}: "
                         f"{'met' if g['met'] else 'not met'})")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    """One line per row: cylinders AP mean (range), AUC; cube AP, AUC; the row's choices."""
    lines = ["| row | choices by | chosen | cylinders AP, mean (range) | cylinders AUC | cube AP | cube AUC |",
             "|---|---|---|---|---|---|---|"]

    def line(label, by, params, r):
        hard = ("n/a", "n/a") if r["hard_ap"] is None else (f"{r['hard_ap']:.3f}", f"{r['hard_auc']:.3f}")
        lines.append(f"| {label} | {by} | {params} | {r['cv_mean_ap']:.3f} ({r['cv_min_ap']:.3f}-"
                     f"{r['cv_max_ap']:.3f}) | {r['cv_mean_auc']:.3f} | {hard[0]} | {hard[1]} |")

    for name, r in result.get("models", {}).items():
        line(f"`{name}` ({r['net']})", "pipeline", f"threshold {r['threshold']}", r)
    for key, by in (("classical", "label-free"), ("classical_truth_optimal", "truth (training scans)")):
        for name, r in result.get(key, {}).items():
            params = ", ".join(f"{k} {v}" for k, v in r["params"].items() if k not in ("skin", "seed", "sigmas"))
            line(name, by, params, r)
    return "\n".join(lines)


def run_preset(preset: str, args) -> dict:
    from porelab.config import get_profile
    from porelab.crossval import labelled, load_scans

    t0 = time.perf_counter()
    data = _dataset(args.data if args.data else None, preset, args.seed)
    train_data = _dataset(args.train_data if args.train_data else None, preset, args.train_seed)
    cv, hard, _, refs = load_scans(data)
    scans = labelled(cv + ([hard] if hard is not None else []), refs)
    train, _, _, train_refs = load_scans(train_data, hard=False)
    train = labelled(train, train_refs)     # labels read only by --truth-optimal's rows
    profile = get_profile(preset) if preset in ("smoke", "quick", "paper") else get_profile("quick")
    result = {"dataset": str(data.resolve()), "train_dataset": str(train_data.resolve()), "preset": preset,
              "seed": _manifest_seed(data, args.seed), "train_seed": _manifest_seed(train_data, args.train_seed),
              "data_seconds": time.perf_counter() - t0}
    if args.models:
        from porelab import tracking

        result["tracking_uri"] = tracking.tracking_uri()
        result["models"] = registered_models(scans)
    result["classical"] = classical_rows(train, scans, profile, seed=args.train_seed)
    if args.truth_optimal:
        result["classical_truth_optimal"] = classical_rows(train, scans, profile, seed=args.train_seed,
                                                           criterion="truth")
    result["targets"] = dict(TARGETS)
    result["table"] = markdown(result)
    if args.models:
        result["margins"] = margins(result, preset)
    return result


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", nargs="+", default=["quick"], help="simulation presets (smoke | quick | hard | paper; scored with the quick profile unless smoke or paper)")
    ap.add_argument("--seed", type=int, default=12345, help="simulation seed of the unseen scans")
    ap.add_argument("--train-seed", type=int, default=0, help="simulation seed of the classical rows' training scans")
    ap.add_argument("--data", default=None, help="reuse this dataset folder for the unseen scans (one preset)")
    ap.add_argument("--train-data", default=None, help="reuse this dataset folder for the training scans")
    ap.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI or ./mlflow.db")
    ap.add_argument("--no-models", dest="models", action="store_false", help="classical rows only")
    ap.add_argument("--truth-optimal", action="store_true", help="also the rows with truth-made choices")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    if (args.data or args.train_data) and len(args.preset) > 1:
        ap.error("--data/--train-data name one dataset: give one --preset")
    if args.models:
        from porelab import tracking

        if args.tracking_uri:
            os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
        tracking.setup_mlflow(experiment=None)
    results = {p: run_preset(p, args) for p in args.preset}
    for p, r in results.items():
        print(f"## {p}\n\n{r['table']}\n", file=sys.stderr)
        if "margins" in r:
            print(margins_text(r["margins"]) + "\n", file=sys.stderr)
    text = json.dumps(results, indent=2, default=float)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
