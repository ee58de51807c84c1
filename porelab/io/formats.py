"""The one table of scan formats (suffix or folder → reader, writer) and the functions that use it:
``read_volume``, ``read_mask``, ``read_array`` and ``write_volume``.

Every reader takes ``(path, mmap)`` and returns ``(array, spacing (z, y, x) mm | None, meta)``; every writer
takes ``(path, array, spacing)`` and writes atomically. Readers compare the bytes a header promises with the
bytes present before allocating anything; :func:`porelab.io._base.check_file` refuses a FIFO, socket or
device before any reader opens it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from porelab.errors import ScanError
from porelab.io._base import Spacing, as_spacing, check_file, suffix
from porelab.io.dicom import is_dicom, is_dicom_folder, read_dicom
from porelab.io.itk import read_itk, write_itk
from porelab.io.npy import read_npy, write_npy
from porelab.io.raw import read_raw, read_vgi, write_raw, write_vgi
from porelab.io.tiff import read_tiff, read_tiff_folder, write_tiff, write_tiff_folder
from porelab.io.volume import Volume, iter_slabs, validate
from porelab.io.zarr import read_zarr, write_zarr

Reader = Callable[[Path, bool], tuple]
Writer = Callable[[Path, np.ndarray, Spacing], None]


@dataclass(frozen=True)
class Format:
    """A scan format: the suffixes that select it (none for the folder of slices), whether it is stored
    as a folder, its reader and its writer (None: read only)."""

    name: str
    suffixes: tuple[str, ...]
    read: Reader
    write: Writer | None
    folder: bool = False


# DICOM: a multi-frame .dcm, a folder holding one series, or any file with the DICM magic; read only.
DICOM = Format("dicom", (".dcm",), read_dicom, None)
TIFF_FOLDER = Format("tiff-folder", (), read_tiff_folder, write_tiff_folder, folder=True)
FORMATS: tuple[Format, ...] = (
    Format("tiff", (".tif", ".tiff"), read_tiff, write_tiff),
    Format("npy", (".npy",), read_npy, write_npy),
    Format("nifti", (".nii", ".nii.gz"), read_itk, write_itk),
    Format("metaimage", (".mhd", ".mha"), read_itk, write_itk),
    Format("nrrd", (".nrrd",), read_itk, write_itk),
    Format("raw", (".raw", ".vol"), read_raw, write_raw),
    Format("vgi", (".vgi",), read_vgi, write_vgi),
    Format("zarr", (".zarr",), read_zarr, write_zarr, folder=True),
    DICOM,
    TIFF_FOLDER,
)
SCAN_SUFFIXES: tuple[str, ...] = tuple(s for f in FORMATS for s in f.suffixes)
_BY_SUFFIX = {s: f for f in FORMATS for s in f.suffixes}


def _known(write: bool) -> str:
    """The suffixes for an error message; read-only ones are marked when writing."""
    return ", ".join(s + (" (read only)" if write and _BY_SUFFIX[s].write is None else "") for s in SCAN_SUFFIXES)


def format_for(path, *, write: bool = False) -> Format:
    """The format that reads (or, with ``write=True``, writes) ``path``.

    Reading: a folder is a folder format with its suffix (``.zarr``), else a DICOM series when it holds
    DICOM files and no TIFF slices, else a folder of TIFF slices; a file goes by its suffix, or is DICOM
    when it has no known suffix but the ``DICM`` magic. Writing: a path without a suffix that is not an
    existing file becomes a folder of TIFF slices. An unknown suffix, or a read-only one when writing,
    raises ScanError listing the supported ones.
    """
    path = Path(path)
    suf = suffix(path)
    fmt = _BY_SUFFIX.get(suf)
    if write:
        if suf == "" and not path.is_file():
            return TIFF_FOLDER
        if fmt is None:
            raise ScanError(f"{path}: unknown output format {suf or '(no extension)'}; "
                            f"known: {_known(True)} or a folder (no extension)")
        if fmt.write is None:
            raise ScanError(f"{path}: {fmt.name} ({suf}) is read only; write one of "
                            f"{', '.join(s for s in SCAN_SUFFIXES if _BY_SUFFIX[s].write)} or a folder (no extension)")
        return fmt
    if path.is_dir():
        if fmt is not None and fmt.folder:
            return fmt
        return DICOM if is_dicom_folder(path) else TIFF_FOLDER
    if fmt is None and path.is_file() and is_dicom(path):
        return DICOM
    if fmt is None:
        raise ScanError(f"{path}: unknown scan format {suf or '(no extension)'}; "
                        f"known: {_known(False)} or a folder of TIFF slices or DICOM files")
    return fmt


def _read_any(path: Path, mmap: bool):
    check_file(path)
    return format_for(path).read(path, mmap)


def read_array(path, *, mmap: bool = True) -> tuple[np.ndarray, Spacing | None, dict]:
    """``(array, spacing, meta)`` of any scan file as stored: 3-D, numeric and non-empty, values unchecked.

    For callers that inspect the values themselves (a mask's 0/1 check); ``spacing`` is None when the
    file has none.
    """
    path = Path(path)
    array, spacing, meta = _read_any(path, mmap)
    array = validate(array, path, mask=True)
    return array, (as_spacing(spacing, path) if spacing is not None else None), meta


def read_volume(path, *, spacing=None, mmap: bool = True) -> Volume:
    """Read a CT scan as a (z, y, x) array with its voxel spacing in mm.

    Parameters
    ----------
    path : str or Path
        A file in any format of :data:`FORMATS`, or a folder of 2-D TIFF slices.
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
    array = validate(array, path)
    if spacing is not None:
        return Volume(array, as_spacing(spacing, path), path, True, meta)
    if file_spacing is not None:
        return Volume(array, as_spacing(file_spacing, path), path, True, meta)
    return Volume(array, (1.0, 1.0, 1.0), path, False, meta)


def read_mask(path, *, like=None, with_spacing: bool = False):
    """Read a binary mask (any scan format) as a bool (z, y, x) array; non-zero voxels are True.

    An all-zero mask is valid (a part without pores). ``like`` (an array or shape) checks the shape.
    With ``with_spacing=True`` returns ``(mask, spacing)``, spacing (mm, z, y, x) or None if the file
    has none.
    """
    path = Path(path)
    array, spacing, _ = read_array(path)
    if np.issubdtype(array.dtype, np.floating):
        out = np.zeros(array.shape, dtype=bool)
        for sl in iter_slabs(array.shape):
            out[sl] = np.nan_to_num(np.asarray(array[sl]), nan=0.0) != 0
    else:
        out = np.asarray(array) != 0
    if like is not None:
        shape = tuple(like.shape) if hasattr(like, "shape") else tuple(like)
        if out.shape != shape:
            raise ScanError(f"{path}: mask shape {out.shape} differs from the scan's {shape}")
    if with_spacing:
        return out, spacing
    return out


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
    spacing = as_spacing(spacing, path)
    if array.dtype == bool:
        array = array.view(np.uint8)
    format_for(path, write=True).write(path, array, spacing)
    return path
