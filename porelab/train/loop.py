"""Training loop: patches from a TorchIO queue, Adam, one seed; the rest as callbacks.

Iuso et al. (2024), §4.2: "Each of the models was trained with the Adam optimiser (learning rate of 0.0001)
and halted through early stopping when the loss value did not decrease by more than 0.0001 for 40
consecutive epochs"; "A unique main seed propagated throughout the libraries". ``TrainConfig``'s defaults
are those values (and 64³ patches, batch 2); each ``porelab.config.Profile`` holds the ones it uses
(``profile.train_config(net)``).

One epoch is ``samples_per_volume`` patches from every training scan, drawn by the queue (pore-centred and
background-centred for supervised nets, uniform for unsupervised ones; see :mod:`porelab.sampling`), with
augmentation. The monitored loss is the mean loss on a fixed set of validation patches (the same sampler with
a fixed seed, no augmentation), so epochs are comparable.

``fit`` is one loop: epoch → training steps → validation → best weights → callbacks
(:mod:`porelab.train.callbacks`: warm-up, collapse rollback, plateau restart, early stopping, checkpoints),
whose actions (stop, roll back, restart) it applies.

>>> net, history = fit(build("unet", scale=0.125), "unet", train, val, get_profile("smoke").train_config("unet"))
... # doctest: +SKIP
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from porelab.errors import ConfigError
from porelab.train.callbacks import (
    CONTINUE,
    Action,
    Callback,
    Checkpointer,
    CollapseRollback,
    EarlyStopping,
    PlateauRestart,
    TrainState,
    WarmUp,
)
from porelab.train.config import Sample, TrainConfig


def validation_batches(val: list[Sample], *, supervised: bool, config: TrainConfig, seed: int) -> list:
    """Fixed validation patches: ``config.val_patches`` per scan, same sampler as training, no augmentation,
    drawn with their own seed (the global random state is left untouched)."""
    import torch

    from porelab.sampling import batch_tensors, make_loader, make_queue, make_subjects

    if not val or config.val_patches <= 0:
        return []
    with torch.random.fork_rng(devices=[]):
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            torch.manual_seed(seed + 7919)
            random.seed(seed + 7919)
            np.random.seed((seed + 7919) % 2**32)
            queue = make_queue(make_subjects(val), patch=config.patch, supervised=supervised,
                               samples_per_volume=config.val_patches,
                               max_length=max(config.val_patches, config.queue_length),
                               pore_ratio=config.pore_ratio, transform=None, shuffle=False)
            batches = [batch_tensors(b) for b in make_loader(queue, config.batch_size)]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
    return batches


def fit(net, name: str, train: list[Sample], val: list[Sample], config: TrainConfig, *,
        checkpoint_dir: str | Path | None = None, on_epoch: Callable | None = None, seed: int = 0,
        rebuild: Callable | None = None, progress: bool = True):
    """Train ``net`` (a ``porelab.nets`` network called ``name``) on ``train``; early-stop on ``val``.

    Parameters
    ----------
    net : torch.nn.Module
    name : str
        Network name (decides the loss and the sampler: supervised nets need labels).
    train, val : list of Sample
        Normalised scans (and labels for supervised nets). ``val`` may be empty: the training loss is then
        monitored instead.
    config : TrainConfig
    checkpoint_dir : path, optional
        ``best.pt`` (weights of the best epoch) and ``last.pt`` (everything to resume: weights, optimiser,
        epoch, best, patience counter, history, random state) are written there after every epoch; when
        ``last.pt`` exists, training resumes from it.
    on_epoch : callable, optional
        ``on_epoch(epoch, {"train_loss", "val_loss", "val_ref", "seconds", "best_val_loss", ...})`` after
        every epoch (after the checkpoints are written); an exception it raises (e.g. ``optuna.TrialPruned``)
        propagates. Returning ``"stop"`` (or setting ``info["stop"] = True`` in the dict it got) ends training
        after this epoch like early stopping (the best weights are kept): a time budget uses it.
        ``val_ref`` is the validation loss on one scale for every configuration of a kind of net (see
        :func:`reference_loss`), so runs with different loss parameters can be compared epoch by epoch.
    seed : int
        One seed for Python, numpy, torch and TorchIO (``porelab.runtime.seed_everything``).
    rebuild : callable, optional
        ``rebuild(k)`` returns a freshly initialised net of the same architecture (attempt ``k`` = 1, 2 …);
        enables the plateau restarts of ``TrainConfig.plateau_restarts`` (supervised nets).
    progress : bool
        tqdm bar over epochs with the losses (stderr).

    Returns
    -------
    (net, history)
        ``net`` with the best epoch's weights, in eval mode; ``history`` a dict with lists ``train_loss``,
        ``val_loss``, ``seconds`` (per epoch) and ``best_epoch``, ``best_val_loss``, ``stopped_early``,
        ``epochs``, ``device``, ``resumed_from``, ``lr`` (at the end of every epoch), ``rollbacks``,
        ``restarts`` (epoch and best loss of every plateau restart).
    """
    import torch

    from porelab.losses import build_loss
    from porelab.nets import is_supervised
    from porelab.runtime import configure_threads, get_device, seed_everything
    from porelab.sampling import augmentation, batch_tensors, make_loader, make_queue, make_subjects

    supervised = is_supervised(name)
    if not train:
        raise ConfigError("no training scans given")
    if supervised:
        missing = [s.name or f"#{i}" for i, s in enumerate(list(train) + list(val)) if s.label is None]
        if missing:
            raise ConfigError(f"supervised net {name!r} needs labels; missing for: {', '.join(missing)}")
    if config.max_epochs < 1 or config.batch_size < 1 or config.samples_per_volume < 1:
        raise ConfigError("max_epochs, batch_size and samples_per_volume must be >= 1")

    seed_everything(seed)
    device = get_device(config.device)
    if device.type == "cpu":
        configure_threads()
    use_amp = bool(config.amp and device.type == "cuda")
    net = net.to(device)
    loss_fn = build_loss(name, **config.loss_params)
    state = TrainState(net=net, optimiser=_adam(net, config.lr, config), config=config, name=name, device=device,
                       scaler=torch.amp.GradScaler("cuda", enabled=use_amp), amp=use_amp,
                       callbacks=default_callbacks(config, supervised=supervised, rebuild=rebuild,
                                            checkpoint_dir=checkpoint_dir))

    val_batches = validation_batches(list(val), supervised=supervised, config=config, seed=seed)
    transform = augmentation(config.augment)
    queue = make_queue(make_subjects(list(train)), patch=config.patch, supervised=supervised,
                       samples_per_volume=config.samples_per_volume, max_length=config.queue_length,
                       pore_ratio=config.pore_ratio, transform=transform)
    loader = make_loader(queue, config.batch_size)

    state.history = {"train_loss": [], "val_loss": [], "seconds": [], "best_epoch": None, "best_val_loss": None,
                     "stopped_early": False, "epochs": 0, "device": str(device), "resumed_from": None,
                     "rollbacks": [], "restarts": []}
    for cb in state.callbacks:
        cb.on_train_start(state)                # a checkpoint may replace the state here
    history = state.history
    history.setdefault("rollbacks", [])
    history.setdefault("restarts", [])

    def run_loss(x, y):
        loss, _ = loss_fn(state.net(x), y if supervised else x)
        return loss

    def train_epoch() -> float:
        state.net.train()
        total, n = 0.0, 0
        for batch in loader:
            x, y = batch_tensors(batch)
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True) if y is not None else None
            state.optimiser.zero_grad(set_to_none=True)
            for cb in state.callbacks:
                lr = cb.on_step_start()
                if lr is not None:
                    for group in state.optimiser.param_groups:
                        group["lr"] = lr
            with torch.autocast(device.type, enabled=use_amp):
                loss = run_loss(x, y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{name}: training loss became {float(loss)} at epoch {state.epoch}")
            state.scaler.scale(loss).backward()
            if config.grad_clip:
                state.scaler.unscale_(state.optimiser)
                torch.nn.utils.clip_grad_norm_(state.net.parameters(), config.grad_clip)
            state.scaler.step(state.optimiser)
            state.scaler.update()
            total += float(loss.detach()) * len(x)
            n += len(x)
        return total / max(n, 1)

    ref_fn = reference_loss(supervised)

    def evaluate() -> tuple[float, float]:
        if not val_batches:
            return math.nan, math.nan
        state.net.eval()
        total, ref, n = 0.0, 0.0, 0
        with torch.no_grad(), torch.autocast(device.type, enabled=use_amp):
            for x, y in val_batches:
                x = x.to(device)
                y = y.to(device) if y is not None else None
                out = state.net(x)
                total += float(loss_fn(out, y if supervised else x)[0]) * len(x)
                ref += float(ref_fn(out, y if supervised else x)) * len(x)
                n += len(x)
        return total / max(n, 1), ref / max(n, 1)

    from porelab.runtime import progress as progress_bar

    bar = progress_bar(enabled=progress, total=config.max_epochs, initial=min(state.start_epoch, config.max_epochs),
                       desc=f"train {name}", unit="epoch")
    try:
        for epoch in range(state.start_epoch, config.max_epochs):
            state.epoch = epoch
            t0 = time.perf_counter()
            train_loss = train_epoch()
            val_loss, val_ref = evaluate()
            monitored = val_loss if val_batches else train_loss
            seconds = time.perf_counter() - t0
            history["train_loss"].append(train_loss)
            history["val_loss"].append(val_loss)
            history.setdefault("val_ref", []).append(val_ref)
            history["seconds"].append(seconds)
            history.setdefault("lr", []).append(float(state.lr))
            history["epochs"] = epoch + 1
            state.record_losses(train_loss, val_loss, monitored)
            for cb in state.callbacks:
                cb.on_validation_end(state)
            for cb in state.callbacks:
                apply_action(state, cb.on_epoch_end(state) or CONTINUE, rebuild=rebuild, seed=seed)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}", best=f"{state.best_loss:.4f}")
            if on_epoch is not None:
                info = {"train_loss": train_loss, "val_loss": val_loss, "val_ref": val_ref, "seconds": seconds,
                        "best_val_loss": state.best_loss, "best_epoch": history["best_epoch"]}
                if on_epoch(epoch, info) == "stop" or info.get("stop"):
                    state.stop = history["stopped_early"] = True
                    history["stopped_by"] = "on_epoch"
            if state.stop:
                break
    finally:
        if bar is not None:
            bar.close()
    if state.best_state is not None:
        state.net.load_state_dict(state.best_state)
    state.net.eval()
    return state.net, history


def reference_loss(supervised: bool) -> Callable:
    """``fn(output, target) -> tensor``: the validation loss on one scale for every configuration.

    Supervised nets: the Focal Tversky loss at α = β = 0.5, γ = 1 (one minus the soft Dice of the pore
    class; Iuso et al. 2024, eq. (1)) of the eval-mode probability against the training labels, whatever
    α, β, γ the net is trained with. Unsupervised nets: the mean absolute reconstruction error
    ``|x̂ − x|`` (label-free), whatever the net's own loss adds (KL, commitment, …) or its norm (vqVAE: MSE).
    """
    if supervised:
        from porelab.losses import FocalTverskyLoss

        ftl = FocalTverskyLoss(alpha=0.5, beta=0.5, gamma=1.0)
        return lambda out, y: ftl(out[0] if isinstance(out, (list, tuple)) else out, y)
    return lambda out, x: (out["recon"] - x).abs().mean()


def apply_action(state: TrainState, action: Action, *, rebuild: Callable | None = None, seed: int = 0) -> None:
    """Do what a callback asked at the end of ``state.epoch`` and tell every callback what was done.

    ``rollback``: the attempt's best weights, a fresh Adam at ``action.lr`` (its moments belong to the
    collapsed weights), recorded in ``history["rollbacks"]``. ``restart``: ``rebuild(k)`` for restart
    ``k`` = 1, 2 … with torch seeded by ``seed + 7919 k`` (the same seed gives the same fresh net), a fresh
    Adam at ``config.lr``, no best yet, a new attempt from the next epoch, recorded in ``history["restarts"]``.
    ``stop``: the loop ends after this epoch.
    """
    import torch

    history = state.history
    if action.kind == "rollback":
        state.net.load_state_dict(state.best_state)
        state.optimiser = _adam(state.net, action.lr, state.config)
        history["rollbacks"].append({"epoch": state.epoch, "lr": action.lr})
        for cb in state.callbacks:
            cb.on_rollback(state)
    elif action.kind == "restart":
        if rebuild is None:
            raise ConfigError("a restart needs fit(..., rebuild=...)")
        history["restarts"].append({"epoch": state.epoch, "best_val_loss": state.best_loss})
        torch.manual_seed(seed + 7919 * len(history["restarts"]))
        state.net = rebuild(len(history["restarts"])).to(state.device)
        state.optimiser = _adam(state.net, state.config.lr, state.config)
        state.best_loss, state.best_state, state.attempt_start = math.inf, None, state.epoch + 1
        history["best_epoch"] = history["best_val_loss"] = None
        for cb in state.callbacks:
            cb.on_attempt_start(state)
    elif action.kind == "stop":
        state.stop = history["stopped_early"] = True
    elif action.kind != "continue":
        raise ValueError(f"unknown training action {action.kind!r}")


def _adam(net, lr: float, config: TrainConfig):
    import torch

    return torch.optim.Adam(net.parameters(), lr=lr, weight_decay=config.weight_decay)


def default_callbacks(config: TrainConfig, *, supervised: bool, rebuild: Callable | None,
                      checkpoint_dir: str | Path | None) -> list[Callback]:
    """The callbacks ``fit`` runs, in the order their actions must apply: a rollback before a restart in the
    same epoch, early stopping after both (a restart starts its count afresh), checkpoints last."""
    callbacks: list[Callback] = [WarmUp(config.lr, config.warmup_steps)]
    if supervised and config.collapse_rollbacks > 0:
        callbacks.append(CollapseRollback(config.collapse_rollbacks))
    if supervised and rebuild is not None:
        callbacks.append(PlateauRestart(config.plateau_epochs, config.plateau_loss, config.plateau_restarts,
                                        config.max_epochs))
    callbacks.append(EarlyStopping(config.patience))
    if checkpoint_dir is not None:
        callbacks.append(Checkpointer(checkpoint_dir))
    return callbacks


__all__ = ["apply_action", "default_callbacks", "fit", "reference_loss", "validation_batches"]
