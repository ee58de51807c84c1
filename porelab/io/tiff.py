"""Multi-page TIFF files and folders of 2-D TIFF slices (tifffile).

Spacing comes from porelab's JSON description (``spacing`` [z, y, x], ``unit``) or from ImageJ's ``unit`` and
``spacing`` (z) with the X/YResolution tags (x, y). uint8/uint16/float32 volumes are written as ImageJ
hyperstacks so that Fiji sees the voxel size; other types carry it in tifffile's JSON description.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from porelab.errors import ScanError
from porelab.io._base import UNIT_TO_MM, Spacing, natural_key, short, truncated
from porelab.io.atomic import atomic_path

# Largest expansion of a TIFF segment per compression code (PackBits 64:1; LZW's 12-bit codes emit at most
# 4096 bytes; deflate 1032:1). Other codecs (JPEG, zstd, LZMA, ...) have no useful bound.
_TIFF_MAX_RATIO = {1: 1, 5: 4096 * 8 // 12, 8: 1032, 32946: 1032, 32773: 64}
_IMAGEJ_DTYPES = (np.uint8, np.uint16, np.float32)  # the types an ImageJ hyperstack can hold


def _tiff_spacing(tif) -> Spacing | None:
    """Spacing from porelab's JSON description, else from ImageJ's ``unit``/``spacing`` + X/YResolution."""
    shaped = getattr(tif, "shaped_metadata", None)
    if shaped:
        meta = shaped[0] or {}
        if "spacing" in meta and len(meta["spacing"]) == 3:
            scale = UNIT_TO_MM.get(str(meta.get("unit", "mm")).lower(), 1.0)
            return tuple(float(s) * scale for s in meta["spacing"])
    ij = tif.imagej_metadata
    if not ij or "unit" not in ij:
        return None
    scale = UNIT_TO_MM.get(str(ij["unit"]).strip().lower())
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
        raise truncated(path, promised, size, f"ImageJ header announces {images} images, {held} found")
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
            raise truncated(path, max(ends), size, f"page {page.index} lies past the end")
        ratio = _TIFF_MAX_RATIO.get(int(key.compression))
        if ratio is not None and sum(counts) * ratio < key.nbytes:
            raise truncated(path, key.nbytes, sum(counts), f"page {page.index}'s data"
                            + ("" if ratio == 1 else f", compressed; at most {ratio}-fold expansion"))


def read_tiff(path: Path, mmap: bool):
    """A multi-page TIFF as (array, spacing | None, meta); memory-mapped when uncompressed and ``mmap``."""
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
        raise ScanError(f"{path}: not a readable TIFF ({short(exc)})") from None
    return array, spacing, {"format": "tiff"}


def read_tiff_folder(path: Path, mmap: bool = False):
    """A folder of 2-D TIFF slices in natural order, stacked along z; spacing from the first slice.

    Every slice's header is checked (2-D, same shape and type, bytes present) before the stack is
    allocated. ``mmap`` is accepted for a uniform reader signature; the stack is always in memory.
    """
    import tifffile

    files = sorted((p for p in path.iterdir() if p.suffix.lower() in (".tif", ".tiff") and p.is_file()
                    and not p.name.startswith(".")), key=lambda p: natural_key(p.name))
    if not files:
        raise ScanError(f"{path}: folder holds no .tif/.tiff slices and no DICOM files")
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
            raise ScanError(f"{f}: not a readable TIFF slice ({short(exc)})") from None
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
            raise ScanError(f"{f}: not a readable TIFF slice ({short(exc)})") from None
    return array, spacing, {"format": "tiff-folder", "slices": len(files)}


def write_tiff(path: Path, array: np.ndarray, spacing: Spacing) -> None:
    """One multi-page TIFF, atomically (BigTIFF above 2 GB for the non-ImageJ types)."""
    import tifffile

    sz, sy, sx = spacing
    with atomic_path(path) as tmp:
        if array.dtype in _IMAGEJ_DTYPES:
            tifffile.imwrite(tmp, array, imagej=True, resolution=(1.0 / sx, 1.0 / sy),
                             metadata={"spacing": sz, "unit": "mm", "axes": "ZYX"})
        else:
            tifffile.imwrite(tmp, array, resolution=(1.0 / sx, 1.0 / sy),
                             metadata={"spacing": list(spacing), "unit": "mm", "axes": "ZYX"},
                             bigtiff=array.nbytes > 2**31)


def write_tiff_folder(path: Path, array: np.ndarray, spacing: Spacing) -> None:
    """A folder of ``slice_00000.tif``…, written in a temporary folder and swapped in (a porelab output)."""
    import tifffile

    sz, sy, sx = spacing
    ij = array.dtype in _IMAGEJ_DTYPES
    with atomic_path(path, is_dir=True, marker="volume") as tmp:
        for i in range(array.shape[0]):
            if ij:
                tifffile.imwrite(tmp / f"slice_{i:05d}.tif", np.asarray(array[i]), imagej=True,
                                 resolution=(1.0 / sx, 1.0 / sy), metadata={"spacing": sz, "unit": "mm"})
            else:
                tifffile.imwrite(tmp / f"slice_{i:05d}.tif", np.asarray(array[i]),
                                 metadata={"spacing": list(spacing), "unit": "mm"})
