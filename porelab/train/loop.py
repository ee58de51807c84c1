"""Training loop: patches from a TorchIO queue, Adam, early stopping, checkpoints, resume, one seed.

Iuso et al. (2024), §4.2: "Each of the models was trained with the Adam optimiser (learning rate of 0.0001)
and halted through early stopping when the loss value did not decrease by more than 0.0001 for 40
consecutive epochs"; "A unique main seed propagated throughout the libraries". ``TrainConfig``'s defaults
are those values (and 64³ patches, batch 2); ``TrainConfig.from_profile`` scales them for a CPU.

One epoch is ``samples_per_volume`` patches from every training scan, drawn by the queue (pore-centred and
background-centred for supervised nets, uniform for unsupervised ones; see :mod:`porelab.patches`), with
augmentation. The early-stopping loss is the mean loss on a fixed set of validation patches (the same
sampler with a fixed seed, no augmentation), so epochs are comparable.

>>> net, history = fit(build("unet", scale=0.125), "unet", train, val, TrainConfig.from_profile("smoke"))
... # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from porelab.errors import ConfigError
from porelab.train.config import Sample, TrainConfig


def _rng_state() -> dict:
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save(obj, path: Path) -> None:
    import torch

    from porelab._io import atomic_path

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


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
        ``on_epoch(epoch, {"train_loss", "val_loss", "seconds", "best_val_loss", ...})`` after every epoch
        (after the checkpoints are written); an exception it raises (e.g. ``optuna.TrialPruned``) propagates.
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
    optimiser = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    val_batches = validation_batches(list(val), supervised=supervised, config=config, seed=seed)
    transform = augmentation(config.augment)
    queue = make_queue(make_subjects(list(train)), patch=config.patch, supervised=supervised,
                       samples_per_volume=config.samples_per_volume, max_length=config.queue_length,
                       pore_ratio=config.pore_ratio, transform=transform)
    loader = make_loader(queue, config.batch_size)

    history = {"train_loss": [], "val_loss": [], "seconds": [], "best_epoch": None, "best_val_loss": None,
               "stopped_early": False, "epochs": 0, "device": str(device), "resumed_from": None,
               "rollbacks": [], "restarts": []}
    best_loss, best_state, wait, start_epoch = math.inf, None, 0, 0
    attempt_start = 0         # first epoch of the current attempt (plateau restarts begin a new one)
    attempt_steps = 0         # optimiser steps in the current attempt (learning-rate warm-up)
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt is not None:
        ckpt.mkdir(parents=True, exist_ok=True)
        last = ckpt / "last.pt"
        if last.exists():
            state = torch.load(last, map_location=device, weights_only=False)
            net.load_state_dict(state["net"])
            optimiser.load_state_dict(state["optimizer"])
            if use_amp and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            start_epoch = int(state["epoch"]) + 1
            best_loss, wait = float(state["best_loss"]), int(state["wait"])
            history = state["history"]
            attempt_start = int(state.get("attempt_start", 0))
            attempt_steps = int(state.get("attempt_steps", 10**9))   # older checkpoints: warm-up is over
            history["resumed_from"] = int(state["epoch"])
            best_path = ckpt / "best.pt"
            if best_path.exists():
                best_state = torch.load(best_path, map_location="cpu", weights_only=True)
            _set_rng_state(state["rng"])
            if state.get("stopped"):
                start_epoch = config.max_epochs  # finished run: nothing left to do

    def run_loss(output, x, y):
        return loss_fn(output, y if supervised else x)

    def evaluate() -> float:
        if not val_batches:
            return math.nan
        net.eval()
        total, n = 0.0, 0
        with torch.no_grad(), torch.autocast(device.type, enabled=use_amp):
            for x, y in val_batches:
                x = x.to(device)
                y = y.to(device) if y is not None else None
                loss, _ = run_loss(net(x), x, y)
                total += float(loss) * len(x)
                n += len(x)
        return total / max(n, 1)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.max_epochs, initial=min(start_epoch, config.max_epochs), desc=f"train {name}",
                   unit="epoch", leave=False)
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, config.max_epochs):
            t0 = time.perf_counter()
            net.train()
            total, n = 0.0, 0
            for batch in loader:
                x, y = batch_tensors(batch)
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True) if y is not None else None
                optimiser.zero_grad(set_to_none=True)
                attempt_steps += 1
                if attempt_steps <= config.warmup_steps:
                    for group in optimiser.param_groups:
                        group["lr"] = config.lr * attempt_steps / config.warmup_steps
                with torch.autocast(device.type, enabled=use_amp):
                    loss, _ = run_loss(net(x), x, y)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{name}: training loss became {float(loss)} at epoch {epoch}")
                scaler.scale(loss).backward()
                if config.grad_clip:
                    scaler.unscale_(optimiser)
                    torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
                scaler.step(optimiser)
                scaler.update()
                total += float(loss.detach()) * len(x)
                n += len(x)
            train_loss = total / max(n, 1)
            val_loss = evaluate()
            monitored = val_loss if val_batches else train_loss
            seconds = time.perf_counter() - t0
            history["train_loss"].append(train_loss)
            history["val_loss"].append(val_loss)
            history["seconds"].append(seconds)
            history.setdefault("lr", []).append(float(optimiser.param_groups[0]["lr"]))
            history["epochs"] = epoch + 1
            if monitored < best_loss - config.min_delta:
                best_loss, wait = monitored, 0
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}
                history["best_epoch"], history["best_val_loss"] = epoch, monitored
                if ckpt is not None:
                    _save(best_state, ckpt / "best.pt")
            else:
                wait += 1
                attempt_rollbacks = [r for r in history.setdefault("rollbacks", []) if r["epoch"] >= attempt_start]
                if (supervised and val_loss >= COLLAPSED_LOSS and best_state is not None
                        and best_loss < COLLAPSED_LOSS and len(attempt_rollbacks) < config.collapse_rollbacks):
                    # collapse to an empty prediction: back to the best weights, fresh Adam, half the lr
                    # half the rate the attempt runs at (mid warm-up: the one it was heading to)
                    current = optimiser.param_groups[0]["lr"]
                    lr = 0.5 * (config.lr if attempt_steps < config.warmup_steps else current)
                    net.load_state_dict(best_state)
                    optimiser = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=config.weight_decay)
                    history["rollbacks"].append({"epoch": epoch, "lr": lr})
                    attempt_steps = max(attempt_steps, config.warmup_steps)   # no warm-up over the halved lr
            restarts = history.setdefault("restarts", [])
            if (supervised and rebuild is not None and len(restarts) < config.plateau_restarts
                    and epoch + 1 - attempt_start == config.plateau_epochs and best_loss >= config.plateau_loss
                    and epoch + 1 < config.max_epochs):
                # never left the starting plateau: start again from fresh weights (another seed)
                restarts.append({"epoch": epoch, "best_val_loss": best_loss})
                torch.manual_seed(seed + 7919 * len(restarts))
                net = rebuild(len(restarts)).to(device)
                optimiser = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
                best_loss, best_state, wait, attempt_start, attempt_steps = math.inf, None, 0, epoch + 1, 0
                history["best_epoch"] = history["best_val_loss"] = None
            stop = wait >= config.patience
            history["stopped_early"] = bool(stop)
            if ckpt is not None:
                _save({"epoch": epoch, "net": net.state_dict(), "optimizer": optimiser.state_dict(),
                       "scaler": scaler.state_dict() if use_amp else None, "best_loss": best_loss, "wait": wait,
                       "history": history, "rng": _rng_state(), "stopped": stop, "name": name,
                       "config": config.to_dict(), "attempt_start": attempt_start,
                       "attempt_steps": attempt_steps}, ckpt / "last.pt")
            if bar is not None:
                bar.update(1)
                bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}", best=f"{best_loss:.4f}")
            if on_epoch is not None:
                on_epoch(epoch, {"train_loss": train_loss, "val_loss": val_loss, "seconds": seconds,
                                 "best_val_loss": best_loss, "best_epoch": history["best_epoch"]})
            if stop:
                break
    finally:
        if bar is not None:
            bar.close()
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return net, history


#: a supervised validation loss at or above this is an empty prediction (Focal Tversky: TI ≈ 0)
COLLAPSED_LOSS = 0.999

__all__ = ["COLLAPSED_LOSS", "Sample", "TrainConfig", "fit", "validation_batches"]
