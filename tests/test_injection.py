"""Synthetic pore injection (porelab.injection): the acquisition estimated from a scan alone, the pores
inserted at that contrast, blur and noise, and the metrics on them.

The scans are built here: a cylinder along z (the part) rendered with its partial volume (4 × 4 sub-samples
per voxel), blurred by a Gaussian of known sigma and given white Gaussian noise of known std, so every
setting that ``estimate_acquisition`` should recover is known exactly.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import pytest
from scipy import ndimage

from porelab.errors import ConfigError
from porelab.injection import (
    BLUR_RANGE,
    PORE_KINDS,
    Acquisition,
    estimate_acquisition,
    inject_pores,
    injected_metrics,
)

SHAPE = (40, 80, 80)
RADIUS = 30.0


@functools.cache
def _occupancy(shape=SHAPE, radius=RADIUS, k=4):
    _, ny, nx = shape
    sub = (np.arange(k) + 0.5) / k - 0.5
    y, x = np.arange(ny)[:, None], np.arange(nx)[None, :]
    cy, cx = (ny - 1) / 2 + 0.3, (nx - 1) / 2 - 0.2        # off the voxel grid's symmetry
    occ = np.zeros((ny, nx))
    for dy in sub:
        for dx in sub:
            occ += (y + dy - cy) ** 2 + (x + dx - cx) ** 2 <= radius ** 2
    occ = np.repeat((occ / k ** 2)[None], shape[0], axis=0).astype(np.float32)
    occ.setflags(write=False)
    return occ


def cylinder(sigma=1.0, noise=0.03, *, seed=0, metal=1.0, air=0.0, shape=SHAPE, radius=RADIUS, drift=0.0,
             holes=()):
    """(scan, part): a metal cylinder on air, blurred by ``sigma``, white noise of std ``noise``; ``drift``
    adds a linear trend of the metal level along z (± drift/2); ``holes`` are air spheres (z, y, x, r)."""
    occ = np.array(_occupancy(shape, radius), dtype=np.float32)
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    for hz, hy, hx, hr in holes:
        occ[(z - hz) ** 2 + (y - hy) ** 2 + (x - hx) ** 2 <= hr * hr] = 0.0
    level = metal + drift * (z / (shape[0] - 1) - 0.5)
    img = air + (level - air) * occ
    if sigma > 0:
        img = ndimage.gaussian_filter(img.astype(np.float32), sigma)
    img = img + np.random.default_rng(seed).normal(0.0, noise, shape)
    part = np.asarray(_occupancy(shape, radius)) >= 0.5
    scan = img.astype(np.float32)
    scan.setflags(write=False)                      # injection must never write into the raw scan
    return scan, part


def interior(part, depth=3):
    return ndimage.distance_transform_cdt(part, metric="chessboard") > depth


# ------------------------------------------------------------------------------------------ acquisition

@pytest.mark.parametrize("sigma", [0.8, 1.5])
@pytest.mark.parametrize("noise", [0.02, 0.08])
def test_estimate_acquisition_recovers_the_known_settings(sigma, noise):
    scan, part = cylinder(sigma, noise, seed=int(sigma * 10 + noise * 100))
    a = estimate_acquisition(scan, part)
    assert a.metal == pytest.approx(1.0, abs=0.15 * 1.0)
    assert a.air == pytest.approx(0.0, abs=0.15 * 1.0)
    assert a.noise == pytest.approx(noise, rel=0.15)
    assert a.blur == pytest.approx(sigma, abs=0.25)
    assert a.to_dict() == {"metal": a.metal, "air": a.air, "noise": a.noise, "blur": a.blur}


def test_estimate_acquisition_follows_the_grey_scale():
    """An affine grey scale a·x + b moves metal and air with it, scales the noise by a, keeps the blur."""
    scan, part = cylinder(1.2, 0.04, seed=3)
    a = estimate_acquisition(scan, part)
    b = estimate_acquisition((scan * 250.0 + 1000.0).astype(np.float32), part)
    assert b.metal == pytest.approx(a.metal * 250 + 1000, rel=1e-4)
    assert b.air == pytest.approx(a.air * 250 + 1000, rel=1e-4)
    assert b.noise == pytest.approx(a.noise * 250, rel=1e-3)
    assert b.blur == pytest.approx(a.blur, abs=1e-3)


def test_noise_leaves_out_slow_drift_and_blur_is_clamped():
    """A ±15 % drift of the metal along z is not noise; an unblurred edge (only the voxel's own partial
    volume) gives the smallest blur of the range."""
    scan, part = cylinder(0.0, 0.05, seed=4, drift=0.3)
    a = estimate_acquisition(scan, part)
    assert a.noise == pytest.approx(0.05, rel=0.15)
    assert a.blur == pytest.approx(BLUR_RANGE[0], abs=0.15)


# -------------------------------------------------------------------------------------------- injection

HOLES = ((12, 40, 20, 3.0), (28, 58, 44, 2.5), (20, 22, 50, 4.0))   # native pores, passed as `exclude`


class Case(NamedTuple):
    scan: np.ndarray
    part: np.ndarray
    exclude: np.ndarray
    inj: object


@functools.cache
def injected(seed=7, noise=0.03, n_pores=15):
    scan, part = cylinder(1.0, noise, seed=11, holes=HOLES)
    z, y, x = np.ogrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
    exclude = np.zeros(SHAPE, bool)
    for hz, hy, hx, hr in HOLES:
        exclude |= (z - hz) ** 2 + (y - hy) ** 2 + (x - hx) ** 2 <= (hr + 1) ** 2
    inj = inject_pores(scan, part, seed=seed, exclude=exclude, n_pores=n_pores)
    return Case(scan, part, exclude, inj)


def _pore_ids(inj):
    """Per voxel the index (1…) of the injected pore its positive belongs to: each 26-connected component
    of the mask goes to the nearest recorded centre among the pores whose box holds it."""
    lab, _ = ndimage.label(inj.mask, structure=np.ones((3, 3, 3), bool))
    ids = np.zeros(inj.mask.shape, np.int32)
    centres = np.array([p["centre"] for p in inj.pores])
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        comp = lab[sl] == i
        c = np.array([s.start for s in sl]) + np.argwhere(comp).mean(axis=0)
        fits = [j for j, p in enumerate(inj.pores)
                if all(lo <= s.start and s.stop <= hi for s, lo, hi in zip(sl, *p["box"]))]
        assert fits, "a positive outside every injected pore's box"
        j = min(fits, key=lambda j: np.linalg.norm(centres[j] - c))
        ids[sl][comp] = j + 1
    return ids


def test_injected_pores_lie_in_the_part_away_from_exclude_and_from_each_other():
    case = injected()
    part, exclude, inj = case.part, case.exclude, case.inj
    assert inj.mask.any() and len(inj.pores) == inj.requested == 15
    assert {p["kind"] for p in inj.pores} == set(PORE_KINDS)
    # inside the part, more than margin (2) voxels from its outside
    assert (ndimage.distance_transform_edt(part)[inj.mask] > 2).all()
    # more than 2 voxels from every excluded (native) voxel
    assert (ndimage.distance_transform_edt(~exclude)[inj.mask] > 2).all()
    # no two pores within 2 voxels of each other
    ids = _pore_ids(inj)
    ball = ndimage.generate_binary_structure(3, 1)
    ball = ndimage.iterate_structure(ball, 2) & (np.add.outer(np.add.outer(
        np.arange(-2, 3) ** 2, np.arange(-2, 3) ** 2), np.arange(-2, 3) ** 2) <= 4)
    for k in range(1, len(inj.pores) + 1):
        near = ndimage.binary_dilation(ids == k, ball)
        assert not (near & (ids > 0) & (ids != k)).any(), f"pore {k} touches another"


def test_recorded_voxels_match_the_mask_and_ignore_is_the_shell_plus_exclude():
    case = injected()
    part, exclude, inj = case.part, case.exclude, case.inj
    ids = _pore_ids(inj)
    counts = np.bincount(ids.ravel(), minlength=len(inj.pores) + 1)[1:]
    assert counts.tolist() == [p["voxels"] for p in inj.pores]
    assert all(p["voxels"] >= 1 for p in inj.pores)
    assert not (inj.ignore & inj.mask).any()
    assert (inj.ignore | inj.mask)[exclude].all()
    shell = ndimage.binary_dilation(inj.mask, np.ones((3, 3, 3), bool)) & ~inj.mask
    assert inj.ignore[shell].all()
    # beyond the shell and exclude, only the thin partial-volume rims of flat pores are ignored: a ring
    # 3-4 voxels from every positive is almost all counted
    ring = ndimage.binary_dilation(inj.mask, np.ones((3, 3, 3), bool), iterations=4) & ~ndimage.binary_dilation(
        inj.mask, np.ones((3, 3, 3), bool), iterations=2) & ~ndimage.binary_dilation(exclude, iterations=2)
    assert ring.sum() > 1000 and inj.ignore[ring].mean() < 0.01
    region = part
    neg = inj.negatives(region)
    assert np.array_equal(neg, region & ~inj.mask & ~inj.ignore)


def test_pores_only_darken_the_scan_inside_their_boxes():
    case = injected()
    scan, inj = case.scan, case.inj
    touched = np.zeros(scan.shape, bool)
    for p in inj.pores:
        touched[tuple(slice(lo, hi) for lo, hi in zip(*p["box"]))] = True
        if p["kind"] == "gas":      # a box reaches no farther than the pore, its shell and the blur's 4 sigma
            half = (np.array(p["box"][1]) - np.array(p["box"][0])) / 2
            assert (half <= p["size"]["radius"] + 3 + 4 * inj.acquisition.blur + 2).all()
    assert inj.scan.dtype == np.float32 and inj.mask.dtype == bool and inj.ignore.dtype == bool
    assert np.array_equal(inj.scan[~touched], scan[~touched])          # bit for bit
    assert touched.mean() < 0.6
    assert (inj.scan <= scan).all()                                     # gas replaces metal: only darker
    assert (inj.scan[inj.mask] < scan[inj.mask]).all()


def test_large_gas_pores_reach_the_air_level_at_their_core():
    """The cores of large gas pores sit at the air level within 2 noise stds, also where the metal level
    drifts along z (the local metal level is what a pore replaces)."""
    for drift in (0.0, 0.4):
        scan, part = cylinder(1.0, 0.03, seed=5, drift=drift)
        inj = inject_pores(scan, part, seed=1, kinds=("gas",), radius_range=(5.0, 6.5), n_pores=4)
        air, noise = inj.acquisition.air, inj.acquisition.noise
        assert len(inj.pores) >= 2 and noise == pytest.approx(0.03, rel=0.15)
        z, y, x = np.ogrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
        for p in inj.pores:
            cz, cy, cx = p["centre"]
            core = (z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= (p["size"]["radius"] - 2.5) ** 2
            assert core.sum() >= 7
            assert abs(float(inj.scan[core].mean()) - air) < 2 * noise, (drift, p)


def test_injection_is_deterministic_and_depends_on_the_seed():
    case = injected(seed=7)
    scan, part, exclude, a = case.scan, case.part, case.exclude, case.inj
    b = inject_pores(scan, part, seed=7, exclude=exclude, n_pores=15)
    assert np.array_equal(a.scan, b.scan) and np.array_equal(a.mask, b.mask)
    assert np.array_equal(a.ignore, b.ignore) and a.pores == b.pores and a.acquisition == b.acquisition
    c = inject_pores(scan, part, seed=8, exclude=exclude, n_pores=15)
    assert not np.array_equal(a.mask, c.mask)
    assert [p["centre"] for p in a.pores] != [p["centre"] for p in c.pores]


def test_a_small_part_holds_what_fits_and_one_of_each_kind():
    scan, part = cylinder(1.0, 0.03, seed=2, shape=(24, 32, 32), radius=8.0)
    inj = inject_pores(scan, part, seed=0, n_pores=40)
    assert inj.requested == 40 and 3 <= len(inj.pores) < 40
    assert {p["kind"] for p in inj.pores} == set(PORE_KINDS)


def test_the_given_acquisition_is_used():
    scan, part = cylinder(1.0, 0.03, seed=6)
    acq = Acquisition(metal=1.0, air=-1.0, noise=0.03, blur=0.5)
    inj = inject_pores(scan, part, seed=0, acquisition=acq, level="global", kinds=("gas",),
                       radius_range=(5.0, 6.0), n_pores=2)
    assert inj.acquisition == acq
    p = inj.pores[0]
    core = np.zeros(scan.shape, bool)
    core[tuple(round(c) for c in p["centre"])] = True
    core = ndimage.binary_dilation(core, iterations=2)
    # contrast air − metal = −2 instead of the scan's −1
    assert float((inj.scan - scan)[core].mean()) == pytest.approx(-2.0, abs=0.05)
    # half the contrast: the same pores, half the darkening everywhere
    half = inject_pores(scan, part, seed=0, acquisition=acq, level="global", kinds=("gas",),
                        radius_range=(5.0, 6.0), n_pores=2, contrast=0.5)
    assert np.array_equal(half.mask, inj.mask) and half.contrast == 0.5
    assert np.allclose(half.scan - scan, 0.5 * (inj.scan - scan), atol=1e-5)


# ---------------------------------------------------------------------------------------------- metrics

def test_a_perfect_score_gives_ap_1_and_a_separating_threshold():
    case = injected()
    scan, part, inj = case.scan, case.part, case.inj
    region = part
    m = injected_metrics(inj.mask.astype(np.float32), inj, region)
    assert m["ap"] == 1.0 and m["auc"] == 1.0 and m["f1"] == 1.0 and m["dice"] == 1.0
    pos, neg = inj.mask & region, inj.negatives(region)
    assert m["positives"] == pos.sum() and m["negatives"] == neg.sum()
    assert 0.0 < m["threshold"] <= 1.0
    # the blurred occupancy (the darkening itself) ranks the injected pores almost perfectly
    d = injected_metrics(scan.astype(np.float64) - inj.scan, inj, region)
    assert d["ap"] > 0.95
    assert ((scan - inj.scan)[pos] >= d["threshold"]).mean() > 0.9


def test_an_unrelated_score_gives_the_positive_fraction():
    case = injected()
    scan, part, inj = case.scan, case.part, case.inj
    score = np.random.default_rng(0).random(scan.shape).astype(np.float32)
    m = injected_metrics(score, inj, part)
    frac = m["positives"] / (m["positives"] + m["negatives"])
    assert m["positives"] > 500
    assert m["ap"] == pytest.approx(frac, rel=0.3)
    assert m["auc"] == pytest.approx(0.5, abs=0.05)


def test_nan_scores_are_left_out():
    case = injected()
    part, inj = case.part, case.inj
    score = inj.mask.astype(np.float32)
    pos = np.argwhere(inj.mask & part)[:5]
    score[tuple(pos.T)] = np.nan
    score[0, 0, 0] = np.nan                      # outside the part anyway
    score[tuple(np.argwhere(inj.negatives(part))[:7].T)] = np.inf
    m = injected_metrics(score, inj, part)
    assert m["positives"] == (inj.mask & part).sum() - 5
    assert m["negatives"] == inj.negatives(part).sum() - 7
    assert m["ap"] == 1.0


def test_ap_follows_the_difficulty_of_the_scan():
    """The dark-is-pore score −scan finds injected pores in a clean scan and much less in a noisy one."""
    results = {}
    for noise in (0.02, 0.4):
        scan, part = cylinder(1.0, noise, seed=9)
        inj = inject_pores(scan, part, seed=3, n_pores=15)
        results[noise] = injected_metrics(-inj.scan, inj, interior(part))["ap"]
    assert results[0.02] > 0.9
    assert results[0.4] < results[0.02] - 0.3


def test_no_positive_in_the_region_gives_nan():
    case = injected()
    part, inj = case.part, case.inj
    m = injected_metrics(-inj.scan, inj, ~part)
    assert m["positives"] == 0 and np.isnan(m["ap"]) and np.isnan(m["threshold"])


# ------------------------------------------------------------------------------------------- bad input

def test_bad_input_is_one_line_config_error():
    scan, part = cylinder(1.0, 0.03, seed=0)
    _, _, _, inj = injected()
    cases = [
        lambda: estimate_acquisition(scan[0], part[0]),
        lambda: inject_pores(scan[0], part[0], seed=0),
        lambda: estimate_acquisition(scan, np.zeros_like(part)),
        lambda: inject_pores(scan, np.zeros_like(part), seed=0),
        lambda: estimate_acquisition(scan, part[:, :-1]),
        lambda: inject_pores(scan, part, seed=0, exclude=part[:-1]),
        lambda: inject_pores(scan, part, seed=0, kinds=("bubble",)),
        lambda: inject_pores(scan, part, seed=0, radius_range=(3.0, 1.0)),
        lambda: inject_pores(scan, part, seed=0, n_pores=0),
        lambda: inject_pores(scan, part, seed=0, contrast=1.5),
        lambda: inject_pores(scan, part, seed=0.5),
        lambda: estimate_acquisition(scan, np.ones_like(part)),                  # no air outside
        lambda: estimate_acquisition(-scan, part),                               # part darker than air
        lambda: injected_metrics(-inj.scan[:-1], inj, part[:-1]),
    ]
    for i, case in enumerate(cases):
        with pytest.raises(ConfigError) as err:
            case()
        assert "\n" not in str(err.value), i


def test_a_part_too_thin_for_any_pore_is_refused():
    scan, part = cylinder(1.0, 0.03, seed=0, shape=(20, 24, 24), radius=3.0)
    with pytest.raises(ConfigError, match="no synthetic pore fits"):
        inject_pores(scan, part, seed=0)
