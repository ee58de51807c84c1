"""Cross-validation: one reproducible fold recipe, its hooks, the threshold clamp, the one scoring path,
the classical rows and the tables."""

from __future__ import annotations

import numpy as np
import pytest

from porelab import crossval
from porelab.config import get_profile


@pytest.fixture(scope="module")
def ctx(smoke_dataset, tmp_path_factory):
    prof = get_profile("smoke")
    prof = prof.replace(supervised=prof.train_config("unet", max_epochs=1, samples_per_volume=2))
    return crossval.make_context(prof, smoke_dataset.root, 0, workdir=tmp_path_factory.mktemp("cv"))


def test_a_fold_is_reproducible_from_its_seed(ctx):
    """train_fold seeds the initial weights as well as the training: same seed, same model."""
    import torch

    labels = crossval.label_source(ctx, "truth")
    runs = []
    for seed in (3, 3, 4):
        torch.manual_seed(len(runs))           # a different global state before every call
        model, _ = crossval.train_fold(ctx, "unet", {"scale": 0.125}, {}, 0, labels=labels, seed=seed)
        runs.append(model.state_dict)
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_run_folds_calls_its_hooks_and_a_report_that_raises_stops_it(ctx):
    import contextlib

    calls = []

    @contextlib.contextmanager
    def start(fold):
        calls.append(("start", fold))
        yield
        calls.append(("closed", fold))

    class Stop(Exception):
        pass

    def report(step, fold, value):
        calls.append(("report", step, fold))
        raise Stop

    hooks = crossval.FoldHooks(start=start, epoch=lambda fold, epoch, losses: calls.append(("epoch", fold, epoch)),
                               end=lambda result: calls.append(("end", result.fold, "val_ap" in result.metrics)),
                               report=report)
    with pytest.raises(Stop):
        crossval.run_folds(ctx, "unet", {"scale": 0.125}, {}, labels=crossval.label_source(ctx, "truth"),
                           hooks=hooks)
    assert calls == [("start", 0), ("epoch", 0, 0), ("end", 0, True), ("closed", 0), ("report", 0, 0)]
    folds, best = crossval.run_folds(ctx, "unet", {"scale": 0.125}, {}, labels=crossval.label_source(ctx, "alg1"))
    assert len(folds) == len(ctx.folds) and (best / "model.json").is_file()


def test_threshold_clamp_caps_the_labelled_fraction_of_the_part():
    score = np.arange(200, dtype=np.float32).reshape(2, 10, 10) / 200
    part = np.zeros(score.shape, bool)
    part[0] = True                                    # scores 0.000 … 0.495
    thr, policy = crossval.clamp_threshold(score, part, 0.25, "f1", 0.1)      # labels 50 % of the part
    assert thr == pytest.approx(np.percentile(score[0], 99.0))
    assert policy.startswith("99th percentile in the part (the f1 threshold labelled 50 %")
    assert crossval.clamp_threshold(score, part, 0.46, "f1", 0.1) == (pytest.approx(0.46), "f1")   # 8 %


def test_score_fold_clamps_a_degenerate_threshold(ctx):
    """A model whose score does not separate pores (the same value everywhere) labels the whole part at
    its F1-optimal threshold; the fold's threshold becomes the clamped percentile instead."""
    class Flat:
        kind, meta, threshold = "supervised", {}, 0.5

        def predict(self, raw, progress=False):
            return np.full(raw.shape, 0.3, np.float32)

    model = Flat()
    metrics, _ = crossval.score_fold(ctx, model, 0)
    assert model.meta["threshold_policy"].startswith("99th percentile in the part")
    assert metrics["threshold"] == model.threshold == pytest.approx(0.3)


def test_unsupervised_scores_are_what_predict_returns(smoke_dataset):
    """One reconstruction gives every score, equal to PoreModel.predict without any post-processing / with
    all of it (eq. (2)-(3) and the skin suppression), for both residual modes."""
    from porelab.model import PoreModel
    from porelab.nets import build
    from porelab.normalise import Normalisation

    raw = np.load(smoke_dataset.cv[0].scan).astype(np.float32)
    net = build("vae", scale=0.125, patch_size=16)
    model = PoreModel.from_trained(net, "vae", Normalisation.fit(raw), "smoke", patch=16)
    scores = model.unsupervised_scores(raw, ("abs", "dark"))
    for mode, (a, a_pp) in scores.items():
        m = model.replace(residual=mode)
        np.testing.assert_allclose(a, m.replace(postprocess=False, skin=0).predict(raw), atol=1e-6)
        np.testing.assert_allclose(a_pp, m.replace(postprocess=True).predict(raw), atol=1e-6)
        assert not np.allclose(a, a_pp)
    assert (scores["dark"][0] <= scores["abs"][0] + 1e-6).all()
    assert list(model.unsupervised_scores(raw)) == ["abs"]          # default: the model's own


def test_classical_rows_are_fitted_on_each_folds_training_scans(ctx):
    from porelab.baselines import NAMES, baseline_rows, get_baseline
    from porelab.errors import ConfigError

    rows = baseline_rows(ctx)
    assert list(rows) == list(NAMES) and all(len(r) == len(ctx.folds) for r in rows.values())
    assert 0.0 < rows["black top-hat"][0]["val_ap"] <= 1.0 and "hard_ap" in rows["black top-hat"][0]
    fold = ctx.folds[1]
    pred = get_baseline("black top-hat")([s for i, s in enumerate(ctx.cv) if i != fold], ctx.profile, seed=0)
    held = ctx.cv[fold]
    ref = ctx.references[held.name]
    assert rows["black top-hat"][1]["val_ap"] == crossval.evaluate(pred(held), held, "val", reference=ref)["val_ap"]
    assert any(n.startswith(f"black top-hat, fold {fold}") and "radius" in n for n in ctx.notes)
    with pytest.raises(ConfigError, match="available: Algorithm 1 labels"):
        get_baseline("otsu")


def test_summary_rows_carry_mean_and_ci_of_the_folds():
    from porelab.reporting.tables import build_tables, summary_rows

    folds = [{"val_ap": 0.5, "val_ap_pp": 0.7}, {"val_ap": 0.7, "val_ap_pp": 0.9}]
    rows = summary_rows([("m", "unsupervised", "none", folds)])
    assert [r["postprocessed"] for r in rows] == ["no", "yes"]
    assert rows[0]["val_ap"] == pytest.approx(0.6) and rows[1]["val_ap"] == pytest.approx(0.8)
    assert rows[0]["val_ap_ci95"] == pytest.approx(12.706 * 0.1, rel=1e-3)   # t(0.975, 1) · s / √2
    tables = build_tables([("m", "supervised", "pseudo-labels", folds)], profile="smoke", n_folds=2,
                          comparison=(folds, [{"val_ap": 0.1}, {"val_ap": 0.2}]))
    assert "0.600 ± 1.271" in tables["tables/summary.md"] and "Welch p =" in tables["tables/summary.md"]
    assert tables["tables/summary.csv"].startswith("model,family,labels,postprocessed,folds,")


def test_fewer_folds_than_cv_scans_are_explained_and_negative_folds_count_from_the_end(smoke_dataset):
    c = crossval.make_context("smoke", smoke_dataset.root, 0, hard=False)
    assert c.folds == [0, 1] and c.hard is None and "2 folds over" in c.notes[0]
    c = crossval.make_context("smoke", smoke_dataset.root, 0, folds=[-1])
    assert c.folds == [len(c.cv) - 1] and c.notes == []


def test_the_injected_threshold_counts_the_partial_volume_shell_as_negatives(ctx):
    """A smooth score (the injection's own darkening, blurred as a net's output is): the threshold that
    counts the shell around each injected pore as negative (labels' half-voxel convention) gives a mask
    closer to the injected pores than the AP's shell-ignoring threshold, which is lower and fattens them."""
    from scipy import ndimage

    from porelab.injection import injected_metrics
    from porelab.metrics import dice

    s = ctx.cv[0]
    inj = crossval.injection_for(ctx, s)
    score = ndimage.gaussian_filter((s.raw - inj.scan).astype(np.float32), 1.0)
    low = injected_metrics(score, inj, s.object)["threshold"]
    thr = crossval.injected_threshold(ctx, score, s)
    assert thr > low
    d_new = dice((score >= thr).astype(np.float32), inj.mask, 0.5, mask=s.object)
    d_old = dice((score >= low).astype(np.float32), inj.mask, 0.5, mask=s.object)
    assert d_new > d_old and d_new > 0.8


def test_injection_falls_back_when_algorithm1_candidates_leave_no_room(ctx):
    """A scan whose Algorithm 1 candidates cover the whole part (artefacts taken for pores) still gets
    injected pores: the candidates stop being kept clear of."""
    import dataclasses

    s = ctx.cv[1]
    flooded = dataclasses.replace(s, name="flooded", alg1=s.object.copy())
    inj = crossval.injection_for(ctx, flooded)
    assert inj.pores and inj.mask.any() and ctx.cache[("injection_exclude", "flooded")] is None
