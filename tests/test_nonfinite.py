"""NaN/±inf voxels are missing data on every scoring path (library, CLI, pyfunc, serving); what pyfunc accepts."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy.ndimage import binary_dilation

from porelab.cli import main
from porelab.errors import ScanError
from porelab.model import PoreModel
from porelab.nets import build
from porelab.normalise import Normalisation, count_nonfinite, fill_nonfinite

N_MISSING = 800


def _scan(shape=(24, 40, 36), seed=0):
    """A cylinder of metal (1200) in air (100) with two spherical pores, Gaussian noise; float32."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    part = ((y - shape[1] / 2) ** 2 + (x - shape[2] / 2) ** 2) < (0.35 * shape[1]) ** 2
    pores = (((z - 12) ** 2 + (y - 20) ** 2 + (x - 18) ** 2) <= 6) | (((z - 6) ** 2 + (y - 16) ** 2
                                                                         + (x - 22) ** 2) <= 3)
    return (np.where(part & ~pores, 1200.0, 100.0) + rng.normal(0, 20, shape)).astype(np.float32)


def _with_missing(scan, n=N_MISSING, seed=1):
    """``scan`` with ``n`` random voxels set to NaN, +inf and -inf (a third each); and their mask."""
    bad = scan.copy()
    idx = np.random.default_rng(seed).choice(bad.size, n, replace=False)
    bad.flat[idx[0::3]] = np.nan
    bad.flat[idx[1::3]] = np.inf
    bad.flat[idx[2::3]] = -np.inf
    return bad, ~np.isfinite(bad)


def _model(name="unet", threshold=0.4):
    torch.manual_seed(0)
    net_kwargs = {"scale": 0.125} if name == "unet" else {"scale": 0.125, "patch_size": 16}
    net = build(name, **net_kwargs)
    return PoreModel.from_trained(net, name, Normalisation.fit(_scan()), "smoke", net_kwargs=net_kwargs, patch=16,
                                  threshold=threshold)


def _near(missing, r=3):
    """The missing voxels and their neighbourhood (``r`` voxels), where the filled scan may change a score."""
    return binary_dilation(missing, iterations=r)


def _strict_json(path):
    def refuse(token):
        raise AssertionError(f"{path}: invalid JSON constant {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("nonfinite") / "unet"
    _model("unet").save(out)
    return out


# ------------------------------------------------------------------------------------------------ library
def test_fill_nonfinite_uses_the_nearest_finite_voxel():
    scan = _scan()
    same, missing, n = fill_nonfinite(scan)
    assert same is scan and missing is None and n == 0                      # nothing missing: no copy
    ints = np.arange(8 * 9 * 10, dtype=np.int16).reshape(8, 9, 10)
    assert fill_nonfinite(ints)[0] is ints and count_nonfinite(ints) == 0
    bad = scan.copy()
    bad[3, 10, 10] = np.nan                                                  # inside the metal
    bad[3, 0, 0] = np.inf                                                    # in the air
    bad[5] = np.nan                                                          # a whole missing slice
    filled, missing, n = fill_nonfinite(bad)
    assert n == 2 + 40 * 36 and missing.sum() == n and np.array_equal(missing, ~np.isfinite(bad))
    assert filled.dtype == np.float32 and np.isfinite(filled).all()
    assert np.array_equal(filled[~missing], bad[~missing])                  # known voxels untouched
    assert filled[3, 10, 10] in {bad[3, 9, 10], bad[3, 11, 10], bad[3, 10, 9], bad[3, 10, 11]}
    assert filled[3, 0, 0] in {bad[3, 1, 0], bad[3, 0, 1]}
    assert np.array_equal(filled[5], filled[4])                              # nearest slice with data (4 before 6)
    with pytest.raises(ScanError, match="NaN or infinite"):
        fill_nonfinite(np.full((4, 5, 6), np.nan, np.float32))


@pytest.mark.parametrize("name", ["unet", "vae"])
def test_predict_scores_nan_exactly_at_missing_voxels(name):
    model = _model(name)
    scan = _scan()
    bad, missing = _with_missing(scan)
    clean, info0 = model.predict(scan, return_info=True)
    score, info = model.predict(bad, return_info=True)
    assert info0["nonfinite_voxels"] == 0 and info["nonfinite_voxels"] == N_MISSING
    assert np.array_equal(np.isnan(score), missing)                          # NaN there, finite everywhere else
    assert np.isfinite(score[~missing]).all()
    assert np.isfinite([info["air"], info["material"]]).all()
    far = ~_near(missing)
    m0, m1 = clean >= model.threshold, score >= model.threshold
    assert not m1[missing].any()                                             # no pore at a missing voxel
    assert m0[far].sum() > 0
    if name == "unet":    # the net sees the same input away from the missing voxels: the same mask
        assert np.array_equal(m0[far], m1[far])
        np.testing.assert_allclose(score[far], clean[far], atol=0.05)
    else:                 # λ*, σ* of eq. (3) are refitted on slightly different scores: almost the same
        np.testing.assert_allclose(score[far], clean[far], atol=0.02)
        assert (m0[far] != m1[far]).sum() <= max(3, 0.05 * m0[far].sum())
    _, mask = model.segment(bad)
    assert not mask[missing].any()


def test_all_nonfinite_scan_is_refused():
    with pytest.raises(ScanError, match="NaN or infinite"):
        _model().predict(np.full((16, 16, 16), np.nan, np.float32))


def test_object_masks_and_report_ignore_missing_voxels(tmp_path):
    from porelab.labels import object_mask
    from porelab.pores import write_report
    from porelab.postprocess import interior_mask

    scan = _scan()
    bad, missing = _with_missing(scan)
    near = _near(missing, 1)                       # a filled surface voxel may move the surface by one voxel
    assert np.array_equal(object_mask(bad)[~near], object_mask(scan)[~near])
    far = ~_near(missing, 3)                       # ... and the skin eroded by 2 voxels with it
    assert np.array_equal(interior_mask(bad, 2)[far], interior_mask(scan, 2)[far])
    pores = np.zeros(scan.shape, bool)
    pores[10:13, 18:21, 16:19] = True
    a = write_report(pores, tmp_path / "a", volume=scan)
    b = write_report(pores, tmp_path / "b", volume=bad)
    assert b["pore_count"] == a["pore_count"] == 1
    assert abs(b["object_volume_voxels"] - object_mask(scan).sum()) <= N_MISSING
    assert b["porosity_percent"] == pytest.approx(a["porosity_percent"], rel=0.05)
    _strict_json(tmp_path / "b" / "summary.json")


# ----------------------------------------------------------------------------------------------------- CLI
def test_segment_cli_reports_missing_voxels_and_still_finds_pores(model_dir, tmp_path):
    scan = _scan()
    bad, missing = _with_missing(scan)
    np.save(tmp_path / "clean.npy", scan)
    np.save(tmp_path / "bad.npy", bad)
    out = {}
    for stem in ("clean", "bad"):
        res = CliRunner().invoke(main, ["segment", str(tmp_path / f"{stem}.npy"), "-o", str(tmp_path / stem / "seg"),
                                        "--model", str(model_dir)])
        assert res.exit_code == 0, res.output
        out[stem] = (res, tmp_path / stem / "seg")
    res, seg = out["bad"]
    warnings = [ln for ln in res.stderr.splitlines() if "non-finite" in ln]
    assert warnings == [(f"porelab: warning: {N_MISSING} non-finite voxels treated as missing "
                         "(score NaN there, never a pore)")]
    assert "non-finite" not in out["clean"][0].stderr
    summary = _strict_json(seg / "segment.json")
    assert summary["nonfinite_voxels"] == N_MISSING
    assert _strict_json(out["clean"][1] / "segment.json")["nonfinite_voxels"] == 0
    report = _strict_json(seg / "summary.json")
    assert report["parameters"]["nonfinite_voxels"] == N_MISSING and report["pore_count"] > 0
    score, mask = np.load(seg / "score.npy"), np.load(seg / "mask.npy")
    assert np.array_equal(np.isnan(score), missing) and not mask[missing].any()
    clean_mask = np.load(out["clean"][1] / "mask.npy")
    far = ~_near(missing)
    assert clean_mask[far].any() and np.array_equal(mask[far], clean_mask[far])
    np.testing.assert_array_equal(score, PoreModel.load(model_dir).predict(bad))


@pytest.mark.parametrize("case", ["all_nan", "threshold_nan", "threshold_inf", "device_cuda", "spacing_zero"])
def test_segment_cli_refuses_in_one_line(model_dir, tmp_path, case):
    scan = tmp_path / "scan.npy"
    np.save(scan, np.full((16, 16, 16), np.nan, np.float32) if case == "all_nan" else _scan())
    extra = {"all_nan": [], "threshold_nan": ["--threshold", "nan"], "threshold_inf": ["--threshold", "inf"],
             "device_cuda": ["--device", "cuda"], "spacing_zero": ["--spacing", "0", "1", "1"]}[case]
    if case == "device_cuda" and torch.cuda.is_available():
        pytest.skip("CUDA present")
    out = tmp_path / "seg"
    res = CliRunner().invoke(main, ["segment", str(scan), "-o", str(out), "--model", str(model_dir), *extra])
    assert res.exit_code == 2, res.output
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("porelab: error:") and "Traceback" not in res.output
    assert {"threshold_nan": "--threshold", "threshold_inf": "--threshold", "device_cuda": "CUDA",
            "all_nan": "NaN", "spacing_zero": "spacing"}[case] in err[0]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".seg")]


# ------------------------------------------------------------------------------------------ pyfunc, serving
@pytest.fixture
def pyfunc_model(model_dir, mlflow_env):
    import mlflow

    from porelab import tracking

    with mlflow.start_run():
        info = tracking.log_pore_model(model_dir, name="model")
    return mlflow.pyfunc.load_model(info.model_uri)


def test_pyfunc_accepts_what_the_cli_accepts_and_marks_missing(pyfunc_model, model_dir):
    from mlflow.exceptions import MlflowException

    model = PoreModel.load(model_dir)
    scan = np.round(_scan())                                     # integer grey values: exact in every dtype
    ref = model.predict(scan)
    for arr in (scan, scan.astype(np.float64), scan.astype(np.int16), scan.astype(np.uint16), scan[None],
                scan.astype(np.float64)[None]):
        out = pyfunc_model.predict(arr)
        assert out.dtype == np.float32 and out.shape == scan.shape, arr.dtype
        np.testing.assert_array_equal(out, ref)
    bad, missing = _with_missing(scan)
    out = pyfunc_model.predict(bad.astype(np.float64)[None])
    assert np.array_equal(np.isnan(out), missing)
    np.testing.assert_array_equal(out, model.predict(bad))
    for wrong, word in ((scan[0], "shape"), (np.stack([scan, scan]), "shape"), (scan.astype(str), "dtype"),
                        (np.full(scan.shape, np.nan), "NaN")):
        with pytest.raises(MlflowException, match=word) as exc:
            pyfunc_model.predict(wrong)
        assert "\n" not in str(exc.value) and len(str(exc.value)) < 200


def _asgi_post(app, path, body: bytes) -> tuple[int, bytes]:
    """POST ``body`` (JSON) to an ASGI ``app`` in-process; returns (status, response body)."""
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 1234), "server": ("127.0.0.1", 80)}
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_serving_returns_finite_scores_except_at_missing_voxels(pyfunc_model, model_dir, monkeypatch):
    from mlflow.environment_variables import _MLFLOW_IS_IN_SERVING_ENVIRONMENT
    from mlflow.pyfunc import scoring_server

    monkeypatch.delenv(_MLFLOW_IS_IN_SERVING_ENVIRONMENT.name, raising=False)   # init() sets it; undone after
    app = scoring_server.init(pyfunc_model)
    scan = _scan()
    bad, missing = _with_missing(scan)
    # Python's json writes NaN/Infinity literals, which MLflow's server (Python's json) reads back
    status, body = _asgi_post(app, "/invocations", json.dumps({"inputs": bad.astype(np.float64).tolist()}).encode())
    assert status == 200, body[:300]
    pred = np.asarray(json.loads(body)["predictions"], dtype=np.float32)
    assert pred.shape == scan.shape
    assert np.array_equal(~np.isfinite(pred), missing)
    np.testing.assert_allclose(pred, PoreModel.load(model_dir).predict(bad), atol=1e-6)
    status, body = _asgi_post(app, "/invocations", json.dumps({"inputs": scan[0].tolist()}).encode())
    assert status == 400 and b"shape" in body and len(body) < 1000
