"""Context-encoding VAE (ceVAE; Zimmerer et al. 2019) in 3-D, as used by Iuso et al. (2024).

The network is the dense VAE of :mod:`porelab.nets._vae_common` with channel depths 16, 64, 256, 1024,
1024 (140,649,789 parameters at ``scale=1.0`` and 64³; Table 8: 140.650 M). What makes it a ceVAE is
training: besides the usual VAE pass on the clean input, random boxes of the input are blanked and the
same network, on its deterministic (latent-mean) path, must restore them ("context encoding").

Design choice: the masking happens **inside the training-mode forward pass**, which has the clean ``x``
at hand, so the training engine needs nothing but ``out = net(x)`` and ``loss_fn(out, x)``. The masked
copy is a new tensor: the caller's ``x`` is never modified, and the loss compares both reconstructions
with the *unmasked* input. (The paper's public code masks the batch in place and so trains against the
masked input; porelab does not copy that.)

Masking (after the public code's ``delete_parallelepipedic_regions``): per sample, one box size is drawn
per axis uniformly from ``[P//16, P//4)`` voxels (at least 1), then 1 or 2 boxes of that size are placed
uniformly inside the patch and set to ``fill_value`` (0). Random numbers come from torch's global
generator (seeded by :func:`porelab.runtime.seed_everything`).
"""

from __future__ import annotations

import torch

from porelab.nets._vae_common import GaussianVAE, check_input


def random_box_mask(shape, *, n_boxes=(1, 2), size_range=None, device=None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Boolean mask ``(B, 1, D, H, W)`` with 1-2 random boxes per sample set to True.

    Parameters
    ----------
    shape : tuple
        ``(B, C, D, H, W)`` of the batch to mask.
    n_boxes : (int, int)
        Inclusive range of the number of boxes per sample.
    size_range : (int, int), optional
        Box edge range ``[lo, hi)`` in voxels, drawn per axis; default ``[max(D,H,W)//16, max//4)``.
    """
    b, _, *spatial = shape
    big = max(spatial)
    lo, hi = size_range if size_range is not None else (big // 16, big // 4)
    lo = max(1, int(lo))
    hi = max(lo + 1, int(hi))
    mask = torch.zeros((b, 1, *spatial), dtype=torch.bool)
    for i in range(b):
        size = [min(int(torch.randint(lo, hi, (1,), generator=generator)), s) for s in spatial]
        count = int(torch.randint(n_boxes[0], n_boxes[1] + 1, (1,), generator=generator))
        for _ in range(count):
            start = [int(torch.randint(0, s - e + 1, (1,), generator=generator)) for s, e in zip(spatial, size)]
            mask[i, 0, start[0]:start[0] + size[0], start[1]:start[1] + size[1],
                 start[2]:start[2] + size[2]] = True
    return mask.to(device) if device is not None else mask


class CeVAE(GaussianVAE):
    """Context-encoding VAE.

    Forward, training mode: ``{"recon", "mu", "logvar", "recon_ce", "ce_mask"}`` where ``recon`` comes from
    the sampled latent of the clean input and ``recon_ce`` from the latent mean of the box-masked input
    (``ce_mask`` marks the blanked voxels). Eval mode: ``{"recon", "mu", "logvar"}`` from the latent mean,
    no masking.

    Parameters
    ----------
    scale, patch_size, in_channels, channel_depths, activation
        As :class:`porelab.nets.vae.VAE`; default depths ``(16, 64, 256, 1024, 1024)``
        (``examples/ceVAE.yaml`` of the paper's code).
    n_boxes : (int, int)
        Inclusive range of boxes per sample (default 1-2).
    box_size : (int, int), optional
        Box edge range ``[lo, hi)`` voxels; default ``[patch_size//16, patch_size//4)``.
    fill_value : float
        Value written into the boxes (default 0).
    """

    default_depths = (16, 64, 256, 1024, 1024)

    def __init__(self, scale: float = 1.0, patch_size: int = 64, in_channels: int = 1, channel_depths=None,
                 activation: str = "leakyrelu", n_boxes=(1, 2), box_size=None, fill_value: float = 0.0):
        super().__init__(scale=scale, patch_size=patch_size, in_channels=in_channels,
                         channel_depths=channel_depths, activation=activation)
        self.n_boxes = tuple(int(v) for v in n_boxes)
        self.box_size = tuple(box_size) if box_size is not None else None
        self.fill_value = float(fill_value)

    def mask(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(masked copy of x, boolean box mask)``; ``x`` itself is left untouched."""
        m = random_box_mask(x.shape, n_boxes=self.n_boxes, size_range=self.box_size, device=x.device)
        return x.masked_fill(m, self.fill_value), m

    def forward(self, x: torch.Tensor) -> dict:
        check_input(x, self.patch_size, self.in_channels, type(self).__name__)
        out = self._run(x, sample=self.training)
        if self.training:
            x_masked, m = self.mask(x)
            out["recon_ce"] = self._run(x_masked, sample=False)["recon"]
            out["ce_mask"] = m
        return out
