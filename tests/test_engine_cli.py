"""`porelab train` and `porelab segment` end to end on the smoke dataset; clean one-line failures."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from porelab.cli import main


@pytest.fixture(scope="module")
def trained(smoke_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("engine_cli") / "model"
    res = CliRunner().invoke(main, ["train", "--data", str(smoke_dataset.root), "--net", "unet", "-o", str(out),
                                    "--profile", "smoke", "--labels", "truth", "--max-epochs", "1", "--seed", "3"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return out, json.loads(res.stdout[res.stdout.index("{"):])


def test_train_writes_a_model_with_a_chosen_threshold(trained, smoke_dataset):
    from porelab.model import PoreModel

    out, summary = trained
    model = PoreModel.load(out)
    assert model.name == "unet" and model.kind == "supervised" and model.patch == 16
    assert model.threshold == pytest.approx(summary["threshold"])
    assert model.meta["threshold_policy"].startswith("f1-optimal")
    assert model.meta["validation_scan"] == smoke_dataset.cv[-1].name
    assert model.meta["train_scans"] == [s.name for s in smoke_dataset.cv[:-1]]
    assert len(model.meta["history"]["train_loss"]) == 1
    assert 0.0 <= summary["val_ap"] <= 1.0


def test_segment_writes_every_output(trained, smoke_dataset, tmp_path):
    model_dir, _ = trained
    scan = smoke_dataset.hard.scan
    out = tmp_path / "seg"
    res = CliRunner().invoke(main, ["segment", str(scan), "-o", str(out), "--model", str(model_dir),
                                    "--threshold", "0.5", "--spacing", "0.5", "0.5", "0.5"])
    assert res.exit_code == 0, res.output
    names = {p.name for p in out.iterdir()}
    assert {"score.npy", "mask.npy", "overlay.png", "segment.json", "pores.csv", "summary.json"} <= names
    score = np.load(out / "score.npy")
    mask = np.load(out / "mask.npy")
    vol = np.load(scan)
    assert score.shape == vol.shape and score.dtype == np.float32
    assert mask.dtype == np.uint8 and np.array_equal(mask, (score >= 0.5).astype(np.uint8))
    summary = json.loads((out / "segment.json").read_text())
    assert summary["threshold"] == 0.5 and summary["spacing"] == [0.5, 0.5, 0.5]
    assert summary["mask_voxels"] == int(mask.sum())
    # the score is the model's prediction of the scan
    from porelab.model import PoreModel

    np.testing.assert_allclose(score, PoreModel.load(model_dir).predict(vol), atol=1e-6)
    # --no-score and another mask format
    out2 = tmp_path / "seg2"
    res = CliRunner().invoke(main, ["segment", str(scan), "-o", str(out2), "--model", str(model_dir),
                                    "--no-score", "--mask-format", "tif"])
    assert res.exit_code == 0, res.output
    assert not (out2 / "score.npy").exists() and (out2 / "mask.tif").is_file()


def test_segment_skin_option_overrides_the_models(trained, smoke_dataset, tmp_path):
    from porelab.model import PoreModel
    from porelab.postprocess import interior_mask

    model_dir, _ = trained
    assert PoreModel.load(model_dir).skin == 2            # trained by this version: the default skin
    scan = str(smoke_dataset.hard.scan)
    scores = {}
    for skin in ("0", "3"):
        out = tmp_path / f"seg{skin}"
        res = CliRunner().invoke(main, ["segment", scan, "-o", str(out), "--model", str(model_dir), "--skin", skin])
        assert res.exit_code == 0, res.output
        assert json.loads((out / "segment.json").read_text())["skin"] == int(skin)
        scores[skin] = np.load(out / "score.npy")
    keep = interior_mask(np.load(scan), 3)
    np.testing.assert_array_equal(scores["3"], np.where(keep, scores["0"], 0))
    assert scores["0"][~keep].any()                       # --skin 0 scores the skin too
    res = CliRunner().invoke(main, ["segment", scan, "-o", str(tmp_path / "bad"), "--model", str(model_dir),
                                    "--skin", "-1"])
    assert res.exit_code == 2 and res.stderr.startswith("porelab: error:") and "--skin" in res.stderr
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("case", ["missing_scan", "bad_scan", "missing_model", "not_a_model"])
def test_segment_fails_cleanly(trained, smoke_dataset, tmp_path, case):
    model_dir, _ = trained
    scan = str(smoke_dataset.hard.scan)
    if case == "missing_scan":
        scan = str(tmp_path / "nope.npy")
    elif case == "bad_scan":
        scan = str(tmp_path / "flat.npy")
        np.save(scan, np.zeros((8, 8), np.float32))
    model = str(model_dir)
    if case == "missing_model":
        model = str(tmp_path / "no_such_model")
    elif case == "not_a_model":
        model = str(tmp_path)
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["segment", scan, "-o", str(out), "--model", model])
    assert res.exit_code == 2
    err = res.stderr.strip()
    assert err.startswith("porelab: error:") and "\n" not in err and "Traceback" not in res.output
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporary left behind


def test_train_rejects_bad_options(smoke_dataset, tmp_path):
    res = CliRunner().invoke(main, ["train", "--data", str(tmp_path), "--net", "unet", "-o", str(tmp_path / "m")])
    assert res.exit_code == 2 and res.stderr.startswith("porelab: error:")
    res = CliRunner().invoke(main, ["train", "--data", str(smoke_dataset.root), "--net", "unet", "-o",
                                    str(tmp_path / "m"), "--scale", "0"])
    assert res.exit_code == 2 and "--scale" in res.stderr
    assert not (tmp_path / "m").exists()


def test_help_texts_teach():
    for cmd in ("train", "segment"):
        res = CliRunner().invoke(main, [cmd, "--help"])
        assert res.exit_code == 0 and "Example" in res.output and "(z, y, x)" in res.output
