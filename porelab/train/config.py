"""Training settings and training scans: ``TrainConfig`` (the paper's values; each profile holds one per kind of
net, ``porelab.config.Profile.train_config``) and ``Sample``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from porelab.sampling import AugmentConfig


@dataclass
class TrainConfig:
    """Training settings; the defaults are the paper's (Iuso et al. 2024, §4.2; the `paper` profile).

    Attributes
    ----------
    lr : Adam learning rate (1e-4).
    max_epochs, patience, min_delta : early stopping on the validation loss (200, 40, 1e-4).
    patch : patch edge in voxels (64).
    batch_size : patches per step (2).
    samples_per_volume : patches drawn from each training scan per epoch.
    queue_length : TorchIO ``Queue`` max_length.
    val_patches : fixed validation patches per validation scan.
    pore_ratio : fraction of pore-centred patches for supervised nets.
    loss_params : keyword arguments of ``porelab.losses.build_loss`` (e.g. FTL α, β, γ).
    augment : ``porelab.patches.AugmentConfig`` (training only).
    amp : mixed precision on CUDA (ignored on CPU).
    weight_decay : Adam weight decay (0 in the paper).
    grad_clip : max gradient norm, or None.
    collapse_rollbacks : supervised nets only: how many times per attempt (see the plateau restarts) a
        collapse to "no pore anywhere" (validation Focal Tversky loss ≥ 0.999, i.e. TI ≈ 0: the sigmoid
        saturated, its gradient vanished and training cannot recover by itself) is undone by reloading the
        best weights, resetting Adam and halving the learning rate (0: never).
    warmup_steps : the learning rate rises linearly from ``lr / warmup_steps`` to ``lr`` over the first
        ``warmup_steps`` optimiser steps of every attempt (0: constant, the paper).
    plateau_restarts, plateau_epochs, plateau_loss : supervised nets, and only when ``fit`` gets a ``rebuild``
        factory: if after ``plateau_epochs`` epochs of an attempt the best validation loss is still
        ≥ ``plateau_loss``, the net never left its starting plateau, and training starts again from freshly
        initialised weights (another seed), at most ``plateau_restarts`` times, within the same ``max_epochs``.
        The plateau: at initialisation every output is ≈ 0.5; with the Focal Tversky loss's small
        false-positive weight (the paper's β = 0.1) the cheapest first move is to raise *every* output, which
        saturates the sigmoid at "pore everywhere" (FTL ≈ 0.85-0.93 on pore-centred patches) where its
        gradient vanishes; whether a net leaves the plateau depends on its initial weights, so fresh weights
        are the remedy.
    """

    lr: float = 1e-4
    max_epochs: int = 200
    patience: int = 40
    min_delta: float = 1e-4
    patch: int = 64
    batch_size: int = 2
    samples_per_volume: int = 128
    queue_length: int = 512
    val_patches: int = 128
    pore_ratio: float = 0.5
    loss_params: dict = field(default_factory=dict)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    amp: bool = True
    weight_decay: float = 0.0
    grad_clip: float | None = None
    collapse_rollbacks: int = 2
    warmup_steps: int = 0
    plateau_restarts: int = 2
    plateau_epochs: int = 4
    plateau_loss: float = 0.85
    device: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Sample:
    """One scan for training: ``scan`` normalised float32 (Z, Y, X), ``label`` (Z, Y, X) {0,1} or None."""

    scan: np.ndarray
    label: np.ndarray | None = None
    name: str = ""


__all__ = ["Sample", "TrainConfig"]
