"""MLflow/Optuna edge: stores, nested runs, registry promotion policy, model resolution errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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
    assert tracking.policy_for(policy, name)["metric"] == "val_ap_pp"
    assert tracking.policy_for(policy, "porelab-supervised")["metric"] == "val_ap"

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
    assert client.get_model_version(name, str(v3)).tags["val_ap_pp"] == "0.7"

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
    with pytest.raises(ModelError, match="no such folder"):
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
    assert client.get_run(run.info.run_id).info.status == "FAILED"
