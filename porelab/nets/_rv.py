"""Random-variable (RV) layers: propagate a mean and a variance instead of a sample.

RV-VAE (Nicodemou et al. 2023, "RV-VAE: Integrating Random Variable Algebra into Variational
Autoencoders") replaces the sampling of a VAE by moment propagation: every activation is a random variable
described by its mean and variance, with the elements assumed independent (Iuso et al. 2024, Appendix C
keeps that assumption). Each layer here takes and returns the pair ``(mean, var)`` of equal shapes.

* :class:`RVConv3d`, :class:`RVConvTranspose3d`: a linear map ``y = W x + b`` of independent inputs has
  ``E[y] = W E[x] + b`` and ``Var[y] = W² Var[x]`` (element-wise squared weights, no bias). The variance
  is computed by a second convolution with ``W ⊙ W``: **each RV conv layer performs two convolutions of the
  same size** (MAC counters must count both; see ``n_convolutions``). A non-zero padding mode (replicate)
  is applied to the variance too.
* :class:`RVReLU`: exact moments of a rectified Gaussian.
* :class:`RVSigmoid`: the second-order Taylor moments of Iuso et al. (2024), Appendix C, eq. (C.5), (C.7).

The weights live in an ordinary ``nn.Conv3d``/``nn.ConvTranspose3d`` (attribute ``layer``) that computes the
mean path, so parameter counts equal those of the deterministic network. The upstream 3-D RV modules of the
paper are not public (the public code of Iuso et al. 2024 imports them but does not contain them), hence
this implementation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Variance floor used where a standard deviation is needed (the upstream RV ReLU uses 1e-10).
VAR_EPS = 1e-10


class RVConv3d(nn.Module):
    """3-D convolution of a random variable: ``(mean, var) -> (conv(mean, W) + b, conv(var, W²))``."""

    n_convolutions = 2

    def __init__(self, c_in: int, c_out: int, kernel_size, stride=1, padding=0, padding_mode: str = "zeros",
                 bias: bool = True):
        super().__init__()
        self.layer = nn.Conv3d(c_in, c_out, kernel_size, stride=stride, padding=padding,
                               padding_mode=padding_mode, bias=bias)

    def forward(self, mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        conv = self.layer
        w2 = conv.weight.square()
        if conv.padding_mode != "zeros" and any(conv.padding):
            pad = [p for p in reversed(conv.padding) for _ in range(2)]
            var_out = F.conv3d(F.pad(var, pad, mode=conv.padding_mode), w2, None, conv.stride, 0,
                               conv.dilation, conv.groups)
        else:
            var_out = F.conv3d(var, w2, None, conv.stride, conv.padding, conv.dilation, conv.groups)
        return conv(mean), var_out


class RVConvTranspose3d(nn.Module):
    """Transposed 3-D convolution of a random variable (mean through ``W``, variance through ``W²``)."""

    n_convolutions = 2

    def __init__(self, c_in: int, c_out: int, kernel_size, stride=1, padding=0, output_padding=0,
                 bias: bool = True):
        super().__init__()
        self.layer = nn.ConvTranspose3d(c_in, c_out, kernel_size, stride=stride, padding=padding,
                                        output_padding=output_padding, bias=bias)

    def forward(self, mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.layer
        var_out = F.conv_transpose3d(var, t.weight.square(), None, t.stride, t.padding, t.output_padding,
                                     t.groups, t.dilation)
        return t(mean), var_out


def relu_moments(mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of ``max(0, X)`` for ``X ~ N(μ, s²)`` (rectified Gaussian).

    With ``α = μ / s``, Φ the standard normal cdf and φ its pdf::

        E[Y]  = μ Φ(α) + s φ(α)
        E[Y²] = (μ² + s²) Φ(α) + μ s φ(α)
        Var[Y] = E[Y²] − E[Y]²   (clamped at 0)

    Computed in float64, as the upstream RV-VAE does, because ``E[Y²] − E[Y]²`` cancels badly in float32
    when α is large (docs/experiments.md, "RV ReLU precision").
    """
    dtype = mean.dtype
    m = mean.double()
    s = (var.double().clamp_min(0) + VAR_EPS).sqrt()
    a = m / s
    cdf = torch.special.ndtr(a)
    pdf = torch.exp(-0.5 * a * a) * (2 * torch.pi) ** -0.5
    e1 = m * cdf + s * pdf
    e2 = (m * m + s * s) * cdf + m * s * pdf
    return e1.to(dtype), (e2 - e1 * e1).clamp_min(0).to(dtype)


def sigmoid_moments(mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Approximate mean and variance of ``S(X)``, S the logistic sigmoid (Iuso et al. 2024, Appendix C).

    With ``Ṡ = S(1 − S)`` and ``S̈ = S(1 − S)(1 − 2S)`` at ``μ = E[X]`` (eq. C.2)::

        E[Y]   ≈ S(μ) + ½ S̈(μ) Var[X]                        (C.5)
        Var[Y] ≈ Ṡ(μ)² Var[X] − ¼ S̈(μ)² Var[X]²  (clamped ≥ 0)  (C.7)

    The approximation is accurate for small ``Var[X]``; for large variances E[Y] may leave [0, 1].
    """
    s = torch.sigmoid(mean)
    d1 = s * (1 - s)
    d2 = d1 * (1 - 2 * s)
    e = s + 0.5 * d2 * var
    v = d1.square() * var - 0.25 * d2.square() * var.square()
    return e, v.clamp_min(0)


class RVReLU(nn.Module):
    """ReLU of a Gaussian random variable (:func:`relu_moments`)."""

    def forward(self, mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return relu_moments(mean, var)


class RVSigmoid(nn.Module):
    """Sigmoid of a random variable (:func:`sigmoid_moments`, Iuso et al. 2024, Appendix C)."""

    def forward(self, mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return sigmoid_moments(mean, var)


class RVSequential(nn.Sequential):
    """``nn.Sequential`` for RV layers: threads the ``(mean, var)`` pair through every layer."""

    def forward(self, mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        for layer in self:
            mean, var = layer(mean, var)
        return mean, var
