"""``porelab dataset``: a manifest over the user's own scans (any format, labels optional), and everything that
loads datasets working without labels."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from porelab import crossval
from porelab.cli import main
from porelab.dataset import FORMAT, fingerprint, load_manifest, scan_name
from porelab.errors import ScanError


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error_line(r, *needles) -> str:
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.replace("\r", "\n").splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("porelab: error:"), r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def scans(tmp_path_factory, smoke_dataset):
    """The smoke dataset's scans as a user would have them: TIFF stacks with resolution tags, a NIfTI file,
    ``.npy`` files without a spacing sidecar, a TIFF hand-label mask of cyl1."""
    from porelab.io import write_volume

    d = tmp_path_factory.mktemp("user_scans")
    files = {}
    for s in smoke_dataset.samples:
        scan, _truth, _ = (np.asarray(a) for a in s.load())
        if s.name in ("cyl1", "cyl2", "cube"):
            files[s.name] = write_volume(d / "tiff" / f"{s.name}.tif", scan, spacing=s.spacing)
        elif s.name == "cyl3":
            files[s.name] = write_volume(d / "nifti" / f"{s.name}.nii.gz", scan, spacing=s.spacing)
        else:
            (d / "npy").mkdir(exist_ok=True)
            np.save(d / "npy" / f"{s.name}.npy", scan)
            files[s.name] = d / "npy" / f"{s.name}.npy"
    files["cyl1_mask"] = write_volume(d / "labels" / "cyl1_mask.tif", np.asarray(smoke_dataset["cyl1"].load()[1]),
                                      spacing=smoke_dataset["cyl1"].spacing)
    return {k: Path(v) for k, v in files.items()}


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))}


def test_dataset_over_tiff_and_nifti_with_optional_labels(tmp_path, scans, smoke_dataset):
    root = scans["cyl1"].parents[1]
    before = _snapshot(root)
    out = tmp_path / "mine"
    r = run("dataset", out, "--cv", scans["cyl1"], scans["cyl2"], scans["cyl3"], "--test", scans["cube"],
            "--labels", f"cyl1={scans['cyl1_mask']}")
    assert r.exit_code == 0, r.output
    assert "3 cv, 1 test, 1 labelled" in r.output
    assert _snapshot(root) == before                      # nothing written beside the user's scans
    assert sorted(p.name for p in out.iterdir()) == [".porelab-output", "manifest.json"]
    raw = json.loads((out / "manifest.json").read_text())
    assert raw["format"] == FORMAT == "porelab-dataset/2"
    by = {s["name"]: s for s in raw["samples"]}
    assert [s["name"] for s in raw["samples"]] == ["cyl1", "cyl2", "cyl3", "cube"]
    for name in ("cyl1", "cyl2", "cyl3", "cube"):
        s = by[name]
        assert s["path"] == str(scans[name]) and os.path.isabs(s["path"])     # where it is, not copied
        assert s["role"] == ("test" if name == "cube" else "cv")
        assert s["shape"] == [32, 48, 48] and s["dtype"] == "float32" and s["spacing_source"] == "file"
        assert s["spacing"] == pytest.approx(smoke_dataset[name].spacing)
        assert s["object"] is None and s["fingerprints"]["path"] == fingerprint(scans[name])
    assert by["cyl1"]["labels"] == str(scans["cyl1_mask"]) and by["cyl2"]["labels"] is None

    ds = load_manifest(out)
    assert [s.role for s in ds.samples] == ["cv", "cv", "cv", "test"] and ds.hard.name == "cube"
    assert not ds.labelled and ds["cyl1"].truth == scans["cyl1_mask"] and ds["cyl3"].labels is None
    cv, hard, _, refs = crossval.load_scans(out)
    assert [s.name for s in cv] == ["cyl1", "cyl2", "cyl3"] and hard.name == "cube" and hard.role == "test"
    np.testing.assert_array_equal(refs["cyl1"].labels, np.asarray(smoke_dataset["cyl1"].load()[1]) > 0)
    assert set(refs) == {"cyl1"} and not hasattr(cv[0], "truth")       # labels live apart from the scans
    from porelab.labels import object_mask

    for s in cv + [hard]:                                 # the object derived from the scan (Alg. 1 steps 6-8)
        np.testing.assert_array_equal(s.object, object_mask(s.raw))
        sim_obj = np.asarray(smoke_dataset[s.name].load()[2]) > 0
        assert (s.object == sim_obj).mean() > 0.97
    scan, labels, obj = ds["cyl2"].load()
    assert labels is None and obj.dtype == bool and obj.shape == scan.shape
    assert ds["cyl2"].load(derive_object=False)[2] is None
    # a labelless held-out scan: only the Algorithm 1 metrics, nothing against a truth it does not have
    metrics = crossval.evaluate(cv[1].scan, cv[1], "val", reference=refs.get("cyl2"))
    assert metrics and all(k.endswith("_alg1") for k in metrics)
    assert set(crossval.evaluate(cv[0].scan, cv[0], "val", reference=refs["cyl1"])) >= {"val_ap", "val_ap_alg1"}


def test_npy_without_spacing_needs_the_option(tmp_path, scans):
    out = tmp_path / "npy"
    r = run("dataset", out, "--cv", scans["cyl4"], scans["cyl5"])
    one_error_line(r, str(scans["cyl4"]), "no voxel size", "--spacing")
    assert not out.exists() and leftovers(tmp_path) == []
    r = run("dataset", out, "--cv", scans["cyl4"], "--cv", scans["cyl5"], "--spacing", "0.02", "0.01", "0.01")
    assert r.exit_code == 0, r.output
    ds = load_manifest(out)
    assert [s.spacing for s in ds.samples] == [(0.02, 0.01, 0.01)] * 2 and ds.test == [] and ds.hard is None
    assert {s["spacing_source"] for s in json.loads((out / "manifest.json").read_text())["samples"]} == {"option"}
    r = run("dataset", out, "--cv", scans["cyl4"], scans["cyl5"], "--spacing", "1", "1", "1")
    one_error_line(r, "--overwrite")                      # an earlier dataset is replaced only when asked
    r = run("dataset", out, "--cv", scans["cyl4"], scans["cyl5"], "--spacing", "1", "1", "1", "--overwrite")
    assert r.exit_code == 0 and load_manifest(out).samples[0].spacing == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("case", ["missing", "unreadable", "label_shape", "same_name", "one_cv", "no_spacing",
                                  "label_not_binary", "label_unknown_scan"])
def test_bad_input_is_one_line_and_leaves_no_manifest(tmp_path, scans, case):
    import tifffile

    cv = [scans["cyl1"], scans["cyl2"]]
    extra, needles = [], []
    if case == "missing":
        cv[1] = tmp_path / "gone.tif"
        needles = ["gone.tif"]
    elif case == "unreadable":
        cv[1] = tmp_path / "junk.tif"
        cv[1].write_bytes(b"not a tiff at all" * 10)
        needles = ["junk.tif"]
    elif case == "label_shape":
        mask = tmp_path / "small_mask.npy"
        np.save(mask, np.zeros((8, 8, 8), np.uint8))
        extra, needles = ["--labels", f"{cv[0]}={mask}"], ["small_mask.npy", "[8, 8, 8]", "[32, 48, 48]"]
    elif case == "same_name":
        other = tmp_path / "elsewhere" / "cyl1.tif"
        other.parent.mkdir()
        shutil.copy(scans["cyl1"], other)
        cv.append(other)
        needles = ["'cyl1'", str(other)]
    elif case == "one_cv":
        cv = cv[:1]
        needles = ["at least 2", str(cv[0])]
    elif case == "no_spacing":
        cv[1] = tmp_path / "plain.tif"
        tifffile.imwrite(cv[1], np.asarray(np.load(scans["cyl4"])))   # no resolution tags, no metadata
        needles = ["plain.tif", "no voxel size"]
    elif case == "label_not_binary":
        extra, needles = ["--labels", f"cyl2={scans['cyl3']}"], [str(scans["cyl3"]), "not a label mask"]
    elif case == "label_unknown_scan":
        extra, needles = ["--labels", f"cyl9={scans['cyl1_mask']}"], ["cyl9", "cyl1, cyl2"]
    out = tmp_path / "out"
    r = run("dataset", out, "--cv", *cv, *extra)
    one_error_line(r, *needles)
    assert not out.exists() and leftovers(tmp_path) == []


def test_a_changed_scan_is_refused_on_load(tmp_path, scans):
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    shutil.copy(scans["cyl1"], a)
    shutil.copy(scans["cyl2"], b)
    assert run("dataset", tmp_path / "d", "--cv", a, b).exit_code == 0
    shutil.copytree(tmp_path / "d", tmp_path / "moved")              # copies load (no mtimes in the fingerprint)
    assert len(load_manifest(tmp_path / "moved").cv) == 2
    shutil.copy(scans["cyl1"], b)                                       # same size, other content
    assert b.stat().st_size == scans["cyl2"].stat().st_size
    with pytest.raises(ScanError, match=r"b\.tif changed since the manifest was written \(content differs\)"):
        load_manifest(tmp_path / "d")
    shutil.copy(scans["cube"], b)                                       # other size
    with pytest.raises(ScanError, match=r"b\.tif changed since the manifest was written \(size differs\)"):
        load_manifest(tmp_path / "d")
    r = run("train", "--data", tmp_path / "d", "--net", "vae", "-o", tmp_path / "m", "--profile", "smoke")
    one_error_line(r, "b.tif", "changed since")


def test_scan_names():
    assert scan_name("/x/part_01.nii.gz") == "part_01" and scan_name("a/b.TIF") == "b"
    assert scan_name("slices/part2/") == "part2" and scan_name("v.zarr") == "v"


def test_simulated_datasets_old_and_new_format_load(tmp_path, smoke_dataset):
    raw = json.loads((smoke_dataset.root / "manifest.json").read_text())
    assert raw["format"] == "porelab-dataset/2" and raw["created_by"] == "porelab simulate"
    assert [s["role"] for s in raw["samples"]] == ["cv"] * 5 + ["test"]
    assert all(s["labels"] == f"{s['name']}_truth.npy" and s["object"] == f"{s['name']}_object.npy"
               for s in raw["samples"])
    # the same files described by the format-1 manifest that `porelab simulate` wrote before
    old = {"format": "porelab-dataset/1", "preset": "smoke", "seed": 0, "samples": [
        {"name": s["name"], "role": "hard" if s["role"] == "test" else "cv", "shape": s["part"],
         "material": s["material"], "scan": str(smoke_dataset.root / s["path"]),
         "truth": str(smoke_dataset.root / s["labels"]), "object": str(smoke_dataset.root / s["object"]),
         "spacing": s["spacing"], "quality": s["quality"], "porosity_percent": s["porosity_percent"],
         "pore_count": s["pore_count"], "dims": s["shape"]} for s in raw["samples"]]}
    (tmp_path / "manifest.json").write_text(json.dumps(old))
    ds = load_manifest(tmp_path)
    assert ds.format == "porelab-dataset/1" and ds.hard.name == "cube" and ds.hard.role == "test"
    assert ds.labelled and ds.hard.shape == "cube" and ds["cyl2"].material == "CoCr"
    for a, b in zip(ds.samples, smoke_dataset.samples):
        assert (a.name, a.role, a.scan, a.truth, a.object, a.spacing) == (b.name, b.role, b.scan, b.truth,
                                                                         b.object, b.spacing)
    cv, hard, _, refs = crossval.load_scans(tmp_path)
    assert len(cv) == 5 and hard.name == "cube" and all(refs[s.name].labels.any() for s in cv)


@pytest.fixture(scope="module")
def labelless(tmp_path_factory, scans):
    out = tmp_path_factory.mktemp("labelless") / "d"
    r = run("dataset", out, "--cv", scans["cyl1"], scans["cyl2"], scans["cyl3"])
    assert r.exit_code == 0, r.output
    return out


def test_train_unsupervised_on_a_labelless_dataset(tmp_path, labelless):
    r = run("train", "--data", labelless, "--net", "vae", "-o", tmp_path / "vae", "--profile", "smoke",
            "--max-epochs", "1")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout[r.stdout.index("{"):])
    assert summary["val_ap"] is None and summary["epochs"] == 1         # no truth: no metric against it
    meta = json.loads((tmp_path / "vae" / "model.json").read_text())["meta"]
    assert meta["validation_scan"] == "cyl3" and "val_ap_alg1" in meta["validation_metrics"]
    assert summary["val_ap_inj"] == meta["validation_metrics"]["val_ap_pp_inj"]     # the label-free score
    assert "pores injected into held-out scan cyl3" in meta["threshold_policy"]     # (clamped or not)
    r = run("train", "--data", labelless, "--net", "unet", "-o", tmp_path / "u", "--profile", "smoke",
            "--labels", "truth")
    one_error_line(r, "without labels", "cyl1, cyl2, cyl3", "heuristic")
    assert not (tmp_path / "u").exists()


def test_train_supervised_on_algorithm1_labels_of_a_labelless_dataset(tmp_path, labelless):
    r = run("train", "--data", labelless, "--net", "unet", "-o", tmp_path / "unet", "--profile", "smoke",
            "--labels", "heuristic", "--max-epochs", "1", "--scale", "0.25")
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "unet" / "model.json").read_text())["meta"]
    assert meta["labels"] == "heuristic" and meta["train_scans"] == ["cyl1", "cyl2"]
    assert "val_ap" not in meta["validation_metrics"] and "val_ap_alg1" in meta["validation_metrics"]
