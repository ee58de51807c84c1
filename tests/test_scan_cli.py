"""``porelab info / label / report`` end to end, and one-line errors with no output left for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from porelab.cli import main
from porelab.io import read_mask, read_volume, write_volume


def _sibling(name):
    """Load a helper module from this folder by path (works whatever pytest's import mode)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(f"_porelab_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


noisy_cylinder = _sibling("test_labels").noisy_cylinder  # the same synthetic scans as the library tests
_bad_inputs = _sibling("test_io_formats")._bad_inputs  # the same catalogue of bad files


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def scan_file(tmp_path, rng):
    scan, truth, part = noisy_cylinder(rng)
    path = write_volume(tmp_path / "scan.tif", scan, spacing=(0.02, 0.01, 0.01))
    return path, scan, truth, part


def test_info_json(tmp_path, rng):
    a = rng.normal(3.0, 1.0, size=(6, 7, 8)).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    r = run("info", tmp_path / "a.npy", "--json", "--spacing", "0.1", "0.2", "0.3")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["shape"] == [6, 7, 8] and out["dtype"] == "float32"
    assert out["spacing"] == [0.1, 0.2, 0.3]
    assert out["min"] == pytest.approx(float(a.min())) and out["max"] == pytest.approx(float(a.max()))
    assert out["mean"] == pytest.approx(float(a.astype(np.float64).mean()), rel=1e-6)
    r = run("info", tmp_path / "a.npy")
    assert r.exit_code == 0 and "6 x 7 x 8" in r.stdout and "unknown" in r.stdout


def test_label_then_report(tmp_path, scan_file):
    path, _, truth, part = scan_file
    mask_path = tmp_path / "labels.nii.gz"
    r = run("label", path, "-o", mask_path)
    assert r.exit_code == 0, r.output
    assert "5 pores" in r.stdout
    m, spacing = read_mask(mask_path, with_spacing=True)
    assert spacing == pytest.approx((0.02, 0.01, 0.01))
    dice = 2 * (m & truth).sum() / (m.sum() + truth.sum())
    assert dice > 0.9
    assert read_volume(path).spacing == pytest.approx((0.02, 0.01, 0.01))
    r = run("label", path, "-o", tmp_path / "l2.npy", "--surface-margin", "2", "--json")
    assert r.exit_code == 0, r.output
    js = json.loads(r.stdout)
    assert js["pores"] == 5 and js["surface_margin"] == 2 and js["spacing"] == [0.02, 0.01, 0.01]
    assert js["pore_voxels"] == int(np.load(tmp_path / "l2.npy").sum())
    r = run("report", mask_path, "--volume", path, "-o", tmp_path / "rep")
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert s["pore_count"] == 5 and s["units"] == "mm"
    assert s["porosity_percent"] == pytest.approx(100 * truth.sum() / part.sum(), rel=0.1)
    assert (tmp_path / "rep" / "overlay.png").stat().st_size > 1000
    rows = (tmp_path / "rep" / "pores.csv").read_text().strip().splitlines()
    assert len(rows) == 6


def test_report_without_spacing_warns_voxel_units(tmp_path):
    m = np.zeros((10, 10, 10), np.uint8)
    m[3:6, 3:6, 3:6] = 1
    np.save(tmp_path / "m.npy", m)
    r = run("report", tmp_path / "m.npy", "-o", tmp_path / "rep")
    assert r.exit_code == 0, r.output
    assert "voxel units" in r.stderr
    s = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert s["units"] == "voxel" and s["pore_volume_voxels"] == 27


@pytest.mark.parametrize("command", ["info", "label", "report"])
def test_bad_input_is_one_line_no_traceback_no_output(tmp_path, rng, command):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "in").mkdir()
    cases = _bad_inputs(tmp_path / "in", rng)
    for what, path in cases.items():
        if command == "report" and what in ("constant", "all NaN"):
            continue  # a constant or NaN mask is a valid (empty) mask
        target = out / ("mask.npy" if command == "label" else "rep")
        args = {"info": ["info", path, "--json"], "label": ["label", path, "-o", target],
                "report": ["report", path, "-o", target]}[command]
        r = run(*args)
        assert r.exit_code != 0, (what, r.output)
        assert "Traceback" not in r.output, what
        err = r.stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("porelab: error:"), (what, r.stderr)
        assert path.name in err[0], (what, err[0])
        assert list(out.iterdir()) == [], what


def test_label_refuses_unknown_output_format_before_work(tmp_path, scan_file):
    path = scan_file[0]
    r = run("label", path, "-o", tmp_path / "mask.xyz")
    assert r.exit_code == 2 and "mask.xyz" in r.stderr
    assert not (tmp_path / "mask.xyz").exists()


def test_report_shape_mismatch(tmp_path, scan_file):
    np.save(tmp_path / "m.npy", np.zeros((3, 3, 3), np.uint8))
    r = run("report", tmp_path / "m.npy", "--volume", scan_file[0], "-o", tmp_path / "rep")
    assert r.exit_code == 2 and "shape" in r.stderr
    assert not (tmp_path / "rep").exists()


def test_real_process_stderr_is_one_line(tmp_path):
    (tmp_path / "text.npy").write_text("not an array")
    p = subprocess.run([sys.executable, "-m", "porelab", "info", str(tmp_path / "text.npy")],
                       capture_output=True, text=True, check=False)
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "text.npy" in p.stderr
