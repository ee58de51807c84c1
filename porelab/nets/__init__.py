"""The ten 3-D networks of Iuso et al. (2024), built by name.

>>> from porelab.nets import build
>>> net = build("unet", scale=0.25)            # doctest: +SKIP

Contract (every module in this package follows it):

* Input ``(B, 1, D, H, W)`` float32, every spatial size divisible by 16.
* Supervised nets (``SUPERVISED``) end in a sigmoid. ``net.deep_supervision`` tells whether the net has side
  outputs. In training mode (``net.train()``) a deeply supervised net returns a list of probability tensors,
  finest (full resolution) first, each ``(B, 1, d, h, w)`` at its own resolution; UNet returns a tensor.
  In eval mode every supervised net returns one ``(B, 1, D, H, W)`` probability tensor (the finest head).
* Unsupervised nets (``UNSUPERVISED``) return a dict with at least ``"recon"`` ``(B, 1, D, H, W)`` in [0, 1]
  plus the latent statistics their loss needs. In eval mode the forward pass is deterministic (the latent
  mean, no sampling, no masking). ``net.reconstruct(x)`` returns the deterministic reconstruction tensor.
  VAE nets take ``patch_size`` (their dense latent depends on it).
* ``scale`` multiplies every width (channels, hidden units); ``scale=1.0`` at 64³ gives the paper's Table 8
  parameter counts.
"""

from __future__ import annotations

import importlib

from porelab.errors import ModelError

SUPERVISED = ("unet", "mssunet", "unetpp", "unet3p", "accunet")
UNSUPERVISED = ("vae", "cevae", "gmvae", "vqvae", "rvvae")
NAMES = SUPERVISED + UNSUPERVISED

# name -> (module, class)
_REGISTRY = {
    "unet": ("porelab.nets.unet", "UNet"),
    "mssunet": ("porelab.nets.mssunet", "MSSUNet"),
    "unetpp": ("porelab.nets.unetpp", "UNetPlusPlus"),
    "unet3p": ("porelab.nets.unet3p", "UNet3Plus"),
    "accunet": ("porelab.nets.accunet", "ACCUNet"),
    "vae": ("porelab.nets.vae", "VAE"),
    "cevae": ("porelab.nets.cevae", "CeVAE"),
    "gmvae": ("porelab.nets.gmvae", "GMVAE"),
    "vqvae": ("porelab.nets.vqvae", "VQVAE"),
    "rvvae": ("porelab.nets.rvvae", "RVVAE"),
}


def is_supervised(name: str) -> bool:
    check_name(name)
    return name in SUPERVISED


def check_name(name: str) -> str:
    if name not in _REGISTRY:
        raise ModelError(f"unknown network {name!r}; available: {', '.join(NAMES)}")
    return name


def get_class(name: str):
    module, cls = _REGISTRY[check_name(name)]
    return getattr(importlib.import_module(module), cls)


def build(name: str, scale: float = 1.0, **overrides):
    """Build network ``name`` with widths multiplied by ``scale``; ``overrides`` go to its constructor."""
    if not scale > 0:
        raise ModelError(f"scale must be > 0, got {scale}")
    return get_class(name)(scale=scale, **overrides)


__all__ = ["NAMES", "SUPERVISED", "UNSUPERVISED", "build", "check_name", "get_class", "is_supervised"]
