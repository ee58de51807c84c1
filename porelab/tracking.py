"""MLflow at the edge: stores, nested runs, the pyfunc model, registry promotion and model resolution.

Everything that talks to MLflow (and the Optuna storage set-up) lives here, so the science core stays free
of bookkeeping (design note §1, §3, §5).

Stores
------
* MLflow: ``MLFLOW_TRACKING_URI`` if set (a tracking server, a database URL), else
  ``sqlite:///<cwd>/mlflow.db`` (MLflow 3's own default, set explicitly so a stray ``./mlruns`` never
  hijacks it). :func:`setup_mlflow` initialises the database once, before any worker starts.
* Optuna: :func:`optuna_storage` -- ``""`` means ``sqlite:///<dir of mlflow.db>/optuna.db``; any RDB URL
  (``postgresql://…``) or a journal file path ending in ``.log`` is accepted. MLflow and Optuna never share
  one database file (both keep an ``alembic_version`` table).

Registry
--------
Registered models are :class:`PorePyfunc` models whose artifact is a saved :class:`porelab.model.PoreModel`
folder: ``predict(float32 (Z, Y, X)) -> float32 (Z, Y, X)`` voxel scores. :func:`register_version` keeps one
version per trial (tags set at creation; a check-and-set resolves two workers racing). :func:`promote`
applies ``registry/policy.json`` by recomputing the registered model from its versions' tags: Production
(alias ``production``) on the first version that beat its predecessor, the version it replaced Archived,
the others in Staging (alias ``staging``); promoting again is a no-op, and concurrent workers converge.
Stages are deprecated in MLflow 3 but still work; aliases are kept in step so ``models:/name@production``
and ``models:/name/Production`` resolve to the same version.

Runs and signals
----------------
Every run carries its worker's identity (:func:`run_worker_tags`); :func:`fail_orphaned_runs` ends KILLED
the RUNNING runs of processes of this host that are gone. :func:`sigterm_as_interrupt` turns SIGTERM and
SIGINT into :class:`Interrupted`: trials end FAIL, runs KILLED, the command exits 128 + signal.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import math
import os
import re
import signal
import socket
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

with warnings.catch_warnings():   # mlflow.pyfunc warns about type hints of its own classes on import
    warnings.simplefilter("ignore", UserWarning)
    import mlflow
    import mlflow.pyfunc

from porelab.errors import ConfigError, ModelError

DEFAULT_EXPERIMENT = "porelab"
MODEL_ARTIFACT = "porelab_model"   # key of the PoreModel folder among the pyfunc artifacts
STAGE_OF_ALIAS = {"staging": "Staging", "production": "Production"}
DEFAULT_POLICY = {
    "metric": "val_ap_pp",
    "greater_is_better": True,
    "min_improvement": 0.0,
    "pseudo_label_min_voxels": 4,
    "models": {
        "porelab-unsupervised": {"metric": "val_ap_pp"},
        "porelab-supervised": {"metric": "val_ap"},
    },
}
_PIP_PACKAGES = ("torch", "numpy", "scipy", "scikit-image", "torchio", "click", "tqdm", "matplotlib",
                 "scikit-learn", "tifffile", "SimpleITK")


# --------------------------------------------------------------------------------------------- stores
def tracking_uri() -> str:
    """The MLflow tracking URI: ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<cwd>/mlflow.db``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return uri or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other URIs or in-memory databases)."""
    if not uri.startswith("sqlite:///"):
        return None
    rest = uri[len("sqlite:///"):].split("?", 1)[0]
    if not rest or rest == ":memory:":
        return None
    return Path("/" + rest.lstrip("/")) if uri.startswith("sqlite:////") else Path(rest).resolve()


def store_dir() -> Path:
    """The folder that holds the local stores: the folder of the MLflow sqlite file, else the cwd.

    ``mlflow run`` starts entry points inside the project folder but passes the caller's tracking URI, so
    defaults (Optuna store, simulated data) land beside ``mlflow.db`` where the user ran the command.
    """
    db = _sqlite_file(tracking_uri())
    return db.parent if db is not None else Path.cwd().resolve()


def setup_mlflow(experiment: str | None = DEFAULT_EXPERIMENT) -> str:
    """Point MLflow at :func:`tracking_uri` explicitly, create the database once, select the experiment.

    Inside ``mlflow run`` (``MLFLOW_RUN_ID`` set) the experiment is left alone; else ``experiment`` (or
    ``MLFLOW_EXPERIMENT_NAME``) is selected, created if needed.
    Returns the tracking URI.
    """
    uri = tracking_uri()
    db = _sqlite_file(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")   # one bar per model load is noise
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)     # (set_registry_uri exports MLFLOW_REGISTRY_URI: never read it back)
    mlflow.MlflowClient().search_experiments(max_results=1)   # creates / migrates the schema once
    # (mlflow.set_experiment itself exports MLFLOW_EXPERIMENT_ID, so only MLFLOW_RUN_ID marks `mlflow run`)
    if experiment and not os.environ.get("MLFLOW_RUN_ID"):
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or experiment)
    return uri


def _beside_store(path: str) -> Path:
    """``path`` made absolute: relative paths are taken relative to :func:`store_dir`."""
    p = Path(path).expanduser()
    return (p if p.is_absolute() else store_dir() / p).resolve()


def _hide_password(url: str) -> str:
    return re.sub(r"(://[^:/@]+:)[^@/]*@", r"\1***@", url)


def optuna_storage_url(spec: str | None = None) -> str:
    """Normalise an Optuna storage spec: ``""``/None → ``sqlite:///<store_dir>/optuna.db``.

    Relative paths (a journal file ``x.log``, ``sqlite:///x.db``) are taken relative to the folder of the
    MLflow store (:func:`store_dir`), not the cwd: ``mlflow run`` runs entry points in the project folder.
    Raises ``ConfigError`` if it names the MLflow database file, or is neither a journal path nor a
    database URL SQLAlchemy can open (unknown scheme, driver not installed).
    """
    spec = (spec or "").strip()
    if not spec:
        return f"sqlite:///{store_dir() / 'optuna.db'}"
    if "://" not in spec:
        if not spec.endswith(".log"):
            raise ConfigError(f"storage {spec!r}: give a database URL (sqlite:///…, postgresql://…) "
                              "or a journal file path ending in .log")
        return str(_beside_store(spec))
    if spec.startswith("sqlite:///") and not spec.startswith("sqlite:////"):
        rest, sep, query = spec[len("sqlite:///"):].partition("?")
        if rest and rest != ":memory:":
            spec = f"sqlite:///{_beside_store(rest)}{sep}{query}"
    _check_database_url(spec)
    mine, theirs = _sqlite_file(spec), _sqlite_file(tracking_uri())
    if spec == tracking_uri() or (mine is not None and theirs is not None and mine == theirs):
        raise ConfigError(f"storage {spec!r} is MLflow's database; Optuna needs its own file "
                          "(both keep an alembic_version table)")
    return spec


def _check_database_url(url: str) -> None:
    """``ConfigError`` unless SQLAlchemy parses ``url`` and has its dialect and driver."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    shown = _hide_password(url)
    try:
        dialect = make_url(url).get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise ConfigError(f"storage {shown!r}: not a database URL SQLAlchemy knows ({_first_line(exc)}); "
                          "give sqlite:///…, postgresql+psycopg2://…, mysql+pymysql://… or a journal "
                          "file path ending in .log") from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        raise ConfigError(f"storage {shown!r}: its database driver is not installed "
                          f"({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def optuna_storage(spec: str | None = None, *, heartbeat_interval: int = 60, grace_period: int = 180):
    """An Optuna storage object for :func:`optuna_storage_url` ``(spec)``.

    RDB storages get a heartbeat (a worker killed mid-trial leaves a trial that the next worker marks
    FAIL after ``grace_period`` s) and, for SQLite, a generous lock timeout. A ``.log`` path is a
    ``JournalFileBackend`` (safe for several processes on one machine or on NFS).
    """
    import optuna
    from optuna.storages.journal import JournalFileBackend

    url = optuna_storage_url(spec)
    if "://" not in url:
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(url))
    kwargs = {}
    if url.startswith("sqlite"):
        db = _sqlite_file(url)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    from sqlalchemy.exc import SQLAlchemyError

    with warnings.catch_warnings():   # the heartbeat arguments are marked experimental
        warnings.simplefilter("ignore")
        try:
            return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_interval,
                                              grace_period=grace_period, **kwargs)
        except SQLAlchemyError as exc:   # unreachable server, wrong password, not an Optuna database
            raise ConfigError(f"storage {_hide_password(url)!r}: cannot open it "
                              f"({type(exc).__name__}: {_first_line(exc)})") from None


# ---------------------------------------------------------------------------------------------- runs
def _end_status(exc: BaseException | None) -> str:
    """MLflow status of a run left by ``exc``: FINISHED, KILLED (pruned, Ctrl-C, SIGTERM) or FAILED."""
    if exc is None:
        return "FINISHED"
    if isinstance(exc, KeyboardInterrupt) or type(exc).__name__ == "TrialPruned":
        return "KILLED"
    return "FAILED"


def run_worker_tags() -> dict[str, str]:
    """Tags that name the process owning a run (``porelab.host``, ``porelab.pid``, …).

    :func:`fail_orphaned_runs` closes RUNNING runs whose process no longer exists.
    """
    return {f"porelab.{k}": str(v) for k, v in worker_tag().items()}


@contextlib.contextmanager
def parent_run(run_name: str = "search", tags: dict | None = None) -> Iterator[mlflow.ActiveRun]:
    """The top run: the one ``mlflow run`` started (``MLFLOW_RUN_ID``), else a new run.

    Tagged with this worker (:func:`run_worker_tags`). Ends KILLED on Ctrl-C / SIGTERM (see
    :func:`sigterm_as_interrupt`), FAILED on any other exception.
    """
    if mlflow.active_run() is not None:
        run = mlflow.active_run()
        mlflow.set_tags({**(tags or {}), **run_worker_tags()})
        yield run
        return
    run = mlflow.start_run(run_name=None if os.environ.get("MLFLOW_RUN_ID") else run_name)
    error = None
    try:
        mlflow.set_tags({**(tags or {}), **run_worker_tags()})
        yield run
        check_interrupted()
    except BaseException as exc:
        error = exc
        raise
    finally:
        mlflow.end_run(_end_status(error))


@contextlib.contextmanager
def child_run(run_name: str, tags: dict | None = None, params: dict | None = None):
    """A nested run under the active run (tagged with this worker).

    Ends FINISHED, FAILED on error, KILLED when Optuna prunes the trial or on Ctrl-C / SIGTERM.
    """
    check_interrupted()
    run = mlflow.start_run(run_name=run_name, nested=True, tags={**(tags or {}), **run_worker_tags()})
    error = None
    try:
        if params:
            log_params(params)
        yield run
        check_interrupted()
    except BaseException as exc:
        error = exc
        if type(exc).__name__ == "TrialPruned":
            mlflow.set_tag("pruned", "true")
        raise
    finally:
        mlflow.end_run(_end_status(error))


def log_params(params: dict) -> None:
    """Log params, truncating long values and flattening nested dicts as ``a.b``."""
    flat = {}

    def walk(prefix, d):
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(key + ".", v)
            else:
                flat[key] = str(v)[:5000]

    walk("", params)
    if flat:
        mlflow.log_params(flat)


def log_metrics(metrics: dict, step: int | None = None) -> None:
    """Log the finite numeric entries of ``metrics``."""
    clean = {k: float(v) for k, v in metrics.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}
    if clean:
        mlflow.log_metrics(clean, step=step)


def log_figure(fig, name: str) -> None:
    """Log a matplotlib figure as a PNG artifact and close it."""
    import matplotlib.pyplot as plt

    mlflow.log_figure(fig, name)
    plt.close(fig)


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT received inside :func:`sigterm_as_interrupt`; ``exit_code`` is 128 + signal."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def describe(self) -> str:
        return (f"stopped by {signal.Signals(self.signum).name}: the running trial is marked FAIL and its "
                "MLflow runs KILLED; run again with the same study name to resume")


_received: list[int] = []     # signals received inside sigterm_as_interrupt (main thread only)


def check_interrupted(*_args) -> None:
    """Raise :class:`Interrupted` if a signal arrived inside :func:`sigterm_as_interrupt`.

    The signal handler raises at once, but an exception raised while a finaliser or a garbage-collector
    callback runs is printed and dropped by Python; these checks (run boundaries, epochs, after each Optuna
    trial: usable as an Optuna callback) make sure a stopped worker stops anyway.
    """
    if _received:
        raise Interrupted(_received[0])


def _on_signal(signum, frame):
    first = not _received
    _received.append(signum)
    if first:                # a second signal while unwinding must not interrupt the clean-up
        raise Interrupted(signum)


class _QuietInterruptedTrials(logging.Filter):
    """Drop Optuna's "Trial N failed …" warnings (with a 40-line traceback) for a trial stopped by a
    signal: the command prints one line instead."""

    def filter(self, record):
        return not (_received and record.levelno >= logging.WARNING
                    and record.getMessage().startswith("Trial "))


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM (and SIGINT) into :class:`Interrupted`, a ``KeyboardInterrupt``, while the block runs.

    A worker stopped by a scheduler (``kill``) or Ctrl-C then unwinds: Optuna records the running trial as
    FAIL (without logging its traceback), the MLflow runs end KILLED, and the block re-raises
    :class:`Interrupted` even if the first one was swallowed on the way, so the process never exits 0.
    Main thread only (elsewhere a no-op).
    """
    try:
        prev_term = signal.signal(signal.SIGTERM, _on_signal)
    except ValueError:   # not the main thread
        yield
        return
    if prev_term is _on_signal:   # nested: the outer block handles it
        yield
        return
    prev_int = signal.signal(signal.SIGINT, _on_signal)
    quiet = _QuietInterruptedTrials()
    optuna_log = logging.getLogger("optuna.study._optimize")
    optuna_log.addFilter(quiet)
    _received.clear()
    try:
        yield
        check_interrupted()
    finally:
        signal.signal(signal.SIGTERM, prev_term)
        signal.signal(signal.SIGINT, prev_int)
        optuna_log.removeFilter(quiet)
        _received.clear()


def _proc_start(pid: int) -> str | None:
    """Start time of process ``pid`` in clock ticks since boot (Linux ``/proc``), else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def worker_tag() -> dict:
    """This worker: host, pid, the process's start time and pid namespace (when the OS tells them).

    Stored on each trial (user attributes) and run (tags ``porelab.*``) to find orphans after a hard kill;
    the start time tells a reused pid apart, the namespace a container sharing the host name.
    """
    tag = {"host": socket.gethostname(), "pid": os.getpid()}
    started, pidns = _proc_start(os.getpid()), _pid_namespace()
    if started is not None:
        tag["started"] = started
    if pidns is not None:
        tag["pidns"] = pidns
    return tag


def _worker_gone(attrs: dict) -> bool:
    """True when ``attrs`` (a :func:`worker_tag`, values possibly strings) names a process of this host and
    pid namespace that no longer exists (or whose pid now belongs to a younger process)."""
    if attrs.get("host") != socket.gethostname():
        return False
    pidns = attrs.get("pidns")
    if pidns and pidns != _pid_namespace():
        return False
    try:
        pid = int(attrs.get("pid", -1))
    except (TypeError, ValueError):
        return False
    if pid <= 0 or pid == os.getpid():
        return False
    if not _pid_alive(pid):
        return True
    started = attrs.get("started")
    now = _proc_start(pid)
    return started is not None and now is not None and str(started) != now


def fail_orphaned_runs(client=None) -> list[str]:
    """End KILLED every RUNNING MLflow run whose worker (tags of :func:`run_worker_tags`) is gone.

    Covers every level of the search tree (search, study, trial, fold, …) in every experiment. Only runs
    of this host can be judged; a run of another machine stays RUNNING until its worker ends it. Each
    closed run gets the tag ``porelab.closed_by``. Returns the run ids.
    """
    client = client or mlflow.MlflowClient()
    host = socket.gethostname().replace("'", "")
    exp_ids, token = [], None
    while True:
        page = client.search_experiments(max_results=1000, page_token=token)
        exp_ids += [e.experiment_id for e in page]
        token = page.token
        if not token:
            break
    closed = []
    flt = f"attributes.status = 'RUNNING' and tags.`porelab.host` = '{host}'"
    for i in range(0, len(exp_ids), 100):
        token = None
        while True:
            page = client.search_runs(exp_ids[i:i + 100], flt, max_results=1000, page_token=token)
            for run in page:
                tags = run.data.tags
                attrs = {k[len("porelab."):]: v for k, v in tags.items()
                         if k in ("porelab.host", "porelab.pid", "porelab.started", "porelab.pidns")}
                if not _worker_gone(attrs):
                    continue
                with contextlib.suppress(Exception):
                    client.set_tag(run.info.run_id, "porelab.closed_by",
                                   f"worker {attrs['host']}:{attrs['pid']} gone; closed by pid {os.getpid()}")
                    client.set_terminated(run.info.run_id, "KILLED")
                    closed.append(run.info.run_id)
            token = page.token
            if not token:
                break
    return closed


def fail_orphaned_trials(study) -> list[int]:
    """Mark FAIL the RUNNING trials whose worker is gone; end their MLflow runs KILLED. Returns numbers.

    Two mechanisms: the RDB heartbeat (any machine; after the grace period) and, for every storage, a
    trial started on this host by a process that no longer exists (``kill -9``, power loss). Then every
    other RUNNING MLflow run of a dead worker of this host is ended too (:func:`fail_orphaned_runs`).
    """
    import optuna
    from optuna.trial import TrialState

    failed = []
    storage = study._storage
    from optuna.storages._heartbeat import is_heartbeat_enabled

    if is_heartbeat_enabled(storage):
        with warnings.catch_warnings(), contextlib.suppress(Exception):
            warnings.simplefilter("ignore")
            before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
            optuna.storages.fail_stale_trials(study)
            after = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
            failed += sorted(before - after)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number in failed or not _worker_gone(t.user_attrs):
            continue
        with contextlib.suppress(Exception):
            if storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                failed.append(t.number)
    client = mlflow.MlflowClient()
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if t.number in failed:
            for key in ("mlflow_run_id",) + tuple(k for k in t.user_attrs if k.startswith("mlflow_fold_")):
                run_id = t.user_attrs.get(key)
                with contextlib.suppress(Exception):
                    if run_id and client.get_run(run_id).info.status == "RUNNING":
                        client.set_tag(run_id, "porelab.closed_by", f"trial {t.number} of a dead worker")
                        client.set_terminated(run_id, "KILLED")
    with contextlib.suppress(Exception):
        fail_orphaned_runs(client)
    return sorted(set(failed))


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -------------------------------------------------------------------------------------------- pyfunc
with warnings.catch_warnings():   # MLflow asks for type hints on predict(); the signature is explicit
    warnings.simplefilter("ignore", UserWarning)

    class PorePyfunc(mlflow.pyfunc.PythonModel):
        """The registered pyfunc model: a saved :class:`porelab.model.PoreModel` folder inside the artifact.

        ``predict(context, model_input)`` takes one scan (Z, Y, X) or (1, Z, Y, X) in the scanner's grey
        values (the model normalises it itself) — any real dtype (float32/64, int8-64, uint8-64, bool), nested
        lists as sent to ``mlflow models serve`` too — casts it to float32 and returns the float32 voxel score
        (Z, Y, X): a probability for supervised nets, the post-processed anomaly score A_pores for unsupervised
        nets (Iuso et al. 2024, eq. (2)-(3)). NaN/±inf voxels are missing data: the score is NaN exactly there
        (``porelab.model.PoreModel.predict``). The decision threshold is ``model.threshold`` and in the logged
        model's metadata. Anything else is refused with a one-line ``MlflowException`` (HTTP 400 when served).
        """

        def load_context(self, context):
            from porelab.model import PoreModel

            self.model = PoreModel.load(context.artifacts[MODEL_ARTIFACT])

        def predict(self, context, model_input, params=None):
            import numpy as np

            from mlflow.exceptions import MlflowException

            from porelab.errors import PorelabError

            scan = _pyfunc_scan(model_input)
            try:
                return np.asarray(self.model.predict(scan, progress=False), dtype=np.float32)
            except PorelabError as exc:
                raise MlflowException.invalid_parameter_value(str(exc)) from None


def _pyfunc_scan(model_input):
    """The pyfunc input as one float32 (Z, Y, X) scan, or a one-line ``MlflowException`` (HTTP 400).

    MLflow's own signature check is off for the input (see :func:`model_signature`): it would refuse every
    dtype but one and every shape of another rank with a long message, so the checks are made here.
    """
    import numpy as np
    from mlflow.exceptions import MlflowException

    if hasattr(model_input, "to_numpy") and not isinstance(model_input, np.ndarray):
        model_input = model_input.to_numpy()
    try:
        arr = np.asarray(model_input)
    except (TypeError, ValueError) as exc:
        raise MlflowException.invalid_parameter_value(
            f"expected one scan (Z, Y, X) of numbers, got {type(model_input).__name__}: {exc}") from None
    if arr.dtype.kind not in "biuf":
        raise MlflowException.invalid_parameter_value(
            f"expected one scan (Z, Y, X) of real numbers, got dtype {arr.dtype}")
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3 or min(arr.shape) == 0:
        raise MlflowException.invalid_parameter_value(
            f"expected one scan of shape (Z, Y, X) or (1, Z, Y, X), got shape {tuple(arr.shape)}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def pip_requirements() -> list[str]:
    """Pinned requirements of the pyfunc environment (the versions this process runs with)."""
    reqs = []
    for pkg in _PIP_PACKAGES:
        try:
            version = importlib.metadata.version(pkg).split("+", 1)[0]
        except importlib.metadata.PackageNotFoundError:
            continue
        reqs.append(f"{pkg}=={version}")
    reqs.append(f"mlflow=={importlib.metadata.version('mlflow').split('+', 1)[0]}")
    return reqs


def model_signature():
    """Signature of the pyfunc: no input schema, a float32 (-1, -1, -1) tensor out.

    The input is left without a schema on purpose: MLflow enforces a ``TensorSpec`` exactly (one dtype, one
    rank), so a float32 (Z, Y, X) spec refuses float64, int16, uint16 and (1, Z, Y, X) scans that
    ``porelab segment`` reads. :class:`PorePyfunc` checks and casts the input itself (``_pyfunc_scan``).
    """
    import numpy as np
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    return ModelSignature(inputs=None, outputs=Schema([TensorSpec(np.dtype("float32"), (-1, -1, -1))]))


def package_dir() -> str:
    """The folder of the ``porelab`` package (logged as the pyfunc's code path)."""
    import porelab

    return str(Path(porelab.__file__).resolve().parent)


def log_pore_model(model_dir: str | os.PathLike, *, name: str = "model", registered_name: str | None = None,
                   metadata: dict | None = None, python_model=None):
    """Log a saved PoreModel folder as a pyfunc model on the active run; optionally register it.

    Returns MLflow's ``ModelInfo`` (``registered_model_version`` set when registered).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=python_model if python_model is not None else PorePyfunc(),
            artifacts={MODEL_ARTIFACT: str(model_dir)},
            code_paths=[package_dir()],
            signature=model_signature(),
            pip_requirements=pip_requirements(),
            metadata=_jsonable(metadata or {}),
            registered_model_name=registered_name,
            await_registration_for=60,
        )


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


# ------------------------------------------------------------------------------------------- registry
def repo_dir() -> Path:
    """The project folder (holds ``registry/``, ``MLproject``)."""
    return Path(package_dir()).parent


def load_policy(path: str | os.PathLike | None = None) -> dict:
    """The promotion policy (``registry/policy.json``; built-in defaults when the file is absent)."""
    path = Path(path) if path else repo_dir() / "registry" / "policy.json"
    policy = json.loads(json.dumps(DEFAULT_POLICY))
    if path.exists():
        try:
            policy.update(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    for key in ("metric", "greater_is_better", "min_improvement"):
        if key not in policy:
            raise ConfigError(f"{path}: missing key {key!r}")
    return policy


def policy_for(policy: dict, name: str) -> dict:
    """The policy entries for registered model ``name`` (top-level values overridden per model)."""
    merged = {k: v for k, v in policy.items() if k != "models"}
    merged.update(policy.get("models", {}).get(name, {}))
    return merged


def _client():
    return mlflow.MlflowClient()


def _production_version(client, name: str):
    """The Production version of ``name`` (alias first, then stage), or None."""
    with contextlib.suppress(Exception):
        return client.get_model_version_by_alias(name, "production")
    versions = client.search_model_versions(f"name='{name}'")
    prod = [v for v in versions if (v.current_stage or "").lower() == "production"]
    return max(prod, key=lambda v: int(v.version)) if prod else None


def _versions(client, name: str) -> list:
    """The live versions of ``name``, oldest first."""
    return sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))


def _stage(v) -> str:
    return (v.current_stage or "None").capitalize()


def _transition(client, name: str, version: str, stage: str, archive: bool = False) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        client.transition_model_version_stage(name, str(version), stage, archive_existing_versions=archive)


def _restore_staging_alias(client, name: str, attempts: int = 4) -> None:
    """Point alias ``staging`` at the newest version still in stage Staging (or remove it).

    Another worker may write the alias at the same moment (MLflow's alias upsert then fails on its
    unique key): the state is read again and the write retried.
    """
    from mlflow.exceptions import MlflowException

    for _ in range(attempts):
        staged = [v for v in client.search_model_versions(f"name='{name}'")
                  if (v.current_stage or "").lower() == "staging"]
        want = str(max(int(v.version) for v in staged)) if staged else None
        have = None
        with contextlib.suppress(MlflowException):
            have = str(client.get_model_version_by_alias(name, "staging").version)
        if have == want:
            return
        try:
            if want is None:
                client.delete_registered_model_alias(name, "staging")
            else:
                client.set_registered_model_alias(name, "staging", want)
        except MlflowException:
            continue


TRIAL_RUN_TAG = "porelab.trial_run"


def _set_tag(client, name: str, version, key: str, value, attempts: int = 4) -> None:
    """Set a version tag, tolerating a concurrent writer of the same tag (MLflow's tag upsert then fails
    on its unique key): read back, retry while the value differs."""
    from mlflow.exceptions import MlflowException

    value = str(value)
    for i in range(attempts):
        try:
            client.set_model_version_tag(name, str(version), key, value)
            return
        except MlflowException:
            if client.get_model_version(name, str(version)).tags.get(key) == value:
                return
            if i == attempts - 1:
                raise


def _tagged(client, name: str, key: str, value: str, metadata_key: str | None = None) -> list:
    """Versions of ``name`` whose tag ``key`` is ``value``, oldest first.

    A version without the tag at all (created by an older porelab, or tagged after creation by a worker
    killed in between) is matched by the ``metadata_key`` entry of its logged model's metadata, and
    gets the tag, so the next look-up finds it by tag.
    """
    versions = _versions(client, name)
    found = [v for v in versions if v.tags.get(key) == value]
    if found or not metadata_key:
        return found
    for v in versions:
        if key in v.tags:
            continue
        with warnings.catch_warnings(), contextlib.suppress(Exception):
            warnings.simplefilter("ignore")
            meta = mlflow.models.get_model_info(f"models:/{name}/{v.version}").metadata or {}
            if str(meta.get(metadata_key)) == value:
                _set_tag(client, name, str(v.version), key, value)
                found.append(v)
    return found


def _apply_tags(client, name: str, version, tags: dict) -> None:
    """Set the ``tags`` that ``version`` (a ``ModelVersion``) lacks or holds with another value."""
    have = version.tags or {}
    for k, v in tags.items():
        if have.get(k) != str(v):
            _set_tag(client, name, str(version.version), k, str(v))


def register_version(name: str, log_model, tags: dict, *, key: str = TRIAL_RUN_TAG,
                     metadata_key: str | None = "trial_run") -> tuple[str, bool]:
    """One registered version of ``name`` per value of the tag ``key`` (e.g. one per Optuna trial).

    If a version carries ``tags[key]`` already (a re-run, a resume, another worker), it is reused and
    given any of ``tags`` it lacks. Else ``log_model()`` logs the model and returns its URI, which is
    registered with all ``tags`` in one call (a version never exists without them). Two workers racing
    past the look-up both create one: each then lists the versions carrying the tag again, the oldest
    (lowest number) wins, and a loser deletes its own version and reuses the winner's. Works the same
    against a tracking server (no lock). Older duplicates of one key are tagged ``porelab.duplicate_of``
    (:func:`promote` archives them). Returns ``(version, reused)``.
    """
    client = _client()
    value = str(tags[key])
    tags = {k: str(v) for k, v in tags.items()}
    found = _tagged(client, name, key, value, metadata_key)
    reused = bool(found)
    if not found:
        uri = log_model()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mine = str(mlflow.register_model(uri, name, await_registration_for=60, tags=tags).version)
        found = _tagged(client, name, key, value)
        if found and str(found[0].version) != mine:
            with contextlib.suppress(Exception):   # another worker registered it first: use theirs
                client.delete_model_version(name, mine)
            reused = True
            found = [v for v in found if str(v.version) != mine]
        elif not found:
            found = [client.get_model_version(name, mine)]
    winner = found[0]
    _apply_tags(client, name, winner, tags)
    for dup in found[1:]:    # (a racer's own version may be gone already: it deletes itself)
        if dup.tags.get("porelab.duplicate_of") != str(winner.version):
            with contextlib.suppress(Exception):
                _set_tag(client, name, str(dup.version), "porelab.duplicate_of",
                                             str(winner.version))
    return str(winner.version), reused


def _metric_of(v, key: str) -> float | None:
    try:
        return float(v.tags[key])
    except (KeyError, TypeError, ValueError):
        return None


def _champion(versions: list, policy: dict):
    """The version that should be in Production, computed from the registry alone.

    The candidates are the versions with the policy metric's tag (set by :func:`promote`), except those
    tagged ``porelab.rejected`` or ``porelab.duplicate_of``. Taken in version order, a candidate takes
    over when there is none yet, when the holder's value is not finite, or when it beats the holder by
    more than ``min_improvement``. The answer depends only on the tags, so concurrent workers converge.
    """
    key, greater = policy["metric"], bool(policy["greater_is_better"])
    min_imp = float(policy["min_improvement"])
    champion, best = None, None
    for v in versions:
        if "porelab.rejected" in v.tags or "porelab.duplicate_of" in v.tags:
            continue
        value = _metric_of(v, key)
        if value is None:
            continue
        if champion is None or best is None or not math.isfinite(best):
            champion, best = v, value
            continue
        gain = value - best if greater else best - value
        if math.isfinite(value) and gain > min_imp:
            champion, best = v, value
    return champion


def _reconcile(client, name: str, policy: dict, rounds: int = 6):
    """Make the registry agree with :func:`_champion`; return the champion (or None).

    The champion gets stage Production and alias ``production`` (in that order, so there is always a
    Production version); any other Production version is Archived with ``porelab.archived_by``. The
    state is read back and fixed again until it agrees, so a worker that wrote last with a stale view
    is corrected by its own check. Candidates without a stage enter Staging; a Production version is
    never moved back to Staging. Alias ``staging`` ends on the newest version in Staging.
    """
    from mlflow.exceptions import MlflowException

    champion = None
    for _ in range(rounds):
        versions = _versions(client, name)
        champion = _champion(versions, policy)
        if champion is None:
            break
        cv = str(champion.version)
        prod = [v for v in versions if _stage(v) == "Production"]
        alias = None
        with contextlib.suppress(Exception):
            alias = str(client.get_model_version_by_alias(name, "production").version)
        if alias == cv and [str(v.version) for v in prod] == [cv]:
            break
        try:   # a write that loses against another worker's is re-checked in the next round
            if _stage(champion) != "Production":
                _transition(client, name, cv, "Production")
            if alias != cv:
                client.set_registered_model_alias(name, "production", cv)
            for v in prod:
                if str(v.version) != cv:
                    _set_tag(client, name, str(v.version), "porelab.archived_by", cv)
                    _transition(client, name, str(v.version), "Archived")
        except MlflowException:
            continue
    for v in _versions(client, name):
        if champion is not None and str(v.version) == str(champion.version):
            continue
        with contextlib.suppress(MlflowException):
            if "porelab.duplicate_of" in v.tags and _stage(v) in ("None", "Staging"):
                _transition(client, name, str(v.version), "Archived")
            elif _stage(v) == "None" and _metric_of(v, policy["metric"]) is not None:
                _transition(client, name, str(v.version), "Staging")
    _restore_staging_alias(client, name)
    return champion


def reconcile(name: str, *, policy: dict | None = None) -> str | None:
    """Re-apply the promotion policy to ``name`` from its versions' tags; return the Production version.

    Used after tagging a bad version ``porelab.rejected`` (a rollback that later promotions respect).
    """
    client = _client()
    champion = _reconcile(client, name, policy_for(policy or load_policy(), name))
    return None if champion is None else str(champion.version)


def promote(name: str, version: str | int, metric: float, *, policy: dict | None = None) -> dict:
    """Apply the registry policy after (re-)registering ``version`` with the value ``metric``.

    The version gets the tags ``<metric name>=<metric>`` and ``porelab.policy_metric``; then the whole
    registered model is reconciled with the policy (:func:`_reconcile`): Production (alias
    ``production``) goes to the first version that beat its predecessor by more than ``min_improvement``
    (reversed when ``greater_is_better`` is false), the version it replaces is Archived, the others are
    in Staging (alias ``staging`` on the newest). Idempotent: promoting the Production version again
    keeps it in Production, and workers promoting at once end in the same state.

    Returns ``{"name", "version", "metric", "value", "stage", "promoted", "previous", "previous_value"}``
    (``previous``: the Production version before the call; ``promoted``: this call made it Production).
    """
    policy = policy_for(policy or load_policy(), name)
    key = policy["metric"]
    version, value = str(version), float(metric)
    client = _client()
    current = _production_version(client, name)
    previous = str(current.version) if current is not None else None
    previous_value = None
    if previous is not None and previous != version:
        previous_value = _metric_of(client.get_model_version(name, previous), key)
    _set_tag(client, name, version, key, repr(value))
    _set_tag(client, name, version, "porelab.policy_metric", key)
    champion = _reconcile(client, name, policy)
    stage = _stage(client.get_model_version(name, version))
    is_champion = champion is not None and str(champion.version) == version
    return {"name": name, "version": version, "metric": key, "value": value, "stage": stage,
            "promoted": is_champion and previous != version, "previous": previous,
            "previous_value": previous_value}


def describe_registry(client=None) -> str:
    """One line listing the registered names, their versions, stages and aliases."""
    client = client or _client()
    parts = []
    for rm in client.search_registered_models():
        versions = client.search_model_versions(f"name='{rm.name}'")
        alias_of: dict[str, list[str]] = {}
        for alias, v in (rm.aliases or {}).items():
            alias_of.setdefault(str(v), []).append("@" + alias)
        vs = []
        for v in sorted(versions, key=lambda v: int(v.version)):
            aliases = alias_of.get(str(v.version), [])
            vs.append(" ".join([f"v{v.version}", v.current_stage or "None", *aliases]))
        parts.append(f"{rm.name} [{', '.join(vs) or 'no versions'}]")
    return "; ".join(parts) if parts else "none"


_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<sel>[^/]+))?/?$")


def _require_store(uri: str) -> None:
    """``ModelError`` when ``uri`` is a SQLite store whose file does not exist (MLflow would create an
    empty one, and the look-up would then report that no model is registered)."""
    db = _sqlite_file(uri)
    if db is not None and not db.exists():
        raise ModelError(f"no MLflow store here ({db.name} not found in {db.parent}); set "
                         "MLFLOW_TRACKING_URI or give a model folder")


def resolve_version(spec: str):
    """The registered ``ModelVersion`` a spec names.

    Accepted: ``name`` (its Production version: alias ``production``, else stage Production),
    ``models:/name@alias``, ``models:/name/<Stage>``, ``models:/name/<version>``, ``models:/name/latest``.
    Unknown names or selections raise ``ModelError`` naming what exists.
    """
    from mlflow.exceptions import MlflowException

    m = _MODELS_URI.match(spec.strip())
    if spec.startswith("models:/") and not m:
        raise ModelError(f"cannot parse model URI {spec!r}; use models:/NAME@ALIAS, models:/NAME/STAGE "
                         "or models:/NAME/VERSION")
    if m:
        name, alias, sel = m.group("name"), m.group("alias"), m.group("sel")
    else:
        name, alias, sel = spec.strip(), None, None
    _require_store(mlflow.get_registry_uri())
    client = _client()
    try:
        client.get_registered_model(name)
    except MlflowException:
        raise ModelError(f"no registered model {name!r} in {mlflow.get_registry_uri()}; registered: "
                         f"{describe_registry(client)}") from None
    try:
        if alias:
            return client.get_model_version_by_alias(name, alias)
        if sel is None and not m:
            mv = _production_version(client, name)
            if mv is None:
                raise ModelError(f"registered model {name!r} has no Production version; registered: "
                                 f"{describe_registry(client)}")
            return mv
        if sel is None:
            raise ModelError(f"{spec!r} names no version: use models:/{name}@production, "
                             f"models:/{name}/Production or models:/{name}/<version>")
        versions = client.search_model_versions(f"name='{name}'")
        if sel.isdigit():
            chosen = [v for v in versions if str(v.version) == sel]
        elif sel.lower() == "latest":
            chosen = sorted(versions, key=lambda v: int(v.version))[-1:]
        else:
            chosen = sorted((v for v in versions if (v.current_stage or "").lower() == sel.lower()),
                            key=lambda v: int(v.version))[-1:]
        if not chosen:
            raise ModelError(f"{spec!r} matches no version; registered: {describe_registry(client)}")
        return chosen[-1]
    except MlflowException:
        raise ModelError(f"{spec!r} does not resolve; registered: {describe_registry(client)}") from None


def resolve_model(spec: str | os.PathLike):
    """A :class:`porelab.model.PoreModel` from a local model folder or a registered-model spec.

    ``spec``: a folder written by ``PoreModel.save``; a registered name (``porelab-unsupervised`` → its
    Production version); ``models:/name@alias``; ``models:/name/Production``; ``models:/name/3``.
    Uses the tracking/registry URI of :func:`setup_mlflow` (``MLFLOW_TRACKING_URI`` or ``./mlflow.db``).
    """
    from porelab.model import PoreModel

    path = Path(str(spec)).expanduser()
    if path.is_dir():
        return PoreModel.load(path)
    text = str(spec)
    if not text.startswith("models:/") and ("/" in text or os.sep in text or text.startswith(".")):
        raise ModelError(f"model {text!r}: no such folder (give a model folder, a registered name, or "
                         "models:/NAME@production)")
    _require_store(tracking_uri())
    setup_mlflow(experiment=None)
    mv = resolve_version(text)
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    with tempfile.TemporaryDirectory(prefix="porelab-model-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{mv.name}/{mv.version}",
                                                        dst_path=tmp)
            conf = Model.load(local).flavors.get("python_function", {})
        except (MlflowException, OSError) as exc:
            where = mv.source
            with contextlib.suppress(Exception):
                where = _client().get_model_version_download_uri(mv.name, str(mv.version))
            raise ModelError(f"registered model {mv.name} v{mv.version}: its artifacts are missing (expected "
                             f"at {where}; was the store folder moved or its mlruns/ deleted?): "
                             f"{_first_line(exc)}") from None
        rel = (conf.get("artifacts") or {}).get(MODEL_ARTIFACT, {}).get("path")
        if rel is None:
            raise ModelError(f"registered model {mv.name} v{mv.version} holds no porelab model artifact")
        model = PoreModel.load(Path(local) / rel)
    meta = getattr(model, "meta", None)
    if isinstance(meta, dict):
        meta["registered"] = {"name": mv.name, "version": mv.version, "stage": mv.current_stage,
                              "aliases": list(getattr(mv, "aliases", []) or [])}
    return model


__all__ = [
    "Interrupted",
    "PorePyfunc",
    "check_interrupted",
    "child_run",
    "describe_registry",
    "fail_orphaned_runs",
    "fail_orphaned_trials",
    "load_policy",
    "log_figure",
    "log_metrics",
    "log_params",
    "log_pore_model",
    "optuna_storage",
    "optuna_storage_url",
    "parent_run",
    "policy_for",
    "promote",
    "reconcile",
    "register_version",
    "resolve_model",
    "resolve_version",
    "run_worker_tags",
    "setup_mlflow",
    "sigterm_as_interrupt",
    "store_dir",
    "tracking_uri",
    "worker_tag",
]
