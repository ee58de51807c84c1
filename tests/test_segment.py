"""segment(): the model's score, its threshold, the mask and the pore table, in one call."""

from __future__ import annotations

import numpy as np
import pytest

from porelab.errors import ConfigError
from porelab.io import Volume
from porelab.model import PoreModel
from porelab.nets import build
from porelab.normalise import Normalisation
from porelab.segment import segment


@pytest.fixture(scope="module")
def scan_and_model(smoke_dataset):
    import torch

    raw = np.load(smoke_dataset.cv[0].scan).astype(np.float32)
    torch.manual_seed(0)
    model = PoreModel.from_trained(build("unet", scale=0.125), "unet", Normalisation.fit(raw), "smoke", patch=16)
    score = model.predict(raw)
    model.threshold = float(np.quantile(score[np.isfinite(score)], 0.99))
    return raw, model, score


def test_segment_thresholds_the_models_score(scan_and_model):
    from porelab.pores import pore_table

    raw, model, score = scan_and_model
    seg = segment(raw, model)
    np.testing.assert_allclose(seg.score, score, atol=1e-6)
    assert seg.threshold == model.threshold and seg.spacing == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(seg.mask, score >= model.threshold)
    assert seg.mask.any() and seg.info["skin"] == model.skin
    assert seg.pores == pore_table(seg.mask)


def test_segment_takes_a_threshold_a_skin_and_the_volumes_spacing(scan_and_model):
    from porelab.pores import pore_table

    raw, model, _ = scan_and_model
    seg = segment(Volume(raw, (0.5, 0.25, 0.25), spacing_known=True), model, threshold=0.0, skin=0)
    assert seg.spacing == (0.5, 0.25, 0.25) and seg.info["skin"] == 0 and model.skin == 2
    np.testing.assert_allclose(seg.score, model.replace(skin=0).predict(raw), atol=1e-6)
    np.testing.assert_array_equal(seg.mask, seg.score >= 0.0)
    assert seg.pores == pore_table(seg.mask, spacing=(0.5, 0.25, 0.25))
    out = np.empty(raw.shape, np.float32)
    assert segment(raw, model, out=out).score is out


@pytest.mark.parametrize("kw, match", [({"threshold": float("nan")}, "threshold"), ({"skin": -1}, "skin")])
def test_segment_rejects_bad_settings(scan_and_model, kw, match):
    raw, model, _ = scan_and_model
    with pytest.raises(ConfigError, match=match):
        segment(raw, model, **kw)
