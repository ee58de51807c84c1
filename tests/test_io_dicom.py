"""DICOM reading: a series folder sorted by slice position (not by name), rescaled values, spacing from the
tags, one multi-frame file, and one-line errors for several series, uneven gaps and a truncated slice."""

from __future__ import annotations

import contextlib
import json
import locale
import re

import numpy as np
import pytest
from click.testing import CliRunner

from porelab.cli import main
from porelab.errors import ScanError
from porelab.io import format_for, read_volume, write_volume

SimpleITK = pytest.importorskip("SimpleITK")

SLOPE, INTERCEPT = 2.0, -1024.0
UID = "1.2.826.0.1.3680043.2.1125.7.1"


@pytest.fixture(autouse=True)
def _keep_locale():
    """SimpleITK's DICOM writer leaves the C locale set after writing ImagePositionPatient (the character
    encoding Python then assumes for text files turns ASCII); restore it after every test."""
    saved = locale.setlocale(locale.LC_ALL)
    yield
    with contextlib.suppress(locale.Error):
        locale.setlocale(locale.LC_ALL, saved)


def _expected(shape=(5, 6, 7), seed=3) -> np.ndarray:
    """Rescaled values: stored integers × slope + intercept, so the writer's inverse rescale is exact."""
    stored = np.random.default_rng(seed).integers(0, 3000, size=shape)
    return (stored * SLOPE + INTERCEPT).astype(np.int16)


def _write_series(folder, values, *, pixel=(0.4, 0.3), origin=(10.0, -5.0, 2.0), gaps=None,
                  orientation=(1, 0, 0, 0, 1, 0), uid=UID, names=None):
    """Write ``values`` (z, y, x) as one DICOM slice per z, files named in a shuffled order.

    Slice k lies at ``origin + heights[k] × normal``; ``pixel`` is (row spacing y, column spacing x).
    """
    folder.mkdir(parents=True, exist_ok=True)
    n = values.shape[0]
    heights = np.cumsum([0.0] + list(gaps if gaps is not None else [0.7] * (n - 1)))
    row, col = np.array(orientation[:3], float), np.array(orientation[3:], float)
    normal = np.cross(row, col)
    order = np.random.default_rng(11).permutation(n)
    names = names or [f"IM{order[k]:04d}" for k in range(n)]  # no suffix: found by the DICM magic
    writer = SimpleITK.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetImageIO("GDCMImageIO")  # names without a suffix
    for k in range(n):
        image = SimpleITK.GetImageFromArray(values[k])
        image.SetSpacing((pixel[1], pixel[0]))
        pos = np.asarray(origin) + heights[k] * normal
        for tag, value in [("0008|0060", "CT"), ("0020|000e", uid), ("0020|0013", str(n - k)),
                           ("0020|0032", "\\".join(f"{v:.6f}" for v in pos)),
                           ("0020|0037", "\\".join(str(v) for v in orientation)),
                           ("0028|0030", f"{pixel[0]}\\{pixel[1]}"), ("0018|0050", "9.5"),
                           ("0028|1052", f"{INTERCEPT:g}"), ("0028|1053", f"{SLOPE:g}")]:
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / names[k]))
        writer.Execute(image)
    return folder


def test_series_is_sorted_by_position_rescaled_and_spaced(tmp_path):
    values = _expected()
    folder = _write_series(tmp_path / "series", values)
    names = sorted(p.name for p in folder.iterdir())
    vol = read_volume(folder)
    assert format_for(folder).name == "dicom"
    assert vol.shape == (5, 6, 7)
    np.testing.assert_array_equal(np.asarray(vol.array), values)
    assert vol.spacing_known
    np.testing.assert_allclose(vol.spacing, (0.7, 0.4, 0.3), rtol=1e-5)
    assert vol.meta["orientation"] == [1, 0, 0, 0, 1, 0]
    # the files in name order hold the slices in another order, so the reader did not sort by name
    by_name = [SimpleITK.GetArrayFromImage(SimpleITK.ReadImage(str(folder / n)))[0] for n in names]
    assert not all(np.array_equal(a, b) for a, b in zip(by_name, values, strict=True))


def test_series_in_a_tilted_frame_is_ordered_along_the_normal(tmp_path):
    # Rows along (cos a, sin a, 0), columns along +z: the normal (sin a, -cos a, 0) lies in the x-y plane,
    # so the slice order and gap come from projecting the positions on it, not from their z.
    values = _expected((4, 5, 6), seed=5)
    c, s = np.cos(0.5), np.sin(0.5)
    orientation = (c, s, 0.0, 0.0, 0.0, 1.0)
    folder = _write_series(tmp_path / "tilted", values, orientation=orientation, gaps=[1.25] * 3)
    vol = read_volume(folder)
    np.testing.assert_array_equal(np.asarray(vol.array), values)
    np.testing.assert_allclose(vol.spacing, (1.25, 0.4, 0.3), rtol=1e-5)


def test_positions_decreasing_along_the_normal_are_reversed(tmp_path):
    values = _expected((4, 5, 6), seed=9)
    folder = _write_series(tmp_path / "down", values, gaps=[-0.5] * 3)
    vol = read_volume(folder)
    np.testing.assert_array_equal(np.asarray(vol.array), values[::-1])  # z ascends along the normal
    np.testing.assert_allclose(vol.spacing, (0.5, 0.4, 0.3), rtol=1e-5)


def test_multiframe_file_reads_frames_spacing_and_rescale(tmp_path):
    values = _expected((4, 5, 6), seed=13)
    image = SimpleITK.GetImageFromArray(values)
    image.SetSpacing((0.3, 0.4, 0.9))  # SimpleITK (x, y, z)
    image.SetOrigin((1.0, 2.0, 3.0))
    for tag, value in [("0008|0060", "CT"), ("0028|1052", f"{INTERCEPT:g}"), ("0028|1053", f"{SLOPE:g}")]:
        image.SetMetaData(tag, value)
    path = tmp_path / "scan.dcm"
    SimpleITK.WriteImage(image, str(path))
    vol = read_volume(path)
    assert vol.meta["frames"] == 4
    np.testing.assert_array_equal(np.asarray(vol.array), values)
    np.testing.assert_allclose(vol.spacing, (0.9, 0.4, 0.3), rtol=1e-5)


def test_two_series_in_one_folder_is_a_one_line_error(tmp_path):
    folder = _write_series(tmp_path / "mixed", _expected((3, 4, 5)), names=["a1", "a2", "a3"])
    _write_series(folder, _expected((3, 4, 5), seed=4), uid=UID + ".2", names=["b1", "b2", "b3"])
    with pytest.raises(ScanError) as info:
        read_volume(folder)
    message = str(info.value)
    assert "\n" not in message and "2 DICOM series" in message
    assert UID in message and UID + ".2" in message and "folder of its own" in message


def test_uneven_slice_gaps_are_refused(tmp_path):
    folder = _write_series(tmp_path / "gap", _expected((4, 4, 5)), gaps=[0.7, 1.4, 0.7])
    with pytest.raises(ScanError, match="uneven slice spacing") as info:
        read_volume(folder)
    assert "\n" not in str(info.value)


def test_truncated_slice_is_named(tmp_path):
    folder = _write_series(tmp_path / "cut", _expected((4, 6, 7)), names=["s1.dcm", "s2.dcm", "s3.dcm", "s4.dcm"])
    data = (folder / "s3.dcm").read_bytes()
    (folder / "s3.dcm").write_bytes(data[:-20])
    with pytest.raises(ScanError, match="truncated") as info:
        read_volume(folder)
    message = str(info.value)
    assert "\n" not in message and "s3.dcm" in message


def test_truncated_multiframe_file_is_refused_before_reading(tmp_path):
    path = tmp_path / "scan.dcm"
    SimpleITK.WriteImage(SimpleITK.GetImageFromArray(np.arange(120, dtype=np.uint16).reshape(4, 5, 6)), str(path))
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ScanError, match=r"scan\.dcm: truncated or unreadable: header promises"):
        read_volume(path)


def test_one_slice_file_asks_for_the_folder(tmp_path):
    folder = _write_series(tmp_path / "one", _expected((3, 4, 5)), names=["x.dcm", "y.dcm", "z.dcm"])
    with pytest.raises(ScanError, match="give the folder"):
        read_volume(folder / "x.dcm")


def test_dicom_is_read_only(tmp_path):
    with pytest.raises(ScanError, match="read only"):
        write_volume(tmp_path / "out.dcm", np.zeros((2, 3, 4), np.uint8))
    assert not (tmp_path / "out.dcm").exists()


def test_cli_info_reads_a_dicom_folder(tmp_path):
    folder = _write_series(tmp_path / "series", _expected())
    result = CliRunner().invoke(main, ["info", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["shape"] == [5, 6, 7] and info["format"] == "dicom"
    np.testing.assert_allclose(info["spacing"], [0.7, 0.4, 0.3], rtol=1e-5)


def test_cli_error_is_one_line_exit_2(tmp_path):
    folder = _write_series(tmp_path / "gap", _expected((4, 4, 5)), gaps=[0.7, 1.4, 0.7])
    result = CliRunner().invoke(main, ["info", str(folder)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("porelab: error:") and "uneven slice spacing" in lines[-1]
    assert "Traceback" not in result.output


def test_multiframe_frames_stored_against_the_normal_are_reversed(tmp_path):
    values = _expected((4, 5, 6), seed=17)
    image = SimpleITK.GetImageFromArray(values)
    image.SetSpacing((0.3, 0.4, 1.0))
    image.SetOrigin((0.0, 0.0, 10.0))  # frame positions 0\0\10 ... 0\0\13, all of one length
    for tag, value in [("0008|0060", "CT"), ("0028|1052", f"{INTERCEPT:g}"), ("0028|1053", f"{SLOPE:g}")]:
        image.SetMetaData(tag, value)
    path = tmp_path / "down.dcm"
    SimpleITK.WriteImage(image, str(path))
    data = path.read_bytes()
    pattern = re.compile(rb"0\\0\\(1[0-3])\b")
    assert [int(m) for m in pattern.findall(data)] == [10, 11, 12, 13]
    # store the frames at descending positions 13, 12, 11, 10 (same length, so the file stays valid)
    data = pattern.sub(lambda m: b"0\\0\\%d" % (23 - int(m.group(1))), data)
    path.write_bytes(data)
    vol = read_volume(path)
    np.testing.assert_array_equal(np.asarray(vol.array), values[::-1])  # z ascends along the normal
    np.testing.assert_allclose(vol.spacing, (1.0, 0.4, 0.3), rtol=1e-5)
