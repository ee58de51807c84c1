"""How well the label-free validation signal ranks models as the labels would: over every scored fold of a
search (and over its trials), the Spearman rank correlation between the objective the pipeline decided with
(AP of injected pores, ``val_ap_pp_inj`` for the VAE family, ``val_ap_inj`` for the UNet family) and the AP
against the dataset's labels on the same held-out scans (``val_ap_pp`` / ``val_ap``), and the Dice against
the labels of masks thresholded the label-free way (``val_dice_pp`` / ``val_dice``: at the fold's threshold,
chosen on the injected pores).

Reads the MLflow store of a finished search (the fold runs nested under its parent run).

Prints JSON::

    {"run_id", "families": {"unsupervised": {"folds", "spearman_folds", "p_folds", "trials",
     "spearman_trials", "dice_label_free_mean", "dice_label_free_min", ...}, "supervised": {...}}}

Usage: ``python benchmarks/labelfree.py --tracking-uri sqlite:///mlflow.db [--run-id ID]`` (default: the
latest run named ``*-seed*`` of experiment ``porelab``).
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict

#: family → (label-free objective, the same against the labels, Dice at the label-free threshold)
KEYS = {"unsupervised": ("val_ap_pp_inj", "val_ap_pp", "val_dice_pp"),
        "supervised": ("val_ap_inj", "val_ap", "val_dice")}


def _spearman(a, b) -> tuple[float | None, float | None]:
    from scipy.stats import spearmanr

    if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
        return None, None
    r = spearmanr(a, b)
    return float(r.statistic), float(r.pvalue)


def fold_table(client, parent_id: str) -> list[dict]:
    """Every scored fold under the search run: family, trial run, fold and its metrics."""
    exp = client.get_run(parent_id).info.experiment_id
    runs = client.search_runs([exp], max_results=50_000)
    children = defaultdict(list)
    for r in runs:
        children[r.data.tags.get("mlflow.parentRunId")].append(r)
    rows = []
    for study in children[parent_id]:
        if study.data.tags.get("porelab.level") != "study" or not study.info.run_name.startswith("study-"):
            continue
        family = study.info.run_name.removeprefix("study-")
        if family not in KEYS:
            continue
        for trial in children[study.info.run_id]:
            for fold in children[trial.info.run_id]:
                m = fold.data.metrics
                rows.append({"family": family, "trial": trial.info.run_name, "net": trial.data.tags.get("porelab.net"),
                             "fold": fold.data.tags.get("porelab.fold"), **{k: m.get(k) for k in KEYS[family]}})
    return rows


def summarise(rows: list[dict]) -> dict:
    out = {}
    for family, (free, lab, dice) in KEYS.items():
        fr = [r for r in rows if r["family"] == family and r[free] is not None and r[lab] is not None
              and math.isfinite(r[free]) and math.isfinite(r[lab])]
        rho, p = _spearman([r[free] for r in fr], [r[lab] for r in fr])
        by_trial = defaultdict(list)
        for r in fr:
            by_trial[r["trial"]].append(r)
        tf = [sum(r[free] for r in v) / len(v) for v in by_trial.values()]
        tl = [sum(r[lab] for r in v) / len(v) for v in by_trial.values()]
        rho_t, p_t = _spearman(tf, tl)
        dices = [r[dice] for r in fr if r.get(dice) is not None and math.isfinite(r[dice])]
        best_free = max(by_trial, key=lambda t: sum(r[free] for r in by_trial[t]) / len(by_trial[t])) if fr else None
        best_lab = max(by_trial, key=lambda t: sum(r[lab] for r in by_trial[t]) / len(by_trial[t])) if fr else None
        out[family] = {
            "objective": free, "labels_metric": lab, "folds": len(fr), "spearman_folds": rho, "p_folds": p,
            "trials": len(by_trial), "spearman_trials": rho_t, "p_trials": p_t,
            "dice_label_free_mean": sum(dices) / len(dices) if dices else None,
            "dice_label_free_min": min(dices) if dices else None,
            "best_trial_label_free": best_free, "best_trial_by_labels": best_lab,
            "labels_ap_of_label_free_choice": (sum(r[lab] for r in by_trial[best_free]) / len(by_trial[best_free])
                                               if best_free else None),
            "labels_ap_of_labels_choice": (sum(r[lab] for r in by_trial[best_lab]) / len(by_trial[best_lab])
                                           if best_lab else None),
        }
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    ap.add_argument("--run-id", default=None, help="the search's parent run (default: the latest search run)")
    ap.add_argument("--experiment", default="porelab")
    args = ap.parse_args(argv)
    import mlflow

    mlflow.set_tracking_uri(args.tracking_uri)
    client = mlflow.MlflowClient()
    run_id = args.run_id
    if run_id is None:
        exp = client.get_experiment_by_name(args.experiment)
        runs = client.search_runs([exp.experiment_id], "tags.`porelab.level` = 'search'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        if not runs:
            raise SystemExit(f"no search run in experiment {args.experiment!r}")
        run_id = runs[0].info.run_id
    rows = fold_table(client, run_id)
    result = {"run_id": run_id, "tracking_uri": args.tracking_uri, "families": summarise(rows)}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
