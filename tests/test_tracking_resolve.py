"""tracking.resolve_model: a folder, a registered name, models:/ and runs:/ URIs; the package's lazy
public names (a model folder never imports MLflow) and the names older callers import."""

from __future__ import annotations

import hashlib
import pickle
import subprocess
import sys

import mlflow
import numpy as np
import pytest

from porelab import tracking
from porelab.errors import ModelError
from porelab.model import PoreModel


def _saved_model(folder, threshold: float = 0.4):
    from porelab.nets import build
    from porelab.normalise import Normalisation

    raw = np.random.default_rng(0).random((16, 16, 16)).astype(np.float32)
    model = PoreModel.from_trained(build("unet", scale=0.125), "unet", Normalisation.fit(raw), "smoke",
                                   net_kwargs={"scale": 0.125}, patch=16, threshold=threshold)
    model.save(folder)
    return model


def test_folders_and_paths(tmp_path):
    _saved_model(tmp_path / "m")
    loaded = tracking.resolve_model(tmp_path / "m")
    assert isinstance(loaded, PoreModel) and loaded.threshold == pytest.approx(0.4)
    assert tracking.resolve_model(loaded) is loaded
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ModelError, match="must be a folder with model.json and weights.pt"):
        tracking.resolve_model(tmp_path / "file.txt")
    with pytest.raises(ModelError, match="model folder not found: .*nope/model"):
        tracking.resolve_model(tmp_path / "nope" / "model")


def test_a_model_folder_imports_no_mlflow(tmp_path):
    _saved_model(tmp_path / "m")
    probe = ("import sys\n"
             "from porelab import tracking\n"
             f"m = tracking.resolve_model({str(tmp_path / 'm')!r})\n"
             "print(type(m).__name__, sorted(k for k in ('mlflow', 'optuna') if k in sys.modules))\n")
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                         check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["PoreModel", "[]"]


def test_runs_uri_and_registered_name_give_the_logged_model(mlflow_env, tmp_path):
    _saved_model(tmp_path / "m", threshold=0.3)
    tracking.setup_mlflow("resolve")
    with mlflow.start_run() as run:
        info = tracking.log_pore_model(tmp_path / "m", name="model", registered_name="porelab-supervised")
    tracking.promote("porelab-supervised", info.registered_model_version, 0.5)
    by_run = tracking.resolve_model(f"runs:/{run.info.run_id}/model")
    by_name = tracking.resolve_model("porelab-supervised")
    for m in (by_run, by_name):
        assert isinstance(m, PoreModel) and m.threshold == pytest.approx(0.3) and m.name == "unet"
    assert by_run.meta["logged"] == {"run_id": run.info.run_id, "name": "model"}
    assert str(by_name.meta["registered"]["version"]) == str(info.registered_model_version)
    with pytest.raises(ModelError, match="no run 'f00' in"):
        tracking.resolve_model("runs:/f00/model")
    with pytest.raises(ModelError, match="cannot parse model URI"):
        tracking.resolve_model("runs:/only-an-id")


def test_public_names_resolve_and_old_pickles_find_the_pyfunc():
    for name in tracking.__all__:
        assert getattr(tracking, name) is not None, name
    assert set(dir(tracking)) >= set(tracking.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tracking.nope  # noqa: B018
    # models registered before the package split pickled the class as porelab.tracking.PorePyfunc
    assert pickle.loads(b"cporelab.tracking\nPorePyfunc\n.") is tracking.PorePyfunc
    from porelab import runtime
    from porelab.automl import storage

    assert tracking.Interrupted is runtime.Interrupted
    assert tracking.optuna_storage_url is storage.optuna_storage_url


def test_provenance_helpers(tmp_path):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tracking.repo_dir(), capture_output=True,
                          text=True, check=True).stdout.strip()
    assert tracking.git_commit().split("+")[0] == head
    (tmp_path / "a.npy").write_bytes(b"abc")
    (tmp_path / "sub").mkdir()                                   # folders are not hashed
    assert tracking.file_hashes(tmp_path) == {"a.npy": hashlib.sha256(b"abc").hexdigest()}
