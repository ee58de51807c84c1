"""The five unsupervised networks: shapes, determinism, Table 8 sizes, training, and per-net behaviour."""

from __future__ import annotations

import math

import pytest
import torch

from porelab.errors import ConfigError
from porelab.losses_vae import build_unsupervised_loss
from porelab.nets import UNSUPERVISED, build

NETS = UNSUPERVISED   # a net added to the registry is tested here without editing this file

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
            # ×100 drives the decoder's last pre-activation far from 0: without the final sigmoid (or
            # clamp) the reconstruction would leave [0, 1]
            extreme = net(100.0 * (x - 0.5))["recon"]
        assert isinstance(out, dict)
        assert out["recon"].shape == (2, 1, patch, patch, patch)
        assert torch.isfinite(extreme).all() and float(extreme.min()) >= 0.0 and float(extreme.max()) <= 1.0
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
    n = sum(p.numel() for p in net.parameters())   # the vqVAE's codebook included, as Table 8 counts it
    assert round(n / 1e6, 3) == TABLE8[name] / 1e6, (name, n)   # Table 8: millions, three decimals


#: (scale, learning rate, steps) per net for the short training test (gmVAE is the slowest per step on CPU).
TRAIN_SETUP = {"vae": (0.125, 3e-3, 40), "cevae": (0.125, 3e-3, 40), "gmvae": (0.0625, 1e-3, 30),
               "vqvae": (0.125, 3e-3, 40), "rvvae": (0.125, 3e-3, 40)}


@pytest.mark.parametrize("name", NETS)
def test_training_steps_reduce_the_reconstruction_error(name):
    scale, lr, steps = TRAIN_SETUP[name]
    torch.manual_seed(0)
    net = build(name, scale=scale, patch_size=16)
    x = _toy(16, batch=4)
    loss_fn = build_unsupervised_loss(name)
    before = float((net.reconstruct(x) - x).abs().mean())
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss, terms = loss_fn(net(x), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(terms["recon"])
    after = float((net.reconstruct(x) - x).abs().mean())
    assert after < 0.6 * before, (before, after)
    assert sum(losses[-5:]) < 0.6 * sum(losses[:5]), losses


def test_bad_patch_size_and_input_shape_raise_config_error():
    with pytest.raises(ConfigError, match="patch_size"):
        build("vae", scale=TINY, patch_size=24)
    net = build("vae", scale=TINY, patch_size=16)
    with pytest.raises(ConfigError, match="16"):
        net(torch.zeros(1, 1, 32, 32, 32))


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


# --- RV-VAE: moment propagation against Monte Carlo -------------------------------------------------------


def test_rv_relu_moments_match_monte_carlo():
    from porelab.nets._rv import relu_moments

    g = torch.Generator().manual_seed(0)
    mean = torch.tensor([-2.0, -0.5, 0.0, 0.7, 3.0])
    var = torch.tensor([0.5, 2.0, 1.0, 0.1, 4.0])
    e, v = relu_moments(mean, var)
    samples = (mean + var.sqrt() * torch.randn(400_000, 5, generator=g, dtype=torch.float64)).clamp_min(0)
    assert torch.allclose(e.double(), samples.mean(0), rtol=0.01, atol=2e-3)
    assert torch.allclose(v.double(), samples.var(0), rtol=0.02, atol=2e-3)


@pytest.mark.parametrize("sd", [0.05, 0.2])
def test_rv_sigmoid_appendix_c_moments_match_monte_carlo_for_small_sigma(sd):
    from porelab.nets._rv import sigmoid_moments

    g = torch.Generator().manual_seed(1)
    mean = torch.tensor([-3.0, -1.0, 0.0, 0.5, 2.5], dtype=torch.float64)
    var = torch.full_like(mean, sd**2)
    e, v = sigmoid_moments(mean, var)
    samples = torch.sigmoid(mean + sd * torch.randn(400_000, 5, generator=g, dtype=torch.float64))
    assert torch.allclose(e, samples.mean(0), atol=5e-4)
    assert torch.allclose(v, samples.var(0), rtol=0.05, atol=1e-7)
    # the second-order term matters: plain S(μ) is measurably worse at σ = 0.2 away from μ = 0
    if sd == 0.2:
        assert float((torch.sigmoid(mean) - samples.mean(0)).abs().max()) > 3 * float(
            (e - samples.mean(0)).abs().max())


def test_rv_sigmoid_variance_is_clamped_non_negative():
    from porelab.nets._rv import sigmoid_moments

    _, v = sigmoid_moments(torch.tensor([2.0]), torch.tensor([1e4]))
    assert float(v) == 0.0


@pytest.mark.parametrize("kind", ["conv_zeros", "conv_replicate", "convT"])
def test_rv_linear_layers_propagate_independent_moments(kind):
    from porelab.nets._rv import RVConv3d, RVConvTranspose3d

    torch.manual_seed(2)
    if kind == "convT":
        layer = RVConvTranspose3d(2, 3, 2, stride=2).double()
    else:
        layer = RVConv3d(2, 3, 3, padding=1, padding_mode=kind.split("_")[1]).double()
    mean = torch.randn(1, 2, 4, 4, 4, dtype=torch.float64)
    var = torch.rand(1, 2, 4, 4, 4, dtype=torch.float64) + 0.1
    m_out, v_out = layer(mean, var)
    n = 4000
    samples = mean + var.sqrt() * torch.randn(n, 2, 4, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        y = layer.layer(samples)
    assert m_out.shape == v_out.shape == (1, *y.shape[1:])
    m_out, v_out = m_out[0].detach(), v_out[0].detach()
    y_mean, y_var = y.mean(0), y.var(0)
    if kind == "conv_replicate":
        # replicate padding copies border voxels, so border outputs see correlated inputs and the
        # independence formula is exact only in the interior (the same approximation as upstream RV-VAE)
        inner = (slice(None), slice(1, -1), slice(1, -1), slice(1, -1))
        m_out, v_out, y_mean, y_var = m_out[inner], v_out[inner], y_mean[inner], y_var[inner]
    assert torch.allclose(m_out, y_mean, atol=4 * float(v_out.max().sqrt()) / n**0.5)
    rel = (v_out - y_var).abs() / v_out
    assert float(rel.max()) < 0.15 and float(rel.mean()) < 0.04
    assert layer.n_convolutions == 2


def test_rvvae_is_deterministic_in_training_and_returns_moments():
    torch.manual_seed(0)
    net = build("rvvae", scale=TINY, patch_size=16)
    x = _toy(16)
    with torch.no_grad():
        a, b = net(x), net(x)
    assert torch.equal(a["recon"], b["recon"])  # no sampling even in training mode
    assert a["recon_var"].shape == a["recon"].shape
    # the output variance is the decoder's propagation of the latent variance e^logvar, and grows with it
    mu, var = a["mu"][:, :, None, None, None], a["logvar"].exp()[:, :, None, None, None]
    with torch.no_grad():
        out_var = [float(net.decoder(mu, f * var)[1].mean()) for f in (0.5, 1.0, 2.0)]
        assert torch.equal(net.decoder(mu, var)[1], a["recon_var"])
    assert out_var[0] < out_var[1] < out_var[2]
    assert torch.equal(net.reconstruct(x), a["recon"])
    # the mean path is not the plain deterministic decoder: variance shifts the output mean
    with torch.no_grad():
        zero_var = net.decoder(a["mu"][:, :, None, None, None], torch.zeros_like(a["mu"])[:, :, None, None, None])
    assert not torch.allclose(zero_var[0], a["recon_mean"])
    assert float(zero_var[1].max()) < 1e-8  # a deterministic latent stays (numerically) deterministic


# --- gmVAE ---------------------------------------------------------------------------------------------------


def test_gmvae_mixture_outputs_and_deterministic_eval():
    torch.manual_seed(0)
    net = build("gmvae", scale=TINY, patch_size=32, dim_c=5, dim_z=3, dim_w=2)
    x = _toy(32)
    out = net(x)
    assert out["z_mu"].shape == out["z_logvar"].shape == (2, 3, 2, 2, 2)
    assert out["w_mu"].shape == (2, 2, 2, 2, 2)
    assert out["zc_mu"].shape == out["zc_logprec"].shape == (2, 5, 3, 2, 2, 2)
    assert out["pc"].shape == (2, 5, 2, 2, 2)
    assert torch.allclose(out["pc"].sum(1), torch.ones(2, 2, 2, 2))
    # pc is the softmax over components of the Gaussian log-likelihood of z (uniform prior)
    net.eval()
    with torch.no_grad():
        ev = net(x)
    z = ev["z_mu"].unsqueeze(1)
    tau = ev["zc_logprec"].exp()
    loglik = (0.5 * ev["zc_logprec"] - 0.5 * tau * (z - ev["zc_mu"]) ** 2).sum(2)
    assert torch.allclose(ev["pc"], torch.softmax(loglik, 1), atol=1e-6)
    # eval decodes z = μ (not 2μ as the public code does): same as decoding the posterior mean directly
    assert torch.allclose(ev["recon"], net.decode(ev["z_mu"]), atol=1e-6)
    # training mode samples
    net.train()
    with torch.no_grad():
        assert not torch.equal(net(x)["recon"], net(x)["recon"])


def test_gmvae_scale_shrinks_latents_and_components():
    with torch.device("meta"):
        small = build("gmvae", scale=0.25)
        paper = build("gmvae", scale=1.0)
    assert (paper.dim_c, paper.dim_z, paper.dim_w) == (500, 200, 150)
    assert (small.dim_c, small.dim_z, small.dim_w) == (125, 50, 38)


# --- vqVAE ---------------------------------------------------------------------------------------------------


def test_vqvae_codebook_follows_the_ema_in_training_and_is_frozen_in_eval():
    torch.manual_seed(0)
    net = build("vqvae", scale=0.125, patch_size=16, num_embeddings=16)
    vq = net.quantizer
    x = _toy(16)
    assert not vq.codebook.requires_grad and not vq.ema_sum.requires_grad
    start = vq.codebook.detach().clone()
    net.train()
    net(x)  # first training step: data-dependent initialisation
    assert bool(vq.initialised) and not torch.equal(vq.codebook, start)
    # second training step: check the EMA update against its formula
    codebook, count, ema_sum = vq.codebook.clone(), vq.ema_count.clone(), vq.ema_sum.clone()
    with torch.no_grad():
        z_e = net.encoder(x)
    out = net(x)
    flat = z_e.movedim(1, -1).reshape(-1, z_e.shape[1])
    idx = torch.cdist(flat, codebook).argmin(1)
    assert torch.equal(out["indices"].flatten(), idx)
    onehot = torch.nn.functional.one_hot(idx, 16).float()
    exp_count = 0.99 * count + 0.01 * onehot.sum(0)
    exp_sum = 0.99 * ema_sum + 0.01 * onehot.t() @ flat
    n = exp_count.sum()
    smoothed = (exp_count + 1e-5) / (n + 16 * 1e-5) * n
    assert torch.allclose(vq.ema_count, exp_count, atol=1e-6)
    assert torch.allclose(vq.codebook, exp_sum / smoothed[:, None], atol=1e-5)
    assert not torch.equal(vq.codebook, codebook)
    # the loss trains the encoder through the straight-through estimator, never the codebook
    loss, _ = build_unsupervised_loss("vqvae")(net(x), x)
    loss.backward()
    assert vq.codebook.grad is None
    assert float(net.encoder[0].weight.grad.abs().sum()) > 0
    # perplexity = exp(entropy) of the batch's code usage
    p = torch.bincount(out["indices"].flatten(), minlength=16).double() / out["indices"].numel()
    p = p[p > 0]
    assert float(out["perplexity"]) == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-5)
    # frozen in eval mode and in reconstruct()
    frozen = vq.codebook.clone()
    net.eval()
    with torch.no_grad():
        net(x)
    net.train()
    net.reconstruct(x)
    assert torch.equal(vq.codebook, frozen)


def test_vqvae_commitment_is_the_distance_to_the_chosen_codes():
    torch.manual_seed(0)
    net = build("vqvae", scale=0.125, patch_size=16).eval()
    x = _toy(16)
    with torch.no_grad():
        out = net(x)
        z_e = net.encoder(x)
    codes = net.quantizer.codebook[out["indices"]].movedim(-1, 1)
    assert float(out["commitment"]) == pytest.approx(float(((z_e - codes) ** 2).mean()), rel=1e-5)
