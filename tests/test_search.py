"""The AutoML pipeline end to end: the smoke run (registry, runs, tables), two workers on one study, a
stopped or killed worker, a re-run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest

from porelab import tracking
from porelab.automl import pipeline
from porelab.automl.study import make_study
from porelab.crossval import make_context


def _runs(**filters):
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    return [r for r in runs if all(r.data.tags.get(k) == v for k, v in filters.items())]


@pytest.fixture(scope="module")
def smoke_search(smoke_dataset, tmp_path_factory):
    """One smoke search (``run_search(profile="smoke")``) in its own store, shared by the tests below."""
    tmp = tmp_path_factory.mktemp("smoke_search")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
        mp.chdir(tmp)
        # no time budget here: one trial per study (the smoke cap), whatever the machine's load
        summary = pipeline.run_search("smoke", data=str(smoke_dataset.root),
                                      storage=f"sqlite:///{tmp / 'optuna.db'}", seed=0, time_budget="none")
        yield {"summary": summary, "dir": tmp}


def _fold_runs(parent_id: str) -> list:
    studies = {r.info.run_id for r in _runs(**{"porelab.level": "study"})
               if r.data.tags.get("mlflow.parentRunId") == parent_id}
    trials = {r.info.run_id for r in _runs(**{"porelab.level": "trial"})
              if r.data.tags["mlflow.parentRunId"] in studies}
    return [r for r in _runs(**{"porelab.level": "fold"}) if r.data.tags["mlflow.parentRunId"] in trials]


def test_search_registers_both_models_in_production_loadable_by_name(smoke_search, smoke_dataset):
    summary = smoke_search["summary"]
    client = mlflow.MlflowClient()
    scan = np.load(smoke_dataset.hard.scan).astype(np.float32)
    for name in (pipeline.UNSUPERVISED_NAME, pipeline.SUPERVISED_NAME):
        prod = client.get_model_version_by_alias(name, "production")
        assert prod.current_stage == "Production"
        for uri in (f"models:/{name}@production", f"models:/{name}/Production"):
            model = mlflow.pyfunc.load_model(uri)
            assert str(model.metadata.run_id) == summary["run_id"]
            out = model.predict(scan)
            assert out.shape == scan.shape and out.dtype == np.float32 and np.isfinite(out).all()
        meta = mlflow.pyfunc.load_model(f"models:/{name}@production").metadata.metadata
        assert {"threshold", "net", "profile", "metrics"} <= set(meta) and meta["profile"] == "smoke"
        pm = tracking.resolve_model(name)                      # bare name → Production version
        assert pm.kind == ("unsupervised" if name.endswith("unsupervised") else "supervised")
        assert pm.threshold == pytest.approx(meta["threshold"])
    assert summary["supervised"]["best_params"] == {"net": "unet", "alpha": 0.633, "beta": 0.1, "gamma": 1.0}


def test_search_runs_nest_study_trial_fold_with_fold_metrics(smoke_search, smoke_dataset):
    client = mlflow.MlflowClient()
    parent = client.get_run(smoke_search["summary"]["run_id"])
    studies = [r for r in _runs(**{"porelab.level": "study"})
               if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert {r.info.run_name for r in studies} >= {"study-unsupervised", "study-supervised"}
    folds = _fold_runs(parent.info.run_id)
    assert len(folds) == 2 * len(make_context("smoke", smoke_dataset.root, 0).folds)
    for f in folds:
        assert {"val_ap", "val_auc", "val_dice", "hard_ap", "hard_auc", "val_ap_alg1", "val_ap_inj",
                "injected_pores"} <= set(f.data.metrics)
        assert f.data.metrics["injected_pores"] >= 1       # smoke parts are small: what fits
        assert len(client.get_metric_history(f.info.run_id, "train_loss")) >= 1
    assert parent.data.tags["porelab.dataset_sha256"]
    assert parent.data.params["profile"] == "smoke"


def test_search_keeps_the_residual_that_won_on_validation(smoke_search):
    folds = _fold_runs(smoke_search["summary"]["run_id"])
    unsup_folds = [f for f in folds if "val_ap_pp" in f.data.metrics]
    assert len(unsup_folds) == len(folds) // 2
    for f in unsup_folds:      # both residuals scored on the injected pores; the fold keeps the better one
        m = f.data.metrics
        assert max(m["val_ap_pp_inj_abs"], m["val_ap_pp_inj_dark"]) == m["val_ap_pp_inj"]
    chosen = tracking.resolve_model(pipeline.UNSUPERVISED_NAME)
    choice = chosen.meta["residual_choice"]["val_ap_pp_inj"]
    assert chosen.meta["residual_choice"]["chosen"] == chosen.residual == max(choice, key=choice.get)


def test_search_logs_tables_and_plots_on_the_parent_run(smoke_search, smoke_dataset):
    client = mlflow.MlflowClient()
    run_id = smoke_search["summary"]["run_id"]
    arts = {a.path for a in client.list_artifacts(run_id, "tables")}
    assert {"tables/summary.csv", "tables/summary.md", "tables/complexity.csv"} <= arts
    optuna_arts = {a.path for a in client.list_artifacts(run_id, "optuna")}
    assert {"optuna/unsupervised_optimization_history.png", "optuna/supervised_trials.csv"} <= optuna_arts
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert plots == {f"plots/pr_roc_{s.name}.png" for s in (smoke_dataset.hard, smoke_dataset.cv[0])}
    md = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="tables/summary.md",
                                                  dst_path=str(smoke_search["dir"] / "dl"))).read_text()
    assert "black top-hat" in md and "Algorithm 1 labels (as score)" in md and "cevae" in md


def test_search_run_is_named_in_the_project_experiment_marked_as_model_training(smoke_search):
    """The MLflow UI: experiment `porelab` tagged as model training (MLflow 3 opens it on its runs), the
    parent run named after profile, study and seed, the headline metrics in the runs table."""
    client = mlflow.MlflowClient()
    run = client.get_run(smoke_search["summary"]["run_id"])
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.name == "porelab" and exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert run.info.run_name == "smoke-porelab-seed0"
    m = run.data.metrics
    assert {"unsupervised_val_ap", "unsupervised_val_ap_pp", "unsupervised_test_ap", "unsupervised_test_ap_pp",
            "supervised_val_ap", "supervised_test_ap", "unsupervised_val_ap_pp_inj", "supervised_val_ap_inj",
            "cost_seconds"} <= set(m)
    assert 0 <= m["unsupervised_val_ap_pp"] <= 1 and m["cost_seconds"] > 0
    assert {"spent_seconds_data", "spent_seconds_study_unsupervised", "spent_seconds_pseudo_labels",
            "spent_seconds_study_supervised", "spent_seconds_summary"} <= set(m)


def test_search_leaderboard_has_one_row_per_architecture_tried(smoke_search):
    import json

    client = mlflow.MlflowClient()
    run_id = smoke_search["summary"]["run_id"]
    assert {"leaderboard.json", "leaderboard.csv", "leaderboard.md"} <= {a.path for a in client.list_artifacts(run_id)}
    table = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="leaderboard.json", dst_path=str(smoke_search["dir"] / "lb"))).read_text())
    rows = [dict(zip(table["columns"], r)) for r in table["data"]]
    # smoke tries one architecture per family: ceVAE and UNet
    assert sorted((r["family"], r["net"]) for r in rows) == [("supervised", "unet"), ("unsupervised", "cevae")]
    for r in rows:
        assert 0 <= r["val_ap"] <= 1 and r["val_ap_ci95"] is not None and r["seconds"] > 0
    metrics = client.get_run(run_id).data.metrics
    assert "lb_unsupervised_cevae_val_ap_pp" in metrics and "lb_supervised_unet_test_ap" in metrics
    optuna_arts = {a.path for a in client.list_artifacts(run_id, "optuna")}
    assert {"optuna/unsupervised_intermediate_values.png", "optuna/supervised_intermediate_values.png"} <= optuna_arts
    csv = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="optuna/unsupervised_trials.csv",
                                                   dst_path=str(smoke_search["dir"] / "tr"))).read_text()
    header = csv.splitlines()[0].split(",")
    assert {"number", "state", "value", "seconds", "epochs_reported", "stopped_by"} <= set(header)


def test_search_reports_every_epoch_at_monotone_steps(smoke_search, smoke_dataset):
    """One intermediate value per epoch at step fold index × max_epochs + epoch."""
    import optuna

    prof = pipeline.get_profile("smoke")
    storage = f"sqlite:///{smoke_search['dir'] / 'optuna.db'}"
    n_folds = len(make_context("smoke", smoke_dataset.root, 0).folds)
    for kind in ("unsupervised", "supervised"):
        study = optuna.load_study(study_name=f"porelab-{kind}", storage=storage)
        max_epochs = getattr(prof, kind).max_epochs
        for t in study.trials:
            steps = sorted(t.intermediate_values)
            assert steps and steps == sorted(set(steps)) and steps[-1] < n_folds * max_epochs
            assert {s // max_epochs for s in steps} == set(range(n_folds))      # every fold reported


def test_segment_cli_by_registered_name(smoke_search, smoke_dataset):
    """`porelab segment --model NAME` resolves the Production version; an unknown name is one line, exit 2."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{smoke_search['dir'] / 'mlflow.db'}"}
    out = smoke_search["dir"] / "seg"
    res = subprocess.run([sys.executable, "-m", "porelab", "segment", str(smoke_dataset.hard.scan), "-o",
                          str(out), "--model", pipeline.SUPERVISED_NAME], capture_output=True, text=True,
                         check=False, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert {"score.npy", "mask.npy", "pores.csv"} <= {p.name for p in out.iterdir()}
    res = subprocess.run([sys.executable, "-m", "porelab", "segment", str(smoke_dataset.hard.scan), "-o",
                          str(smoke_search["dir"] / "seg2"), "--model", "porelab-nonexistent"],
                         capture_output=True, text=True, timeout=300, check=False, env=env)
    assert res.returncode == 2 and "porelab-unsupervised" in res.stderr and "Traceback" not in res.stderr


_WORKER = textwrap.dedent("""
    import sys
    from porelab import tracking
    from porelab.automl.study import run_study
    from porelab.config import get_profile
    from porelab.crossval import make_context
    data, storage, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    tracking.setup_mlflow()
    prof = get_profile("smoke").replace(folds=1)
    ctx = make_context(prof, data, 0)
    with tracking.sigterm_as_interrupt(), tracking.parent_run("worker"):
        run_study(ctx, "unsupervised", "shared", tracking.optuna_storage(storage), n)
""")


def _worker(tmp: Path, data, storage, n) -> subprocess.Popen:
    script = tmp / "worker.py"
    script.write_text(_WORKER)
    return subprocess.Popen([sys.executable, str(script), str(data), str(storage), str(n)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_two_workers_share_one_study(mlflow_env, smoke_dataset):
    """Two processes, one journal-file Optuna store, one MLflow sqlite DB created first: no trial lost
    (1 + 2 trials, every one finished)."""
    import optuna
    from optuna.trial import TrialState

    tracking.setup_mlflow()                                  # initialise the MLflow DB once, before workers
    storage = mlflow_env["dir"] / "optuna.log"
    procs = [_worker(mlflow_env["dir"], smoke_dataset.root, storage, n) for n in (1, 2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="shared-unsupervised", storage=tracking.optuna_storage(str(storage)))
    # every trial ran to its end: COMPLETE, or PRUNED by the median pruner (its MLflow run KILLED)
    states = [(t.number, t.state.name, t.system_attrs.get("fail_reason")) for t in study.trials]
    assert len(study.trials) == 3, states
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials), states
    assert len({t.user_attrs["pid"] for t in study.trials}) == 2
    for t in study.trials:
        run = mlflow.get_run(t.user_attrs["mlflow_run_id"])
        if t.state == TrialState.COMPLETE:
            assert run.info.status == "FINISHED" and "val_ap_pp" in run.data.metrics
        else:
            assert run.info.status == "KILLED"


_BLOCKED_SEARCH = textwrap.dedent("""
    import sys
    import time
    from pathlib import Path

    from porelab import crossval

    ready = Path(sys.argv[1])

    def blocked_train_fold(*args, **kwargs):
        # stands in for a long fold: the search, study, trial and fold runs exist, the trial is RUNNING
        ready.write_text("in fold 0")
        while True:
            time.sleep(0.05)

    crossval.train_fold = blocked_train_fold
    from porelab.cli import main

    main(["search", "--profile", "smoke", "--quiet", *sys.argv[2:]], prog_name="porelab")
""")


def _blocked_search(tmp: Path, data, storage) -> tuple[subprocess.Popen, Path]:
    """`porelab search` in a subprocess that stops inside its first fold (readiness file: ``ready``)."""
    script, ready = tmp / "blocked_search.py", tmp / "ready"
    script.write_text(_BLOCKED_SEARCH)
    proc = subprocess.Popen([sys.executable, str(script), str(ready), "--data", str(data), "--storage",
                             str(storage), "--study-name", "s1", "--n-trials", "2"],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"the worker never reached its first fold: {err[-3000:]}")
        time.sleep(0.1)
    return proc, ready


def _levels(status: str) -> dict[str, str]:
    return {r.data.tags.get("porelab.level"): r.info.status for r in _runs() if r.info.status == status}


def test_sigterm_mid_trial_is_one_line_non_zero_and_leaves_nothing_running(mlflow_env, smoke_dataset):
    """SIGTERM while a fold trains: exit 143 with one line and no traceback, the trial FAIL, every run of
    the tree KILLED; the same study name resumes."""
    import optuna
    from optuna.trial import TrialState

    tracking.setup_mlflow()
    storage = mlflow_env["dir"] / "optuna.log"
    proc, _ = _blocked_search(mlflow_env["dir"], smoke_dataset.root, storage)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    said = [line for line in err.splitlines() if line.startswith("porelab:")]
    assert len(said) == 1 and "SIGTERM" in said[0], err[-3000:]
    study = optuna.load_study(study_name="s1-unsupervised", storage=tracking.optuna_storage(str(storage)))
    assert [t.state for t in study.trials] == [TrialState.FAIL]
    t = study.trials[0]
    assert mlflow.get_run(t.user_attrs["mlflow_run_id"]).info.status == "KILLED"
    assert mlflow.get_run(t.user_attrs["mlflow_fold_0"]).info.status == "KILLED"
    assert _levels("RUNNING") == {}
    assert {"search", "study", "trial", "fold"} <= set(_levels("KILLED"))
    again = make_study("s1-unsupervised", tracking.optuna_storage(str(storage)), seed=0)
    assert len(again.trials) == len(study.trials)


def test_hard_killed_worker_is_cleaned_up_on_resume(mlflow_env, smoke_dataset):
    """kill -9 while a fold trains leaves a RUNNING trial and RUNNING search/study/trial/fold runs; the
    next worker's start marks the trial FAIL and ends every one of those runs KILLED."""
    from optuna.trial import TrialState

    tracking.setup_mlflow()
    storage = mlflow_env["dir"] / "optuna.log"
    proc, _ = _blocked_search(mlflow_env["dir"], smoke_dataset.root, storage)
    proc.kill()
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert {"search", "study", "trial", "fold"} <= set(_levels("RUNNING"))
    study = make_study("s1-unsupervised", tracking.optuna_storage(str(storage)), seed=0)
    assert tracking.fail_orphaned_trials(study) == [0]
    assert study.trials[0].state == TrialState.FAIL
    assert _levels("RUNNING") == {}
    killed = [r for r in _runs() if r.info.status == "KILLED"]
    assert len(killed) >= 4 and all("porelab.closed_by" in r.data.tags for r in killed)


@pytest.mark.slow
def test_rerunning_the_search_keeps_one_production_per_name(mlflow_env, smoke_dataset):
    """The smoke search twice with one study name: after each run, exactly one Production version per
    name with its alias, one version per registered trial, and no Production version moved back."""
    client = mlflow.MlflowClient()
    before: dict = {}
    for _ in range(2):
        pipeline.run_search("smoke", data=str(smoke_dataset.root), storage=mlflow_env["optuna_storage"],
                          seed=0, study_name="s1", n_trials=1)
        for name in (pipeline.UNSUPERVISED_NAME, pipeline.SUPERVISED_NAME):
            versions = client.search_model_versions(f"name='{name}'")
            stages = {str(v.version): v.current_stage for v in versions}
            prod = [v for v, st in stages.items() if st == "Production"]
            assert len(prod) == 1, stages
            assert str(client.get_model_version_by_alias(name, "production").version) == prod[0]
            trial_runs = [v.tags["porelab.trial_run"] for v in versions]
            assert len(set(trial_runs)) == len(trial_runs), trial_runs
            for v, st in before.get(name, {}).items():
                if st == "Production":
                    assert stages[v] in ("Production", "Archived"), stages
            before[name] = stages
