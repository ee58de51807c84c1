"""Shared fixtures. Every test works on simulated scans or tiny files it writes itself."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def smoke_dataset(tmp_path_factory):
    """A tiny simulated dataset (preset ``smoke``): five cylinders + one hard cube with exact truth."""
    from porelab.simulate.dataset import load_manifest, simulate_dataset

    out = tmp_path_factory.mktemp("smoke_data")
    simulate_dataset(out, preset="smoke", seed=0, progress=False)
    return load_manifest(out)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def mlflow_env(tmp_path, monkeypatch):
    """An isolated MLflow tracking/registry store and Optuna storage under tmp_path."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return {"tracking_uri": uri, "optuna_storage": f"sqlite:///{tmp_path / 'optuna.db'}", "dir": tmp_path}
