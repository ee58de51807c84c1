"""Model specs to models: a folder, a registered name, a ``models:/…`` or a ``runs:/…`` URI.

The science core only knows folders (``porelab.model.PoreModel.load``); registered names and URIs are
resolved here, against the store of ``porelab.tracking.setup_mlflow``. A folder is loaded without
importing MLflow.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

from porelab.errors import ModelError
from porelab.tracking.stores import first_line, require_store, setup_mlflow, tracking_uri

_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<sel>[^/]+))?/?$")
_RUNS_URI = re.compile(r"^runs:/(?P<run>[^/]+)/(?P<path>.+)$")


def resolve_version(spec: str):
    """The registered ``ModelVersion`` a spec names.

    Accepted: ``name`` (its Production version: alias ``production``, else stage Production),
    ``models:/name@alias``, ``models:/name/<Stage>``, ``models:/name/<version>``, ``models:/name/latest``.
    Unknown names or selections raise ``ModelError`` naming what exists.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from porelab.tracking.registry import _client, _production_version, describe_registry

    m = _MODELS_URI.match(spec.strip())
    if spec.startswith("models:/") and not m:
        raise ModelError(f"cannot parse model URI {spec!r}; use models:/NAME@ALIAS, models:/NAME/STAGE "
                         "or models:/NAME/VERSION")
    if m:
        name, alias, sel = m.group("name"), m.group("alias"), m.group("sel")
    else:
        name, alias, sel = spec.strip(), None, None
    require_store(mlflow.get_registry_uri())
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


def _load_logged(uri: str, label: str, where):
    """The PoreModel inside the pyfunc model at ``uri`` (downloaded to a temporary folder).

    ``label`` names the model in errors; ``where()`` tells where its artifacts were expected (asked only
    when they are missing).
    """
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    from porelab.model import PoreModel
    from porelab.tracking.pyfunc import MODEL_ARTIFACT

    with tempfile.TemporaryDirectory(prefix="porelab-model-") as tmp:
        try:
            local = download_artifacts(artifact_uri=uri, dst_path=tmp)
            conf = Model.load(local).flavors.get("python_function", {})
        except (MlflowException, OSError) as exc:
            raise ModelError(f"{label}: its artifacts are missing (expected at {where()}; was the store folder "
                             f"moved or its mlruns/ deleted?): {first_line(exc)}") from None
        rel = (conf.get("artifacts") or {}).get(MODEL_ARTIFACT, {}).get("path")
        if rel is None:
            raise ModelError(f"{label} holds no porelab model artifact")
        return PoreModel.load(Path(local) / rel)


def _download_uri(mv) -> str:
    """Where the registry says the artifacts of version ``mv`` are (its ``source`` if it cannot tell)."""
    from porelab.tracking.registry import _client

    with contextlib.suppress(Exception):
        return _client().get_model_version_download_uri(mv.name, str(mv.version))
    return mv.source


def _from_run(text: str):
    """The PoreModel logged on a run: ``runs:/<run id>/<model name>``."""
    from mlflow.exceptions import MlflowException

    from porelab.tracking.registry import _client

    m = _RUNS_URI.match(text)
    if not m:
        raise ModelError(f"cannot parse model URI {text!r}; use runs:/RUN_ID/MODEL_NAME")
    try:
        run = _client().get_run(m.group("run"))
    except MlflowException:
        raise ModelError(f"{text!r}: no run {m.group('run')!r} in {tracking_uri()}") from None
    model = _load_logged(text, f"model {text}", lambda: run.info.artifact_uri)
    meta = getattr(model, "meta", None)
    if isinstance(meta, dict):
        meta["logged"] = {"run_id": m.group("run"), "name": m.group("path")}
    return model


def resolve_model(spec):
    """A :class:`porelab.model.PoreModel` from a local model folder, a registered name or a model URI.

    ``spec``: a folder written by ``PoreModel.save`` (or a ``PoreModel``, returned as is); a registered
    name (``porelab-unsupervised`` → its Production version); ``models:/name@alias``;
    ``models:/name/Production``; ``models:/name/3``; ``runs:/<run id>/<model name>`` (a pyfunc logged by
    ``log_pore_model``). Uses the tracking/registry URI of :func:`setup_mlflow` (``MLFLOW_TRACKING_URI``
    or ``./mlflow.db``). Anything else is a one-line ``ModelError``.
    """
    from porelab.model import MODEL_JSON, WEIGHTS, PoreModel

    if isinstance(spec, PoreModel):
        return spec
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        return PoreModel.load(path)
    if path.exists():
        raise ModelError(f"{text}: a model must be a folder with {MODEL_JSON} and {WEIGHTS}")
    is_uri = text.startswith(("models:/", "runs:/"))
    if not is_uri and ("/" in text or os.sep in text or text.startswith(".")):
        raise ModelError(f"model folder not found: {text} (give a model folder, a registered name, "
                         "models:/NAME@production or runs:/RUN_ID/MODEL_NAME)")
    require_store(tracking_uri())
    setup_mlflow(experiment=None)
    if text.startswith("runs:/"):
        return _from_run(text)
    mv = resolve_version(text)
    model = _load_logged(f"models:/{mv.name}/{mv.version}", f"registered model {mv.name} v{mv.version}",
                         lambda: _download_uri(mv))
    meta = getattr(model, "meta", None)
    if isinstance(meta, dict):
        meta["registered"] = {"name": mv.name, "version": mv.version, "stage": mv.current_stage,
                              "aliases": list(getattr(mv, "aliases", []) or [])}
    return model


__all__ = ["resolve_model", "resolve_version"]
