"""Zarr arrays and groups (``.zarr``, zarr ≥ 3, which also reads zarr v2 stores); spacing in
``attrs["spacing"]`` (mm, z y x). Needs the optional ``zarr`` package (``pip install 'porelab[cluster]'``).

Reading with ``mmap`` (the default of ``read_volume``) returns the zarr array itself: every slice reads
only the chunks it touches, like a memory map, so a 10⁹-voxel store is never loaded whole. Writing goes
slab by slab into a temporary folder that is renamed into place when complete.
"""

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
                        "(install porelab[cluster]: pip install 'porelab[cluster]')") from None
    return zarr


def read_zarr(path: Path, mmap: bool = False):
    """A zarr array, or a group's ``data`` (else first) array: lazy when ``mmap``, else loaded."""
    zarr = _zarr(path, "reading")
    try:
        node = zarr.open(str(path), mode="r")
        if not hasattr(node, "shape"):  # a group: take 'data' or its first array
            names = sorted(node.array_keys())
            if not names:
                raise ScanError(f"{path}: zarr group holds no arrays")
            node = node["data" if "data" in names else names[0]]
        spacing = node.attrs.get("spacing")
        array = node if mmap and node.ndim == 3 else node[...]
    except ScanError:
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt file makes readers raise anything
        raise ScanError(f"{path}: not a readable zarr array ({short(exc)})") from None
    return array, (as_spacing(spacing, path) if spacing is not None else None), {"format": "zarr"}


def write_zarr(path: Path, array: np.ndarray, spacing: Spacing) -> None:
    """A zarr array written slab by slab into a temporary folder, then swapped in."""
    zarr = _zarr(path, "writing")
    with atomic_path(path, is_dir=True) as tmp:
        z = zarr.create_array(str(tmp), shape=array.shape, dtype=array.dtype, overwrite=True,
                              chunks=tuple(min(_CHUNK, s) for s in array.shape),
                              attributes={"spacing": [float(s) for s in spacing]})
        for sl in iter_slabs(array.shape):
            z[sl] = np.asarray(array[sl])
