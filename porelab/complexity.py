"""Model complexity of the ten nets: parameters, MACs, peak memory, total MACs for a scan (Table 8).

Iuso et al. (2024), Sect. 5.5 and Table 8 report, per net at a 64³ patch and batch 1: trainable parameters,
forward/backward peak memory, MACs of one forward pass, and the total MACs to infer an 800×800×2000 scan.

How each figure is measured here
--------------------------------
* **params** — every parameter tensor of the net (``net.parameters()``), trainable or not, buffers
  excluded: what Table 8's "# Parameters" counts. The vqVAE's codebook and its EMA sum accumulator
  (2 × 512 × 64 at scale 1) are parameters that the EMA update changes, not the optimiser, and Table 8's
  2.511 M includes them.
* **trainable_params** — the parameters with ``requires_grad`` (what the optimiser updates); equal to
  ``params`` for every net but the vqVAE.
* **macs** — one forward pass in eval mode (the inference path), counted by PyTorch's own
  ``torch.utils.flop_counter.FlopCounterMode`` (MACs = its FLOPs / 2). It counts every convolution
  (1/2/3-D, grouped, transposed: input-spatial × C_in × C_out/groups × kernel volume) and every matrix
  product (``Linear``, ``matmul``) at the dispatcher level, so functional calls count too: the RV-VAE's
  variance convolutions (``F.conv3d`` with W², two convolutions per layer) and the vqVAE's codebook
  distances are real work that module hooks on ``nn.Conv3d`` would miss. Elementwise ops, pooling and
  biases are not counted (as in thop/ptflops). Why not thop/ptflops/fvcore: none is installed, and each
  counted ``ConvTranspose`` wrongly for years (fixed in thop 2.0.16 and ptflops in Aug 2025, fvcore PR #80
  still open); torch's counter ships with torch and works on the *meta* device, so a 384 M-parameter net
  is counted in well under a second without allocating its weights. :func:`count_macs_hooks` counts the
  same MACs with forward hooks on ``nn.Conv3d``/``nn.ConvTranspose3d``/``nn.Linear`` (the formulas thop and
  ptflops use); the tests use it to cross-check the counter.
* **fwd_peak_mb / bwd_peak_mb** — on CUDA: ``torch.cuda.max_memory_allocated`` during a training-mode
  forward and then the backward of ``sum(outputs)``, minus the memory held before the forward (weights
  and input), in MiB (2²⁰ bytes). On CPU (and whenever the net runs on the meta device) a deterministic
  count instead of RSS: *forward* = the input + every distinct tensor storage autograd saves for the
  backward (``torch.autograd.graph.saved_tensors_hooks``; parameters excluded) + the outputs, i.e. what a
  training forward must keep alive at its end; *backward* = forward + one gradient per parameter. It
  omits allocator slack and the transient temporaries of individual ops, so it is a lower bound of what
  an allocator reports. All nets run on the meta device for this, so it costs no memory or time.
* **total_macs** — ``macs ×`` the number of half-overlapping patch positions in an 800×800×2000 scan:
  per axis ``ceil((N − p) / (p/2)) + 1`` (24 × 24 × 62 = 35 712 positions at p = 64). The paper's Table 8
  "Total MACs" equal MACs × N_voxels / p³ (4 882.8 patch volumes: e.g. UNet 14.124 G × 4 882.8 =
  68.97 T), i.e. they do *not* count the overlap they mention; ``paper_total_macs`` gives that convention.
"""

from __future__ import annotations

import math
import time

import numpy as np

from porelab.errors import ConfigError

__all__ = [
    "PAPER_TABLE8",
    "SCAN_SHAPE",
    "count_macs",
    "count_macs_hooks",
    "count_params",
    "count_trainable_params",
    "grid_positions",
    "measure",
    "memory_estimate",
    "n_patches",
    "paper_total_macs",
    "table",
]

#: the scan size of Table 8's "Total MACs" (z, y, x)
SCAN_SHAPE = (2000, 800, 800)
_MIB = float(1 << 20)

#: Iuso et al. (2024), Table 8 (64³ patch, batch 1): params, fwd/bwd peak MB, MACs, total MACs (plain numbers).
_T8_KEYS = ("params", "fwd_peak_mb", "bwd_peak_mb", "macs", "total_macs")
PAPER_TABLE8: dict[str, dict] = {
    name: dict(zip(_T8_KEYS, values))
    for name, values in {
        "mssunet": (1.328e6, 383.740, 424.840, 14.270e9, 69.678e12),
        "unet": (1.325e6, 353.924, 390.925, 14.124e9, 68.967e12),
        "unetpp": (1.503e6, 933.490, 1005.831, 34.821e9, 170.024e12),
        "unet3p": (1.672e6, 1571.642, 1720.766, 84.881e9, 414.460e12),
        "accunet": (5.062e6, 6897.734, 7269.893, 39.724e9, 193.966e12),
        "vae": (29.024e6, 44.703, 189.918, 3.698e9, 18.058e12),
        "cevae": (140.650e6, 33.765, 778.901, 8.344e9, 40.742e12),
        "gmvae": (383.650e6, 774.129, 1842.710, 207.48e9, 1013.096e12),
        "vqvae": (2.511e6, 17.688, 32.701, 8.471e9, 41.361e12),
        "rvvae": (29.024e6, 223.288, 230.196, 0.456e9, 2.176e12),
    }.items()
}


# ---------------------------------------------------------------------------------------------- counts

def grid_positions(n: int, patch: int, overlap: float = 0.5) -> int:
    """Patch positions along an axis of length ``n``: ``ceil((n − p) / s) + 1`` with stride ``s = p − p·overlap``."""
    stride = patch - round(patch * overlap)
    if stride <= 0:
        raise ConfigError(f"overlap {overlap} leaves no stride for patch {patch}")
    if n <= patch:
        return 1
    return math.ceil((n - patch) / stride) + 1


def n_patches(shape=SCAN_SHAPE, patch: int = 64, overlap: float = 0.5) -> int:
    """Number of half-overlapping patches that tile ``shape`` (the grid of ``porelab.patches``)."""
    return int(np.prod([grid_positions(int(n), patch, overlap) for n in shape]))


def paper_total_macs(macs: float, patch: int = 64, shape=SCAN_SHAPE) -> float:
    """Table 8's convention: MACs × scan voxels / patch voxels (no overlap)."""
    return float(macs) * float(np.prod(shape)) / float(patch) ** 3


def count_params(net) -> int:
    """Every parameter, trainable or not, buffers excluded (Table 8's "# Parameters")."""
    return int(sum(p.numel() for p in net.parameters()))


def count_trainable_params(net) -> int:
    """Parameters with ``requires_grad`` (those the optimiser updates)."""
    return int(sum(p.numel() for p in net.parameters() if p.requires_grad))


def count_macs(net, x) -> int:
    """MACs of ``net(x)`` (every convolution and matrix product; torch's ``FlopCounterMode`` FLOPs / 2).

    Runs the net as it is (train or eval mode) under ``torch.no_grad``; ``x`` may live on the meta device.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(x)
    return int(counter.get_total_flops() // 2)


def count_macs_hooks(net, x) -> int:
    """MACs of ``nn.Conv3d``/``nn.ConvTranspose3d``/``nn.Linear`` modules by forward hooks (cross-check).

    conv: output elements × (C_in / groups) × kernel volume; transposed conv: input elements ×
    (C_out / groups) × kernel volume; linear: input rows × in_features × out_features. Functional calls
    (``F.conv3d``) are invisible to hooks, which is why :func:`count_macs` is the reference.
    """
    import torch
    from torch import nn

    total = [0]

    def hook(module, inputs, output):
        k = int(np.prod(getattr(module, "kernel_size", (1,))))
        if isinstance(module, nn.ConvTranspose3d):
            total[0] += inputs[0].numel() * (module.out_channels // module.groups) * k
        elif isinstance(module, nn.Conv3d):
            total[0] += output.numel() * (module.in_channels // module.groups) * k
        elif isinstance(module, nn.Linear):
            total[0] += (inputs[0].numel() // module.in_features) * module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in net.modules()
               if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d, nn.Linear))]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()
    return int(total[0])


def _tensors(obj):
    import torch

    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def memory_estimate(net, x) -> tuple[int, int]:
    """Deterministic (forward, backward) bytes of one training step, independent of the allocator.

    forward = input + distinct storages saved for the backward (parameters excluded) + outputs;
    backward = forward + parameter gradients. See the module docstring. Works on the meta device.
    """
    import torch

    param_keys = {p.untyped_storage()._cdata for p in net.parameters()}
    saved: dict[int, int] = {}
    keep: list = []   # hold the saved tensors so that no storage address is reused while counting

    def pack(t):
        st = t.untyped_storage()
        if st._cdata not in param_keys:
            saved[st._cdata] = st.nbytes()
            keep.append(t)
        return t

    net.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net(x)
    storages = dict(saved)
    storages[x.untyped_storage()._cdata] = x.untyped_storage().nbytes()
    for t in _tensors(out):
        storages[t.untyped_storage()._cdata] = t.untyped_storage().nbytes()
    fwd = int(sum(storages.values()))
    grads = int(sum(p.numel() * p.element_size() for p in net.parameters() if p.requires_grad))
    keep.clear()
    return fwd, fwd + grads


def _cuda_memory(net, x) -> tuple[int, int]:
    import torch

    dev = x.device
    net.train()
    torch.cuda.synchronize(dev)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    out = net(x)
    torch.cuda.synchronize(dev)
    fwd = torch.cuda.max_memory_allocated(dev) - base
    loss = sum(t.float().sum() for t in _tensors(out) if t.requires_grad)
    loss.backward()
    torch.cuda.synchronize(dev)
    bwd = torch.cuda.max_memory_allocated(dev) - base
    net.zero_grad(set_to_none=True)
    return int(fwd), int(bwd)


# ---------------------------------------------------------------------------------------------- tables

def _build(name: str, scale: float, patch: int, device):
    import torch

    from porelab import nets

    kwargs = {} if nets.is_supervised(name) else {"patch_size": patch}
    with torch.device(device):
        return nets.build(name, scale=scale, **kwargs)


def measure(name: str, *, patch: int = 64, scale: float = 1.0, scan_shape=SCAN_SHAPE, device=None) -> dict:
    """Table 8 row for net ``name`` at a ``patch``³ input, batch 1, widths × ``scale``.

    Returns ``{name, params, trainable_params, macs, fwd_peak_mb, bwd_peak_mb, total_macs}`` plus
    ``n_patches``, ``memory_method`` ("cuda-allocator" or "saved-tensors") and ``seconds``.
    On CUDA the net is built on the GPU and memory is the allocator's; otherwise everything runs on the
    meta device (no weights allocated), falling back to a real CPU forward if the net cannot run on meta.
    """
    import torch

    from porelab.runtime import get_device

    if patch % 16 or patch <= 0:
        raise ConfigError(f"patch must be a positive multiple of 16, got {patch}")
    t0 = time.perf_counter()
    dev = get_device() if device is None else torch.device(device)
    if dev.type == "cuda":
        net = _build(name, scale, patch, dev)
        x = torch.rand(1, 1, patch, patch, patch, device=dev)
        fwd, bwd = _cuda_memory(net, x)
        method = "cuda-allocator"
    else:
        method = "saved-tensors"
        try:
            net = _build(name, scale, patch, "meta")
            x = torch.zeros(1, 1, patch, patch, patch, device="meta")
            fwd, bwd = memory_estimate(net, x)
        except (NotImplementedError, RuntimeError):   # an op without a meta kernel, or data-dependent code
            net = _build(name, scale, patch, "cpu")
            x = torch.rand(1, 1, patch, patch, patch)
            fwd, bwd = memory_estimate(net, x)
            method = "saved-tensors (cpu)"
    net.eval()
    macs = count_macs(net, x)
    params, trainable = count_params(net), count_trainable_params(net)
    positions = n_patches(scan_shape, patch)
    return {
        "name": name, "params": params, "trainable_params": trainable, "macs": macs,
        "fwd_peak_mb": fwd / _MIB, "bwd_peak_mb": bwd / _MIB,
        "total_macs": macs * positions, "n_patches": positions, "memory_method": method,
        "seconds": time.perf_counter() - t0,
    }


def table(names=None, patch: int = 64, scale: float = 1.0, *, progress: bool = False, device=None) -> list[dict]:
    """:func:`measure` for every net in ``names`` (default: all ten, ``porelab.nets.NAMES``)."""
    from porelab import nets

    names = list(nets.NAMES if names is None else names)
    for n in names:
        nets.check_name(n)
    it = names
    if progress:
        from porelab.runtime import progress as progress_bar

        it = progress_bar(names, desc="complexity", unit="net", leave=True)
    return [measure(n, patch=patch, scale=scale, device=device) for n in it]


def format_table(rows: list[dict], *, patch: int = 64) -> str:
    """A text table of ``rows`` beside the paper's Table 8 (ratios ours / paper)."""
    def ratio(a, b):
        return f"{a / b:5.2f}" if b else "  -  "

    head = (f"{'net':<9} {'params M':>9} {'paper':>8} {'ratio':>5} | {'MACs G':>8} {'paper':>8} {'ratio':>5} | "
            f"{'fwd MB':>8} {'paper':>8} | {'bwd MB':>8} {'paper':>8} | {'total T':>8} {'paper':>8} "
            f"{'paper-conv.':>11}")
    lines = [head, "-" * len(head)]
    for r in rows:
        p = PAPER_TABLE8.get(r["name"], {}) if patch == 64 else {}
        g = p.get
        lines.append(
            f"{r['name']:<9} {r['params'] / 1e6:9.3f} {g('params', 0) / 1e6:8.3f} {ratio(r['params'], g('params'))} | "
            f"{r['macs'] / 1e9:8.3f} {g('macs', 0) / 1e9:8.3f} {ratio(r['macs'], g('macs'))} | "
            f"{r['fwd_peak_mb']:8.1f} {g('fwd_peak_mb', 0):8.1f} | {r['bwd_peak_mb']:8.1f} {g('bwd_peak_mb', 0):8.1f} | "
            f"{r['total_macs'] / 1e12:8.1f} {g('total_macs', 0) / 1e12:8.1f} "
            f"{paper_total_macs(r['macs'], patch) / 1e12:11.1f}")
    n = rows[0]["n_patches"] if rows else n_patches(SCAN_SHAPE, patch)
    lines.append(f"total = MACs × {n} half-overlapping {patch}³ patches of an 800×800×2000 scan; 'paper-conv.' = "
                 f"MACs × voxels / {patch}³ (Table 8's convention). Memory: "
                 f"{rows[0]['memory_method'] if rows else '-'} (see porelab.complexity).")
    return "\n".join(lines)
