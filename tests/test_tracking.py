"""MLflow/Optuna edge: stores, nested runs, registry promotion policy, model resolution errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import pytest

from porelab import tracking
from porelab.errors import ConfigError, ModelError


class ScaleModel(mlflow.pyfunc.PythonModel):
    """A tiny pyfunc (score = k * scan) so registry tests need no trained network."""

    def __init__(self, k):
        self.k = k

    def predict(self, context, model_input, params=None):
        return np.asarray(model_input, dtype=np.float32) * self.k


def _register(name, k):
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="m", python_model=ScaleModel(k), registered_model_name=name,
                                       signature=tracking.model_signature(), pip_requirements=["numpy"])
    return info.registered_model_version


def test_default_stores_live_beside_mlflow_db(mlflow_env):
    d = mlflow_env["dir"]
    assert tracking.tracking_uri() == mlflow_env["tracking_uri"]
    assert tracking.store_dir() == d
    assert tracking.optuna_storage_url("") == f"sqlite:///{d / 'optuna.db'}"
    assert tracking.optuna_storage_url("runs/study.log") == str(d / "runs" / "study.log")
    with pytest.raises(ConfigError, match="MLflow's database"):
        tracking.optuna_storage_url(mlflow_env["tracking_uri"])
    with pytest.raises(ConfigError, match="journal file"):
        tracking.optuna_storage_url("study.txt")


def test_default_tracking_uri_is_cwd_sqlite(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlruns" / "0").mkdir(parents=True)          # a stray legacy file store must not hijack it
    (tmp_path / "mlruns" / "0" / "meta.yaml").write_text("name: x\n")
    uri = tracking.setup_mlflow()
    assert uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    with mlflow.start_run() as run:
        mlflow.log_metric("x", 1.0)
    assert (tmp_path / "mlflow.db").exists()
    assert mlflow.get_run(run.info.run_id).data.metrics["x"] == 1.0


def test_nested_runs_and_failed_status(mlflow_env):
    tracking.setup_mlflow("t")
    with tracking.parent_run("search") as parent, tracking.child_run("study") as study:
        with tracking.child_run("trial-0", params={"a": {"b": 1}}) as trial:
            tracking.log_metrics({"val_ap": 0.5, "nan": float("nan"), "flag": True}, step=0)
        with pytest.raises(RuntimeError), tracking.child_run("trial-1") as bad:
            raise RuntimeError("boom")
    client = mlflow.MlflowClient()
    t = client.get_run(trial.info.run_id)
    assert t.data.tags["mlflow.parentRunId"] == study.info.run_id
    assert client.get_run(study.info.run_id).data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert t.data.params == {"a.b": "1"}
    assert set(t.data.metrics) == {"val_ap"}
    assert client.get_run(bad.info.run_id).info.status == "FAILED"
    assert t.info.status == "FINISHED"


def test_promotion_policy_stages_and_aliases(mlflow_env):
    tracking.setup_mlflow("reg")
    name = "porelab-unsupervised"
    policy = tracking.load_policy()
    from porelab.automl.spaces import MAIN_METRIC

    assert tracking.policy_for(policy, name)["metric"] == MAIN_METRIC["unsupervised"]
    assert tracking.policy_for(policy, "porelab-supervised")["metric"] == MAIN_METRIC["supervised"]

    v1 = str(_register(name, 1.0))
    r1 = tracking.promote(name, v1, 0.5, policy=policy)
    assert r1["promoted"] and r1["previous"] is None and r1["stage"] == "Production"

    v2 = str(_register(name, 2.0))
    r2 = tracking.promote(name, v2, 0.4, policy=policy)            # worse: stays in Staging
    assert not r2["promoted"] and r2["previous"] == str(v1) and r2["previous_value"] == 0.5

    v3 = str(_register(name, 3.0))
    r3 = tracking.promote(name, v3, 0.7, policy=policy)            # better: Production, v1 archived
    assert r3["promoted"] and r3["previous"] == str(v1)

    client = mlflow.MlflowClient()
    stages = {str(v.version): v.current_stage for v in client.search_model_versions(f"name='{name}'")}
    assert stages == {str(v1): "Archived", str(v2): "Staging", str(v3): "Production"}
    assert str(client.get_model_version_by_alias(name, "production").version) == v3
    assert str(client.get_model_version_by_alias(name, "staging").version) == v2
    assert client.get_model_version(name, str(v3)).tags["val_ap_pp_inj"] == "0.7"

    x = np.ones((4, 5, 6), np.float32)
    for uri in (f"models:/{name}@production", f"models:/{name}/Production", f"models:/{name}/production"):
        out = mlflow.pyfunc.load_model(uri).predict(x)
        assert out.shape == x.shape and np.allclose(out, 3.0), uri
    assert str(tracking.resolve_version(name).version) == v3
    assert str(tracking.resolve_version(f"models:/{name}/{v2}").version) == v2
    assert str(tracking.resolve_version(f"models:/{name}@staging").version) == v2

    # a stricter policy refuses a small gain
    v4 = _register(name, 4.0)
    strict = dict(policy, min_improvement=0.1)
    assert not tracking.promote(name, v4, 0.75, policy=strict)["promoted"]
    assert str(client.get_model_version_by_alias(name, "production").version) == v3


def test_resolve_errors_name_what_exists(mlflow_env):
    tracking.setup_mlflow("reg")
    v = _register("only-staging", 1.0)
    mlflow.MlflowClient().set_registered_model_alias("only-staging", "staging", v)
    listing = r"no registered model 'porelab-nope'.*only-staging \[v1 None @staging\]"
    with pytest.raises(ModelError, match=listing):
        tracking.resolve_version("porelab-nope")
    with pytest.raises(ModelError, match="no Production version.*only-staging"):
        tracking.resolve_version("only-staging")
    with pytest.raises(ModelError, match="matches no version"):
        tracking.resolve_version("models:/only-staging/7")
    with pytest.raises(ModelError, match="does not resolve"):
        tracking.resolve_version("models:/only-staging@production")
    with pytest.raises(ModelError, match="model folder not found"):
        tracking.resolve_model("./missing/model")


def test_policy_file_errors(tmp_path):
    bad = tmp_path / "policy.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="invalid JSON"):
        tracking.load_policy(bad)
    bad.write_text(json.dumps({"metric": "val_ap", "greater_is_better": False, "min_improvement": 0.0}))
    assert tracking.load_policy(bad)["greater_is_better"] is False


def test_orphaned_trial_of_a_dead_worker_is_failed(mlflow_env):
    import optuna
    from optuna.trial import TrialState

    tracking.setup_mlflow("orphans")
    storage = tracking.optuna_storage(str(mlflow_env["dir"] / "study.log"))
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    pid = int(dead.stdout)
    with mlflow.start_run() as run:
        pass
    client = mlflow.MlflowClient()
    client.update_run(run.info.run_id, status="RUNNING")
    trial = study.ask()
    trial.set_user_attr("host", tracking.worker_tag()["host"])
    trial.set_user_attr("pid", pid)
    trial.set_user_attr("mlflow_run_id", run.info.run_id)
    alive = study.ask()                                     # this process's own running trial is left alone
    alive.set_user_attr("host", tracking.worker_tag()["host"])
    alive.set_user_attr("pid", os.getpid())
    assert tracking.fail_orphaned_trials(study) == [trial.number]
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {trial.number: TrialState.FAIL, alive.number: TrialState.RUNNING}
    assert client.get_run(run.info.run_id).info.status == "KILLED"


def test_relative_sqlite_storage_lives_beside_mlflow_db_and_is_checked(mlflow_env, tmp_path, monkeypatch):
    """`mlflow run` runs entry points in the project folder: a relative sqlite:/// path is taken beside
    mlflow.db (as the docs say), and then the "not MLflow's database" check applies."""
    d = mlflow_env["dir"]
    elsewhere = tmp_path / "checkout"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert tracking.optuna_storage_url("sqlite:///x.db") == f"sqlite:///{d / 'x.db'}"
    assert tracking.optuna_storage_url("study.log") == str(d / "study.log")
    with pytest.raises(ConfigError, match="MLflow's database"):
        tracking.optuna_storage_url("sqlite:///mlflow.db")
    with pytest.raises(ConfigError, match="not a database URL SQLAlchemy knows"):
        tracking.optuna_storage_url("garbage://x")


def test_bad_storage_url_is_one_line_exit_2(mlflow_env):
    repo = Path(tracking.repo_dir())
    res = subprocess.run([sys.executable, str(repo / "entrypoints" / "search.py"), "--profile", "smoke",
                          "--storage", "garbage://x"], capture_output=True, text=True, timeout=300,
                         cwd=repo, check=False)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("porelab:")]
    assert len(lines) == 1 and "garbage://x" in lines[0] and "Traceback" not in res.stderr


def test_registered_name_without_a_store_says_so_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError, match=r"no MLflow store here \(mlflow.db not found in .*\); set "
                                         "MLFLOW_TRACKING_URI or give a model folder"):
        tracking.resolve_model("porelab-supervised")
    assert not (tmp_path / "mlflow.db").exists()
    np.save(tmp_path / "scan.npy", np.zeros((8, 8, 8), np.float32))
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    res = subprocess.run([sys.executable, "-m", "porelab", "segment", "scan.npy", "-o", "out", "--model",
                          "porelab-supervised"], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env=env, check=False)
    assert res.returncode == 2 and "no MLflow store here" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_moved_store_names_the_missing_artifacts(tmp_path, monkeypatch):
    old = tmp_path / "old"
    old.mkdir()
    monkeypatch.chdir(old)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{old / 'mlflow.db'}")
    tracking.setup_mlflow("moved")
    v = _register("porelab-unsupervised", 1.0)
    tracking.promote("porelab-unsupervised", v, 0.5)
    new = tmp_path / "new"
    shutil.move(str(old), str(new))
    monkeypatch.chdir(new)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{new / 'mlflow.db'}")
    with pytest.raises(ModelError, match=r"v1: its artifacts are missing \(expected at .*old/mlruns"):
        tracking.resolve_model("porelab-unsupervised")


def test_sigterm_in_a_trial_fails_it_kills_its_runs_and_logs_no_traceback(mlflow_env, capfd):
    import optuna
    from optuna.trial import TrialState

    tracking.setup_mlflow("signals")
    study = optuna.create_study(direction="maximize")

    def objective(trial):
        with tracking.child_run("trial") as run:
            trial.set_user_attr("run", run.info.run_id)
            with tracking.child_run("fold-0") as fold:
                trial.set_user_attr("fold", fold.info.run_id)
                signal.raise_signal(signal.SIGTERM)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:     # the handler raises as soon as it runs
                    time.sleep(0.01)
        return 1.0

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(tracking.Interrupted) as info, tracking.sigterm_as_interrupt(), \
            tracking.parent_run("search") as parent:
        study.optimize(objective, n_trials=3, catch=(Exception,), callbacks=[tracking.check_interrupted])
    assert info.value.exit_code == 143 and "SIGTERM" in info.value.describe()
    assert signal.getsignal(signal.SIGTERM) is before
    assert [t.state for t in study.trials] == [TrialState.FAIL]
    client = mlflow.MlflowClient()
    t = study.trials[0]
    for rid in (parent.info.run_id, t.user_attrs["run"], t.user_attrs["fold"]):
        assert client.get_run(rid).info.status == "KILLED"
    assert "Traceback" not in capfd.readouterr().err


def test_a_swallowed_interrupt_still_stops_the_worker(mlflow_env):
    """Python drops an exception raised inside a finaliser; the next run boundary raises it again, and
    the block re-raises at its end at the latest."""
    tracking.setup_mlflow("signals")
    with pytest.raises(tracking.Interrupted), tracking.sigterm_as_interrupt():
        try:
            signal.raise_signal(signal.SIGTERM)
            time.sleep(30)
        except KeyboardInterrupt:
            pass                                      # swallowed, as in a finaliser
        with pytest.raises(tracking.Interrupted), tracking.child_run("never"):
            pass
    with pytest.raises(tracking.Interrupted), tracking.sigterm_as_interrupt():
        try:
            signal.raise_signal(signal.SIGTERM)
            time.sleep(30)
        except KeyboardInterrupt:
            pass
    tracking.check_interrupted()                      # outside the block: nothing pending
