"""Algorithm 1 (Iuso et al. 2024): finds placed pores, drops one-voxel-thick specks, flood fill is watertight."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from porelab import labels
from porelab.labels import heuristic_labels, object_mask, otsu_threshold, run_algorithm1, suppress_small


def _ball(shape, centre, r):
    g = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum((gi - ci) ** 2 for gi, ci in zip(g, centre, strict=True)) <= r * r


def noisy_cylinder(rng, n=48, sigma=0.08):
    """A cylinder along z (grey 1) in air (0) with five spherical pores (grey 0), Gaussian noise."""
    _, yy, xx = np.ogrid[:n, :n, :n]
    c = (n - 1) / 2
    part = ((yy - c) ** 2 + (xx - c) ** 2 <= (0.4 * n) ** 2) & np.ones((n, 1, 1), bool)
    truth = np.zeros((n, n, n), bool)
    for centre, r in [((10, c, c), 3.0), ((20, c - 8, c), 2.5), ((30, c + 7, c - 5), 4.0),
                      ((38, c, c + 9), 2.0), ((24, c + 2, c + 3), 3.5)]:
        truth |= _ball((n, n, n), centre, r)
    scan = part.astype(np.float32) - truth.astype(np.float32)
    scan += rng.normal(0, sigma, scan.shape).astype(np.float32)
    return scan, truth, part


def test_otsu_equals_scikit_image(rng):
    from skimage.filters import threshold_otsu

    f = rng.normal(size=(20, 30, 40)).astype(np.float32)
    assert otsu_threshold(f) == pytest.approx(threshold_otsu(f), rel=1e-6, abs=1e-6)
    u = (rng.random((20, 30, 40)) ** 2 * 200).astype(np.uint8)
    assert otsu_threshold(u) == threshold_otsu(u)
    m = rng.random(f.shape) < 0.3
    assert otsu_threshold(f, mask=m) == pytest.approx(threshold_otsu(f[m]), rel=1e-6, abs=1e-6)


def test_finds_placed_pores_in_noisy_cylinder(rng):
    scan, truth, part = noisy_cylinder(rng)
    res = run_algorithm1(scan)
    _, n_true = ndimage.label(truth)
    assert res.pores_kept == n_true == 5
    found = res.pores
    dice = 2 * (found & truth).sum() / (found.sum() + truth.sum())
    assert dice > 0.9
    # the watertight object is the cylinder, pores included
    assert (res.object == part).mean() > 0.99
    assert res.object[truth].all()
    # step 6: t1 is Otsu of the whole scan; step 9: t2 is Otsu inside the object
    from skimage.filters import threshold_otsu

    assert res.low_threshold == pytest.approx(threshold_otsu(scan), rel=1e-6, abs=1e-6)
    assert res.pore_threshold == pytest.approx(threshold_otsu(scan[res.object]), rel=1e-6, abs=1e-6)


def test_one_voxel_thick_specks_are_dropped_two_voxel_cube_kept(rng):
    scan, truth, _ = noisy_cylinder(rng)
    c = 24
    scan[5, c, c] = 0.0  # single-voxel speck
    scan[44, c - 3:c + 3, c - 3:c + 3] = 0.0  # 6x6 plate, one voxel thick in z
    scan[14:20, c + 12, c - 2:c + 2] = 0.0  # 6x1x4 sheet, one voxel thick in y
    scan[42:44, c + 10:c + 12, c + 10:c + 12] = 0.0  # 2x2x2 cube: extent 2 everywhere, kept
    cube = np.zeros_like(truth)
    cube[42:44, c + 10:c + 12, c + 10:c + 12] = True
    mask = heuristic_labels(scan)
    assert not mask[5, c, c]
    assert not mask[44].any()
    assert not mask[14:20, c + 12].any()
    assert mask[cube].all()
    _, n = ndimage.label(mask, structure=labels.SIX_CONNECTED)
    assert n == 6
    # with min_extent=3 the little cube goes too
    assert not heuristic_labels(scan, min_extent=3)[cube].any()


def test_flood_fill_makes_hollow_part_watertight():
    n = 40
    scan = np.zeros((n, n, n), np.float32)
    scan[5:35, 5:35, 5:35] = 1.0  # a box...
    scan[12:28, 12:28, 12:28] = 0.0  # ...with a big closed internal void (same grey as the air)
    tube = np.zeros_like(scan)
    tube[3:37, 5:35, 5:35] = 1.0  # a tube open at both ends: its bore is air connected to the corner
    tube[3:37, 15:25, 15:25] = 0.0
    obj = object_mask(scan)
    assert obj[12:28, 12:28, 12:28].all()  # the closed void is inside the watertight object
    assert obj.sum() == 30**3
    res = run_algorithm1(scan + 0.01 * np.arange(n, dtype=np.float32)[:, None, None])  # not constant inside
    assert res.pores[12:28, 12:28, 12:28].all()  # ... and labelled as a pore, not background
    assert res.pores.sum() == 16**3
    obj_tube = object_mask(tube)
    assert not obj_tube[:, 15:25, 15:25].any()  # an open bore is background
    assert obj_tube.sum() == 34 * (30 * 30 - 10 * 10)


@pytest.mark.filterwarnings("ignore:Algorithm 1")
def test_corner_choice_and_all_corners():
    n = 20
    scan = np.zeros((n, n, n), np.float32)
    scan[:, 8:10, :] = 1.0  # a wall that splits the air into two halves (y < 8 and y >= 10)
    scan[0, 0, 0] = 1.0  # the first corner is material: the next low corner (0, 0, X-1) is used
    scan[5, 3, 3] = 1.0
    res = run_algorithm1(scan)
    assert res.corner == (0, 0, n - 1)
    assert res.object[:, :8].sum() == 2 and res.object[5, 3, 3] and res.object[0, 0, 0]
    assert res.object[:, 10:].all()  # the other half is not connected to the corner: "object"
    obj_all = object_mask(scan, corners="all")
    assert not obj_all[:, 10:].any()
    assert obj_all[:, 8:10].all()


def test_no_low_corner_warns_and_takes_everything():
    scan = np.ones((10, 10, 10), np.float32)
    scan[4:6, 4:6, 4:6] = 0.0
    with pytest.warns(UserWarning, match="corner"):
        res = run_algorithm1(scan)
    assert res.object.all()
    assert res.pores.sum() == 8


def test_too_few_pores_for_otsu_warns(rng):
    scan = np.zeros((24, 24, 24), np.float32)
    scan[4:20, 4:20, 4:20] = 1.0 + rng.normal(0, 0.1, (16, 16, 16)).astype(np.float32)
    with pytest.warns(UserWarning, match="Otsu"):
        run_algorithm1(scan)
    res = run_algorithm1(scan, pore_threshold=0.5)  # an explicit threshold finds nothing in clean metal
    assert res.pores_kept == 0


@pytest.mark.filterwarnings("ignore:Algorithm 1")  # noisy on purpose: many components cross slab faces
def test_slab_merging_gives_the_same_labels(rng, monkeypatch):
    scan, _, _ = noisy_cylinder(rng, sigma=0.2)
    whole = run_algorithm1(scan)
    monkeypatch.setattr(labels, "_SLAB_VOXELS", 48 * 48 * 3)  # 16 slabs of 3 slices: pores cross faces
    slabbed = run_algorithm1(scan)
    np.testing.assert_array_equal(whole.object, slabbed.object)
    np.testing.assert_array_equal(whole.pores, slabbed.pores)
    assert whole.components == slabbed.components


def test_suppress_small_matches_reference(rng, monkeypatch):
    monkeypatch.setattr(labels, "_SLAB_VOXELS", 40 * 50 * 4)
    m = rng.random((30, 40, 50)) < 0.2
    lab, n = ndimage.label(m, structure=labels.SIX_CONNECTED)
    ext = np.array([[s.stop - s.start for s in o] for o in ndimage.find_objects(lab)])
    size = np.bincount(lab.ravel())[1:]
    keep = np.zeros(n + 1, bool)
    keep[1:] = (ext >= 2).all(axis=1) & (size >= 4)
    out = suppress_small(m.astype(np.uint8), min_voxels=4, min_extent=2)
    assert out.dtype == bool
    np.testing.assert_array_equal(out, keep[lab])
    assert 0 < out.sum() < m.sum()


def test_rejects_2d_input():
    from porelab.errors import ScanError

    with pytest.raises(ScanError):
        heuristic_labels(np.zeros((4, 4)))


def test_surface_margin_removes_the_blurred_skin_shell(rng):
    scan, truth, part = noisy_cylinder(rng, sigma=0.03)
    # a 2-voxel partial-volume skin: grey between air (0) and metal (1), between the two thresholds
    # (a 1-voxel 6-connected outline falls apart into thin pieces that the min-extent rule drops anyway)
    skin = part & ~ndimage.binary_erosion(part, iterations=2, border_value=1)
    scan[skin] = 0.65 + rng.normal(0, 0.03, int(skin.sum())).astype(np.float32)
    paper = run_algorithm1(scan)
    assert paper.object[skin].all()
    assert paper.low_threshold < 0.65 < paper.pore_threshold
    assert paper.pores[skin].mean() > 0.9  # the paper's steps label the skin as one shell-shaped "pore"
    fixed = run_algorithm1(scan, surface_margin=2)
    assert not fixed.pores[skin].any()
    assert fixed.pore_threshold == paper.pore_threshold  # t2 still comes from the whole object
    _, n_true = ndimage.label(truth)
    assert fixed.pores_kept == n_true
    dice = 2 * (fixed.pores & truth).sum() / (fixed.pores.sum() + truth.sum())
    assert dice > 0.9
    assert fixed.summary()["surface_margin"] == 2
