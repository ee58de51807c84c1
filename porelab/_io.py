"""Small file helpers shared by every writer: atomic writes so that no half-written output is left behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto ``path`` only if the block finishes without error.

    The temporary name lives in the same folder (same file system), so the final ``os.replace`` is atomic.
    On any exception the temporary file or folder is removed and ``path`` is left untouched.
    The temporary name keeps ``path``'s suffixes (``.nii.gz`` etc.) so format detection still works.

    Examples
    --------
    >>> with atomic_path("out.npy") as tmp:          # doctest: +SKIP
    ...     np.save(tmp, array)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    fd_name = tempfile.mkdtemp if is_dir else None
    if is_dir:
        tmp = Path(fd_name(prefix=f".{stem}.", suffix=f".tmp{suffix}", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{suffix}", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if is_dir and path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, obj, **kwargs) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default, **{"allow_nan": False, **kwargs}) + "\n")
    return path


def _json_default(o):
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
