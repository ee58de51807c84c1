"""Search spaces by name: what a trial of each study suggests, and the paper's grid.

A space is ``fn(trial, profile) -> (net, net_kwargs, loss_params)``; :func:`get_space` looks one up by
name and fails with the list of the available names (like ``porelab.nets.build``).
"""

from __future__ import annotations

import numpy as np

from porelab.config import Profile
from porelab.errors import ConfigError

#: the paper's FTL grid (Iuso et al. 2024, §4.3): α, β ∈ linspace(0.1, 0.9, 4), γ ∈ {1/3, …, 2}
PAPER_ALPHAS = tuple(float(v) for v in np.linspace(0.1, 0.9, 4))
PAPER_GAMMAS = (1 / 3, 1 / 2, 2 / 3, 1.0, 4 / 3, 3 / 2, 5 / 3, 2.0)
#: the paper's FTL optimum (§5.1, Tables 1-2), the first trial of every TPE supervised study
PAPER_FTL_OPTIMUM = {"alpha": 0.633, "beta": 0.1, "gamma": 1.0}


def unsupervised_space(trial, profile: Profile) -> tuple[str, dict, dict]:
    """Architecture (VAE family), width multiplier (× ``profile.net_scale``), latent size (VAE, ceVAE,
    RV-VAE), KL weight (log-uniform 1e-6 … 1e-3), vqVAE's embedding size and commitment, gmVAE's w-prior
    weight."""
    from porelab.nets import get_class

    space = profile.search
    name = trial.suggest_categorical("net", tuple(space.unsupervised_nets))
    widths = tuple(space.widths)
    width = trial.suggest_categorical("width", widths) if len(widths) > 1 else widths[0]
    kwargs = {"scale": float(profile.net_scale * width), "patch_size": int(profile.unsupervised.patch)}
    loss: dict = {}
    if name in ("vae", "cevae", "rvvae"):
        base = tuple(get_class(name).default_depths)
        latent = trial.suggest_categorical(f"{name}_latent_channels", (base[4] // 2, base[4]))
        kwargs["channel_depths"] = [*base[:4], int(latent)]
        loss["kl_weight"] = trial.suggest_float(f"{name}_kl_weight", 1e-6, 1e-3, log=True)
    elif name == "gmvae":
        loss["w_weight"] = trial.suggest_float("gmvae_w_weight", 1e-8, 1e-5, log=True)
    elif name == "vqvae":
        kwargs["embedding_dim"] = trial.suggest_categorical("vqvae_embedding_dim", (32, 64))
        loss["commitment"] = trial.suggest_float("vqvae_commitment", 0.1, 0.5)
    return name, kwargs, loss


def supervised_space(trial, profile: Profile) -> tuple[str, dict, dict]:
    """Architecture (UNet family) and FTL α, β, γ (Iuso et al. 2024, eq. (1)): the paper's grid values with
    ``search.grid``, else uniform on [0.1, 0.9]², [1/3, 2]."""
    name = trial.suggest_categorical("net", tuple(profile.search.supervised_nets))
    if profile.search.grid:
        alpha = trial.suggest_categorical("alpha", PAPER_ALPHAS)
        beta = trial.suggest_categorical("beta", PAPER_ALPHAS)
        gamma = trial.suggest_categorical("gamma", PAPER_GAMMAS)
    else:
        alpha = trial.suggest_float("alpha", 0.1, 0.9)
        beta = trial.suggest_float("beta", 0.1, 0.9)
        gamma = trial.suggest_float("gamma", 1 / 3, 2.0)
    kwargs = {"scale": float(profile.net_scale), **profile.supervised_net_kwargs}
    return name, kwargs, {"alpha": alpha, "beta": beta, "gamma": gamma}


def paper_grid(profile: Profile) -> dict[str, list]:
    """The supervised grid of the paper (§4.3) over the profile's supervised nets, for ``GridSampler``."""
    return {"net": list(profile.search.supervised_nets), "alpha": list(PAPER_ALPHAS), "beta": list(PAPER_ALPHAS),
            "gamma": list(PAPER_GAMMAS)}


#: study kind → space; and the metric each study maximises
SPACES = {"unsupervised": unsupervised_space, "supervised": supervised_space}
MAIN_METRIC = {"unsupervised": "val_ap_pp", "supervised": "val_ap"}


def get_space(kind: str):
    """The search space of the ``kind`` study."""
    try:
        return SPACES[kind]
    except KeyError:
        raise ConfigError(f"unknown search space {kind!r}; available: {', '.join(SPACES)}") from None


__all__ = ["MAIN_METRIC", "PAPER_ALPHAS", "PAPER_FTL_OPTIMUM", "PAPER_GAMMAS", "SPACES", "get_space",
           "paper_grid", "supervised_space", "unsupervised_space"]
