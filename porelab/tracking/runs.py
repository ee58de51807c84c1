"""MLflow runs: the nested search tree, logging helpers, worker identity, runs of dead workers, provenance.

Runs nest search → study → trial → fold (design note §3). Every run carries its worker's identity
(:func:`run_worker_tags`); :func:`fail_orphaned_runs` ends KILLED the RUNNING runs of processes of this host
that are gone. A run stopped by SIGTERM/SIGINT (``porelab.runtime.sigterm_as_interrupt``) or pruned by
Optuna ends KILLED, one that raised ends FAILED.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import socket
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

with warnings.catch_warnings():   # mlflow.pyfunc warns about type hints of its own classes on import
    warnings.simplefilter("ignore", UserWarning)
    import mlflow

from porelab.runtime import check_interrupted


# ------------------------------------------------------------------------------------------ workers
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


def worker_gone(attrs: dict) -> bool:
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


def run_worker_tags() -> dict[str, str]:
    """Tags that name the process owning a run (``porelab.host``, ``porelab.pid``, …).

    :func:`fail_orphaned_runs` closes RUNNING runs whose process no longer exists.
    """
    return {f"porelab.{k}": str(v) for k, v in worker_tag().items()}


# --------------------------------------------------------------------------------------------- runs
def _end_status(exc: BaseException | None) -> str:
    """MLflow status of a run left by ``exc``: FINISHED, KILLED (pruned, Ctrl-C, SIGTERM) or FAILED."""
    if exc is None:
        return "FINISHED"
    if isinstance(exc, KeyboardInterrupt) or type(exc).__name__ == "TrialPruned":
        return "KILLED"
    return "FAILED"


@contextlib.contextmanager
def parent_run(run_name: str = "search", tags: dict | None = None) -> Iterator[mlflow.ActiveRun]:
    """The top run: the one ``mlflow run`` started (``MLFLOW_RUN_ID``), else a new run.

    Tagged with this worker (:func:`run_worker_tags`). Ends KILLED on Ctrl-C / SIGTERM (see
    ``porelab.runtime.sigterm_as_interrupt``), FAILED on any other exception.
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
                if not worker_gone(attrs):
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


# --------------------------------------------------------------------------------------- provenance
def repo_dir() -> Path:
    """The project folder: the parent of the ``porelab`` package (holds ``registry/``, ``MLproject`` in a
    checkout)."""
    from porelab.tracking.pyfunc import package_dir

    return Path(package_dir()).parent


def file_hashes(root: Path) -> dict:
    """SHA-256 of every file of a dataset folder (manifest included)."""
    out = {}
    for p in sorted(Path(root).iterdir()):
        if p.is_file():
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            out[p.name] = h.hexdigest()
    return out


def git_commit() -> str:
    """The project's git commit (``unknown`` outside a checkout), ``+dirty`` if files changed."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_dir(), capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo_dir(),
                               capture_output=True, text=True, timeout=10, check=False).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


__all__ = ["child_run", "fail_orphaned_runs", "file_hashes", "git_commit", "log_figure", "log_metrics",
           "log_params", "parent_run", "repo_dir", "run_worker_tags", "worker_gone", "worker_tag"]
