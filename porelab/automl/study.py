"""Optuna studies: one trial = one configuration cross-validated (``porelab.crossval.run_folds``), each fold a
nested MLflow run, reported fold by fold to a median pruner.

A study is created or resumed by name (``load_if_exists``); trials whose worker died are marked FAIL first.
The unsupervised study and TPE supervised studies are seeded anew at each resumption (so a resumed study
does not replay its suggestions); the paper profile's supervised study walks the paper's grid.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
import warnings
from pathlib import Path

from porelab.automl.spaces import MAIN_METRIC, PAPER_FTL_OPTIMUM, get_space, paper_grid
from porelab.crossval import Context, FoldHooks, mean_metrics, run_folds
from porelab.errors import ConfigError


def clean(obj):
    """``obj`` as JSON-able data, NaN as ``None``."""
    return json.loads(json.dumps(obj, default=float).replace("NaN", "null"))


def make_study(name: str, storage, *, seed: int, grid: dict | None = None):
    """Create or load (``load_if_exists``) a maximising study; TPE (seeded) or the given grid."""
    import optuna

    sampler = optuna.samplers.GridSampler(grid, seed=seed) if grid else optuna.samplers.TPESampler(seed=seed)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    return optuna.create_study(study_name=name, storage=storage, direction="maximize", sampler=sampler,
                               pruner=pruner, load_if_exists=True)


def tracked_folds(ctx: Context, net: str, trial=None, main_metric: str = "val_ap") -> FoldHooks:
    """:class:`~porelab.crossval.FoldHooks` that make every fold a nested MLflow run (params, per-epoch
    losses, metrics, PR/ROC figure), stop on SIGTERM between epochs, and report each fold's
    ``main_metric`` to the Optuna ``trial`` (``TrialPruned`` when its pruner says so)."""
    import mlflow

    from porelab import tracking
    from porelab.metrics import plot_pr_roc

    @contextlib.contextmanager
    def start(fold):
        val_name = ctx.cv[fold].name
        with tracking.child_run(f"fold-{fold}", tags={"porelab.level": "fold", "porelab.fold": str(fold),
                                                      "porelab.val_scan": val_name}) as run:
            if trial is not None:
                trial.set_user_attr(f"mlflow_fold_{fold}", run.info.run_id)
            mlflow.log_params({"fold": fold, "val_scan": val_name,
                               "train_scans": ",".join(s.name for i, s in enumerate(ctx.cv) if i != fold)})
            yield run

    def epoch(fold, epoch, losses):
        tracking.check_interrupted()
        tracking.log_metrics({"train_loss": losses["train_loss"], "val_loss": losses["val_loss"],
                              "epoch_seconds": losses["seconds"]}, step=epoch)

    def end(result):
        tracking.log_metrics(result.metrics)
        with tempfile.TemporaryDirectory() as tmp:
            png = Path(tmp) / f"pr_roc_fold{result.fold}.png"
            plot_pr_roc(result.curves, png,
                        title=f"{net} fold {result.fold} (held out {ctx.cv[result.fold].name})")
            mlflow.log_artifact(str(png))

    report = None
    if trial is not None:
        def report(step, fold, value):
            import optuna

            trial.report(float(value) if math.isfinite(value) else 0.0, step=step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after fold {fold} ({main_metric}={value:.4f})")

    return FoldHooks(start=start, epoch=epoch, end=end, report=report)


def objective(ctx: Context, kind: str, labels=None):
    """The Optuna objective of the ``kind`` ("unsupervised"/"supervised") study: one trial = k folds in a
    nested run ``trial-<n>-<net>``; value = the mean of the study's main metric over the folds."""
    import mlflow

    from porelab import tracking

    space = get_space(kind)
    main_metric = MAIN_METRIC[kind]

    def run_trial(trial):
        for k, v in tracking.worker_tag().items():
            trial.set_user_attr(k, v)
        name, net_kwargs, loss = space(trial, ctx.profile)
        tags = {"porelab.level": "trial", "optuna.study": trial.study.study_name,
                "optuna.trial": str(trial.number), "porelab.net": name}
        with tracking.child_run(f"trial-{trial.number}-{name}", tags=tags) as run:
            trial.set_user_attr("mlflow_run_id", run.info.run_id)
            tracking.log_params({"net": name, "net_kwargs": net_kwargs, "loss": loss, **trial.params})
            folds, best_dir = run_folds(ctx, name, net_kwargs, loss, labels=labels,
                                        seed=ctx.seed * 1000 + trial.number * 10, main_metric=main_metric,
                                        tag=f"{kind}/trial{trial.number}",
                                        hooks=tracked_folds(ctx, name, trial, main_metric))
            summary = mean_metrics(folds)
            tracking.log_metrics(summary)
            mlflow.log_artifacts(str(best_dir), artifact_path="model")
            trial.set_user_attr("net", name)
            trial.set_user_attr("net_kwargs", net_kwargs)
            trial.set_user_attr("loss", loss)
            trial.set_user_attr("fold_metrics", clean(folds))
            trial.set_user_attr("model_dir", str(best_dir))
            value = summary.get(main_metric, math.nan)
            if not math.isfinite(value):
                raise ConfigError(f"trial {trial.number}: {main_metric} is not finite (no pores in the "
                                  "held-out scans?)")
            return float(value)

    return run_trial


def run_study(ctx: Context, kind: str, study_name: str, storage, n_trials: int, *, labels=None):
    """Run ``n_trials`` trials of the ``kind`` study in a nested MLflow run ``study-<kind>``; return it.

    Resumes a study of the same name; trials whose worker died are marked FAIL first. A trial that
    raises is recorded FAIL (its runs FAILED) and the study goes on.
    """
    import mlflow
    import optuna

    from porelab import tracking

    grid = paper_grid(ctx.profile) if kind == "supervised" and ctx.profile.search.grid else None
    nets = ctx.profile.search.unsupervised_nets if kind == "unsupervised" else ctx.profile.search.supervised_nets
    full_name = f"{study_name}-{kind}"
    study = make_study(full_name, storage, seed=ctx.seed, grid=grid)
    orphans = tracking.fail_orphaned_trials(study)
    if not grid:   # another seed per resumption so a resumed study does not replay the same suggestions
        study.sampler = optuna.samplers.TPESampler(seed=ctx.seed * 1000 + len(study.trials))
        if kind == "supervised" and not study.trials:
            # TPE starts from the paper's optimum: with a high β (FP weight) and few steps the UNets were
            # measured to collapse to "no pore" (validation FTL 1.0), while α 0.633, β 0.1, γ 1 learned.
            study.enqueue_trial({"net": nets[0], **PAPER_FTL_OPTIMUM})
    with tracking.child_run(f"study-{kind}", tags={"porelab.level": "study", "optuna.study": full_name}):
        tracking.log_params({"study_name": full_name, "n_trials": n_trials, "sampler":
                             type(study.sampler).__name__, "pruner": "MedianPruner(n_startup_trials=2)",
                             "orphaned_trials_failed": len(orphans), "nets": ",".join(nets)})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=optuna.exceptions.ExperimentalWarning)
            # (the callback stops the loop if a SIGTERM was swallowed while the trial ended)
            study.optimize(objective(ctx, kind, labels), n_trials=n_trials, catch=(Exception,),
                           gc_after_trial=True, callbacks=[tracking.check_interrupted])
        log_study(study, kind)
    if mlflow.active_run() is not None:      # the plots and the trials table on the parent run as well
        log_study(study, kind, metrics=False)
    return study


def log_study(study, kind: str, *, metrics: bool = True) -> None:
    """Trials table and Optuna plots (history; importances with ≥ 2 complete trials) on the active run;
    with ``metrics`` also the trial counts and the best value."""
    import mlflow
    import optuna.visualization.matplotlib as ovm
    from optuna.trial import TrialState

    from porelab import tracking
    from porelab.reporting.tables import csv_text

    trials = study.get_trials(deepcopy=False)
    rows = [{"number": t.number, "state": t.state.name, "value": t.value, **t.params,
             "worker": f"{t.user_attrs.get('host', '')}:{t.user_attrs.get('pid', '')}"} for t in trials]
    mlflow.log_text(csv_text(rows), f"optuna/{kind}_trials.csv")
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if metrics:
        tracking.log_metrics({"trials_complete": len(complete), "trials_total": len(trials),
                              "trials_pruned": sum(t.state == TrialState.PRUNED for t in trials),
                              "trials_failed": sum(t.state == TrialState.FAIL for t in trials)})
    if complete and metrics:
        tracking.log_metrics({"best_value": study.best_value})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plots = [("optimization_history", ovm.plot_optimization_history)]
        if len(complete) >= 2:
            plots.append(("param_importances", ovm.plot_param_importances))
        for name, fn in plots:
            try:
                ax = fn(study)
                fig = (ax if not hasattr(ax, "figure") else ax.figure)
                if hasattr(fig, "tight_layout"):
                    fig.tight_layout()
                tracking.log_figure(fig, f"optuna/{kind}_{name}.png")
            except (ValueError, RuntimeError, ZeroDivisionError, IndexError) as exc:
                mlflow.set_tag(f"optuna.{name}_skipped", str(exc)[:250])


def best_per_net(study) -> dict[str, object]:
    """The best COMPLETE trial of each architecture in a study."""
    from optuna.trial import TrialState

    best: dict[str, object] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        net = t.params.get("net")
        if net and (net not in best or t.value > best[net].value):
            best[net] = t
    return best


def study_summary(study) -> dict:
    """Name, trial counts, best value, params and trial number of a study (``ConfigError`` if no trial
    completed)."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise ConfigError(f"study {study.study_name}: no trial completed (see the FAILED runs in MLflow)")
    return {"name": study.study_name, "trials": len(study.trials), "complete": len(complete),
            "best_value": float(study.best_value), "best_params": study.best_params,
            "best_trial": study.best_trial.number}


def table_entries(study, family: str, labels: str) -> list[tuple[str, str, str, list[dict]]]:
    """``porelab.reporting.tables`` entries: the best trial of each architecture of a study."""
    if study is None:
        return []
    return [(net, family, labels, t.user_attrs.get("fold_metrics", []))
            for net, t in sorted(best_per_net(study).items())]


__all__ = ["best_per_net", "clean", "log_study", "make_study", "objective", "run_study", "study_summary",
           "table_entries", "tracked_folds"]
