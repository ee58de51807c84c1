"""Reading and writing CT scans and masks as numpy arrays (z, y, x) with spacing in mm (z, y, x), and the
atomic, output-safe file writes every command uses.

Formats (chosen by extension, or a folder of 2-D slices; the table is :data:`FORMATS`):

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
``.dcm`` / DICOM folder   read only (SimpleITK/GDCM): a multi-frame file, or a folder holding one series
                          (files found by the ``DICM`` magic, sorted by position along the slice normal,
                          rescaled); spacing from PixelSpacing and the slice positions
========================  ==========================================================================

Every reader raises :class:`porelab.errors.ScanError` with one line naming the file and the problem, and
compares the size a header promises with the bytes present before allocating anything (compressed streams
are counted in 16 MB blocks); a FIFO, socket or device is refused before it is opened.
Every writer goes through :func:`atomic_path`, so a failed write leaves nothing behind.

Examples
--------
>>> from porelab.io import read_volume, write_volume          # doctest: +SKIP
>>> vol = read_volume("scan.tif")
>>> write_volume("scan.nii.gz", vol.array, spacing=vol.spacing)
"""

from porelab.io.atomic import MARKER, atomic_path, clean_stale, is_porelab_output, prepare_output, write_json
from porelab.io.formats import (
    FORMATS,
    SCAN_SUFFIXES,
    Format,
    format_for,
    read_array,
    read_mask,
    read_volume,
    write_volume,
)
from porelab.io.volume import Volume, iter_slabs, scan_stats

__all__ = ["FORMATS", "MARKER", "SCAN_SUFFIXES", "Format", "Volume", "atomic_path", "clean_stale", "format_for",
           "is_porelab_output", "iter_slabs", "prepare_output", "read_array", "read_mask", "read_volume",
           "scan_stats", "write_json", "write_volume"]
