"""Small file helpers shared by every writer: atomic writes so that no half-written output is left behind,
and the output rules of the command line (never replace what porelab did not write, never an input).

Temporary names embed the writer's process id (``.<stem>.<pid>.<random>.tmp<suffix>``), so a later write to
the same target removes the leftovers of a writer that was killed (``kill -9``) before it could clean up.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

MARKER = ".porelab-output"  # a small JSON file in every folder output of the command line
MARKER_FORMAT = "porelab-output/1"
_MODEL_FORMATS = ("porelab-model/",)  # model.json "format" prefixes of porelab model folders
_DATASET_FORMATS = ("porelab-dataset/",)  # manifest.json "format" prefixes of porelab datasets


def _split(path: Path) -> tuple[str, str]:
    """(stem, suffixes) of ``path``'s name: ``a.nii.gz`` → (``a``, ``.nii.gz``)."""
    suffix = "".join(path.suffixes)
    if suffix and len(suffix) < len(path.name):
        return path.name[: len(path.name) - len(suffix)], suffix
    return path.name, ""


def _temp_pattern(path: Path) -> re.Pattern:
    stem, suffix = _split(path)
    return re.compile(rf"^\.{re.escape(stem)}\.(\d+)\.[A-Za-z0-9_]+\.(tmp|old){re.escape(suffix)}$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but belongs to someone else (or cannot tell): leave its files alone
    return True


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            p.unlink()


def clean_stale(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary siblings of ``path`` left by porelab writers that no longer run.

    A ``.tmp`` leftover is a partial write and is deleted. An ``.old`` leftover is a previous output that a
    killed writer had moved aside to swap a new one in: it is moved back when ``path`` is missing, else deleted.
    Returns the paths removed or restored.
    """
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        return []
    pattern = _temp_pattern(path)
    done = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return []
    for p in entries:
        m = pattern.match(p.name)
        if not m or _pid_alive(int(m.group(1))):
            continue
        if m.group(2) == "old" and not os.path.lexists(path):
            with contextlib.suppress(OSError):
                os.replace(p, path)
                done.append(p)
                continue
        _remove(p)
        done.append(p)
    return done


def is_porelab_output(path: str | os.PathLike) -> str | None:
    """What wrote folder ``path`` when porelab did (a command name, ``"model"`` or ``"dataset"``), else None.

    Recognised: the ``.porelab-output`` marker of the command line, a model folder's ``model.json`` and a
    dataset's ``manifest.json`` with porelab's format strings.
    """
    path = Path(path)
    for name, key, prefixes, kind in ((MARKER, "format", (MARKER_FORMAT,), None),
                                      ("model.json", "format", _MODEL_FORMATS, "model"),
                                      ("manifest.json", "format", _DATASET_FORMATS, "dataset")):
        f = path / name
        if not f.is_file():
            continue
        try:
            data = json.loads(f.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        if isinstance(data, dict) and str(data.get(key, "")).startswith(prefixes):
            return kind or str(data.get("command") or "porelab")
    return None


def _is_empty_dir(path: Path) -> bool:
    try:
        return path.is_dir() and not any(path.iterdir())
    except OSError:
        return False


def _refuse(message: str):
    from porelab.errors import ConfigError

    raise ConfigError(message)


def _check_replaceable(path: Path, *, is_dir: bool, overwrite: bool, shown: str) -> None:
    """Raise ``ConfigError`` unless an existing ``path`` may be replaced by a new output."""
    if not os.path.lexists(path):
        return
    if is_dir:
        if not path.is_dir():
            _refuse(f"{shown}: exists and is not a folder; choose another output folder")
        if _is_empty_dir(path):
            return
        kind = is_porelab_output(path)
        if kind is None:
            _refuse(f"{shown}: folder is not empty and was not written by porelab; choose a new or empty "
                    "output folder (nothing was changed)")
        if not overwrite:
            _refuse(f"{shown}: holds an earlier porelab {kind} output; add --overwrite to replace it")
    else:
        if path.is_dir():
            _refuse(f"{shown}: is a folder; give a file name for the output")
        if not overwrite:
            _refuse(f"{shown}: file exists; add --overwrite to replace it")


def _companions(path: Path) -> list[Path]:
    """Files written beside ``path`` by the volume writers (spacing sidecars, raw data of headers)."""
    name = path.name.lower()
    out = [Path(str(path) + ".json")]
    if name.endswith(".vgi"):
        out.append(path.with_suffix(".vol"))
    if name.endswith(".mhd"):
        out += [path.with_suffix(".raw"), path.with_suffix(".zraw")]
    return out


def prepare_output(path: str | os.PathLike, *, inputs: Iterable = (), overwrite: bool = False,
                   is_dir: bool = False) -> Path:
    """Check an output path before any work and return it resolved (``.``, ``..``, ``~`` and trailing slashes
    become the real name). Raises ``ConfigError`` (one line) when:

    - the output is an input, or (a folder output) holds an input, or is or holds the current folder;
    - an existing folder target is not empty and was not written by porelab (never replaced, whatever the
      options), or is an earlier porelab output and ``overwrite`` is False;
    - an existing file target exists and ``overwrite`` is False;
    - the folder it goes in is not writable.

    Leftover temporary files of killed writers to the same target are removed first.
    """
    shown = str(path)
    target = Path(os.path.expanduser(str(path))).resolve()
    if target.parent == target or not target.name:
        _refuse(f"{shown}: cannot be an output (a file system root)")
    for p in inputs:
        if p is None or str(p) == "":
            continue
        src = Path(os.path.expanduser(str(p)))
        if not os.path.lexists(src):
            continue
        rsrc = src.resolve()
        same = rsrc == target or any(rsrc == c.resolve() for c in ([] if is_dir else _companions(target)))
        if not same and os.path.exists(target):
            with contextlib.suppress(OSError):
                same = os.path.samefile(src, target)
        if same:
            _refuse(f"{shown}: the output would overwrite the input {p}")
        if is_dir and target in rsrc.parents:
            _refuse(f"{shown}: the output folder holds the input {p}; choose another output folder")
    if is_dir:
        cwd = Path.cwd().resolve()
        if cwd == target or target in cwd.parents:
            _refuse(f"{shown}: the output folder is (or holds) the current folder; give a new folder name")
    clean_stale(target)
    _check_replaceable(target, is_dir=is_dir, overwrite=overwrite, shown=shown)
    existing = target.parent
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        _refuse(f"{shown}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        _refuse(f"{shown}: cannot write in {existing} (permission denied)")
    return target


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, is_dir: bool = False, overwrite: bool = True,
                marker: str | None = None) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto ``path`` only if the block finishes without error.

    The temporary name lives in the same folder (same file system), so the final rename is atomic.
    On any exception (also ``KeyboardInterrupt``) the temporary file or folder is removed and ``path`` is left
    untouched. The temporary name keeps ``path``'s suffixes (``.nii.gz`` etc.) so format detection still works.

    A folder (``is_dir=True``) replaces an existing ``path`` only when that is an empty folder or a porelab
    output (see :func:`is_porelab_output`; with ``overwrite=False`` only an empty folder); anything else raises
    ``ConfigError`` and is left untouched. The old folder is moved aside, the new one renamed in, then the old
    one deleted. ``marker`` (a command name) writes the ``.porelab-output`` file into the new folder.

    Examples
    --------
    >>> with atomic_path("out.npy") as tmp:          # doctest: +SKIP
    ...     np.save(tmp, array)
    """
    path = Path(path)
    if is_dir:
        path = Path(os.path.abspath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    stem, suffix = _split(path)
    tmp = None
    try:
        # The name is chosen before the file or folder exists, so an interrupt arriving just after its
        # creation still finds it here and removes it.
        while True:
            tmp = path.parent / f".{stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{suffix}"
            try:
                _create(tmp, is_dir)
                break
            except FileExistsError:
                tmp = None
        yield tmp
        from porelab.runtime import termination_pending

        if termination_pending():   # a stop signal whose KeyboardInterrupt was dropped: never publish
            raise KeyboardInterrupt("stopped before the output was complete")
        if is_dir:
            if marker is not None and tmp.is_dir():
                from porelab import __version__ as version

                (tmp / MARKER).write_text(json.dumps({"format": MARKER_FORMAT, "command": marker,
                                                      "porelab": version}) + "\n")
            _swap_dir(tmp, path, overwrite=overwrite)
        else:
            os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            _remove(tmp)
        raise


def _create(tmp: Path, is_dir: bool) -> None:
    """Create the empty temporary file or folder ``tmp`` (``FileExistsError`` if the name is taken)."""
    if is_dir:
        os.mkdir(tmp)
    else:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


def _swap_dir(tmp: Path, path: Path, *, overwrite: bool) -> None:
    """Rename folder ``tmp`` onto ``path``; an existing replaceable ``path`` is moved aside, then deleted."""
    if not os.path.lexists(path):
        os.replace(tmp, path)
        return
    _check_replaceable(path, is_dir=True, overwrite=overwrite, shown=str(path))
    stem, suffix = _split(path)
    aside = path.parent / f".{stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.old{suffix}"
    try:
        os.replace(path, aside)
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(aside) and not os.path.lexists(path):
            os.replace(aside, path)  # put the previous output back
        raise
    _remove(aside)


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
