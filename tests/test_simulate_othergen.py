"""The other, independent generator (porelab.simulate.othergen) and its ``othergen`` dataset preset: seeded,
exact truth inside the part, every pore kind, pores visibly darker, correlated noise growing toward the
part's centre, a manifest that porelab.dataset reads, and its export as TIFF stacks
(benchmarks/othergen_tiffs.py)."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import ndimage as ndi

from porelab.dataset import load_manifest
from porelab.errors import ConfigError
from porelab.simulate import othergen
from porelab.simulate.othergen import image_part, make_other_phantom

SMOKE = (32, 48, 48)


@pytest.fixture(scope="module")
def hexprism():
    return make_other_phantom(SMOKE, part="hexprism", porosity=2.0, seed=0)


@pytest.fixture(scope="module")
def tube():
    return make_other_phantom(SMOKE, part="tube", porosity=2.0, seed=1)


def test_same_seed_gives_identical_arrays_and_another_seed_differs():
    a = make_other_phantom(SMOKE, part="hexprism", porosity=2.0, seed=7)
    b = make_other_phantom(SMOKE, part="hexprism", porosity=2.0, seed=7)
    c = make_other_phantom(SMOKE, part="hexprism", porosity=2.0, seed=8)
    for key in ("density", "truth", "object", "labels"):
        assert np.array_equal(getattr(a, key), getattr(b, key)), key
    assert a.pores == b.pores
    assert not np.array_equal(a.density, c.density)
    sa, sb, sc = image_part(a, seed=3), image_part(b, seed=3), image_part(a, seed=4)
    assert sa.dtype == np.float32 and sa.shape == SMOKE
    assert np.array_equal(sa, sb)
    assert not np.array_equal(sa, sc)


@pytest.mark.parametrize("name", ["hexprism", "tube"])
def test_truth_is_inside_the_object_one_component_per_pore(name, request):
    ph = request.getfixturevalue(name)
    truth, obj = ph.truth.astype(bool), ph.object.astype(bool)
    assert truth.any() and not (truth & ~obj).any()
    # pores lie strictly inside: at least two voxels of part around every truth voxel
    assert not (truth & ~ndi.binary_erosion(obj, iterations=2)).any()
    n = ndi.label(truth, np.ones((3, 3, 3), bool))[1]
    assert n == len(ph.pores)
    for p in ph.pores:
        assert int((ph.labels == p["id"]).sum()) == p["voxels"] > 0
        assert ndi.label(ph.labels == p["id"], np.ones((3, 3, 3), bool))[1] == 1
    assert ph.porosity_percent == pytest.approx(100 * truth.sum() / obj.sum())
    # pore voxels are empty (no metal), metal voxels away from surfaces are about 1 ± the grain contrast
    assert ph.density[truth].mean() < 0.35
    core = ndi.binary_erosion(obj & ~ndi.binary_dilation(truth, iterations=2), iterations=3)
    assert abs(float(ph.density[core].mean()) - 1.0) < 0.02 and 0.005 < float(ph.density[core].std()) < 0.05
    # the part ends inside the field: air above and below (the flood fill of Algorithm 1 reaches a bore)
    assert not obj[0].any() and not obj[-1].any()


def test_every_pore_kind_is_present_with_its_shape(hexprism):
    kinds = Counter(p["kind"] for p in hexprism.pores)
    assert set(kinds) == {"gas", "keyhole", "lof"}
    chains: dict[int, list] = {}
    for p in hexprism.pores:
        if p["kind"] == "keyhole":
            chains.setdefault(p["chain"], []).append(np.array(p["centre"]))
    for beads in chains.values():  # separate beads strung along the build axis (z)
        assert len(beads) >= 3
        spread = np.ptp(np.array(beads), axis=0)
        assert spread[0] > 2 * max(spread[1], spread[2], 1.0)
    for p in hexprism.pores:
        if p["kind"] == "lof":  # a sheet near the build plane: much wider than tall
            zz, yy, xx = np.nonzero(hexprism.labels == p["id"])
            assert max(np.ptp(yy), np.ptp(xx)) + 1 >= 2 * (np.ptp(zz) + 1)


def test_pores_are_darker_than_metal_by_a_measurable_contrast(hexprism):
    ph = hexprism
    scan = image_part(ph, seed=0, metal=40000.0, air=8000.0, noise=0.09)
    assert 0 <= scan.min() and scan.max() <= 65535 and np.array_equal(scan, np.rint(scan))
    obj, truth = ph.object.astype(bool), ph.truth.astype(bool)
    metal = ndi.binary_erosion(obj & ~ndi.binary_dilation(truth, iterations=2), iterations=2)
    air = ~ndi.binary_dilation(obj, iterations=4)
    m, a, s = float(scan[metal].mean()), float(scan[air].mean()), float(scan[metal].std())
    assert 5 * s < m - a  # the part stands out of the air
    assert abs(a - 8000) < 1000 and abs(m - 40000) < 5000  # arbitrary grey units, not 1/mm
    big = [p for p in ph.pores if p["voxels"] >= 8]
    assert len(big) >= 3
    for p in big:  # each larger pore is darker than the metal by at least one metal std
        assert m - float(scan[ph.labels == p["id"]].mean()) > s
    assert (m - float(scan[truth].mean())) / s > 1.5  # and all pore voxels together by more


def test_noise_is_spatially_correlated_and_grows_toward_the_centre(tube):
    """Two images of one phantom without rings or streaks differ only by their noise: its neighbouring
    voxels are clearly correlated (white noise: ≈ 0), and it is larger inside the part than in the air."""
    kw = {"rings": 0.0, "streaks": 0.0, "noise": 0.1, "noise_gain": 0.6}
    diff = image_part(tube, seed=1, **kw).astype(np.float64) - image_part(tube, seed=2, **kw)
    for axis in (0, 1, 2):
        a = np.moveaxis(diff, axis, 0)
        r = np.corrcoef(a[1:].ravel(), a[:-1].ravel())[0, 1]
        assert r > 0.3, (axis, r)
    white = np.random.default_rng(0).standard_normal(diff.shape)
    assert abs(np.corrcoef(white[:, :, 1:].ravel(), white[:, :, :-1].ravel())[0, 1]) < 0.05
    obj = tube.object.astype(bool)
    nz, ny, nx = obj.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    g = tube.geometry
    r = np.hypot(yy - g["cy"], xx - g["cx"])
    mid = slice(nz // 3, 2 * nz // 3)
    inner = obj[mid] & (r < 0.75 * g["radius"])[None]
    far = (r > 1.6 * g["radius"])[None] & np.ones_like(obj[mid])
    assert diff[mid][inner].std() > 1.25 * diff[mid][far].std()


def test_bad_values_are_one_line_errors():
    with pytest.raises(ConfigError, match="part"):
        make_other_phantom(SMOKE, part="sphere")
    with pytest.raises(ConfigError, match="porosity"):
        make_other_phantom(SMOKE, porosity=9.0)
    with pytest.raises(ConfigError, match="othergen"):
        othergen.get_preset("nope")


def test_preset_writes_a_dataset_that_load_manifest_reads_and_exports_as_tiffs(tmp_path, monkeypatch):
    """``porelab simulate --preset othergen`` (at smoke size here) writes five cv scans, one test scan, the
    truth as labels and the object masks."""
    from porelab.cli import main

    small = dataclasses.replace(othergen.PRESETS["othergen"], shape=SMOKE, porosity=2.0)
    monkeypatch.setitem(othergen.PRESETS, "othergen", small)
    runner = CliRunner()
    res = runner.invoke(main, ["simulate", str(tmp_path / "d"), "--preset", "othergen", "--seed", "5", "--quiet"])
    assert res.exit_code == 0, res.output
    ds = load_manifest(tmp_path / "d")
    assert ds.preset == "othergen" and ds.seed == 5 and ds.labelled
    assert [s.role for s in ds.samples].count("cv") == 5 and len(ds.test) == 1
    assert {s.part for s in ds.samples} == {"hexprism", "tube"}
    raw = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert raw["generator"] == "othergen" and all(s["quality"]["generator"] == "othergen" for s in raw["samples"])
    for s in ds.samples:
        scan, labels, obj = s.load()
        assert scan.shape == labels.shape == obj.shape == SMOKE and scan.dtype == np.float32
        assert s.spacing == (small.voxel_mm,) * 3
        assert not (np.asarray(labels, bool) & ~np.asarray(obj, bool)).any()
        assert float(np.asarray(scan).max()) > 15000  # grey values, not attenuation in 1/mm
        pores = json.loads(s.pores.read_text())["pores"]
        assert len(pores) == s.pore_count
    assert ds.test[0].quality["exposure"] < min(s.quality["exposure"] for s in ds.cv)  # the hard scan
    _check_tiff_export(ds, tmp_path)


def _check_tiff_export(ds, tmp_path):
    """benchmarks/othergen_tiffs.py: uint16 TIFF stacks equal to the scans (already integer grey values),
    labels in their own folder, and a `porelab dataset` command that makes a labelless dataset of them."""
    import importlib.util
    import shlex
    from pathlib import Path

    from porelab.cli import main
    from porelab.io import read_volume

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "othergen_tiffs.py"
    spec = importlib.util.spec_from_file_location("othergen_tiffs", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main([str(ds.root), "--tiffs", str(tmp_path / "t"), "--labels", str(tmp_path / "l")]) == 0
    assert mod.main([str(ds.root), "--tiffs", str(tmp_path / "t"), "--labels", str(tmp_path / "l")]) == 2  # exists
    summary = mod.export(ds.root, tmp_path / "t", tmp_path / "l", tmp_path / "user", overwrite=True)
    assert (summary["scale"], summary["offset"]) == (1.0, 0.0)
    for s in ds.samples:
        vol = read_volume(tmp_path / "t" / f"{s.name}.tif")
        assert vol.array.dtype == np.uint16 and vol.spacing == pytest.approx(s.spacing)
        assert np.array_equal(vol.array, np.load(s.scan))
        assert np.array_equal(read_volume(tmp_path / "l" / f"{s.name}.tif").array > 0, np.load(s.labels) > 0)
    words = shlex.split(summary["command"])
    assert words[:3] == ["porelab", "dataset", str(tmp_path / "user")]
    res = CliRunner().invoke(main, words[1:])
    assert res.exit_code == 0, res.output
    user = load_manifest(tmp_path / "user")
    assert [s.name for s in user.cv] == [s.name for s in ds.cv] and [s.name for s in user.test] == ["hex4"]
    assert not any(s.labels is not None for s in user.samples)
