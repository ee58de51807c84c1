"""TorchIO queues and samplers, augmentation, and streaming grid inference (predict_volume)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from porelab.errors import ConfigError
from porelab.patches import (
    AugmentConfig,
    augmentation,
    batch_tensors,
    grid_starts,
    make_loader,
    make_queue,
    make_subjects,
    predict_volume,
    predict_volume_torchio,
)
from porelab.train import Sample


def _toy(seed, shape=(40, 40, 40), n_pores=6):
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    label = np.zeros(shape, bool)
    for _ in range(n_pores):
        c = rng.uniform(8, np.array(shape) - 8)
        label |= ((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) <= 4
    scan = np.where(label, 0.1, 0.8).astype(np.float32) + rng.normal(0, 0.03, shape).astype(np.float32)
    return Sample(scan, label.astype(np.uint8), f"toy{seed}")


def _conv_net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv3d(4, 1, 3, padding=1), torch.nn.Sigmoid()).eval()


@pytest.mark.parametrize("ratio", [0.2, 0.7])
def test_label_sampler_pore_centred_fraction(ratio):
    import torchio as tio

    torch.manual_seed(0)
    samples = [_toy(1), _toy(2)]
    patch, spv = 16, 150
    queue = make_queue(make_subjects(samples), patch=patch, supervised=True, samples_per_volume=spv,
                       max_length=300, pore_ratio=ratio)
    centred, n = 0, 0
    for batch in make_loader(queue, 10):
        x, y = batch_tensors(batch)
        assert x.shape[1:] == (1, patch, patch, patch) and y.shape == x.shape
        assert set(torch.unique(y).tolist()) <= {0.0, 1.0}
        names = batch["name"]
        for i, loc in enumerate(batch[tio.LOCATION]):
            c = loc[:3].numpy() + patch // 2
            label = samples[0 if names[i] == "toy1" else 1].label
            centred += int(label[tuple(c)])
            n += 1
        # the patch really is the scan at that location
        loc0 = batch[tio.LOCATION][0][:3].numpy()
        scan0 = samples[0 if names[0] == "toy1" else 1].scan
        np.testing.assert_array_equal(x[0, 0].numpy(), scan0[loc0[0]:loc0[0] + patch, loc0[1]:loc0[1] + patch,
                                                              loc0[2]:loc0[2] + patch])
    assert n == 2 * spv
    pore_fraction = float(np.mean([s.label.mean() for s in samples]))
    assert pore_fraction < 0.05
    assert abs(centred / n - ratio) < 0.1


def test_uniform_queue_without_labels():
    samples = [Sample(_toy(3).scan, None, "a")]
    queue = make_queue(make_subjects(samples), patch=16, supervised=False, samples_per_volume=8, max_length=8)
    batches = [batch_tensors(b) for b in make_loader(queue, 4)]
    assert len(batches) == 2
    for x, y in batches:
        assert x.shape == (4, 1, 16, 16, 16) and y is None
    with pytest.raises(ConfigError, match="label"):
        make_queue(make_subjects(samples), patch=16, supervised=True, samples_per_volume=8, max_length=8)
    with pytest.raises(ConfigError, match="smaller than the patch"):
        make_queue(make_subjects(samples), patch=48, supervised=False, samples_per_volume=8, max_length=8)


def test_augmentation_keeps_binary_labels_and_shape():
    import torchio as tio

    torch.manual_seed(0)
    s = _toy(4)
    subject = make_subjects([s])[0]
    spatial_only = augmentation(AugmentConfig(p_intensity=0.0, w_flip=0.0, elastic_max_displacement=3.0))
    out = spatial_only(subject)
    lab = out["label"][tio.DATA]
    assert lab.shape == (1, *s.scan.shape) and lab.dtype == torch.float32
    assert set(torch.unique(lab).tolist()) == {0.0, 1.0}
    assert not torch.equal(out["image"][tio.DATA], subject["image"][tio.DATA])  # it did deform
    full = augmentation(AugmentConfig())
    for _ in range(3):
        o = full(subject)
        assert set(torch.unique(o["label"][tio.DATA]).tolist()) <= {0.0, 1.0}
        assert float(o["image"][tio.DATA].min()) >= 0.0
    assert augmentation(AugmentConfig(enabled=False)) is None
    with pytest.raises(ConfigError):
        AugmentConfig.from_dict({"p_flop": 1})


def test_grid_starts_match_torchio_rule():
    assert grid_starts(37, 16, 8) == [0, 8, 16, 21]
    assert grid_starts(32, 16, 8) == [0, 8, 16]
    assert grid_starts(10, 16, 8) == [0]


@pytest.mark.parametrize("shape", [(37, 50, 45), (20, 70, 33), (10, 12, 40)])
@pytest.mark.parametrize("weighting", ["average", "hann", "gaussian"])
def test_identity_is_reproduced_exactly(rng, shape, weighting):
    v = rng.normal(size=shape).astype(np.float32)
    out = predict_volume(lambda x: x, v, patch=16, batch_size=3, weighting=weighting, progress=False)
    assert out.shape == v.shape and out.dtype == np.float32
    assert np.abs(out - v).max() <= 1e-6


def test_anisotropic_patch_and_overlap(rng):
    v = rng.normal(size=(30, 41, 29)).astype(np.float32)
    out = predict_volume(lambda x: x, v, patch=(8, 16, 12), overlap=0.25, progress=False)
    assert np.abs(out - v).max() <= 1e-6


def test_equals_torchio_grid_aggregator_on_a_conv_net(rng):
    net = _conv_net()
    v = rng.random((40, 52, 36), dtype=np.float32)
    ours = predict_volume(net, v, patch=16, batch_size=4, progress=False)
    ref = predict_volume_torchio(net, v, patch=16, batch_size=4)
    assert np.abs(ours - ref).max() <= 1e-5
    # a conv net's output really depends on the patch position: crop-free stitching differs from one pass
    with torch.inference_mode():
        whole = net(torch.from_numpy(v)[None, None])[0, 0].numpy()
    assert np.abs(ours - whole).max() > 1e-4


def test_memmap_in_and_out(tmp_path, rng):
    net = _conv_net(1)
    v = rng.random((33, 40, 40), dtype=np.float32)
    np.save(tmp_path / "scan.npy", v)
    vin = np.load(tmp_path / "scan.npy", mmap_mode="r")
    out = np.lib.format.open_memmap(tmp_path / "score.npy", mode="w+", dtype=np.float32, shape=v.shape)
    res = predict_volume(net, vin, patch=16, out=out, progress=False)
    assert res is out
    del out, res
    on_disk = np.load(tmp_path / "score.npy")
    in_ram = predict_volume(net, v, patch=16, progress=False, batch_size=1)
    np.testing.assert_allclose(on_disk, in_ram, atol=1e-6)
    assert np.array_equal(np.load(tmp_path / "scan.npy"), v)  # the input was not touched


def test_bad_arguments():
    v = np.zeros((20, 20, 20), np.float32)
    with pytest.raises(ConfigError):
        predict_volume(lambda x: x, v[0], patch=16, progress=False)
    with pytest.raises(ConfigError, match="weighting"):
        predict_volume(lambda x: x, v, patch=16, weighting="box", progress=False)
    with pytest.raises(ConfigError, match="shape"):
        predict_volume(lambda x: x[:, :, :8], v, patch=16, progress=False)


def test_tail_batches_are_filled_up_to_one_shape_and_stay_exact(rng):
    """225 patches per slab with batch 4 would end in a batch of one (≈ 3× the forward's working memory):
    every call gets the full batch shape, and the dropped filler outputs do not reach the result."""
    v = rng.normal(size=(24, 40, 40)).astype(np.float32)      # 4 × 4 patches per slab: 16 = 3 · 5 + 1
    shapes = []

    def fn(x):
        shapes.append(tuple(x.shape))
        return x * 2.0

    out = predict_volume(fn, v, patch=16, batch_size=5, progress=False)
    assert set(shapes) == {(5, 1, 16, 16, 16)}
    assert len(shapes) == 2 * 4           # 2 z starts, ceil(16 / 5) batches each
    assert np.abs(out - 2.0 * v).max() <= 1e-6


def test_patch_function_buffers_are_released_after_the_scan(rng):
    v = rng.random((20, 20, 20), dtype=np.float32)

    class Net:
        released = 0

        def forward(self, x):
            return x + 1.0

        def release_buffers(self):
            self.released += 1

    net = Net()
    out = predict_volume(net.forward, v, patch=16, progress=False)     # a bound method: found on its object
    assert net.released == 1 and np.abs(out - (v + 1.0)).max() <= 1e-6

    def fn(x):
        return x

    calls = []
    fn.release_buffers = lambda: calls.append(1)
    predict_volume(fn, v, patch=16, progress=False)
    assert calls == [1]


def test_memmap_pages_released_per_slab_keep_the_result_exact(tmp_path, rng):
    """Rows of a whole page each (128 · 32 float32 = 16 KiB): the input and output pages of every finished
    slab are dropped from the process (madvise) while the scan runs; the file holds the exact result."""
    import mmap

    v = rng.normal(size=(40, 32, 128)).astype(np.float32)
    assert (32 * 128 * 4) % mmap.PAGESIZE == 0
    np.save(tmp_path / "scan.npy", v)
    vin = np.load(tmp_path / "scan.npy", mmap_mode="r")
    out = np.lib.format.open_memmap(tmp_path / "out.npy", mode="w+", dtype=np.float32, shape=v.shape)
    predict_volume(lambda x: x * 3.0, vin, patch=16, out=out, progress=False)
    np.testing.assert_allclose(np.asarray(out), 3.0 * v, atol=1e-6)      # re-read after release
    del out
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), 3.0 * v, atol=1e-6)
    assert np.array_equal(np.load(tmp_path / "scan.npy"), v)
