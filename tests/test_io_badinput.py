"""Headers that promise more than the file holds, and files that are not what their name says.

Every reader must compare the header's promise with the bytes present before allocating the array, and
fail with one line naming the file, the size promised and the size found. "No big allocation" is checked
with tracemalloc (numpy's allocations are traced) and, for the SimpleITK formats, by observing that
SimpleITK is never asked to read the file (its C++ allocations are invisible to tracemalloc).
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tracemalloc
import zlib

import numpy as np
import pytest

from porelab.errors import ScanError
from porelab.io import read_mask, read_volume, write_volume

BIG = 1000 ** 3 * 4  # bytes promised by a 1000³ float32 header
PEAK_LIMIT = 32 << 20  # a reader that fails early stays far below this; the promised array is 4 GB
BODY = b"\0" * 4096


def _fails_small(path, *, match, mmap=True):
    """Read ``path``, expect a one-line ScanError matching ``match``; return (message, traced peak bytes)."""
    tracemalloc.start()
    try:
        with pytest.raises(ScanError, match=match) as info:
            read_volume(path, mmap=mmap)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    msg = str(info.value)
    assert "\n" not in msg and path.name in msg, msg
    assert peak < PEAK_LIMIT, f"{path.name}: peak {peak} bytes traced while failing"
    return msg, peak


@pytest.fixture
def sitk_reads(monkeypatch):
    """Paths SimpleITK was asked to read (it allocates the header's full size before reading the data)."""
    import SimpleITK as sitk

    seen = []
    real = sitk.ReadImage

    def spy(name, *args, **kwargs):
        seen.append(os.path.basename(str(name)))
        return real(name, *args, **kwargs)

    monkeypatch.setattr(sitk, "ReadImage", spy)
    return seen


def _scan(rng):
    return rng.normal(0.5, 0.1, size=(6, 7, 9)).astype(np.float32)


def _nrrd_header(encoding, extra=""):
    return (f"NRRD0004\ntype: float\ndimension: 3\nsizes: 1000 1000 1000\nendian: little\n"
            f"encoding: {encoding}\n{extra}\n").encode()


# --- NRRD ------------------------------------------------------------------------------------------------

def test_nrrd_promising_1000_cubed_over_4kb_fails_before_allocating(tmp_path, sitk_reads):
    path = tmp_path / "big.nrrd"
    path.write_bytes(_nrrd_header("raw") + BODY)
    size = path.stat().st_size
    msg, _ = _fails_small(path, match="truncated or unreadable")
    assert f"promises {BIG + size - len(BODY)} bytes, file holds {size}" in msg
    assert sitk_reads == []


def test_gzip_nrrd_promising_more_than_deflate_can_expand_to(tmp_path, sitk_reads):
    path = tmp_path / "bigz.nrrd"
    path.write_bytes(_nrrd_header("gzip") + gzip.compress(BODY))
    msg, _ = _fails_small(path, match=f"promises {BIG} bytes")
    assert "gzip" in msg and sitk_reads == []


def test_gzip_nrrd_cut_short_is_found_by_streaming(tmp_path, rng, sitk_reads):
    """A plausible ratio but a stream cut in half: the streamed count finds it, SimpleITK never starts."""
    import SimpleITK as sitk

    full = tmp_path / "full.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(_scan(rng)), str(full), True)  # useCompression → gzip encoding
    assert b"encoding: gzip" in full.read_bytes()[:400]
    data = full.read_bytes()
    path = tmp_path / "cut.nrrd"
    path.write_bytes(data[: len(data) - len(data) // 3])
    _fails_small(path, match=f"promises {6 * 7 * 9 * 4} bytes.*gzip")
    assert sitk_reads == []


def test_nrrd_detached_data_file_missing_or_short(tmp_path, sitk_reads):
    header = tmp_path / "scan.nhdr.nrrd"
    header.write_bytes(b"NRRD0004\ntype: uint16\ndimension: 3\nsizes: 9 7 6\nencoding: raw\nendian: little\n"
                       b"data file: scan.bin\n\n")
    with pytest.raises(ScanError, match="scan.bin named in the header does not exist"):
        read_volume(header)
    (tmp_path / "scan.bin").write_bytes(b"\1\2" * 100)
    with pytest.raises(ScanError, match=f"scan.bin: truncated or unreadable: header promises {9 * 7 * 6 * 2} "
                                        "bytes, file holds 200"):
        read_volume(header)
    assert sitk_reads == []


# --- MetaImage -------------------------------------------------------------------------------------------

def test_mha_promising_1000_cubed_fails_before_allocating(tmp_path, sitk_reads):
    path = tmp_path / "big.mha"
    head = (b"ObjectType = Image\nNDims = 3\nDimSize = 1000 1000 1000\nElementType = MET_FLOAT\n"
            b"ElementDataFile = LOCAL\n")
    path.write_bytes(head + BODY)
    msg, _ = _fails_small(path, match="truncated or unreadable")
    assert f"promises {BIG + len(head)} bytes, file holds {len(head) + len(BODY)}" in msg
    assert sitk_reads == []


def test_truncated_mha_says_truncated_not_no_such_file(tmp_path, rng):
    full = write_volume(tmp_path / "full.mha", _scan(rng))
    data = full.read_bytes()
    path = tmp_path / "cut.mha"
    path.write_bytes(data[:-50])
    with pytest.raises(ScanError) as info:
        read_volume(path)
    msg = str(info.value)
    assert msg == (f"{path}: truncated or unreadable: header promises {len(data)} bytes, "
                   f"file holds {len(data) - 50}")
    assert "No such file" not in msg


def test_mhd_with_short_or_missing_data_file(tmp_path, rng):
    header = write_volume(tmp_path / "scan.mhd", _scan(rng))
    raw = tmp_path / "scan.raw"
    raw.write_bytes(raw.read_bytes()[:100])
    with pytest.raises(ScanError, match=f"scan.raw: truncated or unreadable: header promises {6 * 7 * 9 * 4} "
                                        "bytes, file holds 100"):
        read_volume(header)
    raw.unlink()
    with pytest.raises(ScanError, match="data file .*scan.raw named in the header does not exist"):
        read_volume(header)


def test_compressed_mha_cut_short(tmp_path, rng, sitk_reads):
    import SimpleITK as sitk

    full = tmp_path / "full.mha"
    sitk.WriteImage(sitk.GetImageFromArray(_scan(rng)), str(full), True)
    assert b"CompressedData = True" in full.read_bytes()[:600]
    data = full.read_bytes()
    path = tmp_path / "cut.mha"
    path.write_bytes(data[: len(data) - len(data) // 3])
    _fails_small(path, match=f"promises {6 * 7 * 9 * 4} bytes.*zlib")
    assert sitk_reads == []
    # and a compressed body far too small for its header is refused without decompressing
    head = (b"ObjectType = Image\nNDims = 3\nDimSize = 1000 1000 1000\nElementType = MET_FLOAT\n"
            b"CompressedData = True\nElementDataFile = LOCAL\n")
    (tmp_path / "bigz.mha").write_bytes(head + zlib.compress(BODY))
    _fails_small(tmp_path / "bigz.mha", match=f"promises {BIG} bytes.*deflate expands at most")


# --- NIfTI -----------------------------------------------------------------------------------------------

def _nifti_claiming_1000_cubed(tmp_path, rng, name):
    """A valid NIfTI-1 header (from SimpleITK) whose dim[] is rewritten to 1000³, followed by 4 KB."""
    import struct

    ok = write_volume(tmp_path / "ok.nii", _scan(rng))
    head = bytearray(ok.read_bytes()[:352])
    head[40:56] = struct.pack("<8h", 3, 1000, 1000, 1000, 1, 1, 1, 1)
    body = bytes(head) + BODY
    path = tmp_path / name
    path.write_bytes(gzip.compress(body) if name.endswith(".gz") else body)
    return path


@pytest.mark.parametrize("name", ["big.nii", "big.nii.gz"])
def test_nifti_promising_1000_cubed_fails_before_allocating(tmp_path, rng, sitk_reads, name):
    path = _nifti_claiming_1000_cubed(tmp_path, rng, name)
    _fails_small(path, match=f"truncated or unreadable: header promises {BIG + 352} bytes")
    assert sitk_reads == []


# --- .npy ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mmap", [True, False])
def test_npy_header_promising_1000_cubed_fails_before_allocating(tmp_path, mmap):
    """np.load without a memory map would allocate the whole 4 GB before noticing the file is short."""
    path = tmp_path / "big.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                 "shape": (1000, 1000, 1000)})
        offset = f.tell()
        f.write(BODY)
    msg, _ = _fails_small(path, match="truncated or unreadable", mmap=mmap)
    assert f"promises {BIG + offset} bytes, file holds {offset + len(BODY)}" in msg


def test_text_named_npy_is_not_called_pickled(tmp_path):
    path = tmp_path / "notes.npy"
    path.write_text("this is not an array\n" * 10)
    with pytest.raises(ScanError) as info:
        read_volume(path)
    msg = str(info.value)
    assert "not a NumPy .npy file" in msg and "pickle" not in msg.lower()


def test_object_npy_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(ScanError, match="holds Python objects"):
        read_volume(path)


# --- raw / vgi -------------------------------------------------------------------------------------------

def test_raw_sidecar_promising_1000_cubed(tmp_path):
    path = tmp_path / "big.raw"
    path.write_bytes(BODY)
    (tmp_path / "big.raw.json").write_text(json.dumps({"shape": [1000, 1000, 1000], "dtype": "float32"}))
    _fails_small(path, match=f"promises {BIG} bytes, file holds {len(BODY)}", mmap=False)


def test_vgi_promising_1000_cubed(tmp_path):
    (tmp_path / "big.vol").write_bytes(BODY)
    path = tmp_path / "big.vgi"
    path.write_text("{volume1}\n[representation]\nsize = 1000 1000 1000\ndatatype = float\n"
                    "bitsperelement = 32\n[file1]\nName = big.vol\n")
    msg, _ = _fails_small(path, match=f"promises {BIG} bytes, file holds {len(BODY)}", mmap=False)
    assert "big.vol" in msg


# --- TIFF ------------------------------------------------------------------------------------------------

def _cut(src, dst, keep):
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def test_truncated_imagej_tiff_names_promised_and_found(tmp_path, rng):
    """ImageJ stacks keep one header; a cut file used to come back as a single 2-D slice."""
    a = rng.normal(size=(20, 32, 32)).astype(np.float32)
    full = write_volume(tmp_path / "full.tif", a)
    path = _cut(full, tmp_path / "cut.tif", 0.5)
    for mmap in (True, False):
        msg, _ = _fails_small(path, match="truncated or unreadable: header promises", mmap=mmap)
        assert f"file holds {path.stat().st_size}" in msg and "20 images" in msg


def test_truncated_multipage_tiff_with_compression(tmp_path, rng):
    import tifffile

    a = rng.normal(size=(20, 32, 32)).astype(np.float32)
    tifffile.imwrite(tmp_path / "full.tif", a, compression="zlib")
    path = _cut(tmp_path / "full.tif", tmp_path / "cut.tif", 0.75)
    _fails_small(path, match="truncated or corrupt TIFF: the chain of pages breaks")


def test_single_page_tiff_with_data_past_the_end(tmp_path, rng):
    import tifffile

    tifffile.imwrite(tmp_path / "full.tif", rng.normal(size=(64, 64)).astype(np.float32))
    size = (tmp_path / "full.tif").stat().st_size
    path = tmp_path / "cut.tif"
    path.write_bytes((tmp_path / "full.tif").read_bytes()[:-100])
    with pytest.raises(ScanError, match=f"header promises {size} bytes, file holds {size - 100}"):
        read_volume(path)


def test_slice_folder_checks_every_slice_before_allocating(tmp_path, rng):
    import tifffile

    folder = tmp_path / "stack"
    folder.mkdir()
    for i in range(4):
        tifffile.imwrite(folder / f"s{i}.tif", rng.normal(size=(16, 16)).astype(np.float32))
    _cut(folder / "s3.tif", folder / "s3.tif", 0.5)
    with pytest.raises(ScanError, match=r"s3\.tif: truncated or unreadable: header promises"):
        read_volume(folder)
    tifffile.imwrite(folder / "s3.tif", rng.normal(size=(16, 16)).astype(np.float64))
    with pytest.raises(ScanError, match=r"s3\.tif: slice .* differs from the first slice"):
        read_volume(folder)


# --- not a regular file ----------------------------------------------------------------------------------

@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_fifo_is_refused_before_opening(tmp_path):
    fifo = tmp_path / "scan.npy"
    os.mkfifo(fifo)
    # opening a FIFO for reading blocks until a writer appears, so this returns only if it is never opened
    with pytest.raises(ScanError, match="scan.npy: is a FIFO"):
        read_volume(fifo)
    with pytest.raises(ScanError, match="FIFO"):
        read_mask(fifo)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_cli_label_on_fifo_exits_2_without_hanging(tmp_path):
    fifo = tmp_path / "scan.tif"
    os.mkfifo(fifo)
    proc = subprocess.run([sys.executable, "-m", "porelab", "label", str(fifo), "-o", str(tmp_path / "m.npy")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    expected = (f"porelab: error: {fifo}: is a FIFO (named pipe), not a regular file; "
                "give a scan file or a folder of slices")
    assert proc.stderr.strip().splitlines() == [expected]


def test_data_file_named_by_a_header_may_not_be_a_fifo(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("needs named pipes")
    os.mkfifo(tmp_path / "big.vol")
    (tmp_path / "big.vgi").write_text("{volume1}\n[representation]\nsize = 4 4 4\ndatatype = float\n"
                                      "bitsperelement = 32\n[file1]\nName = big.vol\n")
    with pytest.raises(ScanError, match="big.vol: is a FIFO"):
        read_volume(tmp_path / "big.vgi")


# --- the CLI ---------------------------------------------------------------------------------------------

def test_cli_info_on_lying_nrrd_prints_one_line_and_exits_2(tmp_path):
    path = tmp_path / "big.nrrd"
    path.write_bytes(_nrrd_header("raw") + BODY)
    size = path.stat().st_size
    proc = subprocess.run([sys.executable, "-m", "porelab", "info", str(path)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    expected = (f"porelab: error: {path}: truncated or unreadable: header promises {BIG + size - len(BODY)} "
                f"bytes, file holds {size}")
    assert proc.stderr.strip().splitlines() == [expected]
