"""Focal Tversky loss (Iuso et al. 2024, eq. (1)), deep-supervision reduction and the loss dispatcher."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from porelab.errors import ConfigError, ModelError
from porelab.losses import DeepSupervisionLoss, FocalTverskyLoss, build_loss, ds_weights, resize_label


def ftl_numpy(p, y, alpha, beta, gamma, smooth=0.0):
    """Eq. (1) written out directly, counts summed over the whole batch."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    tp = np.sum(y * p)
    fn = np.sum(y * (1 - p))
    fp = np.sum((1 - y) * p)
    ti = (tp + smooth) / (tp + alpha * fn + beta * fp + smooth)
    return (1 - ti) ** gamma


def block_reduce(a, f, op):
    b, c, d, h, w = a.shape
    r = a.reshape(b, c, d // f, f, h // f, f, w // f, f)
    return op(r, axis=(3, 5, 7))


@pytest.mark.parametrize("alpha,beta,gamma", [(0.633, 0.1, 1.0), (0.5, 0.5, 1.0), (0.9, 0.367, 2.0),
                                              (0.1, 0.9, 1 / 3), (0.3, 0.7, 4 / 3)])
@pytest.mark.parametrize("soft", [False, True])
def test_ftl_matches_formula(rng, alpha, beta, gamma, soft):
    p = rng.random((3, 1, 4, 5, 6)).astype(np.float32)
    y = rng.random((3, 1, 4, 5, 6)).astype(np.float32)
    y = y if soft else (y > 0.7).astype(np.float32)
    loss = FocalTverskyLoss(alpha, beta, gamma, smooth=0.0)(torch.from_numpy(p), torch.from_numpy(y))
    assert loss.dim() == 0
    assert float(loss) == pytest.approx(ftl_numpy(p, y, alpha, beta, gamma), rel=1e-5, abs=1e-7)
    # the default smoothing term changes the value only negligibly on a non-trivial batch
    loss_s = FocalTverskyLoss(alpha, beta, gamma)(torch.from_numpy(p), torch.from_numpy(y))
    assert float(loss_s) == pytest.approx(ftl_numpy(p, y, alpha, beta, gamma, 1e-6), rel=1e-5, abs=1e-7)


def test_ftl_sums_over_whole_batch_not_per_sample():
    # sample 0: large pore, perfectly found; sample 1: small pore, missed
    y = torch.zeros(2, 1, 8, 8, 8)
    y[0, 0, :4, :4, :4] = 1
    y[1, 0, 0, 0, :2] = 1
    p = y.clone()
    p[1] = 0
    loss = FocalTverskyLoss(0.5, 0.5, 1.0, smooth=0.0)(p, y)
    expected = ftl_numpy(p.numpy(), y.numpy(), 0.5, 0.5, 1.0)
    per_sample = np.mean([ftl_numpy(p[i].numpy(), y[i].numpy(), 0.5, 0.5, 1.0) for i in range(2)])
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert abs(expected - per_sample) > 0.4  # the two reductions really differ here


def test_alpha_weighs_false_negatives_beta_false_positives():
    y = torch.zeros(1, 1, 4, 4, 4)
    y[..., :2] = 1
    only_fn = y.clone()
    only_fn[..., 0] = 0  # half the pore missed, nothing extra
    only_fp = y.clone()
    only_fp[..., 2] = 1  # all found plus as many false voxels
    lo, hi = FocalTverskyLoss(0.1, 0.5, 1.0), FocalTverskyLoss(0.9, 0.5, 1.0)
    assert float(hi(only_fn, y)) > float(lo(only_fn, y)) + 0.2
    assert float(hi(only_fp, y)) == pytest.approx(float(lo(only_fp, y)), abs=1e-6)
    lo, hi = FocalTverskyLoss(0.5, 0.1, 1.0), FocalTverskyLoss(0.5, 0.9, 1.0)
    assert float(hi(only_fp, y)) > float(lo(only_fp, y)) + 0.2
    assert float(hi(only_fn, y)) == pytest.approx(float(lo(only_fn, y)), abs=1e-6)


def test_ftl_edge_cases(rng):
    ftl = FocalTverskyLoss()
    y = torch.from_numpy((rng.random((2, 1, 8, 8, 8)) > 0.8).astype(np.float32))
    assert float(ftl(y, y)) == pytest.approx(0.0, abs=1e-6)  # perfect prediction
    assert float(ftl(1 - y, y)) == pytest.approx(1.0, abs=1e-6)  # all wrong
    empty = torch.zeros_like(y)
    assert float(ftl(empty, empty)) == pytest.approx(0.0, abs=1e-6)  # nothing to find, nothing found
    some = torch.full_like(y, 0.3)
    val = float(ftl(some, empty))  # empty label, false positives only
    assert np.isfinite(val) and val == pytest.approx(1.0, abs=1e-6)
    # the public code's variant: no smoothing, a zero denominator becomes 1e-4 (TI = 0, loss 1)
    guard = FocalTverskyLoss(eps_mode="guard")
    assert float(guard(empty, empty)) == pytest.approx(1.0)
    p = torch.from_numpy(rng.random(y.shape).astype(np.float32))
    assert float(guard(p, y)) == pytest.approx(ftl_numpy(p.numpy(), y.numpy(), 0.633, 0.1, 1.0), rel=1e-5)
    # bool labels are accepted
    assert float(ftl(p, y.bool())) == pytest.approx(float(ftl(p, y)))


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0])
def test_ftl_gradient_finite(rng, gamma):
    y = torch.from_numpy((rng.random((2, 1, 8, 8, 8)) > 0.9).astype(np.float32))
    for p0 in (torch.from_numpy(rng.random(y.shape).astype(np.float32)), y.clone(), torch.zeros_like(y)):
        p = p0.clone().requires_grad_(True)
        FocalTverskyLoss(gamma=gamma)(p, y).backward()
        assert torch.isfinite(p.grad).all()
    p = torch.full_like(y, 0.5).requires_grad_(True)
    FocalTverskyLoss(gamma=gamma)(p, y).backward()
    # raising a missed pore voxel lowers the loss; raising a background voxel raises it
    assert float(p.grad[y.bool()].max()) < 0 < float(p.grad[~y.bool()].min())


def test_ftl_rejects_bad_parameters():
    with pytest.raises(ConfigError):
        FocalTverskyLoss(alpha=-0.1)
    with pytest.raises(ConfigError):
        FocalTverskyLoss(gamma=0)
    with pytest.raises(ConfigError):
        FocalTverskyLoss(eps_mode="nope")
    with pytest.raises(ValueError):
        FocalTverskyLoss()(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 4, 4, 2))


def test_ds_weight_schemes():
    assert ds_weights(3, "geometric") == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    assert ds_weights(4, "geometric") == pytest.approx(np.array([1, 0.5, 0.25, 0.125]) / 1.875)
    assert ds_weights(3, "inverse") == pytest.approx(np.array([1, 1 / 2, 1 / 3]) / (11 / 6))
    assert ds_weights(4, "inverse") == pytest.approx(np.array([1, 1 / 2, 1 / 3, 1 / 4]) / (25 / 12))
    assert ds_weights(3, "mean") == pytest.approx([1 / 3] * 3)
    assert ds_weights(2, [3, 1]) == pytest.approx([0.75, 0.25])
    assert ds_weights(1) == [1.0]
    with pytest.raises(ConfigError):
        ds_weights(3, "harmonic")
    with pytest.raises(ConfigError):
        ds_weights(3, [1, 1])


def test_ds_geometric_weights_on_hand_made_outputs():
    # base "loss" = mean of the output, so each output's loss is known exactly: 0.2, 0.4, 0.8
    outs = [torch.full((1, 1, 8, 8, 8), 0.2), torch.full((1, 1, 4, 4, 4), 0.4), torch.full((1, 1, 2, 2, 2), 0.8)]
    target = torch.zeros(1, 1, 8, 8, 8)
    ds = DeepSupervisionLoss(lambda p, t: p.mean(), weights="geometric")
    assert float(ds(outs, target)) == pytest.approx((1 * 0.2 + 0.5 * 0.4 + 0.25 * 0.8) / 1.75)
    ds = DeepSupervisionLoss(lambda p, t: p.mean(), weights="inverse")
    assert float(ds(outs, target)) == pytest.approx((1 * 0.2 + 0.4 / 2 + 0.8 / 3) / (11 / 6))
    ds = DeepSupervisionLoss(lambda p, t: p.mean(), weights="mean")
    assert float(ds(outs, target)) == pytest.approx((0.2 + 0.4 + 0.8) / 3)
    assert float(ds(outs[0], target)) == pytest.approx(0.2)  # a single tensor: just the base loss


def test_ds_low_resolution_outputs_meet_pooled_label(rng):
    y = (rng.random((2, 1, 8, 8, 8)) > 0.85).astype(np.float32)
    outs = [rng.random((2, 1, 8 // f, 8 // f, 8 // f)).astype(np.float32) for f in (1, 2, 4)]
    touts = [torch.from_numpy(o) for o in outs]
    ftl = FocalTverskyLoss(0.633, 0.1, 1.0, smooth=0.0)
    for pool, op in (("area", np.mean), ("max", np.max)):
        ds = DeepSupervisionLoss(ftl, weights="geometric", label_pool=pool)
        parts = [ftl_numpy(o, block_reduce(y, f, op) if f > 1 else y, 0.633, 0.1, 1.0)
                 for o, f in zip(outs, (1, 2, 4))]
        expected = (parts[0] + parts[1] / 2 + parts[2] / 4) / 1.75
        assert float(ds(touts, torch.from_numpy(y))) == pytest.approx(expected, rel=1e-5)
    # the public code's way: upsample the output (nearest) to the label
    ds = DeepSupervisionLoss(ftl, weights="inverse", resize="output")
    ups = [o.repeat(f, 2).repeat(f, 3).repeat(f, 4) for o, f in zip(outs, (1, 2, 4))]
    parts = [ftl_numpy(u, y, 0.633, 0.1, 1.0) for u in ups]
    expected = (parts[0] + parts[1] / 2 + parts[2] / 3) / (11 / 6)
    assert float(ds(touts, torch.from_numpy(y))) == pytest.approx(expected, rel=1e-5)


def test_area_pooled_label_keeps_pore_volume(rng):
    y = torch.from_numpy((rng.random((1, 1, 16, 16, 16)) > 0.95).astype(np.float32))
    small = resize_label(y, (4, 4, 4), "area")
    assert float(small.sum()) * 64 == pytest.approx(float(y.sum()))
    assert float(resize_label(y, (4, 4, 4), "max").sum()) * 64 > float(y.sum())


def test_build_loss_supervised(rng):
    y = torch.from_numpy((rng.random((2, 1, 8, 8, 8)) > 0.8).astype(np.float32))
    p = torch.from_numpy(rng.random((2, 1, 8, 8, 8)).astype(np.float32))
    fn = build_loss("unet", alpha=0.7, beta=0.3, gamma=2.0)
    loss, terms = fn(p, y)
    assert float(loss) == pytest.approx(ftl_numpy(p.numpy(), y.numpy(), 0.7, 0.3, 2.0, 1e-6), rel=1e-5)
    pn, yn = p.numpy().astype(np.float64), y.numpy().astype(np.float64)
    tp, fn_, fp = (pn * yn).sum(), (yn * (1 - pn)).sum(), ((1 - yn) * pn).sum()
    ti = (tp + 1e-6) / (tp + 0.7 * fn_ + 0.3 * fp + 1e-6)
    assert terms["tversky_index"] == pytest.approx(ti, rel=1e-5)
    assert terms["loss"] == pytest.approx(float(loss)) == pytest.approx((1 - ti) ** 2.0, rel=1e-5)
    assert all(isinstance(v, float) for v in terms.values())
    outs = [p, p[:, :, ::2, ::2, ::2].contiguous()]
    loss, terms = build_loss("mssunet")(outs, y)
    assert {"ftl_0", "ftl_1"} <= set(terms)
    assert terms["loss"] == pytest.approx((terms["ftl_0"] + terms["ftl_1"] / 2) / 1.5, rel=1e-6)
    loss, terms = build_loss("unetpp", ds_weights="mean")([p, p * 0.5], y)
    assert terms["loss"] == pytest.approx((terms["ftl_0"] + terms["ftl_1"]) / 2, rel=1e-6)


def test_build_loss_errors():
    with pytest.raises(ModelError, match="unet.*accunet.*rvvae"):
        build_loss("segformer")
    with pytest.raises(ConfigError, match="delta"):
        build_loss("unet", delta=0.3)
    with pytest.raises(ConfigError):
        build_loss("unet3p", ds_weights="harmonic")


def test_build_loss_unsupervised_is_the_vae_family_loss(rng):
    x = torch.from_numpy(rng.random((2, 1, 4, 4, 4)).astype(np.float32))
    recon = torch.from_numpy(rng.random((2, 1, 4, 4, 4)).astype(np.float32))
    mu = torch.from_numpy(rng.normal(size=(2, 8)).astype(np.float32))
    logvar = torch.from_numpy(rng.normal(scale=0.3, size=(2, 8)).astype(np.float32))
    out = {"recon": recon, "mu": mu, "logvar": logvar}
    loss, terms = build_loss("vae", kl_weight=1e-2)(out, x)
    l1 = np.abs(recon.numpy() - x.numpy()).mean()
    kl = 0.5 * (mu.numpy() ** 2 + np.exp(logvar.numpy()) - logvar.numpy() - 1).sum(1).mean()
    assert float(loss) == pytest.approx(l1 + 1e-2 * kl, rel=1e-5)
    assert terms["recon"] == pytest.approx(l1, rel=1e-5) and terms["kl"] == pytest.approx(kl, rel=1e-5)
    with pytest.raises(ConfigError, match="alpha"):     # a Focal Tversky parameter is not a VAE parameter
        build_loss("vae", alpha=0.5)
