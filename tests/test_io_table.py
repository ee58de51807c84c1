"""The suffix table: it lists exactly the formats docs/formats.md documents, and each entry writes and reads
back its values and spacing through the reader and writer the table names."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from porelab.errors import ScanError
from porelab.io import FORMATS, SCAN_SUFFIXES, format_for, read_volume, write_volume
from porelab.io.formats import TIFF_FOLDER

DOC = Path(__file__).resolve().parents[1] / "docs" / "formats.md"
SPACING = (0.02, 0.0125, 0.01)


def _documented() -> tuple[set[str], bool]:
    """(suffixes, slice folder listed?) from the first column of the table under "Reading and writing scans"."""
    text = DOC.read_text()
    section = text.split("## Reading and writing scans", 1)[1]
    rows = re.search(r"\n(\|.*\|\n)+", section).group(0).strip().splitlines()[2:]  # skip header + rule
    suffixes, folder = set(), False
    for row in rows:
        first = row.split("|")[1]
        if "folder" in first:
            folder = True
            continue
        suffixes.update(t for t in re.findall(r"`([^`]+)`", first) if t.startswith("."))
    return suffixes, folder


def test_table_lists_exactly_the_documented_formats():
    suffixes, folder = _documented()
    assert len(suffixes) >= 10  # the parser found the table
    assert suffixes == set(SCAN_SUFFIXES)
    assert folder and TIFF_FOLDER in FORMATS
    assert len(SCAN_SUFFIXES) == len(set(SCAN_SUFFIXES))  # one format per suffix


CASES = [(fmt, suf) for fmt in FORMATS if fmt.write is not None for suf in (fmt.suffixes or ("",))]
READ_ONLY = [(fmt, suf) for fmt in FORMATS if fmt.write is None for suf in fmt.suffixes]


@pytest.mark.parametrize(("fmt", "suf"), CASES, ids=[f"{f.name}{s}" for f, s in CASES])
def test_every_table_entry_round_trips_with_spacing(tmp_path, fmt, suf):
    if fmt.name == "zarr":
        pytest.importorskip("zarr", reason="zarr is not installed (pip install 'porelab[cluster]')")
    rng = np.random.default_rng(7)
    array = rng.integers(0, 4000, size=(4, 6, 5)).astype(np.uint16)
    path = tmp_path / f"scan{suf}"
    assert format_for(path, write=True) is fmt
    write_volume(path, array, spacing=SPACING)
    assert format_for(path) is fmt
    vol = read_volume(path)
    np.testing.assert_array_equal(np.asarray(vol.array), array)
    assert vol.spacing_known
    np.testing.assert_allclose(vol.spacing, SPACING, rtol=1e-6)


@pytest.mark.parametrize(("fmt", "suf"), READ_ONLY, ids=[f"{f.name}{s}" for f, s in READ_ONLY])
def test_a_read_only_entry_refuses_to_write_and_says_so(tmp_path, fmt, suf):
    with pytest.raises(ScanError, match="read only") as info:
        write_volume(tmp_path / f"scan{suf}", np.ones((2, 3, 4), np.uint8))
    assert "\n" not in str(info.value) and not (tmp_path / f"scan{suf}").exists()
    assert f"{suf} (read only)" in str(pytest.raises(ScanError, format_for, tmp_path / "x.xyz", write=True).value)
    rows = [r for r in DOC.read_text().splitlines() if r.startswith("|") and f"`{suf}`" in r.split("|")[1]]
    assert rows and "read only" in rows[0]  # docs/formats.md says so in the format's row


@pytest.mark.parametrize("write", [False, True])
def test_unknown_suffix_names_every_supported_one(tmp_path, write):
    path = tmp_path / "scan.xyz"
    if not write:
        path.write_bytes(b"x")
    with pytest.raises(ScanError, match="unknown") as info:
        format_for(path, write=write)
    message = str(info.value)
    assert "\n" not in message
    assert all(s in message for s in SCAN_SUFFIXES) and "folder" in message


def test_a_folder_is_read_as_slices_unless_its_suffix_is_a_folder_format(tmp_path):
    (tmp_path / "odd.npy").mkdir()
    (tmp_path / "b.zarr").mkdir()
    assert format_for(tmp_path / "odd.npy") is TIFF_FOLDER
    assert format_for(tmp_path / "b.zarr").name == "zarr"
