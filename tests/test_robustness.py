"""The scan-time trade-off (section 4.8, Fig. 9): re-scans at 12 projection/exposure settings segmented by a
tiny trained model; the table, the plot, the CLI's one-line errors and the MLflow entry point."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from porelab.cli import main

ROOT = Path(__file__).resolve().parents[1]
CROP = slice(8, 24)         # 16 of the smoke cylinder's 32 slices: every re-scan stays a second or two


@pytest.fixture(scope="module")
def trained(smoke_dataset, tmp_path_factory):
    """A unet trained for one epoch on the smoke cylinders (threshold F1-optimal on the validation scan)."""
    from porelab.model import PoreModel

    out = tmp_path_factory.mktemp("robustness") / "model"
    res = CliRunner().invoke(main, ["train", "--data", str(smoke_dataset.root), "--net", "unet", "-o", str(out),
                                    "--profile", "smoke", "--labels", "truth", "--max-epochs", "1", "--seed", "3"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    fast = out.parent / "model_fast"                 # patches side by side: a quarter of the inference work
    PoreModel.load(out).replace(overlap=0.0).save(fast)
    return PoreModel.load(fast), fast


@pytest.fixture(scope="module")
def case(smoke_dataset, trained):
    s = smoke_dataset.cv[0]
    scan = np.load(s.scan)[CROP]
    truth = np.load(s.truth)[CROP] != 0
    acq = {"base_projections": s.quality["projections"], "base_exposure": s.quality["exposure"],
           "voxel_mm": s.spacing[1]}
    return scan, truth, acq, trained[0]


@pytest.fixture(scope="module")
def unlabelled(case):
    from porelab.robustness import run_robustness

    scan, _, acq, model = case
    return run_robustness(scan, model, seed=5, **acq)


def test_twelve_rescans_in_grid_order_with_porosity_columns(unlabelled):
    from porelab.robustness import COMMON_COLUMNS, REFERENCE_COLUMNS

    r = unlabelled
    rows = r["rows"]
    assert [(x["projections_percent"], x["exposure_percent"]) for x in rows] == \
        [(p, e) for p in (100, 50, 33) for e in (100, 75, 50, 25)]
    assert [x["seed"] for x in rows] == list(range(5, 17))
    assert r["labelled"] is False and r["metric"] == "porosity_percent"
    assert r["columns"] == list(COMMON_COLUMNS) + list(REFERENCE_COLUMNS)
    ref = r["reference"]
    assert "ap" not in ref and 0 < ref["porosity_percent"] < 100 and ref["pore_count"] > 0
    for x in rows:
        assert set(x) == set(r["columns"]) and "ap" not in x
        assert 0 <= x["porosity_percent"] <= 100 and 0 <= x["dice_vs_reference"] <= 1
        assert x["reference_porosity_percent"] == ref["porosity_percent"]
        assert x["reference_pore_count"] == ref["pore_count"]
        assert x["porosity_difference"] == x["porosity_percent"] - ref["porosity_percent"]
        assert x["pore_count_difference"] == x["pore_count"] - ref["pore_count"]
        assert x["threshold"] == ref["threshold"]


def test_the_full_quality_rescan_is_close_to_the_original(unlabelled):
    """100 % / 100 % only re-projects and reconstructs (no added noise). The re-scan is a little smoother
    than the original (a second Hann-filtered FBP), which removes some of a one-epoch model's speckle, so
    the bound is loose; the segmentation still mostly agrees voxel by voxel."""
    full = unlabelled["rows"][0]
    ref = unlabelled["reference"]
    assert (full["projections_percent"], full["exposure_percent"]) == (100, 100)
    assert abs(full["porosity_percent"] - ref["porosity_percent"]) <= 0.4 * ref["porosity_percent"]
    assert full["dice_vs_reference"] >= 0.6


def test_a_row_is_the_segmentation_of_that_rescan(case, unlabelled):
    """Row 7 (50 % projections, 25 % exposure, seed 5 + 7) recomputed by hand: degrade, segment, count."""
    from scipy import ndimage

    from porelab.labels import object_mask
    from porelab.segment import segment
    from porelab.simulate.ct import degrade

    scan, _, acq, model = case
    row = unlabelled["rows"][7]
    assert (row["projections_percent"], row["exposure_percent"]) == (50, 25)
    mask = segment(degrade(scan, projections=0.5, exposure=0.25, seed=12, **acq), model).mask
    obj = object_mask(scan)
    assert row["mask_voxels"] == int(mask.sum())
    assert row["porosity_percent"] == 100.0 * int((mask & obj).sum()) / int(obj.sum())
    assert row["pore_count"] == ndimage.label(mask, structure=ndimage.generate_binary_structure(3, 1))[1]


def test_with_labels_the_rows_hold_ap_and_auc(case):
    from porelab.labels import object_mask
    from porelab.metrics import evaluate_scores
    from porelab.robustness import COMMON_COLUMNS, LABEL_COLUMNS, run_robustness
    from porelab.segment import segment
    from porelab.simulate.ct import degrade

    scan, truth, acq, model = case
    r = run_robustness(scan, model, labels=truth, projections=(1.0, 1 / 3), exposures=(1.0,), **acq)
    assert r["labelled"] is True and r["metric"] == "ap"
    assert r["columns"] == list(COMMON_COLUMNS) + list(LABEL_COLUMNS)
    assert [(x["projections_percent"], x["exposure_percent"]) for x in r["rows"]] == [(100, 100), (33, 100)]
    for x in [r["reference"], *r["rows"]]:
        assert 0 <= x["ap"] <= 1 and 0 <= x["auc"] <= 1 and 0 <= x["dice"] <= 1
        assert "reference_porosity_percent" not in x
    # exact: AP/AUC/Dice inside the original scan's object, of the segmentation of that re-scan
    score = segment(degrade(scan, projections=1 / 3, exposure=1.0, seed=1, **acq), model).score
    m = evaluate_scores(score, truth, mask=object_mask(scan), threshold=model.threshold)
    assert r["rows"][1]["ap"] == m["ap"] and r["rows"][1]["auc"] == m["auc"] and r["rows"][1]["dice"] == m["dice"]
    assert abs(r["rows"][0]["ap"] - r["reference"]["ap"]) <= 0.1          # the full-quality re-scan


def test_the_table_and_the_plot(unlabelled, tmp_path):
    from porelab.robustness import write_robustness

    paths = write_robustness(tmp_path, unlabelled, extra={"scan": "cyl1"})
    with open(paths["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and list(rows[0]) == unlabelled["columns"]
    assert float(rows[5]["porosity_percent"]) == pytest.approx(unlabelled["rows"][5]["porosity_percent"], rel=1e-12)
    data = json.loads(paths["json"].read_text())
    assert data["scan"] == "cyl1" and len(data["rows"]) == 12 and data["reference"] == unlabelled["reference"]
    im = Image.open(io.BytesIO(paths["png"].read_bytes()))
    assert im.format == "PNG" and im.size == (800, 500)
    assert np.asarray(im.convert("L")).std() > 10


def test_bad_arguments_are_one_line_errors(case):
    from porelab.errors import ConfigError, ScanError
    from porelab.robustness import run_robustness

    scan, truth, _, model = case
    for bad in ((0.0,), (1.5,), (), (0.5, 0.5)):
        with pytest.raises(ConfigError):
            run_robustness(scan, model, projections=bad)
    with pytest.raises(ScanError, match="labels shape"):
        run_robustness(scan, model, labels=truth[1:])
    with pytest.raises(ScanError, match="3-D"):
        run_robustness(scan[0], model)


def test_cli_writes_the_table_and_the_plot(smoke_dataset, trained, tmp_path):
    s = smoke_dataset.cv[0]
    out = tmp_path / "rob"
    args = ["robustness", str(s.scan), "--model", str(trained[1]), "-o", str(out), "--projections", "1",
            "--exposures", "1,0.25", "--labels", str(s.truth), "--quiet"]
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == [".porelab-output", "robustness.csv", "robustness.json",
                                                     "robustness.png"]
    data = json.loads((out / "robustness.json").read_text())
    assert data["metric"] == "ap" and len(data["rows"]) == 2 and data["labels"] == str(s.truth)
    assert data["base_projections"] == s.quality["projections"]          # from the dataset's manifest
    res = CliRunner().invoke(main, args)                                # an earlier output: --overwrite needed
    assert res.exit_code == 2 and "--overwrite" in res.output


@pytest.mark.parametrize("what", ["missing model", "bad scan", "2-D scan", "bad fraction"])
def test_cli_errors_are_one_line_and_write_nothing(smoke_dataset, trained, tmp_path, what):
    scan, model = str(smoke_dataset.cv[0].scan), str(trained[1])
    extra = []
    if what == "missing model":
        model = str(tmp_path / "no_such_model")
    elif what == "bad scan":
        scan = str(tmp_path / "scan.npy")
        Path(scan).write_text("not a scan")
    elif what == "2-D scan":
        scan = str(tmp_path / "slice.npy")
        np.save(scan, np.load(smoke_dataset.cv[0].scan)[0])
    else:
        extra = ["--exposures", "1,0"]
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["robustness", scan, "--model", model, "-o", str(out), *extra])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("porelab: error: ")
    assert not out.exists()


def test_mlflow_entry_point_logs_the_table_and_plot(smoke_dataset, trained, tmp_path):
    """Inside `mlflow run` (MLFLOW_RUN_ID set) the entry point logs the three files and one metric per re-scan
    to that run."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("rob")).info.run_id
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update({"MLFLOW_TRACKING_URI": uri, "MLFLOW_RUN_ID": run_id, "OMP_NUM_THREADS": "1"})
    res = subprocess.run([sys.executable, str(ROOT / "entrypoints" / "robustness.py"),
                          str(smoke_dataset.cv[0].scan), "-o", "rob", "--model", str(trained[1]), "--labels", "",
                          "--projections", "1", "--exposures", "0.5", "--quiet"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "rob" / "robustness.csv").is_file()               # beside the store, not in the project
    logged = sorted(a.path for a in client.list_artifacts(run_id, "robustness"))
    assert logged == ["robustness/robustness.csv", "robustness/robustness.json", "robustness/robustness.png"]
    metrics = client.get_run(run_id).data.metrics
    data = json.loads((tmp_path / "rob" / "robustness.json").read_text())
    assert metrics["porosity_percent_p100_e50"] == pytest.approx(data["rows"][0]["porosity_percent"])
    assert metrics["porosity_percent_original"] == pytest.approx(data["reference"]["porosity_percent"])
