"""Helpers shared by the format readers: suffixes, spacing, the path check, one-line errors, and the check
that a file holds the bytes its header promises before anything is allocated."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import stat
from pathlib import Path

from porelab.errors import ScanError

Spacing = tuple[float, float, float]

# Length units found in TIFF/ImageJ descriptions and VGI headers, as millimetres per unit.
UNIT_TO_MM = {"mm": 1.0, "millimeter": 1.0, "millimetre": 1.0, "um": 1e-3, "µm": 1e-3, "μm": 1e-3,
              "\\u00b5m": 1e-3, "micron": 1e-3, "microns": 1e-3, "micrometer": 1e-3, "micrometre": 1e-3,
              "nm": 1e-6, "cm": 10.0, "m": 1000.0, "inch": 25.4, "in": 25.4}

# Largest expansion of a valid deflate stream (zlib, gzip): 258 output bytes per 2 bits, about 1032:1.
DEFLATE_MAX_RATIO = 1032
_BLOCK = 1 << 24  # compressed streams are counted in blocks of this many bytes (16 MB)


def suffix(path: Path) -> str:
    """The lower-case extension that selects the format (``.nii.gz`` counts as one)."""
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return path.suffix.lower()


def natural_key(name: str):
    """Sort key that orders ``s2`` before ``s10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def as_spacing(spacing, where, *, error: type[Exception] = ScanError) -> Spacing:
    """``spacing`` as three positive finite floats (z, y, x) in mm, else ``error`` (one line naming ``where``).

    Scan files raise ``ScanError`` (the file is at fault); options such as ``--spacing`` pass ``ConfigError``.
    """
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise error(f"{where}: spacing {spacing!r} is not three numbers (z, y, x) in mm") from None
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise error(f"{where}: spacing {list(values)} must be three finite numbers > 0 (z, y, x) in mm")
    return values


def short(exc: BaseException) -> str:
    """A library's exception text on one line, at most 160 characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def check_file(path: Path) -> None:
    """Refuse a missing path, an empty file and anything that is neither a regular file nor a folder.

    Runs before any reader opens ``path``: opening a FIFO blocks until a writer appears, and a device or
    socket is not a scan either.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ScanError(f"{path}: no such file or folder") from None
    except OSError as exc:
        raise ScanError(f"{path}: cannot access ({short(exc)})") from None
    if stat.S_ISDIR(st.st_mode):
        return
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "a special file")
        raise ScanError(f"{path}: is {kind}, not a regular file; give a scan file or a folder of slices")
    if st.st_size == 0:
        raise ScanError(f"{path}: file is empty")


def read_sidecar(path: Path) -> dict:
    """The JSON object of a sidecar file (``<file>.json``), else ScanError."""
    try:
        meta = json.loads(path.read_text())
    except Exception as exc:  # noqa: BLE001 - a corrupt file makes readers raise anything
        raise ScanError(f"{path}: sidecar is not valid JSON ({short(exc)})") from None
    if not isinstance(meta, dict):
        raise ScanError(f"{path}: sidecar must be a JSON object")
    return meta


def truncated(path: Path, promised: int, found: int, detail: str = "") -> ScanError:
    """The one-line error for a file that holds fewer bytes than its header says."""
    extra = f" ({detail})" if detail else ""
    return ScanError(f"{path}: truncated or unreadable: header promises {promised} bytes, "
                     f"file holds {found}{extra}")


def inflated_size(path: Path, start: int, codec: str, promised: int) -> int:
    """Number of bytes the compressed stream at ``start`` of ``path`` decompresses to, read in 16 MB blocks.

    ``codec`` is ``"gzip"``, ``"zlib"`` (zlib or gzip framing) or ``"bz2"``. Memory stays at one block
    whatever the size; a deflate stream too short to reach ``promised`` bytes even at deflate's maximum
    ratio is rejected without decompressing, and a stream cut short raises ScanError.
    """
    import bz2
    import gzip
    import zlib

    compressed = path.stat().st_size - start
    if codec != "bz2" and promised > compressed * DEFLATE_MAX_RATIO + (1 << 16):
        raise truncated(path, promised, compressed,
                        f"{codec}-compressed; deflate expands at most {DEFLATE_MAX_RATIO}-fold")
    total = 0
    try:
        with open(path, "rb") as raw:
            raw.seek(start)
            if codec == "zlib":
                d = zlib.decompressobj(47)  # 32 + 15: accept zlib or gzip framing
                while chunk := raw.read(_BLOCK):
                    while chunk:
                        total += len(d.decompress(chunk, _BLOCK))
                        chunk = d.unconsumed_tail
                    if d.eof:
                        break
                if not d.eof:
                    raise EOFError("compressed stream ends before its end marker")
            else:
                stream = gzip.GzipFile(fileobj=raw) if codec == "gzip" else bz2.BZ2File(raw)
                with stream:
                    while block := stream.read(_BLOCK):
                        total += len(block)
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise truncated(path, promised, total, f"{codec} stream broken after {total} bytes: {short(exc)}") from None
    return total


def check_layout(path: Path, promised: int, *, start: int = 0, codec: str = "raw", at_end: bool = False,
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
            raise truncated(path, promised + (0 if at_end else start), size, what)
    elif codec in ("gzip", "zlib", "bz2"):
        found = inflated_size(path, start, codec, promised)
        if found < promised:
            raise truncated(path, promised, found, f"after {codec} decompression")
    elif codec == "text" and size - start < 2 * promised - 1:
        raise truncated(path, 2 * promised - 1 + start, size, f"{promised} values as text")
    elif codec == "hex" and size - start < 2 * promised:
        raise truncated(path, 2 * promised + start, size, "hex-encoded")


@contextlib.contextmanager
def quiet_stderr():
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
