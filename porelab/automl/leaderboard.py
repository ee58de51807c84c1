"""What the parent run of a search shows: the leaderboard (best trial of each architecture), the main metrics
(the registered models' validation and test AP, before and after post-processing, and the cost), the
experiment's kind tag and the run's name.

The test scan is the dataset's ``hard`` scan (never trained on); validation is the held-out cv scan of each
fold. Means and 95 % confidence half-widths are over the folds (``porelab.crossval.mean_metrics``).
"""

from __future__ import annotations

import math

from porelab.automl.study import best_per_net
from porelab.crossval import mean_metrics

#: MLflow 3's experiment-type tag: ``custom_model_development`` makes the UI open an experiment on its runs
#: (model training) instead of GenAI traces (checked in mlflow 3.17.2's UI bundle and onboarding skill)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

#: leaderboard columns taken from a trial's fold metrics: (column prefix, fold-metric key)
#: (``…_inj``: label-free, injected pores in the held-out scans; the others against the dataset's labels)
COLUMNS = (("val_ap_inj", "val_ap_inj"), ("val_ap_pp_inj", "val_ap_pp_inj"),
           ("val_ap", "val_ap"), ("val_auc", "val_auc"), ("test_ap", "hard_ap"), ("test_auc", "hard_auc"),
           ("val_ap_pp", "val_ap_pp"), ("val_auc_pp", "val_auc_pp"), ("test_ap_pp", "hard_ap_pp"),
           ("test_auc_pp", "hard_auc_pp"))


def run_name(profile: str, study_name: str, seed: int) -> str:
    """The parent run's name: profile, study and seed (``quick-porelab-seed0``)."""
    return f"{profile}-{study_name}-seed{seed}"


def mark_experiment(experiment_id: str) -> None:
    """Tag the experiment as model training so MLflow 3's UI opens on its runs."""
    import mlflow

    mlflow.MlflowClient().set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)


def _finite(v) -> float | None:
    return float(v) if v is not None and isinstance(v, (int, float)) and math.isfinite(v) else None


def leaderboard_rows(studies: dict[str, object]) -> list[dict]:
    """One row per (family, architecture): its best complete trial, with mean and 95 % CI half-width of AP
    and ROC-AUC on the validation and test scans, raw and post-processed (``None`` where a family has no
    such score: supervised nets have one score), the trial's value and wall seconds."""
    rows = []
    for family, study in studies.items():
        if study is None:
            continue
        for net, t in sorted(best_per_net(study).items()):
            summary = mean_metrics(t.user_attrs.get("fold_metrics") or [])
            row = {"family": family, "net": net, "trial": t.number, "value": _finite(t.value),
                   "seconds": _finite(t.user_attrs.get("seconds")), "folds": len(t.user_attrs.get("fold_metrics") or [])}
            for col, key in COLUMNS:
                row[col] = _finite(summary.get(key))
                row[f"{col}_ci95"] = _finite(summary.get(f"{key}_ci95"))
            rows.append(row)
    return rows


def leaderboard_markdown(rows: list[dict]) -> str:
    """The leaderboard as a Markdown table, ``mean ± ci`` per cell."""
    def cell(r, col):
        m, h = r.get(col), r.get(f"{col}_ci95")
        return "–" if m is None else (f"{m:.3f}" if h is None else f"{m:.3f} ± {h:.3f}")

    cols = [c for c, _ in COLUMNS]
    lines = ["| family | net | trial | " + " | ".join(cols) + " | seconds |",
             "|---|---|---|" + "---|" * len(cols) + "---|"]
    for r in rows:
        secs = "–" if r["seconds"] is None else f"{r['seconds']:.0f}"
        lines.append(f"| {r['family']} | {r['net']} | {r['trial']} | " + " | ".join(cell(r, c) for c in cols)
                     + f" | {secs} |")
    return "\n".join(lines) + "\n"


def leaderboard_metrics(rows: list[dict]) -> dict[str, float]:
    """``lb_<family>_<net>_<column>`` for the means and CIs of every row (MLflow metric names)."""
    out = {}
    for r in rows:
        for col, _ in COLUMNS:
            for key in (col, f"{col}_ci95"):
                if r.get(key) is not None:
                    out[f"lb_{r['family']}_{r['net']}_{key}"] = r[key]
    return out


def log_leaderboard(studies: dict[str, object]) -> list[dict]:
    """Log the leaderboard on the active run: ``leaderboard.json`` (an MLflow table), ``leaderboard.csv``,
    ``leaderboard.md`` and its metrics. Returns the rows."""
    import mlflow

    from porelab import tracking
    from porelab.reporting.tables import csv_text

    rows = leaderboard_rows(studies)
    if not rows:
        return rows
    keys = list(rows[0])
    mlflow.log_table({k: [r.get(k) for r in rows] for k in keys}, artifact_file="leaderboard.json")
    mlflow.log_text(csv_text(rows), "leaderboard.csv")
    mlflow.log_text(leaderboard_markdown(rows), "leaderboard.md")
    tracking.log_metrics(leaderboard_metrics(rows))
    return rows


def main_metrics(study, family: str) -> dict[str, float]:
    """The registered (best) trial's headline numbers for the runs table: ``<family>_val_ap_inj`` (the
    label-free objective), ``_val_ap``, ``_test_ap``, ``_val_ap_pp``, ``_test_ap_pp`` (where the family and
    the dataset's labels have them)."""
    summary = mean_metrics(study.best_trial.user_attrs.get("fold_metrics") or [])
    out = {}
    for col, key in (("val_ap_inj", "val_ap_inj"), ("val_ap_pp_inj", "val_ap_pp_inj"), ("val_ap", "val_ap"),
                     ("test_ap", "hard_ap"), ("val_ap_pp", "val_ap_pp"), ("test_ap_pp", "hard_ap_pp")):
        v = _finite(summary.get(key))
        if v is not None:
            out[f"{family}_{col}"] = v
    return out


__all__ = ["COLUMNS", "EXPERIMENT_KIND", "EXPERIMENT_KIND_TAG", "leaderboard_markdown", "leaderboard_metrics",
           "leaderboard_rows", "log_leaderboard", "main_metrics", "mark_experiment", "run_name"]
