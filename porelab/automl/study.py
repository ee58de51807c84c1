"""Optuna studies: one trial = one configuration cross-validated (``porelab.crossval.run_folds``), each fold a
nested MLflow run, reported epoch by epoch to a multi-fidelity pruner (successive halving or Hyperband).

Every epoch reports ``−val_ref`` (``porelab.train.loop.reference_loss``: the validation reconstruction error
of unsupervised nets, label-free; the validation Focal Tversky loss at α = β = 0.5, γ = 1 against the
training labels, i.e. the pseudo-labels, of supervised nets) at step ``fold index × max_epochs + epoch``, so
the steps grow monotonically across folds and every trial is compared on one scale. Under a time budget a
:class:`porelab.automl.budget.StudyClock` decides whether a new trial starts and stops a running one when the
study's deadline passes.

A study is created or resumed by name (``load_if_exists``); trials whose worker died are marked FAIL first.
The unsupervised study and TPE supervised studies are seeded anew at each resumption (so a resumed study
does not replay its suggestions); the paper profile's supervised study runs the paper's search protocol
(``porelab.automl.protocol``: α × β, then γ, then every net) as enqueued trials of the same study.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import tempfile
import time
import warnings
from pathlib import Path

from porelab.automl.spaces import MAIN_METRIC, first_trial, get_space
from porelab.crossval import Context, FoldHooks, mean_metrics, run_folds
from porelab.errors import ConfigError


def clean(obj):
    """``obj`` as JSON-able data, NaN as ``None``."""
    return json.loads(json.dumps(obj, default=float).replace("NaN", "null"))


def make_pruner(profile, max_epochs: int):
    """The profile's multi-fidelity pruner over ``folds × max_epochs`` steps: successive halving (the first
    rung after ``min_resource + 1`` epochs, η = ``reduction_factor``) or Hyperband over the same range."""
    import optuna

    space = profile.search
    if space.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=space.min_resource,
                                              max_resource=max(space.min_resource + 1, len_folds(profile) * max_epochs),
                                              reduction_factor=space.reduction_factor)
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=space.min_resource,
                                                  reduction_factor=space.reduction_factor,
                                                  min_early_stopping_rate=0)


def len_folds(profile) -> int:
    return max(1, int(profile.folds))


def make_study(name: str, storage, *, seed: int, pruner=None):
    """Create or load (``load_if_exists``) a maximising study; TPE (seeded); ``pruner`` (default: successive
    halving with a first rung after 2 steps)."""
    import optuna

    sampler = optuna.samplers.TPESampler(seed=seed)
    pruner = pruner or optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    return optuna.create_study(study_name=name, storage=storage, direction="maximize", sampler=sampler,
                               pruner=pruner, load_if_exists=True)


def _has_complete(study) -> bool:
    from optuna.trial import TrialState

    return bool(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def tracked_folds(ctx: Context, net: str, trial=None, main_metric: str = "val_ap_inj", *, clock=None,
                  max_epochs: int | None = None) -> FoldHooks:
    """:class:`~porelab.crossval.FoldHooks` that make every fold a nested MLflow run (params, per-epoch
    losses, metrics, PR/ROC figure), stop on SIGTERM between epochs, and report every epoch's ``−val_ref``
    to the Optuna ``trial`` at step ``fold index × max_epochs + epoch`` (``TrialPruned`` when its pruner says
    so). With a ``clock`` (:class:`porelab.automl.budget.StudyClock`) epoch and scoring costs are recorded,
    and a trial still running when the study's deadline passes is pruned after its current epoch (or, while
    the study has no complete trial, each of its folds stops after one epoch)."""
    import mlflow

    from porelab import tracking
    from porelab.metrics import plot_pr_roc

    max_epochs = max_epochs or ctx.profile.train_config(net).max_epochs

    def over_deadline() -> str | None:
        """``"prune"``, ``"stop"`` or ``None`` when the study's deadline has not passed."""
        if clock is None or trial is None or not clock.expired():
            return None
        return "prune" if _has_complete(trial.study) else "stop"

    @contextlib.contextmanager
    def start(fold):
        import optuna

        if over_deadline() == "prune":
            trial.set_user_attr("pruned_by", "deadline")
            raise optuna.TrialPruned(f"study deadline passed before fold {fold}")
        val_name = ctx.cv[fold].name
        with tracking.child_run(f"fold-{fold}", tags={"porelab.level": "fold", "porelab.fold": str(fold),
                                                      "porelab.val_scan": val_name}) as run:
            if trial is not None:
                trial.set_user_attr(f"mlflow_fold_{fold}", run.info.run_id)
            mlflow.log_params({"fold": fold, "val_scan": val_name,
                               "train_scans": ",".join(s.name for i, s in enumerate(ctx.cv) if i != fold)})
            yield run

    def epoch(fold, epoch, losses):
        import optuna

        tracking.check_interrupted()
        tracking.log_metrics({"train_loss": losses["train_loss"], "val_loss": losses["val_loss"],
                              "val_ref": losses.get("val_ref", math.nan), "epoch_seconds": losses["seconds"]},
                             step=epoch)
        if clock is not None:
            clock.epoch_seconds.append(float(losses["seconds"]))
        if trial is None:
            return
        step = ctx.folds.index(fold) * max_epochs + epoch
        ref = losses.get("val_ref", math.nan)
        trial.report(-float(ref) if math.isfinite(ref) else -1e9, step=step)
        if trial.should_prune():
            trial.set_user_attr("pruned_by", "pruner")
            raise optuna.TrialPruned(f"pruned at fold {fold} epoch {epoch} (val_ref={ref:.4f})")
        action = over_deadline()
        if action == "prune":
            trial.set_user_attr("pruned_by", "deadline")
            raise optuna.TrialPruned(f"study deadline passed at fold {fold} epoch {epoch}")
        if action == "stop":
            trial.set_user_attr("stopped_by_deadline", True)
            losses["stop"] = True

    def end(result):
        tracking.log_metrics(result.metrics)
        if clock is not None and "score_seconds" in result.metrics:
            clock.score_seconds.append(float(result.metrics["score_seconds"]))
        with tempfile.TemporaryDirectory() as tmp:
            png = Path(tmp) / f"pr_roc_fold{result.fold}.png"
            plot_pr_roc(result.curves, png,
                        title=f"{net} fold {result.fold} (held out {ctx.cv[result.fold].name})")
            mlflow.log_artifact(str(png))

    return FoldHooks(start=start, epoch=epoch, end=end, report=None)


def trial_context(ctx: Context, net: str, lr: float | None) -> Context:
    """``ctx`` with the learning rate of ``net``'s kind of training replaced (a shallow copy: same scans)."""
    if lr is None:
        return ctx
    from porelab.nets import is_supervised

    kind = "supervised" if is_supervised(net) else "unsupervised"
    train = dataclasses.replace(getattr(ctx.profile, kind), lr=float(lr))
    return dataclasses.replace(ctx, profile=ctx.profile.replace(**{kind: train}))


def objective(ctx: Context, kind: str, labels=None, clock=None):
    """The Optuna objective of the ``kind`` ("unsupervised"/"supervised") study: one trial = k folds in a
    nested run ``trial-<n>-<net>``; value = the mean of the study's main metric over the folds. The trial's
    wall time is kept as its ``seconds`` user attribute (and in ``clock``)."""
    import mlflow

    from porelab import tracking

    space = get_space(kind)
    main_metric = MAIN_METRIC[kind]

    def run_trial(trial):
        t0, ok = time.monotonic(), False
        try:
            value = _run_trial(trial)
            ok = True
            return value
        finally:
            seconds = time.monotonic() - t0
            trial.set_user_attr("seconds", seconds)
            if clock is not None:
                clock.trial_seconds[trial.number] = seconds
                if ok:
                    clock.complete_seconds.append(seconds)

    def _run_trial(trial):
        for k, v in tracking.worker_tag().items():
            trial.set_user_attr(k, v)
        name, net_kwargs, loss = space(trial, ctx.profile)
        tctx = trial_context(ctx, name, trial.params.get("lr"))
        tags = {"porelab.level": "trial", "optuna.study": trial.study.study_name,
                "optuna.trial": str(trial.number), "porelab.net": name}
        with tracking.child_run(f"trial-{trial.number}-{name}", tags=tags) as run:
            trial.set_user_attr("mlflow_run_id", run.info.run_id)
            tracking.log_params({"net": name, "net_kwargs": net_kwargs, "loss": loss, **trial.params})
            folds, best_dir = run_folds(tctx, name, net_kwargs, loss, labels=labels,
                                        seed=ctx.seed * 1000 + trial.number * 10, main_metric=main_metric,
                                        tag=f"{kind}/trial{trial.number}",
                                        hooks=tracked_folds(tctx, name, trial, main_metric, clock=clock))
            summary = mean_metrics(folds)
            tracking.log_metrics(summary)
            mlflow.log_artifacts(str(best_dir), artifact_path="model")
            for fold_dir in sorted(Path(best_dir).parent.glob("fold*")):     # for a fold ensemble
                mlflow.log_artifacts(str(fold_dir), artifact_path=f"folds/{fold_dir.name}")
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


def run_study(ctx: Context, kind: str, study_name: str, storage, n_trials: int | None, *, labels=None,
              clock=None):
    """Run the ``kind`` study in a nested MLflow run ``study-<kind>``; return it.

    ``n_trials``: trials this call runs (with a ``clock``: at most that many, ``None``/0 = until the clock
    refuses a new trial, :meth:`~porelab.automl.budget.StudyClock.admits`). Resumes a study of the same name;
    trials whose worker died are marked FAIL first. A trial that raises is recorded FAIL (its runs FAILED)
    and the study goes on.
    """
    import mlflow
    import optuna

    from porelab import tracking

    if not n_trials and clock is None:
        raise ConfigError(f"{kind} study: give a number of trials or a time budget")
    protocol = kind == "supervised" and ctx.profile.search.grid     # the paper's protocol, enqueued trials
    nets = ctx.profile.search.unsupervised_nets if kind == "unsupervised" else ctx.profile.search.supervised_nets
    full_name = f"{study_name}-{kind}"
    max_epochs = getattr(ctx.profile, kind).max_epochs
    study = make_study(full_name, storage, seed=ctx.seed, pruner=make_pruner(ctx.profile, max_epochs))
    orphans = tracking.fail_orphaned_trials(study)
    # another seed per resumption so a resumed study does not replay the same suggestions
    study.sampler = optuna.samplers.TPESampler(seed=ctx.seed * 1000 + len(study.trials))
    if not study.trials and not protocol:
        # TPE starts from a configuration known to learn: for the supervised study the paper's optimum
        # (with a high β and few steps the UNets were measured to collapse to "no pore")
        study.enqueue_trial(first_trial(kind, ctx.profile))
    if clock is not None:
        clock.min_epochs = ctx.profile.search.min_resource + 1
    callbacks = [tracking.check_interrupted]
    if clock is not None:
        def budget_stop(study_, _trial):
            if not clock.admits():
                study_.stop()
        callbacks.append(budget_stop)
    space = ctx.profile.search
    pruner_text = (f"{type(study.pruner).__name__}(min_resource={space.min_resource}, "
                   f"reduction_factor={space.reduction_factor}, step=fold*{max_epochs}+epoch)")
    with tracking.child_run(f"study-{kind}", tags={"porelab.level": "study", "optuna.study": full_name}):
        tracking.log_params({"study_name": full_name, "n_trials": n_trials or "budget", "sampler":
                             "paper protocol" if protocol else type(study.sampler).__name__, "pruner": pruner_text,
                             "orphaned_trials_failed": len(orphans), "nets": ",".join(nets)})
        if clock is not None:
            tracking.log_metrics({"deadline_seconds_at_start": clock.remaining()})
        skip = clock is not None and _has_complete(study) and not clock.admits()
        if not skip:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", category=optuna.exceptions.ExperimentalWarning)
                # (check_interrupted stops the loop if a SIGTERM was swallowed while the trial ended)
                if protocol:
                    from porelab.automl.protocol import log_protocol, paper_stages, run_paper_protocol

                    log_protocol(run_paper_protocol(study, objective(ctx, kind, labels, clock),
                                                    **paper_stages(ctx.profile.search), n_trials=n_trials or None,
                                                    callbacks=callbacks))
                else:
                    study.optimize(objective(ctx, kind, labels, clock), n_trials=n_trials or None,
                                   catch=(Exception,), gc_after_trial=True, callbacks=callbacks)
        if clock is not None:
            tracking.log_metrics(clock.metrics())
            if clock.stopped_reason:
                mlflow.set_tag("porelab.budget_stop", clock.stopped_reason[:250])
        log_study(study, kind)
    if mlflow.active_run() is not None:      # the plots and the trials table on the parent run as well
        log_study(study, kind, metrics=False)
    return study


def trials_rows(study) -> list[dict]:
    """One row per trial: number, state, value, wall seconds, epochs reported, why it stopped, params."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        steps = sorted(t.intermediate_values)
        rows.append({"number": t.number, "state": t.state.name, "value": t.value,
                     "seconds": t.user_attrs.get("seconds"), "epochs_reported": len(steps),
                     "last_step": steps[-1] if steps else None,
                     "stopped_by": t.user_attrs.get("pruned_by") or
                     ("deadline (1 epoch per fold)" if t.user_attrs.get("stopped_by_deadline") else ""),
                     **t.params, "worker": f"{t.user_attrs.get('host', '')}:{t.user_attrs.get('pid', '')}"})
    return rows


def log_study(study, kind: str, *, metrics: bool = True) -> None:
    """Trials table (state, value, cost, params) and the Optuna plots (optimisation history, intermediate
    values; parameter importances and parallel coordinates with ≥ 2 complete trials) on the active run;
    with ``metrics`` also the trial counts and the best value."""
    import mlflow
    import optuna.visualization.matplotlib as ovm
    from optuna.trial import TrialState

    from porelab import tracking
    from porelab.reporting.tables import csv_text

    trials = study.get_trials(deepcopy=False)
    mlflow.log_text(csv_text(trials_rows(study)), f"optuna/{kind}_trials.csv")
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if metrics:
        tracking.log_metrics({"trials_complete": len(complete), "trials_total": len(trials),
                              "trials_pruned": sum(t.state == TrialState.PRUNED for t in trials),
                              "trials_failed": sum(t.state == TrialState.FAIL for t in trials)})
    if complete and metrics:
        tracking.log_metrics({"best_value": study.best_value})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plots = [("optimization_history", ovm.plot_optimization_history),
                 ("intermediate_values", ovm.plot_intermediate_values)]
        if len(complete) >= 2:
            plots += [("param_importances", ovm.plot_param_importances),
                      ("parallel_coordinate", ovm.plot_parallel_coordinate)]
        for name, fn in plots:
            try:
                ax = fn(study)
                fig = (ax if not hasattr(ax, "figure") else ax.figure)
                if hasattr(fig, "tight_layout"):
                    fig.tight_layout()
                tracking.log_figure(fig, f"optuna/{kind}_{name}.png")
            except (ValueError, RuntimeError, ZeroDivisionError, IndexError, KeyError) as exc:
                mlflow.set_tag(f"optuna.{kind}_{name}_skipped", str(exc)[:250])


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


__all__ = ["best_per_net", "clean", "log_study", "make_pruner", "make_study", "objective", "run_study",
           "study_summary", "table_entries", "tracked_folds", "trial_context", "trials_rows"]
