"""Many search workers, one study, one registry, on real servers: PostgreSQL and an ``mlflow server``.

Each test gets its own PostgreSQL databases (one for MLflow, one for Optuna: never one for both) and its
own tracking server (PostgreSQL backend store, proxied artifacts in a folder), all on 127.0.0.1. The
workers are ``python -m porelab search`` processes, each in its own folder, as on separate machines: they
share only the two URLs, the Optuna storage given as the plain ``postgresql://`` form a user types.

Skipped when the PostgreSQL server programs (``initdb``, ``pg_ctl``) are not installed; as root they run
as the ``postgres`` user (``initdb`` refuses root). Servers are stopped in fixture finalisers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.cluster

PG_USER = "porelab"
NAMES = ("porelab-unsupervised", "porelab-supervised")
FINISHED = {"COMPLETE", "PRUNED", "FAIL"}


# ------------------------------------------------------------------------------------------- helpers
def _pg_bin() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: on PATH, else Debian's ``/usr/lib/postgresql/<v>/bin``."""
    found = shutil.which("initdb")
    candidates = [Path(found).resolve().parent] if found else []      # (a link on PATH: its real folder)
    versions = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(versions, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
                         reverse=True)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else f"({path.name} not written)"


def _clean_env(**extra: str) -> dict:
    """This process's environment without MLflow variables earlier tests may have exported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update({"OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", **extra})
    return env


# ------------------------------------------------------------------------------------------- servers
@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of its own on 127.0.0.1 (trust authentication, user ``porelab``); ``.create(db)``
    makes a database and returns its plain ``postgresql://`` URL."""
    bin_dir = _pg_bin()
    if bin_dir is None or not (bin_dir / "createdb").is_file():
        pytest.skip("PostgreSQL server programs (initdb, pg_ctl, createdb) not found: "
                    "apt-get install postgresql")
    pytest.importorskip("psycopg", reason="the PostgreSQL driver psycopg 3: pip install -e '.[cluster]'")
    as_postgres: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="porelab-pg-"))       # under /tmp: the postgres user can reach it
    if os.geteuid() == 0:
        try:
            import pwd

            pw = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            pytest.skip("running as root and there is no 'postgres' user to run initdb as")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        runuser = shutil.which("runuser")
        as_postgres = [runuser, "-u", "postgres", "--"] if runuser else None
        if as_postgres is None:
            shutil.rmtree(root)
            pytest.skip("running as root and runuser is missing (initdb refuses root)")
    data, log = root / "data", root / "server.log"
    pg_ctl = [*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data)]
    started = False
    try:
        subprocess.run([*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", PG_USER,
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True, timeout=120)
        for _ in range(3):                  # a port found free can be taken before the server binds it
            port = _free_port()
            opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
            res = subprocess.run([*pg_ctl, "-l", str(log), "-w", "-t", "60", "-o", opts, "start"],
                                 check=False, capture_output=True, text=True, timeout=120)
            if res.returncode == 0:
                started = True
                break
        assert started, f"PostgreSQL did not start: {res.stderr}\n{_tail(log)}"

        def create(db: str) -> str:
            subprocess.run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER, db],
                           check=True, capture_output=True, timeout=60)
            return f"postgresql://{PG_USER}@127.0.0.1:{port}/{db}"

        yield SimpleNamespace(port=port, create=create, log=log)
    finally:
        if started:
            stop = subprocess.run([*pg_ctl, "-m", "fast", "-w", "-t", "60", "stop"], check=False,
                                  capture_output=True, timeout=120)
            if stop.returncode != 0:
                subprocess.run([*pg_ctl, "-m", "immediate", "stop"], check=False, capture_output=True,
                               timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def _stop(proc: subprocess.Popen) -> None:
    """End a server started in its own session: SIGTERM to its process group, SIGKILL after 30 s."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@contextlib.contextmanager
def _tracking_server(postgres, folder: Path, name: str):
    """Fresh databases ``mlflow_<name>`` and ``optuna_<name>`` and an ``mlflow server`` on the first
    (artifacts proxied into ``folder/artifacts``). ``.tracking`` is the http URI, ``.optuna`` the plain
    ``postgresql://`` URL of the second."""
    mlflow_db = postgres.create(f"mlflow_{name}")
    optuna_db = postgres.create(f"optuna_{name}")
    port = _free_port()
    log = folder / "mlflow-server.log"
    backend = mlflow_db.replace("postgresql://", "postgresql+psycopg://", 1)
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
                                 "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1",
                                 "--port", str(port), "--workers", "2"],
                                cwd=folder, stdout=out, stderr=subprocess.STDOUT,
                                # (no job runner: its seven huey processes serve GenAI features only)
                                env=_clean_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
                                start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=5) as res:
                    if res.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not come up: {_tail(log)}")
            time.sleep(0.5)
        yield SimpleNamespace(tracking=uri, optuna=optuna_db, dir=folder, log=log)
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def servers(postgres, tmp_path_factory):
    """One tracking server and Optuna database shared by the tests of this module that use distinct study
    and registered-model names (a server start costs tens of seconds on two cores)."""
    with _tracking_server(postgres, tmp_path_factory.mktemp("servers"), "shared") as srv:
        yield srv


@pytest.fixture
def own_servers(postgres, tmp_path):
    """A tracking server and Optuna database for one test alone (it checks the whole registry)."""
    with _tracking_server(postgres, tmp_path, "own") as srv:
        yield srv


def _client(uri: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _all_runs(client) -> list:
    ids = [e.experiment_id for e in client.search_experiments()]
    runs, token = [], None
    for _ in range(100):
        page = client.search_runs(ids, max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            break
    return runs


def _registry_state(client, name: str) -> dict:
    versions = client.search_model_versions(f"name='{name}'")
    aliases = {a: str(v) for a, v in (client.get_registered_model(name).aliases or {}).items()}
    return {"stages": {str(v.version): v.current_stage for v in versions},
            "tags": {str(v.version): dict(v.tags) for v in versions}, "production": aliases.get("production")}


# ------------------------------------------------------------------------------------- many workers
def _search(folder: Path, servers, data, study: str, n_trials: int) -> subprocess.Popen:
    """One worker in its own folder (as on its own machine): ``python -m porelab search`` on the servers;
    stdout and stderr go to files there."""
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "porelab", "search", "--profile", "smoke", "--quiet", "--data", str(data),
           "--study-name", study, "--storage", servers.optuna, "--n-trials", str(n_trials),
           "--time-budget", "none"]         # exactly n_trials per study, however loaded the machine is
    with open(folder / "stdout", "w") as out, open(folder / "stderr", "w") as err:
        return subprocess.Popen(cmd, cwd=folder, stdout=out, stderr=err,
                                env=_clean_env(MLFLOW_TRACKING_URI=servers.tracking))


def _wait_running_in_fold(storage_url: str, study_name: str, pid: int, workers: dict, timeout: float = 900):
    """Poll the Optuna storage until worker ``pid`` has a RUNNING trial whose first fold run has started
    (the trial's ``pid`` and ``mlflow_fold_0`` user attributes); fail if any worker exits first."""
    import optuna
    from optuna.trial import TrialState

    storage = optuna.storages.RDBStorage(storage_url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for folder, proc in workers.items():
                if proc.poll() is not None:
                    pytest.fail(f"worker {folder.name} ended ({proc.returncode}) before the kill: "
                                f"{_tail(folder / 'stderr')}")
            try:
                study = optuna.load_study(study_name=study_name, storage=storage)
            except KeyError:            # no worker has created the study yet
                study = None
            if study is not None:
                for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                    if str(t.user_attrs.get("pid")) == str(pid) and "mlflow_fold_0" in t.user_attrs:
                        return t.number
            time.sleep(0.5)
        pytest.fail(f"worker {pid} never had a trial in its first fold within {timeout} s")
    finally:
        storage.engine.dispose()


def _check_study(storage_url: str, name: str, expected: int, client) -> dict:
    """Trials 0..expected-1 each once, every one finished; one MLflow trial run per trial number."""
    import optuna

    storage = optuna.storages.RDBStorage(storage_url)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        states = [(t.number, t.state.name, t.user_attrs.get("pid")) for t in trials]
        assert sorted(t.number for t in trials) == list(range(expected)), states
        assert {t.state.name for t in trials} <= FINISHED, states
        runs = [r for r in _all_runs(client)
                if r.data.tags.get("porelab.level") == "trial" and r.data.tags.get("optuna.study") == name]
        numbers = [int(r.data.tags["optuna.trial"]) for r in runs]
        assert sorted(numbers) == list(range(expected)), numbers
        for t in trials:
            run_id = t.user_attrs.get("mlflow_run_id")
            assert run_id and client.get_run(run_id).info.status != "RUNNING", (t.number, t.state.name)
        best = study.best_trial
        return {"trials": {t.number: t for t in trials}, "best": best}
    finally:
        storage.engine.dispose()


def _check_registry(client, name: str, study: dict) -> dict:
    """Every version tagged with its trial run, one version per trial, one Production with the alias, and
    Production on a trial as good as the study's best."""
    state = _registry_state(client, name)
    assert state["stages"], f"nothing registered as {name}"
    trial_runs = [tags.get("porelab.trial_run") for tags in state["tags"].values()]
    assert all(trial_runs), state["tags"]
    assert len(set(trial_runs)) == len(trial_runs), state["tags"]
    prod = [v for v, stage in state["stages"].items() if stage == "Production"]
    assert len(prod) == 1, state["stages"]
    assert state["production"] == prod[0], state
    trial = study["trials"][int(state["tags"][prod[0]]["porelab.trial"])]
    assert trial.value == pytest.approx(study["best"].value), (trial.number, study["best"].number)
    return state


def _many_workers_one_study(servers, data, study: str, *, workers: int, n_trials: int) -> dict:
    """``workers`` searches at once on ``study``, one of them killed (SIGKILL) in its first fold, then a
    resume worker (1 trial per study); returns what the checks counted."""
    from optuna.trial import TrialState

    started = time.monotonic()
    procs = {}
    for i in range(workers):
        folder = servers.dir / study / f"worker-{i}"
        procs[folder] = _search(folder, servers, data, study, n_trials)
    victim = procs[servers.dir / study / "worker-0"]
    storage_url = servers.optuna.replace("postgresql://", "postgresql+psycopg://", 1)
    killed_trial = _wait_running_in_fold(storage_url, f"{study}-unsupervised", victim.pid, procs)
    victim.kill()
    assert victim.wait(timeout=120) == -signal.SIGKILL     # reaped: its pid is gone, not a zombie
    for folder, proc in procs.items():
        if proc is victim:
            continue
        assert proc.wait(timeout=1800) == 0, _tail(folder / "stderr")
    resume = _search(servers.dir / study / "resume", servers, data, study, 1)
    assert resume.wait(timeout=1800) == 0, _tail(servers.dir / study / "resume" / "stderr")
    seconds = time.monotonic() - started

    client = _client(servers.tracking)
    survivors = workers - 1
    unsup = _check_study(storage_url, f"{study}-unsupervised",
                         survivors * n_trials + 1 + 1, client)        # + the killed trial + the resume's
    sup = _check_study(storage_url, f"{study}-supervised", survivors * n_trials + 1, client)
    killed = unsup["trials"][killed_trial]
    assert killed.state == TrialState.FAIL and str(killed.user_attrs["pid"]) == str(victim.pid)
    assert not any(str(t.user_attrs.get("pid")) == str(victim.pid) for t in sup["trials"].values())

    # the killed worker's runs (search, study, trial, fold) exist and none is left RUNNING
    victim_runs = [r for r in _all_runs(client) if r.data.tags.get("porelab.pid") == str(victim.pid)
                   and r.data.tags.get("porelab.host") == socket.gethostname()]
    levels = {r.data.tags.get("porelab.level") for r in victim_runs}
    assert {"search", "study", "trial", "fold"} <= levels, levels
    assert all(r.info.status == "KILLED" for r in victim_runs), \
        [(r.data.tags.get("porelab.level"), r.info.status) for r in victim_runs]
    assert all("porelab.closed_by" in r.data.tags for r in victim_runs)
    assert not [r for r in _all_runs(client) if r.info.status == "RUNNING"]

    registry = {name: _check_registry(client, name, s) for name, s in zip(NAMES, (unsup, sup))}
    return {"seconds": seconds, "trials": (len(unsup["trials"]), len(sup["trials"])),
            "versions": {n: len(s["stages"]) for n, s in registry.items()}}


@pytest.mark.timeout(1800)
def test_two_workers_and_a_killed_one_share_one_study_on_the_servers(servers, smoke_dataset):
    """Two workers at once (1 trial each), one killed in its first fold, then a resume worker: 3
    unsupervised and 2 supervised trials, each once and finished, the killed worker's runs KILLED, one
    Production version per name with its alias."""
    counted = _many_workers_one_study(servers, smoke_dataset.root, "small", workers=2, n_trials=1)
    assert counted["trials"] == (3, 2), counted


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_three_workers_and_a_killed_one_share_one_study_on_the_servers(own_servers, smoke_dataset):
    """Three workers at once (2 trials each), one killed in its first fold, then a resume worker: 6
    unsupervised and 5 supervised trials, the same checks."""
    counted = _many_workers_one_study(own_servers, smoke_dataset.root, "full", workers=3, n_trials=2)
    assert counted["trials"] == (6, 5), counted


# -------------------------------------------------------------------------- an empty Optuna database
_OPEN_AT_ONCE = textwrap.dedent("""
    import sys
    import time
    from pathlib import Path

    import optuna

    from porelab import tracking

    gate, me, n, url = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    (gate / me).touch()
    deadline = time.monotonic() + 120
    while len(list(gate.iterdir())) < n:         # every worker has imported everything: open at once
        if time.monotonic() > deadline:
            sys.exit("the other workers never came")
        time.sleep(0.005)
    study = optuna.create_study(study_name="s", storage=tracking.optuna_storage(url), load_if_exists=True)
    print(study._study_id)
""")


def test_workers_opening_an_empty_optuna_database_at_once_all_succeed(postgres, tmp_path):
    """Four processes open an empty PostgreSQL Optuna database at the same moment (Optuna alone then fails
    on CREATE TABLE in all but one): every one succeeds and all share one study."""
    url = postgres.create(f"optuna_{tmp_path.name.replace('-', '_').lower()[-30:]}")
    gate = tmp_path / "gate"
    gate.mkdir()
    env = _clean_env(MLFLOW_TRACKING_URI="http://127.0.0.1:9")        # no MLflow store is touched
    procs = [subprocess.Popen([sys.executable, "-c", _OPEN_AT_ONCE, str(gate), str(i), "4", url],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for i in range(4)]
    ids = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        ids.append(out.split()[-1])
    assert len(set(ids)) == 1, ids


_EXPERIMENT_AT_ONCE = textwrap.dedent("""
    import sys
    import time
    from pathlib import Path

    import mlflow

    from porelab import tracking

    gate, me, n, name = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    (gate / me).touch()
    deadline = time.monotonic() + 120
    while len(list(gate.iterdir())) < n:
        if time.monotonic() > deadline:
            sys.exit("the other workers never came")
        time.sleep(0.005)
    tracking.setup_mlflow(name)
    with mlflow.start_run() as run:
        pass
    print(run.info.experiment_id)
""")


def test_workers_creating_the_experiment_at_once_log_into_it(servers, tmp_path):
    """Four processes select a new experiment on the tracking server at the same moment: all runs land in
    it (MLflow's set_experiment returns without selecting it in a process that lost the creation race)."""
    gate = tmp_path / "gate"
    gate.mkdir()
    env = _clean_env(MLFLOW_TRACKING_URI=servers.tracking)
    procs = [subprocess.Popen([sys.executable, "-c", _EXPERIMENT_AT_ONCE, str(gate), str(i), "4", "at-once"],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for i in range(4)]
    ids = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        ids.append(next(line for line in reversed(out.splitlines()) if line.strip().isdigit()))
    expected = _client(servers.tracking).get_experiment_by_name("at-once").experiment_id
    assert ids == [expected] * 4, (ids, expected)


# ---------------------------------------------------------------------------------- registry race
_RACER = textwrap.dedent("""
    import sys
    import time
    from pathlib import Path

    from porelab import tracking

    name, model_uri, gate, me = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]
    value = float(sys.argv[5])

    def barrier(step, n=2, timeout=120):
        # every racer writes its file, then waits until all have: the next call starts at the same moment
        (gate / f"{step}-{me}").touch()
        deadline = time.monotonic() + timeout
        while len(list(gate.glob(f"{step}-*"))) < n:
            if time.monotonic() > deadline:
                sys.exit(f"barrier {step}: the other racer never came")
            time.sleep(0.01)

    def log_after_both_looked():
        # both have looked the shared trial up and found no version: both create one
        barrier("create")
        return model_uri

    tracking.setup_mlflow("registry")
    shared, reused = tracking.register_version(name, log_after_both_looked,
                                          {"porelab.trial_run": "run-shared", "porelab.net": "cevae"})
    own, _ = tracking.register_version(name, lambda: model_uri,
                                       {"porelab.trial_run": f"run-{me}", "porelab.net": "cevae"})
    barrier("promote-shared")
    first = tracking.promote(name, shared, 0.5)["stage"]
    barrier("promote-own")
    second = tracking.promote(name, own, value)["stage"]
    print(shared, own, first, second, reused)
""")

_LOG_MODEL = textwrap.dedent("""
    import mlflow
    import mlflow.pyfunc
    import numpy as np

    from porelab import tracking


    class Scale(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return np.asarray(model_input, dtype=np.float32)


    tracking.setup_mlflow("registry")
    with mlflow.start_run():
        print(mlflow.pyfunc.log_model(name="m", python_model=Scale(), pip_requirements=["numpy"]).model_uri)
""")


def test_two_processes_register_and_promote_at_once_against_the_server(servers, tmp_path):
    """Two processes on the tracking server, forced by barriers to create a version of the same trial at
    once and to promote at once, then each its own trial (0.6 and 0.7): one version per trial, the
    duplicate deleted, Production on the 0.7 trial with the alias, the rest Staging or Archived."""
    name = "porelab-race"
    env = _clean_env(MLFLOW_TRACKING_URI=servers.tracking)
    logged = subprocess.run([sys.executable, "-c", _LOG_MODEL], cwd=tmp_path, env=env, check=False,
                            capture_output=True, text=True, timeout=300)
    assert logged.returncode == 0, logged.stderr[-3000:]
    model_uri = next(line for line in logged.stdout.splitlines() if line.startswith("models:/"))
    gate = tmp_path / "gate"
    gate.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, name, model_uri, str(gate), me, value],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for me, value in (("a", "0.6"), ("b", "0.7"))]
    outs = {}
    for me, p in zip("ab", procs):
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        outs[me] = out.strip().splitlines()[-1].split()
    shared = {o[0] for o in outs.values()}
    assert len(shared) == 1, outs                          # both ended on one version of the shared trial
    assert sorted(o[4] for o in outs.values()) == ["False", "True"], outs      # the loser took the winner's
    assert {o[2] for o in outs.values()} == {"Production"}, outs

    client = _client(servers.tracking)
    state = _registry_state(client, name)
    by_trial = {tags["porelab.trial_run"]: v for v, tags in state["tags"].items()}
    assert sorted(by_trial) == ["run-a", "run-b", "run-shared"], state["tags"]     # the duplicate is gone
    assert len(state["stages"]) == 3, state
    assert by_trial["run-shared"] == shared.pop()
    assert by_trial["run-a"] == outs["a"][1] and by_trial["run-b"] == outs["b"][1]
    prod = [v for v, stage in state["stages"].items() if stage == "Production"]
    assert prod == [by_trial["run-b"]] and state["production"] == prod[0], state
    assert {state["stages"][by_trial[t]] for t in ("run-a", "run-shared")} <= {"Staging", "Archived"}, state
    mv = client.get_model_version_by_alias(name, "production")
    assert str(mv.version) == by_trial["run-b"]
