"""3-D ACC-UNet (Ibtehaz & Kihara 2023), extended to 3-D with deep supervision as in Iuso et al. (2024).

A completely convolutional UNet that borrows transformer ideas: every level has two HANC blocks
(hierarchical aggregation of neighbourhood context), the skips are residual paths refined by three MLFC
blocks (multi-level feature compilation), and BatchNorm + LeakyReLU (slope 0.01) are used throughout.

* Levels: ``depth + 1`` (5 at the paper's ``depth=4``) with widths ``n, 2n, 4n, 8n, 16n`` (``n = 16·scale``,
  so 16 … 256 channels); downsampling MaxPool3d(2), upsampling ConvTranspose3d(k=2, s=2).
* HANC block ``(C_in → C_out, k, f)``: 1×1 conv ``C_in → f·C_in`` + BN + LeakyReLU; depthwise conv 3³ + BN +
  LeakyReLU; HANC layer (the map, ``k−1`` average-pool-and-upsample copies at scales 2 … 2^(k−1) and ``k−1``
  max-pool-and-upsample copies, interleaved per channel, 1×1 conv ``(2k−1)·f·C_in → C_in`` + BN + LeakyReLU);
  residual add of the input + BN; 1×1 conv ``C_in → C_out`` + BN + LeakyReLU; squeeze-excitation.
  ``k`` per level: 3, 3, 3, 2, 1 (encoder), 2, 3, 3, 3 (decoder, coarse to fine). ``f = 3`` except the second
  block of the decoder level at 1/4 resolution, which uses ``f = 34`` (inherited from the original ACC-UNet
  code; needed to reproduce Table 8's 5.062 M; ``quirk_inv_fctr=3`` removes it).
* Squeeze-excitation: global average, FC ``C → C/8``, LeakyReLU, FC ``→ C``, sigmoid, channel scaling,
  BN, LeakyReLU.
* Skips: residual paths of length 4, 3, 2, 1 (conv 3³ + BN + LeakyReLU + SE per unit, residual; then BN,
  LeakyReLU, BN), then three MLFC blocks fusing the four skip levels (1×1 conv+BN+SE units, merge convs).
* Heads: 1×1 conv ``C → 1`` + sigmoid on the decoder outputs at full, 1/2 and 1/4 resolution (16, 32, 64
  channels). Training mode returns them finest first, each at its own resolution; eval mode the full one.

The paper's code ignores dropout for this net; so does porelab unless ``dropout > 0`` is given (then a
Dropout3d follows every decoder level). 5,062,103 trainable parameters at the paper's size (Table 8:
5.062 M); peak memory is large (Table 8: ~7 GB at 64³), mostly from the ``f = 34`` block and the HANC copies.
BatchNorm needs more than one value per channel in training mode: with 16³ patches the bottleneck is 1³, so a
training batch must hold at least 2 patches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from porelab.nets.blocks import SupervisedNet, widths

SLOPE = 0.01


def _interleave(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate maps channel-interleaved: ``[a_0, b_0, …, a_1, b_1, …]`` (the original's ordering)."""
    x = torch.stack(parts, dim=2)
    return x.flatten(1, 2)


class SqueezeExcite(nn.Module):
    """Channel squeeze-excitation (reduction 8), followed by BN and LeakyReLU (ACC-UNet's variant)."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)
        self.bn = nn.BatchNorm3d(channels)
        self.act = nn.LeakyReLU(SLOPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.fc2(self.act(self.fc1(x.mean(dim=(2, 3, 4))))))
        return self.act(self.bn(x * s[:, :, None, None, None]))


class ConvBNSE(nn.Module):
    """conv (kernel ``k``, same padding) → BN → LeakyReLU → :class:`SqueezeExcite`."""

    def __init__(self, cin: int, cout: int, k: int = 1):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, k, padding=k // 2)
        self.bn = nn.BatchNorm3d(cout)
        self.act = nn.LeakyReLU(SLOPE)
        self.se = SqueezeExcite(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.se(self.act(self.bn(self.conv(x))))


class HANCLayer(nn.Module):
    """Hierarchical aggregation of neighbourhood context over ``k`` scales, then 1×1 conv + BN + LeakyReLU."""

    def __init__(self, cin: int, cout: int, k: int):
        super().__init__()
        self.k = k
        self.conv = nn.Conv3d((2 * k - 1) * cin, cout, 1)
        self.bn = nn.BatchNorm3d(cout)
        self.act = nn.LeakyReLU(SLOPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factors = [2**s for s in range(1, self.k)]
        parts = [x]
        parts += [F.interpolate(F.avg_pool3d(x, f), scale_factor=f, mode="nearest") for f in factors]
        parts += [F.interpolate(F.max_pool3d(x, f), scale_factor=f, mode="nearest") for f in factors]
        return self.act(self.bn(self.conv(_interleave(parts) if len(parts) > 1 else x)))


class HANCBlock(nn.Module):
    """ACC-UNet's HANC block ``cin → cout`` with HANC scale ``k`` and inverted-bottleneck factor ``inv``."""

    def __init__(self, cin: int, cout: int, k: int = 3, inv: int = 3):
        super().__init__()
        mid = cin * inv
        self.expand = nn.Conv3d(cin, mid, 1)
        self.bn1 = nn.BatchNorm3d(mid)
        self.depthwise = nn.Conv3d(mid, mid, 3, padding=1, groups=mid)
        self.bn2 = nn.BatchNorm3d(mid)
        self.hanc = HANCLayer(mid, cin, k)
        self.bn_res = nn.BatchNorm3d(cin)
        self.project = nn.Conv3d(cin, cout, 1)
        self.bn3 = nn.BatchNorm3d(cout)
        self.act = nn.LeakyReLU(SLOPE)
        self.se = SqueezeExcite(cout)

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.expand(inp)))
        x = self.act(self.bn2(self.depthwise(x)))
        x = self.bn_res(self.hanc(x) + inp)
        return self.se(self.act(self.bn3(self.project(x))))


class ResPath(nn.Module):
    """Residual skip path of ``n`` units ``x ← x + SE(LeakyReLU(BN(conv3³(x))))``, then BN, LeakyReLU, BN."""

    def __init__(self, channels: int, n: int):
        super().__init__()
        self.units = nn.ModuleList(ConvBNSE(channels, channels, 3) for _ in range(n))
        self.bn1 = nn.BatchNorm3d(channels)
        self.bn2 = nn.BatchNorm3d(channels)
        self.act = nn.LeakyReLU(SLOPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.units:
            x = x + unit(x)
        return self.bn2(self.act(self.bn1(x)))


class MLFC(nn.Module):
    """Multi-level feature compilation: every skip level sees all the others resized to its resolution.

    For level ``l``: ``c = LeakyReLU(BN(ConvBNSE(cat[all levels at l's resolution] → C_l)))``, coarser levels
    nearest-upsampled and finer ones average-pooled; then
    ``x_l ← SE(LeakyReLU(BN(ConvBNSE(interleave[c, x_l] → C_l) + x_l)))``.
    """

    def __init__(self, channels: list[int]):
        super().__init__()
        total = sum(channels)
        self.gather = nn.ModuleList(ConvBNSE(total, c, 1) for c in channels)
        self.bn_gather = nn.ModuleList(nn.BatchNorm3d(c) for c in channels)
        self.merge = nn.ModuleList(ConvBNSE(2 * c, c, 1) for c in channels)
        self.bn_merge = nn.ModuleList(nn.BatchNorm3d(c) for c in channels)
        self.se = nn.ModuleList(SqueezeExcite(c) for c in channels)
        self.act = nn.LeakyReLU(SLOPE)

    @staticmethod
    def _resize(x: torch.Tensor, src: int, dst: int) -> torch.Tensor:
        if src < dst:  # finer map -> coarser level
            return F.avg_pool3d(x, 2 ** (dst - src))
        if src > dst:
            return F.interpolate(x, scale_factor=2 ** (src - dst), mode="nearest")
        return x

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for lvl, x in enumerate(xs):
            c = torch.cat([self._resize(xs[s], s, lvl) for s in range(len(xs))], dim=1)
            c = self.act(self.bn_gather[lvl](self.gather[lvl](c)))
            c = self.act(self.bn_merge[lvl](self.merge[lvl](_interleave([c, x])) + x))
            out.append(self.se[lvl](c))
        return out


class ACCUNet(SupervisedNet):
    """3-D ACC-UNet returning pore probabilities (a list in training mode when deeply supervised).

    Parameters
    ----------
    scale : float
        Width multiplier (1.0 = ``n_filts`` 16, the paper's 5.062 M parameters).
    in_channels : int
        Input channels.
    depth : int
        Number of poolings (4: five levels, as in the paper); spatial sizes must be divisible by
        ``2**depth``.
    base : int
        ``n_filts`` at ``scale=1``.
    dropout : float
        0 (default, as the paper's code, which ignores it); > 0 adds Dropout3d after every decoder level.
    deep_supervision : bool
        Return the heads at full, 1/2, …, 1/2**(depth-2) resolution in training mode (default True).
    quirk_inv_fctr : int
        Inverted-bottleneck factor of the second block of the decoder level at 1/2**(depth-2) resolution
        (34 in the original code and the paper's count; 3 makes it like every other block).
    """

    def __init__(self, scale: float = 1.0, in_channels: int = 1, depth: int = 4, base: int = 16,
                 dropout: float = 0.0, deep_supervision: bool = True, quirk_inv_fctr: int = 34):
        super().__init__()
        self.deep_supervision = bool(deep_supervision)
        self.depth = depth
        self.widths = w = widths(base, depth + 1, scale)
        ks = [min(3, depth - i + 1) for i in range(depth + 1)]
        chans = [in_channels] + w
        self.enc = nn.ModuleList(
            nn.Sequential(HANCBlock(chans[i], w[i], ks[i]), HANCBlock(w[i], w[i], ks[i])) for i in range(depth + 1))
        self.respaths = nn.ModuleList(ResPath(w[i], depth - i) for i in range(depth))
        self.mlfcs = nn.ModuleList(MLFC(w[:depth]) for _ in range(3))
        self.ups = nn.ModuleList(nn.ConvTranspose3d(w[i + 1], w[i], 2, stride=2) for i in range(depth))
        self.dec = nn.ModuleList(
            nn.Sequential(HANCBlock(2 * w[i], w[i], ks[i]),
                          HANCBlock(w[i], w[i], ks[i], quirk_inv_fctr if i == depth - 2 else 3))
            for i in range(depth))
        self.drop = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()
        n_heads = depth - 1 if deep_supervision else 1
        self.heads = nn.ModuleList(nn.Conv3d(w[i], 1, 1) for i in range(n_heads))  # finest first
        self._multiple = 2**depth

    def forward(self, x: torch.Tensor):
        self._check_input(x, self._multiple)
        skips = []
        for i, level in enumerate(self.enc):
            x = level(x if i == 0 else F.max_pool3d(x, 2))
            skips.append(x)
        bottom = skips.pop()
        skips = [rp(s) for rp, s in zip(self.respaths, skips)]
        for mlfc in self.mlfcs:
            skips = mlfc(skips)
        x = bottom
        dec = [None] * self.depth
        for i in range(self.depth - 1, -1, -1):
            x = self.drop(self.dec[i](torch.cat([self.ups[i](x), skips[i]], dim=1)))
            dec[i] = x
        n = len(self.heads) if self._want_all() else 1
        return self._select([torch.sigmoid(self.heads[i](dec[i])) for i in range(n)])
