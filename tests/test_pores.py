"""Pore table and report: analytic spheres and ellipsoids, porosity of placed voxels, files written."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy import ndimage

from porelab.errors import ScanError
from porelab.pores import COLUMNS, pore_table, summarise, write_report


def _ellipsoid(shape, centre_mm, semi_mm, spacing):
    g = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum(((gi * s - c) / a) ** 2 for gi, s, c, a in zip(g, spacing, centre_mm, semi_mm, strict=True)) <= 1


SPHERES = [((0.20, 0.20, 0.20), 0.06), ((0.40, 0.42, 0.30), 0.045), ((0.52, 0.15, 0.47), 0.03)]


def _spheres(spacing=(0.01, 0.01, 0.01), shape=(64, 64, 64)):
    m = np.zeros(shape, bool)
    for c, r in SPHERES:
        m |= _ellipsoid(shape, c, (r, r, r), spacing)
    return m


@pytest.mark.parametrize("spacing", [(0.01, 0.01, 0.01), (0.015, 0.01, 0.0075)])
def test_spheres_match_analytic_volume_diameter_axes(spacing):
    shape = tuple(int(0.64 / s) for s in spacing)
    rows = pore_table(_spheres(spacing, shape), spacing=spacing)
    assert len(rows) == 3
    assert set(rows[0]) == set(COLUMNS)
    for (c, r), row in zip(SPHERES, sorted(rows, key=lambda q: q["centroid_z_mm"]), strict=True):
        v = 4 / 3 * np.pi * r**3
        assert row["volume_mm3"] == pytest.approx(v, rel=0.08)
        assert row["eq_diameter_mm"] == pytest.approx(2 * r, rel=0.03)
        for a in ("major", "mid", "minor"):
            assert row[f"axis_{a}_mm"] == pytest.approx(2 * r, abs=0.6 * max(spacing))  # ~half a voxel
        assert row["aspect_ratio"] < 1.25  # the smallest ball is only 4 voxels across in z
        assert (row["centroid_z_mm"], row["centroid_y_mm"], row["centroid_x_mm"]) == pytest.approx(
            c, abs=0.5 * min(spacing))
        assert 0.85 < row["sphericity"] <= 1.0
        # the bounding box holds the ball and nothing more
        for k, ax in enumerate("zyx"):
            assert row[f"{ax}0"] * spacing[k] == pytest.approx(c[k] - r, abs=1.01 * spacing[k])
            assert (row[f"{ax}1"] - 1) * spacing[k] == pytest.approx(c[k] + r, abs=1.01 * spacing[k])


def test_elongated_pore_aspect_and_lower_sphericity():
    spacing = (0.01, 0.01, 0.01)
    m = _ellipsoid((60, 40, 40), (0.3, 0.2, 0.2), (0.16, 0.05, 0.05), spacing)  # keyhole-like, along z
    (row,) = pore_table(m, spacing=spacing)
    assert row["axis_major_mm"] == pytest.approx(0.32, rel=0.08)
    assert row["axis_minor_mm"] == pytest.approx(0.10, rel=0.1)
    assert row["aspect_ratio"] == pytest.approx(3.2, rel=0.12)
    assert row["z1"] - row["z0"] > 2.5 * (row["x1"] - row["x0"])
    (ball,) = pore_table(_ellipsoid((40, 40, 40), (0.2, 0.2, 0.2), (0.1, 0.1, 0.1), spacing), spacing=spacing)
    assert row["sphericity"] < ball["sphericity"] - 0.1


def test_counts_match_labels_and_single_voxels_are_finite(rng):
    m = rng.random((40, 40, 40)) < 0.03
    rows = pore_table(m)
    lab, n = ndimage.label(m)
    assert len(rows) == n
    sizes = np.bincount(lab.ravel())[1:]
    assert [r["voxels"] for r in rows] == sizes.tolist()
    assert all(0 < r["sphericity"] <= 1 and r["surface_area_mm2"] > 0 for r in rows)
    assert {r["kind"] for r in rows} <= {"gas", "keyhole", "lack_of_fusion"}  # no object: never "surface"


def test_distance_to_surface_is_min_edt_over_the_pore():
    spacing = (0.02, 0.01, 0.01)
    m = _spheres(spacing, (32, 64, 64))
    obj = np.zeros_like(m)
    obj[1:31, 4:60, 6:58] = True
    rows = pore_table(m, spacing=spacing, object_mask=obj)
    edt = ndimage.distance_transform_edt(obj, sampling=spacing)
    lab, _ = ndimage.label(m)
    for r in rows:
        assert r["distance_to_surface_mm"] == pytest.approx(edt[lab == r["id"]].min(), rel=1e-9)
    assert pore_table(m, spacing=spacing)[0]["distance_to_surface_mm"] is None


def test_porosity_matches_placed_voxels_and_states_reference():
    m = _spheres()
    obj = np.zeros_like(m)
    obj[8:60, 5:60, 5:60] = True
    placed = int((m & obj).sum())
    s = summarise(m, spacing=(0.01, 0.01, 0.01), object_mask=obj)
    assert s["pore_count"] == 3
    assert s["pore_volume_voxels"] == int(m.sum())
    assert s["object_volume_voxels"] == int(obj.sum())
    assert s["porosity_percent"] == pytest.approx(100 * placed / obj.sum())
    assert "given object mask" in s["porosity_reference"]
    assert s["largest_pore"]["voxels"] == max(r["voxels"] for r in pore_table(m))
    assert s["eq_diameter_mm"]["p10"] < s["eq_diameter_mm"]["p50"] < s["eq_diameter_mm"]["p90"]
    s_all = summarise(m)
    assert s_all["porosity_percent"] == pytest.approx(100 * m.sum() / m.size)
    assert "all voxels" in s_all["porosity_reference"]


def test_write_report_files_and_object_from_scan(tmp_path, rng):
    m = _spheres()
    part = np.zeros(m.shape, bool)
    part[4:60, 4:60, 4:60] = True
    scan = (part & ~m).astype(np.float32) + rng.normal(0, 0.05, m.shape).astype(np.float32)
    score = m.astype(np.float32) * 0.9
    s = write_report(m.astype(np.uint8), tmp_path / "rep", volume=scan, spacing=(0.01, 0.01, 0.01),
                     score=score, parameters={"threshold": 0.5})
    out = tmp_path / "rep"
    assert sorted(p.name for p in out.iterdir()) == ["overlay.png", "pores.csv", "report.html",
                                                      "size_histogram.png", "summary.json"]
    for png in ("overlay.png", "size_histogram.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "pores.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and list(rows[0]) == COLUMNS
    assert float(rows[0]["score_max"]) == pytest.approx(0.9)
    js = json.loads((out / "summary.json").read_text())
    assert js == json.loads(json.dumps(s))
    assert js["parameters"]["threshold"] == 0.5
    assert "from the scan" in js["porosity_reference"]
    # the object found from the scan is the part, so porosity is relative to it
    assert js["porosity_percent"] == pytest.approx(100 * m.sum() / part.sum(), rel=0.02)
    assert all(r["distance_to_surface_mm"] != "" for r in rows)


def test_empty_mask_and_bad_shapes(tmp_path):
    s = write_report(np.zeros((8, 9, 10), np.uint8), tmp_path / "empty")
    assert s["pore_count"] == 0 and s["porosity_percent"] == 0.0 and s["largest_pore"] is None
    assert s["units"] == "voxel"
    assert (tmp_path / "empty" / "overlay.png").exists()
    with pytest.raises(ScanError):
        write_report(np.zeros((8, 9, 10), bool), tmp_path / "bad", volume=np.zeros((8, 9, 11), np.float32))
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ScanError):
        pore_table(np.zeros((8, 9)))


@pytest.mark.parametrize("spacing", [(0, 1, 1), (1, -0.5, 1), (1, 1, float("nan")), (float("inf"), 1, 1), (1, 1)])
def test_spacing_must_be_three_finite_positive_numbers(tmp_path, spacing):
    from porelab.errors import ConfigError

    m = _spheres()
    for call in (lambda: pore_table(m, spacing=spacing), lambda: summarise(m, spacing=spacing),
                 lambda: write_report(m, tmp_path / "r", spacing=spacing)):
        with pytest.raises(ConfigError, match="spacing"):
            call()
    assert not (tmp_path / "r").exists()


def test_nan_masks_are_refused_and_binary_files_checked(tmp_path):
    from porelab.pores import check_binary_file

    with pytest.raises(ScanError, match="NaN"):
        pore_table(np.full((8, 9, 10), np.nan, np.float32))
    m = _spheres(shape=(16, 16, 16), spacing=(0.05, 0.05, 0.05))
    good = {"b.npy": m, "u8.npy": m.astype(np.uint8), "u255.npy": m.astype(np.uint8) * 255,
            "f.npy": m.astype(np.float32), "i16.npy": m.astype(np.int16), "zero.npy": np.zeros(m.shape, np.uint8)}
    for name, arr in good.items():
        np.save(tmp_path / name, arr)
        check_binary_file(tmp_path / name, role="pore mask")
    scan = (np.random.default_rng(0).normal(100, 10, m.shape)).astype(np.float32)
    bad = {"scan.npy": (scan, "not a pore mask"), "nan.npy": (np.full(m.shape, np.nan, np.float32), "NaN"),
           "half.npy": (m * 0.5, "not a pore mask"), "two.npy": (m.astype(np.int16) * 2, "not a pore mask"),
           "mixed.npy": (np.where(m, 255, 1).astype(np.uint8), "mixes 1 and 255")}
    for name, (arr, words) in bad.items():
        np.save(tmp_path / name, arr)
        with pytest.raises(ScanError, match=words) as exc:
            check_binary_file(tmp_path / name, role="pore mask")
        assert str(exc.value).startswith(str(tmp_path / name)) and "\n" not in str(exc.value)


def test_report_cli_refuses_zero_spacing(tmp_path):
    from click.testing import CliRunner

    from porelab.cli import main

    np.save(tmp_path / "m.npy", _spheres(shape=(16, 16, 16), spacing=(0.05, 0.05, 0.05)).astype(np.uint8))
    res = CliRunner().invoke(main, ["report", str(tmp_path / "m.npy"), "-o", str(tmp_path / "r"),
                                    "--spacing", "0", "1", "1"])
    assert res.exit_code == 2, res.output
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("porelab: error:") and "spacing" in err[0]
    assert not (tmp_path / "r").exists()


def test_report_cli_refuses_an_all_nan_mask_and_writes_nothing(tmp_path):
    from click.testing import CliRunner

    from porelab.cli import main

    np.save(tmp_path / "m.npy", np.full((16, 16, 16), np.nan, np.float32))
    res = CliRunner().invoke(main, ["report", str(tmp_path / "m.npy"), "-o", str(tmp_path / "r")])
    assert res.exit_code == 2, res.output
    assert "NaN" in res.output and "Traceback" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npy"]


# ---------------------------------------------------------------- sphericity against analytic shapes

def _wadell(v, a):
    return np.pi ** (1 / 3) * (6 * v) ** (2 / 3) / a


def _ball(r, off):
    n = int(np.ceil(r)) + 2
    g = np.ogrid[-n:n + 1, -n:n + 1, -n:n + 1]
    return sum((gi - o) ** 2 for gi, o in zip(g, off, strict=True)) <= r * r


def _cylinder(r, length, off):
    n = int(np.ceil(max(r, length / 2))) + 2
    z, y, x = np.ogrid[-n:n + 1, -n:n + 1, -n:n + 1]
    return ((y - off[1]) ** 2 + (x - off[2]) ** 2 <= r * r) & (np.abs(z - off[0]) <= length / 2)


def _box(a, b, c):
    return np.ones((a, b, c), bool), _wadell(a * b * c, 2 * (a * b + b * c + a * c))


def analytic_shapes():
    """(name, mask, analytic ψ, tolerance) of 30-5,000 voxels: balls (ψ = 1), cylinders (rods, analytic area
    2πr² + 2πrL), axis-aligned cubes, plates and box rods (their face area). Tolerances as in
    docs/experiments.md: balls read low by the residual staircase, boxes high (a mesh rounds their edges)."""
    rng = np.random.default_rng(0)
    out = []
    for r in (1.95, 2.5, 3, 4, 5, 6.5, 8, 10.5):
        out.append((f"ball r={r}", _ball(r, rng.uniform(-0.5, 0.5, 3)), 1.0, (-0.08, 0.0)))
    for r, length in ((1.5, 6), (2, 10), (3, 15), (4, 30), (5, 40)):
        ana = _wadell(np.pi * r * r * length, 2 * np.pi * r * r + 2 * np.pi * r * length)
        out.append((f"rod r={r} L={length}", _cylinder(r, length, rng.uniform(-0.5, 0.5, 3)), ana, (-0.04, 0.04)))
    for dims in ((4, 4, 4), (5, 5, 5), (7, 7, 7), (10, 10, 10), (13, 13, 13), (17, 17, 17),
                 (2, 6, 6), (2, 10, 10), (3, 12, 12), (2, 20, 20), (3, 30, 30), (4, 35, 35),
                 (8, 2, 2), (12, 3, 3), (20, 4, 4), (40, 5, 5)):
        m, ana = _box(*dims)
        tol = (0.0, 0.12 if m.sum() >= 100 else 0.13)
        out.append(("box {}x{}x{}".format(*dims), m, ana, tol))
    return out


@pytest.mark.parametrize("name, m, analytic, tol", analytic_shapes(), ids=lambda v: v if isinstance(v, str) else "")
def test_sphericity_of_analytic_shapes(name, m, analytic, tol):
    assert 30 <= m.sum() <= 5000
    (row,) = pore_table(np.pad(m, 1))
    assert tol[0] <= row["sphericity"] - analytic <= tol[1], (name, row["sphericity"], analytic)
    assert row["sphericity"] == pytest.approx(_wadell(row["volume_mm3"], row["surface_area_mm2"]), rel=1e-9)


def test_small_plate_is_not_a_sphere():
    m = np.zeros((12, 12, 12), bool)
    m[2:4, 2:8, 2:8] = True
    (row,) = pore_table(m)
    assert row["sphericity"] == pytest.approx(_wadell(72, 120), abs=0.1)  # 0.697 analytic
    assert row["sphericity"] < 0.8


def test_sphericity_does_not_depend_on_the_voxel_size():
    m = np.pad(_ball(4, (0.2, -0.1, 0.3)), 1)
    (a,) = pore_table(m)
    (b,) = pore_table(m, spacing=(0.01, 0.01, 0.01))
    assert b["sphericity"] == pytest.approx(a["sphericity"], rel=1e-5)
    assert b["surface_area_mm2"] == pytest.approx(a["surface_area_mm2"] * 1e-4, rel=1e-5)


# ---------------------------------------------------------------- the field's edge and the distance

def _cut_part():
    """A cylinder along z in a larger world, and the field of view that cuts it at z = 0 and x = 0."""
    world = np.zeros((40, 60, 70), bool)
    _, y, x = np.ogrid[:40, :60, :70]
    world[:] = (y - 30) ** 2 + (x - 30) ** 2 <= 22 ** 2
    field = (slice(10, 40), slice(4, 56), slice(20, 70))
    return world, field


def test_edge_pores_flagged_and_distance_measured_to_the_part_not_the_field():
    from scipy.spatial import cKDTree

    world, field = _cut_part()
    pores = np.zeros_like(world)
    pores[10:13, 28:32, 40:44] = True   # cut by the field at z = 0 (world z = 10)
    pores[20:24, 29:33, 20:23] = True   # cut by the field at x = 0 (world x = 20)
    pores[25:29, 40:44, 40:44] = True   # inside the field
    spacing = (0.02, 0.01, 0.01)
    m, obj = pores[field], world[field]
    rows = pore_table(m, spacing=spacing, object_mask=obj)
    assert [r["touches_edge"] for r in rows] == [True, True, False]
    lab, _ = ndimage.label(m)
    # the surface seen in the field: the part's outside voxels within it, by brute force
    tree = cKDTree(np.argwhere(~obj) * spacing)
    world_edt = ndimage.distance_transform_edt(world, sampling=spacing)  # the whole part, no field edge
    for r in rows:
        seen = tree.query(np.argwhere(lab == r["id"]) * spacing)[0].min()
        assert r["distance_to_surface_mm"] == pytest.approx(seen, rel=1e-9)
        assert r["distance_to_surface_mm"] > 0.02 and r["kind"] != "surface"  # a voxel inside the part
    for r in (rows[0], rows[2]):  # their nearest surface lies in the field: the true distance
        assert r["distance_to_surface_mm"] == pytest.approx(world_edt[field][lab == r["id"]].min(), rel=1e-9)
    s = summarise(m, spacing=spacing, object_mask=obj)
    assert s["edge_pore_count"] == 2
    assert s["porosity_percent"] == pytest.approx(100 * m.sum() / obj.sum())
    assert s["porosity_percent_without_edge_pores"] == pytest.approx(100 * 64 / obj.sum())


def test_an_object_mask_without_the_pores_still_measures_to_the_part_surface():
    world, field = _cut_part()
    pores = np.zeros_like(world)
    pores[10:13, 28:32, 40:44] = True  # cut by the field at z = 0; its surface in the field
    exact = ndimage.distance_transform_edt(world)
    solid = world & ~pores                        # material only: the pore is a hole in the object mask
    (row,) = pore_table(pores[field], object_mask=solid[field])
    assert row["distance_to_surface_mm"] == pytest.approx(exact[pores].min())
    assert row["kind"] != "surface"


def test_pore_open_to_the_surface():
    obj = np.zeros((20, 30, 30), bool)
    obj[2:18, 5:25, 5:25] = True
    m = np.zeros_like(obj)
    m[8:12, 3:7, 12:16] = True                     # crosses the object's face at y = 5
    m[8:12, 14:18, 12:16] = True                   # inside
    rows = pore_table(m, object_mask=obj)
    assert [r["kind"] == "surface" for r in rows] == [True, False]
    assert rows[0]["distance_to_surface_mm"] == 0.0
    assert rows[1]["distance_to_surface_mm"] == pytest.approx(7.0)  # to the outside slices z = 1 and z = 18
    s = summarise(m, object_mask=obj)
    assert s["kinds"]["surface"]["count"] == 1
    assert s["kinds"]["surface"]["porosity_percent"] == pytest.approx(100 * (m & obj)[:, :9].sum() / obj.sum())


def test_distance_grid_is_subsampled_per_axis_for_anisotropic_voxels():
    from porelab.pores.table import grid_factors

    spacing = (0.2, 0.05, 0.05)
    z, y, x = np.ogrid[:20, :80, :80]
    obj = ((y - 40) ** 2 + (x - 40) ** 2 <= 37 ** 2) & (z >= 1) & (z <= 18)
    m = np.zeros_like(obj)
    for c in ((5, 40, 40), (10, 20, 50), (14, 60, 30), (3, 40, 70)):
        m[c[0]:c[0] + 2, c[1]:c[1] + 4, c[2]:c[2] + 4] = True
    assert grid_factors(obj.shape, spacing, obj.size // 16) == (1, 4, 4)  # 0.2 mm cubes
    rows = pore_table(m, spacing=spacing, object_mask=obj, max_edt_voxels=obj.size // 16)
    exact = ndimage.distance_transform_edt(obj, sampling=spacing)
    lab, n = ndimage.label(m)
    assert n == len(rows) == 4
    diag = np.sqrt(3) * 0.2
    for r in rows:
        assert r["distance_to_surface_mm"] == pytest.approx(exact[lab == r["id"]].min(), abs=diag)
    s = summarise(m, spacing=spacing, object_mask=obj)
    assert s["parameters"]["distance_grid_factor"] == [1, 1, 1]  # the default budget fits the whole box
