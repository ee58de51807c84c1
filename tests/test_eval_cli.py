"""`porelab evaluate` and `porelab complexity`: JSON against the library functions, files, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from porelab.cli import main
from porelab.metrics import evaluate_scores


@pytest.fixture
def files(tmp_path, rng):
    truth = rng.random((12, 20, 24)) < 0.04
    score = (rng.normal(0, 1, truth.shape) + 2.0 * truth).astype(np.float32)
    obj = np.zeros(truth.shape, np.uint8)
    obj[:, 2:18, 2:22] = 1
    paths = {"score": tmp_path / "cyl_score.npy", "truth": tmp_path / "cyl_truth.npy",
             "obj": tmp_path / "cyl_object.npy"}
    np.save(paths["score"], score)
    np.save(paths["truth"], truth.astype(np.uint8))
    np.save(paths["obj"], obj)
    return paths, score, truth, obj.astype(bool)


def run(args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def test_evaluate_json_matches_metrics(files, tmp_path):
    paths, score, truth, _obj = files
    out = tmp_path / "eval"
    r = run(["evaluate", paths["score"], paths["truth"], "--json", "-o", out])
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    ref = evaluate_scores(score, truth)
    for key in ("ap", "auc", "dice", "threshold", "best_threshold", "best_dice", "pore_fraction", "n_voxels"):
        assert got[key] == pytest.approx(ref[key]), key
    assert (out / "cyl_score_pr_roc.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "cyl_score_metrics.json").read_text())["ap"] == pytest.approx(ref["ap"])


def test_evaluate_mask_threshold_and_default_dir(files):
    paths, score, truth, obj = files
    r = run(["evaluate", paths["score"], paths["truth"], "--mask", paths["obj"], "--threshold", "1.5", "--json"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    ref = evaluate_scores(score, truth, mask=obj, threshold=1.5)
    assert got["threshold"] == 1.5 and got["dice"] == pytest.approx(ref["dice"])
    assert got["ap"] == pytest.approx(ref["ap"]) and got["n_voxels"] == obj.sum()
    assert not (paths["score"].parent / "cyl_score_pr_roc.png").exists()   # --json alone only prints
    human = run(["evaluate", paths["score"], paths["truth"]])
    assert human.exit_code == 0 and human.stdout.splitlines()[0].split()[0] == "ap"
    assert (paths["score"].parent / "cyl_score_pr_roc.png").exists()       # beside SCORE by default


def test_evaluate_bad_inputs_are_one_line(files, tmp_path):
    paths, _score, truth, _ = files
    np.save(tmp_path / "small.npy", truth[:6].astype(np.uint8))
    out = tmp_path / "never"
    cases = [
        ["evaluate", paths["score"], tmp_path / "small.npy", "-o", out],            # shape mismatch
        ["evaluate", paths["score"], paths["truth"], "--mask", tmp_path / "small.npy", "-o", out],
        ["evaluate", tmp_path / "missing.npy", paths["truth"], "-o", out],
    ]
    for args in cases:
        r = run(args)
        assert r.exit_code == 2, (args, r.output)
        assert "Traceback" not in r.output
        err = r.stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("porelab: error:"), r.stderr
    assert not out.exists()
    r = run(["evaluate", paths["score"], tmp_path / "small.npy"])
    assert "differs" in r.stderr


def test_complexity_json_and_errors():
    from porelab.complexity import measure

    r = run(["complexity", "--names", "unet", "--patch", "16", "--scale", "0.125", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert [set(row) for row in rows] == [{"name", "params", "trainable_params", "macs", "fwd_peak_mb",
                                           "bwd_peak_mb", "total_macs"}]
    ref = measure("unet", patch=16, scale=0.125)
    assert rows[0]["params"] == ref["params"] and rows[0]["macs"] == ref["macs"]
    assert rows[0]["total_macs"] == ref["total_macs"]
    human = run(["complexity", "--names", "unet", "--patch", "16", "--scale", "0.125"])
    assert human.exit_code == 0 and "unet" in human.stdout and "paper" in human.stdout
    for args in (["--names", "nosuchnet"], ["--patch", "20"], ["--scale", "0"]):
        r = run(["complexity", *args])
        assert r.exit_code == 2 and "Traceback" not in r.output
        assert r.stderr.strip().splitlines()[-1].startswith("porelab: error:")


def test_evaluate_refuses_nan_threshold_and_a_scan_as_truth(files, tmp_path):
    paths, score, truth, _ = files
    np.save(tmp_path / "nan_truth.npy", np.where(truth, 1.0, np.nan).astype(np.float32))
    np.save(tmp_path / "u16_truth.npy", (truth * 2).astype(np.uint16))
    out = tmp_path / "never"
    cases = [
        (["--threshold", "nan"], "--threshold"),
        (["--threshold", "inf"], "--threshold"),
        ([], "cyl_score.npy: not a truth"),                         # the CT-like score given as truth
        ([], "nan_truth.npy: the truth has NaN"),
        ([], "u16_truth.npy: not a truth"),
        (["--mask", paths["score"]], "cyl_score.npy: not a object mask"),
    ]
    for extra, words in cases:
        t = paths["truth"]
        if "truth" in words:
            t = tmp_path / words.split(":")[0] if "_truth" in words else paths["score"]
        r = run(["evaluate", paths["score"], t, "-o", out, *extra])
        assert r.exit_code == 2, (extra, words, r.output)
        err = r.stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("porelab: error:") and words in err[0], r.stderr
        assert "Traceback" not in r.output
    assert not out.exists()
    # booleans, 0/1 in any dtype and 0/255 in uint8 are masks
    for name, arr in (("b.npy", truth), ("f.npy", truth.astype(np.float32)), ("u.npy", truth.astype(np.uint8) * 255)):
        np.save(tmp_path / name, arr)
        r = run(["evaluate", paths["score"], tmp_path / name, "--json"])
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["ap"] == pytest.approx(evaluate_scores(score, truth)["ap"])


def test_evaluate_leaves_out_nonfinite_scores(files, tmp_path):
    paths, score, truth, obj = files
    bad = score.copy()
    bad[0, :5, :4] = np.nan
    bad[1, 3, 3] = np.inf
    np.save(tmp_path / "seg_score.npy", bad)
    known = np.isfinite(bad)
    out = tmp_path / "eval"
    r = run(["evaluate", tmp_path / "seg_score.npy", paths["truth"], "--mask", paths["obj"], "--json", "-o", out])
    assert r.exit_code == 0, r.output
    assert r.stderr.strip() == "porelab: warning: 21 non-finite score voxels treated as missing (left out)"
    got = json.loads(r.stdout)
    ref = evaluate_scores(score, truth, mask=obj & known)
    assert got["nonfinite_voxels"] == 21 and got["n_voxels"] == int((obj & known).sum())
    assert got["ap"] == pytest.approx(ref["ap"]) and got["dice"] == pytest.approx(ref["dice"])

    def refuse(token):
        raise AssertionError(f"invalid JSON constant {token}")

    assert json.loads((out / "seg_score_metrics.json").read_text(), parse_constant=refuse)["nonfinite_voxels"] == 21
