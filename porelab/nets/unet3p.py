"""3-D UNet 3+: full-scale skip connections and full-scale deep supervision (Huang et al. 2020; Iuso et al. 2024).

Encoder: the UNet family's (levels 16, 32, 64, 128 at the paper's size; the last is the bottleneck).
Every decoder node at level ``i`` (from ``depth-2`` down to 0) gathers ``depth`` inputs of ``C = base``
(16) channels each:

* from every encoder level ``e ≤ i``: conv 3³ ``C[e] → C``, LeakyReLU, then average pooling by ``2**(i-e)``;
* from the bottleneck and every coarser decoder node ``l > i``: trilinear ×``2**(l-i)``, 1×1 conv ``→ C``,
  conv 3³ ``C → C``, LeakyReLU;

concatenates them (``depth·C`` = 64 channels) and applies a double conv ``64 → 64`` (LeakyReLU, Dropout3d).

Deep supervision (full-scale, every head produced at full resolution inside the network, as in the paper's
code): the bottleneck and each decoder node except the last are upsampled trilinearly to full resolution,
then 1×1 conv ``→ 1``, conv 3³ ``1 → 1``, sigmoid; the last node gets conv 3³ ``64 → 1`` and a sigmoid.
Training mode returns ``[last node, node 1, node 2, …, bottleneck]`` (all full resolution, the prediction
head first); eval mode returns the last node's map only.
1,671,752 trainable parameters at the paper's size (Table 8: 1.672 M).
"""

from __future__ import annotations

import torch
from torch import nn

from porelab.nets.blocks import (
    SLOPE,
    DoubleConv,
    SupervisedNet,
    UNetEncoder,
    conv1,
    conv3,
    down,
    kaiming_,
    up,
    widths,
    xavier_,
)


class _FromFiner(nn.Sequential):
    """conv 3³ → LeakyReLU, then average pooling by ``factor`` (encoder level → decoder node)."""

    def __init__(self, cin: int, cout: int, factor: int, slope: float):
        super().__init__(kaiming_(conv3(cin, cout), slope), nn.LeakyReLU(slope))
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return down(super().forward(x), self.factor)


class _FromCoarser(nn.Module):
    """Trilinear ×``factor``, 1×1 conv, conv 3³, LeakyReLU (bottleneck or coarser node → decoder node).

    ``cheap=True`` applies the 1×1 conv before the interpolation: the same function (the two linear maps
    commute), with ``factor³`` fewer multiply-accumulates in the 1×1 conv.
    """

    def __init__(self, cin: int, cout: int, factor: int, slope: float, cheap: bool = False):
        super().__init__()
        self.factor, self.cheap = factor, cheap
        self.proj = kaiming_(conv1(cin, cout), slope)
        self.conv = kaiming_(conv3(cout, cout), slope)
        self.act = nn.LeakyReLU(slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = up(self.proj(x), self.factor) if self.cheap else self.proj(up(x, self.factor))
        return self.act(self.conv(x))


class _UpHead(nn.Module):
    """Trilinear ×``factor``, 1×1 conv ``cin → 1``, conv 3³ ``1 → 1``, sigmoid (``cheap`` as above)."""

    def __init__(self, cin: int, factor: int, cheap: bool = False):
        super().__init__()
        self.factor, self.cheap = factor, cheap
        self.proj = xavier_(conv1(cin, 1))
        self.conv = xavier_(conv3(1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = up(self.proj(x), self.factor) if self.cheap else self.proj(up(x, self.factor))
        return torch.sigmoid(self.conv(x))


class UNet3Plus(SupervisedNet):
    """3-D UNet 3+ returning pore probabilities (a list of full-resolution maps in training mode).

    Parameters
    ----------
    scale, in_channels, depth, base, dropout, slope
        As for :class:`porelab.nets.unet.UNet`; ``base·scale`` is also the width of each full-scale skip.
    deep_supervision : bool
        Build the heads on the bottleneck and the inner decoder nodes and return all outputs in training
        mode (default True).
    cheap_upsample : bool
        Apply each 1×1 conv before (instead of after) the trilinear interpolation it follows. Mathematically
        the same network, fewer MACs and less memory; False (default) keeps the paper's order, whose cost
        Table 8 reports.
    """

    def __init__(self, scale: float = 1.0, in_channels: int = 1, depth: int = 4, base: int = 16,
                 dropout: float = 0.1, deep_supervision: bool = True, slope: float = SLOPE,
                 cheap_upsample: bool = False):
        super().__init__()
        self.deep_supervision = bool(deep_supervision)
        self.depth = depth
        self.widths = w = widths(base, depth, scale)
        cat = w[0]
        node = depth * cat
        self.encoder = UNetEncoder(in_channels, w, dropout, slope)
        self.inputs = nn.ModuleDict()
        self.nodes = nn.ModuleDict()
        for i in range(depth - 2, -1, -1):
            for e in range(i + 1):
                self.inputs[f"{i}_enc{e}"] = _FromFiner(w[e], cat, 2 ** (i - e), slope)
            for lvl in range(i + 1, depth):
                cin = w[-1] if lvl == depth - 1 else node
                self.inputs[f"{i}_dec{lvl}"] = _FromCoarser(cin, cat, 2 ** (lvl - i), slope, cheap_upsample)
            self.nodes[str(i)] = DoubleConv(node, node, dropout, slope)
        self.head = nn.Sequential(xavier_(conv3(node, 1)), nn.Sigmoid())
        if deep_supervision:  # finest first: decoder levels 1 .. depth-2, then the bottleneck
            self.side = nn.ModuleList(
                [_UpHead(node, 2**lvl, cheap_upsample) for lvl in range(1, depth - 1)]
                + [_UpHead(w[-1], 2 ** (depth - 1), cheap_upsample)])
        else:
            self.side = nn.ModuleList()
        self._multiple = 2 ** (depth - 1)

    def forward(self, x: torch.Tensor):
        self._check_input(x, self._multiple)
        enc = self.encoder(x)
        dec = {self.depth - 1: enc[-1]}  # level -> map; the bottleneck acts as the coarsest "decoder" map
        for i in range(self.depth - 2, -1, -1):
            parts = [self.inputs[f"{i}_enc{e}"](enc[e]) for e in range(i + 1)]
            parts += [self.inputs[f"{i}_dec{lvl}"](dec[lvl]) for lvl in range(i + 1, self.depth)]
            dec[i] = self.nodes[str(i)](torch.cat(parts, dim=1))
        outs = [self.head(dec[0])]
        if self._want_all():
            outs += [head(dec[lvl]) for head, lvl in zip(self.side, range(1, self.depth))]
        return self._select(outs)
