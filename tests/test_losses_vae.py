"""Unsupervised losses against direct computations of their formulas (numpy, explicit loops)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from porelab.errors import ConfigError, ModelError
from porelab.losses_vae import DEFAULT_WEIGHTS, build_unsupervised_loss, kl_standard_normal
from porelab.nets import UNSUPERVISED


def _np(t):
    return t.detach().double().numpy()


def _kl_direct(mu, logvar):
    """½ Σ_j (μ_j² + σ_j² − log σ_j² − 1) per sample, averaged over the batch."""
    mu, lv = _np(mu).reshape(len(mu), -1), _np(logvar).reshape(len(mu), -1)
    per = [0.5 * sum(m * m + math.exp(v) - v - 1 for m, v in zip(mu[b], lv[b])) for b in range(len(mu))]
    return float(np.mean(per))


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 4, 4, 4, generator=g)
    recon = torch.rand(3, 1, 4, 4, 4, generator=g)
    mu = torch.randn(3, 6, generator=g)
    logvar = torch.randn(3, 6, generator=g) * 0.5
    return x, recon, mu, logvar


def _weighted_sum(name, terms, w):
    """The loss each VAE-family net's default loss is, written out from its terms and weights ``w``."""
    if name == "vae":
        return terms["recon"] + w["kl_weight"] * terms["kl"]
    if name == "cevae":
        r = w["ce_ratio"]
        return (1 - r) * (w["rec_weight"] * terms["recon"] + w["kl_weight"] * terms["kl"]) + r * terms["ce"]
    if name == "gmvae":
        return (terms["recon"] + w["cond_weight"] * terms["cond"] + w["w_weight"] * terms["w"]
                + w["c_weight"] * terms["c"])
    if name == "vqvae":
        return terms["recon"] + w["commitment"] * terms["commitment"]
    return terms["recon"] + w["var_weight"] * terms["var"] + w["kl_weight"] * terms["kl"]


@pytest.mark.parametrize("name", UNSUPERVISED)
def test_default_loss_of_every_net_combines_its_terms_with_the_default_weights(name):
    from porelab.nets import build

    assert set(DEFAULT_WEIGHTS) == set(UNSUPERVISED)
    torch.manual_seed(0)
    net = build(name, scale=0.0625, patch_size=16).train()
    x = torch.rand(2, 1, 16, 16, 16)
    with torch.no_grad():
        out = net(x)
    loss, terms = build_unsupervised_loss(name)(out, x)
    w = DEFAULT_WEIGHTS[name]
    assert terms["loss"] == pytest.approx(float(loss), rel=1e-6)
    assert float(loss) == pytest.approx(_weighted_sum(name, terms, w), rel=1e-5)
    diff = _np(out.get("recon_mean", out["recon"])) - _np(x)
    rec = np.abs(diff).mean() if w["recon"] == "l1" else (diff**2).mean()
    assert terms["recon"] == pytest.approx(rec, rel=1e-5)
    # a weight passed in replaces its default in the same formula
    key = next(k for k in w if k not in ("recon", "c_lambda", "ce_ratio", "rec_weight"))
    changed = {**w, key: 2 * w[key]}
    loss2, terms2 = build_unsupervised_loss(name, **{key: changed[key]})(out, x)
    assert float(loss2) == pytest.approx(_weighted_sum(name, terms2, changed), rel=1e-5)


def test_kl_of_standard_normal_posterior_is_zero_and_matches_torch_distributions(batch):
    _, _, mu, logvar = batch
    assert float(kl_standard_normal(torch.zeros(4, 7), torch.zeros(4, 7))) == 0.0
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, (0.5 * logvar).exp()), torch.distributions.Normal(0.0, 1.0)
    ).sum(1).mean()
    assert float(kl_standard_normal(mu, logvar)) == pytest.approx(float(ref), rel=1e-5)
    assert float(kl_standard_normal(mu, logvar)) == pytest.approx(_kl_direct(mu, logvar), rel=1e-5)


def test_vae_loss_is_l1_plus_weighted_kl(batch):
    x, recon, mu, logvar = batch
    loss, terms = build_unsupervised_loss("vae", kl_weight=0.01)({"recon": recon, "mu": mu, "logvar": logvar}, x)
    l1 = np.abs(_np(recon) - _np(x)).mean()
    expected = l1 + 0.01 * _kl_direct(mu, logvar)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert terms["recon"] == pytest.approx(l1, rel=1e-5)
    assert terms["loss"] == pytest.approx(expected, rel=1e-5)


def test_vae_perfect_reconstruction_leaves_only_the_kl_term(batch):
    x, _, mu, logvar = batch
    loss, terms = build_unsupervised_loss("vae")({"recon": x.clone(), "mu": mu, "logvar": logvar}, x)
    assert terms["recon"] == 0.0
    assert float(loss) == pytest.approx(1e-5 * _kl_direct(mu, logvar), rel=1e-5)
    zero, _ = build_unsupervised_loss("vae")(
        {"recon": x.clone(), "mu": torch.zeros(3, 6), "logvar": torch.zeros(3, 6)}, x)
    assert float(zero) == 0.0


def test_vae_mse_option(batch):
    x, recon, mu, logvar = batch
    _, terms = build_unsupervised_loss("vae", recon="mse")({"recon": recon, "mu": mu, "logvar": logvar}, x)
    assert terms["recon"] == pytest.approx(((_np(recon) - _np(x)) ** 2).mean(), rel=1e-5)


def test_cevae_combined_loss_compares_both_reconstructions_with_the_clean_input(batch):
    x, recon, mu, logvar = batch
    recon_ce = torch.rand_like(x)
    fn = build_unsupervised_loss("cevae", kl_weight=0.1, rec_weight=2.0, ce_ratio=0.3)
    loss, terms = fn({"recon": recon, "recon_ce": recon_ce, "mu": mu, "logvar": logvar}, x)
    l1 = np.abs(_np(recon) - _np(x)).mean()
    l1_ce = np.abs(_np(recon_ce) - _np(x)).mean()
    expected = 0.7 * (2.0 * l1 + 0.1 * _kl_direct(mu, logvar)) + 0.3 * l1_ce
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert terms["ce"] == pytest.approx(l1_ce, rel=1e-5)
    # eval-mode output (no CE branch): the VAE part alone
    loss_eval, terms_eval = fn({"recon": recon, "mu": mu, "logvar": logvar}, x)
    assert float(loss_eval) == pytest.approx(2.0 * l1 + 0.1 * _kl_direct(mu, logvar), rel=1e-5)
    assert "ce" not in terms_eval


def _gm_output(g, b=2, k=3, z=4, w=2, s=(2, 1, 1)):
    logits = torch.randn(b, k, *s, generator=g)
    return {
        "recon": torch.rand(b, 1, 4, 4, 4, generator=g),
        "z_mu": torch.randn(b, z, *s, generator=g), "z_logvar": 0.3 * torch.randn(b, z, *s, generator=g),
        "w_mu": torch.randn(b, w, *s, generator=g), "w_logvar": 0.3 * torch.randn(b, w, *s, generator=g),
        "zc_mu": torch.randn(b, k, z, *s, generator=g), "zc_logprec": 0.3 * torch.randn(b, k, z, *s, generator=g),
        "pc": torch.softmax(logits, 1),
    }


def test_gmvae_loss_matches_explicit_loops():
    g = torch.Generator().manual_seed(1)
    out = _gm_output(g)
    x = torch.rand(2, 1, 4, 4, 4, generator=g)
    fn = build_unsupervised_loss("gmvae", cond_weight=0.5, w_weight=0.25, c_weight=0.125, c_lambda=0.0)
    loss, terms = fn(out, x)
    o = {k: _np(v) for k, v in out.items()}
    b, k, z = o["zc_mu"].shape[:3]
    spatial = list(np.ndindex(*o["pc"].shape[2:]))
    cond = w = c = 0.0
    for i in range(b):
        for s in spatial:
            for kk in range(k):
                for d in range(z):
                    mz, vz = o["z_mu"][(i, d, *s)], math.exp(o["z_logvar"][(i, d, *s)])
                    mc, lp = o["zc_mu"][(i, kk, d, *s)], o["zc_logprec"][(i, kk, d, *s)]
                    # KL(N(mz, vz) || N(mc, 1/exp(lp)))
                    vc = math.exp(-lp)
                    kl = 0.5 * (math.log(vc / vz) + (vz + (mz - mc) ** 2) / vc - 1)
                    cond += o["pc"][(i, kk, *s)] * kl
            for d in range(o["w_mu"].shape[1]):
                m, lv = o["w_mu"][(i, d, *s)], o["w_logvar"][(i, d, *s)]
                w += 0.5 * (m * m + math.exp(lv) - lv - 1)
            p = o["pc"][(i, slice(None), *s)]
            c += max(0.0, float(np.sum(p * np.log(p * k + 1e-8))))
    cond, w, c = cond / b, w / b, c / b
    rec = np.abs(o["recon"] - _np(x)).mean()
    assert terms["cond"] == pytest.approx(cond, rel=1e-5)
    assert terms["w"] == pytest.approx(w, rel=1e-5)
    assert terms["c"] == pytest.approx(c, rel=1e-4)
    assert float(loss) == pytest.approx(rec + 0.5 * cond + 0.25 * w + 0.125 * c, rel=1e-5)


def test_gmvae_edge_cases_uniform_clusters_and_matching_posterior():
    g = torch.Generator().manual_seed(2)
    out = _gm_output(g)
    out["pc"] = torch.full_like(out["pc"], 1.0 / out["pc"].shape[1])  # uniform: KL to uniform prior = 0
    out["zc_mu"] = out["z_mu"].unsqueeze(1).expand_as(out["zc_mu"]).clone()
    out["zc_logprec"] = -out["z_logvar"].unsqueeze(1).expand_as(out["zc_logprec"]).clone()
    out["w_mu"].zero_()
    out["w_logvar"].zero_()
    x = out["recon"].clone()
    loss, terms = build_unsupervised_loss("gmvae", cond_weight=1.0, w_weight=1.0, c_weight=1.0)(out, x)
    assert terms["cond"] == pytest.approx(0.0, abs=1e-6)
    assert terms["c"] == pytest.approx(0.0, abs=1e-6)
    assert terms["w"] == 0.0 and terms["recon"] == 0.0
    assert float(loss) == pytest.approx(0.0, abs=1e-5)
    # the floor c_lambda lifts a zero cluster term to c_lambda per spatial position
    _, floored = build_unsupervised_loss("gmvae", c_lambda=0.5)(out, x)
    assert floored["c"] == pytest.approx(0.5 * 2, rel=1e-6)  # 2 spatial positions


def test_vqvae_loss_is_mse_plus_weighted_commitment(batch):
    x, recon, _, _ = batch
    com = torch.tensor(0.37)
    loss, terms = build_unsupervised_loss("vqvae")(
        {"recon": recon, "commitment": com, "perplexity": torch.tensor(5.0)}, x)
    mse = ((_np(recon) - _np(x)) ** 2).mean()
    assert float(loss) == pytest.approx(mse + 0.25 * 0.37, rel=1e-5)
    assert terms["perplexity"] == 5.0
    loss0, _ = build_unsupervised_loss("vqvae", commitment=2.0)({"recon": x.clone(), "commitment": com}, x)
    assert float(loss0) == pytest.approx(0.74, rel=1e-6)


def test_rvvae_loss_is_mean_recon_plus_variance_penalty_plus_kl(batch):
    x, recon, mu, logvar = batch
    var = torch.rand_like(x) * 0.1
    out = {"recon": recon, "recon_var": var, "mu": mu, "logvar": logvar}
    loss, terms = build_unsupervised_loss("rvvae", kl_weight=0.01, var_weight=3.0)(out, x)
    expected = np.abs(_np(recon) - _np(x)).mean() + 3.0 * (_np(var) ** 2).mean() + 0.01 * _kl_direct(mu, logvar)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    # perfect mean, zero variance: only the KL term is left
    out = {"recon": x.clone(), "recon_var": torch.zeros_like(x), "mu": mu, "logvar": logvar}
    loss, terms = build_unsupervised_loss("rvvae")(out, x)
    assert terms["recon"] == 0.0 and terms["var"] == 0.0
    assert float(loss) == pytest.approx(1e-5 * _kl_direct(mu, logvar), rel=1e-5)


def test_losses_are_differentiable(batch):
    x, recon, mu, logvar = batch
    recon = recon.clone().requires_grad_()
    mu = mu.clone().requires_grad_()
    loss, _ = build_unsupervised_loss("vae")({"recon": recon, "mu": mu, "logvar": logvar}, x)
    loss.backward()
    # d/d recon of mean|recon − x| is sign(recon − x)/N; d/d mu of kl_weight·KL (batch mean) is kl_weight·mu/B
    n, b = recon.numel(), mu.shape[0]
    assert torch.allclose(recon.grad, torch.sign(recon.detach() - x) / n, atol=1e-9)
    assert torch.allclose(mu.grad, 1e-5 * mu.detach() / b, rtol=1e-5, atol=1e-12)


def test_bad_names_and_parameters_raise_one_line_errors():
    with pytest.raises(ModelError, match="unet"):
        build_unsupervised_loss("unet")
    with pytest.raises(ConfigError, match="gamma"):
        build_unsupervised_loss("vae", gamma=1.0)
    with pytest.raises(ConfigError, match="kl_weight"):
        build_unsupervised_loss("vae", kl_weight=float("nan"))
    with pytest.raises(ConfigError, match="recon"):
        build_unsupervised_loss("vae", recon="l3")(
            {"recon": torch.zeros(1, 1, 2, 2, 2), "mu": torch.zeros(1, 2), "logvar": torch.zeros(1, 2)},
            torch.zeros(1, 1, 2, 2, 2))
    with pytest.raises(ConfigError, match="ce_ratio"):
        build_unsupervised_loss("cevae", ce_ratio=1.5)
