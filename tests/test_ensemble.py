"""Fold ensembles: one PoreModel averaging the nets of a configuration's folds (mean probability / mean
reconstruction), saved and loaded as one folder, and the registration's choice between it and the best fold."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_model import _scan  # the same small part with one pore

from porelab.errors import ConfigError, ModelError
from porelab.model import PoreModel
from porelab.nets import build
from porelab.normalise import Normalisation


def _model(name, seed, scan, threshold=0.4):
    torch.manual_seed(seed)
    kw = {"scale": 0.125} if name == "unet" else {"scale": 0.125, "patch_size": 16}
    return PoreModel.from_trained(build(name, **kw), name, Normalisation.fit(scan), "smoke", net_kwargs=kw,
                                  patch=16, threshold=threshold)


@pytest.fixture
def scan():
    return _scan(np.random.default_rng(3))


def test_supervised_ensemble_scores_the_mean_probability_of_its_members(scan):
    a, b = _model("unet", 1, scan), _model("unet", 2, scan)
    ens = PoreModel.ensemble([a, b], threshold=0.3)
    sa, sb, se = a.predict(scan), b.predict(scan), ens.predict(scan)
    assert ens.members == 2 and ens.threshold == 0.3
    assert not np.allclose(sa, sb)                     # the members differ, so the mean is a real test
    np.testing.assert_allclose(se, (sa + sb) / 2, atol=2e-6)


def test_unsupervised_ensemble_reconstructs_the_mean_of_its_members(scan):
    a, b = _model("vae", 1, scan), _model("vae", 2, scan)
    ens = PoreModel.ensemble([a, b])
    ra, rb, re = a.reconstruct(scan), b.reconstruct(scan), ens.reconstruct(scan)
    assert not np.allclose(ra, rb)
    np.testing.assert_allclose(re, (ra + rb) / 2, atol=2e-6)
    assert np.isfinite(ens.predict(scan)).all()


def test_an_ensemble_round_trips_through_its_folder(tmp_path, scan):
    ens = PoreModel.ensemble([_model("unet", 1, scan), _model("unet", 2, scan)], threshold=0.35,
                             meta={"form": "fold ensemble"})
    ens.save(tmp_path / "ens")
    cfg = json.loads((tmp_path / "ens" / "model.json").read_text())
    assert cfg["members"] == 2 and cfg["meta"]["form"] == "fold ensemble"
    back = PoreModel.load(tmp_path / "ens")
    assert back.members == 2 and back.threshold == 0.35
    np.testing.assert_array_equal(back.predict(scan), ens.predict(scan))


def test_members_must_share_the_architecture(scan):
    unet = _model("unet", 1, scan)
    wider = PoreModel.from_trained(build("unet", scale=0.25), "unet", Normalisation.fit(scan), "smoke",
                                   net_kwargs={"scale": 0.25}, patch=16)
    with pytest.raises(ConfigError, match="share net"):
        PoreModel.ensemble([unet, wider])
    with pytest.raises(ConfigError, match="at least one"):
        PoreModel.ensemble([])


def test_a_folder_whose_member_count_disagrees_is_refused(tmp_path, scan):
    ens = PoreModel.ensemble([_model("unet", 1, scan), _model("unet", 2, scan)])
    ens.save(tmp_path / "ens")
    cfg_path = tmp_path / "ens" / "model.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["members"] = 3
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="2 nets, the description says 3"):
        PoreModel.load(tmp_path / "ens")


def _fold_models(ctx, thresholds):
    out = []
    for i, t in enumerate(thresholds):
        torch.manual_seed(10 + i)
        out.append(PoreModel.from_trained(build("unet", scale=0.125), "unet", Normalisation.fit(ctx.cv[0].raw),
                                          "smoke", net_kwargs={"scale": 0.125}, patch=16, threshold=t))
    return out


@pytest.mark.parametrize("margin", [-1.0, 1.0])
def test_the_registered_form_follows_the_test_scans_injected_pores(monkeypatch, smoke_dataset, margin):
    """With the margin forced either way, the ensemble (threshold: the mean of its members') or the best
    fold (unchanged) is returned, and the choice records both APs on the test scan's injected pores."""
    from porelab.automl import ensemble
    from porelab.crossval import make_context

    ctx = make_context("smoke", smoke_dataset.root, 0)
    models = _fold_models(ctx, (0.2, 0.4))
    monkeypatch.setattr(ensemble, "MARGIN", margin)
    model, choice = ensemble.choose_form(ctx, models)
    assert choice["scan"] == ctx.hard.name and choice["injected_pores"] > 0
    assert 0 <= choice["ap_inj_best_fold"] <= 1 and 0 <= choice["ap_inj_fold_ensemble"] <= 1
    if margin < 0:
        assert model.members == 2 and model.threshold == pytest.approx(0.3)
        assert choice["registered_form"].startswith("fold ensemble (2 models")
    else:
        assert model is models[0] and model.threshold == 0.2 and choice["registered_form"] == "best fold"


def test_without_a_test_scan_the_best_fold_is_registered(smoke_dataset):
    import dataclasses

    from porelab.automl.ensemble import choose_form
    from porelab.crossval import make_context

    ctx = dataclasses.replace(make_context("smoke", smoke_dataset.root, 0), hard=None)
    models = _fold_models(ctx, (0.2, 0.4))
    model, choice = choose_form(ctx, models)
    assert model is models[0] and "no test scan" in choice["why"]
    assert choose_form(ctx, models[:1])[1]["why"] == "one fold model"
