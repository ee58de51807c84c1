"""Vector-quantised VAE (vqVAE; van den Oord et al. 2017) with an EMA codebook, in 3-D.

Layer structure (Iuso et al. 2024, Table 8; the ``vqVAE_more`` model of the paper's public code), at
``scale=1.0`` (hidden width h = 128, residual width 32, D = 64, K = 512):

* encoder: conv k4 s2 p1 1 → h/4, ReLU, h/4 → h/2, ReLU, h/2 → h, ReLU (resolution ``P → P/8``), a 3×3×3
  conv h → h and a residual stack of two units (ReLU, conv3 h → 32 no bias, ReLU, conv1 32 → h no bias,
  plus identity) closed by a ReLU; a 1×1×1 conv h → D ("pre-quantisation");
* :class:`VectorQuantizerEMA`: nearest of K codes (squared L2), straight-through gradient, codebook
  updated by exponential moving averages (decay 0.99, Laplace-smoothed counts, eps 1e-5);
* decoder: conv3 D → h, the same residual stack, ConvTranspose k4 s2 p1 h → h/2, ReLU, h/2 → h/4, ReLU,
  h/4 → 1, sigmoid.

Parameter count 2,511,489 at 64³ (Table 8: 2.511 M), which includes the codebook (K·D) and its EMA sum
accumulator (K·D): the paper's code registers both as parameters, and porelab keeps them as
``nn.Parameter(requires_grad=False)`` so that the count matches the paper's accounting. They are never
touched by the optimiser (no gradient) and change only through the EMA update. Counting only trainable
parameters gives 2,445,953.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from porelab.errors import ConfigError
from porelab.nets._vae_common import check_patch_size, width
from porelab.nets.gmvae import check_divisible


class Residual(nn.Module):
    """``x + conv1(ReLU(conv3(ReLU(x))))`` with bias-free convolutions (van den Oord et al. 2017)."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.block = nn.Sequential(nn.ReLU(), nn.Conv3d(channels, hidden, 3, padding=1, bias=False), nn.ReLU(),
                                   nn.Conv3d(hidden, channels, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def residual_stack(channels: int, hidden: int, n_layers: int) -> nn.Sequential:
    return nn.Sequential(*[Residual(channels, hidden) for _ in range(n_layers)], nn.ReLU())


class VectorQuantizerEMA(nn.Module):
    """Vector quantisation with an exponential-moving-average codebook (van den Oord et al. 2017, App. A.1).

    For latent vectors ``z_e`` (channels last), each is replaced by its nearest code ``e_k``. In training
    mode the codebook is then updated (no gradient) as an EMA k-means step::

        N_k ← γ N_k + (1 − γ) n_k,   m_k ← γ m_k + (1 − γ) Σ_{i: k(i)=k} z_i,   e_k ← m_k / Ñ_k

    with ``Ñ`` the Laplace-smoothed counts ``(N_k + ε) / (Σ N + K ε) · Σ N``. In eval mode the codebook is
    fixed.

    Two choices differ from the reference implementation (van den Oord et al. 2017), both against codebook
    collapse, where every latent vector picks the same code (docs/experiments.md, "vqVAE codebook"):

    * data-dependent initialisation: at the first training step the codes are set to randomly chosen
      latent vectors of that batch (plus 1e-3 noise), as in k-means seeding (``initialised`` buffer);
    * each code starts with a pseudo-count ``N_k = 1`` at its initial position (``m_k = e_k``), so a code
      that is never chosen stays where it is; with the zero-initialised counts of the reference unused
      codes are divided by ~ε and thrown far away at the first step.

    Returns ``(z_q, commitment, perplexity, indices)``: ``z_q = z_e + sg(e − z_e)`` (straight-through),
    ``commitment = mean((z_e − sg(e))²)`` (unweighted; the loss applies β = 0.25), the perplexity
    ``exp(−Σ p_k log p_k)`` of the code usage in the batch, and the code indices ``(B, d, h, w)``.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, decay: float = 0.99, eps: float = 1e-5):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"VQ decay must be in [0, 1), got {decay}")
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        self.decay, self.eps = float(decay), float(eps)
        codes = torch.randn(self.num_embeddings, self.embedding_dim)
        self.codebook = nn.Parameter(codes, requires_grad=False)
        self.ema_sum = nn.Parameter(codes.clone(), requires_grad=False)
        self.register_buffer("ema_count", torch.ones(self.num_embeddings))
        self.register_buffer("initialised", torch.tensor(False))

    def forward(self, z_e: torch.Tensor):
        b, d, *spatial = z_e.shape
        flat = z_e.movedim(1, -1).reshape(-1, d)
        if self.training and not bool(self.initialised):
            self._data_init(flat.detach())
        codebook = self.codebook
        dist = (flat.square().sum(1, keepdim=True) - 2 * flat @ codebook.t()
                + codebook.square().sum(1)[None, :])
        idx = dist.argmin(1)
        onehot = F.one_hot(idx, self.num_embeddings).to(flat.dtype)
        quant = codebook[idx].view(b, *spatial, d).movedim(-1, 1)
        if self.training:
            self._ema_update(flat.detach(), onehot)
        commitment = F.mse_loss(z_e, quant.detach())
        z_q = z_e + (quant - z_e).detach()
        p = onehot.mean(0)
        perplexity = torch.exp(-(p * torch.log(p + 1e-10)).sum())
        return z_q, commitment, perplexity, idx.view(b, *spatial)

    @torch.no_grad()
    def _data_init(self, flat: torch.Tensor) -> None:
        pick = torch.randint(0, flat.shape[0], (self.num_embeddings,), device=flat.device)
        codes = flat[pick] + 1e-3 * torch.randn(self.num_embeddings, flat.shape[1], device=flat.device,
                                                dtype=flat.dtype)
        self.codebook.copy_(codes)
        self.ema_sum.copy_(codes)
        self.ema_count.fill_(1.0)
        self.initialised.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, onehot: torch.Tensor) -> None:
        g = self.decay
        self.ema_count.mul_(g).add_(onehot.sum(0), alpha=1 - g)
        self.ema_sum.mul_(g).add_(onehot.t() @ flat, alpha=1 - g)
        n = self.ema_count.sum()
        smoothed = (self.ema_count + self.eps) / (n + self.num_embeddings * self.eps) * n
        self.codebook.copy_(self.ema_sum / smoothed[:, None])


class VQVAE(nn.Module):
    """vqVAE; forward returns ``{"recon", "commitment", "perplexity", "indices"}``.

    The forward pass has no randomness; in training mode it also updates the codebook (EMA), in eval mode
    it does not.

    Parameters
    ----------
    scale : float
        Multiplies ``num_hiddens``, ``num_residual_hiddens`` and ``embedding_dim`` (not the number of codes).
    patch_size : int
        Nominal input edge (multiple of 16); the net is fully convolutional (latent grid ``P/8``).
    in_channels : int
    num_hiddens, num_residual_hiddens, num_residual_layers, embedding_dim, num_embeddings, decay
        Defaults 128, 32, 2, 64, 512, 0.99 (``examples/vqVAE.yaml`` of the paper's code).
    """

    def __init__(self, scale: float = 1.0, patch_size: int = 64, in_channels: int = 1, num_hiddens: int = 128,
                 num_residual_hiddens: int = 32, num_residual_layers: int = 2, embedding_dim: int = 64,
                 num_embeddings: int = 512, decay: float = 0.99, eps: float = 1e-5):
        super().__init__()
        self.patch_size = check_patch_size(patch_size, "VQVAE")
        self.in_channels = int(in_channels)
        h = width(num_hiddens, scale)
        h2, h4 = width(num_hiddens / 2, scale), width(num_hiddens / 4, scale)
        rh = width(num_residual_hiddens, scale)
        dim = width(embedding_dim, scale)
        self.encoder = nn.Sequential(
            nn.Conv3d(self.in_channels, h4, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv3d(h4, h2, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv3d(h2, h, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv3d(h, h, 3, padding=1),
            residual_stack(h, rh, num_residual_layers),
            nn.Conv3d(h, dim, 1),
        )
        self.quantizer = VectorQuantizerEMA(num_embeddings, dim, decay=decay, eps=eps)
        self.decoder = nn.Sequential(
            nn.Conv3d(dim, h, 3, padding=1),
            residual_stack(h, rh, num_residual_layers),
            nn.ConvTranspose3d(h, h2, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose3d(h2, h4, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose3d(h4, self.in_channels, 4, stride=2, padding=1),
        )

    def forward(self, x: torch.Tensor) -> dict:
        check_divisible(x, self.in_channels, "VQVAE")
        z_q, commitment, perplexity, idx = self.quantizer(self.encoder(x))
        return {"recon": torch.sigmoid(self.decoder(z_q)), "commitment": commitment, "perplexity": perplexity,
                "indices": idx}

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction through the quantised latent, without updating the codebook."""
        check_divisible(x, self.in_channels, "VQVAE")
        z_q, *_ = self._quantize_frozen(self.encoder(x))
        return torch.sigmoid(self.decoder(z_q))

    def _quantize_frozen(self, z_e: torch.Tensor):
        was = self.quantizer.training
        self.quantizer.train(False)
        try:
            return self.quantizer(z_e)
        finally:
            self.quantizer.train(was)
