"""Whole-scan inference (porelab.inference): streaming grid inference (predict_volume) and the inference-optimised
forward passes (the same outputs as the eager nets, the fallback)."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from porelab.errors import ConfigError
from porelab.inference import (
    BlockConvTranspose3d,
    InferenceNet,
    PointwiseConv3d,
    SingleChannelConv3d,
    avg_pool2,
    cached_inference_net,
    example_input,
    grid_starts,
    malloc_trim,
    optimize_for_inference,
    pad_replicate,
    predict_volume,
    predict_volume_torchio,
    upsample2_trilinear,
)
from porelab.nets import build

CPU = torch.device("cpu")
TOL = 1e-5       # the reassembled score must agree within 1e-4; the forward itself is checked tighter


def _eager_and_fast(name, **kw):
    torch.manual_seed(0)
    net = build(name, scale=0.125, **kw).eval()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    method = "reconstruct" if hasattr(net, "reconstruct") else "forward"
    fast = optimize_for_inference(net, CPU, example=example_input(16), method=method)
    return net, fast, state, method


@pytest.mark.parametrize("name", ["unet", "mssunet", "unet3p"])
def test_supervised_optimised_equals_eager(name):
    net, fast, state, _ = _eager_and_fast(name)
    assert isinstance(fast, InferenceNet), "the optimisation fell back to the eager net"
    info = fast.info
    rewrites = info["upconv"] + info["cheap"] + info["pointwise"] + info["replicate_pad"] + info["bn_folded"]
    assert rewrites > 0 and info["channels_last"]        # measured to help these three
    x = torch.rand(3, 1, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref, got = net(x), fast(x)
    assert got.shape == ref.shape
    assert float((got - ref).abs().max()) <= TOL
    # the original net is untouched: same classes, same weights, default memory format
    assert all(type(m) is not PointwiseConv3d for m in net.modules())
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]) and v.is_contiguous()


def test_accunet_batchnorm_folded_and_equal():
    net, fast, _, _ = _eager_and_fast("accunet")
    assert isinstance(fast, InferenceNet) and fast.info["bn_folded"] > 0
    assert not fast.info["channels_last"]            # measured no gain for ACC-UNet
    def n_bn(m):
        return sum(isinstance(b, nn.BatchNorm3d) for b in m.modules())

    assert n_bn(fast.inner) == n_bn(net) - fast.info["bn_folded"]
    x = torch.rand(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        assert float((fast(x) - net(x)).abs().max()) <= TOL


@pytest.mark.parametrize("name", ["cevae", "gmvae", "rvvae"])
def test_unsupervised_reconstruction_equals_eager(name):
    net, fast, _, method = _eager_and_fast(name, patch_size=16)
    assert method == "reconstruct" and isinstance(fast, InferenceNet)
    x = torch.rand(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        ref, got = net.reconstruct(x), fast.reconstruct(x)
    assert got.shape == ref.shape == x.shape
    assert float((got - ref).abs().max()) <= TOL


def test_pad_replicate_matches_f_pad_in_both_layouts():
    x = torch.rand(2, 5, 6, 7, 8)
    for t in (x, x.contiguous(memory_format=torch.channels_last_3d)):
        for pad in [(1, 1, 1), (1, 2, 0), (0, 0, 3)]:
            ref = F.pad(t, (pad[2], pad[2], pad[1], pad[1], pad[0], pad[0]), mode="replicate")
            got = pad_replicate(t, pad)
            assert torch.equal(got, ref)
            assert got.is_contiguous(memory_format=torch.channels_last_3d) == \
                (t.is_contiguous(memory_format=torch.channels_last_3d) and not t.is_contiguous())


@pytest.mark.parametrize("channels_last", [False, True])
def test_upsample_and_pool_helpers_match_torch(channels_last):
    x = torch.rand(2, 3, 4, 6, 8)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    up = upsample2_trilinear(x)
    ref = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)
    assert up.shape == ref.shape and float((up - ref).abs().max()) < 1e-6
    pooled = avg_pool2(x)
    assert float((pooled - F.avg_pool3d(x, 2)).abs().max()) < 1e-6
    for t in (up, pooled):
        assert t.is_contiguous(memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format)


@pytest.mark.parametrize("channels_last", [False, True])
def test_block_transpose_and_single_channel_convs_match_torch(channels_last):
    torch.manual_seed(0)
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    for cin, cout, bias in [(6, 1, True), (5, 3, False), (4, 8, True)]:
        ref = nn.ConvTranspose3d(cin, cout, 2, stride=2, bias=bias)
        fast = copy.deepcopy(ref)
        assert BlockConvTranspose3d.applies_to(fast)
        BlockConvTranspose3d.convert(fast)
        x = torch.rand(2, cin, 3, 4, 5).contiguous(memory_format=fmt)
        with torch.inference_mode():
            assert float((fast(x) - ref(x)).abs().max()) < 1e-6
    assert not BlockConvTranspose3d.applies_to(nn.ConvTranspose3d(4, 4, 4, stride=2, padding=1))
    for mode in ("zeros", "replicate"):
        ref = nn.Conv3d(1, 1, 3, padding=1, padding_mode=mode)
        fast = SingleChannelConv3d.convert(copy.deepcopy(ref))
        x = torch.rand(2, 1, 5, 6, 7).contiguous(memory_format=fmt)
        with torch.inference_mode():
            assert float((fast(x) - ref(x)).abs().max()) < 1e-6
    assert not SingleChannelConv3d.applies_to(nn.Conv3d(1, 1, 3, padding=0))


def test_concurrent_calls_from_two_threads_stay_correct():
    """The padded-input scratch buffer is per thread: one optimised net shared by two threads."""
    torch.manual_seed(0)
    net = build("unet", scale=0.125).eval()
    fast = optimize_for_inference(net, CPU)
    xs = [torch.rand(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(10 + i)) for i in range(2)]
    with torch.inference_mode():
        refs = [net(x) for x in xs]
    diffs = [0.0, 0.0]

    def run(i):
        with torch.inference_mode():
            for _ in range(5):
                diffs[i] = max(diffs[i], float((fast(xs[i]) - refs[i]).abs().max()))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(diffs) <= TOL
    assert fast.scratch.buf is None                  # this (main) thread never ran it
    with torch.inference_mode():
        fast(xs[0])
    assert fast.scratch.buf is not None
    fast.release_buffers()
    assert fast.scratch.buf is None


class _Unpicklable(nn.Module):
    """A net whose copy fails (it holds a lock): the optimisation must give up and keep the eager net."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 1, 3, padding=1, padding_mode="replicate")
        self.lock = threading.Lock()

    def forward(self, x):
        return self.conv(x)


def test_fallback_when_the_copy_fails():
    net = _Unpicklable()
    with pytest.warns(RuntimeWarning, match="eager net"):
        out = optimize_for_inference(net, CPU, example=example_input(8))
    assert out is net and not net.training


def test_fallback_when_the_optimised_output_differs(monkeypatch):
    original = PointwiseConv3d.forward
    monkeypatch.setattr(PointwiseConv3d, "forward", lambda self, x: original(self, x) + 1e-3)
    torch.manual_seed(0)
    net = build("unet", scale=0.125)
    with pytest.warns(RuntimeWarning, match="differs"):
        out = optimize_for_inference(net, CPU, example=example_input(16))
    assert out is net
    # without an example nothing is checked: the (here broken) copy is returned
    assert isinstance(optimize_for_inference(net, CPU), InferenceNet)


def test_non_cpu_devices_get_the_net_unchanged():
    net = build("unet", scale=0.125).train()
    out = optimize_for_inference(net, torch.device("cuda"))       # nothing is sent to the device
    assert out is net and not net.training
    assert cached_inference_net(net, torch.device("cuda"), patch=16) is net


def test_cache_reuses_and_follows_weight_updates():
    torch.manual_seed(0)
    net = build("unet", scale=0.125).eval()
    a = cached_inference_net(net, CPU, patch=16)
    assert cached_inference_net(net, CPU, patch=16) is a and isinstance(a, InferenceNet)
    with torch.no_grad():
        net.head[0].bias.add_(0.5)
    b = cached_inference_net(net, CPU, patch=16)
    assert b is not a
    x = example_input(16)
    with torch.inference_mode():
        assert float((b(x) - net(x)).abs().max()) <= TOL


def test_pore_model_predict_equals_eager_grid_inference(rng):
    """PoreModel.predict (optimised forward) against predict_volume with the plain eager net."""
    from porelab.model import PoreModel
    from porelab.normalise import Normalisation

    torch.manual_seed(0)
    net = build("unet", scale=0.125)
    scan = (rng.random((24, 40, 36)) * 1000).astype(np.float32)
    norm = Normalisation.fit(scan)
    model = PoreModel.from_trained(net, "unet", norm, net_kwargs={"scale": 0.125}, patch=16, skin=0)
    score = model.predict(scan, device=CPU)
    eager = model.net(CPU)
    n = norm.refit(scan) if norm.per_scan else norm
    ref = predict_volume(lambda x: eager(n.apply_torch(x)), scan, patch=16, progress=False, device=CPU)
    assert float(np.max(np.abs(score - ref))) <= TOL      # the required bound is 1e-4
    # predict ran the optimised copy (cached per net), not the eager net
    from porelab.inference.fast import _CACHE

    assert isinstance(_CACHE[eager][1], InferenceNet)


def test_released_buffers_are_rebuilt_on_next_use():

    torch.manual_seed(0)
    net = build("unet", scale=0.125).eval()
    fast = optimize_for_inference(net, CPU, example=example_input(16))
    assert isinstance(fast, InferenceNet)
    x = example_input(16, batch=2)
    with torch.inference_mode():
        ref = net(x)
        a = fast(x)
        assert fast.scratch.buf is not None          # the padded-input buffer is kept between calls
        fast.release_buffers()
        assert fast.scratch.buf is None
        assert isinstance(malloc_trim(), bool)
        b = fast(x)                                  # re-allocated, same result
        assert fast.scratch.buf is not None
    assert float((a - ref).abs().max()) <= TOL and torch.equal(a, b)


def test_pore_model_predict_frees_the_buffers_after_each_scan(rng):
    from porelab.inference.fast import _CACHE
    from porelab.model import PoreModel
    from porelab.normalise import Normalisation

    torch.manual_seed(0)
    net = build("unet", scale=0.125)
    scan = (rng.random((24, 40, 36)) * 1000).astype(np.float32)
    model = PoreModel.from_trained(net, "unet", Normalisation.fit(scan), net_kwargs={"scale": 0.125}, patch=16)
    first = model.predict(scan, device=CPU)
    fast = _CACHE[model.net(CPU)][1]
    assert isinstance(fast, InferenceNet) and fast.scratch.buf is None
    second = model.predict(scan, device=CPU)
    assert fast.scratch.buf is None and np.array_equal(first, second)


# --------------------------------------------------------------------------------------------------------------
# streaming grid inference
# --------------------------------------------------------------------------------------------------------------
def _conv_net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv3d(4, 1, 3, padding=1), torch.nn.Sigmoid()).eval()


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
