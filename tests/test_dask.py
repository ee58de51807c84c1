"""Dask: chunked inference equals PoreModel.predict, chunked Algorithm 1 equals run_algorithm1, zarr outputs,
the CLI's --scheduler, and a killed worker does not lose the job."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("dask", reason="dask is not installed (pip install 'porelab[cluster]')")
pytest.importorskip("distributed", reason="dask.distributed is not installed (pip install 'porelab[cluster]')")
pytest.importorskip("zarr", reason="zarr is not installed (pip install 'porelab[cluster]')")

import torch

from porelab.distributed import label_dask, read_zarr_dask
from porelab.errors import ConfigError
from porelab.inference.dask import plan_chunks, segment_dask
from porelab.labels import run_algorithm1
from porelab.model import PoreModel
from porelab.nets import build
from porelab.normalise import Normalisation


def _part(rng, shape=(40, 52, 44), pores=30):
    """A noisy cylinder with dark spherical pores, float32."""
    z, y, x = np.indices(shape)
    part = ((y - shape[1] / 2) ** 2 + (x - shape[2] / 2) ** 2) < (0.36 * shape[1]) ** 2
    scan = np.where(part, 1000.0, 100.0) + rng.normal(0, 50, shape)
    for _ in range(pores):
        c = rng.integers(3, np.array(shape) - 3)
        r = rng.integers(1, 4)
        scan[((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) <= r * r] = 300.0
    return scan.astype(np.float32)


def _model(scan, name="unet", **kw):
    torch.manual_seed(0)
    net_kwargs = {"scale": 0.125} if name == "unet" else {"scale": 0.125, "patch_size": 16}
    net = build(name, **net_kwargs)
    return PoreModel.from_trained(net, name, Normalisation.fit(scan), "smoke", net_kwargs=net_kwargs, patch=16,
                                  threshold=0.4, **kw)


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes with one thread each (the kill test needs processes)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      memory_limit="2GiB") as lc, Client(lc) as client:
        yield client


# ------------------------------------------------------------------------------------------------ the plan

def test_chunk_plan_aligns_with_the_global_grid_and_needs_half_a_patch():
    chunks, depth, starts = plan_chunks((100, 512, 52), 16, 0.5, target=30)
    assert chunks[0] == (32, 32, 36) and chunks[2] == (32, 20)       # a last chunk under a patch is merged
    for axis in range(3):
        assert sum(chunks[axis]) == (100, 512, 52)[axis]
        assert all(c % 8 == 0 for c in chunks[axis][:-1])        # edges on the grid step
        assert min(chunks[axis]) >= 16                            # no chunk shorter than a patch
        assert depth[axis] == 8                                   # half a patch, the flush patch included
    assert starts[0][-1] == 84                                    # the last patch flush with the end
    assert plan_chunks((10, 40, 40), 16, 0.5, 16)[0][0] == (10,)  # an axis shorter than the patch: one chunk


# ------------------------------------------------------------------------------------------------ identity

@pytest.mark.parametrize("chunk", [16, 24])
def test_segment_dask_equals_predict(rng, chunk, tmp_path):
    scan = _part(rng)
    scan[5, 3:9, 4:20] = np.nan                                   # missing voxels: filled, NaN score
    scan[30] = np.inf                                             # a whole missing slice
    model = _model(scan)
    assert model.skin > 0                                         # the skin needs the chunked object mask
    ref = model.predict(scan)
    res = segment_dask(scan, model, chunks=chunk, out=tmp_path / "seg", spacing=(0.1, 0.2, 0.3))
    assert len(res["info"]["chunks"][1]) > 1 and res["info"]["depth"] == [8, 8, 8]
    score = res["score"].compute(scheduler="sync")
    assert np.array_equal(np.isnan(score), np.isnan(ref)) and np.isnan(ref).sum() == 6 * 16 + 52 * 44
    assert np.nanmax(np.abs(score - ref)) <= 1e-5
    np.testing.assert_array_equal(res["mask"].compute(scheduler="sync"), ref >= 0.4)
    from porelab.io import read_volume

    vol = read_volume(tmp_path / "seg" / "score.zarr")           # a porelab-readable zarr array, spacing kept
    assert vol.spacing == (0.1, 0.2, 0.3) and vol.shape == scan.shape
    assert sorted(p.name for p in (tmp_path / "seg").iterdir() if not p.name.startswith(".")) == \
        ["mask.zarr", "score.zarr"]


def test_segment_dask_refuses_an_unsupervised_model_in_one_line(rng):
    scan = _part(rng, shape=(16, 20, 20), pores=0)
    with pytest.raises(ConfigError, match="unsupervised") as info:
        segment_dask(scan, _model(scan, "vae"), chunks=16)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("chunk", "margin", "corners"), [(7, 0, "one"), (16, 2, "one"), (13, 1, "all")])
def test_label_dask_equals_run_algorithm1(rng, chunk, margin, corners):
    scan = _part(rng)
    ref = run_algorithm1(scan, surface_margin=margin, corners=corners)
    res = label_dask(scan, chunks=chunk, surface_margin=margin, corners=corners)
    pores = res.pores.compute(scheduler="sync")
    assert res.pores.numblocks[0] >= 2                            # really split
    np.testing.assert_array_equal(pores, ref.pores)
    np.testing.assert_array_equal(res.object.compute(scheduler="sync"), ref.object)
    assert res.summary() == ref.summary() and ref.pores_kept > 3


def test_label_dask_integer_scan_and_zarr_output(rng, tmp_path):
    scan = np.clip(_part(rng), 0, 4000).astype(np.uint16)         # one Otsu bin per grey value
    ref = run_algorithm1(scan)
    res = label_dask(scan, chunks=12, out=tmp_path / "pores.zarr", spacing=(1.0, 0.5, 0.5))
    assert res.low_threshold == ref.low_threshold and res.pore_threshold == ref.pore_threshold
    np.testing.assert_array_equal(read_zarr_dask(tmp_path / "pores.zarr", bool).compute(), ref.pores)


def test_missing_dask_is_one_line(monkeypatch):
    from porelab.distributed import require_cluster

    monkeypatch.setitem(sys.modules, "dask", None)
    with pytest.raises(ConfigError, match=r"install porelab\[cluster\]"):
        require_cluster()


# ------------------------------------------------------------------------------------------------ cluster

def test_segment_on_a_cluster_from_files(cluster, rng, tmp_path):
    """Two worker processes, the scan read lazily from a .npy file, the model from its folder."""
    scan = _part(rng)
    np.save(tmp_path / "scan.npy", scan)
    model = _model(scan)
    model.save(tmp_path / "model")
    ref = PoreModel.load(tmp_path / "model").predict(scan)
    res = segment_dask(tmp_path / "scan.npy", tmp_path / "model", client=cluster, chunks=16, out=tmp_path / "o")
    score = res["score"].compute()
    assert np.abs(score - ref).max() <= 1e-5
    # every worker that ran a chunk loaded the model once
    loads = cluster.run(lambda: len(__import__("porelab.inference.dask", fromlist=["_CACHE"])._CACHE))
    assert set(loads.values()) <= {0, 1} and 1 in set(loads.values())


def test_a_killed_worker_does_not_lose_the_job(rng, tmp_path):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      memory_limit="2GiB") as lc, Client(lc) as cluster:
        _kill_one_worker_mid_job(cluster, rng, tmp_path)


def _kill_one_worker_mid_job(cluster, rng, tmp_path):
    scan = _part(rng, shape=(48, 64, 64))
    model = _model(scan)
    ref = model.predict(scan)
    model.save(tmp_path / "model")
    np.save(tmp_path / "scan.npy", scan)
    box = {}

    def run():
        try:
            box["res"] = segment_dask(tmp_path / "scan.npy", tmp_path / "model", client=cluster, chunks=24,
                                      out=tmp_path / "o")
        except Exception as exc:  # noqa: BLE001 - reported below
            box["error"] = exc

    job = threading.Thread(target=run)
    job.start()
    killed = None
    deadline = time.time() + 120
    while time.time() < deadline and job.is_alive():
        processing = cluster.processing()
        # the last pass (inference, skin, store: Dask names its tasks overlap-…, mul-…, store-map-…) has begun
        busy = [w for w, keys in processing.items()
                if any(str(k).lstrip("('").startswith(("overlap", "mul", "store")) for k in keys)]
        if busy:
            pid = cluster.run(os.getpid, workers=[busy[0]])[busy[0]]
            os.kill(pid, signal.SIGKILL)
            killed = pid
            break
        time.sleep(0.05)
    job.join(600)
    assert killed is not None, "the job finished before a worker could be killed"
    assert not job.is_alive(), "the job hangs after a worker was killed"
    if "error" in box:        # the job may fail, but then in one line and with nothing under the name
        print(f"killed worker {killed}: the job failed: {box['error']}")
        assert "\n" not in str(box["error"])
        assert not (tmp_path / "o").exists()
    else:
        print(f"killed worker {killed}: the job finished", sorted(p.name for p in (tmp_path / "o").iterdir()))
        score = read_zarr_dask(tmp_path / "o" / "score.zarr").compute(scheduler="sync")
        assert np.abs(score - ref).max() <= 1e-5
        np.testing.assert_array_equal(read_zarr_dask(tmp_path / "o" / "mask.zarr", bool).compute(scheduler="sync"),
                                      ref >= 0.4)


# ------------------------------------------------------------------------------------------------ CLI

def _porelab(*args):
    """The real command line in a fresh interpreter (a LocalCluster spawns worker processes)."""
    import subprocess

    return subprocess.run([sys.executable, "-m", "porelab", *map(str, args)], capture_output=True, text=True, check=False,
                          timeout=600)


def test_cli_label_and_report_with_a_local_scheduler(rng, tmp_path):
    scan = _part(rng)
    np.save(tmp_path / "scan.npy", scan)
    one = _porelab("label", tmp_path / "scan.npy", "-o", tmp_path / "a.npy", "--json")
    assert one.returncode == 0, one.stderr
    many = _porelab("label", tmp_path / "scan.npy", "-o", tmp_path / "b.zarr", "--json", "--scheduler", "local",
                    "--workers", "1", "--chunk", "16")
    assert many.returncode == 0, many.stderr
    from porelab.io import read_mask

    np.testing.assert_array_equal(read_mask(tmp_path / "b.zarr"), np.load(tmp_path / "a.npy") > 0)
    a, b = json.loads(one.stdout.splitlines()[-1]), json.loads(many.stdout.splitlines()[-1])
    assert a["pores"] == b["pores"] > 3 and a["porosity_percent"] == b["porosity_percent"]
    for name, extra in (("r1", []), ("r2", ["--scheduler", "local", "--workers", "1"])):
        r = _porelab("report", tmp_path / "a.npy", "--volume", tmp_path / "scan.npy", "-o", tmp_path / name, *extra)
        assert r.returncode == 0, r.stderr
    s1, s2 = (json.loads((tmp_path / n / "summary.json").read_text()) for n in ("r1", "r2"))
    assert s1 == s2
    bad = _porelab("label", tmp_path / "scan.npy", "-o", tmp_path / "c.npy", "--scheduler", "udp://nowhere")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--scheduler" in bad.stderr
    assert not (tmp_path / "c.npy").exists()


_READ_CHUNKS = """
import sys, numpy as np
from porelab.distributed import LazyScan

def rss_mb():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) / 1024

path = sys.argv[1]
scan = LazyScan(path, (256, 512, 512), np.float32)
scan[0:1]                                   # opens the mapping
before = rss_mb()
total = 0.0
for z in range(0, 256, 32):                 # every voxel once, 32 MiB per chunk, 256 MiB in all
    chunk = scan[z:z + 32]
    total += float(chunk.sum(dtype=np.float64))   # touches every page of the chunk
    del chunk
print(rss_mb() - before, total)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmRSS from /proc")
def test_reading_a_memory_mapped_scan_chunk_by_chunk_does_not_grow_the_worker(tmp_path):
    # a worker keeps a big scan memory-mapped for all its chunks; the pages each chunk read must not stay in its
    # resident set, or Dask's memory monitor pauses the worker once it has read its memory limit's worth
    import subprocess

    path = tmp_path / "scan.npy"
    scan = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(256, 512, 512))
    for z in range(0, 256, 32):
        scan[z:z + 32] = np.arange(32 * 512 * 512, dtype=np.float32).reshape(32, 512, 512) % 7 + z
    scan.flush()
    expected = float(sum(np.asarray(scan[z:z + 32]).sum(dtype=np.float64) for z in range(0, 256, 32)))
    del scan
    out = subprocess.run([sys.executable, "-c", _READ_CHUNKS, str(path)], capture_output=True, text=True,
                         check=True).stdout.split()
    grown, total = float(out[0]), float(out[1])
    assert total == expected                       # the chunks read are the file's voxels
    assert grown < 64, f"the resident set grew by {grown:.0f} MiB after reading 256 MiB chunk by chunk"
