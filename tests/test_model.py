"""PoreModel: save/load round trip, per-scan normalisation, unsupervised scoring, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from porelab.errors import ConfigError, ModelError
from porelab.model import PoreModel, choose_threshold
from porelab.nets import build
from porelab.normalise import Normalisation


def _scan(rng, shape=(24, 40, 36)):
    z, y, x = np.indices(shape)
    part = ((y - shape[1] / 2) ** 2 + (x - shape[2] / 2) ** 2) < (0.35 * shape[1]) ** 2
    pores = ((z - 12) ** 2 + (y - 20) ** 2 + (x - 18) ** 2) <= 6
    scan = np.where(part & ~pores, 1200.0, 100.0) + rng.normal(0, 20, shape)
    return scan.astype(np.float32)


def _model(name="unet", rng=None, **kw):
    torch.manual_seed(0)
    net_kwargs = {"scale": 0.125} if name == "unet" else {"scale": 0.125, "patch_size": 16}
    net = build(name, **net_kwargs)
    norm = Normalisation.fit(_scan(rng or np.random.default_rng(0)))
    return PoreModel.from_trained(net, name, norm, "smoke", net_kwargs=net_kwargs, patch=16, threshold=0.4, **kw)


def test_supervised_round_trip_identical_predictions(tmp_path, rng):
    model = _model("unet", meta={"ap": 0.5})
    scan = _scan(rng)
    before = model.predict(scan)
    assert before.shape == scan.shape and before.dtype == np.float32
    assert 0.0 <= before.min() and before.max() <= 1.0
    model.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.json", "weights.pt"]
    cfg = json.loads((tmp_path / "m" / "model.json").read_text())
    assert cfg["kind"] == "supervised" and cfg["name"] == "unet" and cfg["threshold"] == 0.4
    loaded = PoreModel.load(tmp_path / "m")
    assert loaded.meta == {"ap": 0.5, "profile": "smoke"} and loaded.patch == 16
    np.testing.assert_array_equal(loaded.predict(scan), before)
    _, mask = loaded.segment(scan)
    np.testing.assert_array_equal(mask, before >= 0.4)


def test_unsupervised_round_trip_and_postprocess_flag(tmp_path, rng):
    from porelab.postprocess import (
        DEFAULT_SKIN,
        DEFAULT_SMOOTH,
        anomaly_map,
        apply_skin,
        interior_mask,
        surface_compensation,
    )

    model = _model("vae")
    assert model.kind == "unsupervised"
    scan = _scan(rng)
    score, info = model.predict(scan, return_info=True)
    assert {"lambda", "sigma", "air", "material"} <= set(info)
    model.save(tmp_path / "v")
    np.testing.assert_array_equal(PoreModel.load(tmp_path / "v").predict(scan), score)
    # the score is the surface-compensated |x - x_hat| of the reassembled reconstruction
    from porelab.inference import predict_volume

    norm = Normalisation.fit(scan)
    net = model.net("cpu")
    x_hat = predict_volume(lambda t: net.reconstruct(norm.apply_torch(t)), scan, patch=16, progress=False)
    # new models pre-filter the scan and suppress the part's skin (porelab's defaults)
    assert (model.smooth, model.skin) == (DEFAULT_SMOOTH, DEFAULT_SKIN) and model.smooth > 0 and model.skin > 0
    a = anomaly_map(norm.apply(scan), x_hat, smooth=model.smooth)
    keep = interior_mask(scan, model.skin)
    np.testing.assert_allclose(score, apply_skin(surface_compensation(a, x_hat)[0], keep), atol=1e-6)
    assert not score[~keep].any()
    raw = model.replace(postprocess=False, skin=0, smooth=0.0).predict(scan)
    np.testing.assert_allclose(raw, anomaly_map(norm.apply(scan), x_hat), atol=1e-6)


def test_model_json_without_skin_or_smooth_loads_with_both_off(tmp_path, rng):
    """A model saved before ``smooth``/``skin`` existed scores exactly as it did."""
    model = _model("vae")
    model.save(tmp_path / "v")
    cfg_path = tmp_path / "v" / "model.json"
    cfg = json.loads(cfg_path.read_text())
    assert (cfg["smooth"], cfg["skin"]) == (model.smooth, model.skin)
    del cfg["smooth"], cfg["skin"]
    cfg_path.write_text(json.dumps(cfg))
    old = PoreModel.load(tmp_path / "v")
    assert (old.smooth, old.skin) == (0.0, 0)
    scan = _scan(rng)
    np.testing.assert_allclose(old.predict(scan), model.replace(smooth=0.0, skin=0).predict(scan), atol=1e-6)
    with pytest.raises(ModelError):
        model.replace(skin=-1)


def test_per_scan_normalisation_makes_grey_levels_irrelevant(rng):
    model = _model("unet")
    scan = _scan(rng)
    a = model.predict(scan)
    b = model.predict(scan * 3.0 + 500.0)
    np.testing.assert_allclose(a, b, atol=1e-4)
    fixed = model.replace(normalisation=Normalisation(air=0.0, material=1.0, per_scan=False))
    assert np.abs(fixed.predict(scan) - a).max() > 1e-3


def test_out_memmap_receives_the_score(tmp_path, rng):
    model = _model("unet")
    scan = _scan(rng)
    out = np.lib.format.open_memmap(tmp_path / "s.npy", mode="w+", dtype=np.float32, shape=scan.shape)
    model.predict(scan, out=out)
    del out
    np.testing.assert_array_equal(np.load(tmp_path / "s.npy"), model.predict(scan))


def test_load_errors_are_one_line(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        PoreModel.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="missing model.json"):
        PoreModel.load(tmp_path / "empty")
    _model("unet").save(tmp_path / "m")
    (tmp_path / "m" / "weights.pt").write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="unreadable weights") as exc:
        PoreModel.load(tmp_path / "m")
    assert "\n" not in str(exc.value)
    _model("unet").save(tmp_path / "m2")
    (tmp_path / "m2" / "model.json").write_text("{broken")
    with pytest.raises(ModelError, match="unreadable model description"):
        PoreModel.load(tmp_path / "m2")
    _model("unet").save(tmp_path / "m3")
    cfg = json.loads((tmp_path / "m3" / "model.json").read_text())
    cfg["net_kwargs"]["scale"] = 0.25  # weights no longer fit
    (tmp_path / "m3" / "model.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="do not fit"):
        PoreModel.load(tmp_path / "m3")


def test_save_is_atomic(tmp_path, monkeypatch):
    model = _model("unet")
    model.save(tmp_path / "m")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        model.replace(threshold=0.9).save(tmp_path / "m")
    with pytest.raises(OSError):
        model.save(tmp_path / "new")
    assert not (tmp_path / "new").exists()
    assert PoreModel.load(tmp_path / "m").threshold == 0.4  # the old folder survived intact
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_choose_threshold_policies(rng):
    truth = np.zeros((10, 10, 10), bool)
    truth[2:4, 2:4, 2:4] = True
    score = np.where(truth, 0.7, 0.2).astype(np.float32) + rng.uniform(0, 0.05, truth.shape).astype(np.float32)
    thr, policy = choose_threshold(score, truth)
    assert "f1" in policy and score[~truth].max() < thr <= score[truth].min()
    assert np.array_equal(score >= thr, truth)
    assert choose_threshold(score, None, kind="supervised")[0] == 0.5
    thr_u, policy_u = choose_threshold(score, None, kind="unsupervised")
    assert "percentile" in policy_u and thr_u == pytest.approx(np.percentile(score, 99.0))


@pytest.mark.parametrize("name", ["mssunet", "unetpp", "unet3p", "accunet", "cevae", "gmvae", "vqvae", "rvvae"])
def test_every_net_trains_and_scores(name, tmp_path):
    from porelab.config import get_profile
    from porelab.nets import SUPERVISED
    from porelab.train import Sample, fit

    sup = name in SUPERVISED
    rng = np.random.default_rng(0)
    scan = np.clip(rng.normal(0.8, 0.05, (24, 24, 24)), 0, 1).astype(np.float32)
    label = np.zeros(scan.shape, np.uint8)
    label[10:13, 10:13, 10:13] = 1
    scan[label > 0] = 0.1
    samples = [Sample(scan, label if sup else None, "a")]
    kw = {"scale": 0.125} if sup else {"scale": 0.125, "patch_size": 16}
    cfg = get_profile("smoke").train_config(name, max_epochs=1, samples_per_volume=4, val_patches=4, batch_size=2)
    torch.manual_seed(0)
    net, hist = fit(build(name, **kw), name, samples, samples, cfg, progress=False)
    assert np.isfinite(hist["train_loss"][0]) and np.isfinite(hist["val_loss"][0])
    model = PoreModel.from_trained(net, name, Normalisation(air=0.0, material=0.8), "smoke", net_kwargs=kw,
                                   patch=16)
    model.save(tmp_path / name)
    score = PoreModel.load(tmp_path / name).predict(scan)
    assert score.shape == scan.shape and score.dtype == np.float32 and np.isfinite(score).all()
    np.testing.assert_array_equal(score, model.predict(scan))


def test_reconstruct_is_the_input_of_the_unsupervised_score(rng):
    from porelab.postprocess import anomaly_map

    model = _model("vae", postprocess=False, skin=0, smooth=0.0)
    scan = _scan(rng)
    x_hat = model.reconstruct(scan)
    assert x_hat.shape == scan.shape and x_hat.dtype == np.float32
    np.testing.assert_allclose(model.predict(scan), anomaly_map(Normalisation.fit(scan).apply(scan), x_hat),
                               atol=1e-6)
    with pytest.raises(ConfigError, match="supervised"):
        _model("unet").reconstruct(scan)


def test_dark_residual_is_saved_and_used(tmp_path, rng):
    from porelab.errors import ModelError
    from porelab.postprocess import anomaly_map

    model = _model("vae", postprocess=False, residual="dark", skin=0, smooth=0.0)
    scan = _scan(rng)
    x_hat = model.reconstruct(scan)
    x = Normalisation.fit(scan).apply(scan)
    score = model.predict(scan)
    np.testing.assert_allclose(score, anomaly_map(x, x_hat, residual="dark"), atol=1e-6)
    assert (score[x > x_hat + 1e-5] == 0).all() and score.max() > 0
    model.save(tmp_path / "m")
    loaded = PoreModel.load(tmp_path / "m")
    assert loaded.residual == "dark"
    np.testing.assert_array_equal(loaded.predict(scan), score)
    with pytest.raises(ModelError, match="residual"):
        model.replace(residual="bright")
