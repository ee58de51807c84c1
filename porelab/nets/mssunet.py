"""3-D MSS-UNet: UNet with multi-scale supervision of the decoder (Zhao et al. 2020; Iuso et al. 2024).

Same encoder and decoder as :class:`porelab.nets.unet.UNet`. Differences:

* final head: conv 3³ 16→1 (replicate padding) and a sigmoid (instead of UNet's 1×1 conv);
* side exits (deep supervision) on every decoder output except the finest, *at that output's own
  resolution*: with depth 4, on the 64-channel map at 1/4 resolution (16³ for a 64³ patch) and the
  32-channel map at 1/2 resolution (32³); each exit is :class:`~porelab.nets.blocks.SideHead`
  (conv 3³ C→1, LeakyReLU, conv 3³ 1→1, sigmoid), without dropout.

Training mode returns ``[full, 1/2, 1/4]`` resolution maps (finest first); eval mode the full-resolution map.
1,328,363 trainable parameters at the paper's size (Table 8: 1.328 M).
"""

from __future__ import annotations

import torch
from torch import nn

from porelab.nets.blocks import (
    SLOPE,
    SideHead,
    SupervisedNet,
    UNetDecoder,
    UNetEncoder,
    conv3,
    widths,
    xavier_,
)


class MSSUNet(SupervisedNet):
    """3-D MSS-UNet returning pore probabilities (a list in training mode when deeply supervised).

    Parameters
    ----------
    scale, in_channels, depth, base, dropout, slope
        As for :class:`porelab.nets.unet.UNet`.
    deep_supervision : bool
        Build the side exits and return all outputs in training mode (default True). When False the net
        is a UNet with a 3³ head and always returns one tensor.
    """

    def __init__(self, scale: float = 1.0, in_channels: int = 1, depth: int = 4, base: int = 16,
                 dropout: float = 0.1, deep_supervision: bool = True, slope: float = SLOPE):
        super().__init__()
        self.deep_supervision = bool(deep_supervision)
        self.widths = w = widths(base, depth, scale)
        self.encoder = UNetEncoder(in_channels, w, dropout, slope)
        self.decoder = UNetDecoder(w, dropout, slope)
        self.head = nn.Sequential(xavier_(conv3(w[0], 1)), nn.Sigmoid())
        # side exits on decoder outputs at levels 1 .. depth-2 (finest first)
        self.side = nn.ModuleList(SideHead(w[i], slope) for i in range(1, depth - 1)) if deep_supervision \
            else nn.ModuleList()
        self._multiple = 2 ** (depth - 1)

    def forward(self, x: torch.Tensor):
        self._check_input(x, self._multiple)
        dec = self.decoder(self.encoder(x))
        outs = [self.head(dec[0])]
        if self._want_all():
            outs += [head(d) for head, d in zip(self.side, dec[1:])]
        return self._select(outs)
