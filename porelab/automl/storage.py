"""Optuna storage: the URL next to the MLflow store, the storage object, trials of dead workers.

``""`` means ``sqlite:///<dir of mlflow.db>/optuna.db``; any RDB URL (``postgresql://…``) or a journal file
path ending in ``.log`` is accepted. A PostgreSQL URL without a driver (``postgresql://``, ``postgres://``)
gets the installed one: psycopg 3 (the ``cluster`` extra), else psycopg2. MLflow and Optuna never share one
database (both keep an ``alembic_version`` table). RDB storages get a heartbeat, so a trial of a worker
killed on another machine is marked FAIL after the grace period; a trial of a dead process of this host is
found at once (:func:`fail_orphaned_trials`).
"""

from __future__ import annotations

import contextlib
import re
import warnings
from pathlib import Path

from porelab.errors import ConfigError
from porelab.tracking.stores import beside_store, first_line, sqlite_file, store_dir, tracking_uri

HEARTBEAT_INTERVAL = 60   # s between heartbeats of a running trial (RDB storages)
GRACE_PERIOD = 180        # s without a heartbeat after which the next worker marks the trial FAIL


def hide_password(url: str) -> str:
    return re.sub(r"(://[^:/@]+:)[^@/]*@", r"\1***@", url)


def optuna_storage_url(spec: str | None = None) -> str:
    """Normalise an Optuna storage spec: ``""``/None → ``sqlite:///<store_dir>/optuna.db``.

    Relative paths (a journal file ``x.log``, ``sqlite:///x.db``) are taken relative to the folder of the
    MLflow store (``porelab.tracking.store_dir``), not the cwd: ``mlflow run`` runs entry points in the
    project folder. Raises ``ConfigError`` if it names the MLflow database file, or is neither a journal path
    nor a database URL SQLAlchemy can open (unknown scheme, driver not installed).
    """
    spec = (spec or "").strip()
    if not spec:
        return f"sqlite:///{store_dir() / 'optuna.db'}"
    if "://" not in spec:
        if not spec.endswith(".log"):
            raise ConfigError(f"storage {spec!r}: give a database URL (sqlite:///…, postgresql://…) "
                              "or a journal file path ending in .log")
        return str(beside_store(spec))
    spec = _with_postgres_driver(spec)
    if spec.startswith("sqlite:///") and not spec.startswith("sqlite:////"):
        rest, sep, query = spec[len("sqlite:///"):].partition("?")
        if rest and rest != ":memory:":
            spec = f"sqlite:///{beside_store(rest)}{sep}{query}"
    _check_database_url(spec)
    if _same_database(spec, tracking_uri()):
        raise ConfigError(f"storage {hide_password(spec)!r} is MLflow's database; Optuna needs its own "
                          "(both keep an alembic_version table)")
    return spec


def _same_database(a: str, b: str) -> bool:
    """True when two URLs name one database: the same SQLite file, or the same server and database
    whatever driver each names (``postgresql://h/db`` and ``postgresql+psycopg://h/db``)."""
    if a == b:
        return True
    fa, fb = sqlite_file(a), sqlite_file(b)
    if fa is not None or fb is not None:
        return fa == fb
    from sqlalchemy.engine import make_url

    try:
        ua, ub = make_url(a), make_url(b)
    except Exception:                   # noqa: BLE001 - an http:// tracking URI is no database URL
        return False
    return (ua.get_backend_name(), ua.host, ua.port, ua.database) == \
        (ub.get_backend_name(), ub.host, ub.port, ub.database)


def _with_postgres_driver(url: str) -> str:
    """``postgresql://`` and ``postgres://`` → ``postgresql+psycopg://`` (psycopg 3 installed) or
    ``postgresql+psycopg2://`` (only psycopg2 installed); any other URL unchanged.

    SQLAlchemy's default PostgreSQL driver depends on its version (psycopg2 up to 2.0, psycopg 3 from
    2.1), and it rejects the ``postgres://`` scheme that many hosting services print; naming the driver
    that is installed makes the URL a user types work with either.
    """
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgresql", "postgres"):
        return url
    for module, driver in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return f"postgresql+{driver}://{rest}"
    return f"postgresql://{rest}"      # no driver: _check_database_url names the missing module


def _check_database_url(url: str) -> None:
    """``ConfigError`` unless SQLAlchemy parses ``url`` and has its dialect and driver."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    shown = hide_password(url)
    try:
        dialect = make_url(url).get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise ConfigError(f"storage {shown!r}: not a database URL SQLAlchemy knows ({first_line(exc)}); "
                          "give sqlite:///…, postgresql://…, mysql+pymysql://… or a journal file path "
                          "ending in .log") from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        hint = (" (pip install 'porelab[cluster]' brings psycopg 3: postgresql://…)"
                if url.startswith("postgresql") else "")
        raise ConfigError(f"storage {shown!r}: its database driver is not installed "
                          f"({first_line(exc)}){hint}") from None


def optuna_storage(spec: str | None = None, *, heartbeat_interval: int = HEARTBEAT_INTERVAL,
                   grace_period: int = GRACE_PERIOD):
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
        db = sqlite_file(url)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    from sqlalchemy.exc import SQLAlchemyError

    with warnings.catch_warnings():   # the heartbeat arguments are marked experimental
        warnings.simplefilter("ignore")
        try:
            with _schema_lock(url):
                return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_interval,
                                                  grace_period=grace_period, **kwargs)
        except SQLAlchemyError as exc:   # unreachable server, wrong password, not an Optuna database
            raise ConfigError(f"storage {hide_password(url)!r}: cannot open it "
                              f"({type(exc).__name__}: {first_line(exc)})") from None


_SCHEMA_LOCK_KEY = 0x706F72656C6162   # "porelab": the PostgreSQL advisory lock of Optuna's table creation


@contextlib.contextmanager
def _schema_lock(url: str):
    """On PostgreSQL, hold a session advisory lock while Optuna creates and checks its tables.

    ``RDBStorage`` creates missing tables, its version row and Alembic's stamp without a lock, so workers
    that start at once on an empty database fail (``duplicate key value violates unique constraint
    "pg_type_typname_nsp_index"``, ``relation ... already exists``). Under the lock the first worker
    creates the schema and the others find it. Other databases: no lock.
    """
    if not url.startswith("postgresql"):
        yield
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": _SCHEMA_LOCK_KEY})
    finally:
        engine.dispose()


def fail_orphaned_trials(study) -> list[int]:
    """Mark FAIL the RUNNING trials whose worker is gone; end their MLflow runs KILLED. Returns numbers.

    Two mechanisms: the RDB heartbeat (any machine; after the grace period) and, for every storage, a
    trial started on this host by a process that no longer exists (``kill -9``, power loss; the trial's
    user attributes hold ``porelab.tracking.worker_tag``). Then every other RUNNING MLflow run of a dead
    worker of this host is ended too (``porelab.tracking.fail_orphaned_runs``).
    """
    import mlflow
    import optuna
    from optuna.storages._heartbeat import is_heartbeat_enabled
    from optuna.trial import TrialState

    from porelab.tracking.runs import fail_orphaned_runs, worker_gone

    failed = []
    storage = study._storage
    if is_heartbeat_enabled(storage):
        with warnings.catch_warnings(), contextlib.suppress(Exception):
            warnings.simplefilter("ignore")
            before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
            optuna.storages.fail_stale_trials(study)
            after = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
            failed += sorted(before - after)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number in failed or not worker_gone(t.user_attrs):
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


__all__ = ["GRACE_PERIOD", "HEARTBEAT_INTERVAL", "fail_orphaned_trials", "hide_password", "optuna_storage",
           "optuna_storage_url"]
