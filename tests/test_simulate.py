"""The simulator: exact truth, real CT physics (noise vs exposure, hard cube, fewer projections), datasets."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import ndimage as ndi

from porelab.errors import ConfigError, ScanError
from porelab.simulate.ct import degrade, scan_phantom
from porelab.simulate.dataset import load_manifest, simulate_dataset
from porelab.simulate.phantom import MATERIALS, make_phantom


def _metal(obj, truth, it=2):
    return ndi.binary_erosion(obj.astype(bool) & (truth == 0), iterations=it)


def _cnr(scan, obj, truth):
    metal = _metal(obj, truth)
    far = ~ndi.binary_dilation(obj.astype(bool), iterations=3)
    n = scan.shape[1]
    yy, xx = np.ogrid[:n, :n]
    air = far & (np.hypot(yy - (n - 1) / 2, xx - (n - 1) / 2) < n / 2 - 3)[None]
    return (scan[metal].mean() - scan[air].mean()) / scan[metal].std()


# ------------------------------------------------------------------------------------------------ phantom


@pytest.mark.parametrize("part", ["cylinder", "cube"])
def test_truth_is_exactly_the_placed_pores_inside_the_part(part):
    ph = make_phantom((40, 64, 64), part=part, material="CoCr", porosity=1.0, seed=3)
    assert len(ph.pores) >= 5
    ids = np.arange(1, len(ph.pores) + 1)
    counts = ndi.sum_labels(np.ones_like(ph.labels), ph.labels, ids)
    assert all(c > 0 for c in counts)
    assert [p["voxels"] for p in ph.pores] == [int(c) for c in counts]
    assert np.array_equal(ph.truth.astype(bool), ph.labels > 0)
    # pores never touch each other: one connected component (26-neighbourhood) per placed pore
    assert ndi.label(ph.truth, structure=np.ones((3, 3, 3)))[1] == len(ph.pores)
    # strictly inside: a pore grown by one voxel is still inside the part and off the volume faces
    grown = ndi.binary_dilation(ph.truth, structure=np.ones((3, 3, 3)))
    obj = ph.object.astype(bool)
    assert not (grown & ~obj).any()
    assert not grown[[0, -1]].any() and not grown[:, [0, -1]].any() and not grown[:, :, [0, -1]].any()
    # pores are empty (attenuation 0), the rest of the part is metal around the material's mu
    assert (ph.mu[ph.truth > 0] == 0).all()
    mu = MATERIALS["CoCr"]["mu"]
    metal = ph.mu[obj & (ph.truth == 0)]
    assert abs(np.median(metal) - mu) < 0.03 * mu and metal.min() > 0.9 * mu and metal.max() < 1.1 * mu
    assert (ph.mu[~obj] == 0).all()
    assert 0.7 <= ph.porosity_percent <= 1.3


def test_porosity_follows_the_target():
    low = make_phantom((40, 64, 64), porosity=0.2, seed=1)
    high = make_phantom((40, 64, 64), porosity=2.0, seed=1)
    assert 0.1 <= low.porosity_percent <= 0.3
    assert 1.6 <= high.porosity_percent <= 2.5
    assert make_phantom((24, 32, 32), porosity=0.0, seed=1).truth.sum() == 0


def test_pore_kinds_have_their_shapes():
    def extents(kind):
        ph = make_phantom((48, 72, 72), porosity=1.5, seed=5, kind_weights={kind: 1.0})
        assert ph.pores and {p["kind"] for p in ph.pores} == {kind}
        ext = []
        for sl in ndi.find_objects(ph.labels):
            ez, ey, ex = (s.stop - s.start for s in sl)
            ext.append((ez, max(ey, ex)))
        return np.array(ext, float)

    gas, key, lof = extents("gas"), extents("keyhole"), extents("lof")
    assert np.all(np.abs(gas[:, 0] - gas[:, 1]) <= 1)  # spheres: as tall as wide
    assert np.mean(key[:, 0] / key[:, 1]) > 1.4  # keyholes: elongated along z (build direction)
    assert np.mean(lof[:, 0] / lof[:, 1]) < 0.5  # lack of fusion: flat in z, wide laterally


def test_phantom_is_deterministic_and_rejects_bad_values():
    a, b = make_phantom((24, 40, 40), seed=7), make_phantom((24, 40, 40), seed=7)
    c = make_phantom((24, 40, 40), seed=8)
    assert np.array_equal(a.mu, b.mu) and np.array_equal(a.truth, b.truth) and a.pores == b.pores
    assert not np.array_equal(a.mu, c.mu)
    with pytest.raises(ConfigError, match="material"):
        make_phantom((24, 40, 40), material="gold")
    with pytest.raises(ConfigError, match="porosity"):
        make_phantom((24, 40, 40), porosity=12)


# ------------------------------------------------------------------------------------------------- CT


@pytest.fixture(scope="module")
def smooth_cylinder():
    """A pore-free 316L cylinder of uniform density (so the metal's spread is the CT's doing)."""
    return make_phantom((8, 48, 48), material="316L", porosity=0.0, seed=2, density_variation=0.0,
                        roughness=0.0)


def test_noise_in_the_metal_grows_as_exposure_falls(smooth_cylinder):
    ph = smooth_cylinder
    metal = _metal(ph.object, ph.truth)
    stds = []
    for i0 in (8000.0, 2000.0, 500.0):
        rec = scan_phantom(ph.mu, voxel_mm=0.25, projections=72, exposure=i0, seed=1)
        assert abs(rec[metal].mean() - MATERIALS["316L"]["mu"]) < 0.1 * MATERIALS["316L"]["mu"]
        stds.append(rec[metal].std())
    assert stds[0] < stds[1] < stds[2]
    assert stds[2] > 2.5 * stds[0]  # σ ∝ 1/√I0: 16× fewer photons, ≈ 4× the noise


def test_beam_hardening_causes_cupping(smooth_cylinder):
    ph = smooth_cylinder
    n = ph.mu.shape[1]
    yy, xx = np.ogrid[:n, :n]
    r = np.hypot(yy - (n - 1) / 2, xx - (n - 1) / 2)[None].repeat(ph.mu.shape[0], 0)
    metal = _metal(ph.object, ph.truth)
    centre, rim = metal & (r < 4), metal & (r > 7)

    def cup(b):
        rec = scan_phantom(ph.mu, voxel_mm=0.25, projections=72, exposure=1e7, hardening=b, seed=1)
        return rec[rim].mean() - rec[centre].mean()

    assert cup(0.3) > 0.02 > abs(cup(0.0))


def test_scan_is_deterministic_for_a_seed(smooth_cylinder):
    kw = {"voxel_mm": 0.25, "projections": 24, "exposure": 1000.0, "ring": 0.01}
    a = scan_phantom(smooth_cylinder.mu[:2], seed=4, **kw)
    assert np.array_equal(a, scan_phantom(smooth_cylinder.mu[:2], seed=4, **kw))
    assert not np.array_equal(a, scan_phantom(smooth_cylinder.mu[:2], seed=5, **kw))
    assert a.dtype == np.float32


def test_degrade_fewer_projections_and_lower_exposure_raise_the_error():
    ph = make_phantom((16, 48, 48), part="cube", material="316L", porosity=0.0, seed=2)
    mu, obj = ph.mu[4:12], ph.object[4:12].astype(bool)
    base = {"base_projections": 120, "base_exposure": 3000.0, "voxel_mm": 0.25}
    scan = scan_phantom(mu, voxel_mm=0.25, projections=120, exposure=3000.0, seed=1)
    metal = ndi.binary_erosion(obj, iterations=2)

    def rmse(x):  # streaks and noise inside the part, not the edge blur every reconstruction has
        return float(np.sqrt(np.mean((x - mu)[metal] ** 2)))

    full = degrade(scan, seed=3, **base)
    few = degrade(scan, projections=0.33, seed=3, **base)
    dim = degrade(scan, exposure=0.25, seed=3, **base)
    assert full.shape == few.shape == scan.shape and full.dtype == np.float32
    assert rmse(full) < 1.5 * rmse(scan)  # re-projection itself changes little
    assert rmse(few) > 1.25 * rmse(full)
    assert rmse(dim) > 1.25 * rmse(full)
    assert metal.sum() > 500 and dim[metal].std() > 1.4 * full[metal].std()  # 4× fewer photons: up to 2× the noise


def test_degrade_works_on_any_scan_and_estimates_its_exposure():
    """A 'real' scan: non-square slices, grey values with an offset, nothing known about the acquisition."""
    rng = np.random.default_rng(0)
    ph = make_phantom((6, 48, 48), material="316L", porosity=0.0, seed=2, roughness=0.0)
    scan = scan_phantom(ph.mu, voxel_mm=0.25, projections=96, exposure=4000.0, seed=1)
    grey = (1000.0 + 40000.0 * scan[:, 4:44, 2:46]).astype(np.float32)  # (6, 40, 44)
    same = degrade(grey, seed=1)
    assert same.shape == grey.shape
    assert np.median(np.abs(same - grey)) < 0.1 * (grey.max() - 1000.0)
    dim = degrade(grey, exposure=0.25, seed=1)
    metal = ndi.binary_erosion(ph.object.astype(bool), structure=np.ones((1, 3, 3)), iterations=3)[:, 4:44, 2:46]
    assert metal.sum() > 500
    ratio = dim[metal].std() / same[metal].std()
    assert 1.4 < ratio < 3.0  # estimated I0 makes the noise ≈ √(1/0.25) = 2× larger
    with pytest.raises(ConfigError):
        degrade(grey, projections=0.0)
    with pytest.raises(ScanError):
        degrade(grey[0])
    del rng


# --------------------------------------------------------------------------------------------- dataset


def test_smoke_dataset_layout_and_round_trip(smoke_dataset):
    ds = smoke_dataset
    assert [s.name for s in ds.samples] == ["cyl1", "cyl2", "cyl3", "cyl4", "cyl5", "cube"]
    assert [s.material for s in ds.cv] == ["Ti6Al4V", "CoCr", "CoCr", "316L", "316L"]
    assert ds.hard.name == "cube" and ds.hard.material == "316L" and ds.hard.shape == "cube"
    manifest = json.loads((ds.root / "manifest.json").read_text())
    assert manifest["format"] == "porelab-dataset/2" and manifest["preset"] == "smoke"
    for s, raw in zip(ds.samples, manifest["samples"]):
        assert s.scan.is_absolute() and not raw["path"].startswith("/") and raw["role"] == s.role
        assert set(raw["quality"]) >= {"projections", "exposure", "hardening", "blur", "ring"}
        scan, truth, obj = s.load()
        assert scan.dtype == np.float32 and truth.dtype == np.uint8 and obj.dtype == np.uint8
        assert scan.ndim == 3 and scan.shape == truth.shape == obj.shape
        assert not (truth.astype(bool) & ~obj.astype(bool)).any()
        assert s.porosity_percent == pytest.approx(100 * truth.sum() / obj.sum(), abs=1e-3)
        pores = json.loads(s.pores.read_text())["pores"]
        assert s.pore_count == len(pores) == ndi.label(truth, structure=np.ones((3, 3, 3)))[1] > 0
        assert len(set(s.spacing)) == 1 and 0 < s.spacing[0] < 1
    cube, cyl = ds.hard.quality, ds.cv[3].quality
    assert cube["projections"] < cyl["projections"] and cube["exposure"] < cyl["exposure"]
    assert cube["hardening"] > cyl["hardening"]


def test_hard_cube_has_lower_cnr_than_every_cylinder(smoke_dataset):
    cnr = {}
    for s in smoke_dataset.samples:
        scan, truth, obj = (np.asarray(a) for a in s.load())
        cnr[s.name] = _cnr(scan, obj, truth)
    cyl = [cnr[s.name] for s in smoke_dataset.cv]
    assert cnr["cube"] < 0.75 * min(cyl), cnr
    assert max(cyl) < 1.6 * min(cyl), cnr  # comparable quality across the cross-validation scans


def test_pores_are_visible_in_the_cylinders(smoke_dataset):
    s = smoke_dataset["cyl4"]
    scan, truth, obj = (np.asarray(a) for a in s.load())
    metal = _metal(obj, truth)
    lab, n = ndi.label(truth)
    big = [i for i in range(1, n + 1) if (lab == i).sum() >= 14]  # equivalent radius ≥ 1.5 voxels
    assert big
    darker = [scan[metal].mean() - scan[lab == i].mean() > 3 * scan[metal].std() for i in big]
    assert np.mean(darker) >= 0.7


def test_load_manifest_errors_are_one_line(tmp_path, smoke_dataset):
    with pytest.raises(ScanError, match="no dataset manifest"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ScanError, match="not a readable JSON"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other/9", "samples": []}))
    with pytest.raises(ScanError, match="format"):
        load_manifest(tmp_path / "manifest.json")
    raw = json.loads((smoke_dataset.root / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps(raw))  # the files are not in tmp_path
    with pytest.raises(ScanError, match="does not exist") as e:
        load_manifest(tmp_path)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="preset"):
        simulate_dataset(tmp_path / "x", preset="huge", progress=False)


def test_cli_simulate_is_deterministic_and_degrade_writes_by_extension(tmp_path, smoke_dataset):
    from porelab.cli import main

    runner = CliRunner()
    res = runner.invoke(main, ["simulate", str(tmp_path / "d"), "--preset", "smoke", "--seed", "0", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "cube" in res.output and "Ti6Al4V" in res.output and "porosity %" in res.output
    again = load_manifest(tmp_path / "d")
    for a, b in zip(smoke_dataset.samples, again.samples):
        assert np.array_equal(np.load(a.scan), np.load(b.scan)) and np.array_equal(np.load(a.truth),
                                                                                    np.load(b.truth))
    out = tmp_path / "cube_p50_e25.tif"
    res = runner.invoke(main, ["degrade", str(again.hard.scan), "-o", str(out), "--projections", "0.5",
                               "--exposure", "0.25", "--quiet"])
    assert res.exit_code == 0, res.output
    from porelab.io import read_volume

    vol = read_volume(out)
    assert vol.shape == np.load(again.hard.scan).shape
    assert vol.spacing == pytest.approx(again.hard.spacing)


@pytest.mark.parametrize("args", [
    ["degrade", "{tmp}/missing.npy", "-o", "{tmp}/o.npy"],
    ["degrade", "{scan}", "-o", "{tmp}/o.npy", "--projections", "1.5"],
    ["degrade", "{scan}", "-o", "{tmp}/o.npy", "--exposure", "0"],
    ["simulate", "{tmp}/d", "--preset", "smoke", "--porosity", "9", "--quiet"],
    ["simulate", "{tmp}/d", "--preset", "smoke", "--seed", "-1", "--quiet"],
    ["degrade", "{scan}", "-o", "{tmp}/o.npy", "--base-projections", "0"],
    ["degrade", "{scan}", "-o", "{tmp}/o.npy", "--base-exposure", "0"],
    ["degrade", "{scan}", "-o", "{scan}", "--overwrite"],
])
def test_cli_errors_are_one_line_and_leave_nothing(tmp_path, smoke_dataset, args):
    from porelab.cli import main

    args = [a.format(tmp=tmp_path, scan=smoke_dataset["cyl1"].scan) for a in args]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("porelab: error:") and "Traceback" not in res.output
    assert not (tmp_path / "o.npy").exists() and not (tmp_path / "d").exists()
    assert list(tmp_path.iterdir()) == []
