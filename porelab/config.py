"""Profiles: one source of truth for every size, count and budget that scales between CPU and GPU.

``smoke`` runs in seconds (tests, CI); ``quick`` is the default and runs the whole main job on a 2-core CPU
in about half an hour; ``paper`` keeps the sizes of Iuso et al. (2024): 64³ patches, the paper's widths,
5 folds, Adam lr 1e-4, early stopping with min delta 1e-4 and patience 40.

Each module keeps its own config dataclass (``porelab.train.TrainConfig`` and so on) whose defaults are the
paper's values; ``Profile`` holds what differs between profiles, and modules build their configs from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from porelab.errors import ConfigError


@dataclass(frozen=True)
class Profile:
    name: str
    sim_preset: str            # `porelab simulate --preset` used when the main job simulates its data
    patch: int                 # patch edge in voxels (divisible by 16)
    net_scale: float           # width multiplier for every network (1.0 = the paper's Table 8 sizes)
    folds: int                 # cross-validation folds over the cylinders (leave one scan out)
    max_epochs: int
    patience: int              # early stopping patience (epochs without improvement > min_delta)
    min_delta: float
    lr: float
    batch_size: int
    samples_per_volume: int    # patches drawn from each scan per epoch
    queue_length: int          # TorchIO Queue max_length
    val_patches: int           # patches per validation scan for the early-stopping loss
    pore_ratio: float          # supervised sampler: fraction of pore-centred patches
    n_trials_unsupervised: int
    n_trials_supervised: int
    grid_search: bool          # supervised study uses the paper's FTL grid (GridSampler) instead of TPE
    heuristic_comparison: bool  # also train supervised nets on Algorithm 1 labels (paper's Table 7 comparison)
    extra: dict = field(default_factory=dict)

    def replace(self, **changes) -> Profile:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke", sim_preset="smoke", patch=16, net_scale=0.125, folds=2, max_epochs=2, patience=1,
        min_delta=1e-4, lr=1e-3, batch_size=4, samples_per_volume=8, queue_length=32, val_patches=8,
        pore_ratio=0.5, n_trials_unsupervised=1, n_trials_supervised=1, grid_search=False,
        heuristic_comparison=False,
    ),
    "quick": Profile(
        name="quick", sim_preset="quick", patch=32, net_scale=0.25, folds=3, max_epochs=30, patience=5,
        min_delta=1e-4, lr=1e-3, batch_size=4, samples_per_volume=32, queue_length=128, val_patches=32,
        pore_ratio=0.5, n_trials_unsupervised=3, n_trials_supervised=4, grid_search=False,
        heuristic_comparison=True,
    ),
    "paper": Profile(
        name="paper", sim_preset="paper", patch=64, net_scale=1.0, folds=5, max_epochs=200, patience=40,
        min_delta=1e-4, lr=1e-4, batch_size=2, samples_per_volume=128, queue_length=512, val_patches=128,
        pore_ratio=0.5, n_trials_unsupervised=5, n_trials_supervised=128, grid_search=True,
        heuristic_comparison=True,
    ),
}


def get_profile(name: str) -> Profile:
    """Return the named profile; unknown names raise a one-line ``ConfigError`` listing the known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(f"unknown profile {name!r}; choose one of: {', '.join(PROFILES)}") from None
