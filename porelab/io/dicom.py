"""DICOM, read only: a folder holding one series of 2-D slices, or one multi-frame file (SimpleITK / GDCM).

Slices are ordered by their position along the slice normal (ImagePositionPatient projected on the cross
product of the two ImageOrientationPatient direction cosines), never by file name or instance number. The
array is (z, y, x) = (slice, row, column) as stored, z ascending along the normal; it is not resampled to
patient axes (the direction cosines go into ``meta``). Values are rescaled (RescaleSlope, RescaleIntercept)
by SimpleITK. Spacing: y and x from PixelSpacing (row spacing, column spacing), z from the distance between
consecutive slice positions; SpacingBetweenSlices and then SliceThickness are fallbacks when positions are
missing. Slices whose gaps differ by more than 1 % are refused: a missing slice would silently shorten every
length and volume measured along z.

Before SimpleITK sees a file, a small parser walks its data elements (explicit or implicit VR, sequences of
defined or undefined length) to find the Pixel Data element and the header values above, and compares the
bytes the header promises (rows × columns × frames × samples × bits allocated / 8) with the bytes present;
GDCM silently skips a truncated file when it lists a series, so the check also catches a slice that would
otherwise just be missing.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from porelab.errors import ScanError
from porelab.io._base import quiet_stderr, short, truncated

MAGIC_OFFSET = 128  # a DICOM file starts with a 128-byte preamble, then b"DICM"
_GAP_TOLERANCE = 0.01  # consecutive slice gaps may differ by this fraction of the median gap

_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"
_DEFLATED = "1.2.840.10008.1.2.1.99"
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UR", b"UT", b"UN", b"SV", b"UV"}
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_UNDEFINED = 0xFFFFFFFF

# Header values read by the parser (everything else is skipped): text values, and US (unsigned short) ones.
_TEXT_TAGS = {
    0x0020000E: "series_uid", 0x00200032: "position", 0x00200037: "orientation", 0x00280030: "pixel_spacing",
    0x00180050: "slice_thickness", 0x00180088: "spacing_between_slices", 0x00280008: "frames",
    0x00281052: "intercept", 0x00281053: "slope", 0x00020010: "transfer_syntax",
}
_US_TAGS = {0x00280010: "rows", 0x00280011: "columns", 0x00280100: "bits_allocated", 0x00280002: "samples"}
# Sequences descended into (multi-frame functional groups); items are kept as dicts of the values above.
_SEQUENCES = {
    0x52009229: "shared", 0x52009230: "per_frame", 0x00209113: "plane_position",
    0x00209116: "plane_orientation", 0x00289110: "pixel_measures", 0x00289145: "value_transform",
}


@dataclass
class Header:
    """What the parser found in one file: header values, nested functional groups, and the pixel data."""

    path: Path
    values: dict = field(default_factory=dict)
    pixel_offset: int | None = None  # file offset of the pixel data value (None: no Pixel Data element)
    pixel_length: int | None = None  # its byte length; None when encapsulated (compressed fragments)

    def get(self, key, default=None):
        return self.values.get(key, default)

    @property
    def frames(self) -> int:
        try:
            return max(1, int(float(self.get("frames", "1") or 1)))
        except ValueError:
            raise ScanError(f"{self.path}: NumberOfFrames {self.get('frames')!r} is not a number") from None

    @property
    def promised(self) -> int:
        """Bytes of uncompressed pixel data the header describes."""
        rows, cols = int(self.get("rows", 0)), int(self.get("columns", 0))
        bits, samples = int(self.get("bits_allocated", 16)), int(self.get("samples", 1) or 1)
        return rows * cols * self.frames * samples * max(bits, 1) // 8


def is_dicom(path: Path) -> bool:
    """True when ``path`` is a regular file with the 128-byte preamble followed by ``DICM``."""
    try:
        with open(path, "rb") as f:
            f.seek(MAGIC_OFFSET)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _candidates(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file())


def is_dicom_folder(folder: Path) -> bool:
    """A folder without TIFF slices that holds at least one DICOM file (by the ``DICM`` magic, any name)."""
    files = _candidates(folder)
    if any(p.suffix.lower() in (".tif", ".tiff") for p in files):
        return False
    return any(p.suffix.lower() == ".dcm" or is_dicom(p) for p in files)


# ------------------------------------------------------------------------------------------------ parser

class _Reader:
    """Walks the data elements of one file with seeks; values are read only for the tags listed above."""

    def __init__(self, f, path: Path, size: int):
        self.f, self.path, self.size = f, path, size

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) < n:
            raise truncated(self.path, self.f.tell() - len(data) + n, self.size, "a header element runs past the end")
        return data

    def element(self, explicit: bool, endian: str):
        """(tag, vr, length, value offset) of the element at the current position."""
        group, elem = struct.unpack(endian + "HH", self.read(4))
        tag = (group << 16) | elem
        if tag in (_ITEM, _ITEM_END, _SEQ_END):  # item tags carry no VR, in every transfer syntax
            return tag, None, struct.unpack(endian + "I", self.read(4))[0], self.f.tell()
        if explicit:
            vr = self.read(2)
            if vr in _LONG_VRS:
                self.read(2)
                length = struct.unpack(endian + "I", self.read(4))[0]
            else:
                length = struct.unpack(endian + "H", self.read(2))[0]
        else:
            vr, length = None, struct.unpack(endian + "I", self.read(4))[0]
        return tag, vr, length, self.f.tell()

    def dataset(self, explicit: bool, endian: str, end: int | None, header: Header, out: dict) -> None:
        """Parse elements until ``end`` (an offset), an item delimiter (undefined-length item) or EOF."""
        while (end is None or self.f.tell() < end) and self.f.tell() < self.size:
            tag, vr, length, start = self.element(explicit, endian)
            if tag == _ITEM_END:
                return
            if tag == _PIXEL_DATA and out is header.values:
                self.pixel_data(length, endian, header)
                return
            is_seq = vr == b"SQ" or tag in _SEQUENCES or (vr in (None, b"UN") and length == _UNDEFINED)
            if is_seq:
                items = self.sequence(explicit, endian, length, header)
                if tag in _SEQUENCES:
                    out[_SEQUENCES[tag]] = items
                continue
            if length == _UNDEFINED:
                raise ScanError(f"{self.path}: corrupt DICOM: element ({tag >> 16:04X},{tag & 0xFFFF:04X}) "
                                "has undefined length")
            if start + length > self.size:
                raise truncated(self.path, start + length, self.size,
                                f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) runs past the end")
            if tag in _TEXT_TAGS and length <= 4096:
                out[_TEXT_TAGS[tag]] = self.read(length).decode("latin-1").strip("\0 ")
            elif tag in _US_TAGS and length == 2:
                out[_US_TAGS[tag]] = struct.unpack(endian + "H", self.read(2))[0]
            else:
                self.f.seek(start + length)

    def sequence(self, explicit: bool, endian: str, length: int, header: Header) -> list[dict]:
        end = None if length == _UNDEFINED else self.f.tell() + length
        items: list[dict] = []
        while end is None or self.f.tell() < end:
            if self.f.tell() >= self.size:
                raise truncated(self.path, (end or self.size + 1), self.size, "a sequence runs past the end")
            tag, _, item_len, start = self.element(explicit, endian)
            if tag == _SEQ_END:
                break
            if tag != _ITEM:
                raise ScanError(f"{self.path}: corrupt DICOM: sequence holds ({tag >> 16:04X},{tag & 0xFFFF:04X}), "
                                "not an item")
            item: dict = {}
            self.dataset(explicit, endian, None if item_len == _UNDEFINED else start + item_len, header, item)
            items.append(item)
        return items

    def pixel_data(self, length: int, endian: str, header: Header) -> None:
        header.pixel_offset = self.f.tell()
        if length != _UNDEFINED:
            header.pixel_length = length
            return
        # Encapsulated (compressed) frames: items of defined length up to the sequence delimiter.
        while True:
            tag, _, frag, start = self.element(False, endian)
            if tag == _SEQ_END:
                return
            if tag != _ITEM or start + frag > self.size:
                raise truncated(self.path, start + frag, self.size, "compressed pixel data run past the end")
            self.f.seek(start + frag)


def read_header(path: Path) -> Header:
    """Parse ``path`` up to its pixel data; ScanError (one line naming the file) if it is not DICOM or is cut."""
    header = Header(path)
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            f.seek(MAGIC_OFFSET)
            if f.read(4) != b"DICM":
                raise ScanError(f"{path}: not a DICOM file (no 'DICM' after the 128-byte preamble)")
            r = _Reader(f, path, size)
            # File meta information: group 0002, always explicit VR little endian.
            while f.tell() < size:
                mark = f.tell()
                group = struct.unpack("<H", r.read(2))[0]
                f.seek(mark)
                if group != 0x0002:
                    break
                tag, _vr, length, start = r.element(True, "<")
                if tag == 0x00020010:
                    header.values["transfer_syntax"] = r.read(length).decode("latin-1").strip("\0 ")
                else:
                    f.seek(start + length)
            ts = header.values.get("transfer_syntax", "")
            if ts == _DEFLATED:
                raise ScanError(f"{path}: deflated DICOM (transfer syntax {ts}) is not supported")
            r.dataset(ts != _IMPLICIT_LE, ">" if ts == _EXPLICIT_BE else "<", None, header, header.values)
    except ScanError:
        raise
    except (OSError, struct.error, ValueError) as exc:
        raise ScanError(f"{path}: not a readable DICOM file ({short(exc)})") from None
    return header


def check_pixels(header: Header) -> None:
    """Raise ScanError unless the file holds the pixel bytes its header promises (before anything is read)."""
    path, size = header.path, header.path.stat().st_size
    if header.pixel_offset is None:
        raise ScanError(f"{path}: DICOM file holds no pixel data")
    if not header.get("rows") or not header.get("columns"):
        raise ScanError(f"{path}: DICOM header gives no Rows/Columns")
    if header.pixel_length is None:  # compressed: fragments were checked to lie inside the file
        return
    promised = header.promised
    found = min(header.pixel_length, size - header.pixel_offset)
    if found < promised:
        raise truncated(path, header.pixel_offset + promised, size,
                        f"pixel data of {header.get('rows')}x{header.get('columns')}x{header.frames} voxels")


# ------------------------------------------------------------------------------------------ geometry

def _floats(text, n: int, what: str, path: Path):
    if text is None or text == "":
        return None
    try:
        values = [float(v) for v in str(text).split("\\")]
    except ValueError:
        raise ScanError(f"{path}: {what} {text!r} is not {n} numbers") from None
    if len(values) != n or not all(math.isfinite(v) for v in values):
        raise ScanError(f"{path}: {what} {text!r} is not {n} finite numbers")
    return values


def _normal(orientation, path: Path) -> np.ndarray:
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    n = np.cross(row, col)
    norm = float(np.linalg.norm(n))
    if norm < 1e-6:
        raise ScanError(f"{path}: ImageOrientationPatient {orientation} has parallel row and column directions")
    return n / norm


def _positive(value, path: Path, what: str):
    v = _floats(value, 1, what, path)
    return v[0] if v and v[0] > 0 else None


def _z_spacing(where: Path, heights: np.ndarray, names: list[str], fallback: list[tuple[str, object]]):
    """Slice spacing from sorted heights along the normal; fallbacks (name, text) when fewer than two."""
    if len(heights) >= 2:
        gaps = np.diff(heights)
        median = float(np.median(gaps))
        if gaps.min() <= 1e-6 * max(1.0, abs(median)):
            i = int(np.argmin(gaps))
            raise ScanError(f"{where}: two slices at the same position along the slice normal "
                            f"({names[i]} and {names[i + 1]}); give one series of distinct slices")
        spread = np.abs(gaps - median)
        if spread.max() > _GAP_TOLERANCE * median + 1e-5:
            i = int(np.argmax(spread))
            raise ScanError(f"{where}: uneven slice spacing: gaps {gaps.min():.6g} to {gaps.max():.6g} mm "
                            f"(median {median:.6g}; {gaps[i]:.6g} mm between {names[i]} and {names[i + 1]}); "
                            "a slice may be missing, porelab needs evenly spaced slices")
        return float(np.mean(gaps))
    for what, text in fallback:
        value = _positive(text, where, what)
        if value:
            return value
    return None


# ------------------------------------------------------------------------------------------ reading

def _read_image(path: Path):
    """One file through SimpleITK: (array (frames, rows, cols), rescaled)."""
    import SimpleITK as sitk

    try:
        with quiet_stderr():
            reader = sitk.ImageFileReader()
            reader.SetImageIO("GDCMImageIO")
            reader.SetFileName(str(path))
            image = reader.Execute()
            array = sitk.GetArrayFromImage(image)
    except Exception as exc:  # noqa: BLE001 - a corrupt file makes readers raise anything
        text = str(exc).split("ERROR:")[-1]
        raise ScanError(f"{path}: not readable as DICOM ({short(Exception(text))})") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ScanError(f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per pixel "
                        "(colour); a grey-value scan is needed")
    return array.reshape((-1,) + array.shape[-2:])


def read_dicom(path: Path, mmap: bool = False):
    """A DICOM series folder or a multi-frame ``.dcm`` as (array (z, y, x), spacing | None, meta).

    ``mmap`` is accepted for a uniform reader signature; DICOM data are always read into memory.
    """
    return _read_series(path) if path.is_dir() else _read_multiframe(path)


def _series_files(folder: Path) -> list[Path]:
    """The files of the folder's only series; several series, or a DICOM file GDCM skipped, raise ScanError."""
    import SimpleITK as sitk

    dicoms = [p for p in _candidates(folder) if is_dicom(p)]
    if not dicoms:
        raise ScanError(f"{folder}: folder holds no DICOM files (none has 'DICM' after the 128-byte preamble)")
    with quiet_stderr():  # GDCM warns on stderr about files it skips; ours is the one line
        uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if len(uids) > 1:
        raise ScanError(f"{folder}: folder holds {len(uids)} DICOM series ({', '.join(uids)}); "
                        "porelab reads one series: move each series into a folder of its own and give that folder")
    files = []
    if uids:
        with quiet_stderr():
            files = [Path(f) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uids[0])]
    listed = {f.name for f in files}
    for p in dicoms:  # GDCM leaves out files it cannot parse, e.g. a truncated slice: name it
        if p.name not in listed:
            header = read_header(p)
            if header.pixel_offset is not None:
                check_pixels(header)
                raise ScanError(f"{p}: DICOM slice not readable by GDCM, so the series would miss it")
    if not files:
        raise ScanError(f"{folder}: folder holds no DICOM image series")
    return files


def _read_series(folder: Path):
    headers = [read_header(f) for f in _series_files(folder)]
    if len(headers) == 1 and headers[0].frames > 1:  # a folder holding one multi-frame file
        return _read_multiframe(headers[0].path)
    for h in headers:
        check_pixels(h)
    first = headers[0]
    shape2 = (first.get("rows"), first.get("columns"))
    for h in headers:
        if (h.get("rows"), h.get("columns")) != shape2 or h.get("bits_allocated") != first.get("bits_allocated"):
            raise ScanError(f"{h.path}: slice {h.get('rows')}x{h.get('columns')} "
                            f"({h.get('bits_allocated')} bits) differs from {first.path.name}'s "
                            f"{shape2[0]}x{shape2[1]} ({first.get('bits_allocated')} bits)")
        if h.frames != 1:
            raise ScanError(f"{h.path}: a multi-frame file inside a series folder; give it on its own")
    orientation = _floats(first.get("orientation"), 6, "ImageOrientationPatient", first.path)
    for h in headers:
        o = _floats(h.get("orientation"), 6, "ImageOrientationPatient", h.path)
        if (o is None) != (orientation is None) or (o and not np.allclose(o, orientation, atol=1e-4)):
            raise ScanError(f"{h.path}: ImageOrientationPatient differs from {first.path.name}'s; "
                            "slices of one volume must share their orientation")
    positions = [_floats(h.get("position"), 3, "ImagePositionPatient", h.path) for h in headers]
    if orientation is not None and all(p is not None for p in positions):
        normal = _normal(orientation, first.path)
        heights = np.array([float(np.dot(p, normal)) for p in positions])
        order = np.argsort(heights, kind="stable")
        headers, heights = [headers[i] for i in order], heights[order]
    elif len(headers) > 1:
        raise ScanError(f"{folder}: slices lack ImagePositionPatient/ImageOrientationPatient, so their order "
                        "along the slice normal is unknown")
    else:
        heights = np.zeros(0)
    names = [h.path.name for h in headers]
    sz = _z_spacing(folder, heights, names, [("SpacingBetweenSlices", first.get("spacing_between_slices")),
                                             ("SliceThickness", first.get("slice_thickness"))])
    spacing = _spacing(first.get("pixel_spacing"), sz, first.path)
    array = None
    for i, h in enumerate(headers):  # each file is read (and rescaled) on its own, so every error names it
        s = _read_image(h.path)
        if s.shape != (1,) + shape2:
            raise ScanError(f"{h.path}: SimpleITK read {s.shape[1:]} pixels, the header announces {shape2}")
        if array is None:
            array = np.empty((len(headers),) + shape2, dtype=s.dtype)
        elif not np.can_cast(s.dtype, array.dtype, "safe"):  # a slice rescaled to a wider type
            array = array.astype(np.result_type(array.dtype, s.dtype))
        array[i] = s[0]
    meta = {"format": "dicom", "slices": len(headers), "series_uid": first.get("series_uid"),
            "orientation": orientation, "first_slice": names[0]}
    return array, spacing, meta


def _spacing(pixel_spacing, sz, path: Path):
    """(z, y, x) mm from PixelSpacing (row spacing = y, column spacing = x) and ``sz``; None if either is missing."""
    yx = _floats(pixel_spacing, 2, "PixelSpacing", path)
    if yx is None or sz is None or not all(v > 0 for v in yx):
        return None
    return (float(sz), float(yx[0]), float(yx[1]))


def _read_multiframe(path: Path):
    header = read_header(path)
    check_pixels(header)
    frames = header.frames
    if frames < 2 and "per_frame" not in header.values:
        raise ScanError(f"{path}: one 2-D DICOM slice; give the folder that holds the whole series "
                        "(or a multi-frame file)")
    shared = (header.get("shared") or [{}])[0]
    per_frame = header.get("per_frame") or []

    def group(item: dict, name: str) -> dict:
        return (item.get(name) or [{}])[0]

    measures = group(shared, "pixel_measures")
    if not measures and per_frame:
        measures = group(per_frame[0], "pixel_measures")
    orient_text = group(shared, "plane_orientation").get("orientation") or header.get("orientation")
    if not orient_text and per_frame:
        orient_text = group(per_frame[0], "plane_orientation").get("orientation")
    orientation = _floats(orient_text, 6, "ImageOrientationPatient", path)
    positions = [_floats(group(item, "plane_position").get("position"), 3, "ImagePositionPatient", path)
                 for item in per_frame]
    order = None
    heights = np.zeros(0)
    if orientation is not None and len(positions) == frames and all(p is not None for p in positions):
        normal = _normal(orientation, path)
        heights = np.array([float(np.dot(p, normal)) for p in positions])
        order = np.argsort(heights, kind="stable")
        heights = heights[order]
    sz = _z_spacing(path, heights, [f"frame {i + 1}" for i in (order if order is not None else [])],
                    [("SpacingBetweenSlices", measures.get("spacing_between_slices")
                      or header.get("spacing_between_slices")),
                     ("SliceThickness", measures.get("slice_thickness") or header.get("slice_thickness"))])
    spacing = _spacing(measures.get("pixel_spacing") or header.get("pixel_spacing"), sz, path)
    array = _read_image(path)
    if array.shape[0] != frames:
        raise ScanError(f"{path}: SimpleITK read {array.shape[0]} frames, the header announces {frames}")
    if order is not None and np.any(order != np.arange(frames)):
        array = array[order]
    meta = {"format": "dicom", "frames": frames, "series_uid": header.get("series_uid"), "orientation": orientation}
    return array, spacing, meta


__all__ = ["Header", "is_dicom", "is_dicom_folder", "read_dicom", "read_header"]
