"""Voxel metrics against scikit-learn, the binned streaming mode against the exact one, object metrics, folds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from porelab import metrics
from porelab.errors import ScanError
from porelab.metrics import (
    compute_curve,
    detection_rate,
    dice,
    evaluate_scores,
    fold_summary,
    plot_pr_roc,
    porosity_error,
    welch_test,
)


def scored_volume(rng, shape=(20, 30, 40), frac=0.03, ties=False):
    truth = rng.random(shape) < frac
    score = rng.normal(0, 1, shape) + 1.8 * truth
    if ties:
        score = np.round(score, 1)
    return score.astype(np.float32), truth


@pytest.mark.parametrize("ties", [False, True])
def test_exact_matches_sklearn_with_and_without_mask(rng, ties):
    score, truth = scored_volume(rng, ties=ties)
    mask = rng.random(score.shape) < 0.7
    for m in (None, mask):
        s = score[m] if m is not None else score.ravel()
        t = truth[m] if m is not None else truth.ravel()
        c = compute_curve(score, truth, mask=m, method="exact")
        assert c.average_precision() == pytest.approx(average_precision_score(t, s), abs=1e-12)
        assert c.roc_auc() == pytest.approx(roc_auc_score(t, s), abs=1e-12)
        assert metrics.average_precision(score, truth, mask=m) == pytest.approx(average_precision_score(t, s))
        assert metrics.roc_auc(score, truth, mask=m) == pytest.approx(roc_auc_score(t, s))
        assert c.n_voxels == t.size and c.n_pos == t.sum()


def test_binned_streaming_close_to_exact_on_1e6_voxels(rng, tmp_path, monkeypatch):
    score, truth = scored_volume(rng, shape=(100, 100, 100), frac=0.01)
    exact = compute_curve(score, truth, method="exact")
    # stream from memmaps in many slabs
    np.save(tmp_path / "s.npy", score)
    np.save(tmp_path / "t.npy", truth.astype(np.uint8))
    s_mm = np.load(tmp_path / "s.npy", mmap_mode="r")
    t_mm = np.load(tmp_path / "t.npy", mmap_mode="r")
    monkeypatch.setattr(metrics, "_SLAB_VOXELS", 100 * 100 * 7)
    binned = compute_curve(s_mm, t_mm, method="binned")
    assert not binned.exact and binned.n_pos == exact.n_pos and binned.n_neg == exact.n_neg
    assert abs(binned.average_precision() - exact.average_precision()) < 1e-3
    assert abs(binned.roc_auc() - exact.roc_auc()) < 1e-4
    # few bins are visibly coarser: the test above is not vacuous
    coarse = compute_curve(s_mm, t_mm, method="binned", bins=8)
    assert abs(coarse.average_precision() - exact.average_precision()) > 1e-3
    # auto switches to binned above the limit
    monkeypatch.setattr(metrics, "EXACT_MAX_VOXELS", 1000)
    res = evaluate_scores(s_mm, t_mm)
    assert res["method"] == "binned" and abs(res["ap"] - exact.average_precision()) < 1e-3


def test_dice_and_best_threshold_against_bruteforce(rng):
    score, truth = scored_volume(rng, shape=(6, 10, 10), ties=True)
    t = truth.ravel()
    s = score.ravel()

    def f1(thr):
        p = s >= thr
        tp = np.sum(p & t)
        return 2 * tp / (2 * tp + np.sum(p & ~t) + np.sum(~p & t))

    assert dice(score, truth, 0.7) == pytest.approx(f1(0.7))
    cands = np.unique(s)
    best = max(cands, key=f1)
    res = evaluate_scores(score, truth)
    assert res["best_dice"] == pytest.approx(f1(best))
    assert res["best_threshold"] == pytest.approx(best)
    assert res["dice"] == pytest.approx(res["best_dice"]) and res["threshold"] == res["best_threshold"]
    fixed = evaluate_scores(score, truth, threshold=0.5)
    assert fixed["threshold"] == 0.5 and fixed["dice"] == pytest.approx(f1(0.5))
    assert set(res) >= {"ap", "auc", "dice", "threshold", "best_threshold", "best_dice", "pore_fraction",
                        "n_voxels"}
    assert res["pore_fraction"] == pytest.approx(t.mean()) and res["n_voxels"] == t.size
    # both empty -> 1, by convention
    assert dice(np.zeros((2, 2, 2)), np.zeros((2, 2, 2), bool), 0.5) == 1.0


def test_bad_inputs_and_missing_class(rng):
    score, truth = scored_volume(rng, shape=(4, 5, 6))
    with pytest.raises(ScanError, match="shape"):
        evaluate_scores(score, truth[:3])
    with pytest.raises(ScanError, match="mask"):
        evaluate_scores(score, truth, mask=truth[:, :4])
    bad = score.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ScanError, match="NaN"):
        evaluate_scores(bad, truth)
    res = evaluate_scores(score, np.zeros_like(truth))
    assert math.isnan(res["ap"]) and math.isnan(res["auc"]) and res["pore_fraction"] == 0


def test_detection_rate_and_porosity_error():
    truth = np.zeros((12, 12, 12), bool)
    truth[1:3, 1:3, 1:3] = True             # 8 voxels
    truth[5:8, 5:8, 5:8] = True             # 27 voxels
    truth[9:11, 9:11, 1:5] = True           # 16 voxels
    pred = np.zeros_like(truth)
    pred[1:3, 1:3, 1:3] = True              # pore 1 fully
    pred[5, 5:8, 5:8] = True                # pore 2: 9/27 = 33 %
    pred[0, 11, 11] = True                  # a false positive elsewhere
    spacing = (0.5, 0.5, 0.5)
    half = detection_rate(pred, truth, spacing)
    any_ = detection_rate(pred, truth, spacing, min_fraction=0)
    assert half["detected"].tolist() == [True, False, False]
    assert any_["detected"].tolist() == [True, True, False]
    assert half["diameters"][0] == pytest.approx((6 * 8 * 0.125 / math.pi) ** (1 / 3))
    assert half["overall"] == pytest.approx(1 / 3) and any_["overall"] == pytest.approx(2 / 3)
    assert half["n_pores"].sum() == 3 and half["n_detected"].sum() == 1
    custom = detection_rate(pred, truth, spacing, bins=[0, 1.3, 10])
    assert custom["n_pores"].tolist() == [1, 2] and custom["pod"].tolist() == [1.0, 0.0]

    obj = np.zeros_like(truth)
    obj[:, :, :6] = True
    err = porosity_error(pred, truth, mask=obj)
    n_obj = obj.sum()
    assert err["true_percent"] == pytest.approx(100 * (truth & obj).sum() / n_obj)
    assert err["predicted_percent"] == pytest.approx(100 * (pred & obj).sum() / n_obj)
    assert err["error_points"] == pytest.approx(err["predicted_percent"] - err["true_percent"])


def test_fold_statistics():
    from scipy.stats import t as student
    from scipy.stats import ttest_ind

    mean, half = fold_summary([1.0, 2.0, 3.0])       # s = 1: the 95 % half-width is t(0.975, 2) / √3
    assert mean == 2.0 and half == pytest.approx(student.ppf(0.975, 2) / math.sqrt(3))
    assert math.isnan(fold_summary([0.5])[1])
    a, b = np.array([0.81, 0.84, 0.79, 0.86, 0.83]), np.array([0.70, 0.78, 0.66, 0.74, 0.80, 0.71])
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    assert welch_test(a, b) == pytest.approx(2 * student.sf(abs(t), df), rel=1e-9)
    assert welch_test(a, b) == pytest.approx(ttest_ind(a, b, equal_var=False).pvalue, rel=1e-9)
    close = a + 1e-3 * np.arange(5)
    assert welch_test(a, close) == pytest.approx(ttest_ind(a, close, equal_var=False).pvalue, rel=1e-9)


def test_plot_pr_roc_writes_png_atomically(rng, tmp_path):
    score, truth = scored_volume(rng, shape=(8, 16, 16))
    out = tmp_path / "curves.png"
    plot_pr_roc({"a": (score, truth), "b": (score * 0.5 + rng.random(score.shape), truth, None)}, out,
                title="test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]
