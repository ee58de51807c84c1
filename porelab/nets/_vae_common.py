"""Building blocks shared by the VAE family (VAE, ceVAE, RV-VAE, gmVAE, vqVAE).

The dense VAE topology (Iuso et al. 2024, Sect. 3 and Table 8; layer structure from the paper's public
code, ``examples/VAE.yaml``):

* encoder: four 3×3×3 convolutions with stride 2 (replicate padding, bias, LeakyReLU), channels
  ``1 → c0 → c1 → c2 → c3``, resolution ``P → P/16``; then a "latent" convolution with kernel ``P/16``,
  no bias, ``c3 → c4`` that collapses the volume to one voxel. Its ``c4`` channels are split into the
  mean ``μ`` and the log-variance ``log σ²`` of a ``c4/2``-dimensional Gaussian latent.
* decoder: a transposed convolution with kernel ``P/16`` (no bias) ``c4/2 → c3`` back to ``P/16``, a
  3×3×3 conv + activation, then three stages ``ConvTranspose(k2, s2) + conv3 + act`` (c3→c2→c1→c0), and a
  last stage ``ConvTranspose(k2, s2) c0 → 1``, ``conv3 1 → 1`` and a sigmoid.

Deliberate differences from the paper's public code:

* the second half of the latent is used as ``log σ²`` (the public code uses ``exp`` of it as σ);
* the latent convolution is linear (the public code passes μ and log σ through a LeakyReLU, which
  clips the mean and the variance for no reason). Neither change alters the parameter count.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from porelab.errors import ConfigError

#: Upper clamp of log σ² (the public code clamps σ at 250 before the KL term).
LOGVAR_MAX = 2.0 * math.log(250.0)
#: Lower clamp of log σ² (avoids exp underflow to 0 and log(0) in the KL term).
LOGVAR_MIN = -30.0


def width(channels: int, scale: float) -> int:
    """Scale a channel count: ``max(1, round(channels · scale))``."""
    return max(1, round(channels * scale))


def check_patch_size(patch_size: int, name: str) -> int:
    """Return ``patch_size`` as an int, or raise :class:`ConfigError` unless it is a positive multiple of 16."""
    try:
        p = int(patch_size)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: patch_size must be an integer, got {patch_size!r}") from None
    if p <= 0 or p % 16 or p != patch_size:
        raise ConfigError(f"{name}: patch_size must be a positive multiple of 16, got {patch_size!r}")
    return p


def check_input(x: torch.Tensor, patch_size: int, in_channels: int, name: str) -> None:
    """Raise :class:`ConfigError` unless ``x`` is ``(B, in_channels, P, P, P)`` for this net's patch size."""
    if x.dim() != 5 or x.shape[1] != in_channels or tuple(x.shape[2:]) != (patch_size,) * 3:
        raise ConfigError(
            f"{name} was built for input (B, {in_channels}, {patch_size}, {patch_size}, {patch_size}), "
            f"got {tuple(x.shape)}"
        )


def make_activation(kind: str, negative_slope: float = 0.01) -> nn.Module:
    kind = kind.lower()
    if kind == "leakyrelu":
        return nn.LeakyReLU(negative_slope)
    if kind == "relu":
        return nn.ReLU()
    raise ConfigError(f"activation must be 'leakyrelu' or 'relu', got {kind!r}")


def conv3(c_in: int, c_out: int, stride: int = 1, bias: bool = True) -> nn.Conv3d:
    """3×3×3 convolution with replicate padding (the paper's code pads every 3×3×3 conv this way)."""
    return nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1, padding_mode="replicate", bias=bias)


def kaiming_init(module: nn.Module, negative_slope: float = 0.01) -> None:
    """Kaiming-normal init of every (transposed) convolution weight; biases to zero."""
    for m in module.modules():
        if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(m.weight, a=negative_slope, nonlinearity="leaky_relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class DenseEncoder(nn.Module):
    """Strided encoder + latent convolution; returns ``(μ, log σ²)``, each ``(B, latent_dim)``.

    Parameters
    ----------
    in_channels : int
    depths : sequence of 5 ints
        Channel depths ``(c0, c1, c2, c3, c4)`` (already scaled); ``c4`` must be even.
    patch_size : int
        Input edge; the latent kernel is ``patch_size // 16``.
    activation : str
        ``"leakyrelu"`` (VAE, ceVAE) or ``"relu"`` (RV-VAE).
    """

    def __init__(self, in_channels: int, depths, patch_size: int, activation: str = "leakyrelu"):
        super().__init__()
        c0, c1, c2, c3, c4 = depths
        if c4 % 2:
            raise ConfigError(f"latent channel depth must be even, got {c4}")
        layers = []
        prev = in_channels
        for c in (c0, c1, c2, c3):
            layers += [conv3(prev, c, stride=2), make_activation(activation)]
            prev = c
        self.features = nn.Sequential(*layers)
        k = patch_size // 16
        self.latent = nn.Conv3d(c3, c4, kernel_size=k, bias=False)
        self.latent_dim = c4 // 2

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.latent(self.features(x)).flatten(1)
        mu, logvar = h[:, : self.latent_dim], h[:, self.latent_dim :]
        return mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)


class DenseDecoder(nn.Module):
    """Latent vector ``(B, latent_dim)`` → reconstruction ``(B, out_channels, P, P, P)`` in [0, 1]."""

    def __init__(self, latent_dim: int, depths, out_channels: int, patch_size: int,
                 activation: str = "leakyrelu"):
        super().__init__()
        c0, c1, c2, c3, _ = depths
        k = patch_size // 16
        layers = [nn.ConvTranspose3d(latent_dim, c3, kernel_size=k, bias=False),
                  conv3(c3, c3), make_activation(activation)]
        for c_in, c_out in ((c3, c2), (c2, c1), (c1, c0)):
            layers += [nn.ConvTranspose3d(c_in, c_out, 2, stride=2), conv3(c_out, c_out),
                       make_activation(activation)]
        layers += [nn.ConvTranspose3d(c0, out_channels, 2, stride=2), conv3(out_channels, out_channels)]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.body(z[:, :, None, None, None]))


def reparameterise(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``z = μ + σ ε``, ε ~ N(0, I) (Kingma & Welling 2014)."""
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


class GaussianVAE(nn.Module):
    """Dense Gaussian VAE shared by :class:`~porelab.nets.vae.VAE` and :class:`~porelab.nets.cevae.CeVAE`.

    Forward returns ``{"recon", "mu", "logvar"}``. In training mode the latent is sampled; in eval mode the
    decoder gets ``μ`` (deterministic).
    """

    default_depths: tuple[int, ...] = (32, 64, 128, 256, 1024)

    def __init__(self, scale: float = 1.0, patch_size: int = 64, in_channels: int = 1, channel_depths=None,
                 activation: str = "leakyrelu"):
        super().__init__()
        name = type(self).__name__
        self.patch_size = check_patch_size(patch_size, name)
        self.in_channels = int(in_channels)
        base = tuple(channel_depths) if channel_depths is not None else self.default_depths
        if len(base) != 5:
            raise ConfigError(f"{name}: channel_depths needs 5 values, got {list(base)}")
        depths = [width(c, scale) for c in base[:4]] + [2 * width(base[4] / 2, scale)]
        self.depths = tuple(depths)
        self.encoder = DenseEncoder(self.in_channels, depths, self.patch_size, activation)
        self.latent_dim = self.encoder.latent_dim
        self.decoder = DenseDecoder(self.latent_dim, depths, self.in_channels, self.patch_size, activation)
        kaiming_init(self)

    def _run(self, x: torch.Tensor, sample: bool) -> dict:
        mu, logvar = self.encoder(x)
        z = reparameterise(mu, logvar) if sample else mu
        return {"recon": self.decoder(z), "mu": mu, "logvar": logvar}

    def forward(self, x: torch.Tensor) -> dict:
        check_input(x, self.patch_size, self.in_channels, type(self).__name__)
        return self._run(x, sample=self.training)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction (decoder applied to the latent mean), whatever the mode."""
        check_input(x, self.patch_size, self.in_channels, type(self).__name__)
        return self._run(x, sample=False)["recon"]
