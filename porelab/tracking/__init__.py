"""MLflow at the edge: stores, nested runs, the pyfunc model, registry promotion and model resolution.

Everything that talks to MLflow lives here, so the science core stays free of bookkeeping (design note
§1, §3, §5):

* :mod:`~porelab.tracking.stores`: the tracking URI (``MLFLOW_TRACKING_URI``, else
  ``sqlite:///<cwd>/mlflow.db``), the folder beside ``mlflow.db``, :func:`setup_mlflow`;
* :mod:`~porelab.tracking.runs`: :func:`parent_run` / :func:`child_run` (search → study → trial → fold),
  logging helpers, worker tags and :func:`fail_orphaned_runs`, provenance (:func:`git_commit`,
  :func:`file_hashes`);
* :mod:`~porelab.tracking.pyfunc`: :class:`PorePyfunc`, the registered model (a saved
  ``porelab.model.PoreModel`` folder inside; ``predict(float32 (Z, Y, X)) -> float32 (Z, Y, X)``);
* :mod:`~porelab.tracking.registry`: one version per trial, promotion by ``registry/policy.json``;
* :mod:`~porelab.tracking.resolve`: :func:`resolve_model` (a folder, a registered name, ``models:/…``,
  ``runs:/…``) and :func:`resolve_version`.

The Optuna storage names (:func:`optuna_storage`, …, from ``porelab.automl.storage``) and the signal
handling (:func:`sigterm_as_interrupt`, :class:`Interrupted`, from ``porelab.runtime``) are re-exported
for callers that still import them from here.

Names are imported on first use: ``import porelab.tracking`` does not import MLflow, and resolving a
model folder never does.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "porelab.tracking.stores": ("DEFAULT_EXPERIMENT", "setup_mlflow", "store_dir", "tracking_uri"),
    "porelab.tracking.runs": ("child_run", "fail_orphaned_runs", "file_hashes", "git_commit", "log_figure",
                              "log_metrics", "log_params", "parent_run", "repo_dir", "run_worker_tags",
                              "worker_tag"),
    "porelab.tracking.pyfunc": ("MODEL_ARTIFACT", "PorePyfunc", "log_pore_model", "model_signature",
                                "package_dir", "pip_requirements"),
    "porelab.tracking.registry": ("TRIAL_RUN_TAG", "describe_registry", "load_policy", "policy_for",
                                  "policy_path", "promote", "reconcile", "register_version"),
    "porelab.tracking.resolve": ("resolve_model", "resolve_version"),
    "porelab.automl.storage": ("fail_orphaned_trials", "optuna_storage", "optuna_storage_url"),
    "porelab.runtime": ("Interrupted", "check_interrupted", "sigterm_as_interrupt"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

if TYPE_CHECKING:   # the same names, for type checkers and linters
    from porelab.automl.storage import fail_orphaned_trials, optuna_storage, optuna_storage_url
    from porelab.runtime import Interrupted, check_interrupted, sigterm_as_interrupt
    from porelab.tracking.pyfunc import (
        MODEL_ARTIFACT,
        PorePyfunc,
        log_pore_model,
        model_signature,
        package_dir,
        pip_requirements,
    )
    from porelab.tracking.registry import (
        TRIAL_RUN_TAG,
        describe_registry,
        load_policy,
        policy_for,
        policy_path,
        promote,
        reconcile,
        register_version,
    )
    from porelab.tracking.resolve import resolve_model, resolve_version
    from porelab.tracking.runs import (
        child_run,
        fail_orphaned_runs,
        file_hashes,
        git_commit,
        log_figure,
        log_metrics,
        log_params,
        parent_run,
        repo_dir,
        run_worker_tags,
        worker_tag,
    )
    from porelab.tracking.stores import DEFAULT_EXPERIMENT, setup_mlflow, store_dir, tracking_uri


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value          # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE_OF))


__all__ = [
    "DEFAULT_EXPERIMENT",
    "MODEL_ARTIFACT",
    "TRIAL_RUN_TAG",
    "Interrupted",
    "PorePyfunc",
    "check_interrupted",
    "child_run",
    "describe_registry",
    "fail_orphaned_runs",
    "fail_orphaned_trials",
    "file_hashes",
    "git_commit",
    "load_policy",
    "log_figure",
    "log_metrics",
    "log_params",
    "log_pore_model",
    "model_signature",
    "optuna_storage",
    "optuna_storage_url",
    "package_dir",
    "parent_run",
    "pip_requirements",
    "policy_for",
    "policy_path",
    "promote",
    "reconcile",
    "register_version",
    "repo_dir",
    "resolve_model",
    "resolve_version",
    "run_worker_tags",
    "setup_mlflow",
    "sigterm_as_interrupt",
    "store_dir",
    "tracking_uri",
    "worker_tag",
]
