"""Raw voxels (``.raw``, ``.vol``) described by a JSON sidecar or a Volume Graphics ``.vgi`` header.

The JSON sidecar ``<file>.json`` holds ``shape`` [z, y, x] (z slowest on disk), ``dtype``, ``spacing``
[z, y, x] in mm, ``endianness`` (little|big) and ``offset`` (bytes to skip). A ``.vgi`` header is INI-like
``key = value`` lines; its ``size`` and ``resolution`` are (x y z). The data file must hold exactly
``offset + z·y·x·itemsize`` bytes; it is memory-mapped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from porelab.errors import ScanError
from porelab.io._base import UNIT_TO_MM, Spacing, as_spacing, check_file, read_sidecar, short, truncated
from porelab.io.atomic import atomic_path

_VGI_TYPES = {("float", 32): "f4", ("float", 64): "f8", ("unsigned integer", 8): "u1",
              ("unsigned integer", 16): "u2", ("unsigned integer", 32): "u4", ("signed integer", 8): "i1",
              ("signed integer", 16): "i2", ("signed integer", 32): "i4", ("integer", 8): "i1",
              ("integer", 16): "i2", ("integer", 32): "i4", ("unsigned char", 8): "u1",
              ("unsigned short", 16): "u2", ("short", 16): "i2", ("int", 32): "i4", ("double", 64): "f8"}
_VGI_KINDS = {"f": "float", "u": "unsigned integer", "i": "signed integer"}


def _parse_vgi(path: Path) -> dict:
    """Parse a Volume Graphics ``.vgi`` header (INI-like ``key = values`` lines in ``{volume}``/``[file1]``/
    ``[geometry]`` blocks). Keys used: ``size`` (x y z), ``datatype``, ``bitsperelement``, ``name``,
    ``resolution`` (x y z), ``unit``, ``fileformat``. The first value of each key wins (first volume)."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise ScanError(f"{path}: cannot read .vgi header ({short(exc)})") from None
    keys: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if "=" not in line or line.startswith(("[", "{", "#", ";")):
            continue
        k, v = line.split("=", 1)
        keys.setdefault(k.strip().lower(), v.strip())
    if "size" not in keys:
        raise ScanError(f"{path}: .vgi header has no 'size' line")
    try:
        sx, sy, sz = (int(t) for t in keys["size"].split()[:3])
    except ValueError:
        raise ScanError(f"{path}: .vgi 'size' must be three integers (x y z), got {keys['size']!r}") from None
    dtype_name = " ".join(keys.get("datatype", "float").lower().split())
    bits = int(keys.get("bitsperelement", "32").split()[0])
    code = _VGI_TYPES.get((dtype_name, bits))
    if code is None:
        raise ScanError(f"{path}: unsupported .vgi datatype {dtype_name!r} with {bits} bits per element")
    spacing = None
    if "resolution" in keys:
        try:
            rx, ry, rz = (float(t) for t in keys["resolution"].split()[:3])
        except ValueError:
            raise ScanError(f"{path}: .vgi 'resolution' must be three numbers (x y z)") from None
        scale = UNIT_TO_MM.get(keys.get("unit", "mm").lower(), 1.0)
        spacing = (rz * scale, ry * scale, rx * scale)
    name = keys.get("name") or (path.stem + ".vol")
    endian = "big" if "big" in keys.get("byteorder", keys.get("endianness", "little")).lower() else "little"
    return {"shape": [sz, sy, sx], "dtype": code, "spacing": spacing, "data": path.parent / Path(name).name,
            "endianness": endian, "offset": int(keys.get("headersize", keys.get("offset", "0")).split()[0])}


def _raw_header(path: Path) -> tuple[dict, Path]:
    """Find the description of a raw file: ``<file>.json``, ``<stem>.json`` or ``<stem>.vgi``."""
    for side in (Path(str(path) + ".json"), path.with_suffix(".json")):
        if side.is_file():
            return read_sidecar(side), side
    vgi = path.with_suffix(".vgi")
    if vgi.is_file():
        return _parse_vgi(vgi), vgi
    raise ScanError(f"{path}: raw voxels need a header: {path.name}.json (shape [z,y,x], dtype, spacing) "
                    f"or {path.stem}.vgi next to it")


def _read_described(path: Path, header: dict, header_path: Path, mmap: bool):
    """The voxels of data file ``path`` as ``header`` describes them, after checking the file's size."""
    try:
        shape = tuple(int(s) for s in header["shape"])
        dtype = np.dtype(header["dtype"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ScanError(f"{header_path}: header needs 'shape' [z, y, x] and 'dtype' ({short(exc)})") from None
    if len(shape) != 3 or min(shape) <= 0:
        raise ScanError(f"{header_path}: shape {list(shape)} must be three positive sizes [z, y, x]")
    endian = str(header.get("endianness", "little")).lower()
    if endian not in ("little", "big"):
        raise ScanError(f"{header_path}: endianness must be 'little' or 'big', got {endian!r}")
    dtype = dtype.newbyteorder("<" if endian == "little" else ">")
    offset = int(header.get("offset", 0))
    data = Path(header.get("data", path))
    check_file(data)
    expected = offset + math.prod(shape) * dtype.itemsize  # Python ints: no overflow for absurd shapes
    actual = data.stat().st_size
    if actual < expected:
        raise truncated(data, expected, actual, f"{header_path.name}: {list(shape)} x {dtype.name} + {offset}")
    if actual != expected:
        raise ScanError(f"{data}: file holds {actual} bytes but header {header_path.name} promises "
                        f"{list(shape)} x {dtype.name} + {offset} = {expected} bytes")
    array = np.memmap(data, dtype=dtype, mode="r", offset=offset, shape=shape)
    if not mmap:
        array = np.array(array)
    if not dtype.isnative:
        array = array.astype(dtype.newbyteorder("="))
    spacing = header.get("spacing")
    spacing = as_spacing(spacing, header_path) if spacing is not None else None
    return array, spacing, {"format": "raw", "header": str(header_path)}


def read_raw(path: Path, mmap: bool):
    """A ``.raw``/``.vol`` file described by ``<file>.json``, ``<stem>.json`` or ``<stem>.vgi``."""
    header, header_path = _raw_header(path)
    return _read_described(path, header, header_path, mmap)


def read_vgi(path: Path, mmap: bool):
    """The data file a ``.vgi`` header names (default ``<stem>.vol``), as the header describes it."""
    header = _parse_vgi(path)
    return _read_described(header["data"], header, path, mmap)


def _write_le(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tofile(tmp)


def write_raw(path: Path, array: np.ndarray, spacing: Spacing) -> None:
    """Little-endian voxels in ``path`` and their description in ``<path>.json``."""
    _write_le(path, array)
    header = {"shape": list(array.shape), "dtype": array.dtype.newbyteorder("=").name,
              "spacing": list(spacing), "endianness": "little", "unit": "mm"}
    with atomic_path(Path(str(path) + ".json")) as tmp:
        tmp.write_text(json.dumps(header, indent=2) + "\n")


def write_vgi(path: Path, array: np.ndarray, spacing: Spacing) -> None:
    """A ``.vgi`` header and its little-endian data ``<stem>.vol`` (the data first, the header last)."""
    data = path.with_suffix(".vol")
    _write_le(data, array)
    z, y, x = array.shape
    sz, sy, sx = spacing
    kind, bits = _VGI_KINDS[array.dtype.kind], array.dtype.itemsize * 8
    text = (f"{{volume1}}\n[representation]\nsize = {x} {y} {z}\ndatatype = {kind}\n"
            f"datarange = 0 0\nbitsperelement = {bits}\n[file1]\nSize = {x} {y} {z}\n"
            f"Name = {data.name}\nDatatype = {kind}\nBitsPerElement = "
            f"{bits}\nFileFormat = raw\n[geometry]\nresolution = {sx} {sy} {sz}\n"
            "unit = mm\n")
    with atomic_path(path) as tmp:
        tmp.write_text(text)
