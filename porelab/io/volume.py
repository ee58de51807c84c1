"""``Volume`` (a (z, y, x) array with its spacing in mm), the slab iterator every whole-volume pass uses, exact
statistics computed slab by slab, and the content checks every reader applies."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from porelab.errors import ScanError
from porelab.io._base import Spacing

_SAMPLE_VOXELS = 1 << 24  # validation looks at about this many voxels first (strided slices)
_SLAB_VOXELS = 1 << 24  # default slab of every whole-volume pass: 16 M voxels (64 MB as float32)


@dataclass
class Volume:
    """A scan: ``array`` (z, y, x), possibly a read-only memmap, and its voxel ``spacing`` in mm (z, y, x).

    ``spacing_known`` is False when the file carried no voxel size and none was given: ``spacing`` is then
    (1, 1, 1) and every length derived from it is in voxel units.
    """

    array: np.ndarray
    spacing: Spacing = (1.0, 1.0, 1.0)
    path: Path | None = None
    spacing_known: bool = False
    meta: dict = field(default_factory=dict, repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype


def iter_slabs(shape, max_voxels: int = _SLAB_VOXELS) -> Iterator[slice]:
    """Yield z-slices that cut a (z, y, x) volume into slabs of at most ``max_voxels`` voxels (≥ 1 slice).

    Every pass over a whole volume (statistics, thresholds, masks, writers) walks these slabs, so a
    memory-mapped scan is read once with one slab in memory at a time.

    Examples
    --------
    >>> list(iter_slabs((5, 2, 2), max_voxels=8))
    [slice(0, 2, None), slice(2, 4, None), slice(4, 5, None)]
    """
    z, plane = int(shape[0]), int(np.prod(shape[1:], dtype=np.int64))
    step = max(1, int(max_voxels // max(plane, 1)))
    for z0 in range(0, z, step):
        yield slice(z0, min(z, z0 + step))


def scan_stats(array: np.ndarray, *, progress: bool = False) -> dict:
    """Exact ``min``, ``max``, ``mean`` (NaN ignored) and ``nan_count`` of a volume, computed slab by slab.

    Memory stays at one slab (16 M voxels) whatever the size of ``array`` (a memmap is read once).
    """
    lo, hi, total, count, nans = math.inf, -math.inf, 0.0, 0, 0
    is_float = np.issubdtype(array.dtype, np.floating)
    slabs = list(iter_slabs(array.shape))
    if progress:
        from porelab.runtime import progress as progress_bar

        slabs = progress_bar(slabs, desc="stats", unit="slab")
    for sl in slabs:
        block = np.asarray(array[sl])
        if block.dtype == bool:
            block = block.view(np.uint8)
        if is_float:
            finite = np.isfinite(block)
            n_bad = int(block.size - np.count_nonzero(finite))
            if n_bad:
                nans += n_bad
                block = block[finite]
        if block.size == 0:
            continue
        lo = min(lo, float(block.min()))
        hi = max(hi, float(block.max()))
        total += float(block.sum(dtype=np.float64))
        count += int(block.size)
    mean = total / count if count else math.nan
    return {"min": lo if count else math.nan, "max": hi if count else math.nan, "mean": mean,
            "nan_count": nans}


def validate(array: np.ndarray, path: Path, *, mask: bool = False) -> np.ndarray:
    """Shape/dtype/content checks shared by scans and masks; returns the (possibly squeezed) array.

    Scans must be 3-D, numeric, non-empty, with a finite voxel and two different values; masks only need
    the first three (an all-zero mask is a part without pores).
    """
    if array.dtype.kind not in "biuf":
        raise ScanError(f"{path}: unsupported data type {array.dtype} (need integers, floats or booleans)")
    if array.ndim > 3:
        squeezed = array.reshape([s for s in array.shape if s != 1])
        if squeezed.ndim == 3:
            array = squeezed
    if array.ndim != 3:
        raise ScanError(f"{path}: array is {array.ndim}-D with shape {tuple(array.shape)}; "
                        "a 3-D (z, y, x) volume is needed")
    if array.size == 0 or min(array.shape) == 0:
        raise ScanError(f"{path}: volume is empty (shape {tuple(array.shape)})")
    if mask:
        return array
    # Cheap first look at a strided subsample of whole slices; only a suspicious sample triggers the exact
    # slab-by-slab pass, so a 10^9-voxel memmap is never loaded (nor converted to float64) for validation.
    plane = int(np.prod(array.shape[1:], dtype=np.int64))
    step = max(1, math.ceil(array.size / _SAMPLE_VOXELS))
    sample = np.asarray(array[::step]) if step < array.shape[0] else np.asarray(array[:: max(1, step // plane)])
    if not _finite_nonconstant(sample):
        stats = scan_stats(array)
        if stats["nan_count"] == array.size:
            raise ScanError(f"{path}: every voxel is NaN or infinite")
        if stats["min"] == stats["max"]:
            raise ScanError(f"{path}: volume is constant (every finite voxel = {stats['min']:g}); "
                            "not a CT scan")
    return array


def _finite_nonconstant(sample: np.ndarray) -> bool:
    """True when ``sample`` holds at least two different finite values."""
    if sample.dtype == bool:
        sample = sample.view(np.uint8)
    if np.issubdtype(sample.dtype, np.floating):
        sample = sample[np.isfinite(sample)]
    return bool(sample.size and sample.min() != sample.max())
