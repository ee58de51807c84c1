"""Pseudo-labels from a known score: the exact mask and statistics."""

from __future__ import annotations

import numpy as np
import pytest

from porelab.crossval import Reference, Scan
from porelab.errors import ConfigError
from porelab.pseudolabels import pseudo_labels


def _scan(name: str, role: str) -> tuple[Scan, np.ndarray, Reference]:
    shape = (16, 16, 16)
    part = np.zeros(shape, bool)
    part[1:15, 1:15, 1:15] = True
    score = np.zeros(shape, np.float32)
    score[3:6, 3:6, 3:6] = 0.9           # a 27-voxel pore: kept
    score[10, 10, 10] = 0.9              # one voxel: below min_voxels (4)
    score[10:12, 3:5, 10] = 0.9          # 4 voxels, one plane thick: below min_extent (2)
    score[8:10, 8:10, 3:5] = 0.4         # below the threshold
    score[0, 0:3, 0:3] = 0.9             # outside the part
    score[12, 12, 12] = np.nan           # a missing voxel: never a pore
    truth = np.zeros(shape, bool)
    truth[3:6, 3:6, 3:6] = True
    truth[10, 10, 10] = True
    alg1 = np.zeros(shape, bool)
    alg1[3:5, 3:6, 3:6] = True           # 18 of the kept pore's voxels
    raw = np.full(shape, 0.8, np.float32)
    return Scan(name, raw, raw, part, alg1, role), score, Reference(truth, part)


def test_pseudo_labels_threshold_the_score_inside_the_part_and_drop_small_pores():
    (cv, s_cv, ref), (hard, s_hard, _) = _scan("cyl", "cv"), _scan("cube", "hard")
    scores = {id(cv.raw): s_cv, id(hard.raw): s_hard}
    labels, stats = pseudo_labels([cv, hard], lambda raw: scores[id(raw)], threshold=0.5, min_voxels=4,
                                  min_extent=2, references={"cyl": ref})
    expected = np.zeros(cv.raw.shape, bool)
    expected[3:6, 3:6, 3:6] = True
    assert list(labels) == ["cyl"]                      # the hard scan is never a training label
    np.testing.assert_array_equal(labels["cyl"], expected)
    n_part = 14 ** 3
    st = stats["cyl"]
    assert st["role"] == "cv" and stats["cube"]["role"] == "hard"
    assert st["porosity_percent"] == pytest.approx(100 * 27 / n_part)
    assert st["true_porosity_percent"] == pytest.approx(100 * 28 / n_part)
    assert st["pore_count"] == 1
    assert st["dice_vs_truth"] == pytest.approx(2 * 27 / (27 + 28))
    assert st["dice_vs_alg1"] == pytest.approx(2 * 18 / (27 + 18))
    assert st["alg1_dice_vs_truth"] == pytest.approx(2 * 18 / (18 + 28))
    assert np.isnan(stats["cube"]["dice_vs_truth"])     # no reference given for it: nothing to report


def test_the_labels_do_not_depend_on_the_references():
    """The references are only reported: random ones give the same pseudo-labels, other statistics."""
    cv, score, ref = _scan("cyl", "cv")
    rng = np.random.default_rng(3)
    fake = Reference(rng.random(cv.raw.shape) < 0.3, rng.random(cv.raw.shape) < 0.7)
    a, sa = pseudo_labels([cv], lambda raw: score, threshold=0.5, min_voxels=4, references={"cyl": ref})
    b, sb = pseudo_labels([cv], lambda raw: score, threshold=0.5, min_voxels=4, references={"cyl": fake})
    np.testing.assert_array_equal(a["cyl"], b["cyl"])
    assert sa["cyl"]["dice_vs_truth"] != sb["cyl"]["dice_vs_truth"]


def test_pseudo_labels_without_clean_up_keep_every_pore_above_the_threshold():
    cv, score, _ = _scan("cyl", "cv")
    labels, stats = pseudo_labels([cv], lambda raw: score, threshold=0.5)
    assert int(labels["cyl"].sum()) == 27 + 1 + 4 and stats["cyl"]["pore_count"] == 3
    labels, _ = pseudo_labels([cv], lambda raw: score, threshold=0.3)
    assert int(labels["cyl"].sum()) == 27 + 1 + 4 + 8


def test_a_score_of_the_wrong_shape_is_a_config_error():
    cv, _, _ = _scan("cyl", "cv")
    with pytest.raises(ConfigError, match="cyl"):
        pseudo_labels([cv], lambda raw: np.zeros((4, 4, 4), np.float32), threshold=0.5)
