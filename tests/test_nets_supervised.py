"""The five supervised 3-D networks: Table 8 sizes, the forward contract, deep supervision, trainability."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from porelab.errors import ConfigError
from porelab.losses import build_loss
from porelab.nets import SUPERVISED, build

# Iuso et al. (2024), Table 8: trainable parameters at 64³ input, batch 1
TABLE8 = {"unet": 1.325e6, "mssunet": 1.328e6, "unetpp": 1.503e6, "unet3p": 1.672e6, "accunet": 5.062e6}
# number of outputs in training mode at depth 4, and each one's resolution divisor (finest first)
DIVISORS = {"mssunet": (1, 2, 4), "unetpp": (1, 1, 1), "unet3p": (1, 1, 1, 1), "accunet": (1, 2, 4)}


def n_params(net) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def toy_batch(n: int = 16, batch: int = 2, seed: int = 0):
    """Patches inside a bright part (0.8) holding dark spherical pores (0.15), noise σ 0.03; label = pores."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:n, :n, :n]
    vols, labels = [], []
    for _ in range(batch):
        lab = np.zeros((n, n, n), bool)
        for _ in range(n // 2):
            c = rng.integers(2, n - 2, 3)
            r = rng.uniform(1.5, 2.5)
            lab |= (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= r * r
        vol = np.where(lab, 0.15, 0.8) + rng.normal(0, 0.03, lab.shape)
        vols.append(vol.astype(np.float32))
        labels.append(lab.astype(np.float32))
    return torch.from_numpy(np.stack(vols)[:, None]), torch.from_numpy(np.stack(labels)[:, None])


@pytest.mark.parametrize("name", SUPERVISED)
def test_table8_parameter_counts(name):
    with torch.device("meta"):                      # no weights allocated
        count = n_params(build(name, scale=1.0))
    # Table 8 gives millions with three decimals
    assert round(count / 1e6, 3) == TABLE8[name] / 1e6, f"{name}: {count} vs Table 8 {TABLE8[name]:.0f}"


@pytest.mark.parametrize("name", SUPERVISED)
@pytest.mark.parametrize("size", [16, 32])
def test_forward_contract(name, size):
    torch.manual_seed(0)
    net = build(name, scale=0.125)
    # ×100 drives the logits far from 0: a missing sigmoid would give values far outside [0, 1]
    x = 100.0 * (torch.rand(2, 1, size, size, size) - 0.5)
    net.train()
    with torch.no_grad():
        out = net(x)
    if name == "unet":
        assert net.deep_supervision is False
        outs = [out]
        assert isinstance(out, torch.Tensor)
    else:
        assert net.deep_supervision is True
        assert isinstance(out, list) and len(out) == len(DIVISORS[name])
        outs = out
    divisors = DIVISORS.get(name, (1,))
    for o, d in zip(outs, divisors):
        assert o.shape == (2, 1, size // d, size // d, size // d)
        assert torch.isfinite(o).all() and float(o.min()) >= 0 and float(o.max()) <= 1   # probabilities
    net.eval()
    with torch.no_grad():
        final = net(x)
        again = net(x)
    assert isinstance(final, torch.Tensor) and final.shape == (2, 1, size, size, size)
    assert float(final.min()) >= 0 and float(final.max()) <= 1
    assert torch.equal(final, again)  # deterministic at inference (no dropout)


@pytest.mark.parametrize("name", ["mssunet", "unetpp", "unet3p", "accunet"])
def test_eval_output_is_the_finest_training_head(name):
    torch.manual_seed(0)
    net = build(name, scale=0.125, dropout=0.0)
    x = torch.rand(2, 1, 16, 16, 16)
    with torch.no_grad():
        net.eval()
        final = net(x)
        net.train()
        for m in net.modules():  # ACC-UNet's BatchNorm must use its running statistics in both passes
            if isinstance(m, torch.nn.BatchNorm3d):
                m.eval()
        heads = net(x)
    assert torch.allclose(heads[0], final, atol=1e-6)


@pytest.mark.parametrize("name", ["mssunet", "unetpp", "unet3p", "accunet"])
def test_deep_supervision_off_returns_one_tensor(name):
    net = build(name, scale=0.125, deep_supervision=False).train()
    out = net(torch.rand(2, 1, 16, 16, 16))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 1, 16, 16, 16)
    assert n_params(net) < n_params(build(name, scale=0.125))  # the side heads are not built


def test_widths_follow_scale():
    assert build("unet", scale=1.0).widths == [16, 32, 64, 128]
    assert build("unetpp", scale=0.25).widths == [4, 8, 16, 32]
    assert build("accunet", scale=0.5).widths == [8, 16, 32, 64, 128]
    assert build("mssunet", scale=0.01).widths[0] == 2  # never below 2 channels
    small, big = n_params(build("unet3p", scale=0.25)), n_params(build("unet3p", scale=0.5))
    assert 3 < big / small < 4.2  # parameters grow ~quadratically with width


def test_unet3p_cheap_upsample_is_the_same_function():
    torch.manual_seed(0)
    paper = build("unet3p", scale=0.125).train()
    cheap = build("unet3p", scale=0.125, cheap_upsample=True).train()
    cheap.load_state_dict(paper.state_dict())
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.manual_seed(1)
        a = paper(x)
        torch.manual_seed(1)
        b = cheap(x)
    for p, q in zip(a, b):
        assert torch.allclose(p, q, atol=1e-5)


def test_bad_input_and_options():
    with pytest.raises(ConfigError):
        build("unet", deep_supervision=True)
    with pytest.raises(ValueError, match="divisible"):
        build("unet", scale=0.125)(torch.rand(1, 1, 12, 16, 16))
    with pytest.raises(ValueError, match="divisible"):
        build("accunet", scale=0.125).eval()(torch.rand(1, 1, 24, 24, 24))  # needs multiples of 16


# (name, scale, steps): the cheapest settings at which a few Adam steps show learning; ACC-UNet is the heaviest
TRAIN = [("unet", 0.25, 15), ("mssunet", 0.25, 12), ("unetpp", 0.25, 12), ("unet3p", 0.25, 8),
         ("accunet", 0.125, 8)]


@pytest.mark.parametrize("name,scale,steps", TRAIN)
def test_a_few_adam_steps_lower_the_loss(name, scale, steps):
    """Every net trains with its deep-supervision loss (in these few steps mostly the class prior)."""
    torch.manual_seed(0)
    x, y = toy_batch(16, batch=2)
    net = build(name, scale=scale).train()
    loss_fn = build_loss(name)  # the paper's Focal Tversky loss, geometric deep-supervision weights
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss, terms = loss_fn(net(x), y)
        loss.backward()
        # every parameter, side heads included, gets a finite gradient from the loss
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
        opt.step()
        losses.append(terms["loss"])
    assert min(losses[-3:]) < losses[0] - 0.02, f"{name}: {np.round(losses, 3)}"


def test_unet_learns_to_separate_pores_from_material():
    """Beyond the class prior: after 30 steps the eval-mode map is higher on pores than on material.

    Uses α = β = 0.5 (Dice): with the paper's β = 0.1 false positives are so cheap that the first steps of
    an unnormalised net drive every voxel towards 1 (TI = P / (P + 0.1 N)), which takes longer to leave.
    """
    torch.manual_seed(0)
    x, y = toy_batch(16, batch=2)
    net = build("unet", scale=0.5).train()
    loss_fn = build_loss("unet", alpha=0.5, beta=0.5)
    opt = torch.optim.Adam(net.parameters(), lr=3e-4)
    for _ in range(30):
        opt.zero_grad()
        loss_fn(net(x), y)[0].backward()
        opt.step()
    with torch.no_grad():
        out = net.eval()(x)
    pore, material = float(out[y.bool()].mean()), float(out[~y.bool()].mean())
    assert pore > material + 0.15, (pore, material)
