"""Scan I/O: every format round-trips with its spacing; every kind of bad input is a one-line ScanError."""

from __future__ import annotations

import json

import numpy as np
import pytest

from porelab.errors import ScanError
from porelab.io import iter_slabs, read_mask, read_volume, scan_stats, write_volume

SPACING = (0.02, 0.0125, 0.01)


def _scan(rng, dtype=np.float32):
    a = rng.normal(0.5, 0.1, size=(5, 7, 9))
    if np.issubdtype(dtype, np.integer):
        a = (a * 1000).clip(0, 60000)
    return a.astype(dtype)


@pytest.mark.parametrize("name", ["scan.tif", "scan.tiff", "scan.npy", "scan.nii", "scan.nii.gz", "scan.mhd",
                                  "scan.mha", "scan.nrrd", "scan.raw", "scan.vol", "scan.vgi", "slices"])
@pytest.mark.parametrize("dtype", [np.float32, np.uint16])
def test_round_trip_keeps_values_shape_and_spacing(tmp_path, rng, name, dtype):
    array = _scan(rng, dtype)
    path = write_volume(tmp_path / name, array, spacing=SPACING)
    vol = read_volume(path)
    assert vol.shape == array.shape
    assert vol.array.dtype == array.dtype
    np.testing.assert_array_equal(np.asarray(vol.array), array)
    assert vol.spacing_known
    np.testing.assert_allclose(vol.spacing, SPACING, rtol=1e-5)
    # nothing but the format's own files is left in the folder (no temporary names)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_tiff_with_float64_and_bool_keep_spacing(tmp_path, rng):
    a = rng.normal(size=(3, 4, 5))
    vol = read_volume(write_volume(tmp_path / "f64.tif", a, spacing=SPACING))
    np.testing.assert_array_equal(vol.array, a)
    np.testing.assert_allclose(vol.spacing, SPACING)
    m = a > 0
    back = read_mask(write_volume(tmp_path / "mask.tif", m, spacing=SPACING))
    assert back.dtype == bool
    np.testing.assert_array_equal(back, m)


def test_npy_is_memory_mapped_and_unit_spacing_is_unknown(tmp_path, rng):
    a = _scan(rng)
    np.save(tmp_path / "plain.npy", a)
    vol = read_volume(tmp_path / "plain.npy")
    assert isinstance(vol.array, np.memmap)
    assert not vol.spacing_known and vol.spacing == (1.0, 1.0, 1.0)
    vol = read_volume(tmp_path / "plain.npy", spacing=(0.1, 0.2, 0.3))
    assert vol.spacing_known and vol.spacing == (0.1, 0.2, 0.3)


def test_imagej_tiff_in_microns_from_another_tool(tmp_path, rng):
    import tifffile

    a = _scan(rng)
    tifffile.imwrite(tmp_path / "fiji.tif", a, imagej=True, resolution=(1 / 12.5, 1 / 12.5),
                     metadata={"spacing": 20.0, "unit": "micron", "axes": "ZYX"})
    vol = read_volume(tmp_path / "fiji.tif")
    np.testing.assert_allclose(vol.spacing, (0.02, 0.0125, 0.0125))


def test_slice_folder_uses_natural_order(tmp_path):
    import tifffile

    folder = tmp_path / "stack"
    folder.mkdir()
    for i in [0, 1, 2, 10, 11]:  # lexical order would put 10 and 11 before 2
        tifffile.imwrite(folder / f"img{i}.tif", np.full((4, 4), i, np.uint16))
    vol = read_volume(folder)
    assert vol.array[:, 0, 0].tolist() == [0, 1, 2, 10, 11]
    assert not vol.spacing_known


def test_simpleitk_spacing_order_is_converted(tmp_path, rng):
    import SimpleITK as sitk

    a = _scan(rng)
    img = sitk.GetImageFromArray(a)
    img.SetSpacing((0.3, 0.2, 0.1))  # SimpleITK order (x, y, z)
    sitk.WriteImage(img, str(tmp_path / "s.nrrd"))
    vol = read_volume(tmp_path / "s.nrrd")
    np.testing.assert_allclose(vol.spacing, (0.1, 0.2, 0.3))


@pytest.mark.parametrize("name", ["scan.nrrd", "scan.mha", "scan.nii.gz"])
def test_compressed_files_pass_the_size_check(tmp_path, rng, name):
    """gzip NRRD and zlib MHA are decompressed once by the size check, then read by SimpleITK."""
    import SimpleITK as sitk

    a = rng.normal(size=(40, 30, 20)).astype(np.float32)
    a[:, :10] = 0  # compressible, so the stream is well below the raw size
    sitk.WriteImage(sitk.GetImageFromArray(a), str(tmp_path / name), True)
    assert (tmp_path / name).stat().st_size < a.nbytes
    np.testing.assert_array_equal(read_volume(tmp_path / name).array, a)


def test_vgi_header_written_by_hand(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint16).reshape(2, 3, 4)
    a.astype("<u2").tofile(tmp_path / "part.vol")
    (tmp_path / "part.vgi").write_text(
        "{volume1}\n[representation]\nsize = 4 3 2\ndatatype = unsigned integer\nbitsperelement = 16\n"
        "[file1]\nSize = 4 3 2\nName = part.vol\nDatatype = unsigned integer\nBitsPerElement = 16\n"
        "[geometry]\nresolution = 0.5 0.25 0.125\nunit = mm\n")
    for p in ("part.vgi", "part.vol"):
        vol = read_volume(tmp_path / p)
        np.testing.assert_array_equal(vol.array, a)
        assert vol.spacing == (0.125, 0.25, 0.5)


def test_raw_big_endian_sidecar(tmp_path):
    a = np.linspace(0, 1, 60, dtype=np.float32).reshape(3, 4, 5)
    a.astype(">f4").tofile(tmp_path / "be.raw")
    (tmp_path / "be.raw.json").write_text(json.dumps({"shape": [3, 4, 5], "dtype": "float32",
                                                      "endianness": "big", "spacing": [1, 2, 3]}))
    vol = read_volume(tmp_path / "be.raw")
    np.testing.assert_array_equal(vol.array, a)
    assert vol.array.dtype.isnative
    assert vol.spacing == (1.0, 2.0, 3.0)


def test_zarr_without_package_is_a_clear_error(tmp_path, rng, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "zarr", None)      # as if the package were not installed
    with pytest.raises(ScanError, match=r"zarr.*porelab\[cluster\]"):
        write_volume(tmp_path / "a.zarr", _scan(rng))
    (tmp_path / "b.zarr").mkdir()
    with pytest.raises(ScanError, match="zarr"):
        read_volume(tmp_path / "b.zarr")
    assert not (tmp_path / "a.zarr").exists()


def test_zarr_round_trip_is_lazy_and_keeps_spacing(tmp_path, rng):
    zarr = pytest.importorskip("zarr", reason="zarr is not installed (pip install 'porelab[cluster]')")
    a = _scan(rng)
    path = write_volume(tmp_path / "a.zarr", a, spacing=SPACING)
    vol = read_volume(path)
    assert isinstance(vol.array, zarr.Array)               # read chunk by chunk, not loaded
    np.testing.assert_array_equal(np.asarray(vol.array[1:3]), a[1:3])
    np.testing.assert_array_equal(read_volume(path, mmap=False).array, a)
    np.testing.assert_allclose(vol.spacing, SPACING)
    # a group written by other tools: its 'data' array is read
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("other", shape=(2, 2, 2), dtype="uint8")
    data = group.create_array("data", shape=a.shape, dtype=a.dtype)
    data[...] = a
    np.testing.assert_array_equal(np.asarray(read_volume(tmp_path / "g.zarr").array), a)


def _bad_inputs(tmp_path, rng):
    """(name, path) for each kind of bad input; every one must raise a one-line ScanError."""
    cases = {}
    cases["missing"] = tmp_path / "nope.npy"
    (tmp_path / "empty.npy").write_bytes(b"")
    cases["empty"] = tmp_path / "empty.npy"
    np.save(tmp_path / "full.npy", _scan(rng))
    data = (tmp_path / "full.npy").read_bytes()
    (tmp_path / "trunc.npy").write_bytes(data[: len(data) // 2])
    cases["truncated npy"] = tmp_path / "trunc.npy"
    (tmp_path / "text.npy").write_text("this is not an array\n" * 10)
    cases["text as npy"] = tmp_path / "text.npy"
    np.save(tmp_path / "flat.npy", np.ones((8, 8), np.float32) * np.arange(8))
    cases["2-D"] = tmp_path / "flat.npy"
    np.save(tmp_path / "nan.npy", np.full((4, 4, 4), np.nan, np.float32))
    cases["all NaN"] = tmp_path / "nan.npy"
    np.save(tmp_path / "const.npy", np.full((4, 4, 4), 7, np.uint8))
    cases["constant"] = tmp_path / "const.npy"
    _scan(rng).tofile(tmp_path / "short.raw")
    (tmp_path / "short.raw.json").write_text(json.dumps({"shape": [6, 7, 9], "dtype": "float32"}))
    cases["raw size != header"] = tmp_path / "short.raw"
    _scan(rng).tofile(tmp_path / "nohdr.raw")
    cases["raw without header"] = tmp_path / "nohdr.raw"
    write_volume(tmp_path / "ok.tif", _scan(rng))
    data = (tmp_path / "ok.tif").read_bytes()
    (tmp_path / "trunc.tif").write_bytes(data[:200])
    cases["truncated tiff"] = tmp_path / "trunc.tif"
    write_volume(tmp_path / "ok.nii.gz", _scan(rng))
    data = (tmp_path / "ok.nii.gz").read_bytes()
    (tmp_path / "trunc.nii.gz").write_bytes(data[: len(data) // 2])
    cases["truncated nifti"] = tmp_path / "trunc.nii.gz"
    (tmp_path / "scan.xyz").write_text("?")
    cases["unknown extension"] = tmp_path / "scan.xyz"
    (tmp_path / "emptydir").mkdir()
    cases["folder without slices"] = tmp_path / "emptydir"
    return cases


def test_bad_inputs_raise_one_line_scan_error_naming_the_file(tmp_path, rng):
    for what, path in _bad_inputs(tmp_path, rng).items():
        with pytest.raises(ScanError) as info:
            read_volume(path)
        msg = str(info.value)
        assert "\n" not in msg, what
        assert path.name in msg, (what, msg)


def test_constant_found_even_when_sample_misses_the_variation(tmp_path, monkeypatch):
    from porelab.io import volume

    monkeypatch.setattr(volume, "_SAMPLE_VOXELS", 16)  # forces a strided sample that skips slice 3
    a = np.zeros((8, 4, 4), np.float32)
    a[3, 1, 1] = 1.0
    np.save(tmp_path / "one.npy", a)
    assert read_volume(tmp_path / "one.npy").shape == (8, 4, 4)
    a[3, 1, 1] = 0.0
    np.save(tmp_path / "zero.npy", a)
    with pytest.raises(ScanError, match="constant"):
        read_volume(tmp_path / "zero.npy")


def test_mask_may_be_all_zero_and_checks_shape(tmp_path):
    np.save(tmp_path / "m.npy", np.zeros((3, 4, 5), np.uint8))
    m = read_mask(tmp_path / "m.npy")
    assert m.dtype == bool and not m.any()
    with pytest.raises(ScanError, match="shape"):
        read_mask(tmp_path / "m.npy", like=(3, 4, 6))


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(ScanError):
        write_volume(tmp_path / "x.npy", np.zeros((4, 4)))
    with pytest.raises(ScanError):
        write_volume(tmp_path / "x.unknown", np.zeros((2, 2, 2)))
    assert list(tmp_path.iterdir()) == []


def test_scan_stats_are_exact_across_slabs(rng):
    a = rng.normal(size=(40, 30, 20)).astype(np.float32)
    a[5, 5, 5] = np.nan
    from porelab.io import volume

    slabs = list(iter_slabs(a.shape, max_voxels=1000))
    assert len(slabs) == 40 and slabs[-1] == slice(39, 40)
    stats = scan_stats(a)
    finite = a[np.isfinite(a)]
    assert stats["nan_count"] == 1
    assert stats["min"] == finite.min() and stats["max"] == finite.max()
    assert stats["mean"] == pytest.approx(finite.astype(np.float64).mean(), rel=1e-9)
    assert volume._SLAB_VOXELS >= 1 << 20
