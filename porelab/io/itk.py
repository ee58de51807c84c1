"""NIfTI (``.nii``, ``.nii.gz``), MetaImage (``.mhd``, ``.mha``) and NRRD through SimpleITK.

SimpleITK orders spacing (x, y, z); porelab's is (z, y, x), so it is reversed both ways. Before SimpleITK
sees a file, the voxel bytes its header promises are compared with the bytes present: SimpleITK would
allocate the header's full size for any header, and zero-fills a truncated NIfTI without a word.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from porelab.errors import ScanError
from porelab.io._base import Spacing, check_file, check_layout, quiet_stderr, short, suffix
from porelab.io.atomic import atomic_path


def read_itk(path: Path, mmap: bool = False):
    """A scalar 3-D image as (array, spacing (z, y, x) | None, meta); ``mmap`` is not supported by ITK."""
    import SimpleITK as sitk

    suf = suffix(path)
    if suf in (".nii", ".nii.gz"):
        _check_nifti_length(path)
    elif suf == ".nrrd":
        _check_nrrd(path)
    else:
        _check_metaimage(path)
    try:
        with quiet_stderr():  # ITK's MetaIO prints its own complaints on stderr; ours is the one line
            image = sitk.ReadImage(str(path))
            array = sitk.GetArrayFromImage(image)
    except Exception as exc:  # noqa: BLE001 - a corrupt file makes readers raise anything
        text = str(exc)
        if "No such file or directory" in text:  # MetaIO's words for any data it cannot read
            raise ScanError(f"{path}: truncated or unreadable {suf} file (SimpleITK could not "
                            "read its data)") from None
        text = text.split("ITK ERROR:")[-1].split(":", 1)[-1] if "ITK ERROR:" in text else text
        raise ScanError(f"{path}: not readable as {suf} ({short(Exception(text))})") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ScanError(f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                        "a scalar volume is needed")
    spacing = tuple(float(s) for s in reversed(image.GetSpacing()))  # SimpleITK (x, y, z) -> (z, y, x)
    if len(spacing) != 3:
        spacing = None
    return array, spacing, {"format": suf.lstrip(".")}


def write_itk(path: Path, array: np.ndarray, spacing: Spacing) -> None:
    """Write through SimpleITK, atomically; ``.mhd`` writes its header and its ``.raw`` data file."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(tuple(reversed(spacing)))  # (z, y, x) -> SimpleITK (x, y, z)
    if suffix(path) == ".mhd":
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


# ------------------------------------------------------------------------------------------------ NIfTI

def _check_nifti_length(path: Path) -> None:
    """Raise ScanError when a NIfTI-1/2 file (plain or gzipped) holds fewer voxel bytes than its header says.

    A plain file is judged by its size; a gzipped one is decompressed in 16 MB blocks (memory stays flat)
    after a quick test that deflate could expand it to the promised size at all.
    """
    import gzip
    import struct

    gz = suffix(path) == ".nii.gz"
    opener = gzip.open if gz else open
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
        raise ScanError(f"{path}: truncated or corrupt NIfTI file ({short(exc)})") from None
    check_layout(path, expected, codec="gzip" if gz else "raw")


# ------------------------------------------------------------------------------- text headers (NRRD, MHA)

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


def _data_file(header: Path, name: str) -> Path:
    """The data file a detached header names (relative to the header's folder), checked to be readable."""
    data = Path(name) if Path(name).is_absolute() else header.parent / name
    if not data.exists():
        raise ScanError(f"{header}: data file {data} named in the header does not exist")
    check_file(data)
    return data


_NRRD_SIZES = {1: "signed char|int8|int8_t|uchar|unsigned char|uint8|uint8_t",
               2: "short|short int|signed short|signed short int|int16|int16_t|ushort|unsigned short|"
                  "unsigned short int|uint16|uint16_t",
               4: "int|signed int|int32|int32_t|uint|unsigned int|uint32|uint32_t|float",
               8: "longlong|long long|long long int|signed long long|signed long long int|int64|int64_t|"
                  "ulonglong|unsigned long long|unsigned long long int|uint64|uint64_t|double"}
_NRRD_ITEMSIZE = {name: size for size, names in _NRRD_SIZES.items() for name in names.split("|")}


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
        check_layout(data, values, start=start, codec="text")
    elif codec == "raw" and skip == -1:
        check_layout(data, values * itemsize, codec="raw", at_end=True)
    elif codec == "raw":
        check_layout(data, values * itemsize, start=start + max(skip, 0))
    else:  # a byte skip in a compressed file counts decompressed bytes
        check_layout(data, values * itemsize + max(skip, 0), start=start, codec=codec)


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
        check_layout(data, values * itemsize, start=start, codec="zlib")
    elif fields.get("binarydata", "true").lower() == "false":
        check_layout(data, values, start=start, codec="text")
    elif skip == -1:
        check_layout(data, values * itemsize, codec="raw", at_end=True)
    else:
        check_layout(data, values * itemsize, start=start)
