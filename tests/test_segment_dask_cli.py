"""``porelab segment --scheduler``: the same score (within 1e-5), mask and pore report as the one-process command;
zarr or .npy outputs written by the workers; bad addresses and unsupervised models refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("dask", reason="dask is not installed (pip install 'porelab[cluster]')")
pytest.importorskip("distributed", reason="dask.distributed is not installed (pip install 'porelab[cluster]')")
pytest.importorskip("zarr", reason="zarr is not installed (pip install 'porelab[cluster]')")

import torch
from click.testing import CliRunner

from porelab.cli import main
from porelab.model import PoreModel
from porelab.nets import build
from porelab.normalise import Normalisation

SHAPE = (48, 64, 64)
SPACING = ("0.1", "0.05", "0.05")
SCORE_COLUMNS = ("score_mean", "score_max")


def _scan(seed=7):
    """A noisy cylinder (z axis) with dark spherical pores, two of them cut by the side of the field, float32."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(SHAPE)
    part = ((y - 32) ** 2 + (x - 32) ** 2) < 24 ** 2
    scan = np.where(part, 1000.0, 100.0) + rng.normal(0, 50, SHAPE)
    for c, r in (((10, 30, 30), 3), ((24, 20, 40), 2), ((35, 40, 25), 4), ((40, 32, 12), 2), ((5, 32, 50), 2)):
        scan[((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) <= r * r] = 300.0
    scan[20, 30:33, 30:34] = np.nan                     # missing voxels: NaN score, never a pore
    return scan.astype(np.float32)


def _model(scan, name="unet"):
    """An untrained net: the chunked grid does not depend on the weights."""
    torch.manual_seed(0)
    kw = {"scale": 0.125} if name == "unet" else {"scale": 0.125, "patch_size": 16}
    return PoreModel.from_trained(build(name, **kw), name, Normalisation.fit(np.nan_to_num(scan, nan=1000.0)),
                                  "smoke", net_kwargs=kw, patch=16, threshold=0.5)


def _run(*args):
    res = CliRunner().invoke(main, [str(a) for a in args])
    return res.exit_code, res.stdout, res.stderr


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """The scan and model files, a threshold that splits the score, and the one-process command's output."""
    root = tmp_path_factory.mktemp("seg")
    scan = _scan()
    np.save(root / "scan.npy", scan)
    model = _model(scan)
    model.save(root / "model")
    ref = PoreModel.load(root / "model").predict(scan)
    # a threshold half-way between two distinct scores inside the part: a mask of a few hundred voxels
    vals = np.unique(ref[np.isfinite(ref) & (ref > 0)])
    k = int(0.97 * vals.size)
    thr = float((vals[k] + vals[k + 1]) / 2)
    code, out, err = _run("segment", root / "scan.npy", "-o", root / "one", "--model", root / "model",
                          "--threshold", repr(thr), "--spacing", *SPACING)
    assert code == 0, err
    mask = np.load(root / "one" / "mask.npy")
    assert 50 < mask.sum() < 0.2 * mask.size                   # a real split, not all or nothing
    return {"root": root, "thr": thr, "one": root / "one", "ref": ref, "summary": json.loads(out)}


def _same_report(a, b):
    """summary.json and pores.csv of two report folders: equal, score columns within 1e-5."""
    import csv

    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    la, lb = sa.pop("largest_pore"), sb.pop("largest_pore")
    assert sa == sb
    rows = [list(csv.DictReader((d / "pores.csv").read_text().splitlines())) for d in (a, b)]
    assert len(rows[0]) == len(rows[1]) == sa["pore_count"] > 0
    for ra, rb in zip(*rows, strict=True):
        for k in ra:
            if k in SCORE_COLUMNS and ra[k]:
                assert abs(float(ra[k]) - float(rb[k])) <= 1e-5, k
            else:
                assert ra[k] == rb[k], k
    assert {k: v for k, v in la.items() if k not in SCORE_COLUMNS} == \
        {k: v for k, v in lb.items() if k not in SCORE_COLUMNS}


def test_local_cluster_gives_the_one_process_score_mask_and_report(case):
    """Two worker processes, 32³ chunks (2 × 2 × 2 of them): zarr score and mask, the same report."""
    from porelab.io import read_volume

    root, out = case["root"], case["root"] / "many"
    code, stdout, err = _run("segment", root / "scan.npy", "-o", out, "--model", root / "model", "--threshold",
                             repr(case["thr"]), "--spacing", *SPACING, "--scheduler", "local", "--workers", "2",
                             "--chunk", "32")
    assert code == 0, err
    names = sorted(p.name for p in out.iterdir())
    assert names == [".porelab-output", "mask.zarr", "overlay.png", "pores.csv", "report.html", "score.zarr",
                     "segment.json", "size_histogram.png", "summary.json"]       # no model copy, no object left
    score = read_volume(out / "score.zarr")
    assert score.spacing == (0.1, 0.05, 0.05)
    score = np.asarray(score.array[:])
    ref = np.load(case["one"] / "score.npy")
    assert np.array_equal(np.isnan(score), np.isnan(ref)) and np.isnan(ref).sum() == 12
    assert np.nanmax(np.abs(score - ref)) <= 1e-5
    np.testing.assert_array_equal(np.asarray(read_volume(out / "mask.zarr").array[:]), np.load(case["one"] / "mask.npy"))
    _same_report(case["one"], out)
    s = json.loads(stdout)
    assert s["dask"]["workers"] == 2 and s["dask"]["chunks"] == [[32, 16], [32, 32], [32, 32]]
    one = case["summary"]
    for k in ("mask_voxels", "pore_count", "porosity_percent", "threshold", "skin", "nonfinite_voxels",
              "normalisation", "shape", "spacing"):
        assert s[k] == one[k], k
    assert "non-finite" in err and "Traceback" not in err


def test_npy_and_tif_outputs_through_an_in_process_cluster(case):
    """The same command on a threads-only cluster (fast): --mask-format npy has the workers fill score.npy and
    mask.npy; tif gathers the mask here and keeps score.zarr; --no-score --no-report writes only the mask."""
    from distributed import LocalCluster

    from porelab.io import read_mask

    root = case["root"]
    base = ["segment", root / "scan.npy", "--model", root / "model", "--threshold", repr(case["thr"]),
            "--spacing", *SPACING, "--chunk", "24"]
    want = np.load(case["one"] / "mask.npy")
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as lc:
        code, _, err = _run(*base, "-o", root / "npy", "--scheduler", lc.scheduler_address, "--mask-format", "npy")
        assert code == 0, err
        np.testing.assert_array_equal(np.load(root / "npy" / "mask.npy"), want)
        assert np.nanmax(np.abs(np.load(root / "npy" / "score.npy") - case["ref"])) <= 1e-5
        _same_report(case["one"], root / "npy")
        code, _, err = _run(*base, "-o", root / "tif", "--scheduler", lc.scheduler_address, "--mask-format", "tif")
        assert code == 0, err
        np.testing.assert_array_equal(read_mask(root / "tif" / "mask.tif"), want > 0)
        assert {p.name for p in (root / "tif").iterdir()} >= {"score.zarr", "mask.tif", "pores.csv"}
        assert not any(p.name.startswith((".mask", ".object", ".model")) for p in (root / "tif").iterdir())
        code, out, err = _run(*base, "-o", root / "bare", "--scheduler", lc.scheduler_address, "--no-score",
                              "--no-report")
        assert code == 0, err
        assert sorted(p.name for p in (root / "bare").iterdir()) == [".porelab-output", "mask.zarr", "segment.json"]
        assert json.loads(out)["mask_voxels"] == int(want.sum()) and json.loads(out)["pore_count"] is None


def test_a_bad_scheduler_address_is_one_line_and_leaves_nothing(case):
    root = case["root"]
    code, _, err = _run("segment", root / "scan.npy", "-o", root / "bad", "--model", root / "model",
                        "--scheduler", "udp://nowhere")
    assert code == 2 and err.count("\n") == 1 and "--scheduler" in err and "Traceback" not in err
    assert not (root / "bad").exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".bad")]        # no temporary folder either


def test_an_unsupervised_model_is_refused_in_one_line_before_any_work(case, tmp_path):
    scan = np.load(case["root"] / "scan.npy")
    _model(scan, "vae").save(tmp_path / "vae")
    code, _, err = _run("segment", case["root"] / "scan.npy", "-o", tmp_path / "out", "--model", tmp_path / "vae",
                        "--scheduler", "local", "--workers", "1")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "unsupervised" in err and "eq. (2)-(3)" in err and "whole scan" in err
    assert not (tmp_path / "out").exists()
