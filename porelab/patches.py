"""Patches: TorchIO subjects, queues, samplers and augmentation for training; streaming grid inference.

Training (Iuso et al. 2024, §4.2; the public code's ``VolumetricDataLoader``): every scan is a TorchIO
``Subject``; a ``Queue`` draws ``samples_per_volume`` patches per scan with a ``UniformSampler`` (unsupervised
nets) or a ``LabelSampler`` that centres a fraction ``pore_ratio`` of the patches on pore voxels (supervised
nets; pores are < 1 % of the voxels, so uniform patches would almost never show one). Augmentation is applied
to the whole scan each time it enters the queue, never to validation data.

Inference (§4, "half of their length overlapping ... combined by computing an average"): ``predict_volume``
runs a patch function over a regular grid with half-patch overlap and averages the overlapping outputs. It
is written here instead of using TorchIO's ``GridSampler`` + ``GridAggregator`` because those keep the input,
the output and an equal-sized weight volume in RAM (≈ 3-4 float volumes) and build one ``Subject`` per patch;
``predict_volume`` streams slab by slab (see ``benchmarks/inference.py`` for the measured throughput and peak
memory against TorchIO) and gives the same numbers. The patch pipeline is a small part of the time (≈ 2 % with
a UNet): the forward passes dominate, and ``PoreModel.predict`` runs them through ``porelab.infer_opt``'s
inference-optimised copy of the net (same outputs within float32 rounding, ≈ 2× faster on the CPU).
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import numpy as np

from porelab.errors import ConfigError

IMAGE = "image"
LABEL = "label"


# --------------------------------------------------------------------------------------------------------------
# augmentation
# --------------------------------------------------------------------------------------------------------------
@dataclass
class AugmentConfig:
    """Probabilities and ranges of the training augmentation (Iuso et al. 2024, §4.2; paper code preset 4).

    One intensity transform (noise, blur, bias field for beam-hardening-like shading, gamma) is chosen with
    probability ``p_intensity``; one spatial transform (flip along random axes, elastic deformation) with
    probability ``p_spatial``. The weights within each group are the ``w_*`` fields.
    """

    enabled: bool = True
    p_intensity: float = 1.0
    p_spatial: float = 1.0
    w_noise: float = 0.3
    w_blur: float = 0.2
    w_bias: float = 0.3
    w_gamma: float = 0.2
    w_flip: float = 0.5
    w_elastic: float = 0.5
    noise_std: float = 0.08            # in normalised units (material = 0.8)
    blur_std: float = 1.0              # voxels
    bias_coefficients: float = 0.3
    log_gamma: float = 0.2
    elastic_control_points: int = 7
    elastic_max_displacement: float = 4.0   # voxels

    @classmethod
    def from_dict(cls, d: dict | None) -> AugmentConfig:
        d = dict(d or {})
        names = {f.name for f in fields(cls)}
        bad = set(d) - names
        if bad:
            raise ConfigError(f"unknown augmentation options {sorted(bad)}; known: {sorted(names)}")
        return cls(**d)


def _binarise_label(tensor):
    """Spatial transforms return float labels (and may interpolate): cast back to float {0, 1}."""
    import torch

    return (tensor > 0.5).to(torch.float32)


def _non_negative(tensor):
    """Gamma needs non-negative input and noise can push below 0: clamp intensities at 0."""
    return tensor.clamp(min=0.0)


def augmentation(config: AugmentConfig | dict | None = None):
    """TorchIO transform for training scans, or None when disabled.

    ``config`` is an ``AugmentConfig``, a dict of its fields, or a ``porelab.config.Profile`` (whose
    ``extra["augment"]`` dict, if any, overrides the defaults).
    """
    import torchio as tio

    if config is None:
        config = AugmentConfig()
    elif isinstance(config, dict):
        config = AugmentConfig.from_dict(config)
    elif not isinstance(config, AugmentConfig):  # a Profile
        config = AugmentConfig.from_dict(getattr(config, "extra", {}).get("augment"))
    if not config.enabled:
        return None
    intensity = {
        tio.RandomNoise(std=(0.0, config.noise_std)): config.w_noise,
        tio.RandomBlur(std=(0.0, config.blur_std)): config.w_blur,
        tio.RandomBiasField(coefficients=config.bias_coefficients): config.w_bias,
        tio.RandomGamma(log_gamma=(-config.log_gamma, config.log_gamma)): config.w_gamma,
    }
    spatial = {
        tio.RandomFlip(axes=(0, 1, 2), flip_probability=1 / 3): config.w_flip,
        tio.RandomElasticDeformation(num_control_points=config.elastic_control_points,
                                     max_displacement=config.elastic_max_displacement,
                                     locked_borders=2): config.w_elastic,
    }
    intensity = {t: w for t, w in intensity.items() if w > 0}
    spatial = {t: w for t, w in spatial.items() if w > 0}
    parts = [tio.Lambda(_non_negative, types_to_apply=[tio.INTENSITY])]
    if intensity and config.p_intensity > 0:
        parts.append(tio.OneOf(intensity, p=config.p_intensity))
    if spatial and config.p_spatial > 0:
        parts.append(tio.OneOf(spatial, p=config.p_spatial))
    parts.append(tio.Lambda(_non_negative, types_to_apply=[tio.INTENSITY]))
    parts.append(tio.Lambda(_binarise_label, types_to_apply=[tio.LABEL]))
    return tio.Compose(parts)


# --------------------------------------------------------------------------------------------------------------
# subjects, queues, loaders
# --------------------------------------------------------------------------------------------------------------
def make_subjects(samples: Sequence, labels: Sequence | None = None) -> list:
    """One ``tio.Subject`` per scan, with ``image`` (ScalarImage) and, when present, ``label`` (LabelMap).

    ``samples`` are ``porelab.train.Sample`` objects (``scan``, ``label``, ``name``) or plain arrays; ``labels``
    (optional) overrides/gives the label arrays in the same order.
    """
    import torch
    import torchio as tio

    subjects = []
    for i, s in enumerate(samples):
        scan = getattr(s, "scan", s)
        label = labels[i] if labels is not None else getattr(s, "label", None)
        name = getattr(s, "name", None) or f"scan{i}"
        scan = np.ascontiguousarray(scan, dtype=np.float32)
        if scan.ndim != 3:
            raise ConfigError(f"sample {name!r}: a scan must be 3-D, got shape {scan.shape}")
        kw = {IMAGE: tio.ScalarImage(tensor=torch.from_numpy(scan)[None])}
        if label is not None:
            label = np.asarray(label)
            if label.shape != scan.shape:
                raise ConfigError(f"sample {name!r}: label shape {label.shape} differs from scan {scan.shape}")
            kw[LABEL] = tio.LabelMap(tensor=torch.from_numpy((label > 0).astype(np.float32))[None])
        subjects.append(tio.Subject(name=name, **kw))
    return subjects


def make_sampler(patch: int, *, supervised: bool, pore_ratio: float = 0.5):
    """``LabelSampler`` with {background: 1 − pore_ratio, pore: pore_ratio} for supervised nets, else uniform."""
    import torchio as tio

    if supervised:
        if not 0.0 <= pore_ratio <= 1.0:
            raise ConfigError(f"pore_ratio must be within [0, 1], got {pore_ratio}")
        return tio.LabelSampler(patch, label_name=LABEL, label_probabilities={0: 1.0 - pore_ratio, 1: pore_ratio})
    return tio.UniformSampler(patch)


def make_queue(subjects: list, *, patch: int, supervised: bool, samples_per_volume: int,
               max_length: int, pore_ratio: float = 0.5, transform=None, shuffle: bool = True):
    """TorchIO ``Queue`` over ``subjects`` (each transformed by ``transform`` when it enters the queue)."""
    import torchio as tio

    for s in subjects:
        if any(d < patch for d in s.spatial_shape):
            raise ConfigError(f"scan {s.get('name')!r} of shape {tuple(s.spatial_shape)} is smaller than "
                              f"the patch {patch}")
        if supervised and LABEL not in s:
            raise ConfigError(f"scan {s.get('name')!r} has no label; supervised nets need one")
    dataset = tio.SubjectsDataset(subjects, transform=transform)
    sampler = make_sampler(patch, supervised=supervised, pore_ratio=pore_ratio)
    # TorchIO's queue cannot hold fewer patches than one scan gives
    return tio.Queue(dataset, max_length=max(max_length, samples_per_volume, 1), samples_per_volume=samples_per_volume,
                     sampler=sampler, num_workers=0, shuffle_subjects=shuffle, shuffle_patches=shuffle,
                     start_background=False)


def make_loader(queue, batch_size: int):
    """``tio.SubjectsLoader`` over a queue (``num_workers=0``: the queue does the loading)."""
    import torchio as tio

    return tio.SubjectsLoader(queue, batch_size=batch_size, num_workers=0)


def batch_tensors(batch) -> tuple:
    """(image (B,1,p,p,p) float32, label (B,1,p,p,p) float {0,1} or None) from a loader batch."""
    import torchio as tio

    x = batch[IMAGE][tio.DATA].float()
    y = batch[LABEL][tio.DATA] if LABEL in batch else None
    if y is not None:
        y = (y > 0.5).float()
    return x, y


# --------------------------------------------------------------------------------------------------------------
# streaming grid inference
# --------------------------------------------------------------------------------------------------------------
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
    """After a scan: free the patch function's reusable buffers (``porelab.infer_opt.InferenceNet``'s padded
    input, 5 MB for UNet 0.25 at 32³ × 4, 150 MB at scale 1, 64³ × 4), found as ``fn.release_buffers`` or on
    the object of a bound method (``net.forward``); the next call re-allocates them."""
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
        ``porelab.infer_opt.optimize_for_inference`` (as ``PoreModel.predict`` does).
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

    from porelab.infer_opt import malloc_trim
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

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_total, desc=desc, unit="patch", leave=False)

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
            # else: float32 rows are read in place (no slab copy; peak RSS at 128·512·512 measured 423-428 →
            # 359 MB) and their file pages released band by band: once no later patch of this slab starts
            # above row y, rows < y are dropped (the next slab re-reads them from the page cache)
            in_place = slab.base is not None and isinstance(volume, np.memmap)
            y_done = 0
            for b0, b1 in batches:
                chunk = yx[b0:b1]
                n = len(chunk)
                for i, (ys, xs) in enumerate(chunk):
                    inp_np[i, 0] = slab[:, ys:ys + py, xs:xs + px]
                # always a full batch: a short tail batch (e.g. 225 patches per slab = 56 × 4 + 1) is filled
                # up with the previous batch's patches, whose outputs are dropped. A batch of one makes oneDNN
                # take another algorithm with ≈ 3× the working memory of a batch of four (measured, UNet scale
                # 0.25, 32³: +36 MB vs +13 MB over the resident set; a batch of three +18-28 MB): it set the
                # peak of the whole scan. The extra work is < 1.5 % of the patches.
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
            # the forwards' freed activations go back to the system once per slab (glibc otherwise keeps up to
            # ≈ 20 MB of them in its heap). Not after every batch: measured at 48·256·256, UNet 0.25, that
            # costs 40 % of the time (12.7-13.5 → 17.6-18.5 s: each forward page-faults its buffers anew) for
            # 3-7 MB less peak RSS
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


__all__ = [
    "AugmentConfig",
    "augmentation",
    "batch_tensors",
    "grid_starts",
    "make_loader",
    "make_queue",
    "make_sampler",
    "make_subjects",
    "predict_volume",
    "predict_volume_torchio",
    "window_1d",
]
