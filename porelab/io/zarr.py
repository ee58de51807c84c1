"""Zarr arrays and groups (``.zarr``), with the optional ``zarr`` package; spacing in ``attrs["spacing"]``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from porelab.errors import ScanError
from porelab.io._base import Spacing, as_spacing, short
from porelab.io.atomic import atomic_path
from porelab.io.volume import iter_slabs

_CHUNK = 64  # written chunks hold at most 64 voxels along each axis


def _zarr(path: Path, verb: str):
    try:
        import zarr
    except ImportError:
        raise ScanError(f"{path}: {verb} .zarr needs the optional 'zarr' package "
                        "(pip install 'porelab[zarr]')") from None
    return zarr


def read_zarr(path: Path, mmap: bool = False):
    """A zarr array, or a group's ``data`` (else first) array, loaded into memory."""
    zarr = _zarr(path, "reading")
    try:
        node = zarr.open(str(path), mode="r")
        if not hasattr(node, "shape"):  # a group: take 'data' or its first array
            names = list(node.array_keys())
            if not names:
                raise ScanError(f"{path}: zarr group holds no arrays")
            node = node["data" if "data" in names else names[0]]
        array = node[...]
        spacing = node.attrs.get("spacing")
    except ScanError:
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt file makes readers raise anything
        raise ScanError(f"{path}: not a readable zarr array ({short(exc)})") from None
    return array, (as_spacing(spacing, path) if spacing is not None else None), {"format": "zarr"}


def write_zarr(path: Path, array: np.ndarray, spacing: Spacing) -> None:
    """A zarr array written slab by slab into a temporary folder, then swapped in."""
    zarr = _zarr(path, "writing")
    with atomic_path(path, is_dir=True) as tmp:
        z = zarr.open(str(tmp), mode="w", shape=array.shape, dtype=array.dtype,
                      chunks=tuple(min(_CHUNK, s) for s in array.shape))
        for sl in iter_slabs(array.shape):
            z[sl] = np.asarray(array[sl])
        z.attrs["spacing"] = list(spacing)
