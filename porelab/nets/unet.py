"""3-D UNet, the baseline of Iuso et al. (2024) (Ronneberger et al. 2015, extended to 3-D; no deep supervision).

Layer structure at the paper's size (``depth=4, base=16``, 64³ input):

* encoder: 4 :class:`~porelab.nets.blocks.DoubleConv` levels 1→16→32→64→128, average pooling between them
  (bottleneck 128 channels at 8³);
* decoder: 3 steps (trilinear ×2 + 1×1 conv, concatenation with the skip, double conv) 128→64→32→16;
* head: 1×1×1 conv 16→1 (Xavier-uniform) and a sigmoid.

1,325,297 trainable parameters (Table 8: 1.325 M).
"""

from __future__ import annotations

import torch
from torch import nn

from porelab.errors import ConfigError
from porelab.nets.blocks import SLOPE, SupervisedNet, UNetDecoder, UNetEncoder, conv1, widths, xavier_


class UNet(SupervisedNet):
    """3-D UNet returning a voxel-wise pore probability.

    Parameters
    ----------
    scale : float
        Width multiplier (1.0 = the paper's widths 16, 32, 64, 128).
    in_channels : int
        Input channels (1 for a CT patch).
    depth : int
        Number of resolution levels (4 = three poolings). Spatial sizes must be divisible by
        ``2**(depth-1)``; the package contract asks for multiples of 16.
    base : int
        Width of the first level at ``scale=1``.
    dropout : float
        Dropout3d probability at the end of every double conv (0.1 in the paper's configuration).
    deep_supervision : bool
        Must be False: UNet is the paper's non-deeply-supervised baseline.
    slope : float
        LeakyReLU negative slope.

    Examples
    --------
    >>> import torch
    >>> net = UNet(scale=0.125).eval()
    >>> net(torch.rand(1, 1, 16, 16, 16)).shape
    torch.Size([1, 1, 16, 16, 16])
    """

    def __init__(self, scale: float = 1.0, in_channels: int = 1, depth: int = 4, base: int = 16,
                 dropout: float = 0.1, deep_supervision: bool = False, slope: float = SLOPE):
        super().__init__()
        if deep_supervision:
            raise ConfigError("unet has no deep supervision; use mssunet, unetpp, unet3p or accunet")
        self.deep_supervision = False
        self.widths = widths(base, depth, scale)
        self.encoder = UNetEncoder(in_channels, self.widths, dropout, slope)
        self.decoder = UNetDecoder(self.widths, dropout, slope)
        self.head = nn.Sequential(xavier_(conv1(self.widths[0], 1)), nn.Sigmoid())
        self._multiple = 2 ** (depth - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x, self._multiple)
        return self.head(self.decoder(self.encoder(x))[0])
