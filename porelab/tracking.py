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
folder: ``predict(float32 (Z, Y, X)) -> float32 (Z, Y, X)`` voxel scores. :func:`promote` applies
``registry/policy.json``: every new version enters Staging (alias ``staging``); it moves to Production
(alias ``production``) when it beats the current Production version on the policy's metric, which archives
the old Production version. Stages are deprecated in MLflow 3 but still work; aliases are kept in step so
``models:/name@production`` and ``models:/name/Production`` resolve to the same version.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
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


def optuna_storage_url(spec: str | None = None) -> str:
    """Normalise an Optuna storage spec: ``""``/None → ``sqlite:///<store_dir>/optuna.db``.

    Raises ``ConfigError`` if it names the MLflow database file.
    """
    spec = (spec or "").strip()
    if not spec:
        return f"sqlite:///{store_dir() / 'optuna.db'}"
    if "://" not in spec:
        if not spec.endswith(".log"):
            raise ConfigError(f"storage {spec!r}: give a database URL (sqlite:///…, postgresql://…) "
                              "or a journal file path ending in .log")
        return str(Path(spec).expanduser().resolve())
    mine, theirs = _sqlite_file(spec), _sqlite_file(tracking_uri())
    if spec == tracking_uri() or (mine is not None and theirs is not None and mine == theirs):
        raise ConfigError(f"storage {spec!r} is MLflow's database; Optuna needs its own file "
                          "(both keep an alembic_version table)")
    return spec


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
    with warnings.catch_warnings():   # the heartbeat arguments are marked experimental
        warnings.simplefilter("ignore")
        return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_interval,
                                          grace_period=grace_period, **kwargs)


# ---------------------------------------------------------------------------------------------- runs
@contextlib.contextmanager
def parent_run(run_name: str = "search", tags: dict | None = None) -> Iterator[mlflow.ActiveRun]:
    """The top run: the one ``mlflow run`` started (``MLFLOW_RUN_ID``), else a new run.

    Ends FAILED on any exception (including Ctrl-C / SIGTERM, see :func:`sigterm_as_interrupt`).
    """
    if mlflow.active_run() is not None:
        run = mlflow.active_run()
        if tags:
            mlflow.set_tags(tags)
        yield run
        return
    with mlflow.start_run(run_name=None if os.environ.get("MLFLOW_RUN_ID") else run_name) as run:
        if tags:
            mlflow.set_tags(tags)
        yield run


@contextlib.contextmanager
def child_run(run_name: str, tags: dict | None = None, params: dict | None = None):
    """A nested run under the active run; FAILED on error, KILLED when Optuna prunes the trial."""
    run = mlflow.start_run(run_name=run_name, nested=True, tags=tags)
    status = "FAILED"
    try:
        if params:
            log_params(params)
        yield run
        status = "FINISHED"
    except BaseException as exc:
        if type(exc).__name__ == "TrialPruned":
            status = "KILLED"
            mlflow.set_tag("pruned", "true")
        raise
    finally:
        mlflow.end_run(status)


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


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt while the block runs (main thread only).

    A worker stopped by a scheduler (``kill``) then unwinds: Optuna records the running trial as FAIL and
    the nested MLflow runs end FAILED, so a resumed study goes on without stale RUNNING trials.
    """
    try:
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:   # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def worker_tag() -> dict:
    """Host and pid of this worker (stored on each trial to find orphans after a hard kill)."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def fail_orphaned_trials(study) -> list[int]:
    """Mark FAIL the RUNNING trials whose worker is gone; end their MLflow runs FAILED. Returns numbers.

    Two mechanisms: the RDB heartbeat (any machine; after the grace period) and, for every storage, a
    trial started on this host by a process that no longer exists (``kill -9``, power loss).
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
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("host") != host or t.number in failed:
            continue
        pid = int(t.user_attrs.get("pid", -1))
        if pid == os.getpid() or _pid_alive(pid):
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
                        client.set_terminated(run_id, "FAILED")
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


def _transition(client, name: str, version: str, stage: str, archive: bool = False) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        client.transition_model_version_stage(name, str(version), stage, archive_existing_versions=archive)


def _restore_staging_alias(client, name: str) -> None:
    """Point alias ``staging`` at the newest version still in stage Staging (or remove it)."""
    staged = [v for v in client.search_model_versions(f"name='{name}'")
              if (v.current_stage or "").lower() == "staging"]
    if staged:
        client.set_registered_model_alias(name, "staging", str(max(int(v.version) for v in staged)))
    else:
        with contextlib.suppress(Exception):
            client.delete_registered_model_alias(name, "staging")


def promote(name: str, version: str | int, metric: float, *, policy: dict | None = None) -> dict:
    """Apply the registry policy to a newly registered version.

    The version gets the tag ``<metric name>=<metric>``, stage Staging and alias ``staging``. It then moves
    to Production (alias ``production``; the previous Production version is archived and loses the alias)
    if there is no Production version, or if it beats it: ``new - old > min_improvement`` (reversed when
    ``greater_is_better`` is false), the old value read from the old version's tag.

    Returns ``{"name", "version", "metric", "value", "stage", "promoted", "previous", "previous_value"}``.
    """
    policy = policy_for(policy or load_policy(), name)
    key, greater = policy["metric"], bool(policy["greater_is_better"])
    min_imp = float(policy["min_improvement"])
    version, value = str(version), float(metric)
    client = _client()
    client.set_model_version_tag(name, version, key, repr(value))
    client.set_model_version_tag(name, version, "porelab.policy_metric", key)
    _transition(client, name, version, "Staging")
    client.set_registered_model_alias(name, "staging", version)

    current = _production_version(client, name)
    previous = str(current.version) if current is not None else None
    previous_value = None
    if previous is not None and previous != version:
        with contextlib.suppress(KeyError, ValueError, TypeError):
            previous_value = float(client.get_model_version(name, previous).tags[key])
    if current is None:
        better = True
    elif previous == version:
        better = False
    elif previous_value is None or not math.isfinite(previous_value):
        better = True
    else:
        gain = value - previous_value if greater else previous_value - value
        better = math.isfinite(value) and gain > min_imp
    result = {"name": name, "version": version, "metric": key, "value": value, "stage": "Staging",
              "promoted": better, "previous": previous, "previous_value": previous_value}
    if better:
        _transition(client, name, version, "Production", archive=True)
        client.set_registered_model_alias(name, "production", version)
        _restore_staging_alias(client, name)
        if previous is not None and previous != version:
            client.set_model_version_tag(name, previous, "porelab.archived_by", version)
            prev = client.get_model_version(name, previous)
            if (prev.current_stage or "") != "Archived":   # archive_existing_versions missed it (alias only)
                _transition(client, name, previous, "Archived")
        result["stage"] = "Production"
    return result


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
    setup_mlflow(experiment=None)
    mv = resolve_version(text)
    from mlflow.models import Model

    with tempfile.TemporaryDirectory(prefix="porelab-model-") as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{mv.name}/{mv.version}",
                                                    dst_path=tmp)
        conf = Model.load(local).flavors.get("python_function", {})
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
    "PorePyfunc",
    "child_run",
    "describe_registry",
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
    "resolve_model",
    "resolve_version",
    "setup_mlflow",
    "sigterm_as_interrupt",
    "store_dir",
    "tracking_uri",
    "worker_tag",
]
