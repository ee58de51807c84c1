"""The AutoML pipeline (``mlflow run . -e search``, ``porelab search``), and its parts as commands.

Design note §5, the experiments of Iuso et al. (2024) as one job:

1. data: a dataset manifest, or one simulated into ``porelab-data/<profile>`` beside the MLflow store; the
   classical rows of the tables (``porelab.baselines``) are fitted and scored on its folds right away;
2. unsupervised study ``<study>-unsupervised`` (``porelab.automl.study``; value = mean post-processed
   validation AP);
3. the best trial's model (the fold with the best validation AP) is registered as ``porelab-unsupervised``
   and promoted by the registry policy;
4. pseudo-labels: ``models:/porelab-unsupervised@production`` is loaded by name and labels every cv scan
   (``porelab.pseudolabels``, settings ``profile.labels``);
5. supervised study ``<study>-supervised`` on the pseudo-labels (``paper``: the paper's grid); with
   ``search.heuristic_comparison`` the best configuration is trained again on Algorithm 1 labels;
6. the best is registered as ``porelab-supervised`` and promoted;
7. the parent run gets the tables (``porelab.reporting``), PR/ROC plots of both production models, the
   complexity table and the Optuna plots.

Runs nest: parent → study → trial → fold. MLflow and Optuna are imported inside functions.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from porelab.automl.storage import hide_password
from porelab.automl.study import best_per_net, clean, run_study, study_summary, table_entries, tracked_folds
from porelab.config import Profile, get_profile
from porelab.crossval import Context, label_source, make_context, mean_metrics, run_folds
from porelab.errors import ConfigError

UNSUPERVISED_NAME = "porelab-unsupervised"
SUPERVISED_NAME = "porelab-supervised"


# ------------------------------------------------------------------------------------------------ data
def ensure_dataset(data, profile: Profile, seed: int, *, progress: bool = False) -> Path:
    """The dataset folder: ``data`` if given (must hold a manifest), else ``<store>/porelab-data/<profile>``
    beside the MLflow store, simulated with the profile's preset and ``seed`` unless a manifest is there."""
    from porelab.simulate.dataset import simulate_dataset

    if data:
        path = Path(data).expanduser().resolve()
        if not (path / "manifest.json").is_file() and not (path.is_file() and path.suffix == ".json"):
            raise ConfigError(f"data {data!r}: no manifest.json there (create one with `porelab simulate`)")
        return path
    from porelab.tracking import store_dir

    path = store_dir() / "porelab-data" / profile.name
    if not (path / "manifest.json").is_file():
        simulate_dataset(path, preset=profile.sim_preset, seed=seed, progress=progress)
    return path


def pipeline_context(profile, data, seed: int, *, workdir=None, progress: bool = False) -> Context:
    """:func:`porelab.crossval.make_context` over :func:`ensure_dataset`'s folder."""
    prof = get_profile(profile)
    root = ensure_dataset(data, prof, seed, progress=progress)
    return make_context(prof, root, seed, workdir=workdir, progress=progress)


# ----------------------------------------------------------------------------------------- registry
def register_best(study, registered_name: str, ctx, *, extra_meta: dict | None = None,
                  policy: dict | None = None) -> dict:
    """Register the study's best trial on the active run as ``registered_name``, then promote by the policy.
    What is registered is its best fold's model or the ensemble of all its fold models, whichever validates
    better (``porelab.automl.ensemble``; the models come from the trial's folder, else its run's
    artifacts). Returns the promotion result, with ``registered_form`` and its reason.

    One trial, one version: a trial registered before (a re-run, a resumed study, another worker on the
    same study) reuses its version (``tracking.register_version``), and promotion is idempotent.
    """
    import mlflow

    from porelab import tracking
    from porelab.model import PoreModel

    policy = policy if policy is not None else tracking.load_policy()
    best = study.best_trial
    run_id = best.user_attrs.get("mlflow_run_id") or f"optuna:{study.study_name}/{best.number}"
    metric_key = tracking.policy_for(policy, registered_name)["metric"]
    summary = mean_metrics(best.user_attrs.get("fold_metrics") or [])
    value = float(summary.get(metric_key, best.value))
    tags = {tracking.TRIAL_RUN_TAG: run_id, "porelab.net": best.user_attrs.get("net") or best.params.get("net"),
            "porelab.study": study.study_name, "porelab.trial": best.number}

    chosen: dict = {}

    def log_model() -> str:
        from porelab.automl.ensemble import choose_form, fold_model_dirs

        local = Path(best.user_attrs.get("model_dir", ""))
        with tempfile.TemporaryDirectory() as tmp:
            if (local / "model.json").is_file():
                models = [PoreModel.load(d) for d in fold_model_dirs(local)]
            else:
                local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model",
                                                                 dst_path=tmp))
                models = [PoreModel.load(local)]
                with contextlib.suppress(Exception):    # runs logged before fold models were kept have none
                    folds = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="folds",
                                                                     dst_path=tmp))
                    best_fold = f"fold{models[0].meta.get('fold')}"
                    models += [PoreModel.load(d) for d in sorted(folds.glob("fold*")) if d.name != best_fold]
            model, choice = choose_form(ctx, models)
            chosen.update(choice)
            model.meta.update({"registered_form": choice["registered_form"], "form_choice": choice})
            out = model.save(Path(tmp) / "registered")
            meta = {"threshold": model.threshold, "threshold_policy": model.meta.get("threshold_policy"),
                    "net": model.name, "net_kwargs": model.net_kwargs, "patch": model.patch,
                    "postprocess": model.postprocess, "kind": model.kind, "profile": ctx.profile.name,
                    "study": study.study_name, "trial": best.number, "trial_run": run_id,
                    "params": best.params, "metrics": {k: v for k, v in summary.items() if math.isfinite(v)},
                    "registered_form": choice["registered_form"], "form_choice": choice,
                    "seed": ctx.seed, **(extra_meta or {})}
            info = tracking.log_pore_model(out, name=registered_name.replace("porelab-", ""), metadata=meta)
        return info.model_uri

    version, reused = tracking.register_version(registered_name, log_model,
                                                {k: v for k, v in tags.items() if v is not None})
    result = tracking.promote(registered_name, version, value, policy=policy)
    result["reused"] = reused
    if chosen:          # (a reused version was chosen when it was first registered)
        result.update(registered_form=chosen["registered_form"], registered_form_why=chosen["why"])
        kind = "unsupervised" if registered_name == UNSUPERVISED_NAME else "supervised"
        mlflow.set_tag(f"porelab.registered_form.{kind}", f"{chosen['registered_form']}: {chosen['why']}"[:250])
        tracking.log_metrics({f"{kind}_{k}": v for k, v in chosen.items() if k.startswith("ap_inj_")})
    return result


# ------------------------------------------------------------------------------------- pseudo-labels
def model_pseudo_labels(ctx: Context, model=f"models:/{UNSUPERVISED_NAME}@production"):
    """Pseudo-labels of every cv scan (statistics also of the hard scan) from an unsupervised model: a
    registered name (its Production version), a ``models:/`` URI (loaded by name as a pyfunc model), or a
    local model folder. Threshold: the model's; clean-up: ``profile.labels``. ``(labels, stats, info)``."""
    from porelab.pseudolabels import pseudo_labels

    model_uri = str(model)
    if Path(model_uri).is_dir():                       # a local model folder (``porelab pseudolabel``)
        from porelab.model import PoreModel

        local = PoreModel.load(model_uri)
        predict, meta = (lambda x: local.predict(x, progress=False)), {"threshold": local.threshold}
    else:
        import mlflow.pyfunc

        if not model_uri.startswith("models:/"):       # a bare registered name: its Production version
            from porelab.tracking import resolve_version

            mv = resolve_version(model_uri)
            model_uri = f"models:/{mv.name}/{mv.version}"
        pyfunc = mlflow.pyfunc.load_model(model_uri)
        predict, meta = pyfunc.predict, (pyfunc.metadata.metadata or {})
    threshold = float(meta.get("threshold", 0.5))
    cfg = ctx.profile.labels
    scans = ctx.cv + ([ctx.hard] if ctx.hard is not None else [])
    labels, stats = pseudo_labels(scans, predict, threshold=threshold, min_voxels=cfg.min_voxels,
                                  min_extent=cfg.min_extent, references=ctx.references)
    info = {"model_uri": model_uri, "threshold": threshold, "min_voxels": cfg.min_voxels,
            "min_extent": cfg.min_extent, "model_version": meta.get("trial_run")}
    return labels, stats, info


def log_pseudo_labels(stats: dict, info: dict, out_dir: Path | None = None, labels=None) -> None:
    """Log the label statistics (params, metrics per scan, JSON) on the active run; save the labels."""
    import mlflow

    from porelab import tracking

    tracking.log_params({k: v for k, v in info.items() if v is not None})
    for name, st in stats.items():
        tracking.log_metrics({f"{name}_{k}": v for k, v in st.items() if k != "role"})
    cv = [st for st in stats.values() if st["role"] == "cv"]
    if cv:
        tracking.log_metrics({f"mean_{k}": float(np.mean([st[k] for st in cv]))
                              for k in ("porosity_percent", "pore_count", "dice_vs_truth", "dice_vs_alg1")})
    mlflow.log_dict(stats, "pseudo_labels/stats.json")
    if out_dir is not None and labels:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, m in labels.items():
            np.save(out_dir / f"{name}_pseudo.npy", m.astype(np.uint8))


# --------------------------------------------------------------------------------------- the pipeline
def heuristic_comparison(ctx: Context, sup_study) -> list[dict]:
    """Retrain the best supervised configuration on Algorithm 1 labels (nested run); fold metrics."""
    from porelab import tracking

    best = sup_study.best_trial
    name, kwargs, loss = best.user_attrs["net"], best.user_attrs["net_kwargs"], best.user_attrs["loss"]
    with tracking.child_run("heuristic-labels", tags={"porelab.level": "study", "porelab.labels": "alg1"}):
        tracking.log_params({"net": name, "net_kwargs": kwargs, "loss": loss, "labels": "Algorithm 1",
                             "from_trial": best.number})
        folds, _ = run_folds(ctx, name, kwargs, loss, labels=label_source(ctx, "alg1"),
                             seed=ctx.seed * 1000 + 999, tag="heuristic", hooks=tracked_folds(ctx, name))
        tracking.log_metrics(mean_metrics(folds))
    return folds


def log_tables(ctx: Context, unsup_study, sup_study, heuristic_folds: list[dict] | None) -> None:
    """The paper-like summary tables (``porelab.reporting.tables``) on the active run."""
    import mlflow

    from porelab.baselines import baseline_rows
    from porelab.reporting.tables import build_tables

    entries = [(name, "classical", "none", rows) for name, rows in baseline_rows(ctx).items()]
    entries += table_entries(unsup_study, "unsupervised", "none (reconstruction)")
    entries += table_entries(sup_study, "supervised", "pseudo-labels")
    comparison = None
    if heuristic_folds:
        net = sup_study.best_trial.params.get("net") if sup_study is not None else "?"
        entries.append((net, "supervised", "Algorithm 1 labels", heuristic_folds))
        if sup_study is not None:
            comparison = (sup_study.best_trial.user_attrs.get("fold_metrics", []), heuristic_folds)
    tables = build_tables(entries, profile=ctx.profile.name, n_folds=len(ctx.folds), notes=ctx.notes,
                          comparison=comparison)
    for path, text in tables.items():
        mlflow.log_text(text, path)


def curve_scans(ctx: Context) -> list:
    """The scans of the production models' PR/ROC figures: the hard scan and the first cv scan, if labelled."""
    return [s for s in (ctx.hard, ctx.cv[0]) if s is not None and s.name in ctx.references]


def classical_curves(ctx: Context) -> dict:
    """The classical rows fitted on every cv scan and scored on ``curve_scans`` (cached on the context).
    Computed in the ``classical_rows`` phase, before the studies are planned: the summary's figures then cost
    only the two production models' inference, which the budget's tail estimate counts."""
    from porelab.reporting.figures import classical_scores

    if "classical_curves" not in ctx.cache:
        ctx.cache["classical_curves"] = classical_scores(curve_scans(ctx), ctx.cv, ctx.profile)
    return ctx.cache["classical_curves"]


def log_registered_curves(ctx: Context) -> None:
    """PR/ROC plots of both production models on the hard scan and the first cv scan, on the active run."""
    import mlflow

    from porelab import tracking
    from porelab.reporting.figures import model_curves

    scans = curve_scans(ctx)
    models = {f"{name} (production)": tracking.resolve_model(name) for name in (UNSUPERVISED_NAME, SUPERVISED_NAME)}
    with tempfile.TemporaryDirectory() as tmp:
        for png in model_curves(scans, models, tmp, profile=ctx.profile, train_scans=ctx.cv,
                                references=ctx.references, classical=classical_curves(ctx)):
            mlflow.log_artifact(str(png), "plots")


def _start(storage=False):
    """Set up MLflow, close the runs of workers killed hard on this host, open the Optuna storage."""
    from porelab import tracking

    tracking.setup_mlflow()
    tracking.fail_orphaned_runs()
    return tracking.optuna_storage(storage) if storage is not False else None


def use_experiment(experiment: str) -> tuple[str, str | None]:
    """Select (create) the MLflow experiment ``experiment`` and tag it as model training
    (``leaderboard.mark_experiment``). Inside ``mlflow run`` whose run lives in another experiment (by
    default "Default"), the search gets its own parent run in ``experiment`` and the launcher run is left to
    ``mlflow run`` (tagged with the search run's id at the end). Returns ``(experiment_id, launcher_run_id)``.
    """
    import mlflow

    from porelab.automl.leaderboard import mark_experiment

    launcher = os.environ.get("MLFLOW_RUN_ID")
    if launcher:
        run_exp = mlflow.get_experiment(mlflow.get_run(launcher).info.experiment_id)
        if run_exp.name == experiment:
            mark_experiment(run_exp.experiment_id)
            return run_exp.experiment_id, None
        os.environ.pop("MLFLOW_RUN_ID")
        os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    exp_id = mlflow.set_experiment(experiment).experiment_id
    # a worker that lost the race to create the experiment gets it back unselected: select it by id
    mlflow.set_experiment(experiment_id=exp_id)
    mark_experiment(exp_id)
    return exp_id, launcher


def run_search(profile: str = "quick", data=None, n_trials: int | None = None, study_name: str = "porelab",
               storage=None, seed: int = 0, *, time_budget=None, experiment: str = "porelab",
               progress: bool = False, workdir=None, clock=time.monotonic) -> dict:
    """The whole AutoML pipeline (module docstring). Returns a summary dict (runs, versions, values).

    ``time_budget``: minutes for the whole job (``None``/``""``: the profile's, ``"none"``/0: no budget),
    split and enforced by ``porelab.automl.budget``; ``n_trials`` caps the trials this call runs in each
    study (0/None: the profile's cap, 0 there = as many as the budget allows). Several workers with the same
    ``study_name`` and ``storage`` share the studies. ``storage``: Optuna storage (``None``/``""``:
    ``optuna.db`` beside ``mlflow.db``; an RDB URL; a ``.log`` journal file). ``experiment``: the MLflow
    experiment; the parent run is named ``<profile>-<study_name>-seed<seed>``.
    """
    import mlflow

    from porelab import tracking
    from porelab.automl.budget import Budget, StudyClock, parse_minutes, tail_estimate
    from porelab.automl.leaderboard import log_leaderboard, main_metrics, run_name
    from porelab.reporting.tables import complexity_rows, csv_text

    prof = get_profile(profile)
    minutes = parse_minutes(time_budget, prof.search.time_budget)
    budget = Budget.minutes(minutes, clock=clock)
    if n_trials is not None and n_trials < 0:
        raise ConfigError(f"n_trials must be >= 0, got {n_trials}")
    if not experiment or not str(experiment).strip():
        raise ConfigError("experiment: give an MLflow experiment name")
    if not budget.limited and not (n_trials or (prof.search.n_trials_unsupervised and prof.search.n_trials_supervised)):
        raise ConfigError(f"profile {prof.name} without a time budget needs --n-trials (it caps trials by the budget)")
    tracking.optuna_storage_url(storage)          # bad input fails before anything is written
    if data:
        ensure_dataset(data, prof, seed)
    storage_obj = _start(storage)
    _exp_id, launcher = use_experiment(str(experiment))
    own_workdir = workdir is None
    workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="porelab-search-"))
    name = run_name(prof.name, study_name, seed)
    summary: dict = {"profile": prof.name, "study_name": study_name, "experiment": str(experiment),
                     "run_name": name, "time_budget_minutes": minutes}
    space = prof.search
    try:
        with tracking.sigterm_as_interrupt(), \
                tracking.parent_run(name, tags={"porelab.level": "search"}) as run:
            summary["run_id"] = run.info.run_id
            mlflow.set_tag("mlflow.runName", name)
            with budget.phase("data"):
                ctx = pipeline_context(prof, data, seed, workdir=workdir, progress=progress)
            # the classical rows of the summary tables need no model: fitted and scored now (cached on the
            # context), so their cost is measured before the studies are planned, not guessed after them
            with budget.phase("classical_rows"):
                from porelab.baselines import baseline_rows

                baseline_rows(ctx)
                classical_curves(ctx)
            n_unsup = n_trials or space.n_trials_unsupervised or None
            n_sup = n_trials or space.n_trials_supervised or None
            commit = tracking.git_commit()
            mlflow.set_tags({"porelab.profile": prof.name, "porelab.git_commit": commit,
                             "porelab.study_name": study_name, "porelab.seed": str(seed)})
            # (keys differ from the MLproject parameters `mlflow run` logged: params cannot change)
            tracking.log_params({"profile": prof.name, "seed": seed, "dataset_dir": str(ctx.dataset_root),
                                 "study_name": study_name, "experiment_name": str(experiment),
                                 "optuna_storage": hide_password(tracking.optuna_storage_url(storage)),
                                 "n_trials_unsupervised": n_unsup or "budget", "n_trials_supervised": n_sup or "budget",
                                 "time_budget_minutes": minutes if minutes is not None else "none",
                                 "unsupervised_share": space.unsupervised_share, "tail_fraction": space.tail_fraction,
                                 "pruner": space.pruner, "folds": len(ctx.folds), "git_commit": commit})
            mlflow.log_dict(prof.to_dict(), "profile.json")
            mlflow.log_artifact(str(ctx.dataset_root / "manifest.json"), "dataset")
            hashes = tracking.file_hashes(ctx.dataset_root)
            mlflow.log_dict(hashes, "dataset/sha256.json")
            mlflow.set_tag("porelab.dataset_sha256",
                           hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest())
            for note in ctx.notes:
                mlflow.set_tag("porelab.note.folds", note)

            # 2-3. unsupervised study (its share of the time left after a reserve for the fixed steps)
            uclock = sclock = None
            tail0 = space.tail_fraction * budget.seconds if budget.limited else 0.0
            if budget.limited:
                u_seconds = budget.split(space.unsupervised_share, tail0)
                u_end = clock() + u_seconds
                budget.plan("study_unsupervised", u_seconds)
                uclock = StudyClock(lambda: u_end, clock=clock)
            with budget.phase("study_unsupervised"):
                unsup = run_study(ctx, "unsupervised", study_name, storage_obj, n_unsup, clock=uclock)
            summary["unsupervised"] = study_summary(unsup)
            with budget.phase("register_unsupervised"):
                summary["unsupervised_registry"] = register_best(unsup, UNSUPERVISED_NAME, ctx)

            # 4. pseudo-labels from the production model, by name
            with budget.phase("pseudo_labels"), \
                    tracking.child_run("pseudo-labels", tags={"porelab.level": "labels"}):
                labels, stats, info = model_pseudo_labels(ctx)
                log_pseudo_labels(stats, info, workdir / "pseudo_labels", labels)
            summary["pseudo_labels"] = stats

            # 5-6. supervised study until the end minus the measured cost of what follows it
            n_scans = len(ctx.cv) + (1 if ctx.hard is not None else 0)
            per_scan = budget.spent("pseudo_labels") / max(n_scans, 1)
            summary_scans = 2 * (2 if ctx.hard is not None else 1)     # the production models' curves
            if budget.limited:
                def sup_end() -> float:
                    # (planned before the study's clock exists: no trial has completed yet)
                    done = sclock.complete_seconds if sclock is not None else []
                    heur = done[0] if space.heuristic_comparison and done else None
                    return budget.end - tail_estimate(register=budget.spent("register_unsupervised"),
                                                      score_per_scan=per_scan, summary_scans=summary_scans,
                                                      heuristic=heur, fallback=tail0)
                budget.plan("study_supervised", sup_end() - clock())
                sclock = StudyClock(sup_end, clock=clock)
            with budget.phase("study_supervised"):
                sup = run_study(ctx, "supervised", study_name, storage_obj, n_sup, labels=labels, clock=sclock)
            summary["supervised"] = study_summary(sup)
            with budget.phase("register_supervised"):
                summary["supervised_registry"] = register_best(sup, SUPERVISED_NAME, ctx,
                                                               extra_meta={"labels": "pseudo-labels",
                                                                           "pseudo_labels": info})
            heur = None
            if space.heuristic_comparison:
                cost = sclock.complete_seconds[0] if sclock is not None and sclock.complete_seconds else 0.0
                fits = (not budget.limited) or budget.remaining() - per_scan * summary_scans >= cost
                budget.plan("heuristic_comparison", cost if budget.limited else None)
                if fits:
                    with budget.phase("heuristic_comparison"):
                        heur = heuristic_comparison(ctx, sup)
                else:
                    mlflow.set_tag("porelab.skipped.heuristic_comparison",
                                   f"needs ~{cost:.0f} s, {budget.remaining():.0f} s left in the budget")
            summary["heuristic_comparison"] = heur is not None

            # 7. tables, leaderboard, complexity, plots on the parent run
            with budget.phase("summary", planned=per_scan * summary_scans if budget.limited else None):
                log_tables(ctx, unsup, sup, heur)
                rows = log_leaderboard({"unsupervised": unsup, "supervised": sup})
                summary["leaderboard"] = rows
                nets = sorted({*best_per_net(unsup), *best_per_net(sup)})
                mlflow.log_text(csv_text(complexity_rows(ctx.profile, nets)), "tables/complexity.csv")
                log_registered_curves(ctx)
            seconds = budget.elapsed()
            tracking.log_params(budget.params())
            tracking.log_metrics({**budget.metrics(), "pipeline_seconds": seconds, "cost_seconds": seconds,
                                  "unsupervised_best_value": summary["unsupervised"]["best_value"],
                                  "supervised_best_value": summary["supervised"]["best_value"],
                                  **main_metrics(unsup, "unsupervised"), **main_metrics(sup, "supervised")})
            summary["seconds"] = seconds
            summary["phases"] = {k: {"planned": v.planned, "spent": v.spent} for k, v in budget.phases.items()}
            mlflow.log_dict(clean(summary), "summary.json")
        if launcher:
            mlflow.MlflowClient().set_tag(launcher, "porelab.search_run", summary["run_id"])
            mlflow.MlflowClient().set_tag(launcher, "mlflow.note.content",
                                          f"The search logged into experiment '{experiment}', run '{name}' "
                                          f"({summary['run_id']}).")
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return summary


def run_retrain(profile: str = "quick", data=None, labels=None, n_trials: int | None = None,
                study_name: str = "porelab", storage=None, seed: int = 0, *, time_budget=None,
                progress: bool = False) -> dict:
    """Steps 4-7 alone: pseudo-labels (or a label folder), supervised study, ``porelab-supervised``.

    Under a time budget (``time_budget`` as for :func:`run_search`) the study ends ``tail_fraction`` of the
    budget before its end; ``n_trials`` caps it."""
    from porelab import tracking
    from porelab.automl.budget import Budget, StudyClock, parse_minutes

    prof = get_profile(profile)
    budget = Budget.minutes(parse_minutes(time_budget, prof.search.time_budget))
    sclock = None
    if budget.limited:
        study_end = budget.end - prof.search.tail_fraction * budget.seconds
        sclock = StudyClock(lambda: study_end)
    storage_obj = _start(storage)
    with tempfile.TemporaryDirectory(prefix="porelab-retrain-") as tmp, tracking.sigterm_as_interrupt(), \
            tracking.parent_run("retrain", tags={"porelab.level": "search"}) as run:
        ctx = pipeline_context(prof, data, seed, workdir=tmp, progress=progress)
        tracking.log_params({"profile": prof.name, "seed": seed, "dataset_dir": str(ctx.dataset_root),
                             "label_source": labels or "pseudo-labels", "git_commit": tracking.git_commit()})
        if labels:
            lab, info = label_source(ctx, str(labels)), {"labels": str(labels)}
        else:
            with tracking.child_run("pseudo-labels", tags={"porelab.level": "labels"}):
                lab, stats, info = model_pseudo_labels(ctx)
                log_pseudo_labels(stats, info)
        sup = run_study(ctx, "supervised", study_name, storage_obj,
                        n_trials or prof.search.n_trials_supervised or None, labels=lab, clock=sclock)
        result = {"run_id": run.info.run_id, "supervised": study_summary(sup)}
        meta = {"labels": "pseudo-labels", "pseudo_labels": info}
        result["supervised_registry"] = register_best(sup, SUPERVISED_NAME, ctx, extra_meta=meta)
        heur = heuristic_comparison(ctx, sup) if prof.search.heuristic_comparison else None
        log_tables(ctx, None, sup, heur)
    return result


def run_cv(net: str, profile: str = "quick", data=None, labels: str = "truth", seed: int = 0, *,
           net_kwargs: dict | None = None, loss_params: dict | None = None, progress: bool = False) -> dict:
    """Cross-validate one configuration (an MLflow run with one nested run per fold); mean metrics.

    ``labels`` (supervised nets): ``truth``, ``alg1`` (Algorithm 1) or a folder of label files.
    """
    from porelab import tracking
    from porelab.crossval import default_net_kwargs
    from porelab.nets import check_name, is_supervised

    check_name(net)
    prof = get_profile(profile)
    _start()
    kwargs = {**default_net_kwargs(prof, net), **(net_kwargs or {})}
    with tempfile.TemporaryDirectory(prefix="porelab-cv-") as tmp, tracking.sigterm_as_interrupt(), \
            tracking.parent_run(f"cv-{net}", tags={"porelab.level": "cv"}) as run:
        ctx = pipeline_context(prof, data, seed, workdir=tmp, progress=progress)
        lab = label_source(ctx, labels) if is_supervised(net) else None
        tracking.log_params({"net": net, "net_kwargs": kwargs, "loss": loss_params or {}, "labels": labels,
                             "profile": prof.name, "seed": seed})
        folds, _ = run_folds(ctx, net, kwargs, loss_params or {}, labels=lab, seed=seed,
                             main_metric="val_ap_inj" if lab is not None else "val_ap_pp_inj",
                             hooks=tracked_folds(ctx, net))
        summary = mean_metrics(folds)
        tracking.log_metrics(summary)
    return {"run_id": run.info.run_id, "net": net, "folds": len(folds), "notes": ctx.notes,
            **{k: v for k, v in summary.items() if math.isfinite(v)}}


__all__ = [
    "SUPERVISED_NAME",
    "UNSUPERVISED_NAME",
    "classical_curves",
    "curve_scans",
    "ensure_dataset",
    "heuristic_comparison",
    "log_pseudo_labels",
    "log_registered_curves",
    "log_tables",
    "model_pseudo_labels",
    "pipeline_context",
    "register_best",
    "run_cv",
    "run_retrain",
    "run_search",
    "use_experiment",
]
