"""Where the MLflow store is: the tracking URI, the folder beside ``mlflow.db``, one-time set-up.

``MLFLOW_TRACKING_URI`` if set (a tracking server, a database URL), else ``sqlite:///<cwd>/mlflow.db``
(MLflow 3's own default, set explicitly so a stray ``./mlruns`` never hijacks it). Relative paths of the
other local stores (Optuna, simulated data) are taken beside ``mlflow.db``: ``mlflow run`` starts entry
points inside the project folder but passes the caller's tracking URI.

Importing this module does not import MLflow (only :func:`setup_mlflow` does), so asking where the store
is stays cheap.
"""

from __future__ import annotations

import os
from pathlib import Path

from porelab.errors import ModelError

DEFAULT_EXPERIMENT = "porelab"


def tracking_uri() -> str:
    """The MLflow tracking URI: ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<cwd>/mlflow.db``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return uri or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def sqlite_file(uri: str) -> Path | None:
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
    db = sqlite_file(tracking_uri())
    return db.parent if db is not None else Path.cwd().resolve()


def beside_store(path: str) -> Path:
    """``path`` made absolute: relative paths are taken relative to :func:`store_dir`."""
    p = Path(path).expanduser()
    return (p if p.is_absolute() else store_dir() / p).resolve()


def require_store(uri: str) -> None:
    """``ModelError`` when ``uri`` is a SQLite store whose file does not exist (MLflow would create an
    empty one, and a look-up would then report that no model is registered)."""
    db = sqlite_file(uri)
    if db is not None and not db.exists():
        raise ModelError(f"no MLflow store here ({db.name} not found in {db.parent}); set "
                         "MLFLOW_TRACKING_URI or give a model folder")


def setup_mlflow(experiment: str | None = DEFAULT_EXPERIMENT) -> str:
    """Point MLflow at :func:`tracking_uri` explicitly, create the database once, select the experiment.

    Inside ``mlflow run`` (``MLFLOW_RUN_ID`` set) the experiment is left alone; else ``experiment`` (or
    ``MLFLOW_EXPERIMENT_NAME``) is selected, created if needed.
    Returns the tracking URI.
    """
    import mlflow

    uri = tracking_uri()
    db = sqlite_file(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")   # one bar per model load is noise
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)     # (set_registry_uri exports MLFLOW_REGISTRY_URI: never read it back)
    mlflow.MlflowClient().search_experiments(max_results=1)   # creates / migrates the schema once
    # (mlflow.set_experiment itself exports MLFLOW_EXPERIMENT_ID, so only MLFLOW_RUN_ID marks `mlflow run`)
    if experiment and not os.environ.get("MLFLOW_RUN_ID"):
        exp = mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or experiment)
        # selected by id as well: when another worker created it first, set_experiment returns it without
        # selecting it, and the runs would land in "Default"
        mlflow.set_experiment(experiment_id=exp.experiment_id)
    return uri


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when empty), at most 300 characters."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


__all__ = ["DEFAULT_EXPERIMENT", "beside_store", "first_line", "require_store", "setup_mlflow",
           "sqlite_file", "store_dir", "tracking_uri"]
