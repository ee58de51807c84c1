"""`porelab cv`, `porelab pseudolabel` and `porelab retrain` at smoke sizes (run_cv, the pseudo-labels of a
model folder, run_retrain)."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
from click.testing import CliRunner

from porelab.cli import main


def _json(res) -> dict:
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout[res.stdout.index("{"):])


def _children(parent_id: str) -> list:
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]


def test_cv_cross_validates_one_configuration(mlflow_env, smoke_dataset):
    res = CliRunner().invoke(main, ["cv", "--data", str(smoke_dataset.root), "--net", "unet", "--profile", "smoke",
                                    "--labels", "alg1", "--param", "alpha=0.7", "--quiet"])
    out = _json(res)
    assert out["net"] == "unet" and out["folds"] == 2 and 0.0 <= out["val_ap"] <= 1.0 and "hard_ap" in out
    run = mlflow.get_run(out["run_id"])
    assert run.info.run_name == "cv-unet" and run.data.params["labels"] == "alg1"
    assert json.loads(run.data.params["loss.alpha"]) == 0.7
    folds = _children(out["run_id"])
    assert sorted(r.data.tags["porelab.fold"] for r in folds) == ["0", "1"]
    assert all("val_ap" in r.data.metrics for r in folds)


def test_cv_rejects_an_unknown_net(mlflow_env, smoke_dataset):
    res = CliRunner().invoke(main, ["cv", "--data", str(smoke_dataset.root), "--net", "resnet"])
    assert res.exit_code == 2 and "resnet" in res.output


@pytest.fixture
def vae_folder(smoke_dataset, tmp_path):
    import torch

    from porelab.model import PoreModel
    from porelab.nets import build
    from porelab.normalise import Normalisation

    raw = np.load(smoke_dataset.cv[0].scan).astype(np.float32)
    torch.manual_seed(0)
    model = PoreModel.from_trained(build("vae", scale=0.125, patch_size=16), "vae", Normalisation.fit(raw), "smoke",
                                   patch=16, residual="dark")
    score = model.predict(raw)
    model.threshold = float(np.quantile(score[np.isfinite(score)], 0.995))
    return model.save(tmp_path / "vae"), model


def test_pseudolabel_writes_the_labels_of_a_model_folder(mlflow_env, smoke_dataset, vae_folder, tmp_path):
    from porelab.config import get_profile
    from porelab.crossval import make_context
    from porelab.pseudolabels import pseudo_labels

    folder, model = vae_folder
    out = tmp_path / "labels"
    res = CliRunner().invoke(main, ["pseudolabel", "--data", str(smoke_dataset.root), "--model", str(folder),
                                    "-o", str(out), "--profile", "smoke"])
    printed = _json(res)
    assert printed["threshold"] == pytest.approx(model.threshold) and printed["min_voxels"] == 4
    stats = json.loads((out / "stats.json").read_text())
    ctx = make_context("smoke", smoke_dataset.root, 0)
    cfg = get_profile("smoke").labels
    labels, expected = pseudo_labels(ctx.cv + [ctx.hard], model.predict, threshold=model.threshold,
                                     min_voxels=cfg.min_voxels, min_extent=cfg.min_extent, references=ctx.references)
    assert stats["scans"] == json.loads(json.dumps(expected))
    for s in ctx.cv:
        np.testing.assert_array_equal(np.load(out / f"{s.name}_pseudo.npy"), labels[s.name].astype(np.uint8))
    assert not (out / f"{ctx.hard.name}_pseudo.npy").exists()


def test_retrain_on_a_label_folder_registers_the_supervised_model(mlflow_env, smoke_dataset, tmp_path):
    labels = tmp_path / "truth"
    labels.mkdir()
    for info in smoke_dataset.cv:
        np.save(labels / f"{info.name}.npy", (np.load(info.truth) > 0).astype(np.uint8))
    res = CliRunner().invoke(main, ["retrain", "--data", str(smoke_dataset.root), "--labels", str(labels),
                                    "--profile", "smoke", "--quiet"])
    out = _json(res)
    assert out["supervised"]["complete"] == 1 and out["supervised"]["best_params"]["alpha"] == 0.633
    reg = out["supervised_registry"]
    assert (reg["name"], reg["version"], reg["stage"]) == ("porelab-supervised", "1", "Production")
    meta = mlflow.pyfunc.load_model("models:/porelab-supervised@production").metadata.metadata
    assert meta["net"] == "unet" and meta["pseudo_labels"] == {"labels": str(labels)}
    run = mlflow.get_run(out["run_id"])
    assert run.data.params["label_source"] == str(labels)
    assert "tables/summary.md" in {a.path for a in mlflow.MlflowClient().list_artifacts(out["run_id"], "tables")}


def test_retrain_with_a_missing_label_file_is_one_line(mlflow_env, smoke_dataset, tmp_path):
    res = CliRunner().invoke(main, ["retrain", "--data", str(smoke_dataset.root), "--labels", str(tmp_path),
                                    "--profile", "smoke"])
    assert res.exit_code == 2 and "no label file" in res.stderr and "Traceback" not in res.output
