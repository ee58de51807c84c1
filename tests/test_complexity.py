"""Complexity table: exact MAC counts on hand-computable nets, the patch grid, memory accounting, real nets."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

from porelab import complexity as cx
from porelab import nets


def toy():
    return nn.Sequential(
        nn.Conv3d(2, 4, 3, padding=1, groups=2),          # out 4×4³ per sample
        nn.ConvTranspose3d(4, 6, 2, stride=2, groups=2),  # in 4×4³ -> out 6×8³
        nn.Flatten(),
        nn.Linear(6 * 8**3, 5),
    )


def test_macs_exact_on_toy_network():
    x = torch.zeros(3, 2, 4, 4, 4)
    conv = 3 * (4 * 4**3) * (2 // 2) * 3**3          # batch × out elements × C_in/groups × k³
    convt = 3 * (4 * 4**3) * (6 // 2) * 2**3         # batch × in elements × C_out/groups × k³
    linear = 3 * (6 * 8**3) * 5                       # batch × in × out
    assert cx.count_macs(toy(), x) == conv + convt + linear == 85248
    assert cx.count_macs_hooks(toy(), x) == conv + convt + linear
    # on the meta device too (no weights allocated)
    with torch.device("meta"):
        net = toy()
    assert cx.count_macs(net, torch.zeros(3, 2, 4, 4, 4, device="meta")) == 85248
    assert cx.count_params(net) == (4 * 1 * 27 + 4) + (4 * 3 * 8 + 6) + (6 * 8**3 * 5 + 5)


def test_functional_convolutions_count_but_hooks_miss_them():
    class TwoPath(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(1, 2, 3, padding=1)

        def forward(self, x):   # like an RV layer: a second convolution with the squared weights
            return self.conv(x) + nn.functional.conv3d(x, self.conv.weight.square(), None, 1, 1)

    x = torch.zeros(1, 1, 8, 8, 8)
    one = 2 * 8**3 * 27
    assert cx.count_macs(TwoPath(), x) == 2 * one
    assert cx.count_macs_hooks(TwoPath(), x) == one


def test_patch_grid_matches_enumeration():
    def enumerate_starts(n, p):
        s = p // 2
        starts = list(range(0, max(n - p, 0) + 1, s))
        if starts[-1] + p < n:
            starts.append(n - p)
        return len(starts)

    for n in (64, 65, 96, 100, 800, 2000):
        assert cx.grid_positions(n, 64) == enumerate_starts(n, 64)
    assert cx.grid_positions(800, 64) == 24 and cx.grid_positions(2000, 64) == 62
    assert cx.n_patches(cx.SCAN_SHAPE, 64) == 24 * 24 * 62
    assert cx.grid_positions(10, 64) == 1
    assert cx.paper_total_macs(14.124e9) == pytest.approx(68.967e12, rel=1e-3)   # Table 8's convention


def test_memory_estimate_counts_saved_tensors_outputs_and_gradients():
    x = torch.zeros(1, 1, 16, 16, 16, device="meta")
    with torch.device("meta"):
        net = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), nn.Sigmoid(), nn.Conv3d(2, 1, 1))
    fwd, bwd = cx.memory_estimate(net, x)
    vox = 16**3 * 4
    # input + sigmoid result (saved by sigmoid and by conv2) + output; conv1's output is not kept
    assert fwd == vox * (1 + 2 + 1)
    assert bwd == fwd + 4 * (2 * 27 + 2 + 2 + 1)


def test_measure_small_unet_agrees_with_real_cpu_build():
    row = cx.measure("unet", patch=16, scale=0.125, device="cpu")
    assert set(row) >= {"name", "params", "macs", "fwd_peak_mb", "bwd_peak_mb", "total_macs"}
    real = nets.build("unet", scale=0.125).eval()
    x = torch.rand(1, 1, 16, 16, 16)
    assert row["params"] == sum(p.numel() for p in real.parameters())
    assert row["macs"] == cx.count_macs_hooks(real, x)      # UNet: every MAC is in an nn.Conv3d
    assert row["total_macs"] == row["macs"] * cx.n_patches(cx.SCAN_SHAPE, 16)
    assert row["bwd_peak_mb"] * 2**20 == pytest.approx(row["fwd_peak_mb"] * 2**20 + 4 * row["params"])
    assert row["fwd_peak_mb"] * 2**20 > 16**3 * 4 * 3   # input, output and more
    with pytest.raises(Exception, match="multiple of 16"):
        cx.measure("unet", patch=20)


def test_unet_at_paper_size_matches_table8():
    row = cx.measure("unet", device="cpu")   # meta device: seconds, no weights allocated
    assert row["params"] == 1_325_297        # the public code's count (paper-code-facts.md §2)
    paper = cx.PAPER_TABLE8["unet"]
    assert row["macs"] == pytest.approx(paper["macs"], rel=0.02)
    assert row["fwd_peak_mb"] == pytest.approx(paper["fwd_peak_mb"], rel=0.05)


def _available(name):
    module, _ = nets._REGISTRY[name]
    try:
        importlib.import_module(module)
        return True
    except ImportError:
        return False


def test_table_small_scale_every_available_net():
    assert set(cx.PAPER_TABLE8) == set(nets.NAMES)
    names = [n for n in nets.NAMES if _available(n)]
    rows = cx.table(names, patch=32, scale=0.125, device="cpu")
    assert [r["name"] for r in rows] == names
    for r in rows:
        assert r["params"] > 0 and r["macs"] > 0 and 0 < r["fwd_peak_mb"] < r["bwd_peak_mb"], r
    text = cx.format_table(rows, patch=32)
    assert all(n in text for n in names)
