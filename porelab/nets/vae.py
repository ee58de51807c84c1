"""Dense 3-D variational autoencoder (Kingma & Welling 2014) as used by Iuso et al. (2024).

At ``scale=1.0`` and 64³ input: channel depths 32, 64, 128, 256, 1024 (a 512-dimensional latent),
29,023,517 parameters (Table 8: 29.024 M). The layer structure is described in
:mod:`porelab.nets._vae_common`.

>>> import torch
>>> from porelab.nets.vae import VAE
>>> net = VAE(scale=0.0625, patch_size=16).eval()
>>> net(torch.rand(2, 1, 16, 16, 16))["recon"].shape
torch.Size([2, 1, 16, 16, 16])
"""

from __future__ import annotations

from porelab.nets._vae_common import GaussianVAE


class VAE(GaussianVAE):
    """Dense Gaussian VAE; forward returns ``{"recon", "mu", "logvar"}`` (``logvar`` = log σ²).

    Parameters
    ----------
    scale : float
        Multiplies every channel depth (1.0 = the paper's size).
    patch_size : int
        Input edge in voxels (multiple of 16); the latent convolution's kernel is ``patch_size // 16``.
    in_channels : int
        Input (and reconstruction) channels.
    channel_depths : sequence of 5 ints, optional
        Unscaled depths; default ``(32, 64, 128, 256, 1024)`` (``examples/VAE.yaml`` of the paper's code).
    activation : {"leakyrelu", "relu"}
    """

    default_depths = (32, 64, 128, 256, 1024)
