"""Losses of the five unsupervised networks (VAE, ceVAE, gmVAE, vqVAE, RV-VAE).

``build_unsupervised_loss(name, **params)`` returns ``loss_fn(output, x) -> (loss, terms)`` where ``output``
is the network's dict (see :mod:`porelab.nets`), ``x`` the clean input batch, ``loss`` a scalar tensor and
``terms`` a dict of plain floats (every term before weighting, plus ``"loss"``). All weights are keyword
parameters; the defaults (:data:`DEFAULT_WEIGHTS`) are the values of the example configurations published
with the code of Iuso et al. (2024), not the function defaults of that code, which differ.

Reductions: reconstruction errors are means over all voxels of the batch; KL-type terms are summed over
the latent elements (and, for gmVAE's spatial latents, over space) and averaged over the batch. The public
code uses ``nanmean`` over the batch; porelab uses ``mean`` so that a NaN shows up instead of being hidden.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from porelab.errors import ConfigError, ModelError

LossFn = Callable[[dict, torch.Tensor], "tuple[torch.Tensor, dict[str, float]]"]

#: Default loss parameters per unsupervised network (the example YAMLs of the paper's public code).
DEFAULT_WEIGHTS: dict[str, dict] = {
    # VAE_loss: L1 + gamma·KL, gamma = 1e-5 (examples/VAE.yaml)
    "vae": {"kl_weight": 1e-5, "recon": "l1"},
    # ceVAE_loss: (1 - ce_ratio)·(theta·L1 + beta·KL) + ce_ratio·L1_ce; beta 1e-5, theta 1, ce_ratio 0.5
    "cevae": {"kl_weight": 1e-5, "rec_weight": 1.0, "ce_ratio": 0.5, "recon": "l1"},
    # gmVAE_loss: L1 + alpha·conditional prior + beta·w prior + gamma·max(c_lambda, cluster KL)
    "gmvae": {"cond_weight": 1e-12, "w_weight": 1e-7, "c_weight": 1e-9, "c_lambda": 0.0, "recon": "l1"},
    # vqVAE_loss: MSE + 0.25·MSE(z_e, sg(q))
    "vqvae": {"commitment": 0.25, "recon": "mse"},
    # RV_VAE_loss(kl_weight=1e-5, var_weight=50) from examples/RV-VAE.yaml; the recon norm is not public,
    # L1 like every other VAE loss of that code (the 2-D upstream RV-VAE uses MSE: recon="mse").
    "rvvae": {"kl_weight": 1e-5, "var_weight": 50.0, "recon": "l1"},
}


def reconstruction_error(recon: torch.Tensor, x: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Mean absolute (``"l1"``) or squared (``"mse"``) error over every voxel of the batch."""
    if kind == "l1":
        return F.l1_loss(recon, x)
    if kind == "mse":
        return F.mse_loss(recon, x)
    raise ConfigError(f"recon must be 'l1' or 'mse', got {kind!r}")


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) = ½ Σ (μ² + σ² − log σ² − 1), summed over latent elements, batch mean.

    Kingma & Welling (2014), Appendix B. ``mu``/``logvar`` are ``(B, ...)``.
    """
    kl = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0)
    return kl.flatten(1).sum(1).mean()


def _terms(**values) -> dict[str, float]:
    return {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in values.items()}


def vae_loss(kl_weight: float = 1e-5, recon: str = "l1") -> LossFn:
    """VAE: ``rec(x̂, x) + kl_weight · KL(q(z|x) ‖ N(0, I))``."""
    def loss_fn(out: dict, x: torch.Tensor):
        rec = reconstruction_error(out["recon"], x, recon)
        kl = kl_standard_normal(out["mu"], out["logvar"])
        loss = rec + kl_weight * kl
        return loss, _terms(loss=loss, recon=rec, kl=kl)
    return loss_fn


def cevae_loss(kl_weight: float = 1e-5, rec_weight: float = 1.0, ce_ratio: float = 0.5,
               recon: str = "l1") -> LossFn:
    """ceVAE (Zimmerer et al. 2019): ``(1 − r)(θ·rec(x̂, x) + β·KL) + r·rec(x̂_ce, x)``.

    ``x̂`` is the reconstruction of the clean input, ``x̂_ce`` that of the box-masked input (the net's
    ``"recon_ce"``), both compared with the clean ``x``; r = ``ce_ratio``, θ = ``rec_weight``,
    β = ``kl_weight``. Without ``"recon_ce"`` (eval mode) the loss is the VAE part alone,
    ``θ·rec + β·KL``, as in the public code's validation step.
    """
    if not 0.0 <= ce_ratio <= 1.0:
        raise ConfigError(f"ce_ratio must be in [0, 1], got {ce_ratio}")

    def loss_fn(out: dict, x: torch.Tensor):
        rec = reconstruction_error(out["recon"], x, recon)
        kl = kl_standard_normal(out["mu"], out["logvar"])
        vae_part = rec_weight * rec + kl_weight * kl
        if "recon_ce" not in out:
            return vae_part, _terms(loss=vae_part, recon=rec, kl=kl)
        ce = reconstruction_error(out["recon_ce"], x, recon)
        loss = (1.0 - ce_ratio) * vae_part + ce_ratio * ce
        return loss, _terms(loss=loss, recon=rec, kl=kl, ce=ce)
    return loss_fn


def gmvae_terms(out: dict, c_lambda: float = 0.0) -> dict[str, torch.Tensor]:
    """The three prior terms of the Gaussian-mixture VAE (Dilokthanakul et al. 2016; Chen et al. 2020).

    With ``pc`` = p(c | z, w) ``(B, K, *S)``, q(z|x) = N(z_mu, e^{z_logvar}) ``(B, Z, *S)``, the cluster
    Gaussians p(z|w,c) = N(zc_mu, e^{−zc_logprec}) ``(B, K, Z, *S)`` and q(w|x) = N(w_mu, e^{w_logvar}):

    * ``cond`` = Σ_{Z,S} Σ_k pc_k · KL(q(z|x) ‖ p(z|w,c=k)), with
      KL = ½[(σ_z² + (μ_z − μ_k)²)·τ_k − log τ_k − log σ_z² − 1], τ_k = e^{zc_logprec};
    * ``w`` = KL(q(w|x) ‖ N(0, I)) summed over W and space;
    * ``c`` = Σ_S max(c_lambda, Σ_k pc_k log(K·pc_k)) = KL(p(c|z,w) ‖ uniform), floored at ``c_lambda``.

    Each is averaged over the batch.
    """
    pc = out["pc"]
    k = pc.shape[1]
    z_mu, z_logvar = out["z_mu"].unsqueeze(1), out["z_logvar"].unsqueeze(1)
    mu_c, logprec = out["zc_mu"], out["zc_logprec"]
    kl_c = 0.5 * ((z_logvar.exp() + (z_mu - mu_c).pow(2)) * logprec.exp() - logprec - z_logvar - 1.0)
    cond = (pc.unsqueeze(2) * kl_c).flatten(1).sum(1).mean()
    w = kl_standard_normal(out["w_mu"], out["w_logvar"])
    c_kl = (pc * torch.log(pc * k + 1e-8)).sum(1)
    c = c_kl.clamp_min(c_lambda).flatten(1).sum(1).mean()
    return {"cond": cond, "w": w, "c": c}


def gmvae_loss(cond_weight: float = 1e-12, w_weight: float = 1e-7, c_weight: float = 1e-9,
               c_lambda: float = 0.0, recon: str = "l1") -> LossFn:
    """gmVAE: ``rec + cond_weight·cond + w_weight·w + c_weight·c`` (terms: :func:`gmvae_terms`)."""
    def loss_fn(out: dict, x: torch.Tensor):
        rec = reconstruction_error(out["recon"], x, recon)
        t = gmvae_terms(out, c_lambda)
        loss = rec + cond_weight * t["cond"] + w_weight * t["w"] + c_weight * t["c"]
        return loss, _terms(loss=loss, recon=rec, **t)
    return loss_fn


def vqvae_loss(commitment: float = 0.25, recon: str = "mse") -> LossFn:
    """vqVAE (van den Oord et al. 2017, EMA variant): ``rec(x̂, x) + commitment · ‖z_e − sg(q)‖²`` (mean).

    The codebook itself is updated by exponential moving averages inside the network, so there is no
    codebook term. ``"perplexity"`` of the code usage is reported among the terms.
    """
    def loss_fn(out: dict, x: torch.Tensor):
        rec = reconstruction_error(out["recon"], x, recon)
        com = out["commitment"]
        loss = rec + commitment * com
        terms = _terms(loss=loss, recon=rec, commitment=com)
        if "perplexity" in out:
            terms["perplexity"] = float(out["perplexity"])
        return loss, terms
    return loss_fn


def rvvae_loss(kl_weight: float = 1e-5, var_weight: float = 50.0, recon: str = "l1") -> LossFn:
    """RV-VAE (Nicodemou et al. 2023): ``rec(E[x̂], x) + var_weight·mean(Var[x̂]²) + kl_weight·KL``.

    The variance penalty is the mean squared output variance (``MSE(Var[x̂], 0)`` of the upstream RV-VAE),
    pushing the decoder to a confident reconstruction. ``E[x̂]`` is the net's unclamped ``"recon_mean"``
    when present (else ``"recon"``), so the loss keeps a gradient where the mean leaves [0, 1].
    """
    def loss_fn(out: dict, x: torch.Tensor):
        rec = reconstruction_error(out.get("recon_mean", out["recon"]), x, recon)
        var = out["recon_var"].pow(2).mean()
        kl = kl_standard_normal(out["mu"], out["logvar"])
        loss = rec + var_weight * var + kl_weight * kl
        return loss, _terms(loss=loss, recon=rec, var=var, kl=kl)
    return loss_fn


_BUILDERS = {"vae": vae_loss, "cevae": cevae_loss, "gmvae": gmvae_loss, "vqvae": vqvae_loss,
             "rvvae": rvvae_loss}


def build_unsupervised_loss(name: str, **params) -> LossFn:
    """Loss of unsupervised network ``name`` with :data:`DEFAULT_WEIGHTS` overridden by ``params``.

    Raises
    ------
    ModelError
        ``name`` is not an unsupervised network.
    ConfigError
        A parameter this loss does not take, or a non-finite weight.
    """
    if name not in _BUILDERS:
        raise ModelError(f"no unsupervised loss for network {name!r}; available: {', '.join(_BUILDERS)}")
    allowed = DEFAULT_WEIGHTS[name]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(f"loss of {name!r} takes no parameter {unknown[0]!r}; valid: {', '.join(allowed)}")
    merged = {**allowed, **params}
    for key, value in merged.items():
        if key != "recon" and not (isinstance(value, (int, float)) and math.isfinite(value)):
            raise ConfigError(f"loss of {name!r}: {key} must be a finite number, got {value!r}")
    return _BUILDERS[name](**merged)


__all__ = [
    "DEFAULT_WEIGHTS",
    "build_unsupervised_loss",
    "cevae_loss",
    "gmvae_loss",
    "gmvae_terms",
    "kl_standard_normal",
    "reconstruction_error",
    "rvvae_loss",
    "vae_loss",
    "vqvae_loss",
]
