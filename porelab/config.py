"""Profiles: one source of truth for every size, count and budget that scales between CPU and GPU.

``smoke`` runs in seconds (tests, CI); ``quick`` is the default and runs the whole main job on a 2-core CPU
in about half an hour; ``paper`` keeps the sizes of Iuso et al. (2024): 64³ patches, the paper's widths,
5 folds, Adam lr 1e-4, early stopping with min delta 1e-4 and patience 40 (``TrainConfig``'s defaults).

A ``Profile`` is typed throughout, one object per concern:

* ``unsupervised`` / ``supervised``: the complete ``porelab.train.TrainConfig`` of each kind of net
  (``profile.train_config(net)`` picks one and applies overrides);
* ``supervised_dropout``: the supervised nets' dropout (constructor argument; ``None`` = the net's own);
* ``search``: what the AutoML pipeline searches (:class:`SearchSpace`);
* ``labels``: how thresholds and pseudo-labels are made (:class:`LabelConfig`);
* ``skin``, ``smooth``, ``tophat_radius``: the scoring settings of new models and of the classical row.

How the ``quick`` values were found is measured in ``docs/experiments.md`` ("The quick profile").
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

import numpy as np

from porelab.errors import ConfigError
from porelab.nets import SUPERVISED, UNSUPERVISED
from porelab.postprocess import DEFAULT_SKIN, DEFAULT_SMOOTH, RESIDUALS
from porelab.sampling import AugmentConfig
from porelab.train.config import TrainConfig

#: voxels; larger than the simulator's largest gas pore (r 1-4), so a grey closing fills every such pore.
#: Measured on quick scans of seed 12345, AP cylinders / cube: radius 3: 0.88 / 0.28, 4: 0.95 / 0.48,
#: 5: 0.95 / 0.56 (``porelab.baselines.tophat_score``). The classical row does not use it: its radius is
#: fitted on the training scans, label-free (``porelab.baselines.fit_tophat``: 5 on seed 0); it is only
#: ``tophat_score``'s default and that fit's fallback when Algorithm 1 finds no pore.
TOPHAT_RADIUS = 5

#: the multi-fidelity pruners a search can use (``porelab.automl.study.make_pruner``)
PRUNERS = ("sha", "hyperband")

#: quick profile: per-net width multipliers at which one training step at the quick patch (32³, batch 4,
#: width × 0.25) costs about the same as the UNet's at width 1 (``benchmarks/step_time.py``;
#: docs/experiments.md, "Step time per net")
QUICK_NET_WIDTHS = {"unetpp": 0.25, "unet3p": 0.25, "accunet": 0.25, "gmvae": 0.25}

#: the paper's FTL grids (Iuso et al. 2024, §4.3): α, β ∈ linspace(0.1, 0.9, 4); γ ∈ {1/3, …, 2}; γ during the
#: α × β search ("kept at 0.5"). The same values as ``porelab.automl.spaces.PAPER_ALPHAS`` / ``PAPER_GAMMAS``,
#: which the supervised space suggests (tests/test_paper_protocol.py checks that they agree)
PAPER_FTL_ALPHAS = tuple(float(v) for v in np.linspace(0.1, 0.9, 4))
PAPER_FTL_GAMMAS = (1 / 3, 1 / 2, 2 / 3, 1.0, 4 / 3, 3 / 2, 5 / 3, 2.0)
PAPER_FTL_GAMMA0 = 0.5


@dataclass(frozen=True)
class SearchSpace:
    """What the AutoML pipeline searches (``porelab.automl.spaces``).

    Attributes
    ----------
    unsupervised_nets, supervised_nets : architectures of each study (default: the paper's five of each
        family, ``porelab.nets.UNSUPERVISED`` / ``SUPERVISED``).
    widths : width multipliers (× ``Profile.net_scale``) of the unsupervised study.
    residuals : anomaly residuals scored on every unsupervised fold; the validation scan picks one
        (``porelab.postprocess.anomaly_map``).
    width_range : ``(low, high)``: a continuous width multiplier (log-uniform) searched instead of ``widths``.
    net_widths : per-net width multiplier (× ``Profile.net_scale``, before the searched one) that makes one
        training step of every net cost about the same (measured: ``benchmarks/step_time.py``,
        docs/experiments.md); nets not listed get 1.
    lr_range : ``(low, high)``: the learning rate is searched (log-uniform) in both studies; ``None``: the
        profile's ``TrainConfig.lr``.
    n_trials_unsupervised, n_trials_supervised : trials per study and worker; with a time budget a cap
        (0 = as many as the budget allows).
    grid : the supervised study runs the paper's search protocol (``porelab.automl.protocol``: the first net
        over α × β at γ = ``paper_gamma0``, then γ at the best α, β, then every net at the optimum) instead
        of TPE.
    paper_alphas, paper_gammas, paper_gamma0 : that protocol's α (and β) grid, γ grid and the γ of its α × β
        stage; subsets of the paper's values (default: all of them, ``PAPER_FTL_*``).
    heuristic_comparison : the best supervised configuration is trained again on Algorithm 1 labels
        (the paper's Table 7 comparison); under a time budget only when its measured cost fits.
    time_budget : minutes for the whole search job (``None``: no budget, the trial counts decide);
        ``porelab.automl.budget`` splits it.
    unsupervised_share : the unsupervised study's share of the time left for both studies.
    tail_fraction : the share of the budget set aside, before anything is measured, for registration,
        pseudo-labels and the summary; replaced by measured costs as soon as they are known.
    pruner : ``"sha"`` (successive halving) or ``"hyperband"``: the multi-fidelity pruner that stops a trial
        between epochs (one report per epoch, step = fold index × max_epochs + epoch).
    min_resource, reduction_factor : the pruner's first rung (epochs) and η.
    """

    unsupervised_nets: tuple[str, ...] = UNSUPERVISED
    supervised_nets: tuple[str, ...] = SUPERVISED
    widths: tuple[float, ...] = (0.5, 1.0)
    residuals: tuple[str, ...] = RESIDUALS
    width_range: tuple[float, float] | None = None
    net_widths: dict = field(default_factory=dict)
    lr_range: tuple[float, float] | None = None
    n_trials_unsupervised: int = 5
    n_trials_supervised: int = 128
    grid: bool = True
    paper_alphas: tuple[float, ...] = PAPER_FTL_ALPHAS
    paper_gammas: tuple[float, ...] = PAPER_FTL_GAMMAS
    paper_gamma0: float = PAPER_FTL_GAMMA0
    heuristic_comparison: bool = True
    time_budget: float | None = None
    unsupervised_share: float = 0.5
    tail_fraction: float = 0.15
    pruner: str = "sha"
    min_resource: int = 1
    reduction_factor: int = 3

    def __post_init__(self):
        from porelab.nets import NAMES, is_supervised

        for family, nets, sup in (("unsupervised", self.unsupervised_nets, False),
                                  ("supervised", self.supervised_nets, True)):
            bad = [n for n in nets if n not in NAMES or is_supervised(n) != sup]
            if bad or not nets:
                raise ConfigError(f"search space: {family} nets must be a non-empty subset of "
                                  f"{', '.join(n for n in NAMES if is_supervised(n) == sup)}; got {nets}")
        if not self.widths or min(self.widths) <= 0:
            raise ConfigError(f"search space: widths must be > 0, got {self.widths}")
        if not self.residuals or set(self.residuals) - set(RESIDUALS):
            raise ConfigError(f"search space: residuals must be a subset of {RESIDUALS}, got {self.residuals}")
        for label, rng in (("width_range", self.width_range), ("lr_range", self.lr_range)):
            if rng is not None and not (len(rng) == 2 and 0 < rng[0] <= rng[1]):
                raise ConfigError(f"search space: {label} must be (low, high) with 0 < low <= high, got {rng}")
        if any(v <= 0 for v in self.net_widths.values()) or set(self.net_widths) - set(NAMES):
            raise ConfigError(f"search space: net_widths must map net names to widths > 0, got {self.net_widths}")
        for label, values, grid in (("paper_alphas", self.paper_alphas, PAPER_FTL_ALPHAS),
                                    ("paper_gammas", self.paper_gammas, PAPER_FTL_GAMMAS),
                                    ("paper_gamma0", (self.paper_gamma0,), PAPER_FTL_GAMMAS)):
            if not values or any(min(abs(float(v) - g) for g in grid) > 1e-6 for v in values):
                raise ConfigError(f"search space: {label} must be paper grid values "
                                  f"({', '.join(f'{g:.4g}' for g in grid)}), got {values}")
        if self.n_trials_unsupervised < 0 or self.n_trials_supervised < 0:
            raise ConfigError("search space: trial counts must be >= 0")
        if self.time_budget is not None and not self.time_budget > 0:
            raise ConfigError(f"time budget must be > 0 minutes, got {self.time_budget}")
        if not (0 < self.unsupervised_share < 1 and 0 <= self.tail_fraction < 1):
            raise ConfigError("search space: unsupervised_share must be in (0, 1), tail_fraction in [0, 1)")
        if self.pruner not in PRUNERS or self.min_resource < 1 or self.reduction_factor < 2:
            raise ConfigError(f"search space: pruner must be one of {', '.join(PRUNERS)} with min_resource >= 1 "
                              f"and reduction_factor >= 2, got {self.pruner!r}")

    def net_width(self, net: str) -> float:
        """The width multiplier that equalises ``net``'s step time (``net_widths``; 1 if not listed)."""
        return float(self.net_widths.get(net, 1.0))


@dataclass(frozen=True)
class LabelConfig:
    """How decision thresholds and pseudo-labels are made.

    Attributes
    ----------
    min_voxels, min_extent : pseudo-labels: connected pores smaller than this many voxels, or spanning
        fewer voxels than ``min_extent`` along any axis, are removed (``porelab.labels.suppress_small``).
    threshold : what a fold's F1-optimal decision threshold is chosen against, label-free: ``"injected"``
        (synthetic pores injected into the held-out scan, ``porelab.injection``) or ``"alg1"`` (the held-out
        scan's Algorithm 1 labels, the paper's route). No setting lets the dataset's labels choose it.
    max_label_fraction : a threshold that labels more than this fraction of the part is degenerate (a score
        that does not separate pores); it is replaced by the ``100 (1 − max_label_fraction / 10)``-th
        percentile of the score inside the part.
    """

    min_voxels: int = 4
    min_extent: int = 2
    threshold: str = "injected"
    max_label_fraction: float = 0.1

    def __post_init__(self):
        if self.threshold not in ("injected", "alg1"):
            raise ConfigError(f"labels.threshold must be 'injected' or 'alg1' (labels never choose it), "
                              f"got {self.threshold!r}")
        if not 0 < self.max_label_fraction <= 1:
            raise ConfigError(f"max_label_fraction must be in (0, 1], got {self.max_label_fraction}")
        if self.min_voxels < 1 or self.min_extent < 1:
            raise ConfigError(f"min_voxels and min_extent must be >= 1, got {self.min_voxels}, {self.min_extent}")


@dataclass(frozen=True)
class Profile:
    """Sizes, budgets and settings of one profile (module docstring).

    Attributes
    ----------
    name : profile name.
    sim_preset : ``porelab simulate --preset`` used when the main job simulates its data.
    net_scale : width multiplier of every network (1.0 = the paper's Table 8 sizes).
    folds : cross-validation folds over the cylinders (leave one scan out).
    unsupervised, supervised : the training config of each kind of net.
    supervised_dropout : ``dropout`` constructor argument of the supervised nets (``None``: the net's own).
    search : the AutoML search space and budgets.
    labels : thresholds and pseudo-labels.
    skin, smooth : ``PoreModel.skin`` / ``smooth`` of newly trained models (``porelab.postprocess``).
    tophat_radius : ball radius of the black top-hat classical row (voxels).
    """

    name: str
    sim_preset: str
    net_scale: float
    folds: int
    unsupervised: TrainConfig = field(default_factory=TrainConfig)
    supervised: TrainConfig = field(default_factory=TrainConfig)
    supervised_dropout: float | None = None
    search: SearchSpace = field(default_factory=SearchSpace)
    labels: LabelConfig = field(default_factory=LabelConfig)
    skin: int = DEFAULT_SKIN
    smooth: float = DEFAULT_SMOOTH
    tophat_radius: int = TOPHAT_RADIUS

    @property
    def patch(self) -> int:
        """The patch edge (voxels) of the unsupervised nets (their input size), the complexity table's."""
        return self.unsupervised.patch

    @property
    def supervised_net_kwargs(self) -> dict:
        """Extra constructor arguments of the supervised nets."""
        return {} if self.supervised_dropout is None else {"dropout": float(self.supervised_dropout)}

    def train_config(self, net: str, **overrides) -> TrainConfig:
        """A fresh copy of the training config of ``net``'s kind, ``overrides`` (``TrainConfig`` fields;
        ``augment`` may be a dict of ``AugmentConfig`` fields) applied last."""
        from porelab.nets import check_name, is_supervised

        check_name(net)
        base = copy.deepcopy(self.supervised if is_supervised(net) else self.unsupervised)
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        bad = sorted(set(overrides) - names)
        if bad:
            raise ConfigError(f"unknown training option(s) {', '.join(bad)}; known: {', '.join(sorted(names))}")
        if isinstance(overrides.get("augment"), dict):
            overrides["augment"] = AugmentConfig.from_dict(overrides["augment"])
        return dataclasses.replace(base, **copy.deepcopy(overrides))

    def replace(self, **changes) -> Profile:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _smoke() -> Profile:
    train = TrainConfig(lr=1e-3, max_epochs=2, patience=1, patch=16, batch_size=4, samples_per_volume=8,
                        queue_length=32, val_patches=8)
    return Profile(name="smoke", sim_preset="smoke", net_scale=0.125, folds=2, unsupervised=train,
                   supervised=copy.deepcopy(train),
                   search=SearchSpace(unsupervised_nets=("cevae",), supervised_nets=("unet",), widths=(1.0,),
                                      n_trials_unsupervised=1, n_trials_supervised=1, grid=False,
                                      heuristic_comparison=False, time_budget=3.0))


def _quick() -> Profile:
    # measured in docs/experiments.md ("The quick profile"): lr 1e-3 (the VAE died at 2e-3), more epochs and
    # patches for both kinds, the UNets with gradient clipping, 70 % pore-centred patches, a one-epoch
    # warm-up, stronger noise augmentation and no dropout
    # No elastic deformation: TorchIO deforms the whole scan each time it enters the queue, which was 30-40 %
    # of an epoch on the CPU (docs/experiments.md, "Cheaper epochs"); flips stay as the spatial transform.
    base = {"lr": 1e-3, "min_delta": 1e-4, "patch": 32, "batch_size": 4, "queue_length": 128,
            "val_patches": 16, "samples_per_volume": 32, "patience": 10}
    unsupervised = TrainConfig(**base, max_epochs=30, augment=AugmentConfig(w_elastic=0.0))
    supervised = TrainConfig(**base, max_epochs=20, grad_clip=1.0, pore_ratio=0.7, warmup_steps=64,
                             augment=AugmentConfig(noise_std=0.16, w_noise=0.5, w_blur=0.2, w_bias=0.2,
                                                   w_gamma=0.1, w_elastic=0.0))
    return Profile(name="quick", sim_preset="quick", net_scale=0.25, folds=2, unsupervised=unsupervised,
                   supervised=supervised, supervised_dropout=0.0,
                   search=SearchSpace(unsupervised_nets=UNSUPERVISED, supervised_nets=SUPERVISED,
                                      width_range=(0.5, 1.0), net_widths=dict(QUICK_NET_WIDTHS),
                                      lr_range=(2e-4, 1.5e-3), n_trials_unsupervised=0, n_trials_supervised=0,
                                      grid=False, heuristic_comparison=False, time_budget=30.0,
                                      unsupervised_share=0.3))


def _paper() -> Profile:
    # TrainConfig's and SearchSpace's defaults are the paper's; the supervised cap is the paper's protocol:
    # 16 α × β pairs + 7 more γ (the 8th is stage 1's γ) + the 4 other nets (porelab.automl.protocol)
    return Profile(name="paper", sim_preset="paper", net_scale=1.0, folds=5,
                   search=SearchSpace(n_trials_supervised=16 + 7 + len(SUPERVISED) - 1))


PROFILES: dict[str, Profile] = {p.name: p for p in (_smoke(), _quick(), _paper())}


def get_profile(name) -> Profile:
    """The named profile (a ``Profile`` is returned as given); unknown names raise a one-line
    ``ConfigError`` listing the known ones."""
    if isinstance(name, Profile):
        return name
    try:
        return PROFILES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown profile {name!r}; choose one of: {', '.join(PROFILES)}") from None


__all__ = ["PAPER_FTL_ALPHAS", "PAPER_FTL_GAMMA0", "PAPER_FTL_GAMMAS", "PROFILES", "PRUNERS", "QUICK_NET_WIDTHS",
           "TOPHAT_RADIUS", "LabelConfig", "Profile", "SearchSpace", "get_profile"]
