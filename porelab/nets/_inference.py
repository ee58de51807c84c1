"""Inference-only rewrites of porelab's own blocks, registered for ``porelab.inference.rewrite_for_inference``.

``BLOCK_REWRITES`` maps a block class to a rule that makes the block compute the same function faster on the
CPU (a subclass installed by changing the object's class, a replacement module, a BatchNorm folded into its
convolution, or a flag documented as the same function); ``channels_last_helps`` says for which nets the
channels-last layout pays. ``porelab.inference`` applies them without knowing the nets; the generic
convolution rewrites live there. Measured gains: ``docs/experiments.md``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from porelab.inference.fast import (
    ReplicateConv3d,
    avg_pool2,
    fill_faces,
    fold_conv_bn,
    is_channels_last,
    upsample2_trilinear,
)
from porelab.nets.accunet import ConvBNSE, HANCBlock, HANCLayer
from porelab.nets.blocks import UNetEncoder, UpBlock, UpConv, down, up
from porelab.nets.unet3p import _FromCoarser, _UpHead

#: nets (class names) that keep the default layout: channels-last measured no gain for them (their cost is
#: in strided encoders, dense latents, BatchNorm, squeeze-excitation or channel interleaving).
NO_CHANNELS_LAST = ("VAE", "CeVAE", "VQVAE", "ACCUNet")

#: the counters the rules below add to (``rewrite_for_inference``'s ``info``)
COUNT_KEYS = ("upconv", "cheap", "bn_folded", "encoder_pool", "fused_cat_pad")


def channels_last_helps(net: nn.Module) -> bool:
    """Whether ``net`` runs faster in the channels-last layout (every net not in ``NO_CHANNELS_LAST``)."""
    return type(net).__name__ not in NO_CHANNELS_LAST


class ConvThenUp(nn.Module):
    """``up(conv1x1(x))`` in place of ``conv1x1(up(x))`` (:class:`~porelab.nets.blocks.UpConv`): the same
    function, since a 1×1×1 conv and a trilinear interpolation (weights summing to 1) commute, on factor³ fewer
    voxels. Channels-last ×2 upsampling goes through :func:`~porelab.inference.fast.upsample2_trilinear`."""

    def __init__(self, upconv: nn.Module):
        super().__init__()
        self.factor = upconv.factor
        self.conv = upconv.conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.factor == 2 and is_channels_last(y):
            return upsample2_trilinear(y)
        return up(y, self.factor)


class FastUNetEncoder(UNetEncoder):
    """``UNetEncoder`` whose pooling keeps channels-last tensors channels-last (``avg_pool2``)."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, level in enumerate(self.levels):
            if i:
                even = all(s % 2 == 0 for s in x.shape[2:])
                x = avg_pool2(x) if is_channels_last(x) and even else down(x)
            x = level(x)
            feats.append(x)
        return feats


class FastUpBlock(UpBlock):
    """``UpBlock`` whose concatenation ``[up, skip]`` is written straight into the replicate-padded input
    of the first conv (one copy instead of a ``torch.cat`` and a padded copy of its result)."""

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        a = self.up(x)
        layers = list(self.conv)
        first = layers[0] if layers else None
        if not (isinstance(first, ReplicateConv3d) and is_channels_last(a) and is_channels_last(skip)
                and a.shape[2:] == skip.shape[2:] and getattr(first, "scratch", None) is not None):
            return super().forward(x, skip)
        pd, ph, pw = first.padding
        b, ca, d, h, w = a.shape
        buf = first.scratch.take((b, ca + skip.shape[1], d + 2 * pd, h + 2 * ph, w + 2 * pw), True, a)
        interior = (slice(pd, pd + d), slice(ph, ph + h), slice(pw, pw + w))
        buf[(slice(None), slice(0, ca), *interior)] = a
        buf[(slice(None), slice(ca, None), *interior)] = skip
        y = F.conv3d(fill_faces(buf, first.padding), first.weight, first.bias, first.stride, 0,
                     first.dilation, first.groups)
        for m in layers[1:]:
            y = m(y)
        return y


def _swap_class(fast_class: type, key: str) -> Callable:
    def rule(module: nn.Module, counts: dict) -> None:
        module.__class__ = fast_class
        counts[key] += 1

    return rule


def _conv_then_up(module: nn.Module, counts: dict) -> nn.Module | None:
    if not isinstance(module.conv, nn.Conv3d):
        return None
    counts["upconv"] += 1
    return ConvThenUp(module)


def _cheap(module: nn.Module, counts: dict) -> None:
    """UNet 3+'s ``cheap`` order (1×1 conv before the upsampling) is documented as the same function."""
    if not module.cheap:
        module.cheap = True
        counts["cheap"] += 1


def _fold(pairs: list[tuple[str, str]]) -> Callable:
    def rule(module: nn.Module, counts: dict) -> None:
        counts["bn_folded"] += fold_conv_bn(module, pairs)

    return rule


#: block class -> rule(block, counts) that rewrites it in place (returns None) or returns its replacement.
#: ACC-UNet's rules list (conv attribute, BatchNorm attribute) pairs whose forward computes ``bn(conv(x))``.
BLOCK_REWRITES: dict[type, Callable[[nn.Module, dict], nn.Module | None]] = {
    UNetEncoder: _swap_class(FastUNetEncoder, "encoder_pool"),
    UpBlock: _swap_class(FastUpBlock, "fused_cat_pad"),
    UpConv: _conv_then_up,
    _FromCoarser: _cheap,
    _UpHead: _cheap,
    ConvBNSE: _fold([("conv", "bn")]),
    HANCLayer: _fold([("conv", "bn")]),
    HANCBlock: _fold([("expand", "bn1"), ("depthwise", "bn2"), ("project", "bn3")]),
}

__all__ = [
    "BLOCK_REWRITES",
    "COUNT_KEYS",
    "NO_CHANNELS_LAST",
    "ConvThenUp",
    "FastUNetEncoder",
    "FastUpBlock",
    "channels_last_helps",
]
