"""The promotion policy file: one copy in registry/, shipped as package data, read the same way in an
editable and a plain install; a missing or invalid file is a one-line error."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from porelab.errors import ConfigError
from porelab.tracking import load_policy, policy_for, policy_path

REPO = Path(__file__).resolve().parents[1]
POLICY = REPO / "registry" / "policy.json"


def test_the_policy_holds_promotion_only():
    policy = json.loads(POLICY.read_text())
    assert set(policy) == {"metric", "greater_is_better", "min_improvement", "models"}
    # promotion judges by the studies' own label-free objective (injected pores), never by the labels
    from porelab.automl.spaces import MAIN_METRIC

    assert policy_for(policy, "porelab-supervised")["metric"] == MAIN_METRIC["supervised"] == "val_ap_inj"
    assert policy_for(policy, "porelab-unsupervised")["metric"] == MAIN_METRIC["unsupervised"] == "val_ap_pp_inj"


def test_this_install_reads_the_repository_file_as_package_data():
    """The editable install maps porelab._registry onto registry/ (reinstall with `pip install -e .` after
    pulling the mapping)."""
    assert importlib.util.find_spec("porelab._registry") is not None, (
        "porelab._registry is not importable: reinstall porelab (pip install -e .)")
    assert Path(str(policy_path())).resolve() == POLICY.resolve()
    assert load_policy() == json.loads(POLICY.read_text())


def test_missing_and_invalid_policy_files_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="promotion policy not found") as info:
        load_policy(tmp_path / "nope.json")
    assert "\n" not in str(info.value)
    bad = tmp_path / "policy.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must be a JSON object"):
        load_policy(bad)
    bad.write_text(json.dumps({"metric": "val_ap", "greater_is_better": True}))
    with pytest.raises(ConfigError, match="missing key 'min_improvement'"):
        load_policy(bad)
    extra = {"metric": "val_ap", "greater_is_better": True, "min_improvement": 0.0, "note": "kept"}
    bad.write_text(json.dumps(extra))
    assert load_policy(bad) == extra                          # extra keys are tolerated and kept


def _source_copy(dest: Path) -> Path:
    """The project without tests, caches, build output and git data: what `pip install .` builds from.

    Built from a copy so that the build's own output (build/, *.egg-info) never lands in the checkout.
    """
    skip = shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__", ".pytest_cache",
                                  ".ruff_cache", "tests", "mlruns", "mlflow.db", "optuna.db", "porelab-data")
    return Path(shutil.copytree(REPO, dest, ignore=skip))


def test_a_plain_install_ships_the_policy_file(tmp_path):
    src = _source_copy(tmp_path / "src")
    site = tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                            "--no-compile", "--quiet", "--target", str(site), "."], cwd=src,
                           capture_output=True, text=True, timeout=600, check=False)
    assert build.returncode == 0, build.stderr[-3000:]
    assert (site / "porelab" / "_registry" / "policy.json").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = ("import json, porelab\n"
             "from porelab.tracking import load_policy, policy_path\n"
             "print(json.dumps({'package': porelab.__file__, 'path': str(policy_path()),"
             " 'policy': load_policy()}))\n")
    res = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, env=env, capture_output=True,
                         text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert Path(out["package"]).resolve().is_relative_to(site.resolve())       # the installed copy ran
    assert Path(out["path"]).resolve() == (site / "porelab" / "_registry" / "policy.json").resolve()
    assert out["policy"] == json.loads(POLICY.read_text())
