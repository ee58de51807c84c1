"""Dataset manifests: which scans a study uses, in which role, with which (optional) labels.

A dataset is a folder holding ``manifest.json``. ``porelab dataset`` writes one over the user's own scans where
they are (absolute paths, nothing copied, any format :func:`porelab.io.read_volume` reads); ``porelab simulate``
writes one beside its simulated scans (paths relative to the folder, the exact truth as labels).

Format ``porelab-dataset/2`` (``docs/contracts.md``)::

    {"format": "porelab-dataset/2", "created_by": "porelab dataset" | "porelab simulate",
     "samples": [{"name", "role": "cv" | "test", "path", "shape": [z, y, x], "dtype", "spacing": [z, y, x],
                  "spacing_source": "file" | "option", "labels": path | null, "object": path | null,
                  "fingerprints": {"path": FP, "labels": FP, "object": FP}, ...}]}

``cv`` scans are the training / cross-validation scans, ``test`` scans are never trained on (the paper's hard
cube; ``hard``, the role's name in format 1, is read as ``test``). A path is absolute, or relative to the
manifest's folder. A fingerprint ``FP`` is ``{"bytes", "sha256"}``: the size and a hash of the file's first and
last 64 KiB (a folder: of every file's name and size and of the ends of its first and last file), so a scan
that was rewritten or replaced is refused on load while a copied or moved dataset still loads (a fingerprint of
modification times would not survive ``cp -r``). Simulated samples add ``part``, ``material``, ``quality``,
``porosity_percent``, ``pore_count`` and ``pores``.

Format ``porelab-dataset/1`` (``porelab simulate`` before) is still read: ``scan``, ``truth``, ``object`` and
``dims`` per sample, its ``shape`` being the part's geometry.

The object mask of a scan without an ``object`` file is derived from the scan at load time (Algorithm 1 steps
6-8, :func:`porelab.labels.object_mask`), never written: ``porelab.crossval.load_scans`` runs Algorithm 1 on
every scan anyway and takes the object from that same pass, so a cached copy would save nothing there, while
computing it when the manifest is written would read every (possibly huge) scan in full and could go stale.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from porelab.errors import ConfigError, ScanError

FORMAT = "porelab-dataset/2"
FORMAT_V1 = "porelab-dataset/1"
FORMATS = (FORMAT, FORMAT_V1)
ROLES = ("cv", "test")
#: role names of older manifests → the role they mean
ROLE_ALIASES = {"hard": "test"}
_FILE_KEYS = ("path", "labels", "object")
_ENDS = 1 << 16  # bytes hashed at each end of a file


# ------------------------------------------------------------------------------------------------ data
@dataclass(frozen=True)
class SampleInfo:
    """One scan of a dataset (paths absolute after :func:`load_manifest`).

    ``labels`` (the pore mask: hand labels, or a simulation's exact truth; ``truth`` is its other name) and
    ``object`` (the part's mask) are None when the dataset has none for this scan.
    """

    name: str
    role: str
    scan: Path
    labels: Path | None
    object: Path | None
    spacing: tuple[float, float, float]
    dims: tuple[int, ...] | None = None
    dtype: str | None = None
    part: str = ""
    material: str = ""
    quality: dict = field(default_factory=dict)
    porosity_percent: float = math.nan
    pore_count: int = 0
    pores: Path | None = None

    @property
    def truth(self) -> Path | None:
        """The labels file (a simulated dataset's exact truth), or None."""
        return self.labels

    @property
    def shape(self) -> str:
        """The part's geometry of a simulated sample (``cylinder``, ``cube``); empty for other scans."""
        return self.part

    def load(self, mmap: bool = True, *, derive_object: bool = True):
        """``(scan, labels | None, object | None)``: ``.npy`` files memory-mapped by default (as stored:
        float32 scans, uint8 masks), other formats through :mod:`porelab.io` (masks bool). Without an
        ``object`` file the object mask is derived from the scan (Algorithm 1 steps 6-8) unless
        ``derive_object`` is False (then None)."""
        scan = _load(self.scan, mmap, spacing=self.spacing)
        labels = _load(self.labels, mmap, mask=True) if self.labels is not None else None
        if self.object is not None:
            obj = _load(self.object, mmap, mask=True)
        elif derive_object:
            from porelab.labels import object_mask

            obj = object_mask(np.asarray(scan))
        else:
            obj = None
        return scan, labels, obj


def _load(path: Path, mmap: bool, *, mask: bool = False, spacing=None) -> np.ndarray:
    if path.suffix.lower() == ".npy" and path.is_file():
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    from porelab.io import read_mask, read_volume

    if mask:
        return read_mask(path)
    return read_volume(path, spacing=spacing, mmap=mmap).array


@dataclass(frozen=True)
class Dataset:
    """A dataset: ``samples`` in manifest order, ``root`` the manifest's folder."""

    root: Path
    samples: list[SampleInfo]
    preset: str | None = None
    seed: int | None = None
    format: str = FORMAT

    @property
    def cv(self) -> list[SampleInfo]:
        """The training / cross-validation scans."""
        return [s for s in self.samples if s.role == "cv"]

    @property
    def test(self) -> list[SampleInfo]:
        """The test scans (never trained on)."""
        return [s for s in self.samples if s.role == "test"]

    @property
    def hard(self) -> SampleInfo | None:
        """The first test scan (the simulated dataset's hard cube), or None."""
        return next(iter(self.test), None)

    @property
    def labelled(self) -> bool:
        """Every scan has labels."""
        return all(s.labels is not None for s in self.samples)

    def __getitem__(self, name: str) -> SampleInfo:
        for s in self.samples:
            if s.name == name:
                return s
        raise KeyError(name)


# ------------------------------------------------------------------------------------------ fingerprints
def _ends(path: Path, h) -> None:
    with open(path, "rb") as f:
        h.update(f.read(_ENDS))
        size = os.fstat(f.fileno()).st_size
        if size > 2 * _ENDS:
            f.seek(size - _ENDS)
            h.update(f.read(_ENDS))
        elif size > _ENDS:
            h.update(f.read())


def fingerprint(path) -> dict:
    """``{"bytes", "sha256"}`` of a file or folder (module docstring); ``OSError`` if it cannot be read."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        total = 0
        for p in files:
            size = p.stat().st_size
            total += size
            h.update(f"{p.relative_to(path).as_posix()}\0{size}\n".encode())
        for p in files[:1] + files[-1:] if len(files) > 1 else files:
            _ends(p, h)
        return {"bytes": total, "sha256": h.hexdigest()}
    _ends(path, h)
    return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}


# ------------------------------------------------------------------------------------------------ names
def scan_name(path) -> str:
    """A scan's name in a dataset: its file name without the format's suffix (``a.nii.gz`` → ``a``; a folder
    of slices: the folder's name)."""
    p = Path(os.path.normpath(str(path)))
    name = p.name
    low = name.lower()
    if low.endswith(".nii.gz"):
        return name[: -len(".nii.gz")]
    return p.stem if p.suffix else name


def entry(name: str, role: str, path: str, *, shape, dtype, spacing, spacing_source: str = "file",
          labels: str | None = None, obj: str | None = None, root: Path | None = None, **extra) -> dict:
    """One ``samples`` entry of a format-2 manifest; fingerprints of the listed files (relative paths
    resolved against ``root``)."""
    if role not in ROLES:
        raise ConfigError(f"role {role!r} is not one of {', '.join(ROLES)}")
    files = {"path": path, "labels": labels, "object": obj}
    prints = {}
    for key, p in files.items():
        if p is not None:
            fp = Path(p) if Path(p).is_absolute() or root is None else root / p
            prints[key] = fingerprint(fp)
    return {"name": name, "role": role, "path": str(path), "shape": [int(v) for v in shape], "dtype": str(dtype),
            "spacing": [float(v) for v in spacing], "spacing_source": spacing_source,
            "labels": None if labels is None else str(labels), "object": None if obj is None else str(obj),
            "fingerprints": prints, **extra}


# ---------------------------------------------------------------------------------------------- reading
def load_manifest(path_or_dir) -> Dataset:
    """Read a dataset's ``manifest.json`` (or the folder holding it), format 2 or 1, into a :class:`Dataset`.

    Raises ``ScanError`` (one line, naming the file) when the manifest is missing, not JSON, of another
    format, lacks a field, names two samples alike, lists a file that does not exist, a ``.npy`` file whose
    shape is not the sample's, or a file whose fingerprint differs from the one recorded (changed since).
    """
    p = Path(path_or_dir)
    mpath = p / "manifest.json" if p.is_dir() else p
    if not mpath.is_file():
        raise ScanError(f"{mpath}: no dataset manifest here (create one with `porelab dataset` or "
                        f"`porelab simulate`)")
    try:
        data = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ScanError(f"{mpath}: not a readable JSON manifest ({type(exc).__name__})") from None
    fmt = data.get("format") if isinstance(data, dict) else type(data).__name__
    if fmt not in FORMATS:
        raise ScanError(f"{mpath}: unknown manifest format {fmt!r} (expected {FORMAT!r} or {FORMAT_V1!r})")
    root = mpath.parent.resolve()
    raw = data.get("samples")
    if not isinstance(raw, list) or not raw:
        raise ScanError(f"{mpath}: manifest lists no samples")
    samples, seen = [], set()
    for k, s in enumerate(raw):
        try:
            info = _sample_v2(mpath, root, s) if fmt == FORMAT else _sample_v1(mpath, root, s)
        except ScanError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            what = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ScanError(f"{mpath}: sample #{k + 1} is invalid: {what}") from None
        if info.name in seen:
            raise ScanError(f"{mpath}: two samples are named {info.name!r}")
        seen.add(info.name)
        samples.append(info)
    return Dataset(root=root, samples=samples, preset=data.get("preset"), seed=data.get("seed"), format=fmt)


def _role(value) -> str:
    role = ROLE_ALIASES.get(str(value), str(value))
    if role not in ROLES:
        raise ValueError(f"role {value!r} is not one of {', '.join(ROLES)} (or 'hard')")
    return role


def _spacing(value) -> tuple[float, float, float]:
    spacing = tuple(float(v) for v in value)
    if len(spacing) != 3 or not all(math.isfinite(v) and v > 0 for v in spacing):
        raise ValueError(f"spacing {value} is not three positive numbers")
    return spacing


def _path(mpath: Path, root: Path, name: str, key: str, value, *, required: bool) -> Path | None:
    if value in (None, ""):
        if required:
            raise KeyError(key)
        return None
    fp = Path(value)
    fp = fp if fp.is_absolute() else root / fp
    if not os.path.exists(fp):
        raise ScanError(f"{mpath}: sample {name!r} lists {key} file {fp}, which does not exist")
    return fp


def _sample_v2(mpath: Path, root: Path, s: dict) -> SampleInfo:
    name = str(s["name"])
    role = _role(s["role"])
    paths = {key: _path(mpath, root, name, "scan" if key == "path" else key, s.get(key), required=key == "path")
             for key in _FILE_KEYS}
    dims = tuple(int(v) for v in s["shape"])
    _check_shapes(mpath, name, {("scan" if k == "path" else k): v for k, v in paths.items()}, dims)
    prints = s.get("fingerprints") or {}
    for key, fp in paths.items():
        if fp is not None and key in prints:
            _check_fingerprint(mpath, name, "scan" if key == "path" else key, fp, prints[key])
    pores = _path(mpath, root, name, "pores", s.get("pores"), required=False)
    return SampleInfo(name=name, role=role, scan=paths["path"], labels=paths["labels"], object=paths["object"],
                      spacing=_spacing(s["spacing"]), dims=dims, dtype=s.get("dtype"), part=str(s.get("part", "")),
                      material=str(s.get("material", "")), quality=dict(s.get("quality") or {}),
                      porosity_percent=float(s.get("porosity_percent", math.nan)),
                      pore_count=int(s.get("pore_count", 0)), pores=pores)


def _sample_v1(mpath: Path, root: Path, s: dict) -> SampleInfo:
    name = str(s["name"])
    role = _role(s["role"])
    paths = {key: _path(mpath, root, name, key, s[key], required=True) for key in ("scan", "truth", "object")}
    _check_shapes(mpath, name, paths, s.get("dims"))
    pores = _path(mpath, root, name, "pores", s.get("pores"), required=False)
    dims = tuple(int(v) for v in s["dims"]) if s.get("dims") else None
    return SampleInfo(name=name, role=role, scan=paths["scan"], labels=paths["truth"], object=paths["object"],
                      spacing=_spacing(s["spacing"]), dims=dims, part=str(s["shape"]), material=str(s["material"]),
                      quality=dict(s.get("quality", {})),
                      porosity_percent=float(s.get("porosity_percent", math.nan)),
                      pore_count=int(s.get("pore_count", 0)), pores=pores)


def _check_fingerprint(mpath: Path, name: str, key: str, path: Path, recorded) -> None:
    try:
        found = fingerprint(path)
    except OSError as exc:
        raise ScanError(f"{mpath}: sample {name!r} {key} file {path} cannot be read ({exc.strerror or exc})") \
            from None
    if not isinstance(recorded, dict) or found != {k: recorded.get(k) for k in found}:
        what = "size" if isinstance(recorded, dict) and recorded.get("bytes") != found["bytes"] else "content"
        raise ScanError(f"{mpath}: sample {name!r} {key} file {path} changed since the manifest was written "
                        f"({what} differs); write the dataset again")


def _npy_shape(path: Path, mpath: Path) -> tuple[int, ...]:
    """The shape in a ``.npy`` file's header (nothing else is read)."""
    try:
        shape = np.load(path, mmap_mode="r", allow_pickle=False).shape  # memory-mapped: only the header is read
    except (OSError, ValueError, EOFError) as exc:
        raise ScanError(f"{mpath}: {path} is not a readable .npy file ({' '.join(str(exc).split())[:120]})") from None
    return tuple(int(v) for v in shape)


def _check_shapes(mpath: Path, name: str, paths: dict, dims) -> None:
    """Every ``.npy`` file of a sample has the manifest's ``dims`` (when listed), else the scan's shape."""
    expected = tuple(int(v) for v in dims) if isinstance(dims, (list, tuple)) and dims else None
    for key, fp in paths.items():
        if fp is None or fp.suffix.lower() != ".npy" or not fp.is_file():
            continue
        found = _npy_shape(fp, mpath)
        if expected is None:
            expected = found
        elif found != expected:
            raise ScanError(f"{mpath}: sample {name!r} {key} file {fp} has shape {list(found)}, the manifest "
                            f"expects {list(expected)} (files of another dataset?)")


# ---------------------------------------------------------------------------------------------- writing
def make_dataset(out_dir, cv, test=(), labels=(), spacing=None, overwrite: bool = False) -> Path:
    """Write ``out_dir/manifest.json`` over the user's scans where they are; return its path.

    Parameters
    ----------
    out_dir : folder (created): new, empty, or an earlier porelab output (replaced only with ``overwrite``);
        it may not hold any of the scans.
    cv : at least 2 scans (any format porelab reads): the training / cross-validation scans.
    test : scans never trained on.
    labels : ``"SCAN=MASK"`` strings (or ``(SCAN, MASK)`` pairs): a binary pore mask of one scan, the scan
        given by its path as given to ``cv``/``test`` or by its name (:func:`scan_name`).
    spacing : (z, y, x) voxel size in mm for every scan, replacing the files' own; needed when a file records
        none (``.npy`` without a sidecar, a TIFF without resolution tags).

    Every scan is opened (header, memory-mapped where the format allows) for its shape, dtype and spacing;
    every mask is read in full (binary check). Any problem raises ``ScanError``/``ConfigError`` (one line
    naming the file) before anything is written; the manifest is written atomically.
    """
    from porelab.io import atomic_path, prepare_output, write_json

    cv, test = [str(p) for p in cv], [str(p) for p in test]
    if len(cv) < 2:
        raise ConfigError(f"cross-validation needs at least 2 --cv scans, got {len(cv)}"
                          + (f" ({cv[0]})" if cv else ""))
    scans = [(p, "cv") for p in cv] + [(p, "test") for p in test]
    names: dict[str, str] = {}
    for p, _ in scans:
        name = scan_name(p)
        if name in names:
            raise ConfigError(f"{p}: two scans are named {name!r} ({names[name]} and {p}); a scan's name is its "
                              "file name without the extension, rename one")
        names[name] = p
    pairs = _label_pairs(labels, scans)
    sp = None
    if spacing is not None:
        from porelab.io._base import as_spacing

        sp = as_spacing(spacing, "--spacing", error=ConfigError)
    out = prepare_output(out_dir, inputs=[p for p, _ in scans] + list(pairs.values()), overwrite=overwrite,
                         is_dir=True)
    entries = [_user_entry(p, role, pairs.get(p), sp) for p, role in scans]
    with atomic_path(out, is_dir=True, overwrite=overwrite, marker="dataset") as tmp:
        write_json(tmp / "manifest.json", {"format": FORMAT, "created_by": "porelab dataset", "samples": entries})
    return Path(out) / "manifest.json"


def _label_pairs(labels, scans) -> dict[str, str]:
    """``{scan path as given: mask path}`` from ``SCAN=MASK`` items (``ConfigError`` for an unknown scan)."""
    by_path = {p: p for p, _ in scans}
    by_path.update({os.path.abspath(p): p for p, _ in scans})
    by_name = {scan_name(p): p for p, _ in scans}

    def match(key: str) -> str | None:
        return by_path.get(key) or by_path.get(os.path.abspath(key)) or by_name.get(key)

    out: dict[str, str] = {}
    for item in labels:
        if isinstance(item, (tuple, list)):
            key, mask = str(item[0]), str(item[1])
            scan = match(key)
        else:
            item = str(item)
            cuts = [i for i, c in enumerate(item) if c == "="]
            # the scan or the mask path may hold '=': take the first cut whose left side names a scan
            key, mask, scan = (item[:cuts[0]], item[cuts[0] + 1:], None) if cuts else (item, "", None)
            for i in cuts:
                if match(item[:i]) is not None:
                    key, mask, scan = item[:i], item[i + 1:], match(item[:i])
                    break
        if not mask:
            raise ConfigError(f"--labels {item}: expected SCAN=MASK")
        if scan is None:
            raise ConfigError(f"--labels {item}: {key!r} is neither the path nor the name of a --cv/--test scan "
                              f"(names: {', '.join(sorted(by_name))})")
        if scan in out:
            raise ConfigError(f"--labels {item}: scan {scan_name(scan)!r} already has labels {out[scan]}")
        out[scan] = mask
    return out


def _user_entry(path: str, role: str, mask: str | None, spacing) -> dict:
    """The manifest entry of one user scan: opened for shape, dtype and spacing; its mask checked."""
    from porelab.io import read_array, read_volume
    from porelab.pores import check_binary_file

    vol = read_volume(path, spacing=spacing, mmap=True)
    if not vol.spacing_known:
        raise ScanError(f"{path}: the file records no voxel size; give --spacing Z Y X (mm)")
    shape = tuple(int(v) for v in vol.shape)
    labels = None
    if mask is not None:
        check_binary_file(mask, role="label mask")
        found = tuple(int(v) for v in read_array(mask)[0].shape)
        if found != shape:
            raise ScanError(f"{mask}: label mask shape {list(found)} differs from scan {path} shape {list(shape)}")
        labels = os.path.abspath(mask)
    return entry(scan_name(path), role, os.path.abspath(path), shape=shape, dtype=str(vol.dtype),
                 spacing=vol.spacing, spacing_source="option" if spacing is not None else "file", labels=labels)


__all__ = ["FORMAT", "FORMATS", "FORMAT_V1", "ROLES", "ROLE_ALIASES", "Dataset", "SampleInfo", "entry",
           "fingerprint", "load_manifest", "make_dataset", "scan_name"]
