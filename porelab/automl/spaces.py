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


def _width(trial, profile: Profile, name: str) -> float:
    """The net's width: ``profile.net_scale`` × the net's step-time-equalising width (``search.net_widths``)
    × the searched multiplier (continuous log-uniform ``width_range``, else categorical ``widths``)."""
    space = profile.search
    if space.width_range is not None:
        lo, hi = space.width_range
        width = trial.suggest_float("width", lo, hi, log=True) if hi > lo else lo
    else:
        widths = tuple(space.widths)
        width = trial.suggest_categorical("width", widths) if len(widths) > 1 else widths[0]
    return float(profile.net_scale * space.net_width(name) * width)


def suggest_lr(trial, profile: Profile) -> float | None:
    """The learning rate (log-uniform ``search.lr_range``), or ``None`` for the profile's own."""
    rng = profile.search.lr_range
    if rng is None:
        return None
    return trial.suggest_float("lr", rng[0], rng[1], log=True) if rng[1] > rng[0] else float(rng[0])


def unsupervised_space(trial, profile: Profile) -> tuple[str, dict, dict]:
    """Architecture (VAE family), width (:func:`_width`), latent size (VAE, ceVAE, RV-VAE), KL weight
    (log-uniform 1e-6 … 1e-3), vqVAE's embedding size and commitment, gmVAE's w-prior weight; the
    learning rate is a trial parameter too (:func:`suggest_lr`)."""
    from porelab.nets import get_class

    space = profile.search
    name = trial.suggest_categorical("net", tuple(space.unsupervised_nets))
    kwargs = {"scale": _width(trial, profile, name), "patch_size": int(profile.unsupervised.patch)}
    suggest_lr(trial, profile)
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
    ``search.grid``, else uniform on [0.1, 0.9]², [1/3, 2]; width and learning rate as the unsupervised
    space when the profile searches them."""
    name = trial.suggest_categorical("net", tuple(profile.search.supervised_nets))
    if profile.search.grid:
        alpha = trial.suggest_categorical("alpha", PAPER_ALPHAS)
        beta = trial.suggest_categorical("beta", PAPER_ALPHAS)
        gamma = trial.suggest_categorical("gamma", PAPER_GAMMAS)
        scale = float(profile.net_scale * profile.search.net_width(name))
    else:
        alpha = trial.suggest_float("alpha", 0.1, 0.9)
        beta = trial.suggest_float("beta", 0.1, 0.9)
        gamma = trial.suggest_float("gamma", 1 / 3, 2.0)
        scale = _width(trial, profile, name) if profile.search.width_range else \
            float(profile.net_scale * profile.search.net_width(name))
        suggest_lr(trial, profile)
    kwargs = {"scale": scale, **profile.supervised_net_kwargs}
    return name, kwargs, {"alpha": alpha, "beta": beta, "gamma": gamma}


def first_trial(kind: str, profile: Profile) -> dict:
    """The parameters enqueued as a new TPE study's first trial: a configuration known to learn. Supervised:
    the paper's FTL optimum; both: the first net, width 1 and the profile's learning rate when searched."""
    space = profile.search
    nets = space.unsupervised_nets if kind == "unsupervised" else space.supervised_nets
    params: dict = {"net": nets[0]}
    if space.width_range is not None and space.width_range[0] <= 1.0 <= space.width_range[1]:
        params["width"] = 1.0
    train = profile.unsupervised if kind == "unsupervised" else profile.supervised
    if space.lr_range is not None and space.lr_range[0] <= train.lr <= space.lr_range[1]:
        params["lr"] = float(train.lr)
    if kind == "supervised":
        params.update(PAPER_FTL_OPTIMUM)
    elif nets[0] in ("vae", "cevae", "rvvae"):         # the net's own latent size and KL weight
        from porelab.losses_vae import DEFAULT_WEIGHTS
        from porelab.nets import get_class

        params[f"{nets[0]}_latent_channels"] = int(get_class(nets[0]).default_depths[4])
        params[f"{nets[0]}_kl_weight"] = float(DEFAULT_WEIGHTS[nets[0]]["kl_weight"])
    return params


#: study kind → space; and the metric each study maximises: label-free, the AP of synthetic pores injected
#: into the held-out scans (``porelab.crossval.score_fold``), after the post-processing for the VAEs
SPACES = {"unsupervised": unsupervised_space, "supervised": supervised_space}
MAIN_METRIC = {"unsupervised": "val_ap_pp_inj", "supervised": "val_ap_inj"}


def get_space(kind: str):
    """The search space of the ``kind`` study."""
    try:
        return SPACES[kind]
    except KeyError:
        raise ConfigError(f"unknown search space {kind!r}; available: {', '.join(SPACES)}") from None


__all__ = ["MAIN_METRIC", "PAPER_ALPHAS", "PAPER_FTL_OPTIMUM", "PAPER_GAMMAS", "SPACES", "first_trial", "get_space",
           "suggest_lr", "supervised_space", "unsupervised_space"]
