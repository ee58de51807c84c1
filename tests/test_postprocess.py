"""Anomaly score and the eq. (2)-(3) surface compensation on a synthetic part with a sharp skin and pores."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from sklearn.metrics import average_precision_score

from porelab import postprocess
from porelab.postprocess import (
    anomaly_map,
    apply_skin,
    derivative_sum,
    fit_lambda,
    interior_mask,
    surface_compensation,
    weighted_median,
)


def synthetic_part(n=48, seed=0, n_pores=8):
    """A cylinder (0.8) with a sharp skin, small low-contrast pores inside, and a 'VAE' reconstruction
    that is the blurred part without pores (it misses the skin's sharpness and every pore)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:n, :n, :n].astype(np.float32)
    c = (n - 1) / 2
    r = np.sqrt((y - c) ** 2 + (x - c) ** 2)
    part = ((r < n * 0.38) & (z > 3) & (z < n - 4)).astype(np.float32) * 0.8
    v_hat = gaussian_filter(part, 1.5)
    truth = np.zeros(part.shape, bool)
    for _ in range(n_pores):
        p = rng.uniform([10, c - n * 0.2, c - n * 0.2], [n - 10, c + n * 0.2, c + n * 0.2])
        rr = rng.uniform(1.2, 2.2)
        truth |= (z - p[0]) ** 2 + (y - p[1]) ** 2 + (x - p[2]) ** 2 <= rr**2
    scan = part.copy()
    scan[truth] -= 0.3                      # a pore is darker than the metal, as weak as the skin error
    scan += rng.normal(0, 0.02, scan.shape).astype(np.float32)
    return scan, v_hat, truth


def test_anomaly_map_is_abs_difference_float32(rng):
    x = rng.random((5, 6, 7))
    xh = rng.random((5, 6, 7)).astype(np.float32)
    a = anomaly_map(x, xh)
    assert a.dtype == np.float32
    np.testing.assert_allclose(a, np.abs(x - xh), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError):
        anomaly_map(x, xh[:4])


def test_anomaly_map_dark_residual_keeps_only_darker_voxels(rng, monkeypatch):
    monkeypatch.setattr(postprocess, "_SLAB_VOXELS", 6 * 7 * 2)      # several slabs
    x = rng.random((5, 6, 7))
    xh = rng.random((5, 6, 7)).astype(np.float32)
    a = anomaly_map(x, xh, residual="dark")
    assert a.dtype == np.float32
    np.testing.assert_allclose(a, np.maximum(xh - x, 0), rtol=1e-6, atol=1e-6)
    assert (a[x > xh] == 0).all() and (a[x < xh] > 0).all()
    # a dark pore scores, an equally bright blob does not
    scan = np.full((8, 8, 8), 0.8, np.float32)
    scan[2, 2, 2], scan[5, 5, 5] = 0.2, 1.4
    dark = anomaly_map(scan, np.full_like(scan, 0.8), residual="dark")
    assert dark[2, 2, 2] > 0.5 and dark[5, 5, 5] == 0
    with pytest.raises(ValueError):
        anomaly_map(x, xh, residual="bright")


def test_derivative_sum_matches_np_gradient_across_slabs(rng, monkeypatch):
    v = rng.random((11, 9, 8)).astype(np.float32)
    expected = sum(np.abs(g) for g in np.gradient(v))
    monkeypatch.setattr(postprocess, "_SLAB_VOXELS", 9 * 8 * 3)   # 3 planes per slab: halos matter
    np.testing.assert_allclose(derivative_sum(v), expected, rtol=1e-6, atol=1e-6)
    # an axis of length 1 has zero derivative
    flat = v[:1]
    np.testing.assert_allclose(derivative_sum(flat)[0], sum(np.abs(g) for g in np.gradient(flat[0])), atol=1e-6)


def test_weighted_median_lambda_equals_bruteforce_argmin(rng):
    g = rng.gamma(2.0, 1.0, 4000)
    g[:300] = 0.0
    a = 1.7 * g + np.abs(rng.standard_cauchy(4000)) * 0.3
    lam, obj = fit_lambda(a, g)
    grid = np.linspace(0.0, 4.0, 40001)
    objs = np.array([np.mean(np.abs(a - t * g)) for t in grid[::10]])
    fine_lo = grid[::10][max(np.argmin(objs) - 1, 0)]
    fine = np.linspace(fine_lo, fine_lo + 2e-3, 2001)
    fobjs = np.array([np.mean(np.abs(a - t * g)) for t in fine])
    assert obj <= fobjs.min() + 1e-12
    assert abs(lam - fine[np.argmin(fobjs)]) < 2e-6
    assert np.isclose(obj, np.mean(np.abs(a - lam * g)))
    assert weighted_median([1, 2, 3], [1, 1, 5]) == 3
    assert weighted_median([3, 1, 2], [1, 1, 1]) == 2


def test_compensation_removes_surface_keeps_pores():
    scan, v_hat, truth = synthetic_part()
    A = anomaly_map(scan, v_hat)
    A_pores, lam, sigma, info = surface_compensation(A, v_hat, return_info=True)
    assert lam > 0 and sigma > 0
    assert A_pores.dtype == np.float32 and A_pores.shape == A.shape
    # eq. (2) at the returned λ*, σ*, with the clamp at 0 active on the skin
    D = sum(np.abs(g) for g in np.gradient(v_hat.astype(np.float64)))
    residual = A - lam * gaussian_filter(D, sigma, mode="nearest")
    np.testing.assert_allclose(A_pores, np.maximum(0, residual), atol=2e-5)
    assert (residual < -1e-3).sum() > 100 and (A_pores[residual < -1e-3] == 0).all()
    ap_before = average_precision_score(truth.ravel(), A.ravel())
    ap_after = average_precision_score(truth.ravel(), A_pores.ravel())
    assert ap_before < 0.1 and ap_after > 0.8, (ap_before, ap_after)
    # the pores keep most of their score; the skin band loses most of it
    skin = (derivative_sum(v_hat) > 0.05) & ~truth
    assert A_pores[truth].mean() > 0.6 * A[truth].mean()
    assert A_pores[skin].mean() < 0.3 * A[skin].mean()
    # the σ returned is the best one tried
    assert info["objective"][sigma] == min(info["objective"].values())


def test_fixed_sigma_output_equals_formula():
    scan, v_hat, _ = synthetic_part(n=32, n_pores=3)
    A = anomaly_map(scan, v_hat)
    out, lam, sigma = surface_compensation(A, v_hat, sigmas=[2.0])
    assert sigma == 2.0
    D = sum(np.abs(g) for g in np.gradient(v_hat.astype(np.float64)))
    G = gaussian_filter(D, 2.0, mode="nearest")
    lam_ref, _ = fit_lambda(A, G)
    assert lam == pytest.approx(lam_ref, rel=1e-4)
    np.testing.assert_allclose(out, np.maximum(0, A - lam * G), atol=2e-5)


def test_subsample_changes_lambda_negligibly():
    scan, v_hat, _ = synthetic_part(n=64, seed=3)
    A = anomaly_map(scan, v_hat)
    _, lam_all, _ = surface_compensation(A, v_hat, sigmas=[1.0])
    _, lam_sub, _ = surface_compensation(A, v_hat, sigmas=[1.0], n_sample=50_000, seed=7)
    assert abs(lam_sub - lam_all) / lam_all < 0.01


def test_mask_restricts_fit_and_bad_inputs():
    scan, v_hat, _ = synthetic_part(n=32, n_pores=3)
    A = anomaly_map(scan, v_hat)
    full = surface_compensation(A, v_hat, sigmas=[1.0, 2.0])
    masked = surface_compensation(A, v_hat, sigmas=[1.0, 2.0], mask=np.ones(A.shape, bool))
    assert full[1] == masked[1] and full[2] == masked[2]
    with pytest.raises(ValueError):
        surface_compensation(A, v_hat[1:])
    with pytest.raises(ValueError):
        surface_compensation(A, v_hat, sigmas=[0.0])
    with pytest.raises(ValueError):
        surface_compensation(A, v_hat, mask=np.zeros(A.shape, bool))


def test_smooth_prefilters_the_scan_only(rng):
    x = rng.normal(0.8, 0.1, (12, 14, 16)).astype(np.float32)
    x_hat = np.full_like(x, 0.8)
    a = anomaly_map(x, x_hat, residual="dark", smooth=0.7)
    expected = np.maximum(x_hat - gaussian_filter(x, 0.7, mode="nearest"), 0)
    np.testing.assert_allclose(a, expected, atol=1e-6)
    # the pre-filter lowers the noise of the residual; σ = 0 is the paper's residual
    assert a.std() < 0.6 * anomaly_map(x, x_hat, residual="dark").std()
    np.testing.assert_array_equal(anomaly_map(x, x_hat, smooth=0), anomaly_map(x, x_hat))
    with pytest.raises(ValueError, match="smooth"):
        anomaly_map(x, x_hat, smooth=-1)


def _box_scan(shape=(20, 24, 24), cut=False):
    scan = np.full(shape, 100.0, dtype=np.float32)
    sl = (slice(0, shape[0]) if cut else slice(4, 16), slice(4, 20), slice(4, 20))
    scan[sl] = 1000.0
    scan[10, 12, 12] = 100.0      # a one-voxel internal pore, 6 voxels deep
    return scan


def test_interior_mask_erodes_the_part_by_skin_voxels():
    scan = _box_scan()
    keep = interior_mask(scan, 2)
    part = scan > 500
    part[10, 12, 12] = True       # the pore is inside the part (Algorithm 1's object mask fills it)
    assert keep.dtype == bool and not keep[~part].any()
    # exactly the voxels more than 2 voxels from the air: the box's faces lose two layers
    assert keep[6:14, 6:18, 6:18].all() and not keep[5].any() and not keep[:, 5].any()
    assert keep[10, 12, 12]       # the internal pore is scored
    assert interior_mask(scan, 0) is None
    with pytest.raises(ValueError, match="skin"):
        interior_mask(scan, -1)


def test_interior_mask_does_not_erode_where_the_part_leaves_the_field_of_view():
    keep = interior_mask(_box_scan(cut=True), 2)
    assert keep[0, 10, 10] and keep[-1, 10, 10]      # z faces are the scan's border, not the part's surface
    assert not keep[10, 5, 10]                       # a real face is eroded


def test_apply_skin_zeroes_outside_in_place_across_slabs(rng, monkeypatch):
    monkeypatch.setattr(postprocess, "_SLAB_VOXELS", 3 * 24 * 24)
    scan = _box_scan()
    keep = interior_mask(scan, 1)
    score = rng.random(scan.shape).astype(np.float32)
    before = score.copy()
    out = apply_skin(score, keep)
    assert out is score
    np.testing.assert_array_equal(score, np.where(keep, before, 0))
    assert apply_skin(before, None) is before
    with pytest.raises(ValueError, match="shape"):
        apply_skin(score, keep[:-1])
