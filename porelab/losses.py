"""Losses of the supervised nets: Focal Tversky (Iuso et al. 2024, eq. (1)) and its deep-supervision reduction.

``build_loss(name, **params)`` is the one entry point the training loop uses: for a supervised net it returns
the Focal Tversky loss (reduced over the deep-supervision outputs when the net returns a list); for an
unsupervised net it defers to :func:`porelab.losses_vae.build_unsupervised_loss` (imported lazily).

Every loss callable returns ``(loss_tensor, terms)`` where ``terms`` maps names to Python floats (for
logging). All reductions are computed in float32, also under CUDA autocast.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from porelab.errors import ConfigError

#: Focal Tversky parameters selected by the paper's grid search (Iuso et al. 2024, §4.2).
DEFAULT_ALPHA = 0.633
DEFAULT_BETA = 0.1
DEFAULT_GAMMA = 1.0

DS_WEIGHTS = ("geometric", "inverse", "mean")
DS_RESIZE = ("label", "output")
LABEL_POOL = ("area", "max", "nearest")


def tversky_counts(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Soft TP, FN, FP summed over every voxel of the whole batch.

    ``TP = Σ y·p``, ``FN = Σ y·(1 − p)``, ``FP = Σ (1 − y)·p`` with ``p`` the predicted probability and ``y``
    the (possibly soft) label, both in [0, 1].
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != label shape {tuple(target.shape)}")
    p = pred.float()
    y = target.to(dtype=torch.float32)
    tp = (p * y).sum()
    fn = (y * (1.0 - p)).sum()  # direct sums: no cancellation, never negative
    fp = ((1.0 - y) * p).sum()
    return tp, fn, fp


class FocalTverskyLoss(nn.Module):
    r"""Focal Tversky loss, Iuso et al. (2024) eq. (1) (Abraham & Khan 2019).

    .. math::

        TI = \frac{TP + s}{TP + \alpha\,FN + \beta\,FP + s}, \qquad FTL = (1 - TI)^{\gamma}

    with soft counts summed over the whole batch at once (not per sample), α weighing false negatives and
    β weighing false positives. γ = 1 gives the Tversky loss; α = β = 0.5, γ = 1 the Dice loss.

    Parameters
    ----------
    alpha, beta, gamma : float
        Defaults are the paper's optimum (α = 0.633, β = 0.1, γ = 1).
    smooth : float
        ``s`` above, added to numerator and denominator so that an empty label with an empty prediction
        gives TI = 1 (loss 0) and the loss is finite everywhere. Eq. (1) itself has no such term.
    eps_mode : {"smooth", "guard"}
        ``"smooth"`` (default) as above. ``"guard"`` is the paper's public code: no smoothing; a denominator
        that is exactly 0 is replaced by 1e-4 (so an empty label with an empty prediction gives loss 1).

    Notes
    -----
    ``1 − TI`` is clamped at 1e-12 before the power when γ ≠ 1, so that γ < 1 keeps finite gradients at a
    perfect prediction.

    Examples
    --------
    >>> import torch
    >>> loss = FocalTverskyLoss()
    >>> y = torch.zeros(1, 1, 4, 4, 4); y[..., 1:3, 1:3, 1:3] = 1
    >>> float(loss(y, y)) < 1e-6
    True
    """

    def __init__(self, alpha: float = DEFAULT_ALPHA, beta: float = DEFAULT_BETA, gamma: float = DEFAULT_GAMMA,
                 smooth: float = 1e-6, eps_mode: str = "smooth"):
        super().__init__()
        for name, value in (("alpha", alpha), ("beta", beta)):
            if not value >= 0:
                raise ConfigError(f"Focal Tversky {name} must be >= 0, got {value}")
        if not gamma > 0:
            raise ConfigError(f"Focal Tversky gamma must be > 0, got {gamma}")
        if not smooth >= 0:
            raise ConfigError(f"Focal Tversky smooth must be >= 0, got {smooth}")
        if eps_mode not in ("smooth", "guard"):
            raise ConfigError(f"Focal Tversky eps_mode must be 'smooth' or 'guard', got {eps_mode!r}")
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        self.smooth, self.eps_mode = float(smooth), eps_mode

    def tversky_index(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """TI of eq. (1) over the whole batch (a 0-d float32 tensor)."""
        tp, fn, fp = tversky_counts(pred, target)
        den = tp + self.alpha * fn + self.beta * fp
        if self.eps_mode == "guard":
            den = torch.where(den == 0, torch.full_like(den, 1e-4), den)
            return tp / den
        return (tp + self.smooth) / (den + self.smooth)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        base = 1.0 - self.tversky_index(pred, target)
        if self.gamma == 1.0:
            return base
        return base.clamp_min(1e-12) ** self.gamma

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, gamma={self.gamma}, smooth={self.smooth}"


def ds_weights(n: int, weights: str | Sequence[float] = "geometric") -> list[float]:
    """Deep-supervision weights for ``n`` outputs ordered finest first, normalised to sum 1.

    * ``"geometric"``: 1, 1/2, 1/4, … (Iuso et al. 2024, §3.3: "geometric progression weights");
    * ``"inverse"``: 1, 1/2, 1/3, … (the paper's public code for MSS-UNet, UNet 3+ and ACC-UNet, which
      weighs output *i* of *n*, deepest first, by 1/(n − i));
    * ``"mean"``: equal weights (the public code for UNet++);
    * or an explicit sequence of ``n`` non-negative numbers (normalised here).
    """
    if n < 1:
        raise ValueError("deep supervision needs at least one output")
    if isinstance(weights, str):
        if weights == "geometric":
            w = [0.5**i for i in range(n)]
        elif weights == "inverse":
            w = [1.0 / (i + 1) for i in range(n)]
        elif weights == "mean":
            w = [1.0] * n
        else:
            raise ConfigError(f"unknown deep-supervision weights {weights!r}; choose one of: {', '.join(DS_WEIGHTS)}")
    else:
        w = [float(v) for v in weights]
        if len(w) != n:
            raise ConfigError(f"deep-supervision weights {w} do not match the {n} outputs of the net")
        if any(v < 0 for v in w) or sum(w) <= 0:
            raise ConfigError(f"deep-supervision weights must be >= 0 with a positive sum, got {w}")
    total = sum(w)
    return [v / total for v in w]


def resize_label(target: torch.Tensor, size: Sequence[int], pool: str = "area") -> torch.Tensor:
    """Bring a (B, 1, D, H, W) label to spatial ``size`` (an integer downsampling).

    ``"area"`` averages each block (a soft label: the pore fraction of the coarse voxel; the pore volume is
    preserved, so a coarse head is not pushed to over-segment); ``"max"`` marks a coarse voxel as pore if
    any fine voxel is (dilates small pores); ``"nearest"`` picks one voxel per block (small pores may vanish).
    """
    size = tuple(int(s) for s in size)
    if tuple(target.shape[2:]) == size:
        return target
    y = target.float()
    if pool == "area":
        return F.adaptive_avg_pool3d(y, size)
    if pool == "max":
        return F.adaptive_max_pool3d(y, size)
    if pool == "nearest":
        return F.interpolate(y, size=size, mode="nearest")
    raise ConfigError(f"unknown label pooling {pool!r}; choose one of: {', '.join(LABEL_POOL)}")


class DeepSupervisionLoss(nn.Module):
    """Weighted mean of a base loss over the outputs of a deeply supervised net (Iuso et al. 2024, §3.3).

    ``loss = Σ_i w_i · base(out_i, y_i)`` with ``w`` from :func:`ds_weights` (sum 1), outputs finest first.

    Parameters
    ----------
    base : callable(pred, target) -> 0-d tensor
        Usually :class:`FocalTverskyLoss`.
    weights : {"geometric", "inverse", "mean"} or sequence of float
        See :func:`ds_weights`. The paper's text: ``"geometric"``.
    resize : {"label", "output"}
        How a lower-resolution output meets the label. ``"label"`` (default): the label is pooled down to the
        output's resolution with ``label_pool``. ``"output"``: the output is upsampled to the label's size by
        nearest-neighbour interpolation (the paper's public code).
    label_pool : {"area", "max", "nearest"}
        See :func:`resize_label`. Default ``"area"``.

    ``forward(outputs, target)`` returns the reduced loss; :meth:`terms` also returns each output's loss.
    """

    def __init__(self, base, weights: str | Sequence[float] = "geometric", resize: str = "label",
                 label_pool: str = "area"):
        super().__init__()
        if isinstance(weights, str) and weights not in DS_WEIGHTS:
            raise ConfigError(f"unknown deep-supervision weights {weights!r}; choose one of: {', '.join(DS_WEIGHTS)}")
        if resize not in DS_RESIZE:
            raise ConfigError(f"unknown deep-supervision resize {resize!r}; choose one of: {', '.join(DS_RESIZE)}")
        if label_pool not in LABEL_POOL:
            raise ConfigError(f"unknown label pooling {label_pool!r}; choose one of: {', '.join(LABEL_POOL)}")
        self.base, self.weights, self.resize, self.label_pool = base, weights, resize, label_pool

    def _pair(self, out: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if out.shape[2:] == target.shape[2:]:
            return out, target
        if self.resize == "output":
            return F.interpolate(out, size=tuple(target.shape[2:]), mode="nearest"), target
        return out, resize_label(target, out.shape[2:], self.label_pool)

    def terms(self, outputs, target: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Return ``(weighted_loss, [loss_0, loss_1, …])``, outputs finest first."""
        if isinstance(outputs, torch.Tensor):
            outputs = [outputs]
        w = ds_weights(len(outputs), self.weights)
        parts = [self.base(*self._pair(o, target)) for o in outputs]
        total = sum(wi * li for wi, li in zip(w, parts))
        return total, parts

    def forward(self, outputs, target: torch.Tensor) -> torch.Tensor:
        return self.terms(outputs, target)[0]


class SupervisedLoss:
    """``callable(output, target) -> (loss, terms)`` for a supervised net (built by :func:`build_loss`).

    ``output`` is the net's training output: a tensor, or a list of tensors (finest first) from a deeply
    supervised net; ``target`` the label (B, 1, D, H, W), bool or float in [0, 1]. ``terms`` holds ``"loss"``,
    ``"ftl"`` (finest output's Focal Tversky loss), ``"tversky_index"`` (finest output) and, for lists,
    ``"ftl_<i>"`` for each output.
    """

    def __init__(self, ftl: FocalTverskyLoss, ds: DeepSupervisionLoss):
        self.ftl, self.ds = ftl, ds

    def __call__(self, output, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        if isinstance(output, torch.Tensor):
            loss = self.ftl(output, target)
            with torch.no_grad():
                ti = self.ftl.tversky_index(output, target)
            return loss, {"loss": float(loss.detach()), "ftl": float(loss.detach()), "tversky_index": float(ti)}
        if not isinstance(output, (list, tuple)) or not output:
            raise TypeError(f"expected a tensor or a non-empty list of tensors, got {type(output).__name__}")
        loss, parts = self.ds.terms(list(output), target)
        with torch.no_grad():
            ti = self.ftl.tversky_index(*self.ds._pair(output[0], target))
        terms = {"loss": float(loss.detach()), "ftl": float(parts[0].detach()), "tversky_index": float(ti)}
        terms.update({f"ftl_{i}": float(p.detach()) for i, p in enumerate(parts)})
        return loss, terms

    def __repr__(self) -> str:
        return f"SupervisedLoss({self.ftl!r}, weights={self.ds.weights!r}, resize={self.ds.resize!r})"


_SUPERVISED_PARAMS = {"alpha", "beta", "gamma", "smooth", "eps_mode", "ds_weights", "ds_resize", "ds_label_pool"}


def build_loss(net_name: str, **params):
    """Return the training loss of network ``net_name`` as ``callable(output, target) -> (loss, terms)``.

    Supervised names (``porelab.nets.SUPERVISED``) accept ``alpha``, ``beta``, ``gamma``, ``smooth``,
    ``eps_mode`` (see :class:`FocalTverskyLoss`) and ``ds_weights``, ``ds_resize``, ``ds_label_pool`` (see
    :class:`DeepSupervisionLoss`). Unsupervised names are passed on, with ``params``, to
    :func:`porelab.losses_vae.build_unsupervised_loss` (``output`` is then the net's dict, ``target`` the
    clean input). An unknown name raises :class:`porelab.errors.ModelError` listing the known ones; an
    unknown parameter raises :class:`porelab.errors.ConfigError`.
    """
    from porelab.nets import SUPERVISED, check_name

    check_name(net_name)
    if net_name not in SUPERVISED:
        from porelab.losses_vae import build_unsupervised_loss

        return build_unsupervised_loss(net_name, **params)
    unknown = sorted(set(params) - _SUPERVISED_PARAMS)
    if unknown:
        raise ConfigError(f"unknown loss parameter(s) {', '.join(unknown)} for {net_name}; "
                          f"known: {', '.join(sorted(_SUPERVISED_PARAMS))}")
    ftl = FocalTverskyLoss(alpha=params.get("alpha", DEFAULT_ALPHA), beta=params.get("beta", DEFAULT_BETA),
                           gamma=params.get("gamma", DEFAULT_GAMMA), smooth=params.get("smooth", 1e-6),
                           eps_mode=params.get("eps_mode", "smooth"))
    ds = DeepSupervisionLoss(ftl, weights=params.get("ds_weights", "geometric"),
                             resize=params.get("ds_resize", "label"),
                             label_pool=params.get("ds_label_pool", "area"))
    return SupervisedLoss(ftl, ds)


__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_BETA",
    "DEFAULT_GAMMA",
    "DeepSupervisionLoss",
    "FocalTverskyLoss",
    "SupervisedLoss",
    "build_loss",
    "ds_weights",
    "resize_label",
    "tversky_counts",
]
