"""Inference-only forward passes: the same function as the eager net, computed faster on the CPU.

``optimize_for_inference(net, device)`` returns a copy of a trained net (``eval`` mode) rewritten for
inference; ``PoreModel.predict/reconstruct`` run it (through ``cached_inference_net``) as the patch function
of ``porelab.patches.predict_volume``. The output equals the eager forward within float32 rounding (a few
1e-7 on the nets' [0, 1] outputs; checked on an example patch before use: a larger difference or any
exception falls back to the eager net with a ``RuntimeWarning``). Written here because neither TorchScript
nor ``torch.compile`` gave a gain (below). What it does on the CPU, measured one thread, UNet scale 0.25,
32³ patches, batch 4, ms per patch (eager ≈ 14-18 on this shared machine; each step cumulative):

* ``channels_last_3d`` weights and activations: oneDNN runs the 3³ convolutions without reordering their
  inputs and outputs (→ 9.4-10.4);
* 1×1×1 convolutions as one ``F.linear`` over the channel axis of the channels-last view (PyTorch sends them
  to ``slow_conv3d`` plus a layout copy); ``UpConv``'s upsample-then-1×1-conv reordered to
  1×1-conv-then-upsample (the two linear maps commute exactly: trilinear weights sum to 1, so the bias
  commutes too; UNet 3+ has this as its own ``cheap`` flag); replicate padding by slice copies
  (``F.pad``'s channels-last kernel is 3-6× slower) (→ 9.1-9.9);
* padded inputs in one reusable per-thread buffer (a fresh 5 MB tensor costs ≈ 2 ms of page faults), the
  decoder's ``cat([up, skip])`` written straight into that padded buffer, a separable ×2 trilinear
  upsampling and a 2×2×2 average pooling that keep the channels-last layout (PyTorch's are not vectorised
  below 8 channels / return the default layout), in-place activations after convolutions (→ 7.8-8.1);
* eval-mode BatchNorm folded into the preceding convolution (ACC-UNet; exact within 6e-8, no measurable
  gain). At the paper's size (UNet scale 1, 64³ patches): 740-910 → 400-445 ms per patch;
* VAE decoders: kernel = stride transposed convolutions as one GEMM plus a block reshuffle, 1 → 1 channel
  3³ convolutions as 27 shifted multiply-adds (oneDNN is slow for both; see the two classes). VAE 0.25
  whole-scan benchmark: 1.15× → 1.55× TorchIO.

What did not help (same setting): ``torch.jit.freeze`` (16 ms, as eager), ``torch.jit.optimize_for_inference``
(20 ms: blocked oneDNN tensors pad the 4-channel maps to 8), ``torch.compile`` (inductor; 13 ms, 10 ms with
``freezing``, i.e. not faster than channels-last eager, after 40-50 s of compilation: longer than the whole
128·256·256 benchmark scan takes); batches above 4 (8: −8 %, 16: −10 % at 32³; flat at 64³). Batch 1 is
2-3× slower per patch than batch 2 in both eager and optimised forms.

On CUDA none of these CPU tricks is applied (cuDNN chooses its own layouts): the net is returned as is.
"""

from __future__ import annotations

import copy
import itertools
import threading
import warnings
import weakref

import torch
import torch.nn.functional as F
from torch import nn

CL = torch.channels_last_3d

#: nets (class names) for which the channels-last layout measured no gain (32³ patches, scale 0.25, batch 4,
#: one thread, ms per patch, eager → channels-last, repeated runs): VAE 2.77 → 2.78, CeVAE 3.66 → 4.17,
#: VQVAE 3.17 → 3.01 (cost dominated by the strided encoder and the dense latent), ACC-UNet 115/144/109 →
#: 119/130/135 (BatchNorm, squeeze-excitation and channel interleaving). They keep the default layout (and
#: the eager rounding). Gains elsewhere: UNet 17 → 9.4, MSS-UNet 19 → 11, UNet++ 41 → 25, UNet 3+ 56 → 38,
#: GMVAE 52 → 38, RV-VAE 8.2 → 7.7.
NO_CHANNELS_LAST = ("VAE", "CeVAE", "VQVAE", "ACCUNet")


# --------------------------------------------------------------------------------------------------------------
# rewritten modules
# --------------------------------------------------------------------------------------------------------------
def _is_channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 5 and x.is_contiguous(memory_format=CL) and not x.is_contiguous()


class PointwiseConv3d(nn.Conv3d):
    """A 1×1×1 ``nn.Conv3d`` (stride 1, groups 1) computed as ``F.linear`` over the channel axis.

    On a channels-last input the permuted view is contiguous, so this is a single GEMM with no copy, and the
    result comes back channels-last. Other layouts use ``nn.Conv3d`` unchanged. Installed by changing the
    class of an existing conv (:meth:`convert`), so its parameters and attributes stay where they were.
    """

    @staticmethod
    def applies_to(m: nn.Module) -> bool:
        return (type(m) is nn.Conv3d and tuple(m.kernel_size) == (1, 1, 1) and tuple(m.stride) == (1, 1, 1)
                and tuple(m.padding) == (0, 0, 0) and tuple(m.dilation) == (1, 1, 1) and m.groups == 1)

    @classmethod
    def convert(cls, conv: nn.Conv3d) -> nn.Conv3d:
        conv.__class__ = cls
        return conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _is_channels_last(x):
            w = self.weight.reshape(self.out_channels, self.in_channels)
            return F.linear(x.permute(0, 2, 3, 4, 1), w, self.bias).permute(0, 4, 1, 2, 3)
        return super().forward(x)


class Scratch(threading.local):
    """A reusable flat buffer per thread (``buf``), for padded copies that live only until the next conv.

    Measured: a freshly allocated 5 MB padded tensor costs ≈ 2 ms in page faults (glibc hands out new
    ``mmap`` pages for large blocks), ten times the copy itself; reusing one buffer for all padded inputs of
    a net (they are consumed by the conv before the next one is made) saves that. One buffer per thread, so
    concurrent calls from several threads stay correct."""

    buf: torch.Tensor | None = None

    def take(self, shape, channels_last: bool, like: torch.Tensor) -> torch.Tensor:
        n = 1
        for v in shape:
            n *= int(v)
        buf = self.buf
        if buf is None or buf.numel() < n or buf.dtype != like.dtype or buf.device != like.device:
            buf = self.buf = torch.empty(n, dtype=like.dtype, device=like.device)
        b, c, d, h, w = shape
        if channels_last:
            return buf[:n].view(b, d, h, w, c).permute(0, 4, 1, 2, 3)
        return buf[:n].view(b, c, d, h, w)


class BlockConvTranspose3d(nn.ConvTranspose3d):
    """A ``ConvTranspose3d`` whose kernel equals its stride (no overlap: every input voxel writes its own
    k³ block) computed as one GEMM ``(voxels, C_in) × (C_in, C_out·k³)`` and a reshuffle into blocks. The
    same sums as PyTorch's kernel; measured (4, 8, 16³) → 1 channel, one thread: 0.7 ms vs 6.4 ms
    (``slow_conv_transpose3d``). Used for outputs of ≤ 4 channels only: with many channels PyTorch's kernel
    is as fast or faster (measured GMVAE 0.25, C → C transposed convs: 44-45 vs 50-56 ms per patch)."""

    @staticmethod
    def applies_to(m: nn.Module) -> bool:
        return (type(m) is nn.ConvTranspose3d and tuple(m.kernel_size) == tuple(m.stride)
                and tuple(m.padding) == (0, 0, 0) and tuple(m.output_padding) == (0, 0, 0)
                and tuple(m.dilation) == (1, 1, 1) and m.groups == 1)

    @classmethod
    def convert(cls, conv: nn.ConvTranspose3d) -> nn.ConvTranspose3d:
        conv.__class__ = cls
        return conv

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        cl = _is_channels_last(x)
        if output_size is not None or x.dim() != 5 or self.out_channels > 4:
            return super().forward(x, output_size)
        b, c, d, h, w = x.shape
        kd, kh, kw = self.kernel_size
        co = self.out_channels
        y = torch.matmul(x.permute(0, 2, 3, 4, 1), self.weight.reshape(c, co * kd * kh * kw))
        y = y.view(b, d, h, w, co, kd, kh, kw)
        if self.bias is not None:
            y = y + self.bias.view(co, 1, 1, 1)
        if cl:   # (b, d, kd, h, kh, w, kw, co): channels-last output
            return y.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, d * kd, h * kh, w * kw, co).permute(0, 4, 1, 2, 3)
        return y.permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(b, co, d * kd, h * kh, w * kw)


class SingleChannelConv3d(nn.Conv3d):
    """A 1 → 1 channel ``nn.Conv3d`` (stride 1, "same" padding) as k³ shifted multiply-adds on the padded
    input: oneDNN is very slow for a single channel (measured (4, 1, 32³), 3³, one thread: 0.95 ms vs
    1.8 ms; 5.8 ms inside the VAE forward)."""

    @staticmethod
    def applies_to(m: nn.Module) -> bool:
        k = tuple(m.kernel_size) if isinstance(m, nn.Conv3d) else ()
        return (type(m) is nn.Conv3d and m.in_channels == 1 and m.out_channels == 1 and m.groups == 1
                and tuple(m.stride) == (1, 1, 1) and tuple(m.dilation) == (1, 1, 1)
                and isinstance(m.padding, tuple) and all(kk % 2 == 1 for kk in k)
                and tuple(m.padding) == tuple(kk // 2 for kk in k)
                and m.padding_mode in ("zeros", "replicate"))

    @classmethod
    def convert(cls, conv: nn.Conv3d) -> nn.Conv3d:
        conv.__class__ = cls
        return conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != 1:
            return super().forward(x)
        pd, ph, pw = self.padding
        if self.padding_mode == "replicate":
            xp = pad_replicate(x.contiguous(), self.padding)
        else:
            xp = F.pad(x.contiguous(), (pw, pw, ph, ph, pd, pd))
        b, _, d, h, w = x.shape
        kd, kh, kw = self.kernel_size
        taps = self.weight.reshape(-1).tolist()
        out = torch.empty((b, 1, d, h, w), dtype=x.dtype, device=x.device)
        out.fill_(float(self.bias[0]) if self.bias is not None else 0.0)
        t = 0
        for i in range(kd):
            for j in range(kh):
                for k in range(kw):
                    out.add_(xp[:, :, i:i + d, j:j + h, k:k + w], alpha=taps[t])
                    t += 1
        return out


def pad_replicate(x: torch.Tensor, pad: tuple[int, int, int], scratch: Scratch | None = None) -> torch.Tensor:
    """``F.pad(x, …, mode="replicate")`` for a 5-D tensor, padding (d, h, w) voxels on both sides, keeping
    ``x``'s memory format. Measured: PyTorch's ``replication_pad3d`` takes 1.0-1.2 ms on a channels-last
    (4, 8, 32, 32, 32) tensor, these slice copies 0.2-0.3 ms (0.4 vs 0.55 ms in the default layout, where
    this function is not used). With ``scratch`` the result is a view of that reusable buffer (valid until
    the next call with the same scratch)."""
    pd, ph, pw = pad
    b, c, d, h, w = x.shape
    cl = _is_channels_last(x)
    shape = (b, c, d + 2 * pd, h + 2 * ph, w + 2 * pw)
    if scratch is not None:
        out = scratch.take(shape, cl, x)
    else:
        out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=CL if cl else torch.contiguous_format)
    out[:, :, pd:pd + d, ph:ph + h, pw:pw + w] = x
    return _fill_faces(out, pad)


def _fill_faces(out: torch.Tensor, pad: tuple[int, int, int]) -> torch.Tensor:
    """Replicate the interior's border voxels of ``out`` into its ``pad``-wide faces (in place)."""
    pd, ph, pw = pad
    d, h, w = out.shape[2] - 2 * pd, out.shape[3] - 2 * ph, out.shape[4] - 2 * pw
    inner_d, inner_h = slice(pd, pd + d), slice(ph, ph + h)
    if pw:
        out[:, :, inner_d, inner_h, :pw] = out[:, :, inner_d, inner_h, pw:pw + 1]
        out[:, :, inner_d, inner_h, pw + w:] = out[:, :, inner_d, inner_h, pw + w - 1:pw + w]
    if ph:
        out[:, :, inner_d, :ph, :] = out[:, :, inner_d, ph:ph + 1, :]
        out[:, :, inner_d, ph + h:, :] = out[:, :, inner_d, ph + h - 1:ph + h, :]
    if pd:
        out[:, :, :pd] = out[:, :, pd:pd + 1]
        out[:, :, pd + d:] = out[:, :, pd + d - 1:pd + d]
    return out


class ReplicateConv3d(nn.Conv3d):
    """An ``nn.Conv3d`` with ``padding_mode="replicate"`` whose padding runs through :func:`pad_replicate`
    on channels-last inputs (the same values as ``F.pad``; the convolution itself is unchanged). Installed
    by changing the class of an existing conv (:meth:`convert`)."""

    @staticmethod
    def applies_to(m: nn.Module) -> bool:
        return type(m) is nn.Conv3d and m.padding_mode == "replicate" and isinstance(m.padding, tuple) \
            and len(m.padding) == 3

    @classmethod
    def convert(cls, conv: nn.Conv3d) -> nn.Conv3d:
        conv.__class__ = cls
        return conv

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias):
        if _is_channels_last(x):
            xp = pad_replicate(x, self.padding, getattr(self, "scratch", None))
            return F.conv3d(xp, weight, bias, self.stride, 0, self.dilation, self.groups)
        return super()._conv_forward(x, weight, bias)


def _up2_axis(x: torch.Tensor, d: int) -> torch.Tensor:
    n = x.shape[d]
    shape = list(x.shape)
    shape[d] = 2 * n
    fmt = CL if _is_channels_last(x) else torch.contiguous_format
    out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    pairs = out.unflatten(d, (n, 2))
    even, odd = pairs.select(d + 1, 0), pairs.select(d + 1, 1)
    # output 2i = 0.75 x[i] + 0.25 x[i-1], 2i+1 = 0.75 x[i] + 0.25 x[i+1], clamped at both ends
    if n > 1:
        torch.lerp(x.narrow(d, 1, n - 1), x.narrow(d, 0, n - 1), 0.25, out=even.narrow(d, 1, n - 1))
        torch.lerp(x.narrow(d, 0, n - 1), x.narrow(d, 1, n - 1), 0.25, out=odd.narrow(d, 0, n - 1))
    even.narrow(d, 0, 1).copy_(x.narrow(d, 0, 1))
    odd.narrow(d, n - 1, 1).copy_(x.narrow(d, n - 1, 1))
    return out


def upsample2_trilinear(x: torch.Tensor) -> torch.Tensor:
    """Trilinear ×2 upsampling of a 5-D tensor (``align_corners=False``), as ``porelab.nets.blocks.up(x, 2)``
    within float rounding, computed one axis at a time (the interpolation is separable, with the fixed
    weights ¾, ¼). Measured on channels-last tensors (4, 4, 16³) → 32³, one thread: 0.9 ms vs 2.8-3.8 ms
    for ``F.interpolate``, whose channels-last kernel is not vectorised below 8 channels."""
    for d in (4, 3, 2):
        x = _up2_axis(x, d)
    return x


class ConvThenUp(nn.Module):
    """``up(conv1x1(x))`` in place of ``conv1x1(up(x))`` (``porelab.nets.blocks.UpConv``): the same function,
    since a 1×1×1 conv and a trilinear interpolation (weights summing to 1) commute. Channels-last ×2
    upsampling goes through :func:`upsample2_trilinear`."""

    def __init__(self, upconv: nn.Module):
        super().__init__()
        self.factor = upconv.factor
        self.conv = upconv.conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from porelab.nets.blocks import up

        y = self.conv(x)
        if self.factor == 2 and _is_channels_last(y):
            return upsample2_trilinear(y)
        return up(y, self.factor)


def avg_pool2(x: torch.Tensor) -> torch.Tensor:
    """2×2×2 average pooling (``F.avg_pool3d(x, 2)``, even sizes) that keeps the channels-last layout:
    the sum of the eight strided sub-grids, times 1/8. Measured on a channels-last (4, 4, 32³) tensor:
    0.7 ms vs 1.1 ms for ``F.avg_pool3d``, which also returns the default layout, so the next conv ran on
    mixed layouts."""
    s = x[:, :, 0::2, 0::2, 0::2] + x[:, :, 0::2, 0::2, 1::2]
    for i, j, k in ((0, 1, 0), (0, 1, 1), (1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1)):
        s += x[:, :, i::2, j::2, k::2]
    return s.mul_(0.125)


def _fast_encoder_class():
    from porelab.nets.blocks import UNetEncoder, down

    class FastUNetEncoder(UNetEncoder):
        """``UNetEncoder`` whose pooling keeps channels-last tensors channels-last (:func:`avg_pool2`)."""

        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            feats = []
            for i, level in enumerate(self.levels):
                if i:
                    even = all(s % 2 == 0 for s in x.shape[2:])
                    x = avg_pool2(x) if _is_channels_last(x) and even else down(x)
                x = level(x)
                feats.append(x)
            return feats

    return FastUNetEncoder


def _fast_upblock_class():
    from porelab.nets.blocks import UpBlock

    class FastUpBlock(UpBlock):
        """``UpBlock`` whose concatenation ``[up, skip]`` is written straight into the replicate-padded input
        of the first conv (one copy instead of a ``torch.cat`` and a padded copy of its result)."""

        def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
            a = self.up(x)
            layers = list(self.conv)
            first = layers[0] if layers else None
            if not (isinstance(first, ReplicateConv3d) and _is_channels_last(a) and _is_channels_last(skip)
                    and a.shape[2:] == skip.shape[2:] and getattr(first, "scratch", None) is not None):
                return super().forward(x, skip)
            pd, ph, pw = first.padding
            b, ca, d, h, w = a.shape
            buf = first.scratch.take((b, ca + skip.shape[1], d + 2 * pd, h + 2 * ph, w + 2 * pw), True, a)
            interior = (slice(pd, pd + d), slice(ph, ph + h), slice(pw, pw + w))
            buf[(slice(None), slice(0, ca), *interior)] = a
            buf[(slice(None), slice(ca, None), *interior)] = skip
            y = F.conv3d(_fill_faces(buf, first.padding), first.weight, first.bias, first.stride, 0,
                         first.dilation, first.groups)
            for m in layers[1:]:
                y = m(y)
            return y

    return FastUpBlock


def _inplace_activations(net: nn.Module) -> int:
    """In-place LeakyReLU/ReLU where, inside an ``nn.Sequential``, they directly follow a convolution (whose
    fresh output nothing else reads): saves a full-size allocation and its page faults per activation."""
    n = 0
    for seq in net.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        mods = list(seq)
        for prev, act in itertools.pairwise(mods):
            if isinstance(prev, (nn.Conv3d, nn.ConvTranspose3d)) and type(act) in (nn.LeakyReLU, nn.ReLU) \
                    and not act.inplace:
                act.inplace = True
                n += 1
    return n


#: (module class name in porelab.nets.accunet, [(conv attribute, BatchNorm attribute applied right after it)])
_CONV_BN_PAIRS = {
    "ConvBNSE": [("conv", "bn")],
    "HANCLayer": [("conv", "bn")],
    "HANCBlock": [("expand", "bn1"), ("depthwise", "bn2"), ("project", "bn3")],
}


def _fold_conv_bn(module: nn.Module) -> int:
    """Fold eval-mode BatchNorms into the convolution applied right before them, where ACC-UNet's forward
    is known to do ``bn(conv(x))`` (table ``_CONV_BN_PAIRS``); returns how many it folded."""
    if type(module).__module__ != "porelab.nets.accunet":
        return 0
    n = 0
    for conv_name, bn_name in _CONV_BN_PAIRS.get(type(module).__name__, []):
        conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
        if not (type(conv) is nn.Conv3d and type(bn) is nn.BatchNorm3d) or bn.training \
                or bn.running_mean is None or not bn.track_running_stats:
            continue
        setattr(module, conv_name, torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn))
        setattr(module, bn_name, nn.Identity())
        n += 1
    return n


def rewrite_for_inference(net: nn.Module, scratch: Scratch | None = None) -> dict:
    """Rewrite ``net`` (in place, eval mode) with the equivalent faster modules; returns counts per rewrite.
    ``scratch`` (default: a new one) is shared by the net's padded inputs (each is dead once its conv ran)."""
    scratch = Scratch() if scratch is None else scratch
    counts = {"upconv": 0, "cheap": 0, "pointwise": 0, "replicate_pad": 0, "bn_folded": 0, "inplace_act": 0,
              "encoder_pool": 0, "fused_cat_pad": 0, "single_channel": 0, "block_transpose": 0}
    from porelab.nets.blocks import UNetEncoder, UpBlock, UpConv

    fast_encoder, fast_upblock = _fast_encoder_class(), _fast_upblock_class()
    for parent in list(net.modules()):
        if type(parent) is UNetEncoder:
            parent.__class__ = fast_encoder
            counts["encoder_pool"] += 1
        elif type(parent) is UpBlock:
            parent.__class__ = fast_upblock
            counts["fused_cat_pad"] += 1
        if hasattr(parent, "cheap") and isinstance(parent.cheap, bool) and hasattr(parent, "proj") \
                and hasattr(parent, "factor") and not parent.cheap:
            parent.cheap = True                # UNet 3+: documented as the same function
            counts["cheap"] += 1
        counts["bn_folded"] += _fold_conv_bn(parent)
        for name, child in list(parent.named_children()):
            if type(child) is UpConv and isinstance(child.conv, nn.Conv3d):
                setattr(parent, name, ConvThenUp(child))
                counts["upconv"] += 1
    for m in list(net.modules()):
        if SingleChannelConv3d.applies_to(m):
            SingleChannelConv3d.convert(m)
            counts["single_channel"] += 1
        elif BlockConvTranspose3d.applies_to(m):
            BlockConvTranspose3d.convert(m)
            counts["block_transpose"] += 1
        elif PointwiseConv3d.applies_to(m):
            PointwiseConv3d.convert(m)
            counts["pointwise"] += 1
        elif ReplicateConv3d.applies_to(m):
            ReplicateConv3d.convert(m).scratch = scratch
            counts["replicate_pad"] += 1
    counts["inplace_act"] = _inplace_activations(net)
    return counts


# --------------------------------------------------------------------------------------------------------------
# the wrapper
# --------------------------------------------------------------------------------------------------------------
class InferenceNet(nn.Module):
    """An inference copy of a net: converts inputs to channels-last, delegates ``forward`` and
    ``reconstruct`` (unsupervised nets) to the rewritten copy. ``info`` says what was applied.

    Between calls it keeps the padded-input buffer of each thread that ran it (the largest padded input
    of one batch, e.g. 5 MB for UNet scale 0.25 at 32³ × 4, 150 MB at scale 1, 64³ × 4: memory the eager
    forward allocates anew in every call); ``release_buffers()`` frees it (the next call re-allocates).
    """

    def __init__(self, inner: nn.Module, channels_last: bool, info: dict, scratch: Scratch | None = None):
        super().__init__()
        self.inner = inner
        self.channels_last = channels_last
        self.info = info
        self.scratch = scratch

    def release_buffers(self) -> None:
        """Drop the calling thread's padded-input buffer."""
        if self.scratch is not None:
            self.scratch.buf = None

    def _in(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 5:
            return x.contiguous(memory_format=CL)
        return x

    def forward(self, x: torch.Tensor, *args, **kwargs):
        return self.inner(self._in(x), *args, **kwargs)

    @property
    def reconstruct(self):
        """The inner net's ``reconstruct`` on channels-last input (AttributeError when it has none)."""
        inner = self.inner.reconstruct
        return lambda x, *args, **kwargs: inner(self._in(x), *args, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("inner"), name)


def _weights_channels_last(net: nn.Module) -> None:
    """Give every 5-D parameter/buffer of ``net`` a channels-last tensor of its own (a new ``Parameter``:
    tensors shared with another net are never modified)."""
    for m in net.modules():
        for name, p in list(m._parameters.items()):
            if p is not None and p.dim() == 5 and not p.is_contiguous(memory_format=CL):
                m._parameters[name] = nn.Parameter(p.detach().contiguous(memory_format=CL),
                                                   requires_grad=p.requires_grad)
        for name, b in list(m._buffers.items()):
            if b is not None and b.dim() == 5 and not b.is_contiguous(memory_format=CL):
                m._buffers[name] = b.contiguous(memory_format=CL)


def _first_tensor(y):
    if isinstance(y, dict):
        return y.get("recon", next(iter(y.values())))
    if isinstance(y, (list, tuple)):
        return y[0]
    return y


def _max_diff(a, b) -> float:
    a, b = _first_tensor(a), _first_tensor(b)
    if tuple(a.shape) != tuple(b.shape):
        return float("inf")
    return float((a.float() - b.float()).abs().max())


def optimize_for_inference(net: nn.Module, device=None, *, example: torch.Tensor | None = None,
                           channels_last: bool | None = None, rewrite: bool = True, atol: float = 1e-5,
                           method: str = "forward"):
    """A faster inference copy of ``net`` (the original is left untouched), or ``net`` itself.

    Parameters
    ----------
    net : nn.Module
        A porelab net (or any module); put in eval mode.
    device : torch.device or str, optional
        The device the net runs on (default ``porelab.runtime.get_device()``). On anything but the CPU the
        net is returned unchanged (in eval mode): the tricks below are CPU-specific.
    example : torch.Tensor, optional
        An input batch ``(B, 1, D, H, W)``. When given, the optimised copy is checked against the eager net
        on it (``method``, under ``torch.inference_mode``); a difference above ``atol`` or any exception
        falls back to the eager net with a ``RuntimeWarning`` giving the reason.
    channels_last : bool, optional
        Channels-last layout; default: on unless the net's class is in ``NO_CHANNELS_LAST``.
    rewrite : bool
        The module rewrites (``rewrite_for_inference``); off for measurements.
    method : "forward" or "reconstruct"
        Which call the check compares.

    The copy shares the tensors of ``net`` that it does not rewrite (no second copy of large weights); after
    changing the weights of ``net``, make a new copy (``cached_inference_net`` does so by itself).

    Returns
    -------
    nn.Module
        An :class:`InferenceNet` (its ``info`` dict lists the rewrites and the checked difference) or, on
        fallback / non-CPU devices, ``net`` in eval mode.
    """
    from porelab.runtime import get_device

    device = get_device(device) if not hasattr(device, "type") else device
    net.eval()
    if channels_last is None:
        channels_last = type(net).__name__ not in NO_CHANNELS_LAST
    if device.type != "cpu" or not (channels_last or rewrite):
        return net
    info: dict = {"channels_last": channels_last, "rewrite": rewrite}
    scratch = Scratch()
    try:
        # the copy shares the original's weight tensors (no second copy of, e.g., GMVAE's 55 MB latent conv);
        # only what is rewritten (BN folds, channels-last 5-D weights) gets new tensors
        shared = {id(t): t for t in list(net.parameters()) + list(net.buffers())}
        fast = copy.deepcopy(net, shared).eval()
        if rewrite:
            info.update(rewrite_for_inference(fast, scratch))
        if channels_last:
            _weights_channels_last(fast)
        wrapped = InferenceNet(fast, channels_last, info, scratch)
        if example is not None:
            x = example.to(device)
            with torch.inference_mode():
                ref = _first_tensor(getattr(net, method)(x)).float().clone()
                malloc_trim()      # the eager forward's freed activations: not kept under the next forward
                got = _first_tensor(getattr(wrapped, method)(x)).float().clone()
            diff = _max_diff(ref, got)
            del ref, got
            malloc_trim()
            info["check_max_abs_diff"] = diff
            if not diff <= atol:
                return _fallback(net, f"optimised forward differs from the eager one by {diff:.3g} > {atol:g}")
    except Exception as exc:  # noqa: BLE001 - any failure of an optional speed-up means: use the eager net
        return _fallback(net, f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}")
    return wrapped


def malloc_trim() -> bool:
    """Give the C heap's free memory back to the system (glibc ``malloc_trim(0)``); False where unavailable.

    Freed activations stay in glibc's heap (PyTorch's CPU allocator does not cache, but glibc raises its
    ``mmap`` threshold after the first large ``free``, so later blocks of that size come from the heap and are
    not returned). Measured, UNet scale 0.25, one 32³ patch: the equality check's eager + optimised forwards
    leave RSS 267-298 MB, 233 MB after a trim (Python + torch baseline 223 MB); the trim takes < 1 ms.
    """
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes
            import ctypes.util

            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if not _LIBC:
        return False
    _LIBC.malloc_trim(0)
    return True


_LIBC = None


def _fallback(net: nn.Module, reason: str) -> nn.Module:
    warnings.warn(f"inference optimisation not used ({reason}); running the eager net", RuntimeWarning,
                  stacklevel=3)
    return net


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _stamp(net: nn.Module) -> tuple:
    """Identity of the current weights: in-place updates (optimiser steps, load_state_dict) bump ``_version``."""
    return tuple((t.data_ptr(), t._version) for t in list(net.parameters()) + list(net.buffers()))


def example_input(patch, device=None, batch: int = 1) -> torch.Tensor:
    """A fixed random batch ``(batch, 1, *patch)`` in [0, 1) for the equality check (own generator: the
    global RNG is left alone)."""
    p = (int(patch),) * 3 if isinstance(patch, int) else tuple(int(v) for v in patch)
    g = torch.Generator().manual_seed(0)
    x = torch.rand((batch, 1, *p), generator=g)
    return x if device is None else x.to(device)


def cached_inference_net(net: nn.Module, device=None, *, patch=None, method: str = "forward", **kwargs):
    """``optimize_for_inference`` once per (net, device, weights, patch): repeated ``predict`` calls on the
    same model reuse the optimised copy; changed weights (in-place updates bump ``_version``) rebuild it.
    ``patch`` (int or 3 ints) gives the example batch that the copy is checked on."""
    from porelab.runtime import get_device

    device = get_device(device) if not hasattr(device, "type") else device
    if device.type != "cpu":
        return net.eval()
    if not hasattr(net, method):
        method = "forward"
    key = (str(device), _stamp(net), repr(patch), method, repr(sorted(kwargs.items())))
    hit = _CACHE.get(net)
    if hit is not None and hit[0] == key:
        return net.eval() if hit[1] is None else hit[1]
    example = example_input(patch, device) if patch is not None else None
    fast = optimize_for_inference(net, device, example=example, method=method, **kwargs)
    _CACHE[net] = (key, None if fast is net else fast)    # never hold the key strongly
    return fast


__all__ = [
    "NO_CHANNELS_LAST",
    "BlockConvTranspose3d",
    "ConvThenUp",
    "InferenceNet",
    "PointwiseConv3d",
    "ReplicateConv3d",
    "Scratch",
    "SingleChannelConv3d",
    "avg_pool2",
    "cached_inference_net",
    "example_input",
    "malloc_trim",
    "optimize_for_inference",
    "pad_replicate",
    "rewrite_for_inference",
    "upsample2_trilinear",
]
