"""Classical rows: fitted on training scans, label-free, scored like the nets (skin suppressed), by name."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from porelab import baselines
from porelab.baselines import forest, sauvola, tophat
from porelab.config import get_profile

#: a forest small enough for tests (the row's defaults: 50 trees of depth 12, 20 000 pore voxels)
TINY_FOREST = {"n_estimators": 8, "max_depth": 6, "max_pore_voxels": 1_000}


@pytest.fixture(scope="module")
def scans(smoke_dataset):
    from porelab.crossval import labelled, load_scans

    cv, hard, _, refs = load_scans(smoke_dataset.root)
    cv, (hard,) = labelled(cv, refs), labelled([hard], refs)
    return cv, hard


@pytest.fixture(scope="module")
def profile():
    return get_profile("smoke")


def _fit(name, train, profile, **kw):
    if name == "random forest (Alg. 1 labels)":
        kw = {**TINY_FOREST, **kw}
    return baselines.get_baseline(name)(train, profile, seed=0, **kw)


@pytest.fixture(scope="module")
def fitted(scans, profile):
    cv, _ = scans
    return {name: _fit(name, cv[1:3], profile) for name in baselines.NAMES}


@pytest.mark.parametrize("name", baselines.NAMES)
def test_every_row_scores_pores_above_the_metal_and_nothing_in_the_skin(name, fitted, scans, profile):
    """Scored on a held-out cylinder and the hard cube (never fitted on): the scan's shape, finite, ≥ 0,
    exactly 0 outside the skin-suppressed part, and a voxel AP far above the pore fraction (what a random
    score reaches)."""
    from porelab.metrics import average_precision
    from porelab.postprocess import interior_mask

    cv, hard = scans
    for s in (cv[0], hard):
        score = fitted[name](s)
        keep = interior_mask(s.raw, profile.skin)
        assert score.shape == s.raw.shape and score.dtype == np.float32
        assert np.isfinite(score).all() and (score >= 0).all()
        assert not score[~keep].any()
        inside = s.region
        assert score[s.truth & inside].mean() > score[~s.truth & inside].mean()
        frac = s.truth[inside].mean()
        assert average_precision(score, s.truth, mask=inside) > 8 * frac, (name, s.name)


def test_the_learned_and_tuned_rows_beat_algorithm_1_labels(fitted, scans):
    """On the held-out cylinder every row with a choice or a fit ranks pores better than the 0/1 labels."""
    from porelab.metrics import average_precision

    s = scans[0][0]
    ap = {n: average_precision(p(s), s.truth, mask=s.region) for n, p in fitted.items()}
    base = ap.pop("Algorithm 1 labels (as score)")
    assert all(v > base + 0.1 for v in ap.values()), ap


def test_choices_use_no_labels(scans, profile):
    """Labels and the dataset's object mask replaced by random masks: identical choices and scores."""
    cv, _ = scans
    rng = np.random.default_rng(7)
    train = cv[1:3]
    fake = [dataclasses.replace(s, truth=rng.random(s.raw.shape) < 0.05, region=rng.random(s.raw.shape) < 0.5)
            for s in train]
    small = {"black top-hat": {"smooth_grid": (0.0, 0.7)},
             "Sauvola threshold": {"windows": (7, 11), "ks": (0.1, 0.3)}}
    for name in ("black top-hat", "Sauvola threshold", "random forest (Alg. 1 labels)"):
        a, b = _fit(name, train, profile, **small.get(name, {})), _fit(name, fake, profile, **small.get(name, {}))
        assert a.params == b.params, name
        np.testing.assert_array_equal(a(cv[0]), b(cv[0]))
    # the reporting-only criterion does read the truth
    t_real = _fit("random forest (Alg. 1 labels)", train, profile, criterion="truth")
    t_fake = _fit("random forest (Alg. 1 labels)", fake, profile, criterion="truth")
    assert not np.array_equal(t_real(cv[0]), t_fake(cv[0]))


def test_slab_features_and_slabwise_forest_equal_the_whole_volume(fitted, scans, profile):
    from porelab.postprocess import interior_mask

    s = scans[0][0]
    keep = interior_mask(s.raw, profile.skin)
    whole = forest.voxel_features(s.scan)
    boxes = list(forest.slab_features(s.scan, keep, max_voxels=4_000))
    assert len(boxes) > 3                                      # several slabs, most with a halo on both sides
    for box, f in boxes:
        np.testing.assert_allclose(f, whole[box], rtol=1e-6, atol=1e-7)
    model = fitted["random forest (Alg. 1 labels)"].model
    expected = np.zeros(s.raw.shape, np.float32)
    expected[keep] = model.predict_proba(whole[keep])[:, 1]
    np.testing.assert_array_equal(forest.forest_score(model, s.scan, keep, max_voxels=4_000), expected)
    np.testing.assert_array_equal(fitted["random forest (Alg. 1 labels)"](s), expected)


def test_forest_samples_are_balanced_and_capped(scans, profile):
    cv, _ = scans
    p = _fit("random forest (Alg. 1 labels)", cv[1:3], profile, max_pore_voxels=400)
    assert p.params["training_pore_voxels"] == 400 and p.params["training_voxels"] == 800


def test_structure_radius_is_the_smallest_ball_whose_closing_fills_the_pore():
    """A dark ball of radius 3: a closing with a ball of 3 leaves it (the ball fits), the chosen radius 4
    fills it, so the top-hat of the chosen radius is the whole depth of the hole."""
    from skimage.morphology import ball

    x = np.full((21, 21, 21), 0.8, np.float32)
    hole = np.zeros(x.shape, bool)
    hole[5:12, 5:12, 5:12] = ball(3).astype(bool)
    x[hole] = 0.1
    r = tophat.structure_radius([hole])
    assert r == 4
    part = np.ones(x.shape, bool)
    np.testing.assert_allclose(tophat.tophat_score(x, part, radius=r, smooth=0)[hole], 0.7, atol=1e-6)
    assert tophat.tophat_score(x, part, radius=r - 1, smooth=0)[hole].max() == 0
    assert tophat.structure_radius([np.zeros(x.shape, bool)]) == tophat.TOPHAT_RADIUS


def test_sauvola_score_is_the_margin_below_the_local_threshold():
    """A dark voxel in flat metal scores (T − x) / 0.8 with T from scikit-image; flat metal scores 0."""
    from skimage.filters import threshold_sauvola

    x = np.full((15, 15, 15), 0.8, np.float32)
    x[7, 7, 7] = 0.2
    part = np.ones(x.shape, bool)
    s = sauvola.sauvola_score(x, part, window=7, k=0.2)
    t = threshold_sauvola(x, window_size=7, k=0.2, r=sauvola.SAUVOLA_R)
    assert s[7, 7, 7] == pytest.approx((t[7, 7, 7] - 0.2) / 0.8, rel=1e-5)
    assert s[0, 0, 0] == 0 and s.argmax() == np.ravel_multi_index((7, 7, 7), x.shape)


def test_unknown_row_lists_the_registered_names():
    from porelab.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        baselines.get_baseline("otsu")
    for name in baselines.NAMES:
        assert name in str(e.value)
    assert len(baselines.NAMES) == 4


def test_figures_use_classical_scores_computed_before_and_fit_only_without_them(smoke_dataset, fitted,
                                                                               profile, tmp_path, monkeypatch):
    """The search computes the classical rows' figure scores in its ``classical_rows`` phase; the summary's
    PR/ROC figure then reuses them and fits nothing. Without them the figure fits every row once."""
    from porelab.crossval import load_scans
    from porelab.reporting import figures

    cv, hard, _, refs = load_scans(smoke_dataset.root)
    calls = []

    def fit_all(train, prof, **kw):
        calls.append([s.name for s in train])
        return fitted

    monkeypatch.setattr(baselines, "fit_all", fit_all)
    precomputed = figures.classical_scores([hard], cv, profile)
    assert calls == [[s.name for s in cv]]
    assert set(precomputed[hard.name]) == set(baselines.NAMES)
    for name, score in precomputed[hard.name].items():
        np.testing.assert_array_equal(score, fitted[name](hard))

    calls.clear()
    paths = figures.model_curves([hard], {}, tmp_path / "a", profile=profile, train_scans=cv, references=refs,
                                 classical=precomputed)
    assert calls == [] and [p.name for p in paths] == [f"pr_roc_{hard.name}.png"]
    assert paths[0].read_bytes()[:4] == b"\x89PNG"

    paths = figures.model_curves([hard], {}, tmp_path / "b", profile=profile, train_scans=cv, references=refs)
    assert calls == [[s.name for s in cv]] and paths[0].exists()
