"""Training callbacks: small objects the loop of :func:`porelab.train.fit` calls at fixed points.

The loop runs epochs of optimiser steps, validates, keeps the best weights of the current attempt and applies
what the callbacks ask for. Warm-up, collapse rollback, plateau restart, early stopping and checkpoints are
callbacks, each with its own state; the loop knows none of it.

Hooks (all optional; :class:`Callback`'s do nothing):

==========================================  ==================================================================
``on_train_start(state)``                   before the first epoch (a checkpoint is resumed here)
``on_step_start() -> float | None``         before every optimiser step: a learning rate for this step, or
                                            None to leave it
``on_validation_end(state)``                after an epoch's losses and best weights are recorded, before
                                            any decision
``on_epoch_end(state) -> Action``           the decision: ``CONTINUE``, ``STOP``, ``RESTART`` or
                                            ``Action.rollback(lr)``
``on_rollback(state)``                      after the loop reloaded the best weights with a fresh optimiser
``on_attempt_start(state)``                 after the loop restarted from a fresh net (a new attempt)
``lr_target(lr) -> float``                  the rate an attempt now running at ``lr`` is heading to (a warm-up
                                            in progress: its end point)
``state_dict()`` / ``load_state_dict(d)``   the callback's entries in a checkpoint: one flat dict shared with
                                            the loop's own entries, so keys must be distinct
==========================================  ==================================================================

The loop calls ``on_epoch_end`` in list order and applies each action before it calls the next callback, so a
later callback sees what an earlier one did: ``fit`` orders them warm-up, collapse rollback, plateau restart,
early stopping, checkpoints (last, so it saves the epoch's final state).

>>> w = WarmUp(lr=1e-3, steps=4)
>>> [w.on_step_start() for _ in range(5)]
[0.00025, 0.0005, 0.00075, 0.001, None]
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: a supervised validation loss at or above this is an empty prediction (Focal Tversky: TI ≈ 0)
COLLAPSED_LOSS = 0.999


@dataclass(frozen=True)
class Action:
    """What a callback asks the loop to do at the end of an epoch.

    ``kind`` is ``"continue"``, ``"stop"`` (end training after this epoch), ``"restart"`` (a freshly
    initialised net, a fresh optimiser at the configured rate, a new attempt) or ``"rollback"`` (the attempt's
    best weights, a fresh optimiser at ``lr``).
    """

    kind: str = "continue"
    lr: float | None = None

    @classmethod
    def rollback(cls, lr: float) -> Action:
        return cls("rollback", lr)


CONTINUE = Action()
STOP = Action("stop")
RESTART = Action("restart")


@dataclass(eq=False)
class TrainState:
    """The loop's state as callbacks see it (read it; only a resume writes it, through ``load_state_dict``).

    ``epoch`` is the epoch being run; ``start_epoch`` the first one this call runs (after a resume: the one after
    the checkpoint's). An *attempt* is the training of one net from its initial weights: a restart begins a new
    one at ``attempt_start``, and ``best_loss`` / ``best_state`` are the best monitored loss and the weights (on
    the CPU) of the current attempt. ``monitored`` is the validation loss, or the training loss without
    validation scans; ``improved`` says whether this epoch beat ``best_loss`` by ``config.min_delta``.
    """

    net: Any
    optimiser: Any
    config: Any
    name: str = ""
    device: Any = "cpu"
    scaler: Any = None
    amp: bool = False
    history: dict = field(default_factory=dict)
    callbacks: list = field(default_factory=list)
    epoch: int = 0
    start_epoch: int = 0
    attempt_start: int = 0
    train_loss: float = math.nan
    val_loss: float = math.nan
    monitored: float = math.nan
    improved: bool = False
    best_loss: float = math.inf
    best_state: dict | None = None
    stop: bool = False

    @property
    def lr(self) -> float:
        """The optimiser's learning rate now."""
        return self.optimiser.param_groups[0]["lr"]

    @property
    def target_lr(self) -> float:
        """The rate the attempt runs at once any warm-up is over (``lr`` unless a callback ramps it)."""
        lr = self.lr
        for cb in self.callbacks:
            lr = cb.lr_target(lr)
        return lr

    def record_losses(self, train_loss: float, val_loss: float, monitored: float) -> bool:
        """The losses of ``epoch``; a monitored loss that beats the attempt's best by ``config.min_delta`` becomes
        the best (its weights copied to the CPU, ``history["best_epoch"]`` / ``["best_val_loss"]``). Returns
        ``improved``."""
        self.train_loss, self.val_loss, self.monitored = train_loss, val_loss, monitored
        self.improved = monitored < self.best_loss - self.config.min_delta
        if self.improved:
            self.best_loss = monitored
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.net.state_dict().items()}
            self.history["best_epoch"], self.history["best_val_loss"] = self.epoch, monitored
        return self.improved

    def state_dict(self) -> dict:
        """Everything needed to resume: weights, optimiser, epoch, best loss, history and every callback's
        entries."""
        state = {"epoch": self.epoch, "net": self.net.state_dict(), "optimizer": self.optimiser.state_dict(),
                 "scaler": self.scaler.state_dict() if self.amp else None, "best_loss": self.best_loss,
                 "history": self.history, "name": self.name, "config": self.config.to_dict(),
                 "attempt_start": self.attempt_start}
        for cb in self.callbacks:
            entries = cb.state_dict()
            clash = set(entries) & set(state)
            if clash:
                raise ValueError(f"{type(cb).__name__} state entries {sorted(clash)} are already taken")
            state.update(entries)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Continue after the epoch saved in ``state``; the callbacks read their own entries."""
        self.net.load_state_dict(state["net"])
        self.optimiser.load_state_dict(state["optimizer"])
        if self.amp and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.start_epoch = self.epoch + 1
        self.best_loss = float(state["best_loss"])
        self.history = state["history"]
        self.attempt_start = int(state.get("attempt_start", 0))
        for cb in self.callbacks:
            cb.load_state_dict(state)


class Callback:
    """The hooks, all doing nothing; subclasses override the ones they need."""

    def on_train_start(self, state: TrainState) -> None:
        pass

    def on_attempt_start(self, state: TrainState) -> None:
        pass

    def on_step_start(self) -> float | None:
        return None

    def on_validation_end(self, state: TrainState) -> None:
        pass

    def on_epoch_end(self, state: TrainState) -> Action:
        return CONTINUE

    def on_rollback(self, state: TrainState) -> None:
        pass

    def lr_target(self, lr: float) -> float:
        return lr

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class WarmUp(Callback):
    """Linear learning-rate warm-up: step k of an attempt (k = 1 … ``steps``) runs at ``lr · k / steps``; after
    that the rate is left alone (``steps`` = 0: no warm-up).

    A large first step can push a fresh net straight onto a saturated plateau; a gentle start keeps the first
    epoch clear of it. A rollback ends the warm-up (its halved rate must not be ramped over again); a restart
    begins a new one.
    """

    def __init__(self, lr: float, steps: int):
        self.lr, self.steps = lr, int(steps)
        self.done = 0          # optimiser steps taken in the current attempt

    def on_step_start(self) -> float | None:
        self.done += 1
        if self.done <= self.steps:
            return self.lr * self.done / self.steps
        return None

    def lr_target(self, lr: float) -> float:
        return self.lr if self.done < self.steps else lr

    def on_rollback(self, state: TrainState) -> None:
        self.done = max(self.done, self.steps)

    def on_attempt_start(self, state: TrainState) -> None:
        self.done = 0

    def state_dict(self) -> dict:
        return {"attempt_steps": self.done}

    def load_state_dict(self, state: dict) -> None:
        self.done = int(state.get("attempt_steps", 10**9))   # a checkpoint without it: the warm-up is over


class CollapseRollback(Callback):
    """Undo a collapse to "no pore anywhere": back to the attempt's best weights at half the target rate.

    A collapse is a validation loss ≥ ``loss`` (Focal Tversky ≥ 0.999, TI ≈ 0) in an epoch that did not improve,
    after the attempt had reached a best below it: the sigmoid saturated at "background", its gradient
    vanished and training cannot recover by itself. At most ``max_rollbacks`` per attempt.
    """

    def __init__(self, max_rollbacks: int, loss: float = COLLAPSED_LOSS):
        self.max_rollbacks, self.loss = int(max_rollbacks), loss
        self.used = 0          # rollbacks in the current attempt

    def on_epoch_end(self, state: TrainState) -> Action:
        if (not state.improved and self.used < self.max_rollbacks and state.best_state is not None
                and state.val_loss >= self.loss and state.best_loss < self.loss):
            self.used += 1
            return Action.rollback(0.5 * state.target_lr)
        return CONTINUE

    def on_attempt_start(self, state: TrainState) -> None:
        self.used = 0

    def load_state_dict(self, state: dict) -> None:
        start = int(state.get("attempt_start", 0))
        self.used = sum(1 for r in state["history"].get("rollbacks", []) if r["epoch"] >= start)


class PlateauRestart(Callback):
    """Start again from a fresh net when an attempt never left its starting plateau.

    After ``epochs`` epochs of an attempt, a best loss still ≥ ``loss`` asks for a restart, at most ``restarts``
    times in all and only when an epoch is left to train (``max_epochs``). The plateau: at initialisation every
    output is ≈ 0.5; with the Focal Tversky loss's small false-positive weight the cheapest first move is to
    raise every output, which saturates the sigmoid at "pore everywhere", where its gradient vanishes. Whether a
    net gets there depends on its initial weights, so fresh weights are the remedy.
    """

    def __init__(self, epochs: int, loss: float, restarts: int, max_epochs: int):
        self.epochs, self.loss, self.restarts, self.max_epochs = int(epochs), loss, int(restarts), int(max_epochs)
        self.done = 0          # restarts asked for so far

    def on_epoch_end(self, state: TrainState) -> Action:
        if (self.done < self.restarts and state.epoch + 1 - state.attempt_start == self.epochs
                and state.best_loss >= self.loss and state.epoch + 1 < self.max_epochs):
            self.done += 1
            return RESTART
        return CONTINUE

    def load_state_dict(self, state: dict) -> None:
        self.done = len(state["history"].get("restarts", []))


class EarlyStopping(Callback):
    """Stop after ``patience`` epochs in a row without improvement (the loop's ``state.improved``: the monitored
    loss beat the attempt's best by ``config.min_delta``). A new attempt starts counting afresh; the epoch that
    ended the previous attempt does not count for it."""

    def __init__(self, patience: int):
        self.patience = int(patience)
        self.wait = 0          # epochs since the last improvement

    def on_epoch_end(self, state: TrainState) -> Action:
        if state.improved:
            self.wait = 0
        elif state.epoch >= state.attempt_start:
            self.wait += 1
        return STOP if self.wait >= self.patience else CONTINUE

    def on_attempt_start(self, state: TrainState) -> None:
        self.wait = 0

    def state_dict(self) -> dict:
        return {"wait": self.wait}

    def load_state_dict(self, state: dict) -> None:
        self.wait = int(state["wait"])


class Checkpointer(Callback):
    """``best.pt`` (the best weights, written when they change) and ``last.pt`` (everything to resume: the
    loop's and every callback's state, the random state, whether training stopped), written after every epoch,
    atomically; when ``last.pt`` exists at the start, training resumes from it."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)

    def on_train_start(self, state: TrainState) -> None:
        import torch

        self.dir.mkdir(parents=True, exist_ok=True)
        last = self.dir / "last.pt"
        if not last.exists():
            return
        saved = torch.load(last, map_location=state.device, weights_only=False)
        state.load_state_dict(saved)
        state.history["resumed_from"] = int(saved["epoch"])
        best = self.dir / "best.pt"
        if best.exists():
            state.best_state = torch.load(best, map_location="cpu", weights_only=True)
        _set_rng_state(saved["rng"])
        if saved.get("stopped"):
            state.start_epoch = state.config.max_epochs   # a finished run: nothing left to do

    def on_validation_end(self, state: TrainState) -> None:
        if state.improved:
            _save(state.best_state, self.dir / "best.pt")

    def on_epoch_end(self, state: TrainState) -> Action:
        _save({**state.state_dict(), "rng": _rng_state(), "stopped": state.stop}, self.dir / "last.pt")
        return CONTINUE


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

    from porelab.io import atomic_path

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


__all__ = ["COLLAPSED_LOSS", "CONTINUE", "RESTART", "STOP", "Action", "Callback", "Checkpointer",
           "CollapseRollback", "EarlyStopping", "PlateauRestart", "TrainState", "WarmUp"]
