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
    #: free options; the pipeline reads ``unsupervised_nets``, ``supervised_nets``, ``widths``, ``residuals``,
    #: ``supervised_net_kwargs`` (extra constructor arguments of the supervised nets, e.g. ``dropout``);
    #: ``unsupervised_train`` / ``supervised_train`` are ``TrainConfig`` fields for that kind of net
    #: (``TrainConfig.from_profile(profile, net=name)``)
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
    # quick: the whole main job in ≤ 30 min of a 2-core CPU (measured, docs/pipeline.md). Per training step
    # (batch 4, 32³, one thread): vae 0.35 s, cevae 0.77 s, unet 1.1 s; scoring a 96×128×128 scan 10-30 s.
    # The VAE at lr 2e-3 died (constant output, validation L1 0.269 from epoch 3 on, with or without gradient
    # clipping); at lr 1e-3 three seeds out of three learned: 15 epochs of 32 patches per scan gave held-out
    # AP 0.70 / 0.70 / 0.61 (|x - x_hat|) and 0.78 / 0.76 / 0.75 (dark residual), post-processed. The UNet
    # on the VAE's pseudo-labels (Dice 0.86-0.90 against the truth), gradient norm clipped at 1 (unclipped
    # it collapsed to "no pore"), AP on unseen cylinders / cube, the two folds: 12 epochs of 32 patches
    # 0.70 / 0.55 and 0.72 / 0.63; 20 epochs 0.87 / 0.54 and 0.62 / 0.45; 20 epochs with the noise
    # augmentation at up to σ 0.16 (the cube's noise is ≈ 1.4× the cylinders') in half the intensity draws
    # 0.89 / 0.49 and 0.81 / 0.69. At width 0.25 the UNet's finest level has 4 channels, and Dropout3d(0.1)
    # drops whole ones: without dropout and with 70 % pore-centred patches both folds left the initial
    # plateau (validation FTL ≈ 0.9) by epoch 5 (before: one fold in two stayed on it for 20 epochs) and
    # reached 0.83 / 0.68 and 0.91 / 0.50. Without dropout, though, a UNet could collapse to "no pore" inside
    # its first epoch, before any weights worth rolling back to existed (a whole pipeline run: all three
    # attempts of one fold, validation FTL 1.0 from epoch 0). A one-epoch learning-rate warm-up (64 steps)
    # keeps the first epoch clear of it, so the rollback and the plateau restart can act later: that fold,
    # same seed and labels, then learned (unseen cylinders / cube AP 0.85 / 0.82); with lr 5e-4 and the
    # warm-up, seeds 1 and 2 collapsed at epochs 1-3, were rolled back and learned too (0.75 / 0.73, 0.86 / 0.81).
    "quick": Profile(
        name="quick", sim_preset="quick", patch=32, net_scale=0.25, folds=2, max_epochs=10, patience=4,
        min_delta=1e-4, lr=1e-3, batch_size=4, samples_per_volume=16, queue_length=128, val_patches=16,
        pore_ratio=0.5, n_trials_unsupervised=1, n_trials_supervised=1, grid_search=False,
        heuristic_comparison=True,
        extra={"unsupervised_nets": ("vae",), "supervised_nets": ("unet",), "widths": (1.0,),
               "unsupervised_train": {"lr": 1e-3, "max_epochs": 30, "samples_per_volume": 32, "patience": 10},
               "supervised_net_kwargs": {"dropout": 0.0},
               "supervised_train": {"lr": 1e-3, "max_epochs": 20, "samples_per_volume": 32, "patience": 10,
                                    "grad_clip": 1.0, "pore_ratio": 0.7, "warmup_steps": 64,
                                    "augment": {"noise_std": 0.16, "w_noise": 0.5, "w_blur": 0.2, "w_bias": 0.2,
                                                "w_gamma": 0.1}}},
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
