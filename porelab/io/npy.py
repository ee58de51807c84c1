"""NumPy ``.npy`` files, memory-mapped, never unpickled; spacing in an optional sidecar ``<file>.npy.json``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from porelab.errors import ScanError
from porelab.io._base import Spacing, as_spacing, check_layout, read_sidecar, short
from porelab.io.atomic import atomic_path


def _sidecar_path(path: Path) -> Path:
    return Path(str(path) + ".json")


def _check_npy(path: Path) -> None:
    """Check the .npy signature, header and size before ``np.load`` (which would take text for a pickle,
    and without a memory map would allocate the whole array before finding the file short)."""
    fmt = np.lib.format
    with open(path, "rb") as f:
        try:
            version = fmt.read_magic(f)
        except ValueError:
            raise ScanError(f"{path}: not a NumPy .npy file (it does not start with the .npy signature)") from None
        try:
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = fmt.read_array_header_2_0(f)
            else:
                shape, _, dtype = fmt._read_array_header(f, version)
        except Exception as exc:  # noqa: BLE001 - a corrupt header makes numpy raise anything
            raise ScanError(f"{path}: not a NumPy .npy file (corrupt header: {short(exc)})") from None
        offset = f.tell()
    if dtype.hasobject:
        raise ScanError(f"{path}: .npy holds Python objects (dtype {dtype}); only numeric arrays are read")
    check_layout(path, math.prod(shape) * dtype.itemsize, start=offset, what=f"{list(shape)} x {dtype}")


def read_npy(path: Path, mmap: bool):
    """A ``.npy`` array (memory-mapped read-only when ``mmap``) and the sidecar's spacing, if any."""
    _check_npy(path)
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - a corrupt file makes readers raise anything
        raise ScanError(f"{path}: not a valid .npy array file ({short(exc)})") from None
    if not isinstance(array, np.ndarray):
        raise ScanError(f"{path}: holds no array")
    spacing = None
    side = _sidecar_path(path)
    if side.is_file():
        spacing = read_sidecar(side).get("spacing")
        spacing = as_spacing(spacing, side) if spacing is not None else None
    return array, spacing, {"format": "npy"}


def write_npy(path: Path, array: np.ndarray, spacing: Spacing) -> None:
    """``np.save`` atomically; the sidecar is written when spacing ≠ (1, 1, 1) and a stale one removed."""
    with atomic_path(path) as tmp:
        np.save(tmp, array)
    side = _sidecar_path(path)
    if spacing != (1.0, 1.0, 1.0):
        with atomic_path(side) as tmp:
            tmp.write_text(json.dumps({"spacing": list(spacing), "unit": "mm"}) + "\n")
    elif side.exists():
        side.unlink()
