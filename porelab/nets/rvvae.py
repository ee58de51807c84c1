"""RV-VAE (Nicodemou et al. 2023) in 3-D, as used by Iuso et al. (2024).

The encoder is the dense VAE encoder (channel depths 32, 64, 128, 256, 1024; ReLU activations, as in
``examples/RV-VAE.yaml`` of the paper's public code). There is **no sampling**: the latent Gaussian
``N(μ, σ²)`` enters the decoder as a random variable, and every decoder layer propagates its mean and variance
(:mod:`porelab.nets._rv`): transposed convolutions and convolutions (mean through W, variance through
W²), ReLUs (rectified-Gaussian moments), and the final sigmoid with the moments of Iuso et al. (2024),
Appendix C. The parameter count equals the VAE's: 29,023,517 at ``scale=1.0`` and 64³ (Table 8:
29.024 M).

Differences from the paper's public code: the latent convolution is linear (the public code applies a ReLU
to it, which forces μ ≥ 0 and σ² ≥ 1), and the second latent half is log σ².
"""

from __future__ import annotations

import torch

from porelab.errors import ConfigError
from porelab.nets._rv import RVConv3d, RVConvTranspose3d, RVReLU, RVSequential, RVSigmoid
from porelab.nets._vae_common import DenseEncoder, check_input, check_patch_size, kaiming_init, width


def _rv_conv3(c_in: int, c_out: int) -> RVConv3d:
    return RVConv3d(c_in, c_out, 3, padding=1, padding_mode="replicate")


class RVDecoder(RVSequential):
    """The dense VAE decoder built from RV layers; ``(mean, var)`` of the latent → moments of the output."""

    def __init__(self, latent_dim: int, depths, out_channels: int, patch_size: int):
        c0, c1, c2, c3, _ = depths
        layers = [RVConvTranspose3d(latent_dim, c3, patch_size // 16, bias=False), _rv_conv3(c3, c3), RVReLU()]
        for c_in, c_out in ((c3, c2), (c2, c1), (c1, c0)):
            layers += [RVConvTranspose3d(c_in, c_out, 2, stride=2), _rv_conv3(c_out, c_out), RVReLU()]
        layers += [RVConvTranspose3d(c0, out_channels, 2, stride=2), _rv_conv3(out_channels, out_channels),
                   RVSigmoid()]
        super().__init__(*layers)


class RVVAE(torch.nn.Module):
    """Random-variable VAE.

    Forward (training and eval alike, there is no randomness): ``{"recon", "recon_mean", "recon_var",
    "mu", "logvar"}``. ``recon_mean``/``recon_var`` are the Appendix C moments of the output sigmoid;
    ``recon`` is ``recon_mean`` clamped to [0, 1] (the second-order mean can step outside [0, 1] when the
    variance is large). The loss uses the unclamped ``recon_mean`` so that it keeps a gradient there.

    Parameters
    ----------
    scale, patch_size, in_channels
        As :class:`porelab.nets.vae.VAE`.
    channel_depths : sequence of 5 ints, optional
        Default ``(32, 64, 128, 256, 1024)``.
    """

    default_depths = (32, 64, 128, 256, 1024)

    def __init__(self, scale: float = 1.0, patch_size: int = 64, in_channels: int = 1, channel_depths=None):
        super().__init__()
        self.patch_size = check_patch_size(patch_size, "RVVAE")
        self.in_channels = int(in_channels)
        base = tuple(channel_depths) if channel_depths is not None else self.default_depths
        if len(base) != 5:
            raise ConfigError(f"RVVAE: channel_depths needs 5 values, got {list(base)}")
        depths = [width(c, scale) for c in base[:4]] + [2 * width(base[4] / 2, scale)]
        self.depths = tuple(depths)
        self.encoder = DenseEncoder(self.in_channels, depths, self.patch_size, activation="relu")
        self.latent_dim = self.encoder.latent_dim
        self.decoder = RVDecoder(self.latent_dim, depths, self.in_channels, self.patch_size)
        kaiming_init(self, negative_slope=0.0)

    def _run(self, x: torch.Tensor) -> dict:
        mu, logvar = self.encoder(x)
        mean, var = self.decoder(mu[:, :, None, None, None], logvar.exp()[:, :, None, None, None])
        return {"recon": mean.clamp(0, 1), "recon_mean": mean, "recon_var": var, "mu": mu, "logvar": logvar}

    def forward(self, x: torch.Tensor) -> dict:
        check_input(x, self.patch_size, self.in_channels, "RVVAE")
        return self._run(x)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of the output random variable, clamped to [0, 1]."""
        check_input(x, self.patch_size, self.in_channels, "RVVAE")
        return self._run(x)["recon"]
