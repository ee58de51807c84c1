"""Building blocks shared by the supervised 3-D networks (UNet family and ACC-UNet).

The UNet family of Iuso et al. (2024) (UNet, MSS-UNet, UNet++, UNet 3+) is built from the same pieces so
that the architectures differ only in how they connect them (paper §3.2):

* :class:`DoubleConv`: conv 3³ → LeakyReLU → conv 3³ → LeakyReLU → Dropout3d, replicate padding, with bias,
  Kaiming-normal initialisation, no normalisation layer (ACC-UNet, built on its own blocks, uses BatchNorm).
* downsampling by average pooling (:func:`down`), upsampling by trilinear ×2 interpolation followed by a
  1×1×1 convolution (:class:`UpConv`).
* :class:`SideHead`: a deep-supervision exit conv 3³ C→1 → LeakyReLU → conv 3³ 1→1 → sigmoid.

:class:`SupervisedNet` implements the forward contract of :mod:`porelab.nets` (list of probability maps,
finest first, in training mode when deeply supervised; the finest map alone otherwise).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from porelab.errors import ConfigError

#: LeakyReLU negative slope used by every supervised net (PyTorch's default, as in the paper's code).
SLOPE = 0.01


def widths(base: int, depth: int, scale: float, minimum: int = 2) -> list[int]:
    """Channel widths per level: ``round(base · 2**i · scale)``, at least ``minimum``.

    ``widths(16, 4, 1.0) == [16, 32, 64, 128]`` (the paper's depth 4, wf 4 configuration).
    """
    if depth < 2:
        raise ConfigError(f"depth must be >= 2, got {depth}")
    if not scale > 0:
        raise ConfigError(f"scale must be > 0, got {scale}")
    return [max(minimum, round(base * 2**i * scale)) for i in range(depth)]


def kaiming_(conv: nn.Module, slope: float = SLOPE) -> nn.Module:
    """Kaiming-normal weights (for a LeakyReLU of ``slope``) and zero bias; returns ``conv``."""
    nn.init.kaiming_normal_(conv.weight, a=slope, nonlinearity="leaky_relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def xavier_(conv: nn.Module) -> nn.Module:
    """Xavier-uniform weights and zero bias (layers that feed a sigmoid); returns ``conv``."""
    nn.init.xavier_uniform_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def conv3(cin: int, cout: int, padding_mode: str = "replicate") -> nn.Conv3d:
    """3×3×3 convolution, stride 1, padding 1 (replicate by default), with bias."""
    return nn.Conv3d(cin, cout, kernel_size=3, padding=1, padding_mode=padding_mode, bias=True)


def conv1(cin: int, cout: int) -> nn.Conv3d:
    """1×1×1 convolution with bias."""
    return nn.Conv3d(cin, cout, kernel_size=1, bias=True)


def down(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Average pooling by ``factor`` in every spatial dimension (the UNet family's downsampling)."""
    return x if factor == 1 else F.avg_pool3d(x, factor)


def up(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Trilinear interpolation by ``factor`` (``align_corners=False``)."""
    if factor == 1:
        return x
    return F.interpolate(x, scale_factor=factor, mode="trilinear", align_corners=False)


class DoubleConv(nn.Sequential):
    """conv 3³ → LeakyReLU → conv 3³ → LeakyReLU → Dropout3d(p) (dropout omitted when p = 0).

    Parameters: ``27·cin·cout + cout + 27·cout² + cout``.
    """

    def __init__(self, cin: int, cout: int, dropout: float = 0.1, slope: float = SLOPE):
        layers = [kaiming_(conv3(cin, cout), slope), nn.LeakyReLU(slope),
                  kaiming_(conv3(cout, cout), slope), nn.LeakyReLU(slope)]
        if dropout > 0:
            layers.append(nn.Dropout3d(dropout))
        super().__init__(*layers)


class UpConv(nn.Module):
    """Trilinear upsampling by ``factor`` followed by a 1×1×1 convolution ``cin → cout``.

    The order (interpolate first, then convolve) is the paper's; the two operations commute exactly, so the
    order only changes the cost (MACs), not the result.
    """

    def __init__(self, cin: int, cout: int, factor: int = 2, slope: float = SLOPE):
        super().__init__()
        self.factor = factor
        self.conv = kaiming_(conv1(cin, cout), slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(up(x, self.factor))


class SideHead(nn.Sequential):
    """Deep-supervision exit: conv 3³ ``cin → 1`` → LeakyReLU → conv 3³ ``1 → 1`` → sigmoid.

    Used by MSS-UNet (at the decoder's own resolution) and UNet++ (on the nested full-resolution nodes).
    Parameters: ``27·cin + 1 + 28``.
    """

    def __init__(self, cin: int, slope: float = SLOPE):
        super().__init__(kaiming_(conv3(cin, 1), slope), nn.LeakyReLU(slope), xavier_(conv3(1, 1)),
                         nn.Sigmoid())


class SupervisedNet(nn.Module):
    """Base class of the supervised nets: the forward contract of :mod:`porelab.nets`.

    Subclasses implement ``_heads(x) -> list[Tensor]`` (probability maps, finest first; when
    ``self._want_all()`` is false only the first element is required).
    """

    deep_supervision: bool = False

    @staticmethod
    def _check_input(x: torch.Tensor, multiple: int) -> None:
        if x.dim() != 5:
            raise ConfigError(f"expected a network input (B, C, D, H, W), got shape {tuple(x.shape)}")
        bad = [s for s in x.shape[2:] if s % multiple]
        if bad:
            raise ConfigError(f"patch size {tuple(x.shape[2:])}: every spatial size must be divisible by {multiple}")

    def _want_all(self) -> bool:
        return self.deep_supervision and self.training

    def _select(self, outputs: list[torch.Tensor]):
        return outputs if self._want_all() else outputs[0]

    def n_parameters(self) -> int:
        """Number of trainable parameters (how Table 8 of Iuso et al. 2024 counts)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


class UNetEncoder(nn.Module):
    """The UNet family's encoder: ``len(widths)`` double-conv levels with average pooling between them.

    ``forward`` returns the feature map of every level, finest first (the last is the bottleneck).
    """

    def __init__(self, in_channels: int, widths: list[int], dropout: float, slope: float = SLOPE):
        super().__init__()
        chans = [in_channels] + list(widths)
        self.levels = nn.ModuleList(DoubleConv(chans[i], chans[i + 1], dropout, slope)
                                    for i in range(len(widths)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, level in enumerate(self.levels):
            x = level(x if i == 0 else down(x))
            feats.append(x)
        return feats


class UpBlock(nn.Module):
    """UNet decoder step: :class:`UpConv` ``cin → cout``, concatenate ``[up, skip]``, :class:`DoubleConv`."""

    def __init__(self, cin: int, cout: int, dropout: float, slope: float = SLOPE):
        super().__init__()
        self.up = UpConv(cin, cout, 2, slope)
        self.conv = DoubleConv(2 * cout, cout, dropout, slope)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class UNetDecoder(nn.Module):
    """The plain UNet decoder; ``forward(feats)`` returns the decoder outputs, finest first."""

    def __init__(self, widths: list[int], dropout: float, slope: float = SLOPE):
        super().__init__()
        self.blocks = nn.ModuleList(UpBlock(widths[i + 1], widths[i], dropout, slope)
                                    for i in reversed(range(len(widths) - 1)))

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        x = feats[-1]
        outs = []
        for block, skip in zip(self.blocks, reversed(feats[:-1])):
            x = block(x, skip)
            outs.append(x)
        return outs[::-1]
