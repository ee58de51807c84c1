"""Scans larger than one machine: Dask clusters, lazy chunked scans, zarr outputs and Algorithm 1 on chunks.

``label_dask`` runs Algorithm 1 (``porelab.labels``) on a chunked Dask array and gives the same mask as
``run_algorithm1`` on the whole scan:

* Otsu: every chunk returns its finite (and, for ``t2``, in-object) value range, then its histogram over the
  merged range with the bins of ``porelab.labels.otsu_threshold`` (256 for floats, one per grey value for
  integers); the summed counts go through the same ``threshold_otsu`` call, so the thresholds are equal.
* 6-connected components across chunk boundaries (the flood fill of the background and the pores): each
  chunk is labelled with ``scipy.ndimage.label`` and returns its label count, per-label bounding boxes and
  voxel counts, its corner labels and its six face planes; the pairs of labels that touch across each
  shared face (computed next to the data, on the workers) join a sparse graph on the client, whose
  connected components (``scipy.sparse.csgraph``) are the global components. The bounding-box rule then
  sees whole components. A second, lazy pass labels each chunk again (the same labels: ``ndimage.label``
  is deterministic) and maps them through that chunk's slice of the keep table.
* The surface margin (``binary_erosion`` of the object, ``iterations=margin``) runs with ``map_overlap`` and
  a halo of ``margin`` voxels; the field's edges count as inside (``border_value=1``), as in one process.

Only chunk-sized arrays and per-label tables ever reach one process; results are written to zarr chunk by
chunk. dask and zarr are imported inside the functions (``pip install 'porelab[cluster]'``).
"""

from __future__ import annotations

import itertools
import os
import threading
import warnings
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from porelab.errors import ConfigError, ScanError
from porelab.labels import (
    SIX_CONNECTED,
    merge_provisional,
    otsu_counts,
    otsu_from_counts,
    otsu_is_integer,
    otsu_values,
)

__all__ = ["DaskAlgorithm1Result", "LazyScan", "as_dask", "compute", "connect", "fill_nonfinite_dask", "label_dask", "object_mask_dask",
           "otsu_dask", "read_zarr_dask", "require_cluster", "write_zarr_dask"]

DEFAULT_CHUNK = 256  # voxels per axis of a chunk (64 MB of float32)
_CANDIDATE_WARN = 0.2  # as porelab.labels


def require_cluster():
    """``(dask, dask.array)``, or a one-line ``ConfigError`` naming the extra to install."""
    try:
        import dask
        import dask.array as da
    except ImportError:
        raise ConfigError("this needs Dask: install porelab[cluster] (pip install 'porelab[cluster]')") from None
    return dask, da


# ----------------------------------------------------------------------------------------------------------
# clusters and lazy scans
# ----------------------------------------------------------------------------------------------------------

@contextmanager
def connect(scheduler: str | None, workers: int | None = None, *, threads: int = 1, memory_limit="auto"):
    """A ``distributed.Client`` for ``--scheduler``: ``local`` starts a ``LocalCluster`` of ``workers`` processes
    (default: the CPU count) with ``threads`` threads each; ``tcp://HOST:PORT`` joins a running scheduler.
    ``None`` yields None (Dask's default scheduler in this process). Closed on exit."""
    if scheduler is None:
        yield None
        return
    require_cluster()
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ConfigError("--scheduler needs dask.distributed: install porelab[cluster]") from None
    if scheduler == "local":
        n = int(workers or os.cpu_count() or 1)
        with LocalCluster(n_workers=n, threads_per_worker=threads, processes=True, memory_limit=memory_limit,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            yield client
        return
    if not scheduler.startswith(("tcp://", "tls://", "ws://", "wss://", "inproc://")):
        raise ConfigError(f"--scheduler must be 'local' or an address like tcp://HOST:8786, got {scheduler!r}")
    try:
        client = Client(scheduler, timeout="30s")
    except OSError as exc:
        raise ConfigError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
    try:
        yield client
    finally:
        client.close()


_OPEN: dict = {}
_OPEN_LOCK = threading.Lock()


class LazyScan:
    """A picklable (z, y, x) scan that opens its file once per process (``porelab.io.read_volume``, memory-mapped
    where the format allows: ``.npy``, raw, uncompressed TIFF, zarr) and reads only the slices asked for, so a
    task graph carries the path, never the voxels. Other formats are read whole once per worker process."""

    def __init__(self, path, shape, dtype, spacing=None):
        self.path = str(Path(path).resolve())
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)
        self.spacing = spacing

    def _array(self):
        key = (self.path, os.stat(self.path).st_mtime_ns)
        with _OPEN_LOCK:
            arr = _OPEN.get(key)
            if arr is None:
                from porelab.io import read_volume

                arr = read_volume(self.path, spacing=self.spacing).array
                _OPEN.clear()
                _OPEN[key] = arr
        return arr

    def __getitem__(self, key):
        arr = self._array()
        out = np.array(arr[key], copy=True)     # a copy: the chunk must not keep the mapping's pages alive
        _release_pages(arr)
        return out


def _mapping_of(arr):
    """The ``mmap.mmap`` behind a memory-mapped array (``np.memmap``, or a view of one), else ``None``."""
    import mmap

    seen = 0
    while arr is not None and seen < 16:
        if isinstance(arr, mmap.mmap):
            return arr
        mm = getattr(arr, "_mmap", None)
        if isinstance(mm, mmap.mmap):
            return mm
        arr = getattr(arr, "base", None)
        seen += 1
    return None


def _release_pages(arr) -> None:
    """Drop the pages a read touched from this process's resident set (``madvise(MADV_DONTNEED)``).

    A memory-mapped scan stays open in a worker for all its chunks. Every page a chunk read stays mapped, and
    Linux counts mapped file pages in the process's RSS, which Dask's memory monitor reads: after reading
    a few GB of a big scan a worker looks full, is paused at 80 % of its memory limit and the job stalls
    (measured: two workers with a 4 GiB limit stalled at 3.4 GiB each, 10⁹ voxels into Algorithm 1). The
    pages are clean and read-only, so dropping them is safe: the next read maps them again from the page
    cache. Not a memory-mapped array: nothing to do."""
    import mmap

    mm = _mapping_of(arr)
    if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    try:
        mm.madvise(mmap.MADV_DONTNEED)
    except (OSError, ValueError):      # a closed mapping or a platform that refuses: the pages stay, reads work
        pass


def as_dask(scan, chunks=DEFAULT_CHUNK, *, spacing=None):
    """``(dask array, spacing)`` of a scan path (read lazily through :class:`LazyScan`), a numpy array or a Dask
    array, with ``chunks`` (an int, 3 ints or Dask's tuple of tuples). ``spacing`` is the file's unless given."""
    _, da = require_cluster()
    if isinstance(scan, (str, os.PathLike)):
        from porelab.io import read_volume

        vol = read_volume(scan, spacing=spacing)       # validates; memory-mapped where the format allows
        lazy = LazyScan(scan, vol.shape, vol.dtype, spacing)
        arr = da.from_array(lazy, chunks=chunks, asarray=False, fancy=False,
                            meta=np.empty((0, 0, 0), dtype=vol.dtype), name=f"porelab-scan-{_token(lazy)}")
        return arr, vol.spacing
    if hasattr(scan, "dask"):
        return scan.rechunk(chunks), tuple(spacing) if spacing is not None else (1.0, 1.0, 1.0)
    if np.ndim(scan) != 3:
        raise ScanError(f"expected a 3-D (z, y, x) scan, got shape {np.shape(scan)}")
    return da.from_array(np.asarray(scan), chunks=chunks), tuple(spacing) if spacing is not None else (1.0, 1.0, 1.0)


def _token(lazy: LazyScan) -> str:
    import dask.base

    st = os.stat(lazy.path)
    return dask.base.tokenize(lazy.path, st.st_mtime_ns, st.st_size, lazy.spacing)


def compute(*collections, client=None):
    """``dask.compute`` on ``client`` (a ``distributed.Client``) or on Dask's default scheduler."""
    import dask

    if client is not None:
        return dask.compute(*collections, scheduler=client)
    return dask.compute(*collections)


def write_zarr_dask(arrays: dict, *, spacing, client=None) -> list[Path]:
    """Write ``{path: dask array}`` as zarr arrays (bool as uint8, ``attrs["spacing"]``, the Dask chunks) in one
    pass, so tasks shared by several arrays (the score and its mask) run once. Each store is written under a
    temporary name and renamed when every store is complete: a failure leaves nothing under any path."""
    import dask.array as da
    import zarr

    from porelab.io import atomic_path

    with ExitStack() as stack:
        targets, sources = [], []
        for path, arr in arrays.items():
            tmp = stack.enter_context(atomic_path(Path(path), is_dir=True))
            dtype = np.dtype(np.uint8) if arr.dtype == bool else arr.dtype
            z = zarr.create_array(str(tmp), shape=arr.shape, dtype=dtype, overwrite=True,
                                  chunks=tuple(int(c[0]) for c in arr.chunks),
                                  attributes={"spacing": [float(v) for v in spacing]})
            sources.append(arr.astype(dtype) if dtype != arr.dtype else arr)
            targets.append(z)
        compute(da.store(sources, targets, lock=False, compute=False), client=client)
    return [Path(p) for p in arrays]


def read_zarr_dask(path, dtype=None):
    """A zarr store as a lazy Dask array with the store's chunks (``dtype`` converts, e.g. uint8 → bool)."""
    import dask.array as da
    import zarr

    arr = da.from_zarr(zarr.open_array(str(path), mode="r"))
    return arr if dtype is None else arr.astype(dtype)


# ----------------------------------------------------------------------------------------------------------
# missing voxels
# ----------------------------------------------------------------------------------------------------------

def _fill_planes(block, *, planes):
    """``fill_nonfinite`` for a chunk of whole (y, x) planes; ``planes`` holds the client's filled copies of
    the slices without any finite voxel, by z."""
    from scipy.ndimage import distance_transform_edt

    block, out = np.asarray(block, dtype=np.float32), np.empty(np.shape(block), dtype=np.float32)
    z0 = planes.get("z0", 0)
    for k in range(block.shape[0]):
        plane = block[k]
        bad = ~np.isfinite(plane)
        if not bad.any():
            out[k] = plane
        elif bad.all():
            out[k] = planes["empty"][z0 + k]
        else:
            idx = distance_transform_edt(bad, return_distances=False, return_indices=True)
            out[k] = plane[idx[0], idx[1]]
    return out


def _fill_block(block, *, empty, block_info=None):
    z0 = block_info[0]["array-location"][0][0] if block_info else 0
    return _fill_planes(block, planes={"z0": z0, "empty": {z: p for z, p in empty.items()}})


def fill_nonfinite_dask(arr, *, client=None):
    """``(filled, missing or None, n)``: the Dask counterpart of ``porelab.normalise.fill_nonfinite``."""
    import dask.array as da

    if not np.issubdtype(arr.dtype, np.floating):
        return arr, None, 0
    bad = ~da.isfinite(arr)
    per_slice, = compute(bad.sum(axis=(1, 2)), client=client)
    n = int(per_slice.sum())
    if n == 0:
        return arr, None, 0
    Z, Y, X = arr.shape
    if n == Z * Y * X:
        raise ScanError(f"every voxel of the scan ({n:,}) is NaN or infinite: nothing to score")
    empty_z = np.flatnonzero(per_slice == Y * X)
    full = np.setdiff1d(np.arange(Z), empty_z)
    empty = {}
    for z in empty_z:
        src = int(full[np.argmin(np.abs(full - z))])
        plane, = compute(arr[src:src + 1], client=client)
        empty[int(z)] = _fill_planes(plane, planes={})[0]
    planes = arr.rechunk({1: -1, 2: -1})
    filled = planes.map_blocks(_fill_block, empty=empty, dtype=np.float32).rechunk(arr.chunks)
    return filled, bad, n


# ----------------------------------------------------------------------------------------------------------
# Otsu on chunks
# ----------------------------------------------------------------------------------------------------------

def _range_block(b, m, integer):
    v = otsu_values(b, m, integer)
    return (float(v.min()), float(v.max())) if v.size else (np.inf, -np.inf)


def _counts_block(b, m, lo, hi, integer, nbins):
    return otsu_counts(otsu_values(b, m, integer), lo, hi, integer, nbins)


def otsu_dask(scan, mask=None, *, client=None, nbins: int = 256) -> float:
    """``porelab.labels.otsu_threshold`` of a chunked scan (optionally inside ``mask``, same chunks): per-chunk
    ranges, then per-chunk histograms over the merged range, merged — the same threshold."""
    import dask

    integer = otsu_is_integer(scan.dtype)
    blocks = scan.to_delayed().ravel()
    masks = mask.to_delayed().ravel() if mask is not None else [None] * len(blocks)
    rng = compute([dask.delayed(_range_block)(b, m, integer) for b, m in zip(blocks, masks)], client=client)[0]
    lo = min(r[0] for r in rng)
    hi = max(r[1] for r in rng)
    if not np.isfinite(lo):
        raise ScanError("Otsu threshold: no finite voxel to threshold (empty mask or all NaN)")
    if lo == hi:
        return lo
    parts = [dask.delayed(_counts_block)(b, m, lo, hi, integer, nbins) for b, m in zip(blocks, masks)]
    counts = compute(dask.delayed(sum)(parts), client=client)[0]
    return otsu_from_counts(counts, lo, hi, integer, nbins)


# ----------------------------------------------------------------------------------------------------------
# 6-connected components across chunks
# ----------------------------------------------------------------------------------------------------------

def _label_block(block, origin):
    """First pass on one chunk: labels, per-label boxes (global, stop exclusive) and counts, face planes."""
    lab, n = ndimage.label(np.asarray(block, dtype=bool), structure=SIX_CONNECTED)
    lab = lab.astype(np.int32, copy=False)
    res = {"n": int(n), "origin": tuple(origin), "shape": lab.shape}
    if n:
        objs = ndimage.find_objects(lab)
        b = np.array([[s.start for s in o] + [s.stop for s in o] for o in objs], dtype=np.int64)
        res["boxes"] = b + np.array(list(origin) * 2)
        res["counts"] = np.bincount(lab.ravel(), minlength=n + 1)[1:].astype(np.int64)
    res["faces"] = [(np.take(lab, 0, axis=a).copy(), np.take(lab, -1, axis=a).copy()) for a in range(3)]
    return res


def _face_pairs(lo_res, hi_res, axis):
    """Distinct (label in the low chunk, label in the high chunk) pairs that touch across their shared face."""
    a = lo_res["faces"][axis][1].astype(np.int64)
    b = hi_res["faces"][axis][0].astype(np.int64)
    both = (a > 0) & (b > 0)
    if not both.any():
        return np.zeros((0, 2), dtype=np.int64)
    key = np.unique(a[both] * (int(hi_res["n"]) + 1) + b[both])
    return np.stack([key // (int(hi_res["n"]) + 1), key % (int(hi_res["n"]) + 1)], axis=1)


def _stats(res, corners):
    """The small part of a first-pass result (what the client needs), with the labels of the given corners."""
    out = {k: res[k] for k in ("n", "boxes", "counts") if k in res}
    o, s = res["origin"], res["shape"]
    out["corners"] = {}
    for c in corners:
        if all(o[i] <= c[i] < o[i] + s[i] for i in range(3)):
            # a corner lies on three faces of its chunk: read it from the z face
            plane = res["faces"][0][0 if c[0] == o[0] else 1]
            out["corners"][c] = int(plane[c[1] - o[1], c[2] - o[2]])
    return out


@dataclass
class _Comps:
    grid: tuple  # number of chunks per axis
    offsets: np.ndarray  # per chunk (raster order): first provisional label minus one
    ns: np.ndarray  # labels per chunk
    comp: np.ndarray  # provisional label -> component id (0 = none)
    n: int
    boxes: np.ndarray  # (n + 1, 6)
    voxels: np.ndarray  # (n + 1,)
    corners: dict  # corner -> component id (0: corner not in the mask)


def components_dask(mask, *, client=None) -> _Comps:
    """6-connected components of a chunked bool array, merged across chunk faces (module docstring)."""
    import dask

    Z, Y, X = mask.shape
    corners = [(z, y, x) for z in (0, Z - 1) for y in (0, Y - 1) for x in (0, X - 1)]
    starts = [np.concatenate([[0], np.cumsum(c)[:-1]]).astype(int) for c in mask.chunks]
    grid = mask.numblocks
    blocks = mask.to_delayed()
    res = np.empty(grid, dtype=object)
    for idx in np.ndindex(*grid):
        origin = tuple(int(starts[a][idx[a]]) for a in range(3))
        res[idx] = dask.delayed(_label_block)(blocks[idx], origin)
    stats = [dask.delayed(_stats)(res[idx], corners) for idx in np.ndindex(*grid)]
    pair_keys, pair_tasks = [], []
    for idx in np.ndindex(*grid):
        for a in range(3):
            if idx[a] + 1 < grid[a]:
                nxt = tuple(i + (1 if k == a else 0) for k, i in enumerate(idx))
                pair_keys.append((idx, nxt))
                pair_tasks.append(dask.delayed(_face_pairs)(res[idx], res[nxt], a))
    stats, pairs = compute(stats, pair_tasks, client=client)
    flat = {idx: i for i, idx in enumerate(np.ndindex(*grid))}
    ns = np.array([s["n"] for s in stats], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(ns)[:-1]]).astype(np.int64)
    total = int(ns.sum())
    edges_a, edges_b = [], []
    for (i, j), p in zip(pair_keys, pairs):
        if len(p):
            edges_a.append(p[:, 0] + offsets[flat[i]])
            edges_b.append(p[:, 1] + offsets[flat[j]])
    comp, n = merge_provisional(edges_a, edges_b, total)
    boxes = np.zeros((n + 1, 6), dtype=np.int64)
    voxels = np.zeros(n + 1, dtype=np.int64)
    if total:
        ids = comp[1:]
        allb = np.concatenate([s["boxes"] for s in stats if s["n"]])
        boxes[:, :3] = np.iinfo(np.int64).max
        np.minimum.at(boxes[:, :3], ids, allb[:, :3])
        np.maximum.at(boxes[:, 3:], ids, allb[:, 3:])
        boxes[0] = 0
        voxels = np.bincount(ids, weights=np.concatenate([s["counts"] for s in stats if s["n"]]),
                             minlength=n + 1).astype(np.int64)
    corner_ids = {c: 0 for c in corners}
    for i, s in enumerate(stats):
        for c, v in s["corners"].items():
            corner_ids[c] = int(comp[v + offsets[i]]) if v else 0
    return _Comps(grid, offsets, ns, comp, n, boxes, voxels, corner_ids)


def _paint_block(block, lut):
    lab, n = ndimage.label(np.asarray(block, dtype=bool), structure=SIX_CONNECTED)
    return lut[lab] if n else np.full(np.shape(block), lut[0], dtype=bool)


def paint_dask(mask, comps: _Comps, keep: np.ndarray, *, invert: bool = False):
    """Lazy second pass: ``keep[component]`` (or its negation) of every voxel of ``mask`` (bool Dask array);
    each chunk task carries only its own slice of the table."""
    import dask
    import dask.array as da

    keep = np.asarray(keep, dtype=bool)
    blocks = mask.to_delayed()
    rows = np.empty(comps.grid, dtype=object)
    for i, idx in enumerate(np.ndindex(*comps.grid)):
        off, n = int(comps.offsets[i]), int(comps.ns[i])
        lut = np.zeros(n + 1, dtype=bool)
        lut[1:] = keep[comps.comp[off + 1: off + n + 1]]
        if invert:
            lut = ~lut
        shape = tuple(mask.chunks[a][idx[a]] for a in range(3))
        rows[idx] = da.from_delayed(dask.delayed(_paint_block)(blocks[idx], lut), shape, dtype=bool)
    return da.block(rows.tolist())


def keep_by_size(comps: _Comps, *, min_voxels: int = 1, min_extent: int = 1) -> np.ndarray:
    extent = comps.boxes[:, 3:] - comps.boxes[:, :3]
    keep = (extent >= min_extent).all(axis=1) & (comps.voxels >= min_voxels)
    keep[0] = False
    return keep


# ----------------------------------------------------------------------------------------------------------
# Algorithm 1
# ----------------------------------------------------------------------------------------------------------

def _erode_block(block, margin):
    return ndimage.binary_erosion(block, structure=SIX_CONNECTED, iterations=margin, border_value=1)


def _object(scan, *, corners: str, client):
    """Steps 6-8: ``(object (lazy bool), t1, corner, object voxels)``."""
    t1 = otsu_dask(scan, client=client)
    low = scan <= t1
    comps = components_dask(low, client=client)
    low_corners = [c for c in sorted(comps.corners) if comps.corners[c]]
    if not low_corners:
        warnings.warn("no corner of the scan is below the Otsu threshold: no background found, the whole "
                      "field is treated as the object", stacklevel=3)
        import dask.array as da

        return da.ones(scan.shape, dtype=bool, chunks=scan.chunks), t1, None, int(np.prod(scan.shape))
    chosen = low_corners if corners == "all" else low_corners[:1]
    keep = np.zeros(comps.n + 1, dtype=bool)
    for c in chosen:
        keep[comps.corners[c]] = True
    background = int(comps.voxels[keep].sum())
    return paint_dask(low, comps, keep, invert=True), t1, chosen[0], int(np.prod(scan.shape)) - background


def object_mask_dask(scan, *, corners: str = "one", client=None, chunks=DEFAULT_CHUNK, fill: bool = True):
    """Lazy watertight object mask (Algorithm 1 steps 6-8) of a scan (path, numpy or Dask array); equals
    ``labels.object_mask`` of ``normalise.fill_nonfinite(scan)`` (``fill``; else of the scan as it is)."""
    arr, _ = as_dask(scan, chunks=chunks)
    if fill:
        arr = fill_nonfinite_dask(arr, client=client)[0]
    return _object(arr, corners=corners, client=client)[0]


@dataclass
class DaskAlgorithm1Result:
    """Algorithm 1 on Dask: lazy ``pores`` and ``object`` (bool Dask arrays) and the numbers behind them."""

    pores: object
    object: object
    low_threshold: float
    pore_threshold: float
    corner: tuple | None
    candidate_voxels: int
    components: int
    pores_kept: int
    pore_voxels: int
    object_voxels: int
    min_extent: int
    surface_margin: int = 0

    def summary(self) -> dict:
        obj, pv = self.object_voxels, self.pore_voxels
        return {"low_threshold": self.low_threshold, "pore_threshold": self.pore_threshold,
                "corner": self.corner, "candidate_voxels": self.candidate_voxels,
                "components": self.components, "pores": self.pores_kept, "pore_voxels": pv,
                "object_voxels": obj, "porosity_percent": 100.0 * pv / obj if obj else 0.0,
                "min_extent": self.min_extent, "surface_margin": self.surface_margin, "connectivity": 6}


def label_dask(scan, *, client=None, chunks=DEFAULT_CHUNK, min_extent: int = 2, corners: str = "one",
               pore_threshold: float | None = None, surface_margin: int = 0, spacing=None,
               out=None) -> DaskAlgorithm1Result:
    """Algorithm 1 (``porelab.labels.run_algorithm1``) on a Dask cluster; the same mask, chunk by chunk.

    ``scan`` is a path (read lazily), a numpy or a Dask array; ``chunks`` sets the chunk edge. With ``out``
    (a ``.zarr`` path) the pore mask is written there (uint8, spacing kept, atomically) and the result's
    ``pores`` reads it back lazily. Memory per worker: a few chunks (about 10 bytes per chunk voxel for labelling)."""
    if int(min_extent) < 1:
        raise ConfigError(f"min_extent must be >= 1, got {min_extent}")
    margin = int(surface_margin)
    if margin < 0:
        raise ConfigError(f"surface_margin must be >= 0, got {surface_margin}")
    if corners not in ("one", "all"):
        raise ConfigError(f"corners must be 'one' or 'all', got {corners!r}")
    arr, spacing = as_dask(scan, chunks=_chunks_at_least(np.shape(scan) if not isinstance(scan, (str, os.PathLike))
                                                           else None, chunks, margin), spacing=spacing)
    if min(min(c) for c in arr.chunks) < max(margin, 1):
        arr = arr.rechunk(_chunks_at_least(arr.shape, chunks, margin))
    obj, t1, corner, n_obj = _object(arr, corners=corners, client=client)            # steps 6-8
    t2 = otsu_dask(arr, obj, client=client) if pore_threshold is None else float(pore_threshold)  # step 9
    inside = obj if margin <= 0 else obj.map_overlap(_erode_block, depth=margin, boundary="none",
                                                      margin=margin, dtype=bool)
    cand = (arr <= t2) & inside
    comps = components_dask(cand, client=client)                                     # step 10
    n_cand = int(comps.voxels.sum())
    if n_obj and n_cand > _CANDIDATE_WARN * n_obj:
        warnings.warn(f"Algorithm 1: {100 * n_cand / n_obj:.0f} % of the object is below the second Otsu "
                      f"threshold {t2:g}; too few pores for Otsu to separate them from the material, labels "
                      "are unreliable (set pore_threshold to override)", stacklevel=2)
    keep = keep_by_size(comps, min_voxels=1, min_extent=int(min_extent))            # steps 12-16
    pores = paint_dask(cand, comps, keep)                                            # step 17
    if out is not None:
        write_zarr_dask({out: pores}, spacing=spacing, client=client)
        pores = read_zarr_dask(out, bool)
    return DaskAlgorithm1Result(pores=pores, object=obj, low_threshold=float(t1), pore_threshold=float(t2),
                                corner=corner, candidate_voxels=n_cand, components=comps.n,
                                pores_kept=int(keep.sum()), pore_voxels=int(comps.voxels[keep].sum()),
                                object_voxels=n_obj, min_extent=int(min_extent), surface_margin=margin)


def _chunks_at_least(shape, chunks, depth: int):
    """``chunks`` as an int edge, or per axis with a short last chunk merged into the one before, so that no
    chunk is thinner than ``depth`` (map_overlap's halo must fit in the neighbouring chunk)."""
    if shape is None or not np.isscalar(chunks):
        return chunks
    out = []
    for s in shape:
        c = max(int(chunks), depth, 1)
        edges = list(range(0, int(s), c)) + [int(s)]
        sizes = [b - a for a, b in itertools.pairwise(edges)]
        if len(sizes) > 1 and sizes[-1] < max(depth, 1):
            last = sizes.pop()
            sizes[-1] += last
        out.append(tuple(sizes))
    return tuple(out)
