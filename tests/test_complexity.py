"""Complexity table: exact MAC counts on hand-computable nets, the patch grid, memory accounting, real nets."""

from __future__ import annotations

import json

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
    assert set(row) >= {"name", "params", "trainable_params", "macs", "fwd_peak_mb", "bwd_peak_mb", "total_macs"}
    real = nets.build("unet", scale=0.125).eval()
    x = torch.rand(1, 1, 16, 16, 16)
    assert row["params"] == row["trainable_params"] == sum(p.numel() for p in real.parameters())
    assert row["macs"] == cx.count_macs_hooks(real, x)      # UNet: every MAC is in an nn.Conv3d
    assert row["total_macs"] == row["macs"] * cx.n_patches(cx.SCAN_SHAPE, 16)
    assert row["bwd_peak_mb"] * 2**20 == pytest.approx(row["fwd_peak_mb"] * 2**20 + 4 * row["trainable_params"])
    assert row["fwd_peak_mb"] * 2**20 > 16**3 * 4 * 3   # input, output and more
    with pytest.raises(Exception, match="multiple of 16"):
        cx.measure("unet", patch=20)


def _double_conv(c_in, c):
    """Parameters of conv3³ c_in → c, conv3³ c → c, both with bias."""
    return 27 * c_in * c + c + 27 * c * c + c


def test_unet_at_paper_size_matches_table8():
    row = cx.measure("unet", device="cpu")   # meta device: seconds, no weights allocated
    widths = (16, 32, 64, 128)               # Table 8's UNet: depth 4, 16 channels at the top
    encoder = sum(_double_conv(c_in, c) for c_in, c in zip((1,) + widths[:-1], widths))
    # per decoder level: 1×1×1 conv c_deep → c after the upsampling, double conv over [upsampled, skip]
    decoder = sum((c_deep * c + c) + _double_conv(2 * c, c) for c_deep, c in zip(widths[:0:-1], widths[-2::-1]))
    head = 16 + 1
    assert row["params"] == row["trainable_params"] == encoder + decoder + head
    paper = cx.PAPER_TABLE8["unet"]
    assert round(row["params"] / 1e6, 3) == paper["params"] / 1e6    # Table 8: 1.325 M
    assert row["macs"] == pytest.approx(paper["macs"], rel=0.02)
    assert row["fwd_peak_mb"] == pytest.approx(paper["fwd_peak_mb"], rel=0.05)


def test_params_of_every_net_at_paper_size_match_table8():
    """Table 8 gives parameters in millions with three decimals; every net at scale 1 rounds to them."""
    assert set(cx.PAPER_TABLE8) == set(nets.NAMES)
    for name in nets.NAMES:
        kwargs = {} if nets.is_supervised(name) else {"patch_size": 64}
        with torch.device("meta"):                 # no weights allocated (gmVAE has 384 M parameters)
            net = nets.build(name, scale=1.0, **kwargs)
        assert round(cx.count_params(net) / 1e6, 3) == cx.PAPER_TABLE8[name]["params"] / 1e6, name


def test_vqvae_params_count_the_codebook_as_table8_does():
    row = cx.measure("vqvae", device="cpu")
    net = nets.build("vqvae", scale=1.0, patch_size=64)
    assert row["params"] == 2_511_489                # Table 8: 2.511 M, codebook and EMA sum included
    assert row["trainable_params"] == sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert row["params"] - row["trainable_params"] == 2 * 512 * 64   # K × D codebook + K × D EMA sum
    # the optimiser's gradients cover the trainable parameters only
    assert row["bwd_peak_mb"] * 2**20 == pytest.approx(row["fwd_peak_mb"] * 2**20 + 4 * row["trainable_params"])


@pytest.fixture(scope="module")
def small_rows():
    return cx.table(None, patch=32, scale=0.125, device="cpu")


def test_table_small_scale_every_net(small_rows):
    assert [r["name"] for r in small_rows] == list(nets.NAMES)
    for r in small_rows:
        assert r["macs"] > 0 and 0 < r["fwd_peak_mb"] < r["bwd_peak_mb"], r
    text = cx.format_table(small_rows, patch=32)
    lines = text.splitlines()
    for name, r in zip(nets.NAMES, small_rows):
        line = next(ln for ln in lines if ln.split()[0] == name)
        assert line.split()[1] == f"{r['params'] / 1e6:.3f}"


def test_complexity_json_lists_params_and_trainable_params_for_every_net(small_rows):
    from click.testing import CliRunner

    from porelab.cli import main

    r = CliRunner().invoke(main, ["complexity", "--patch", "32", "--scale", "0.125", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert [row["name"] for row in rows] == list(nets.NAMES)
    vq_dim = 64 // 8                                  # the vqVAE's code dimension D at scale 0.125
    for row, ref in zip(rows, small_rows):
        assert {"params", "trainable_params"} <= set(row), row
        assert row["params"] >= row["trainable_params"]
        assert (row["params"], row["trainable_params"], row["macs"]) == (
            ref["params"], ref["trainable_params"], ref["macs"])
        kwargs = {} if nets.is_supervised(row["name"]) else {"patch_size": 32}
        real = nets.build(row["name"], scale=0.125, **kwargs)
        assert row["params"] == sum(p.numel() for p in real.parameters())
        assert row["trainable_params"] == sum(p.numel() for p in real.parameters() if p.requires_grad)
        frozen = 2 * 512 * vq_dim if row["name"] == "vqvae" else 0
        assert row["params"] - row["trainable_params"] == frozen, row["name"]
