"""Device choice, thread count and seeding: the only place that decides where tensors live."""

from __future__ import annotations

import os
import random

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


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, numpy and torch (TorchIO draws from torch) and return a numpy Generator for local use."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    return np.random.default_rng(seed)
