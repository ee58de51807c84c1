"""Streaming half-overlap grid inference: a patch function run over a whole scan, overlapping outputs blended.

Iuso et al. 2024, §4: patches with "half of their length overlapping ... combined by computing an average".
``predict_volume`` gives the numbers of TorchIO's ``GridSampler`` + ``GridAggregator(average)`` but streams
slab by slab along z instead of keeping the input, the output and an equal-sized weight volume in RAM and
building one ``Subject`` per patch (throughput and peak memory against TorchIO: ``benchmarks/inference.py``,
``docs/experiments.md``). ``predict_volume_torchio`` is that TorchIO path, kept as the reference.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Sequence

import numpy as np

from porelab.errors import ConfigError
from porelab.sampling import IMAGE


def grid_starts(size: int, patch: int, step: int) -> list[int]:
    """Patch starts along one axis: 0, step, 2·step, … and a last patch flush with the end (as TorchIO's
    ``GridSampler``); a single start 0 when the axis is shorter than the patch (it is then padded)."""
    if size <= patch:
        return [0]
    starts = list(range(0, size - patch + 1, step))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def window_1d(patch: int, weighting: str) -> np.ndarray:
    """1-D blending window; the 3-D window is its outer product (so the weight sums are separable).

    ``average``: ones. ``hann``: sin²(π (i + ½) / p), never exactly zero so the volume border stays covered.
    ``gaussian``: exp(−d² / 2σ²), σ = p / 8 (as nnU-Net), floored at 1e-3.
    """
    i = np.arange(patch, dtype=np.float64)
    if weighting == "average":
        w = np.ones(patch)
    elif weighting == "hann":
        w = np.sin(np.pi * (i + 0.5) / patch) ** 2
    elif weighting == "gaussian":
        sigma = patch / 8.0
        w = np.exp(-((i - (patch - 1) / 2.0) ** 2) / (2 * sigma**2))
        w = np.maximum(w / w.max(), 1e-3)
    else:
        raise ConfigError(f"unknown weighting {weighting!r}; choose average, hann or gaussian")
    return w.astype(np.float32)


def _weight_sum(size: int, starts: list[int], w: np.ndarray) -> np.ndarray:
    acc = np.zeros(max(size, len(w)), dtype=np.float64)
    for s in starts:
        acc[s:s + len(w)] += w
    return acc[:size].astype(np.float32)


def _mmap_release(arr, z0: int, z1: int, y0: int | None = None, y1: int | None = None) -> None:
    """Drop the resident pages of rows [z0, z1) (and, when given, only of y rows [y0, y1) of each of them) of a
    C-contiguous np.memmap (file-backed, so nothing is lost): the page cache keeps them, but they stop
    counting towards this process's memory. Writable maps are flushed first; only whole pages are dropped."""
    mm = getattr(arr, "_mmap", None)
    if mm is None or not isinstance(arr, np.memmap) or not arr.flags.c_contiguous or z1 <= z0:
        return
    if getattr(arr, "mode", "r") == "c":  # private copy-on-write pages would be lost
        return
    try:
        base = np.frombuffer(mm, dtype=np.uint8).ctypes.data
        off = arr.ctypes.data - base
        if y0 is None:
            ranges = [(off + z0 * arr.strides[0], (z1 - z0) * arr.strides[0])]
        else:
            if y1 <= y0 or arr.ndim < 2:
                return
            ranges = [(off + z * arr.strides[0] + y0 * arr.strides[1], (y1 - y0) * arr.strides[1])
                      for z in range(z0, z1)]
        page = mmap.PAGESIZE
        for start, length in ranges:
            a = -(-start // page) * page        # only whole pages inside the range
            b = (start + length) // page * page
            if b > a:
                if getattr(arr, "mode", "r") in ("r+", "w+"):
                    mm.flush(a, b - a)
                mm.madvise(mmap.MADV_DONTNEED, a, b - a)
    except (ValueError, OSError, AttributeError, TypeError):  # pragma: no cover - best effort only
        pass


def _release_fn_buffers(fn: Callable) -> None:
    """After a scan: free the patch function's reusable buffers (``InferenceNet``'s padded input), found as
    ``fn.release_buffers`` or on the object of a bound method (``net.forward``); the next call re-allocates
    them."""
    for owner in (fn, getattr(fn, "__self__", None)):
        release = getattr(owner, "release_buffers", None)
        if callable(release):
            release()
            return


def predict_volume(fn: Callable, volume: np.ndarray, *, patch: int | Sequence[int], overlap: float = 0.5,
                   batch_size: int = 4, weighting: str = "average", out: np.ndarray | None = None,
                   progress: bool = True, device=None, desc: str = "inference") -> np.ndarray:
    """Apply ``fn`` patch by patch over a whole scan and blend the overlapping outputs.

    The grid has half-patch overlap by default (Iuso et al. 2024, §4: "half of their length overlapping ...
    combined by computing an average"); the last patch on each axis is flush with the end, as in TorchIO's
    ``GridSampler``, so the output equals TorchIO's ``GridAggregator(overlap_mode="average")``. Axes shorter
    than the patch are padded by edge replication and cropped back.

    Streaming: the grid is walked slab by slab along z. For each z start, the input slab (p slices) is read
    from ``volume`` (a memmap is fine), its patches are run in batches, and the weighted outputs are added to
    a slab accumulator of p slices; slices that no later patch touches are divided by the (separable) weight
    sum and written to ``out``. Peak memory is one input slab, one accumulator slab and one batch, plus
    ``out`` itself (pass a memmap to keep that on disk too).

    Parameters
    ----------
    fn : callable
        ``fn(torch.Tensor (B, 1, pz, py, px) float32 on ``device``) -> torch.Tensor (B, 1, pz, py, px)``.
        Called under ``torch.inference_mode()``. For speed on the CPU pass a net prepared by
        ``porelab.inference.optimize_for_inference`` (as ``PoreModel.predict`` does).
    volume : array (Z, Y, X)
        Any real dtype; read slab by slab.
    patch : int or (int, int, int)
    overlap : float
        Fraction of the patch shared by neighbours (step = round(p · (1 − overlap)), at least 1).
    batch_size : int
    weighting : "average", "hann" or "gaussian"
        Blending window (see ``window_1d``); "average" is the paper's.
    out : array (Z, Y, X), optional
        Destination (e.g. an ``np.memmap`` float32); allocated when None.
    progress : bool
        tqdm bar over patches (stderr).
    device : torch.device, optional
        Where patches are sent; default ``porelab.runtime.get_device()``.

    Returns
    -------
    np.ndarray float32 (Z, Y, X)
        ``out``.
    """
    import torch

    from porelab.inference.fast import malloc_trim
    from porelab.runtime import get_device

    if np.ndim(volume) != 3:
        raise ConfigError(f"predict_volume needs a 3-D volume, got shape {np.shape(volume)}")
    p = (int(patch),) * 3 if np.isscalar(patch) else tuple(int(v) for v in patch)
    if len(p) != 3 or min(p) < 1:
        raise ConfigError(f"patch must be a positive int or 3 ints, got {patch!r}")
    if not 0.0 <= overlap < 1.0:
        raise ConfigError(f"overlap must be within [0, 1), got {overlap}")
    shape = tuple(int(s) for s in np.shape(volume))
    steps = tuple(max(1, round(pi * (1.0 - overlap))) for pi in p)
    starts = [grid_starts(s, pi, st) for s, pi, st in zip(shape, p, steps)]
    wins = [window_1d(pi, weighting) for pi in p]
    wsum = [_weight_sum(s, st, w) for s, st, w in zip(shape, starts, wins)]
    w_yx = torch.from_numpy(np.multiply.outer(wsum[1], wsum[2]).astype(np.float32))
    w_z = torch.from_numpy(wsum[0])
    win3 = None
    if weighting != "average":
        win3 = torch.from_numpy(np.multiply.outer(np.multiply.outer(wins[0], wins[1]), wins[2]).astype(np.float32))
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif tuple(out.shape) != shape:
        raise ConfigError(f"out has shape {tuple(out.shape)}, expected {shape}")
    device = device if device is not None else get_device()
    if win3 is not None:
        win3 = win3.to(device)

    pz, py, px = p
    Y, X = shape[1], shape[2]
    Yp, Xp = max(Y, py), max(X, px)
    yx = [(ys, xs) for ys in starts[1] for xs in starts[2]]
    n_total = len(starts[0]) * len(yx)
    nb = min(batch_size, len(yx))
    batches = [(b0, min(b0 + nb, len(yx))) for b0 in range(0, len(yx), nb)]
    acc = torch.zeros((pz, Yp, Xp), dtype=torch.float32)      # accumulator for z in [z0, z0 + pz)
    inp = torch.empty((nb, 1, pz, py, px), dtype=torch.float32)
    pin = device.type == "cuda"
    if pin:
        inp = inp.pin_memory()
    inp_np = inp.numpy()                 # the same memory: patches are copied in with numpy

    from porelab.runtime import progress as progress_bar

    bar = progress_bar(enabled=progress, total=n_total, desc=desc, unit="patch")

    def flush(z_from: int, z_to: int, z0: int) -> None:
        """Write finished rows [z_from, z_to) (absolute z) from the accumulator starting at z0."""
        if z_to <= z_from:
            return
        block = acc[z_from - z0:z_to - z0, :Y, :X]
        block.div_(w_yx).div_(w_z[z_from:z_to, None, None])     # in place: no temporary volume
        out[z_from:z_to] = block.numpy()
        _mmap_release(out, z_from, z_to)

    malloc_trim()      # what the caller freed before (e.g. the inference copy's eager check) is not kept
    z0 = 0
    with torch.inference_mode():
        for zs in starts[0]:
            # every row below zs is final: no later patch starts before zs
            if zs > z0:
                k = zs - z0
                flush(z0, zs, z0)
                if k < pz:
                    # with half overlap the two row ranges do not overlap: no temporary needed
                    acc[: pz - k].copy_(acc[k:] if 2 * k >= pz else acc[k:].clone())
                    acc[pz - k:] = 0
                else:
                    acc.zero_()
                z0 = zs
            slab = volume[zs:zs + pz]
            if not (isinstance(slab, np.ndarray) and slab.dtype == np.float32 and slab.shape == (pz, Yp, Xp)):
                slab = np.array(slab, dtype=np.float32)      # a copy (other dtype, or padding needed)
                _mmap_release(volume, zs, zs + pz)
                if slab.shape != (pz, Yp, Xp):
                    slab = np.pad(slab, [(0, pz - slab.shape[0]), (0, Yp - slab.shape[1]),
                                         (0, Xp - slab.shape[2])], mode="edge")
            # else: float32 rows are read in place (no slab copy) and their file pages released band by band:
            # once no later patch of this slab starts above row y, rows < y are dropped (the next slab
            # re-reads them from the page cache)
            in_place = slab.base is not None and isinstance(volume, np.memmap)
            y_done = 0
            for b0, b1 in batches:
                chunk = yx[b0:b1]
                n = len(chunk)
                for i, (ys, xs) in enumerate(chunk):
                    inp_np[i, 0] = slab[:, ys:ys + py, xs:xs + px]
                # always a full batch: a short tail batch is filled up with the previous batch's patches,
                # whose outputs are dropped; a batch of one makes oneDNN take an algorithm with ≈ 3× the
                # working memory, which set the peak of the whole scan (docs/experiments.md)
                x = inp.to(device, non_blocking=True)
                y = fn(x)
                if isinstance(y, (list, tuple)):
                    y = y[0]
                if tuple(y.shape) != (nb, 1, pz, py, px):
                    raise ConfigError(f"fn returned shape {tuple(y.shape)}, expected {(nb, 1, pz, py, px)}")
                y = y[:n]
                y = y.float()
                if win3 is not None:
                    y = y * win3
                y = y.cpu()
                for i, (ys, xs) in enumerate(chunk):
                    acc[:, ys:ys + py, xs:xs + px] += y[i, 0]
                if bar is not None:
                    bar.update(n)
                if in_place and b1 < len(yx) and yx[b1][0] > y_done:
                    _mmap_release(volume, zs, zs + pz, y_done, yx[b1][0])
                    y_done = yx[b1][0]
            del slab
            # the forwards' freed activations go back to the system once per slab (glibc otherwise keeps them
            # in its heap); not after every batch, where each forward would page-fault its buffers anew
            malloc_trim()
            _mmap_release(volume, zs, zs + pz)       # its file pages stay in the page cache, not in our RSS
        flush(z0, shape[0], z0)
    if bar is not None:
        bar.close()
    _release_fn_buffers(fn)
    malloc_trim()
    if isinstance(out, np.memmap):
        out.flush()
    return out


def predict_volume_torchio(fn: Callable, volume: np.ndarray, *, patch: int, overlap: float = 0.5,
                           batch_size: int = 4, device=None) -> np.ndarray:
    """Reference path: the same inference through TorchIO's ``GridSampler`` + ``GridAggregator(average)``.

    Used by tests and ``benchmarks/inference.py`` to check ``predict_volume``; it keeps the whole volume
    (and ≈ 3 float copies of it) in RAM.
    """
    import torch
    import torchio as tio

    from porelab.runtime import get_device

    device = device if device is not None else get_device()
    ov = round(patch * overlap)
    subject = tio.Subject(image=tio.ScalarImage(tensor=torch.from_numpy(np.asarray(volume, np.float32))[None]))
    sampler = tio.inference.GridSampler(subject, patch, ov)
    loader = tio.SubjectsLoader(sampler, batch_size=batch_size)
    agg = tio.inference.GridAggregator(sampler, overlap_mode="average")
    with torch.inference_mode():
        for batch in loader:
            x = batch[IMAGE][tio.DATA].to(device)
            y = fn(x)
            if isinstance(y, (list, tuple)):
                y = y[0]
            agg.add_batch(y.float().cpu(), batch[tio.LOCATION])
    return agg.get_output_tensor()[0].numpy()


__all__ = ["grid_starts", "predict_volume", "predict_volume_torchio", "window_1d"]
