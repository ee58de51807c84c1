"""Registry promotion: one version per trial, the policy of ``registry/policy.json``, convergent stages.

:func:`register_version` keeps one version per trial (tags set at creation; a check-and-set resolves two
workers racing). :func:`promote` applies the policy by recomputing the registered model from its versions'
tags: Production (alias ``production``) on the first version that beat its predecessor, the version it
replaced Archived, the others in Staging (alias ``staging``); promoting again is a no-op, and concurrent
workers converge. Stages are deprecated in MLflow 3 but still work; aliases are kept in step so
``models:/name@production`` and ``models:/name/Production`` resolve to the same version.

The policy file ships as package data of ``porelab._registry``, a package that setuptools maps onto the
project's ``registry/`` folder (``pyproject.toml``), so a plain and an editable install read the one file.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import importlib.util
import json
import math
import os
import warnings
from pathlib import Path

with warnings.catch_warnings():   # mlflow.pyfunc warns about type hints of its own classes on import
    warnings.simplefilter("ignore", UserWarning)
    import mlflow

from porelab.errors import ConfigError

POLICY_PACKAGE = "porelab._registry"   # the installed form of the project's registry/ folder
POLICY_FILE = "policy.json"
POLICY_KEYS = ("metric", "greater_is_better", "min_improvement")
TRIAL_RUN_TAG = "porelab.trial_run"


# --------------------------------------------------------------------------------------------- policy
def policy_path():
    """The promotion policy file: package data of ``porelab._registry`` (installed, plain or editable).

    A source checkout imported without being installed (``mlflow run`` puts the checkout first on
    ``sys.path``) has no such package; there the same file is read from ``<checkout>/registry/``.
    Returns a ``Traversable`` (a ``Path`` for files on disk).
    """
    if importlib.util.find_spec(POLICY_PACKAGE) is not None:
        return importlib.resources.files(POLICY_PACKAGE).joinpath(POLICY_FILE)
    import porelab

    return Path(porelab.__file__).resolve().parent.parent / "registry" / POLICY_FILE


def load_policy(path: str | os.PathLike | None = None) -> dict:
    """The promotion policy: ``path``, else the project's ``registry/policy.json`` (:func:`policy_path`).

    The file is the only source of the values: a missing file, invalid JSON, or a missing
    ``metric``/``greater_is_better``/``min_improvement`` is a one-line ``ConfigError``. Other keys are kept
    as they are (``models`` holds per-model overrides, see :func:`policy_for`).
    """
    source = Path(path) if path else policy_path()
    try:
        text = source.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        raise ConfigError(f"{source}: promotion policy not found (reinstall porelab, or give the file "
                          "registry/policy.json)") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read the promotion policy ({exc.strerror or exc})") from None
    try:
        policy = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(policy, dict):
        raise ConfigError(f"{source}: the promotion policy must be a JSON object, got {type(policy).__name__}")
    for key in POLICY_KEYS:
        if key not in policy:
            raise ConfigError(f"{source}: missing key {key!r}")
    return policy


def policy_for(policy: dict, name: str) -> dict:
    """The policy entries for registered model ``name`` (top-level values overridden per model)."""
    merged = {k: v for k, v in policy.items() if k != "models"}
    merged.update(policy.get("models", {}).get(name, {}))
    return merged


# ------------------------------------------------------------------------------------------ versions
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


__all__ = ["POLICY_FILE", "POLICY_KEYS", "POLICY_PACKAGE", "TRIAL_RUN_TAG", "describe_registry", "load_policy",
           "policy_for", "policy_path", "promote", "reconcile", "register_version"]
