"""Shared by the MLproject entry points: call the ``porelab`` CLI, fix relative output paths.

``mlflow run`` starts each command inside the project folder, so a relative output path would land there.
Entry points resolve relative outputs against the folder of the MLflow store instead (the folder of
``mlflow.db``, which is where the user ran ``mlflow run`` with the default store), else the cwd.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# `mlflow run <checkout>` runs the porelab of that checkout, even when another one is installed
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


def store_dir() -> Path:
    from porelab.tracking import store_dir as _store_dir

    return _store_dir()


def absolute(path: str) -> str:
    """``path`` unchanged if empty, absolute or a URI; else relative to :func:`store_dir`."""
    if not path or "://" in path or path.startswith("models:/") or os.path.isabs(path):
        return path
    return str(store_dir() / path)


def fix_options(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """Make the values of ``options`` (e.g. ``-o``) in ``argv`` absolute with :func:`absolute`."""
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg in options:
            out[i + 1] = absolute(out[i + 1])
    return out


def run(command: str, argv: list[str] | None = None) -> None:
    """Run ``porelab <command> <argv>`` in this process (exits with the command's status)."""
    from porelab.cli import main

    main([command, *(sys.argv[1:] if argv is None else argv)], prog_name="porelab")
