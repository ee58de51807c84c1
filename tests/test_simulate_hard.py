"""The effects that make simulated scans hard: cone beam + FDK, scatter, starvation, texture, drift, extra
pores, the ``hard`` preset and the matching ``degrade`` options — each switchable and doing what it says."""

from __future__ import annotations

import json

import numpy as np
import pytest

from porelab.simulate.cone import cone_project, fdk, orbit
from porelab.simulate.ct import acquire, degrade, scan_phantom
from porelab.simulate.phantom import make_phantom


def _ball(nz, n, r, value=0.3):
    z, y, x = np.ogrid[:nz, :n, :n]
    c = (nz - 1) / 2, (n - 1) / 2, (n - 1) / 2
    return ((((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) <= r * r) * value).astype(np.float32)


def _slab(nz, n, half_z, half_xy, value=0.3):
    z, y, x = np.ogrid[:nz, :n, :n]
    c = (nz - 1) / 2, (n - 1) / 2, (n - 1) / 2
    m = (np.abs(z - c[0]) <= half_z) & (np.abs(y - c[1]) <= half_xy) & (np.abs(x - c[2]) <= half_xy)
    return (m * value).astype(np.float32)


def test_fdk_reconstructs_a_centred_ball():
    vol = _ball(32, 48, 10)
    betas = orbit(90)
    rec = fdk(cone_project(vol, betas, 150.0), betas, 150.0, vol.shape)
    core = _ball(32, 48, 7) > 0
    mid = core.copy()
    mid[:15] = mid[17:] = False
    assert abs(rec[mid].mean() - 0.3) < 0.01
    assert abs(rec[core].mean() - 0.3) < 0.015
    assert np.abs(rec[_ball(32, 48, 13) == 0]).mean() < 0.01  # air stays air


def test_fdk_is_worse_at_the_extremities_with_a_wide_cone():
    """A flat slab: exact-ish in the mid-plane, density lost in its top and bottom slices at a wide cone
    angle, not with a nearly parallel beam."""
    vol = _slab(40, 48, 14, 12)
    betas = orbit(90)
    errs = {}
    for sod in (45.0, 5000.0):
        rec = fdk(cone_project(vol, betas, sod), betas, sod, vol.shape)
        centre = float(rec[19:21, 16:32, 16:32].mean())
        edge = float(np.concatenate([rec[6, 16:32, 16:32].ravel(), rec[33, 16:32, 16:32].ravel()]).mean())
        errs[sod] = (abs(centre - 0.3), abs(edge - 0.3))
    assert errs[45.0][0] < 0.01 and errs[5000.0][0] < 0.01
    assert errs[45.0][1] > 0.03 > 3 * errs[5000.0][1]


def test_cone_scan_switch_changes_geometry():
    ph = make_phantom((16, 32, 32), part="cylinder", seed=0, porosity=0.0)
    kw = {"voxel_mm": 0.3, "projections": 40, "exposure": 1e6}
    par = scan_phantom(ph.mu, **kw)
    cone = scan_phantom(ph.mu, cone=True, **kw)
    assert cone.shape == par.shape and np.isfinite(cone).all()
    m = ph.mu > 0
    assert abs(cone[8][m[8]].mean() - par[8][m[8]].mean()) < 0.02  # the mid-plane agrees
    assert not np.allclose(cone, par, atol=1e-3)


def _wedge_sino():
    """Line integrals (rows, columns, angles) with a plateau of 1 and a 'thick' block of 4."""
    p = np.full((8, 40, 30), 1.0)
    p[:, 15:25] = 4.0
    return p


def test_scatter_lowers_contrast():
    p = _wedge_sino()
    clean = acquire(p, exposure=1e9, rng=np.random.default_rng(0))
    scat = acquire(p, exposure=1e9, scatter=0.2, rng=np.random.default_rng(0))
    assert abs(clean[:, 20].mean() - clean[:, 5].mean() - 3.0) < 0.01
    assert scat[:, 20].mean() - scat[:, 5].mean() < 0.8 * 3.0  # the thick part's contrast shrinks


def test_starvation_raises_noise_along_the_long_chord():
    p = _wedge_sino() * 1.5  # transmission e^-6 ≈ 0.25 % on the long chord
    rng = np.random.default_rng(0)
    base = acquire(p, exposure=2000.0, rng=rng)
    starved = acquire(p, exposure=2000.0, readout=4.0, rng=np.random.default_rng(0))
    long_base, long_starved = base[:, 17:23].std(), starved[:, 17:23].std()
    short_base, short_starved = base[:, 2:8].std(), starved[:, 2:8].std()
    assert long_starved > 1.3 * long_base  # a few photons + electronic noise: much noisier
    assert short_starved < 1.1 * short_base  # plenty of photons: hardly changed
    assert abs(starved[:, 17:23].mean() - p[0, 20, 0]) > 0.1  # the log of a few noisy counts is biased
    assert starved.max() <= np.log(2000.0) + 1e-4  # and capped by the one-count floor


def test_effects_are_off_by_default():
    p = _wedge_sino()
    a = acquire(p, exposure=500.0, rng=np.random.default_rng(3))
    b = acquire(p, exposure=500.0, scatter=0.0, readout=0.0, rng=np.random.default_rng(3))
    assert np.array_equal(a, b)
    ph0 = make_phantom((16, 32, 32), seed=2)
    ph1 = make_phantom((16, 32, 32), seed=2, texture=0.0, drift=0.0, extra_pores={})
    assert np.array_equal(ph0.mu, ph1.mu) and np.array_equal(ph0.truth, ph1.truth)


def test_texture_and_drift_vary_the_metal():
    kw = {"part": "cylinder", "seed": 1, "porosity": 0.0, "density_variation": 0.0, "roughness": 0.0}
    flat = make_phantom((24, 48, 48), **kw)
    tex = make_phantom((24, 48, 48), texture=0.03, **kw)
    drift = make_phantom((24, 48, 48), drift=0.05, **kw)
    m = flat.mu > 0
    assert flat.mu[m].std() < 1e-6
    assert 0.02 < tex.mu[m].std() / tex.mu[m].mean() < 0.04
    prof = drift.mu.sum((1, 2)) / np.maximum(m.sum((1, 2)), 1)
    assert abs(prof[0] - prof[-1]) / prof.mean() > 0.02  # a trend along the build direction


def test_extra_pores_have_exact_truth_and_flags():
    from scipy import ndimage

    counts = {"small": 6, "cluster": 2, "surface": 3, "large": 1}
    ph = make_phantom((48, 64, 64), part="cube", seed=0, porosity=0.3, extra_pores=counts)
    flags = {k: [p for p in ph.pores if p.get(k)] for k in counts}
    assert {k: len(v) for k, v in flags.items()} == counts
    assert all(p["kind"] == "gas" for v in flags.values() for p in v)
    assert all(2 <= p["cluster"] <= 5 and 3 <= p["size"]["members"] for p in flags["cluster"])
    assert 6 <= flags["large"][0]["size"]["radius"] <= 10
    _, n = ndimage.label(ph.truth, np.ones((3, 3, 3)))
    assert n == len(ph.pores)  # one component per recorded pore: clusters are connected, none touch
    for p in ph.pores:
        assert int((ph.labels == p["id"]).sum()) == p["voxels"]
    obj = ph.object > 0
    outside = ndimage.binary_dilation(~obj, np.ones((3, 3, 3), bool))
    for p in flags["surface"]:  # open to the air
        assert (outside & (ph.labels == p["id"])).any()
    for p in flags["small"]:  # partial volume: lighter than metal, darker than nothing
        vox = ph.mu[ph.labels == p["id"]]
        assert 1 <= p["voxels"] <= 30 and vox.max() > 0
    big = ph.labels == flags["large"][0]["id"]
    assert ph.mu[big].max() == 0 and ph.truth[~obj].sum() == 0


def test_hard_degrade_options_switch_effects():
    ph = make_phantom((12, 40, 40), part="cylinder", seed=1, porosity=0.0)
    rec = scan_phantom(ph.mu, voxel_mm=0.375, projections=48, exposure=1e5, seed=0)
    kw = {"voxel_mm": 0.375, "base_projections": 48, "base_exposure": 1e5}
    plain = degrade(rec, **kw)
    m = ph.mu > 0
    assert np.array_equal(plain, degrade(rec, scatter=0.0, readout=0.0, hardening=0.0, ring=0.0, **kw))
    scat = degrade(rec, scatter=0.3, **kw)
    assert scat[m].mean() < 0.9 * plain[m].mean()
    cone = degrade(rec, cone=True, **kw)
    assert cone.shape == rec.shape and np.isfinite(cone).all() and not np.allclose(cone, plain, atol=1e-3)
    starved = degrade(rec, readout=5.0, **{**kw, "base_exposure": 200.0})
    assert starved[m].std() > plain[m].std()


def test_hard_preset_settings():
    from porelab.simulate.dataset import PRESETS, get_preset, sample_plan

    h, q = get_preset("hard"), get_preset("quick")
    assert h.cyl_shape == q.cyl_shape and h.cube_shape == q.cube_shape
    assert h.cone and h.scatter > 0 and h.readout > 0 and h.texture > 0 and h.drift > 0
    assert h.cyl_hardening > q.cyl_hardening and h.cube_ring > q.cube_ring
    assert set(h.extra_pores) == {"small", "cluster", "surface", "large"}
    for name in ("smoke", "quick", "paper"):  # the other presets keep every new effect off
        p = PRESETS[name]
        assert not (p.cone or p.scatter or p.readout or p.texture or p.drift or p.extra_pores)
        assert all("cone" not in s["quality"] for s in sample_plan(name))
    assert all(s["quality"]["cone"] for s in sample_plan("hard"))


@pytest.mark.slow
def test_hard_preset_writes_a_loadable_deterministic_dataset(tmp_path, monkeypatch):
    """The hard preset at a tiny size (the preset's effects on smoke's shapes): files, truth, kinds, flags;
    the same seed gives the same files."""
    import dataclasses

    from porelab.simulate import dataset as dsmod

    tiny = dataclasses.replace(dsmod.PRESETS["hard"], cyl_shape=(24, 48, 48), cube_shape=(32, 48, 48),
                               cyl_projections=48, cube_projections=40,
                               extra_pores={"small": 3, "cluster": 1, "surface": 2, "large": 0})
    monkeypatch.setitem(dsmod.PRESETS, "hard", tiny)
    a = dsmod.load_manifest(dsmod.simulate_dataset(tmp_path / "a", preset="hard", seed=3, progress=False))
    b = dsmod.load_manifest(dsmod.simulate_dataset(tmp_path / "b", preset="hard", seed=3, progress=False))
    assert a.preset == "hard" and len(a.samples) == 6
    for sa, sb in zip(a.samples, b.samples):
        scan, truth, obj = sa.load(mmap=False)
        assert np.isfinite(scan).all() and truth.any() and not (truth & ~obj).any()
        assert np.array_equal(scan, np.load(sb.scan)) and np.array_equal(truth, np.load(sb.truth))
        assert sa.quality["cone"] is True and sa.quality["scatter"] > 0
        pores = json.loads(sa.pores.read_text())["pores"]
        assert all(p["kind"] in ("gas", "keyhole", "lof") for p in pores)
        assert sum(1 for p in pores if p.get("small")) == 3  # always room for these
        assert all(p["kind"] == "gas" for p in pores if p.get("small") or p.get("surface") or p.get("cluster"))
