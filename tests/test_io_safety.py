"""Outputs never destroy what porelab did not write, never replace an input, are atomic, and a killed or
interrupted command leaves no temporary files behind (nor a later run's)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from porelab.cli import main
from porelab.errors import ConfigError, ScanError
from porelab.io import MARKER, atomic_path, clean_stale, is_porelab_output, prepare_output


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` (relative path → sha256), hidden files included."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(r, *needles):
    assert r.exit_code == 2, r.output
    # progress bars end in carriage returns and warnings have their own lines: the error is one line of its own
    lines = [ln for ln in r.stderr.replace("\r", "\n").splitlines() if "porelab: error" in ln]
    assert len(lines) == 1 and lines[0].startswith("porelab: error:"), r.stderr
    assert "Traceback" not in r.output
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and (".tmp" in p.name or
                                                                                  p.name.endswith(".old")))


def _scan(shape=(12, 24, 24), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    part = ((y - shape[1] / 2) ** 2 + (x - shape[2] / 2) ** 2) < (0.35 * shape[1]) ** 2
    pores = ((z - shape[0] // 2) ** 2 + (y - shape[1] // 2) ** 2 + (x - shape[2] // 2 - 3) ** 2) <= 4
    return (np.where(part & ~pores, 1.0, 0.05) + rng.normal(0, 0.03, shape)).astype(np.float32)


@pytest.fixture
def work(tmp_path):
    """A folder holding a scan and an unrelated file."""
    d = tmp_path / "work"
    d.mkdir()
    np.save(d / "scan.npy", _scan())
    (d / "notes.txt").write_text("not porelab's\n")
    return d


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny untrained UNet model folder (scoring is all the tests need)."""
    import torch

    from porelab.model import PoreModel
    from porelab.nets import build
    from porelab.normalise import Normalisation

    torch.manual_seed(0)
    kwargs = {"scale": 0.125}
    model = PoreModel.from_trained(build("unet", **kwargs), "unet", Normalisation.fit(_scan()), "smoke",
                                   net_kwargs=kwargs, patch=16, threshold=0.5)
    return model.save(tmp_path_factory.mktemp("io_model") / "model")


# ---------------------------------------------------------------------------------------------------------------
# never delete what porelab did not write; never an input
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", [".", "./", "..", "work_sub"])
def test_label_into_the_current_folder_or_its_parent_is_refused(work, monkeypatch, target):
    sub = work / "work_sub"
    sub.mkdir()
    (sub / "keep.txt").write_text("keep")
    cwd = sub if target == ".." else work
    monkeypatch.chdir(cwd)
    before = snapshot(work)
    scan = work / "scan.npy"
    r = run("label", scan, "-o", target)
    one_error_line(r, target.rstrip("/") or ".")
    assert snapshot(work) == before and temps(work) == [] and temps(sub) == []


def test_label_into_an_unrelated_folder_is_refused_even_with_overwrite(work):
    other = work / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("years of work")
    before = snapshot(work)
    for extra in ([], ["--overwrite"]):
        r = run("label", work / "scan.npy", "-o", other, *extra)
        one_error_line(r, "not written by porelab")
        assert snapshot(work) == before


def test_segment_refuses_a_folder_holding_its_input_and_the_cwd(work, model_dir, monkeypatch):
    before = snapshot(work)
    r = run("segment", work / "scan.npy", "-o", work, "--model", model_dir)
    one_error_line(r, "holds the input")
    monkeypatch.chdir(work)
    r = run("segment", "scan.npy", "-o", ".", "--model", model_dir, "--overwrite")
    one_error_line(r, "holds the input")
    r = run("segment", "scan.npy", "-o", model_dir, "--model", model_dir, "--overwrite")
    one_error_line(r, "overwrite the input")
    assert snapshot(work) == before and temps(work) == []


def test_train_refuses_a_non_empty_folder_before_training(smoke_dataset, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "data.csv").write_text("1,2,3\n")
    before = snapshot(tmp_path)
    t0 = time.perf_counter()
    r = run("train", "--data", smoke_dataset.root, "--net", "unet", "-o", out, "--profile", "smoke",
            "--max-epochs", "1")
    one_error_line(r, "mine", "not written by porelab")
    assert time.perf_counter() - t0 < 30 and snapshot(tmp_path) == before


def test_degrade_never_overwrites_its_input(work):
    before = snapshot(work)
    for extra in ([], ["--overwrite"]):
        r = run("degrade", work / "scan.npy", "-o", work / "scan.npy", "--quiet", *extra)
        one_error_line(r, "overwrite the input")
    os.link(work / "scan.npy", work / "hardlink.npy")
    r = run("degrade", work / "scan.npy", "-o", work / "hardlink.npy", "--quiet", "--overwrite")
    one_error_line(r, "overwrite the input")
    assert {k: v for k, v in snapshot(work).items() if k != "hardlink.npy"} == before


def test_file_outputs_need_overwrite(work):
    out = work / "labels.npy"
    assert run("label", work / "scan.npy", "-o", out).exit_code == 0
    first = out.read_bytes()
    out.write_bytes(first + b"")  # unchanged content, fresh mtime
    r = run("label", work / "scan.npy", "-o", out, "--min-extent", "1")
    one_error_line(r, "labels.npy", "--overwrite")
    assert out.read_bytes() == first
    r = run("label", work / "scan.npy", "-o", out, "--overwrite")
    assert r.exit_code == 0, r.output
    assert temps(work) == []


def test_report_folder_is_marked_replaced_only_with_overwrite_and_atomically(work, monkeypatch):
    mask = work / "mask.npy"
    np.save(mask, (_scan() < 0.5).astype(np.uint8))
    rep = work / "rep"
    assert run("report", mask, "-o", rep).exit_code == 0
    assert is_porelab_output(rep) == "report" and json.loads((rep / MARKER).read_text())["command"] == "report"
    (rep / "stale.txt").write_text("from an older run")
    before = snapshot(work)
    r = run("report", mask, "-o", rep)
    one_error_line(r, "rep", "--overwrite")
    assert snapshot(work) == before

    import porelab.pores

    def boom(*a, **k):
        raise ScanError("disk trouble while writing the report")

    monkeypatch.setattr(porelab.pores, "write_report", boom)
    r = run("report", mask, "-o", rep, "--overwrite")
    one_error_line(r, "disk trouble")
    assert snapshot(work) == before and temps(work) == []           # the old output is intact
    monkeypatch.undo()
    r = run("report", mask, "-o", f"{rep}/", "--overwrite")       # a trailing slash names the same folder
    assert r.exit_code == 0, r.output
    assert (rep / "summary.json").is_file() and not (rep / "stale.txt").exists()
    assert temps(work) == []


def test_atomic_path_never_replaces_foreign_folders(tmp_path):
    target = tmp_path / "t"
    target.mkdir()
    (target / "x").write_text("x")
    with pytest.raises(ConfigError, match="not written by porelab"), atomic_path(target, is_dir=True) as tmp:
        tmp.mkdir(exist_ok=True)
        (tmp / "new").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["t"] and (target / "x").read_text() == "x"
    model = tmp_path / "m"
    model.mkdir()
    (model / "model.json").write_text(json.dumps({"format": "porelab-model/1"}))
    assert is_porelab_output(model) == "model"
    with pytest.raises(ConfigError, match="--overwrite"):
        prepare_output(model, is_dir=True)
    assert prepare_output(f"{model}/", is_dir=True, overwrite=True) == model.resolve()


# ---------------------------------------------------------------------------------------------------------------
# killed writers: SIGTERM cleans up; a later run removes a kill -9's leftovers
# ---------------------------------------------------------------------------------------------------------------
def _wait_for(predicate, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


def _start(args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "porelab", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def big_scan(tmp_path_factory):
    """A scan that takes the tiny model several seconds to segment."""
    path = tmp_path_factory.mktemp("io_big") / "big.npy"
    np.save(path, _scan((64, 128, 128)))
    return path


def _has_temp(folder: Path, stem: str):
    return lambda: any(p.name.startswith(f".{stem}.") and ".tmp" in p.name for p in folder.iterdir())


def test_sigterm_on_segment_removes_its_temporary_folder(tmp_path, model_dir, big_scan):
    proc = _start(["segment", big_scan, "-o", tmp_path / "seg", "--model", model_dir], tmp_path)
    try:
        started = _wait_for(_has_temp(tmp_path, "seg"), proc)
        assert started, proc.communicate()[1][-2000:]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (143, 130), err[-2000:]
    assert err.strip().splitlines()[-1] == "porelab: interrupted"
    assert list(tmp_path.iterdir()) == []


def test_a_later_run_removes_what_a_killed_writer_left(tmp_path, model_dir, big_scan):
    proc = _start(["segment", big_scan, "-o", tmp_path / "seg", "--model", model_dir], tmp_path)
    try:
        assert _wait_for(_has_temp(tmp_path, "seg"), proc), proc.communicate()[1][-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL  # a killed process never exits 0
    assert temps(tmp_path), "the killed writer's temporary folder is there"
    (tmp_path / "unrelated.tmp").write_text("not a porelab temporary")
    r = run("segment", big_scan, "-o", tmp_path / "seg", "--model", tmp_path / "no_model")  # fails fast
    assert r.exit_code == 2
    assert temps(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["unrelated.tmp"]


def test_stale_aside_folder_is_restored_when_the_target_is_missing(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    old = tmp_path / f".seg.{dead.pid}.abcd1234.old"
    old.mkdir()
    (old / "summary.json").write_text("{}")
    partial = tmp_path / f".seg.{dead.pid}.zz99.tmp"
    partial.mkdir()
    live = tmp_path / f".seg.{os.getpid()}.live.tmp"               # a running writer's: left alone
    live.mkdir()
    clean_stale(tmp_path / "seg")
    assert (tmp_path / "seg" / "summary.json").is_file()
    assert not old.exists() and not partial.exists() and live.exists()


def test_sigterm_during_simulate_keeps_the_old_dataset(tmp_path, smoke_dataset):
    ds = tmp_path / "ds"
    shutil.copytree(smoke_dataset.root, ds)
    before = snapshot(ds)
    proc = _start(["simulate", ds, "--preset", "quick", "--overwrite", "--quiet"], tmp_path)
    try:
        assert _wait_for(_has_temp(tmp_path, "ds"), proc), proc.communicate()[1][-2000:]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (143, 130), err[-2000:]
    assert snapshot(ds) == before and sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


# ---------------------------------------------------------------------------------------------------------------
# datasets: written whole, checked on loading
# ---------------------------------------------------------------------------------------------------------------
def test_simulate_refuses_existing_outputs_and_bad_seeds(tmp_path, smoke_dataset):
    ds = tmp_path / "ds"
    shutil.copytree(smoke_dataset.root, ds)
    r = run("simulate", ds, "--preset", "smoke", "--quiet")
    one_error_line(r, "porelab simulate output", "--overwrite")
    (ds / MARKER).unlink(missing_ok=True)                 # a dataset written before the marker existed
    r = run("simulate", ds, "--preset", "smoke", "--quiet")
    one_error_line(r, "porelab dataset output", "--overwrite")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("a")
    r = run("simulate", tmp_path / "docs", "--preset", "smoke", "--quiet", "--overwrite")
    one_error_line(r, "not written by porelab")
    r = run("simulate", tmp_path / "new", "--preset", "smoke", "--seed", "-1", "--quiet")
    one_error_line(r, "seed")
    assert not (tmp_path / "new").exists() and temps(tmp_path) == []


def test_manifest_is_checked_against_the_files_shapes(tmp_path, smoke_dataset):
    from porelab.simulate.dataset import load_manifest

    ds = tmp_path / "ds"
    shutil.copytree(smoke_dataset.root, ds)
    np.save(ds / "cyl2_truth.npy", np.zeros((8, 8, 8), np.uint8))     # a file of another dataset
    with pytest.raises(ScanError, match=r"cyl2_truth.npy has shape \[8, 8, 8\], the manifest expects \[32, 48, 48\]"):
        load_manifest(ds)
    r = run("train", "--data", ds, "--net", "unet", "-o", tmp_path / "m", "--profile", "smoke")
    one_error_line(r, "cyl2_truth.npy", "[8, 8, 8]")
    assert not (tmp_path / "m").exists()


# ---------------------------------------------------------------------------------------------------------------
# smaller defects
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("option", [["--base-projections", "0"], ["--base-exposure", "0"],
                                    ["--base-exposure", "-3"], ["--base-projections", "-1"]])
def test_degrade_refuses_non_positive_base_settings(work, option):
    before = snapshot(work)
    r = run("degrade", work / "scan.npy", "-o", work / "d.npy", "--quiet", *option)
    one_error_line(r, option[0])
    assert snapshot(work) == before


def test_evaluate_json_alone_writes_nothing(work):
    truth = work / "truth.npy"
    np.save(truth, (_scan() < 0.5).astype(np.uint8))
    before = snapshot(work)
    r = run("evaluate", work / "scan.npy", truth, "--json")
    assert r.exit_code == 0, r.output
    assert "ap" in json.loads(r.stdout)
    assert snapshot(work) == before


def test_permission_error_on_an_output_is_one_line_exit_2(work, monkeypatch):
    from porelab.io import atomic

    def denied(tmp, is_dir):
        raise PermissionError(13, "Permission denied", str(tmp))

    monkeypatch.setattr(atomic, "_create", denied)
    r = run("label", work / "scan.npy", "-o", work / "l.npy")
    one_error_line(r, "permission denied")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_folder_is_one_line_exit_2(work):
    ro = work / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        r = run("label", work / "scan.npy", "-o", ro / "l.npy")
        one_error_line(r, "permission denied")
    finally:
        ro.chmod(0o755)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_label_refuses_a_fifo_instead_of_hanging(tmp_path):
    fifo = tmp_path / "scan.npy"
    os.mkfifo(fifo)
    p = subprocess.run([sys.executable, "-m", "porelab", "label", str(fifo), "-o", str(tmp_path / "l.npy")],
                       capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 2 and "FIFO" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "l.npy").exists()


_SWALLOWING_COMMAND = """
import os, signal, sys
from pathlib import Path

import click

import porelab.cli as cli
from porelab.io import atomic_path


@click.command()
@click.argument("out", type=click.Path(path_type=Path))
def swallow(out):
    with atomic_path(out, is_dir=True) as tmp:
        (tmp / "a.txt").write_text("first half")
        try:
            os.kill(os.getpid(), signal.SIGTERM)   # the handler raises KeyboardInterrupt here ...
        except KeyboardInterrupt:
            pass                                   # ... and library code drops it, as a finaliser would
        (tmp / "b.txt").write_text("second half")


cli.COMMANDS["swallow"] = ("__main__", "swallow", "test command")
sys.argv = ["porelab", "swallow", sys.argv[1]]
cli.main()
"""


def test_a_sigterm_whose_interrupt_was_dropped_still_stops_the_command_and_publishes_nothing(tmp_path):
    # Python drops an exception raised inside a finaliser or a GC callback; the work then goes on. The
    # command must still exit 143, and the output it was writing must never appear under its name.
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", _SWALLOWING_COMMAND, str(out)], capture_output=True, text=True, check=False,
                          timeout=120)
    assert proc.returncode == 143, (proc.returncode, proc.stderr[-2000:])
    assert "interrupted" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []      # no output, no temporary folder


def test_atomic_path_publishes_nothing_once_a_stop_was_requested(tmp_path):
    from porelab import runtime

    runtime.note_termination(signal.SIGTERM)
    try:
        with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "out.txt") as tmp:
            tmp.write_text("complete, but the process was asked to stop")
    finally:
        runtime.clear_termination()
    assert list(tmp_path.iterdir()) == []
    with atomic_path(tmp_path / "out.txt") as tmp:                  # once cleared, writes publish again
        tmp.write_text("ok")
    assert (tmp_path / "out.txt").read_text() == "ok"
