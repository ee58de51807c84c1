"""Process runtime: device choice, thread count, seeding, and stopping on SIGTERM/SIGINT.

The only place that decides where tensors live; and the one signal handler every long command shares
(:func:`sigterm_as_interrupt`), so a worker stopped by a scheduler or Ctrl-C unwinds cleanly and never
exits 0.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
from collections.abc import Iterator

import numpy as np


def get_device(prefer: str | None = None):
    """Return ``torch.device``: ``prefer`` if given ("cpu", "cuda", "cuda:1"), else CUDA when present, else CPU.

    An unknown device name, or a CUDA device this torch build or machine does not have, is a one-line
    ``ConfigError`` (the CLI's ``--device``) rather than an error deep inside the first forward pass.
    """
    import torch

    from porelab.errors import ConfigError

    if prefer:
        try:
            device = torch.device(prefer)
        except (RuntimeError, TypeError, ValueError):
            raise ConfigError(f"unknown device {prefer!r}; use cpu, cuda or cuda:N") from None
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise ConfigError(f"device {prefer!r}: CUDA is not available (this torch build or machine "
                                  "has no usable GPU); use --device cpu")
            if device.index is not None and device.index >= torch.cuda.device_count():
                raise ConfigError(f"device {prefer!r}: only {torch.cuda.device_count()} CUDA device(s) present")
        elif device.type == "mps" and not torch.backends.mps.is_available():
            raise ConfigError(f"device {prefer!r}: MPS is not available on this machine; use --device cpu")
        elif device.type not in ("cpu", "cuda", "mps"):
            raise ConfigError(f"device {prefer!r}: porelab runs on cpu, cuda or mps")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def configure_threads() -> int:
    """Set torch's intra-op threads to the cores this process may use (respects ``OMP_NUM_THREADS``)."""
    import torch

    env = os.environ.get("OMP_NUM_THREADS")
    try:
        n = int(env) if env else len(os.sched_getaffinity(0))
    except (AttributeError, ValueError):
        n = os.cpu_count() or 1
    n = max(1, n)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def progress(iterable=None, *, enabled: bool = True, desc: str = "", unit: str = "it", total: int | None = None,
             leave: bool = False, **kwargs):
    """The one progress bar of porelab (tqdm, on stderr).

    Over ``iterable``; or, without one, a manual bar (``total``, ``bar.update(n)``, ``bar.close()``). With
    ``enabled=False`` no bar is made: ``iterable`` itself is returned (``None`` without one).
    """
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, unit=unit, total=total, leave=leave, **kwargs)


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, numpy and torch (TorchIO draws from torch) and return a numpy Generator for local use."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    return np.random.default_rng(seed)


# ------------------------------------------------------------------------------------------- signals
class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT received inside :func:`sigterm_as_interrupt`; ``exit_code`` is 128 + signal."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def describe(self) -> str:
        return (f"stopped by {signal.Signals(self.signum).name}: the running trial is marked FAIL and its "
                "MLflow runs KILLED; run again with the same study name to resume")


_received: list[int] = []     # signals received inside sigterm_as_interrupt (main thread only)
_terminated: list[int] = []   # SIGTERM received by the command line's handler (porelab.cli)


def note_termination(signum: int) -> None:
    """Record that this process was asked to stop (the command line's SIGTERM handler calls it)."""
    _terminated.append(int(signum))


def clear_termination() -> None:
    _terminated.clear()


def termination_pending() -> bool:
    """Whether a stop signal arrived (in a ``porelab`` command or inside :func:`sigterm_as_interrupt`).

    The handlers raise ``KeyboardInterrupt`` at once, but the exception can be lost on its way out: Python
    drops one raised while a finaliser or a garbage-collector callback runs, and library code may catch it.
    The work then goes on as if nothing had happened (seen once in the suite: ``porelab simulate`` finished
    and exited 0 after a SIGTERM, with nothing on standard error). Writers check this before they publish
    an output (``porelab.io.atomic_path``), so a stopped process never completes one, and the command line
    never exits 0 after it."""
    return bool(_terminated or _received)

# Optuna logs a trial that raised (a signal, here) as "Trial N failed ..." with a long traceback, through
# this logger; naming it needs no Optuna import.
_OPTUNA_TRIAL_LOGGER = "optuna.study._optimize"


def check_interrupted(*_args) -> None:
    """Raise :class:`Interrupted` if a signal arrived inside :func:`sigterm_as_interrupt`.

    The signal handler raises at once, but an exception raised while a finaliser or a garbage-collector
    callback runs is printed and dropped by Python; these checks (run boundaries, epochs, after each Optuna
    trial: usable as an Optuna callback) make sure a stopped worker stops anyway.
    """
    if _received:
        raise Interrupted(_received[0])


def _on_signal(signum, frame):
    first = not _received
    _received.append(signum)
    if first:                # a second signal while unwinding must not interrupt the clean-up
        raise Interrupted(signum)


class _QuietInterruptedTrials(logging.Filter):
    """Drop Optuna's "Trial N failed …" warnings (with a 40-line traceback) for a trial stopped by a
    signal: the command prints one line instead."""

    def filter(self, record):
        return not (_received and record.levelno >= logging.WARNING
                    and record.getMessage().startswith("Trial "))


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM (and SIGINT) into :class:`Interrupted`, a ``KeyboardInterrupt``, while the block runs.

    A worker stopped by a scheduler (``kill``) or Ctrl-C then unwinds: Optuna records the running trial as
    FAIL (without logging its traceback), the MLflow runs end KILLED, and the block re-raises
    :class:`Interrupted` even if the first one was swallowed on the way, so the process never exits 0.
    Main thread only (elsewhere a no-op).
    """
    try:
        prev_term = signal.signal(signal.SIGTERM, _on_signal)
    except ValueError:   # not the main thread
        yield
        return
    if prev_term is _on_signal:   # nested: the outer block handles it
        yield
        return
    prev_int = signal.signal(signal.SIGINT, _on_signal)
    quiet = _QuietInterruptedTrials()
    optuna_log = logging.getLogger(_OPTUNA_TRIAL_LOGGER)
    optuna_log.addFilter(quiet)
    _received.clear()
    try:
        yield
        check_interrupted()
    finally:
        signal.signal(signal.SIGTERM, prev_term)
        signal.signal(signal.SIGINT, prev_int)
        optuna_log.removeFilter(quiet)
        _received.clear()
