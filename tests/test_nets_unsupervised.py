"""The five unsupervised networks: shapes, determinism, Table 8 sizes, training, and per-net behaviour."""

from __future__ import annotations

import math

import pytest
import torch

from porelab.errors import ConfigError
from porelab.losses_vae import build_unsupervised_loss
from porelab.nets import UNSUPERVISED, build

NETS = ("vae", "cevae")

#: Iuso et al. (2024), Table 8, parameters at 64³.
TABLE8 = {"vae": 29.024e6, "cevae": 140.650e6, "gmvae": 383.650e6, "vqvae": 2.511e6, "rvvae": 29.024e6}

TINY = 0.0625


def _toy(patch: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A bright ball with a dark pore on a dark background, plus a little noise, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    c = torch.arange(patch, dtype=torch.float32) - (patch - 1) / 2
    zz, yy, xx = torch.meshgrid(c, c, c, indexing="ij")
    r = (zz**2 + yy**2 + xx**2).sqrt()
    ball = (r < patch * 0.35).float() * 0.8
    pore = ((zz - 2) ** 2 + yy**2 + (xx + 1) ** 2).sqrt() < patch / 10
    vol = ball.masked_fill(pore, 0.05)
    x = vol.expand(batch, 1, patch, patch, patch).clone()
    return (x + 0.02 * torch.randn(x.shape, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("patch", [16, 32])
def test_output_shapes_and_range_in_train_and_eval(name, patch):
    torch.manual_seed(0)
    net = build(name, scale=TINY, patch_size=patch)
    x = _toy(patch)
    for train in (True, False):
        net.train(train)
        with torch.no_grad():
            out = net(x)
        assert isinstance(out, dict)
        assert out["recon"].shape == (2, 1, patch, patch, patch)
        assert float(out["recon"].min()) >= 0.0 and float(out["recon"].max()) <= 1.0
        assert torch.isfinite(out["recon"]).all()
        _, terms = build_unsupervised_loss(name)(out, x)
        assert all(math.isfinite(v) for v in terms.values())


@pytest.mark.parametrize("name", NETS)
def test_eval_is_deterministic_and_reconstruct_matches(name):
    torch.manual_seed(0)
    net = build(name, scale=TINY, patch_size=16).eval()
    x = _toy(16)
    with torch.no_grad():
        a, b = net(x)["recon"], net(x)["recon"]
    assert torch.equal(a, b)
    net.train()
    r = net.reconstruct(x)
    assert net.training  # reconstruct does not change the mode
    assert torch.equal(r, a)


@pytest.mark.parametrize("name", NETS)
def test_table8_parameter_count_at_scale_one(name):
    with torch.device("meta"):
        net = build(name, scale=1.0)
    n = sum(p.numel() for p in net.parameters())
    assert abs(n / TABLE8[name] - 1) < 0.02, (name, n)


@pytest.mark.parametrize("name", NETS)
def test_training_steps_reduce_the_reconstruction_error(name):
    torch.manual_seed(0)
    net = build(name, scale=0.125, patch_size=16)
    x = _toy(16, batch=4)
    loss_fn = build_unsupervised_loss(name)
    net.eval()
    before = float((net.reconstruct(x) - x).abs().mean())
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(40):
        loss, _ = loss_fn(net(x), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = float((net.reconstruct(x) - x).abs().mean())
    assert after < 0.6 * before, (before, after)


def test_bad_patch_size_and_input_shape_raise_config_error():
    with pytest.raises(ConfigError, match="patch_size"):
        build("vae", scale=TINY, patch_size=24)
    net = build("vae", scale=TINY, patch_size=16)
    with pytest.raises(ConfigError, match="16"):
        net(torch.zeros(1, 1, 32, 32, 32))


def test_registry_lists_the_five_unsupervised_nets():
    assert set(UNSUPERVISED) == set(TABLE8)


def test_vae_samples_in_training_only():
    torch.manual_seed(0)
    net = build("vae", scale=TINY, patch_size=16)
    x = _toy(16)
    with torch.no_grad():
        a, b = net(x)["recon"], net(x)["recon"]
    assert not torch.equal(a, b)
    assert net(x)["mu"].shape == net(x)["logvar"].shape == (2, 32)


def test_cevae_masks_a_copy_and_restores_it_on_the_mean_path():
    torch.manual_seed(0)
    net = build("cevae", scale=TINY, patch_size=32)
    x = _toy(32, batch=3)
    x_before = x.clone()
    with torch.no_grad():
        out = net(x)
    assert torch.equal(x, x_before)  # the caller's batch is never modified
    m = out["ce_mask"]
    assert m.shape == (3, 1, 32, 32, 32) and m.dtype == torch.bool
    for i in range(3):
        frac = float(m[i].float().mean())
        # 1-2 boxes with edges in [32//16, 32//4) = [2, 8): between 2³ and 2·7³ voxels
        assert 8 / 32**3 <= frac <= 2 * 7**3 / 32**3
        idx = m[i, 0].nonzero()
        extent = (idx.max(0).values - idx.min(0).values + 1)
        assert int(extent.min()) >= 2
    # recon_ce is the deterministic reconstruction of the masked input
    expected = net.reconstruct(x.masked_fill(m, 0.0))
    assert torch.allclose(out["recon_ce"], expected, atol=1e-6)
    net.eval()
    assert "recon_ce" not in net(x)
