"""Profiles: typed settings per concern, and exactly the effective values recorded in tests/data."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from porelab.config import PROFILES, LabelConfig, SearchSpace, get_profile
from porelab.errors import ConfigError
from porelab.nets import NAMES

RECORDED = json.loads((Path(__file__).parent / "data" / "profile_settings.json").read_text())["profiles"]


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_training_configs_of_every_net_are_the_recorded_ones(name):
    prof = get_profile(name)
    for net in NAMES:
        assert prof.train_config(net).to_dict() == RECORDED[name]["train"][net], net


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_search_and_label_settings_are_the_recorded_ones(name):
    prof, rec = get_profile(name), RECORDED[name]
    s = prof.search
    assert {"unsupervised_nets": list(s.unsupervised_nets), "supervised_nets": list(s.supervised_nets),
            "widths": list(s.widths), "residuals": list(s.residuals),
            "n_trials_unsupervised": s.n_trials_unsupervised, "n_trials_supervised": s.n_trials_supervised,
            "grid": s.grid, "heuristic_comparison": s.heuristic_comparison, "paper_alphas": list(s.paper_alphas),
            "paper_gammas": list(s.paper_gammas), "paper_gamma0": s.paper_gamma0} == rec["search"]
    assert prof.supervised_net_kwargs == rec["supervised_net_kwargs"]
    assert (prof.skin, prof.smooth, prof.tophat_radius) == (rec["skin"], rec["smooth"], rec["tophat_radius"])
    lab = prof.labels
    assert {"pseudo_label_min_voxels": lab.min_voxels, "pseudo_label_min_extent": lab.min_extent,
            "threshold": lab.threshold, "max_label_fraction": lab.max_label_fraction} == rec["labels"]
    assert {"sim_preset": prof.sim_preset, "patch": prof.patch, "net_scale": prof.net_scale,
            "folds": prof.folds} == rec["scale"]


def test_every_profile_is_recorded():
    assert set(PROFILES) == set(RECORDED)


def test_train_config_is_a_copy_with_overrides_applied_last():
    quick = get_profile("quick")
    cfg = quick.train_config("unet", max_epochs=3, augment={"noise_std": 0.3})
    assert (cfg.max_epochs, cfg.augment.noise_std, cfg.grad_clip) == (3, 0.3, 1.0)
    cfg.loss_params["alpha"] = 0.9
    assert quick.supervised.max_epochs == 20 and quick.supervised.augment.noise_std == 0.16
    assert quick.train_config("unet").loss_params == {}
    with pytest.raises(ConfigError, match="unknown training option"):
        quick.train_config("unet", epochs=3)
    with pytest.raises(Exception, match="unknown"):
        quick.train_config("resnet")


def test_profiles_are_typed_and_serialisable():
    for prof in PROFILES.values():
        d = prof.to_dict()
        json.dumps(d)
        assert not hasattr(prof, "extra")
        assert {"unsupervised", "supervised", "search", "labels", "skin", "smooth"} <= set(d)
    with pytest.raises(dataclasses.FrozenInstanceError):
        PROFILES["smoke"].folds = 3


def test_bad_settings_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="supervised nets"):
        SearchSpace(supervised_nets=("vae",))
    with pytest.raises(ConfigError, match="residuals"):
        SearchSpace(residuals=("both",))
    with pytest.raises(ConfigError, match="labels never choose it"):
        LabelConfig(threshold="truth")
    with pytest.raises(ConfigError, match="max_label_fraction"):
        LabelConfig(max_label_fraction=0)
    with pytest.raises(ConfigError, match="unknown profile 'nope'"):
        get_profile("nope")
