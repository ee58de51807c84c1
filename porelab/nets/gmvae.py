"""Gaussian-mixture VAE (gmVAE; Dilokthanakul et al. 2016, for anomaly detection Chen et al. 2020) in 3-D.

Layer structure (Iuso et al. 2024, Table 8; the paper's public code, ``examples/gmVAE.yaml``), at
``scale=1.0``:

* encoder: five double-conv levels (3×3×3 conv + LeakyReLU, twice; replicate padding) with channels
  16, 64, 256, 1024, 1024 and 2× average pooling between them, giving a 1024-channel map at ``P/16``;
* spatial latents from bias-free 1×1×1 convolutions: ``q(w|x) = N(w_mu, e^{w_logvar})`` (150 channels)
  and ``q(z|x) = N(z_mu, e^{z_logvar})`` (200 channels);
* the prior network ``p(z | w, c)``: 1×1×1 conv 150 → 1024 + LeakyReLU, then two bias-free 1×1×1 convs
  1024 → 200·500 giving, for each of the ``K = 500`` mixture components, the mean and the log precision
  of a Gaussian over z (these two convolutions hold 204.8 M of the 383.6 M parameters);
* the cluster posterior ``p(c | z, w) ∝ N(z; μ_c(w), τ_c(w)⁻¹)`` (uniform p(c)), a softmax over
  components of the Gaussian log-likelihood summed over the z channels;
* decoder from z: 1×1×1 conv 200 → 1024 + LeakyReLU, four up blocks ``ConvTranspose(C→C, k2, s2)`` +
  double conv (1024→1024, 1024→256, 256→64, 64→16), a 3×3×3 conv 16 → 1 and a sigmoid.

383,649,761 parameters at 64³ (Table 8: 383.650 M). ``scale`` multiplies the channel depths and the
latent sizes (dim_w, dim_z) and the number of components (so tiny nets stay tiny); explicit ``dim_c``,
``dim_z``, ``dim_w`` override that.

Differences from the public code (deliberate): in eval mode z and w are their posterior means (the public
code computes z = 2μ and always samples w); the cluster log-likelihood is the proper Gaussian one,
``Σ_z ½ log τ − ½ τ (z − μ_c)²`` (the public code subtracts log τ and adds log π), consistent with the KL
term of the loss; no constant 0.1 is added to the log precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from porelab.errors import ConfigError
from porelab.nets._vae_common import (
    LOGVAR_MAX,
    LOGVAR_MIN,
    check_patch_size,
    conv3,
    kaiming_init,
    make_activation,
    reparameterise,
    width,
)


def double_conv(c_in: int, c_out: int, activation: str) -> nn.Sequential:
    return nn.Sequential(conv3(c_in, c_out), make_activation(activation), conv3(c_out, c_out),
                         make_activation(activation))


def check_divisible(x: torch.Tensor, in_channels: int, name: str, factor: int = 16) -> None:
    """Raise :class:`ConfigError` unless ``x`` is ``(B, in_channels, D, H, W)`` with sizes divisible by ``factor``."""
    if x.dim() != 5 or x.shape[1] != in_channels or any(s % factor for s in x.shape[2:]):
        raise ConfigError(f"{name} needs input (B, {in_channels}, D, H, W) with D, H, W divisible by {factor}, "
                          f"got {tuple(x.shape)}")


class GMVAE(nn.Module):
    """Gaussian-mixture VAE with spatial latents.

    Forward returns ``{"recon", "z_mu", "z_logvar", "w_mu", "w_logvar", "zc_mu", "zc_logprec", "pc"}``:
    z/w statistics ``(B, dim, d, h, w)`` at ``P/16``; component means and log precisions
    ``(B, K, dim_z, d, h, w)``; cluster posterior ``pc`` ``(B, K, d, h, w)``. Training samples z and w;
    eval uses their means.

    Parameters
    ----------
    scale : float
    patch_size : int
        Nominal input edge (multiple of 16); the net is fully convolutional and accepts any size divisible
        by 16.
    in_channels : int
    channel_depths : sequence of 5 ints, optional
        Default ``(16, 64, 256, 1024, 1024)``.
    dim_c, dim_z, dim_w : int, optional
        Mixture components / z channels / w channels; default ``500, 200, 150`` times ``scale``.
    """

    default_depths = (16, 64, 256, 1024, 1024)

    def __init__(self, scale: float = 1.0, patch_size: int = 64, in_channels: int = 1, channel_depths=None,
                 dim_c: int | None = None, dim_z: int | None = None, dim_w: int | None = None,
                 activation: str = "leakyrelu"):
        super().__init__()
        self.patch_size = check_patch_size(patch_size, "GMVAE")
        self.in_channels = int(in_channels)
        base = tuple(channel_depths) if channel_depths is not None else self.default_depths
        if len(base) != 5:
            raise ConfigError(f"GMVAE: channel_depths needs 5 values, got {list(base)}")
        d = [width(c, scale) for c in base]
        self.depths = tuple(d)
        self.dim_c = int(dim_c) if dim_c is not None else width(500, scale)
        self.dim_z = int(dim_z) if dim_z is not None else width(200, scale)
        self.dim_w = int(dim_w) if dim_w is not None else width(150, scale)
        if min(self.dim_c, self.dim_z, self.dim_w) < 1:
            raise ConfigError(f"GMVAE: dim_c, dim_z, dim_w must be >= 1, got {self.dim_c}, {self.dim_z}, {self.dim_w}")
        c = d[-1]
        self.encoder = nn.ModuleList()
        prev = self.in_channels
        for ch in d:
            self.encoder.append(double_conv(prev, ch, activation))
            prev = ch
        self.w_mu = nn.Conv3d(c, self.dim_w, 1, bias=False)
        self.w_logvar = nn.Conv3d(c, self.dim_w, 1, bias=False)
        self.z_mu = nn.Conv3d(c, self.dim_z, 1, bias=False)
        self.z_logvar = nn.Conv3d(c, self.dim_z, 1, bias=False)
        self.prior = nn.Sequential(nn.Conv3d(self.dim_w, c, 1), make_activation(activation))
        self.zc_mu = nn.Conv3d(c, self.dim_z * self.dim_c, 1, bias=False)
        self.zc_logprec = nn.Conv3d(c, self.dim_z * self.dim_c, 1, bias=False)
        self.dec_in = nn.Sequential(nn.Conv3d(self.dim_z, c, 1), make_activation(activation))
        self.up = nn.ModuleList()
        for c_in, c_out in zip(d[:0:-1], d[-2::-1]):  # (c4→c3), (c3→c2), (c2→c1), (c1→c0)
            self.up.append(nn.Sequential(nn.ConvTranspose3d(c_in, c_in, 2, stride=2),
                                         double_conv(c_in, c_out, activation)))
        self.out = conv3(d[0], self.in_channels)
        kaiming_init(self)  # convolutions followed by LeakyReLU; the linear heads keep torch's default init
        for head in (self.w_mu, self.w_logvar, self.z_mu, self.z_logvar, self.zc_mu, self.zc_logprec):
            head.reset_parameters()
        nn.init.xavier_uniform_(self.out.weight)  # the sigmoid head, as in the paper's code

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        for i, level in enumerate(self.encoder):
            if i:
                x = F.avg_pool3d(x, 2)
            x = level(x)
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        y = self.dec_in(z)
        for block in self.up:
            y = block(y)
        return torch.sigmoid(self.out(y))

    def _run(self, x: torch.Tensor, sample: bool) -> dict:
        h = self.encode(x)
        z_mu, z_logvar = self.z_mu(h), self.z_logvar(h).clamp(LOGVAR_MIN, LOGVAR_MAX)
        w_mu, w_logvar = self.w_mu(h), self.w_logvar(h).clamp(LOGVAR_MIN, LOGVAR_MAX)
        z = reparameterise(z_mu, z_logvar) if sample else z_mu
        w = reparameterise(w_mu, w_logvar) if sample else w_mu
        hw = self.prior(w)
        shape = (hw.shape[0], self.dim_c, self.dim_z, *hw.shape[2:])
        zc_mu = self.zc_mu(hw).view(shape)
        zc_logprec = self.zc_logprec(hw).view(shape).clamp(-LOGVAR_MAX, LOGVAR_MAX)
        # p(c | z, w) with a uniform p(c): softmax over c of log N(z; μ_c, 1/τ_c) summed over z channels
        loglik = (0.5 * zc_logprec - 0.5 * zc_logprec.exp() * (z.unsqueeze(1) - zc_mu).square()).sum(2)
        return {"recon": self.decode(z), "z_mu": z_mu, "z_logvar": z_logvar, "w_mu": w_mu,
                "w_logvar": w_logvar, "zc_mu": zc_mu, "zc_logprec": zc_logprec, "pc": torch.softmax(loglik, 1)}

    def forward(self, x: torch.Tensor) -> dict:
        check_divisible(x, self.in_channels, "GMVAE")
        return self._run(x, sample=self.training)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction from the posterior mean of z."""
        check_divisible(x, self.in_channels, "GMVAE")
        h = self.encode(x)
        return self.decode(self.z_mu(h))
