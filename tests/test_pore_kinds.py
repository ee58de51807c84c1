"""Pore kinds: synthetic gas, keyhole and lack-of-fusion shapes, surface pores, simulated pores of a seed the
rule's tuning never saw, and the kinds in summary.json, pores.csv and `porelab report`."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy import ndimage

from porelab.pores import KINDS, pore_table, summarise, write_report


def _field(shape=(40, 40, 40)):
    return np.ogrid[tuple(slice(0, s) for s in shape)]


def _sphere(r=3.5, c=(20, 20, 20)):
    z, y, x = _field()
    return (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= r * r


def _capsule(r=2.2, half=4.0, axis=0):
    g = [gi - 20.0 for gi in _field()]
    t = np.clip(g[axis], -half, half)
    g[axis] = g[axis] - t
    return sum(gi ** 2 for gi in g) <= r * r


def _flat(semi=(1.4, 6.0, 4.5)):
    z, y, x = _field()
    return ((z - 20) / semi[0]) ** 2 + ((y - 20) / semi[1]) ** 2 + ((x - 20) / semi[2]) ** 2 <= 1


@pytest.mark.parametrize("mask, kind", [(_sphere(), "gas"), (_sphere(2.2), "gas"), (_capsule(), "keyhole"),
                                        (_capsule(1.6, 3.0), "keyhole"), (_flat(), "lack_of_fusion"),
                                        (_flat((1.0, 3.0, 3.5)), "lack_of_fusion")])
def test_synthetic_shapes(mask, kind):
    (row,) = pore_table(mask)
    assert row["kind"] == kind, row


def test_keyhole_needs_the_build_axis():
    (along_z,) = pore_table(_capsule(axis=0))
    (along_x,) = pore_table(_capsule(axis=2))
    assert along_z["axis_tilt_deg"] < 1 and along_x["axis_tilt_deg"] > 89
    assert along_z["kind"] == "keyhole" and along_x["kind"] != "keyhole"


def test_flat_pore_standing_up_is_not_lack_of_fusion_by_flatness():
    (lying,) = pore_table(_flat())
    (standing,) = pore_table(np.ascontiguousarray(np.swapaxes(_flat(), 0, 2)))
    assert lying["normal_tilt_deg"] < 1 and standing["normal_tilt_deg"] > 89
    assert lying["flatness"] == pytest.approx(standing["flatness"], rel=1e-6)
    assert standing["kind"] != "lack_of_fusion" or standing["sphericity"] < 0.88


def test_surface_pore_needs_an_object_and_wins_over_shape():
    obj = np.zeros((40, 40, 40), bool)
    obj[:, :, :20] = True
    m = _sphere(3.5, (20, 20, 19))                # a ball half outside the part
    (row,) = pore_table(m)
    assert row["kind"] == "gas"                    # no object: nothing is known about the surface
    (row,) = pore_table(m, object_mask=obj)
    assert row["kind"] == "surface" and row["distance_to_surface_mm"] == 0.0


def test_simulated_pores_of_an_unseen_seed():
    """The exact pores of a phantom (seed 12345, never used to tune the rule): ≥ 90 % right for ≥ 30 voxels."""
    from porelab.simulate.phantom import make_phantom

    ph = make_phantom((96, 128, 128), part="cylinder", porosity=2.0, seed=12345)
    truth = ph.truth.astype(bool)
    rows = pore_table(truth, object_mask=ph.object.astype(bool))
    lab, n = ndimage.label(truth)
    placed = ndimage.maximum(ph.labels, lab, np.arange(1, n + 1)).astype(int)
    true = {p["id"]: {"lof": "lack_of_fusion"}.get(p["kind"], p["kind"]) for p in ph.pores}
    big = [(r["kind"], true[pid]) for r, pid in zip(rows, placed, strict=True) if r["voxels"] >= 30]
    assert len(big) >= 30
    assert {t for _, t in big} == {"gas", "keyhole", "lack_of_fusion"}
    assert np.mean([k == t for k, t in big]) >= 0.9
    assert not any(r["kind"] == "surface" for r in rows)  # the simulator's pores are all inside the part


def test_summary_csv_and_cli_count_kinds(tmp_path):
    obj = np.zeros((40, 40, 40), bool)
    obj[2:38, 2:38, 2:38] = True
    m = np.zeros_like(obj)
    parts = {"gas": _sphere(3.0, (10, 10, 10)), "keyhole": np.roll(_capsule(), 8, axis=1),
             "lack_of_fusion": np.roll(_flat(), (-8, 10), axis=(1, 2))}
    for p in parts.values():
        m |= p
    m[18:22, 0:4, 18:22] = True                   # open to the outside at y = 0, 1
    s = summarise(m, object_mask=obj)
    assert {k: v["count"] for k, v in s["kinds"].items()} == {"gas": 1, "keyhole": 1, "lack_of_fusion": 1,
                                                             "surface": 1}
    assert s["edge_pore_count"] == 1
    for k, p in parts.items():
        assert s["kinds"][k]["porosity_percent"] == pytest.approx(100 * p.sum() / obj.sum())
    assert sum(v["porosity_percent"] for v in s["kinds"].values()) == pytest.approx(s["porosity_percent"])
    assert s["kinds"]["surface"]["porosity_percent"] == pytest.approx(100 * 2 * 16 / obj.sum())  # y = 2, 3 inside

    write_report(m, tmp_path / "r", object_mask=obj)
    with open(tmp_path / "r" / "pores.csv") as f:
        kinds = sorted(r["kind"] for r in csv.DictReader(f))
    assert kinds == sorted(KINDS)
    js = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert js["kinds"]["surface"]["count"] == 1 and "porosity_percent_without_edge_pores" in js

    from click.testing import CliRunner

    from porelab.cli import main

    np.save(tmp_path / "m.npy", m.astype(np.uint8))
    np.save(tmp_path / "o.npy", obj.astype(np.uint8))
    res = CliRunner().invoke(main, ["report", str(tmp_path / "m.npy"), "--object", str(tmp_path / "o.npy"),
                                    "-o", str(tmp_path / "cli"), "--spacing", "1", "1", "1"])
    assert res.exit_code == 0, res.output
    assert "kinds: gas 1, keyhole 1, lack_of_fusion 1, surface 1; 1 cut by the field's edge" in res.stdout
