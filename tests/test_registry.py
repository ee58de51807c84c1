"""Registry on re-runs, resumes and concurrent workers: one version per trial, exactly one Production.

Fast: a temporary SQLite store, a tiny pyfunc instead of a trained net.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from types import SimpleNamespace

import mlflow
import mlflow.pyfunc
import numpy as np
import pytest

from porelab import tracking
from porelab.tracking.registry import _transition

NAME = "porelab-unsupervised"


class ScaleModel(mlflow.pyfunc.PythonModel):
    """score = k * scan: a pyfunc that needs no trained network."""

    def __init__(self, k):
        self.k = k

    def predict(self, context, model_input, params=None):
        return np.asarray(model_input, dtype=np.float32) * self.k


def _log(k: float = 1.0, **kwargs) -> str:
    """Log a ScaleModel on a fresh run; return its model URI (``models:/m-…``)."""
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="m", python_model=ScaleModel(k), pip_requirements=["numpy"],
                                       **kwargs)
    return info.model_uri


def _state(name: str = NAME) -> dict:
    """{version: (stage, sorted aliases)} and the production / staging alias targets."""
    client = mlflow.MlflowClient()
    rm = client.get_registered_model(name)
    aliases = {a: str(v) for a, v in (rm.aliases or {}).items()}
    versions = {str(v.version): v.current_stage for v in client.search_model_versions(f"name='{name}'")}
    return {"versions": versions, "production": aliases.get("production"), "staging": aliases.get("staging")}


def _one_production(state: dict) -> str:
    prod = [v for v, stage in state["versions"].items() if stage == "Production"]
    assert len(prod) == 1, state
    assert state["production"] == prod[0], state
    return prod[0]


def _tags(run: str, net: str = "cevae") -> dict:
    return {"porelab.trial_run": run, "porelab.net": net}


def _no_new_model() -> str:
    raise AssertionError("a registered trial must not be logged again")


@pytest.fixture
def store(mlflow_env):
    tracking.setup_mlflow("registry")
    return mlflow_env


def test_registering_the_same_trial_twice_gives_one_version_and_keeps_production(store):
    uri = _log()
    v, reused = tracking.register_version(NAME, lambda: uri, _tags("run-a"))
    assert (v, reused) == ("1", False)
    first = tracking.promote(NAME, v, 0.5)
    assert first["promoted"] and first["stage"] == "Production"
    again, reused = tracking.register_version(NAME, _no_new_model, _tags("run-a"))
    assert (again, reused) == ("1", True)
    second = tracking.promote(NAME, again, 0.5)
    assert second["stage"] == "Production" and not second["promoted"] and second["previous"] == "1"
    state = _state()
    assert state["versions"] == {"1": "Production"} and state["production"] == "1"
    assert state["staging"] is None
    out = mlflow.pyfunc.load_model(f"models:/{NAME}/Production").predict(np.ones((2, 2, 2), np.float32))
    assert out.shape == (2, 2, 2)


def test_promote_again_never_demotes_production_and_repairs_a_split_state(store):
    uri = _log()
    v1, _ = tracking.register_version(NAME, lambda: uri, _tags("run-a"))
    v2, _ = tracking.register_version(NAME, lambda: uri, _tags("run-b"))
    tracking.promote(NAME, v1, 0.6)
    tracking.promote(NAME, v2, 0.4)
    for _ in range(2):
        assert tracking.promote(NAME, v1, 0.6)["stage"] == "Production"
        assert tracking.promote(NAME, v2, 0.4)["stage"] == "Staging"
    assert _state() == {"versions": {"1": "Production", "2": "Staging"}, "production": "1", "staging": "2"}

    # the state an earlier promote() left: Production moved to Staging, both aliases on it
    client = mlflow.MlflowClient()
    _transition(client, NAME, v1, "Staging")
    client.set_registered_model_alias(NAME, "staging", v1)
    result = tracking.promote(NAME, v1, 0.6)
    assert result["stage"] == "Production"
    assert _state() == {"versions": {"1": "Production", "2": "Staging"}, "production": "1", "staging": "2"}


def test_better_version_takes_production_and_archives_the_old_worse_stays_staging(store):
    uri = _log()
    v1, _ = tracking.register_version(NAME, lambda: uri, _tags("run-a"))
    tracking.promote(NAME, v1, 0.5)
    v2, _ = tracking.register_version(NAME, lambda: uri, _tags("run-b"))
    worse = tracking.promote(NAME, v2, 0.4)
    assert not worse["promoted"] and worse["stage"] == "Staging" and worse["previous_value"] == 0.5
    v3, _ = tracking.register_version(NAME, lambda: uri, _tags("run-c"))
    better = tracking.promote(NAME, v3, 0.7)
    assert better["promoted"] and better["previous"] == "1" and better["stage"] == "Production"
    assert _state() == {"versions": {"1": "Archived", "2": "Staging", "3": "Production"},
                        "production": "3", "staging": "2"}
    client = mlflow.MlflowClient()
    assert client.get_model_version(NAME, "1").tags["porelab.archived_by"] == "3"
    # re-running the older, worse trials changes nothing and moves nothing backwards
    assert tracking.promote(NAME, v1, 0.5)["stage"] == "Archived"
    assert tracking.promote(NAME, v2, 0.4)["stage"] == "Staging"
    assert _state()["production"] == "3"
    # a rejected Production version hands Production back to the best remaining one
    client.set_model_version_tag(NAME, "3", "porelab.rejected", "bad on new scans")
    assert tracking.reconcile(NAME) == "1"
    assert _one_production(_state()) == "1"


def _race(n: int, work) -> list:
    """Run ``work(i)`` in ``n`` threads at once; return the results (re-raise the first error)."""
    results, errors = [None] * n, []

    def run(i):
        try:
            results[i] = work(i)
        except BaseException as exc:   # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    if errors:
        raise errors[0]
    return results


def test_two_workers_racing_on_one_trial_end_with_one_version_and_one_production(store):
    """Both look the trial up and find nothing before either creates (a barrier forces it): the later
    version is deleted, both promote the same one, one Production version with its alias."""
    uri = _log()
    barrier = threading.Barrier(2)

    def log_after_both_looked():
        barrier.wait(timeout=60)
        return uri

    def worker(i):
        version, reused = tracking.register_version(NAME, log_after_both_looked, _tags("run-a"))
        return version, reused, tracking.promote(NAME, version, 0.5)["stage"]

    results = _race(2, worker)
    assert {r[0] for r in results} == {"1"}, results
    assert sorted(r[1] for r in results) == [False, True], results       # the loser reused the winner's
    assert [r[2] for r in results] == ["Production", "Production"]
    state = _state()
    assert state["versions"] == {"1": "Production"} and state["production"] == "1"
    assert mlflow.MlflowClient().get_model_version(NAME, "1").tags["porelab.net"] == "cevae"


def test_concurrent_promotions_converge_to_the_policy_champion(store):
    """Four trials registered and promoted at once (any interleaving): Production ends on the version the
    policy picks from the tags alone (v3: the first to beat its predecessor), alias in step."""
    uri = _log()
    values = [0.5, 0.4, 0.7, 0.6]
    versions = [tracking.register_version(NAME, lambda: uri, _tags(f"run-{i}"))[0] for i in range(4)]
    barrier = threading.Barrier(4)

    def worker(i):
        barrier.wait(timeout=60)
        return tracking.promote(NAME, versions[i], values[i])

    _race(4, worker)
    state = _state()
    assert _one_production(state) == "3", state
    assert "Production" not in {state["versions"][v] for v in ("1", "2", "4")}
    assert state["staging"] is not None and state["versions"][state["staging"]] == "Staging"


def test_two_processes_register_and_promote_the_same_trial(store):
    """Separate processes (as two `mlflow run` workers): one version, one Production."""
    uri = _log()
    script = (
        "import sys\n"
        "from porelab import tracking\n"
        "tracking.setup_mlflow('registry')\n"
        "v, reused = tracking.register_version(sys.argv[1], lambda: sys.argv[2], "
        "{'porelab.trial_run': 'run-a', 'porelab.net': 'cevae'})\n"
        "print(v, reused, tracking.promote(sys.argv[1], v, 0.5)['stage'])\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, NAME, uri], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        outs.append(out.split())
    assert {o[0] for o in outs} == {"1"} and {o[2] for o in outs} == {"Production"}, outs
    assert _state()["versions"] == {"1": "Production"}


def test_a_version_created_without_tags_gets_them_when_reused(store):
    # killed right after "Created version '1'": no tag at all; the logged model's metadata names the trial
    with mlflow.start_run():
        mlflow.pyfunc.log_model(name="m", python_model=ScaleModel(1.0), pip_requirements=["numpy"],
                                registered_model_name=NAME, metadata={"trial_run": "run-a"})
    # killed between two tags: the trial's tag but not the net's
    uri = _log()
    client = mlflow.MlflowClient()
    v2 = client.create_model_version(NAME, uri, tags={"porelab.trial_run": "run-b"}).version
    assert str(v2) == "2"
    for run, expected in (("run-a", "1"), ("run-b", "2")):
        version, reused = tracking.register_version(NAME, _no_new_model, {**_tags(run), "porelab.trial": "0"})
        assert (version, reused) == (expected, True)
        tags = client.get_model_version(NAME, version).tags
        assert tags["porelab.trial_run"] == run and tags["porelab.net"] == "cevae" and tags["porelab.trial"] == "0"
    assert sorted(_state()["versions"]) == ["1", "2"]


def test_duplicates_of_one_trial_from_before_are_archived(store):
    """Two versions of one trial (left by an older porelab): the older is kept, the other archived."""
    uri = _log()
    client = mlflow.MlflowClient()
    tracking.register_version(NAME, lambda: uri, _tags("run-a"))
    client.create_model_version(NAME, uri, tags=_tags("run-a"))
    tracking.promote(NAME, "2", 0.5)             # the duplicate became Production
    version, reused = tracking.register_version(NAME, _no_new_model, _tags("run-a"))
    assert (version, reused) == ("1", True)
    tracking.promote(NAME, version, 0.5)
    state = _state()
    assert state["versions"] == {"1": "Production", "2": "Archived"} and state["production"] == "1"


def test_register_best_twice_keeps_one_version_in_production(store, tmp_path):
    """register_best of the same study twice (a re-run with the same study name)."""
    import optuna

    from porelab.automl.pipeline import register_best
    from porelab.model import PoreModel
    from porelab.nets import build
    from porelab.normalise import Normalisation

    raw = np.random.default_rng(0).random((16, 16, 16)).astype(np.float32)
    model = PoreModel.from_trained(build("vae", scale=0.125, patch_size=16), "vae", Normalisation.fit(raw),
                                   "smoke", patch=16)
    model.save(tmp_path / "m")
    study = optuna.create_study(direction="maximize")
    with mlflow.start_run() as trial_run:
        pass
    trial = study.ask()
    trial.suggest_float("kl", 1e-6, 1e-3, log=True)
    for k, v in {"mlflow_run_id": trial_run.info.run_id, "model_dir": str(tmp_path / "m"), "net": "vae",
                 "fold_metrics": [{"val_ap_pp_inj": 0.6}]}.items():
        trial.set_user_attr(k, v)
    study.tell(trial, 0.6)
    ctx = SimpleNamespace(policy=tracking.load_policy(), profile=SimpleNamespace(name="smoke"), seed=0)
    with mlflow.start_run():
        first = register_best(study, NAME, ctx)
    with mlflow.start_run():
        second = register_best(study, NAME, ctx)
    assert (first["version"], first["reused"], first["stage"]) == ("1", False, "Production")
    assert (second["version"], second["reused"], second["stage"]) == ("1", True, "Production")
    assert _state() == {"versions": {"1": "Production"}, "production": "1", "staging": None}
    tags = mlflow.MlflowClient().get_model_version(NAME, "1").tags
    assert tags["porelab.trial_run"] == trial_run.info.run_id and tags["porelab.net"] == "vae"
    assert tags["val_ap_pp_inj"] == "0.6"          # the policy's label-free metric


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    return int(done.stdout)


def test_runs_of_a_dead_worker_are_closed_on_resume(store):
    """Every RUNNING run of the search tree whose worker (host, pid, start time) is gone ends KILLED;
    runs of live workers and of other hosts are left alone."""
    client = mlflow.MlflowClient()
    me = tracking.worker_tag()
    dead = {**me, "pid": _dead_pid()}
    dead.pop("started", None)
    reused_pid = {**me, "pid": os.getppid(), "started": "1"}     # a live pid that started later
    other_host = {**me, "host": socket.gethostname() + "-elsewhere", "pid": _dead_pid()}

    def running(worker, parent=None):
        tags = {f"porelab.{k}": str(v) for k, v in worker.items()}
        if parent:
            tags["mlflow.parentRunId"] = parent
        run = client.create_run(mlflow.get_experiment_by_name("registry").experiment_id, tags=tags)
        return run.info.run_id

    search_run = running(dead)
    study_run = running(dead, search_run)
    fold_run = running(dead, study_run)
    live = running(me)
    elsewhere = running(other_host)
    recycled = running(reused_pid)
    closed = tracking.fail_orphaned_runs()
    assert set(closed) == {search_run, study_run, fold_run, recycled}
    for rid in closed:
        run = client.get_run(rid)
        assert run.info.status == "KILLED" and "gone" in run.data.tags["porelab.closed_by"]
    assert client.get_run(live).info.status == "RUNNING"
    assert client.get_run(elsewhere).info.status == "RUNNING"
    assert tracking.fail_orphaned_runs() == []
