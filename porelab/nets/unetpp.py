"""3-D UNet++: nested, dense skip connections with deep supervision (Zhou et al. 2018; Iuso et al. 2024).

Nodes ``X[i][j]`` (level ``i``, column ``j``): ``X[i][0]`` is the UNet-family encoder; for ``j ≥ 1``

    X[i][j] = DoubleConv( cat[ UpConv(X[i+1][j-1]), X[i][0], …, X[i][j-1] ] )

with :class:`~porelab.nets.blocks.UpConv` (trilinear ×2 + 1×1 conv ``C[i+1] → C[i]``) and a double conv
``(j+1)·C[i] → C[i]`` (LeakyReLU, Dropout3d). With depth 4 the nested nodes are X01, X02, X03, X11, X12, X21.

Deep supervision: one :class:`~porelab.nets.blocks.SideHead` (conv 3³ 16→1, LeakyReLU, conv 3³ 1→1,
sigmoid) on each of X01, X02, X03, all at full resolution. Training mode returns ``[X03, X02, X01]`` heads
(the deepest path, used for prediction, first); eval mode returns the X03 head only.
1,502,727 trainable parameters at the paper's size (Table 8: 1.503 M).
"""

from __future__ import annotations

import torch
from torch import nn

from porelab.nets.blocks import SLOPE, DoubleConv, SideHead, SupervisedNet, UNetEncoder, UpConv, widths


class UNetPlusPlus(SupervisedNet):
    """3-D UNet++ returning pore probabilities (a list of full-resolution maps in training mode).

    Parameters
    ----------
    scale, in_channels, depth, base, dropout, slope
        As for :class:`porelab.nets.unet.UNet`.
    deep_supervision : bool
        Build heads on X01 … X0(depth-1) and return them all in training mode (default True); when False
        only the X0(depth-1) head exists.
    """

    def __init__(self, scale: float = 1.0, in_channels: int = 1, depth: int = 4, base: int = 16,
                 dropout: float = 0.1, deep_supervision: bool = True, slope: float = SLOPE):
        super().__init__()
        self.deep_supervision = bool(deep_supervision)
        self.depth = depth
        self.widths = w = widths(base, depth, scale)
        self.encoder = UNetEncoder(in_channels, w, dropout, slope)
        # nodes["i_j"] for j >= 1, i + j <= depth - 1
        self.ups = nn.ModuleDict()
        self.nodes = nn.ModuleDict()
        for j in range(1, depth):
            for i in range(depth - j):
                self.ups[f"{i}_{j}"] = UpConv(w[i + 1], w[i], 2, slope)
                self.nodes[f"{i}_{j}"] = DoubleConv((j + 1) * w[i], w[i], dropout, slope)
        # heads on X0j, stored finest (j = depth-1) first
        cols = range(depth - 1, 0, -1) if deep_supervision else [depth - 1]
        self.head_cols = list(cols)
        self.heads = nn.ModuleList(SideHead(w[0], slope) for _ in self.head_cols)
        self._multiple = 2 ** (depth - 1)

    def forward(self, x: torch.Tensor):
        self._check_input(x, self._multiple)
        grid = [[f] for f in self.encoder(x)]  # grid[i][j] = X[i][j]
        for j in range(1, self.depth):
            for i in range(self.depth - j):
                key = f"{i}_{j}"
                grid[i].append(self.nodes[key](torch.cat([self.ups[key](grid[i + 1][j - 1])] + grid[i][:j],
                                                         dim=1)))
        n = len(self.heads) if self._want_all() else 1
        outs = [self.heads[k](grid[0][self.head_cols[k]]) for k in range(n)]
        return self._select(outs)
