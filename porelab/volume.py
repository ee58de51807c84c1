"""Read and write CT scans and masks in every common format, as numpy arrays (z, y, x) with spacing in mm.

Formats (chosen by extension, or a folder of 2-D slices):

========================  ==========================================================================
``.tif`` / ``.tiff``      multi-page TIFF; spacing from ImageJ metadata (``unit``, ``spacing``,
                          X/YResolution) or porelab's own JSON description; memory-mapped when possible
folder of ``*.tif``       2-D TIFF slices in natural order (``s2.tif`` before ``s10.tif``)
``.npy``                  memory-mapped; spacing from an optional sidecar ``<file>.npy.json``
``.nii`` / ``.nii.gz``    SimpleITK; its (x, y, z) spacing is turned into (z, y, x)
``.mhd`` / ``.mha``       SimpleITK (MetaImage)
``.nrrd``                 SimpleITK
``.raw`` / ``.vol``       raw voxels described by a JSON sidecar ``<file>.json`` (``shape`` [z, y, x],
                          ``dtype``, ``spacing`` [z, y, x] mm, ``endianness`` little|big, ``offset`` bytes)
                          or by a Volume Graphics ``.vgi`` header next to it (``<stem>.vgi``)
``.vgi``                  Volume Graphics header: ``size`` (x y z), ``datatype`` + ``bitsperelement``,
                          ``resolution`` (x y z), ``unit``, ``name`` (the data file)
``.zarr``                 only when the optional ``zarr`` package is installed
========================  ==========================================================================

Every reader raises :class:`porelab.errors.ScanError` with one line naming the file and the problem, and
compares the size a header promises with the bytes present before allocating anything (compressed streams
are counted in 16 MB blocks); a FIFO, socket or device is refused before it is opened.
Every writer goes through :func:`porelab._io.atomic_path`, so a failed write leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from porelab._io import atomic_path
from porelab.errors import ScanError

__all__ = ["SCAN_SUFFIXES", "Volume", "iter_slabs", "read_mask", "read_volume", "scan_stats", "write_volume"]

SCAN_SUFFIXES = (".tif", ".tiff", ".npy", ".nii", ".nii.gz", ".mhd", ".mha", ".nrrd", ".raw", ".vol", ".vgi",
                 ".zarr")
_SITK_SUFFIXES = (".nii", ".nii.gz", ".mhd", ".mha", ".nrrd")
_SAMPLE_VOXELS = 1 << 24  # validation looks at about this many voxels first (strided slices)
_SLAB_VOXELS = 1 << 24  # chunk size of every whole-volume pass: 16 M voxels (64 MB as float32)

Spacing = tuple[float, float, float]


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


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------

def _suffix(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return path.suffix.lower()


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _as_spacing(spacing, where) -> Spacing:
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise ScanError(f"{where}: spacing {spacing!r} is not three numbers (z, y, x) in mm") from None
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ScanError(f"{where}: spacing {spacing!r} must be three positive numbers (z, y, x) in mm")
    return values


def iter_slabs(shape, max_voxels: int = _SLAB_VOXELS) -> Iterator[slice]:
    """Yield z-slices that cut a (z, y, x) volume into slabs of at most ``max_voxels`` voxels (≥ 1 slice)."""
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
        from tqdm import tqdm

        slabs = tqdm(slabs, desc="stats", unit="slab", leave=False)
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


def _validate(array: np.ndarray, path: Path, *, mask: bool = False) -> np.ndarray:
    """Shape/dtype/content checks shared by scans and masks; returns the (possibly squeezed) array."""
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
    ok = _finite_nonconstant(sample)
    if ok is None:
        stats = scan_stats(array)
        if stats["nan_count"] == array.size:
            raise ScanError(f"{path}: every voxel is NaN or infinite")
        if stats["min"] == stats["max"]:
            raise ScanError(f"{path}: volume is constant (every finite voxel = {stats['min']:g}); "
                            "not a CT scan")
    return array


def _finite_nonconstant(sample: np.ndarray):
    if sample.dtype == bool:
        sample = sample.view(np.uint8)
    if np.issubdtype(sample.dtype, np.floating):
        sample = sample[np.isfinite(sample)]
    if sample.size and sample.min() != sample.max():
        return True
    return None


def _check_file(path: Path) -> None:
    """Refuse a missing path, an empty file and anything that is neither a regular file nor a folder.

    Runs before any reader opens ``path``: opening a FIFO blocks until a writer appears, and a device or
    socket is not a scan either.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ScanError(f"{path}: no such file or folder") from None
    except OSError as exc:
        raise ScanError(f"{path}: cannot access ({_short(exc)})") from None
    if stat.S_ISDIR(st.st_mode):
        return
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "a special file")
        raise ScanError(f"{path}: is {kind}, not a regular file; give a scan file or a folder of slices")
    if st.st_size == 0:
        raise ScanError(f"{path}: file is empty")


# ----------------------------------------------------------------------------------------------------------
# readers: each returns (array, spacing | None, meta)
# ----------------------------------------------------------------------------------------------------------

_UNIT_TO_MM = {"mm": 1.0, "millimeter": 1.0, "millimetre": 1.0, "um": 1e-3, "µm": 1e-3, "μm": 1e-3,
               "\\u00b5m": 1e-3, "micron": 1e-3, "microns": 1e-3, "micrometer": 1e-3, "micrometre": 1e-3,
               "nm": 1e-6, "cm": 10.0, "m": 1000.0, "inch": 25.4, "in": 25.4}


def _tiff_spacing(tif) -> Spacing | None:
    """Spacing from porelab's JSON description, else from ImageJ's ``unit``/``spacing`` + X/YResolution."""
    shaped = getattr(tif, "shaped_metadata", None)
    if shaped:
        meta = shaped[0] or {}
        if "spacing" in meta and len(meta["spacing"]) == 3:
            scale = _UNIT_TO_MM.get(str(meta.get("unit", "mm")).lower(), 1.0)
            return tuple(float(s) * scale for s in meta["spacing"])
    ij = tif.imagej_metadata
    if not ij or "unit" not in ij:
        return None
    scale = _UNIT_TO_MM.get(str(ij["unit"]).strip().lower())
    if scale is None:  # "pixel" or an unknown unit: no physical size
        return None
    tags = tif.pages[0].tags

    def res(name):
        tag = tags.get(name)
        if tag is None:
            return None
        num, den = tag.value if isinstance(tag.value, tuple) else (tag.value, 1)
        return den / num if num else None

    sx, sy = res("XResolution"), res("YResolution")
    if sx is None:
        return None
    sy = sy or sx
    sz = float(ij.get("spacing", sx))
    return (sz * scale, sy * scale, sx * scale)


def _read_tiff(path: Path, mmap: bool):
    import tifffile

    try:
        with _quiet_tifffile() as messages, tifffile.TiffFile(path) as tif:
            spacing = _tiff_spacing(tif)
            if not tif.series:
                raise ScanError(f"{path}: TIFF holds no images")
            _check_tiff(tif, path, messages)
            if mmap:
                try:
                    array = tifffile.memmap(path, mode="r")
                except Exception:  # noqa: BLE001 - compressed or non-contiguous: read it instead
                    array = tif.asarray()
            else:
                array = tif.asarray()
    except ScanError:
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt file makes readers raise anything
        raise ScanError(f"{path}: not a readable TIFF ({_short(exc)})") from None
    return array, spacing, {"format": "tiff"}


def _read_tiff_folder(path: Path):
    import tifffile

    files = sorted((p for p in path.iterdir() if p.suffix.lower() in (".tif", ".tiff") and p.is_file()
                    and not p.name.startswith(".")), key=lambda p: _natural_key(p.name))
    if not files:
        raise ScanError(f"{path}: folder holds no .tif/.tiff slices")
    # First pass reads only the headers: every slice is checked (shape, type, bytes present) before the
    # (slices, y, x) array is allocated.
    shape = dtype = spacing = None
    for f in files:
        try:
            with _quiet_tifffile() as messages, tifffile.TiffFile(f) as tif:
                if not tif.series:
                    raise ScanError(f"{f}: TIFF slice holds no image")
                _check_tiff(tif, f, messages)
                s_shape, s_dtype = tuple(tif.series[0].shape), tif.series[0].dtype
                if shape is None:
                    spacing, shape, dtype = _tiff_spacing(tif), s_shape, s_dtype
        except ScanError:
            raise
        except Exception as exc:  # noqa: BLE001 - a corrupt file makes readers raise anything
            raise ScanError(f"{f}: not a readable TIFF slice ({_short(exc)})") from None
        if len(s_shape) != 2:
            raise ScanError(f"{f}: slice is {len(s_shape)}-D with shape {s_shape}; a folder needs 2-D slices")
        if s_shape != shape or s_dtype != dtype:
            raise ScanError(f"{f}: slice {s_shape} {s_dtype} differs from the first slice {shape} {dtype}")
    array = np.empty((len(files),) + shape, dtype=dtype)
    for i, f in enumerate(files):
        try:
            with _quiet_tifffile():
                array[i] = tifffile.imread(f)
        except Exception as exc:  # noqa: BLE001 - a corrupt file makes readers raise anything
            raise ScanError(f"{f}: not a readable TIFF slice ({_short(exc)})") from None
    return array, spacing, {"format": "tiff-folder", "slices": len(files)}


def _read_npy(path: Path, mmap: bool):
    _check_npy(path)
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - a corrupt file makes readers raise anything
        raise ScanError(f"{path}: not a valid .npy array file ({_short(exc)})") from None
    if not isinstance(array, np.ndarray):
        raise ScanError(f"{path}: holds no array")
    spacing = None
    side = Path(str(path) + ".json")
    if side.is_file():
        spacing = _sidecar(side).get("spacing")
        spacing = _as_spacing(spacing, side) if spacing is not None else None
    return array, spacing, {"format": "npy"}


def _read_sitk(path: Path):
    import SimpleITK as sitk

    # The header's promise is checked against the bytes present before SimpleITK allocates the array:
    # it would allocate the full size for any header, and zero-fills a truncated NIfTI without a word.
    if _suffix(path) in (".nii", ".nii.gz"):
        _check_nifti_length(path)
    elif _suffix(path) == ".nrrd":
        _check_nrrd(path)
    else:
        _check_metaimage(path)
    try:
        with _quiet_stderr():  # ITK's MetaIO prints its own complaints on stderr; ours is the one line
            image = sitk.ReadImage(str(path))
            array = sitk.GetArrayFromImage(image)
    except Exception as exc:  # noqa: BLE001 - a corrupt file makes readers raise anything
        text = str(exc)
        if "No such file or directory" in text:  # MetaIO's words for any data it cannot read
            raise ScanError(f"{path}: truncated or unreadable {_suffix(path)} file (SimpleITK could not "
                            "read its data)") from None
        text = text.split("ITK ERROR:")[-1].split(":", 1)[-1] if "ITK ERROR:" in text else text
        raise ScanError(f"{path}: not readable as {_suffix(path)} ({_short(Exception(text))})") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ScanError(f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                        "a scalar volume is needed")
    spacing = tuple(float(s) for s in reversed(image.GetSpacing()))  # SimpleITK (x, y, z) -> (z, y, x)
    if len(spacing) != 3:
        spacing = None
    return array, spacing, {"format": _suffix(path).lstrip(".")}


@contextlib.contextmanager
def _quiet_tifffile():
    """tifffile logs every corrupt tag at ERROR level; a corrupt file is reported by us in one line instead.

    Yields the list of messages tifffile logged (nothing reaches the console), so a broken page chain,
    which tifffile only logs, can be told apart from a short but intact file.
    """
    import logging

    class _Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    messages: list[str] = []
    logger = logging.getLogger("tifffile")
    handler, old = _Collect(logging.WARNING), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = old


# Largest expansion of a TIFF segment per compression code (PackBits 64:1; LZW's 12-bit codes emit at most
# 4096 bytes; deflate 1032:1). Other codecs (JPEG, zstd, LZMA, ...) have no useful bound.
_TIFF_MAX_RATIO = {1: 1, 5: 4096 * 8 // 12, 8: 1032, 32946: 1032, 32773: 64}


def _check_tiff(tif, path: Path, messages: list[str]) -> None:
    """Before any pixel is read: every page's data lie inside the file, uncompressed pages hold all their
    bytes, compressed ones could expand to their size, and an ImageJ file holds every image it announces."""
    size = path.stat().st_size
    series = tif.series[0]
    first = series.keyframe
    ij = tif.imagej_metadata or {}
    images = int(ij.get("images", 0) or 0)
    held = series.size // max(first.size, 1)
    if images > held and first.dataoffsets:
        promised = first.dataoffsets[0] + images * first.nbytes
        raise _truncated(path, promised, size, f"ImageJ header announces {images} images, {held} found")
    if any("page" in m and ("offset" in m or "tag list" in m) for m in messages):
        raise ScanError(f"{path}: truncated or corrupt TIFF: the chain of pages breaks after "
                        f"{len(tif.pages)} pages (file holds {size} bytes)")
    for page in series.pages:
        if page is None:
            continue
        key = page.keyframe
        counts = [int(c) for c in page.databytecounts]
        ends = [int(o) + c for o, c in zip(page.dataoffsets, counts, strict=False)]
        if ends and max(ends) > size:
            raise _truncated(path, max(ends), size, f"page {page.index} lies past the end")
        ratio = _TIFF_MAX_RATIO.get(int(key.compression))
        if ratio is not None and sum(counts) * ratio < key.nbytes:
            raise _truncated(path, key.nbytes, sum(counts), f"page {page.index}'s data"
                             + ("" if ratio == 1 else f", compressed; at most {ratio}-fold expansion"))


@contextlib.contextmanager
def _quiet_stderr():
    """Silence C-level writes to file descriptor 2 (library chatter) for the duration of the block."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _check_nifti_length(path: Path) -> None:
    """Raise ScanError when a NIfTI-1/2 file (plain or gzipped) holds fewer voxel bytes than its header says.

    A plain file is judged by its size; a gzipped one is decompressed in 16 MB blocks (memory stays flat)
    after a quick test that deflate could expand it to the promised size at all.
    """
    import gzip
    import struct

    opener = gzip.open if _suffix(path) == ".nii.gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(540)
            if len(head) < 348:
                raise ScanError(f"{path}: truncated NIfTI header ({len(head)} bytes)")
            for order in "<>":
                size = struct.unpack(order + "i", head[:4])[0]
                if size in (348, 540):
                    break
            else:
                raise ScanError(f"{path}: not a NIfTI file (bad header size)")
            if size == 348:
                dims = struct.unpack(order + "8h", head[40:56])
                bitpix = struct.unpack(order + "h", head[72:74])[0]
                offset = int(struct.unpack(order + "f", head[108:112])[0])
            else:
                dims = struct.unpack(order + "8q", head[16:80])
                bitpix = struct.unpack(order + "h", head[14:16])[0]
                offset = struct.unpack(order + "q", head[168:176])[0]
            ndim = max(1, min(int(dims[0]), 7))
            expected = max(offset, 0) + math.prod(max(1, int(d)) for d in dims[1:ndim + 1]) * max(bitpix, 0) // 8
    except ScanError:
        raise
    except (OSError, EOFError, struct.error) as exc:
        raise ScanError(f"{path}: truncated or corrupt NIfTI file ({_short(exc)})") from None
    _check_layout(path, expected, codec="gzip" if _suffix(path) == ".nii.gz" else "raw")


def _truncated(path: Path, promised: int, found: int, detail: str = "") -> ScanError:
    """The one-line error for a file that holds fewer bytes than its header says."""
    extra = f" ({detail})" if detail else ""
    return ScanError(f"{path}: truncated or unreadable: header promises {promised} bytes, "
                     f"file holds {found}{extra}")


# Largest expansion of a valid deflate stream (zlib, gzip): 258 output bytes per 2 bits, about 1032:1.
_DEFLATE_MAX_RATIO = 1032


def _inflated_size(path: Path, start: int, codec: str, promised: int) -> int:
    """Number of bytes the compressed stream at ``start`` of ``path`` decompresses to, read in 16 MB blocks.

    ``codec`` is ``"gzip"``, ``"zlib"`` (zlib or gzip framing) or ``"bz2"``. Memory stays at one block
    whatever the size; a deflate stream too short to reach ``promised`` bytes even at deflate's maximum
    ratio is rejected without decompressing, and a stream cut short raises ScanError.
    """
    import bz2
    import gzip
    import zlib

    compressed = path.stat().st_size - start
    if codec != "bz2" and promised > compressed * _DEFLATE_MAX_RATIO + (1 << 16):
        raise _truncated(path, promised, compressed,
                         f"{codec}-compressed; deflate expands at most {_DEFLATE_MAX_RATIO}-fold")
    total = 0
    try:
        with open(path, "rb") as raw:
            raw.seek(start)
            if codec == "zlib":
                d = zlib.decompressobj(47)  # 32 + 15: accept zlib or gzip framing
                while chunk := raw.read(1 << 24):
                    while chunk:
                        total += len(d.decompress(chunk, 1 << 24))
                        chunk = d.unconsumed_tail
                    if d.eof:
                        break
                if not d.eof:
                    raise EOFError("compressed stream ends before its end marker")
            else:
                stream = gzip.GzipFile(fileobj=raw) if codec == "gzip" else bz2.BZ2File(raw)
                with stream:
                    while block := stream.read(1 << 24):
                        total += len(block)
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise _truncated(path, promised, total, f"{codec} stream broken after {total} bytes: {_short(exc)}") from None
    return total


def _check_layout(path: Path, promised: int, *, start: int = 0, codec: str = "raw", at_end: bool = False,
                  what: str = "") -> None:
    """Raise ScanError unless ``path`` holds the ``promised`` data bytes after ``start``.

    ``codec``: ``raw`` (file size), ``gzip``/``zlib``/``bz2`` (decompressed size, streamed),
    ``text`` (at least one digit and one separator per value: ``promised`` counts values) or
    ``hex`` (two characters per byte). ``at_end``: the data are the last ``promised`` bytes of the file.
    """
    size = path.stat().st_size
    if codec == "raw":
        found = size if at_end else size - start
        if found < promised:
            raise _truncated(path, promised + (0 if at_end else start), size, what)
    elif codec in ("gzip", "zlib", "bz2"):
        found = _inflated_size(path, start, codec, promised)
        if found < promised:
            raise _truncated(path, promised, found, f"after {codec} decompression")
    elif codec == "text" and size - start < 2 * promised - 1:
        raise _truncated(path, 2 * promised - 1 + start, size, f"{promised} values as text")
    elif codec == "hex" and size - start < 2 * promised:
        raise _truncated(path, 2 * promised + start, size, "hex-encoded")


def _data_file(header: Path, name: str) -> Path:
    """The data file a detached header names (relative to the header's folder), checked to be readable."""
    data = Path(name) if Path(name).is_absolute() else header.parent / name
    if not data.exists():
        raise ScanError(f"{header}: data file {data} named in the header does not exist")
    _check_file(data)
    return data


_NRRD_SIZES = {1: "signed char|int8|int8_t|uchar|unsigned char|uint8|uint8_t",
               2: "short|short int|signed short|signed short int|int16|int16_t|ushort|unsigned short|"
                  "unsigned short int|uint16|uint16_t",
               4: "int|signed int|int32|int32_t|uint|unsigned int|uint32|uint32_t|float",
               8: "longlong|long long|long long int|signed long long|signed long long int|int64|int64_t|"
                  "ulonglong|unsigned long long|unsigned long long int|uint64|uint64_t|double"}
_NRRD_ITEMSIZE = {name: size for size, names in _NRRD_SIZES.items() for name in names.split("|")}


def _read_text_header(path: Path, stop) -> tuple[list[str], int]:
    """Lines of a text header up to and including the line for which ``stop(line)`` is true (or EOF), and
    the byte offset just after it. Reads at most 1 MB, so a binary file is not scanned to its end."""
    lines: list[str] = []
    with open(path, "rb") as f:
        while f.tell() < (1 << 20):
            raw = f.readline(1 << 16)
            if not raw:
                break
            line = raw.decode("latin-1").rstrip("\r\n")
            lines.append(line)
            if stop(line):
                break
        return lines, f.tell()


def _check_nrrd(path: Path) -> None:
    """Compare an NRRD header's sizes × type with the data present (attached or ``data file``), before
    SimpleITK allocates the array. Multi-file data (``LIST`` or a file pattern) are left to SimpleITK."""
    lines, end = _read_text_header(path, lambda line: line.strip() == "")
    if not lines or not lines[0].startswith("NRRD000"):
        return  # not an NRRD header: SimpleITK's own message follows
    fields: dict[str, str] = {}
    for line in lines[1:]:
        if line.startswith("#") or ":=" in line or ":" not in line:
            continue
        key, value = line.split(":", 1)
        fields.setdefault(key.strip().lower(), value.strip())
    try:
        sizes = [int(s) for s in fields["sizes"].split()]
        kind = " ".join(fields["type"].lower().split())
        itemsize = int(fields["block size"]) if kind == "block" else _NRRD_ITEMSIZE[kind]
        skip = int(fields.get("byte skip", "0"))
    except (KeyError, ValueError):
        return  # an incomplete header: SimpleITK names the missing field
    values = math.prod(sizes)
    data, start = path, end
    name = fields.get("data file", fields.get("datafile"))
    if name is not None:
        if name.split()[0] == "LIST" or len(name.split()) > 1:
            return
        data, start = _data_file(path, name), 0
    encoding = fields.get("encoding", "raw").lower()
    codec = {"raw": "raw", "gz": "gzip", "gzip": "gzip", "bz2": "bz2", "bzip2": "bz2", "txt": "text",
             "text": "text", "ascii": "text", "hex": "hex"}.get(encoding)
    if codec is None:
        return
    if codec == "text":
        _check_layout(data, values, start=start, codec="text")
    elif codec == "raw" and skip == -1:
        _check_layout(data, values * itemsize, codec="raw", at_end=True)
    elif codec == "raw":
        _check_layout(data, values * itemsize, start=start + max(skip, 0))
    else:  # a byte skip in a compressed file counts decompressed bytes
        _check_layout(data, values * itemsize + max(skip, 0), start=start, codec=codec)


# MetaIO element sizes (MET_LONG/MET_ULONG are 4 bytes in MetaIO); *_ARRAY variants have the same size.
_MET_ITEMSIZE = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_ASCII_CHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2,
                 "MET_INT": 4, "MET_UINT": 4, "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8,
                 "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8}


def _check_metaimage(path: Path) -> None:
    """Compare a MetaImage (.mha/.mhd) header's DimSize × ElementType with the data present (LOCAL or a
    data file, raw or zlib-compressed), before SimpleITK allocates the array. ``LIST`` and file patterns
    are left to SimpleITK."""
    lines, end = _read_text_header(path, lambda line: line.split("=", 1)[0].strip().lower() == "elementdatafile")
    fields: dict[str, str] = {}
    for line in lines:
        if "=" in line:
            key, value = line.split("=", 1)
            fields.setdefault(key.strip().lower(), value.strip())
    if "elementdatafile" not in fields:
        return  # not a MetaImage header: SimpleITK's own message follows
    try:
        ndims = int(fields["ndims"])
        sizes = [int(s) for s in fields["dimsize"].split()[:ndims]]
        itemsize = _MET_ITEMSIZE[fields["elementtype"].upper().removesuffix("_ARRAY")]
        channels = int(fields.get("elementnumberofchannels", "1"))
        skip = int(fields.get("headersize", "0"))
    except (KeyError, ValueError):
        return  # an incomplete header: SimpleITK names the missing field
    values = math.prod(sizes) * channels
    name = fields["elementdatafile"]
    data, start = path, end
    if name.upper() != "LOCAL":
        if name.split()[0].upper() == "LIST" or "%" in name:
            return
        data, start = _data_file(path, name), max(skip, 0)
    if fields.get("compresseddata", "false").lower() == "true":
        _check_layout(data, values * itemsize, start=start, codec="zlib")
    elif fields.get("binarydata", "true").lower() == "false":
        _check_layout(data, values, start=start, codec="text")
    elif skip == -1:
        _check_layout(data, values * itemsize, codec="raw", at_end=True)
    else:
        _check_layout(data, values * itemsize, start=start)


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
            raise ScanError(f"{path}: not a NumPy .npy file (corrupt header: {_short(exc)})") from None
        offset = f.tell()
    if dtype.hasobject:
        raise ScanError(f"{path}: .npy holds Python objects (dtype {dtype}); only numeric arrays are read")
    _check_layout(path, math.prod(shape) * dtype.itemsize, start=offset, what=f"{list(shape)} x {dtype}")


def _sidecar(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except Exception as exc:  # noqa: BLE001 - a corrupt file makes readers raise anything
        raise ScanError(f"{path}: sidecar is not valid JSON ({_short(exc)})") from None
    if not isinstance(meta, dict):
        raise ScanError(f"{path}: sidecar must be a JSON object")
    return meta


_VGI_TYPES = {("float", 32): "f4", ("float", 64): "f8", ("unsigned integer", 8): "u1",
              ("unsigned integer", 16): "u2", ("unsigned integer", 32): "u4", ("signed integer", 8): "i1",
              ("signed integer", 16): "i2", ("signed integer", 32): "i4", ("integer", 8): "i1",
              ("integer", 16): "i2", ("integer", 32): "i4", ("unsigned char", 8): "u1",
              ("unsigned short", 16): "u2", ("short", 16): "i2", ("int", 32): "i4", ("double", 64): "f8"}


def _parse_vgi(path: Path) -> dict:
    """Parse a Volume Graphics ``.vgi`` header (INI-like ``key = values`` lines in ``{volume}``/``[file1]``/
    ``[geometry]`` blocks). Keys used: ``size`` (x y z), ``datatype``, ``bitsperelement``, ``name``,
    ``resolution`` (x y z), ``unit``, ``fileformat``. The first value of each key wins (first volume)."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise ScanError(f"{path}: cannot read .vgi header ({_short(exc)})") from None
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
        scale = _UNIT_TO_MM.get(keys.get("unit", "mm").lower(), 1.0)
        spacing = (rz * scale, ry * scale, rx * scale)
    name = keys.get("name") or (path.stem + ".vol")
    endian = "big" if "big" in keys.get("byteorder", keys.get("endianness", "little")).lower() else "little"
    return {"shape": [sz, sy, sx], "dtype": code, "spacing": spacing, "data": path.parent / Path(name).name,
            "endianness": endian, "offset": int(keys.get("headersize", keys.get("offset", "0")).split()[0])}


def _raw_header(path: Path) -> tuple[dict, Path]:
    """Find the description of a raw file: ``<file>.json``, ``<stem>.json`` or ``<stem>.vgi``."""
    for side in (Path(str(path) + ".json"), path.with_suffix(".json")):
        if side.is_file():
            return _sidecar(side), side
    vgi = path.with_suffix(".vgi")
    if vgi.is_file():
        return _parse_vgi(vgi), vgi
    raise ScanError(f"{path}: raw voxels need a header: {path.name}.json (shape [z,y,x], dtype, spacing) "
                    f"or {path.stem}.vgi next to it")


def _read_raw(path: Path, header: dict, header_path: Path, mmap: bool):
    try:
        shape = tuple(int(s) for s in header["shape"])
        dtype = np.dtype(header["dtype"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ScanError(f"{header_path}: header needs 'shape' [z, y, x] and 'dtype' ({_short(exc)})") from None
    if len(shape) != 3 or min(shape) <= 0:
        raise ScanError(f"{header_path}: shape {list(shape)} must be three positive sizes [z, y, x]")
    endian = str(header.get("endianness", "little")).lower()
    if endian not in ("little", "big"):
        raise ScanError(f"{header_path}: endianness must be 'little' or 'big', got {endian!r}")
    dtype = dtype.newbyteorder("<" if endian == "little" else ">")
    offset = int(header.get("offset", 0))
    data = Path(header.get("data", path))
    _check_file(data)
    expected = offset + math.prod(shape) * dtype.itemsize  # Python ints: no overflow for absurd shapes
    actual = data.stat().st_size
    if actual < expected:
        raise _truncated(data, expected, actual, f"{header_path.name}: {list(shape)} x {dtype.name} + {offset}")
    if actual != expected:
        raise ScanError(f"{data}: file holds {actual} bytes but header {header_path.name} promises "
                        f"{list(shape)} x {dtype.name} + {offset} = {expected} bytes")
    array = np.memmap(data, dtype=dtype, mode="r", offset=offset, shape=shape)
    if not mmap:
        array = np.array(array)
    if not dtype.isnative:
        array = array.astype(dtype.newbyteorder("="))
    spacing = header.get("spacing")
    spacing = _as_spacing(spacing, header_path) if spacing is not None else None
    return array, spacing, {"format": "raw", "header": str(header_path)}


def _read_zarr(path: Path):
    try:
        import zarr
    except ImportError:
        raise ScanError(f"{path}: reading .zarr needs the optional 'zarr' package "
                        "(pip install 'porelab[zarr]')") from None
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
        raise ScanError(f"{path}: not a readable zarr array ({_short(exc)})") from None
    return array, (_as_spacing(spacing, path) if spacing is not None else None), {"format": "zarr"}


def _read_any(path: Path, mmap: bool):
    path = Path(path)
    _check_file(path)
    suf = _suffix(path)
    if suf == ".zarr":
        return _read_zarr(path)
    if path.is_dir():
        return _read_tiff_folder(path)
    if suf in (".tif", ".tiff"):
        return _read_tiff(path, mmap)
    if suf == ".npy":
        return _read_npy(path, mmap)
    if suf in _SITK_SUFFIXES:
        return _read_sitk(path)
    if suf == ".vgi":
        header = _parse_vgi(path)
        return _read_raw(header["data"], header, path, mmap)
    if suf in (".raw", ".vol"):
        header, hpath = _raw_header(path)
        return _read_raw(path, header, hpath, mmap)
    raise ScanError(f"{path}: unknown scan format {suf or '(no extension)'}; "
                    f"known: {', '.join(SCAN_SUFFIXES)} or a folder of TIFF slices")


def read_volume(path, *, spacing=None, mmap: bool = True) -> Volume:
    """Read a CT scan as a (z, y, x) array with its voxel spacing in mm.

    Parameters
    ----------
    path : str or Path
        A file in any format listed in the module docstring, or a folder of 2-D TIFF slices.
    spacing : 3 floats, optional
        Voxel size (z, y, x) in mm; overrides the file's metadata.
    mmap : bool
        Memory-map ``.npy``, uncompressed TIFF and raw files instead of loading them (read-only).

    Returns
    -------
    Volume
        ``spacing_known`` is False when neither the file nor ``spacing`` gave a voxel size.

    Raises
    ------
    ScanError
        Missing path, empty or truncated file, unreadable content, not 3-D, all NaN, or constant.
    """
    path = Path(path)
    array, file_spacing, meta = _read_any(path, mmap)
    array = _validate(array, path)
    if spacing is not None:
        return Volume(array, _as_spacing(spacing, path), path, True, meta)
    if file_spacing is not None:
        return Volume(array, _as_spacing(file_spacing, path), path, True, meta)
    return Volume(array, (1.0, 1.0, 1.0), path, False, meta)


def read_mask(path, *, like=None, with_spacing: bool = False):
    """Read a binary mask (any scan format) as a bool (z, y, x) array; non-zero voxels are True.

    An all-zero mask is valid (a part without pores). ``like`` (an array or shape) checks the shape.
    With ``with_spacing=True`` returns ``(mask, spacing)``, spacing (mm, z, y, x) or None if the file
    has none.
    """
    path = Path(path)
    array, spacing, _ = _read_any(path, mmap=True)
    array = _validate(array, path, mask=True)
    if np.issubdtype(array.dtype, np.floating):
        out = np.zeros(array.shape, dtype=bool)
        for sl in iter_slabs(array.shape):
            block = np.asarray(array[sl])
            out[sl] = np.nan_to_num(block, nan=0.0) != 0
    else:
        out = np.asarray(array) != 0
    if like is not None:
        shape = tuple(like.shape) if hasattr(like, "shape") else tuple(like)
        if out.shape != shape:
            raise ScanError(f"{path}: mask shape {out.shape} differs from the scan's {shape}")
    if with_spacing:
        return out, (_as_spacing(spacing, path) if spacing is not None else None)
    return out


# ----------------------------------------------------------------------------------------------------------
# writers
# ----------------------------------------------------------------------------------------------------------

def write_volume(path, array, *, spacing=(1.0, 1.0, 1.0)) -> Path:
    """Write a (z, y, x) array in the format given by ``path``'s extension, atomically.

    A path without an extension writes a folder of 2-D TIFF slices ``slice_00000.tif``….
    Spacing (mm, z, y, x) is stored in the format's own metadata (ImageJ tags for TIFF, the header for
    NIfTI/MHD/NRRD/VGI, the JSON sidecar for raw) and, for ``.npy``, in a sidecar ``<file>.npy.json``
    unless it is (1, 1, 1). Booleans are written as uint8.

    Returns the path written.
    """
    path = Path(path)
    array = np.asarray(array) if not isinstance(array, np.memmap) else array
    if array.ndim != 3:
        raise ScanError(f"{path}: refusing to write a {array.ndim}-D array; a 3-D (z, y, x) volume is needed")
    spacing = _as_spacing(spacing, path)
    if array.dtype == bool:
        array = array.view(np.uint8)
    suf = _suffix(path)
    if suf in (".tif", ".tiff"):
        _write_tiff(path, array, spacing)
    elif suf == "" and not path.is_file():
        _write_tiff_folder(path, array, spacing)
    elif suf == ".npy":
        with atomic_path(path) as tmp:
            np.save(tmp, array)
        side = Path(str(path) + ".json")
        if spacing != (1.0, 1.0, 1.0):
            with atomic_path(side) as tmp:
                tmp.write_text(json.dumps({"spacing": list(spacing), "unit": "mm"}) + "\n")
        elif side.exists():
            side.unlink()
    elif suf in _SITK_SUFFIXES:
        _write_sitk(path, array, spacing)
    elif suf in (".raw", ".vol"):
        with atomic_path(path) as tmp:
            np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tofile(tmp)
        header = {"shape": list(array.shape), "dtype": array.dtype.newbyteorder("=").name,
                  "spacing": list(spacing), "endianness": "little", "unit": "mm"}
        with atomic_path(Path(str(path) + ".json")) as tmp:
            tmp.write_text(json.dumps(header, indent=2) + "\n")
    elif suf == ".vgi":
        _write_vgi(path, array, spacing)
    elif suf == ".zarr":
        _write_zarr(path, array, spacing)
    else:
        raise ScanError(f"{path}: unknown output format {suf or '(no extension)'}; "
                        f"known: {', '.join(SCAN_SUFFIXES)} or a folder (no extension)")
    return path


def _write_tiff(path: Path, array: np.ndarray, spacing: Spacing) -> None:
    import tifffile

    sz, sy, sx = spacing
    with atomic_path(path) as tmp:
        if array.dtype in (np.uint8, np.uint16, np.float32):  # ImageJ hyperstack: Fiji sees the voxel size
            tifffile.imwrite(tmp, array, imagej=True, resolution=(1.0 / sx, 1.0 / sy),
                             metadata={"spacing": sz, "unit": "mm", "axes": "ZYX"})
        else:  # other dtypes: tifffile's JSON description carries the spacing
            tifffile.imwrite(tmp, array, resolution=(1.0 / sx, 1.0 / sy),
                             metadata={"spacing": list(spacing), "unit": "mm", "axes": "ZYX"},
                             bigtiff=array.nbytes > 2**31)


def _write_tiff_folder(path: Path, array: np.ndarray, spacing: Spacing) -> None:
    import tifffile

    sz, sy, sx = spacing
    ij = array.dtype in (np.uint8, np.uint16, np.float32)
    with atomic_path(path, is_dir=True, marker="volume") as tmp:
        for i in range(array.shape[0]):
            if ij:
                tifffile.imwrite(tmp / f"slice_{i:05d}.tif", np.asarray(array[i]), imagej=True,
                                 resolution=(1.0 / sx, 1.0 / sy), metadata={"spacing": sz, "unit": "mm"})
            else:
                tifffile.imwrite(tmp / f"slice_{i:05d}.tif", np.asarray(array[i]),
                                 metadata={"spacing": list(spacing), "unit": "mm"})


def _write_sitk(path: Path, array: np.ndarray, spacing: Spacing) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(tuple(reversed(spacing)))  # (z, y, x) -> SimpleITK (x, y, z)
    if _suffix(path) == ".mhd":
        # A .mhd header names its data file, so write both under their final names in a temporary folder
        # beside the target and move the data first, the header last.
        import tempfile

        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{path.stem}.", dir=path.parent) as tmpdir:
            sitk.WriteImage(image, str(Path(tmpdir) / path.name))
            for f in sorted(Path(tmpdir).iterdir(), key=lambda p: p.suffix.lower() == ".mhd"):
                os.replace(f, path.parent / f.name)
        return
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp))


def _write_vgi(path: Path, array: np.ndarray, spacing: Spacing) -> None:
    kinds = {"f": "float", "u": "unsigned integer", "i": "signed integer"}
    data = path.with_suffix(".vol")
    with atomic_path(data) as tmp:
        np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tofile(tmp)
    z, y, x = array.shape
    sz, sy, sx = spacing
    text = (f"{{volume1}}\n[representation]\nsize = {x} {y} {z}\ndatatype = {kinds[array.dtype.kind]}\n"
            f"datarange = 0 0\nbitsperelement = {array.dtype.itemsize * 8}\n[file1]\nSize = {x} {y} {z}\n"
            f"Name = {data.name}\nDatatype = {kinds[array.dtype.kind]}\nBitsPerElement = "
            f"{array.dtype.itemsize * 8}\nFileFormat = raw\n[geometry]\nresolution = {sx} {sy} {sz}\n"
            "unit = mm\n")
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _write_zarr(path: Path, array: np.ndarray, spacing: Spacing) -> None:
    try:
        import zarr
    except ImportError:
        raise ScanError(f"{path}: writing .zarr needs the optional 'zarr' package "
                        "(pip install 'porelab[zarr]')") from None
    with atomic_path(path, is_dir=True) as tmp:
        z = zarr.open(str(tmp), mode="w", shape=array.shape, dtype=array.dtype,
                      chunks=tuple(min(64, s) for s in array.shape))
        for sl in iter_slabs(array.shape):
            z[sl] = np.asarray(array[sl])
        z.attrs["spacing"] = list(spacing)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."
