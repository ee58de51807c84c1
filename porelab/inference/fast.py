"""Inference-only forward passes: the same function as the eager net, computed faster on the CPU.

``optimize_for_inference(net, device)`` returns a copy of a trained net (``eval`` mode) rewritten for
inference; ``PoreModel.predict/reconstruct`` run it (through ``cached_inference_net``) as the patch function
of ``predict_volume``. The output equals the eager forward within float32 rounding; it is checked on an example
patch before use, and a larger difference or any exception falls back to the eager net with a
``RuntimeWarning``. The rewrites here are generic (channels-last layout, 1×1×1 convolutions as GEMMs, replicate
padding by slice copies into a reused buffer, kernel = stride transposed convolutions, single-channel
convolutions, in-place activations, BatchNorm folding); those specific to porelab's blocks are registered in
``porelab.nets._inference``. On CUDA none is applied (cuDNN chooses its own layouts). Measured gains and what
did not help (TorchScript, ``torch.compile``, larger batches): ``docs/experiments.md``.
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


# --------------------------------------------------------------------------------------------------------------
# rewritten modules
# --------------------------------------------------------------------------------------------------------------
def is_channels_last(x: torch.Tensor) -> bool:
    """True for a 5-D tensor in the channels-last layout (and not also contiguous in the default one)."""
    return x.dim() == 5 and x.is_contiguous(memory_format=CL) and not x.is_contiguous()


class PointwiseConv3d(nn.Conv3d):
    """A 1×1×1 ``nn.Conv3d`` (stride 1, groups 1) computed as ``F.linear`` over the channel axis.

    On a channels-last input the permuted view is contiguous, so this is a single GEMM with no copy (PyTorch
    sends 1×1×1 convs to ``slow_conv3d`` plus a layout copy), and the result comes back channels-last. Other
    layouts use ``nn.Conv3d`` unchanged. Installed by changing the class of an existing conv (:meth:`convert`),
    so its parameters and attributes stay where they were.
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
        if is_channels_last(x):
            w = self.weight.reshape(self.out_channels, self.in_channels)
            return F.linear(x.permute(0, 2, 3, 4, 1), w, self.bias).permute(0, 4, 1, 2, 3)
        return super().forward(x)


class Scratch(threading.local):
    """A reusable flat buffer per thread (``buf``), for padded copies that live only until the next conv.

    A freshly allocated large tensor costs more in page faults than the copy into it (glibc hands out new
    ``mmap`` pages for large blocks); one buffer serves all padded inputs of a net, since each is consumed by
    its conv before the next one is made. One buffer per thread, so concurrent calls stay correct."""

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
    k³ block) computed as one GEMM ``(voxels, C_in) × (C_in, C_out·k³)`` and a reshuffle into blocks: the same
    sums as PyTorch's kernel, which is slow for few output channels. Used for outputs of ≤ 4 channels only;
    with more channels PyTorch's kernel is as fast or faster."""

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
        cl = is_channels_last(x)
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
    input: oneDNN is slow for a single channel."""

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
    ``x``'s memory format, by slice copies (PyTorch's channels-last ``replication_pad3d`` is several times
    slower). With ``scratch`` the result is a view of that reusable buffer (valid until the next call with the
    same scratch)."""
    pd, ph, pw = pad
    b, c, d, h, w = x.shape
    cl = is_channels_last(x)
    shape = (b, c, d + 2 * pd, h + 2 * ph, w + 2 * pw)
    if scratch is not None:
        out = scratch.take(shape, cl, x)
    else:
        out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=CL if cl else torch.contiguous_format)
    out[:, :, pd:pd + d, ph:ph + h, pw:pw + w] = x
    return fill_faces(out, pad)


def fill_faces(out: torch.Tensor, pad: tuple[int, int, int]) -> torch.Tensor:
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
        if is_channels_last(x):
            xp = pad_replicate(x, self.padding, getattr(self, "scratch", None))
            return F.conv3d(xp, weight, bias, self.stride, 0, self.dilation, self.groups)
        return super()._conv_forward(x, weight, bias)


def _up2_axis(x: torch.Tensor, d: int) -> torch.Tensor:
    n = x.shape[d]
    shape = list(x.shape)
    shape[d] = 2 * n
    fmt = CL if is_channels_last(x) else torch.contiguous_format
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
    """Trilinear ×2 upsampling of a 5-D tensor (``align_corners=False``), as ``F.interpolate`` within float
    rounding, computed one axis at a time (the interpolation is separable, with the fixed weights ¾, ¼) and
    keeping the channels-last layout (``F.interpolate``'s channels-last kernel is not vectorised below 8
    channels)."""
    for d in (4, 3, 2):
        x = _up2_axis(x, d)
    return x


def avg_pool2(x: torch.Tensor) -> torch.Tensor:
    """2×2×2 average pooling (``F.avg_pool3d(x, 2)``, even sizes) that keeps the channels-last layout: the sum
    of the eight strided sub-grids, times 1/8 (``F.avg_pool3d`` returns the default layout, so the next conv
    would run on mixed layouts)."""
    s = x[:, :, 0::2, 0::2, 0::2] + x[:, :, 0::2, 0::2, 1::2]
    for i, j, k in ((0, 1, 0), (0, 1, 1), (1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1)):
        s += x[:, :, i::2, j::2, k::2]
    return s.mul_(0.125)


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


def fold_conv_bn(module: nn.Module, pairs) -> int:
    """Fold eval-mode BatchNorms into the convolution applied right before them: ``pairs`` lists
    ``(conv attribute, BatchNorm attribute)`` of ``module`` whose forward computes ``bn(conv(x))``; each folded
    BatchNorm becomes ``nn.Identity``. Returns how many were folded."""
    n = 0
    for conv_name, bn_name in pairs:
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

    First the block rewrites that the nets register (``porelab.nets._inference.BLOCK_REWRITES``: block class
    → rule that changes the block in place or returns its replacement), applied to every submodule; then the
    generic convolution rewrites and in-place activations. ``scratch`` (default: a new one) is shared by the
    net's padded inputs (each is dead once its conv ran)."""
    from porelab.nets._inference import BLOCK_REWRITES, COUNT_KEYS

    scratch = Scratch() if scratch is None else scratch
    counts = dict.fromkeys(COUNT_KEYS, 0)
    counts.update({"pointwise": 0, "replicate_pad": 0, "inplace_act": 0, "single_channel": 0,
                   "block_transpose": 0})
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            rule = BLOCK_REWRITES.get(type(child))
            if rule is None:
                continue
            new = rule(child, counts)
            if new is not None and new is not child:
                setattr(parent, name, new)
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
    of one batch: memory the eager forward allocates anew in every call); ``release_buffers()`` frees it (the
    next call re-allocates).
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
        Channels-last layout; default: ``porelab.nets._inference.channels_last_helps(net)`` (off for the
        nets where it measured no gain).
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
        from porelab.nets._inference import channels_last_helps

        channels_last = channels_last_helps(net)
    if device.type != "cpu" or not (channels_last or rewrite):
        return net
    info: dict = {"channels_last": channels_last, "rewrite": rewrite}
    scratch = Scratch()
    try:
        # the copy shares the original's weight tensors (no second copy of, e.g., GMVAE's large latent conv);
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
    not returned); a trim takes well under a millisecond.
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
    "BlockConvTranspose3d",
    "InferenceNet",
    "PointwiseConv3d",
    "ReplicateConv3d",
    "Scratch",
    "SingleChannelConv3d",
    "avg_pool2",
    "cached_inference_net",
    "example_input",
    "fill_faces",
    "fold_conv_bn",
    "is_channels_last",
    "malloc_trim",
    "optimize_for_inference",
    "pad_replicate",
    "rewrite_for_inference",
    "upsample2_trilinear",
]
