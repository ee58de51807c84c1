"""``segment_dask``: ``PoreModel.predict`` of a scan as chunks of a Dask array, score and mask written as zarr.

How the result equals the single-process ``PoreModel.predict`` (``tests/test_dask.py`` checks max |Δ| ≤ 1e-5):

* **The grid.** ``predict_volume`` puts patches at the global starts 0, s, 2s, … (s = patch · (1 − overlap))
  plus one patch flush with the end of each axis, and divides the summed outputs by the global weight sums.
  Chunk edges are multiples of s and no chunk is shorter than a patch (a short last chunk is merged into the
  one before), so the patches that touch a chunk start at most s before it and end at most s after it, the
  flush patch included: ``map_overlap`` with a depth of s (half a patch) hands every chunk all the voxels
  of those patches. Each chunk runs exactly those global patches (the same starts, the same batching order
  along z then y then x, so every voxel sums its contributions in the same order), divides by the same
  global weight sums and keeps its own voxels. Patches that straddle a chunk edge run in both neighbours:
  ((n + 1) / n)³ more forwards for n = chunk / s (1.2× for 16³ patches in 128³ chunks, 1.1× in 256³).
  Differences to ``predict_volume`` come only from the net's float32 arithmetic on other batch companions.
* **The normalisation** is fitted by ``Normalisation.refit`` on the same strided subsample of the raw scan
  (read lazily from the chunks), so the levels are identical.
* **Missing voxels** (NaN/±inf) are filled slice by slice from the nearest finite voxel of their slice, as
  ``porelab.normalise.fill_nonfinite`` does (chunks span whole (y, x) planes for this step); a slice with no
  finite voxel takes the filled nearest slice, computed on the client. Their score is NaN.
* **Skin suppression** uses Algorithm 1's object mask of the filled scan from ``porelab.distributed``
  (merged histograms and components across chunks: the same mask), eroded by a ball of ``skin`` voxels
  with ``map_overlap`` (halo ``skin``, the field's edges inside), as ``porelab.postprocess.interior_mask``.
* **Unsupervised models** are not run here: their post-processing (eq. (2)-(3)) fits λ*, σ* with up to 13
  whole-volume Gaussian blurs of the reconstruction's derivatives and a global random sample; a
  ``ConfigError`` says so (:func:`check_dask_model`). Supervised models (the ``porelab-supervised``
  production model) run completely.
* **Outputs** go to zarr stores (``porelab.distributed.write_zarr_dask``) or to ``.npy`` files that the
  workers fill block by block (:func:`write_npy_dask`); either way no process holds the whole score.

Each worker process loads the model once: tasks carry the model folder's path and a process-wide cache keyed
by (folder, modification time, normalisation levels) keeps the net and its prepared inference copy.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import threading
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from porelab.errors import ConfigError
from porelab.inference.grid import _weight_sum, grid_starts, window_1d

__all__ = ["check_dask_model", "plan_chunks", "segment_dask", "write_npy_dask"]

_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()


def _load(folder: str):
    """The ``PoreModel`` of ``folder``, loaded once per process (and again only when the folder changes)."""
    from porelab.model import PoreModel

    key = (folder, os.stat(Path(folder) / "model.json").st_mtime_ns)
    with _CACHE_LOCK:
        model = _CACHE.get(key)
        if model is None:
            model = PoreModel.load(folder)
            _CACHE.clear()
            _CACHE[key] = model
    return model


_FNS: dict = {}


def _patch_fn(folder: str, norm_dict: dict, device_name: str | None = None):
    from porelab.normalise import Normalisation
    from porelab.runtime import get_device

    model = _load(folder)
    key = (id(model), tuple(sorted((k, str(v)) for k, v in norm_dict.items())), device_name)
    with _CACHE_LOCK:
        fn = _FNS.get(key)
        if fn is None:
            device = get_device(device_name)
            fn = (model.patch_fn(Normalisation.from_dict(norm_dict), device), device)
            _FNS.clear()
            _FNS[key] = fn
    return fn


# ----------------------------------------------------------------------------------------------------------
# the chunk plan
# ----------------------------------------------------------------------------------------------------------

def _axis_plan(size: int, patch: int, step: int, target: int):
    """Chunk sizes along one axis (multiples of ``step``, none shorter than the patch) and the halo depth
    that gives every chunk all the voxels of every global patch that touches it."""
    starts = grid_starts(size, patch, step)
    if size <= patch:
        return (size,), 0, starts
    c = max(-(-int(target) // step) * step, -(-patch // step) * step)
    edges = list(range(0, size, c)) + [size]
    sizes = [b - a for a, b in itertools.pairwise(edges)]
    if len(sizes) > 1 and sizes[-1] < patch:
        last = sizes.pop()
        sizes[-1] += last
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    depth = 0
    for c0, c1 in itertools.pairwise(bounds):
        touching = [s for s in starts if s < c1 and s + patch > c0]
        depth = max(depth, int(c0 - touching[0]), int(touching[-1] + patch - c1))
    if depth > min(sizes):
        raise ConfigError(f"chunks of {c} voxels are too small for patch {patch}")
    return tuple(sizes), depth, starts


def plan_chunks(shape, patch, overlap: float = 0.5, target: int = 256):
    """``(chunks, depth, starts)`` per axis for the exact chunked grid (module docstring); ``depth`` is half a
    patch whenever the patch is even and the overlap one half."""
    p = (int(patch),) * 3 if np.isscalar(patch) else tuple(int(v) for v in patch)
    steps = tuple(max(1, round(pi * (1.0 - overlap))) for pi in p)
    tg = (int(target),) * 3 if np.isscalar(target) else tuple(int(v) for v in target)
    plans = [_axis_plan(int(s), pi, st, t) for s, pi, st, t in zip(shape, p, steps, tg)]
    return tuple(pl[0] for pl in plans), tuple(pl[1] for pl in plans), tuple(pl[2] for pl in plans)


# ----------------------------------------------------------------------------------------------------------
# one chunk
# ----------------------------------------------------------------------------------------------------------

def _infer_block(block, *, folder, norm, grid, device=None, block_id=None):
    """The score of one chunk (with its halo; the halo part is zero and trimmed by ``map_overlap``)."""
    import torch

    from porelab.inference.fast import malloc_trim

    if block_id is None or block.size == 0:      # Dask's meta probe
        return np.zeros(block.shape, dtype=np.float32)
    fn, device = _patch_fn(folder, norm, device)
    p, batch_size = grid["patch"], grid["batch_size"]
    sts, c0s, c1s, b0s, r0s = [], [], [], [], []
    for a in range(3):
        i = block_id[a]
        c0, c1 = int(grid["bounds"][a][i]), int(grid["bounds"][a][i + 1])
        b0 = max(c0 - grid["depth"][a], 0)
        st = [s for s in grid["starts"][a] if s < c1 and s + p[a] > c0]
        sts.append(st)
        c0s.append(c0), c1s.append(c1), b0s.append(b0), r0s.append(st[0])
    src = np.asarray(block, dtype=np.float32)
    pad = [(0, max(0, p[a] - src.shape[a])) if grid["shape"][a] < p[a] else (0, 0) for a in range(3)]
    if any(w for _, w in pad):
        src = np.pad(src, pad, mode="edge")       # an axis shorter than the patch, as predict_volume
    ext = [sts[a][-1] + p[a] - r0s[a] for a in range(3)]
    reg = src[tuple(slice(r0s[a] - b0s[a], r0s[a] - b0s[a] + ext[a]) for a in range(3))]
    acc = torch.zeros(tuple(ext), dtype=torch.float32)
    win3 = grid["win3"]
    win3 = None if win3 is None else torch.from_numpy(win3).to(device)
    pz, py, px = p
    yx = [(ys, xs) for ys in sts[1] for xs in sts[2]]
    nb = min(batch_size, len(yx))
    inp = torch.empty((nb, 1, pz, py, px), dtype=torch.float32)
    inp_np = inp.numpy()
    with torch.inference_mode():
        for zs in sts[0]:
            z = zs - r0s[0]
            for b0 in range(0, len(yx), nb):
                chunk = yx[b0:b0 + nb]
                for k, (ys, xs) in enumerate(chunk):     # a short tail keeps the previous batch's patches
                    y, x = ys - r0s[1], xs - r0s[2]
                    inp_np[k, 0] = reg[z:z + pz, y:y + py, x:x + px]
                out = fn(inp.to(device))
                if isinstance(out, (list, tuple)):
                    out = out[0]
                out = out[: len(chunk)].float()
                if win3 is not None:
                    out = out * win3
                out = out.cpu()
                for k, (ys, xs) in enumerate(chunk):
                    y, x = ys - r0s[1], xs - r0s[2]
                    acc[z:z + pz, y:y + py, x:x + px] += out[k, 0]
    crop = tuple(slice(c0s[a] - r0s[a], c1s[a] - r0s[a]) for a in range(3))
    res = acc[crop]
    w = grid["wsum"]
    w_yx = torch.from_numpy(np.multiply.outer(w[1][c0s[1]:c1s[1]], w[2][c0s[2]:c1s[2]]).astype(np.float32))
    res.div_(w_yx).div_(torch.from_numpy(w[0][c0s[0]:c1s[0]])[:, None, None])
    full = np.zeros(block.shape, dtype=np.float32)
    full[tuple(slice(c0s[a] - b0s[a], c1s[a] - b0s[a]) for a in range(3))] = res.numpy()
    del acc, inp
    malloc_trim()
    return full


def _erode_ball(block, skin):
    from scipy.ndimage import binary_erosion
    from skimage.morphology import ball

    return binary_erosion(block, structure=ball(skin).astype(bool), border_value=1)


# ----------------------------------------------------------------------------------------------------------
# the whole scan
# ----------------------------------------------------------------------------------------------------------

def check_dask_model(model) -> None:
    """A one-line ``ConfigError`` unless ``model`` (a ``PoreModel``) can be scored chunk by chunk: supervised
    models only. An unsupervised model's eq. (2)-(3) surface compensation (Iuso et al. 2024) fits λ*, σ* on
    the whole scan (up to 13 whole-volume Gaussian blurs of the reconstruction's derivatives, one global
    random sample), which has no chunked counterpart here."""
    if model.kind != "supervised":
        raise ConfigError(f"Dask runs supervised models only; {model.name} is unsupervised: its eq. (2)-(3) "
                          "surface compensation fits lambda and sigma on the whole scan (up to 13 whole-volume "
                          "Gaussian blurs and one global sample); score it in one process (porelab segment "
                          "without --scheduler, or PoreModel.predict)")


def segment_dask(scan, model, *, client=None, chunks: int = 256, out=None, threshold: float | None = None,
                 spacing=None, skin: int | None = None, device: str | None = None, with_object: bool = False):
    """``PoreModel.predict`` and ``score >= threshold`` of a scan on a Dask cluster, chunk by chunk.

    Parameters
    ----------
    scan : path, numpy array or Dask array
        A path is read lazily (``porelab.distributed.LazyScan``; zarr, ``.npy``, raw and uncompressed TIFF
        are memory-mapped), so no process ever holds the whole scan.
    model : PoreModel or a model folder
        A folder is loaded once per worker process; a ``PoreModel`` is saved to a temporary folder next to
        ``out`` (or in the temporary directory) for the workers, and removed afterwards.
    client : distributed.Client, optional
        Default: Dask's current scheduler.
    chunks : int
        Target chunk edge in voxels, rounded to a multiple of the grid step (module docstring).
    out : folder, optional
        Write ``out/score.zarr`` (float32) and ``out/mask.zarr`` (uint8) with the scan's spacing, atomically.
    threshold : float, optional
        Decision threshold; default the model's.
    skin : int, optional
        Voxels below the part's surface that are not scored; default the model's.
    device : str, optional
        Torch device of the workers ("cpu", "cuda", …); default CUDA where a worker has it.
    with_object : bool
        Also return ``object``: Algorithm 1's watertight object of the filled scan (lazy bool Dask array;
        the same graph as the skin's, so writing both in one pass computes it once).

    Returns
    -------
    dict
        ``score``, ``mask`` (lazy Dask arrays; read back from ``out`` when written), ``object`` (or None),
        ``info`` (normalisation levels, ``nonfinite_voxels``, ``skin``, ``chunks``, ``depth``, ``threshold``)
        and ``out``.
    """
    from porelab.distributed import (
        _object,
        as_dask,
        fill_nonfinite_dask,
        read_zarr_dask,
        require_cluster,
        write_zarr_dask,
    )
    from porelab.model import PoreModel

    _, da = require_cluster()
    tmp_model = None
    if isinstance(model, PoreModel):
        parent = Path(out).resolve().parent if out is not None else None
        if parent is not None:
            parent.mkdir(parents=True, exist_ok=True)
        tmp_model = Path(tempfile.mkdtemp(prefix=".porelab-model-", dir=parent))
        folder = str(model.save(tmp_model / "model"))
    else:
        folder = str(Path(model).resolve())
        model = _load(folder)
    try:
        check_dask_model(model)
        skin = model.skin if skin is None else int(skin)
        if skin < 0:
            raise ConfigError(f"skin must be >= 0 voxels, got {skin}")
        arr, spacing = as_dask(scan, chunks=chunks, spacing=spacing)
        cks, depth, starts = plan_chunks(arr.shape, model.patch, model.overlap, chunks)
        arr = arr.rechunk(cks)
        # no dask.config.set(scheduler=client): a LocalCluster's nannies copy dask's config into the workers
        # they restart, and a Client in it cannot be pickled (the restart of a killed worker would fail);
        # Normalisation.refit's strided read runs on the default scheduler (a Client is the default once made)
        norm = model.normalisation.refit(arr)                  # the same strided subsample as predict
        filled, missing, n_missing = fill_nonfinite_dask(arr, client=client)
        keep = obj = None
        if skin > 0 or with_object:
            obj = _object(filled, corners="one", client=client)[0]
        if skin > 0:
            keep = obj.map_overlap(_erode_ball, depth=skin, boundary="none", skin=skin, dtype=bool)
        p = (model.patch,) * 3
        wins = [window_1d(pi, model.weighting) for pi in p]
        grid = {"patch": p, "batch_size": model.batch_size, "shape": arr.shape, "depth": depth,
                "starts": starts, "bounds": [np.concatenate([[0], np.cumsum(c)]) for c in cks],
                "wsum": [_weight_sum(s, st, w) for s, st, w in zip(arr.shape, starts, wins)],
                "win3": None if model.weighting == "average" else
                np.multiply.outer(np.multiply.outer(wins[0], wins[1]), wins[2]).astype(np.float32)}
        score = filled.map_overlap(_infer_block, depth=dict(enumerate(depth)), boundary="none",
                                   folder=folder, norm=norm.to_dict(), grid=grid, device=device,
                                   dtype=np.float32,
                                   meta=np.empty((0, 0, 0), dtype=np.float32))
        if keep is not None:
            score = score * keep                                  # apply_skin: 0 outside the interior
        if missing is not None:
            score = da.where(missing, np.float32(np.nan), score)
        thr = model.threshold if threshold is None else float(threshold)
        mask = score >= thr
        if out is not None:
            from porelab.io import atomic_path

            with atomic_path(Path(out), is_dir=True, marker="segment") as tmp:
                write_zarr_dask({tmp / "score.zarr": score, tmp / "mask.zarr": mask}, spacing=spacing,
                                client=client)
            score = read_zarr_dask(Path(out) / "score.zarr")
            mask = read_zarr_dask(Path(out) / "mask.zarr", bool)
    finally:
        if tmp_model is not None:
            if out is None:      # the lazy results still need the folder: remove it when the process ends
                import atexit

                atexit.register(shutil.rmtree, tmp_model, ignore_errors=True)
            else:
                shutil.rmtree(tmp_model, ignore_errors=True)
    info = {"air": norm.air, "material": norm.material, "skin": skin, "nonfinite_voxels": n_missing,
            "chunks": [list(c) for c in cks], "depth": list(depth), "threshold": thr}
    return {"score": score, "mask": mask, "object": obj if with_object else None, "info": info,
            "out": None if out is None else Path(out)}


# ----------------------------------------------------------------------------------------------------------
# .npy outputs written by the workers
# ----------------------------------------------------------------------------------------------------------

class _NpyTarget:
    """A ``.npy`` file as a ``dask.array.store`` target: each task writes its block's rows with ``os.pwrite``
    in its own process. Disjoint byte ranges written by plain writes stay correct when several processes (or
    machines, on a shared file system) fill one file, which a memory map's page write-back does not promise."""

    def __init__(self, path: str, shape, dtype, offset: int):
        self.path, self.shape, self.dtype, self.offset = path, tuple(shape), np.dtype(dtype), int(offset)

    def __setitem__(self, key, value):
        value = np.ascontiguousarray(value, dtype=self.dtype)
        if value.size == 0:
            return
        _, Y, X = self.shape
        z0, y0, x0 = (int(k.start or 0) for k in key)
        bz, by, bx = value.shape
        item = self.dtype.itemsize
        fd = os.open(self.path, os.O_WRONLY)
        try:
            if bx == X and by == Y:               # whole planes: one contiguous range
                os.pwrite(fd, value.tobytes(), self.offset + z0 * Y * X * item)
                return
            rows = value.reshape(bz, by * bx) if bx == X else value
            for i in range(bz):
                if bx == X:                       # whole rows: one range per plane
                    os.pwrite(fd, rows[i].tobytes(), self.offset + ((z0 + i) * Y + y0) * X * item)
                    continue
                for j in range(by):
                    os.pwrite(fd, rows[i, j].tobytes(), self.offset + (((z0 + i) * Y + y0 + j) * X + x0) * item)
        finally:
            os.close(fd)


def write_npy_dask(arrays: dict, *, client=None) -> list[Path]:
    """Write ``{path: dask array}`` as ``.npy`` files (bool as uint8) in one pass; the workers write their
    blocks into the files, so the paths must be on a file system every worker sees. Each file is written
    under a temporary name and renamed when every file is complete: a failure leaves nothing under any path."""
    import dask.array as da

    from porelab.distributed import compute
    from porelab.io import atomic_path

    with ExitStack() as stack:
        sources, targets = [], []
        for path, arr in arrays.items():
            tmp = Path(stack.enter_context(atomic_path(Path(path)))).resolve()
            dtype = np.dtype(np.uint8) if arr.dtype == bool else np.dtype(arr.dtype)
            header = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=arr.shape)
            offset = header.offset
            del header
            sources.append(arr.astype(dtype) if dtype != arr.dtype else arr)
            targets.append(_NpyTarget(str(tmp), arr.shape, dtype, offset))
        compute(da.store(sources, targets, lock=False, compute=False), client=client)
    return [Path(p) for p in arrays]
