"""Per-scan intensity normalisation: air → 0, material → 0.8, float32.

The paper's networks end in a sigmoid and were trained on scans implicitly in [0, 1] (no normalisation in the
loader of the paper's public code). Scans of different alloys, energies and
reconstructions have arbitrary grey values, so porelab maps two robust reference levels of every scan onto
fixed values before any net sees it: the air level onto 0 and the material level onto 0.8, which leaves
head-room below 1 for bright noise and artefacts.

The levels are medians of the voxels outside / inside the part. The part is the Otsu foreground (or an
``object_mask`` when one is given). Both are computed on a strided subsample of at most ``sample`` voxels,
so a 10⁹-voxel memory-mapped scan is never read whole. Medians are robust to the few per cent of pores
inside the part, to ring and streak artefacts and to the cupping of beam hardening.

>>> norm = Normalisation.fit(scan)                 # doctest: +SKIP
>>> x = norm.apply(scan)                           # float32, air ≈ 0, metal ≈ 0.8
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from porelab.errors import ScanError

TARGET_MATERIAL = 0.8


def subsample(array: np.ndarray, n: int) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Strided view-based subsample of a 3-D array with at most about ``n`` voxels; returns (sample, steps)."""
    size = int(np.prod(array.shape))
    step = max(1, math.ceil((size / max(1, n)) ** (1.0 / 3.0)))
    steps = tuple(step if s > step else 1 for s in array.shape)
    # when an axis is too short to stride, stride the others harder so the sample stays within budget
    while int(np.prod([math.ceil(s / t) for s, t in zip(array.shape, steps)])) > 2 * n:
        steps = tuple(t + 1 if s > t + 1 else t for s, t in zip(array.shape, steps))
    sl = tuple(slice(None, None, t) for t in steps)
    return np.asarray(array[sl]), steps


def count_nonfinite(scan: np.ndarray, *, chunk: int = 16) -> int:
    """Number of NaN/±inf voxels of ``scan`` (0 for integer and boolean dtypes), ``chunk`` slices at a time."""
    if not np.issubdtype(np.asarray(scan).dtype, np.floating):
        return 0
    return sum(int(np.count_nonzero(~np.isfinite(np.asarray(scan[z:z + chunk]))))
               for z in range(0, len(scan), chunk))


def fill_nonfinite(scan: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, int]:
    """``(filled, missing, n)``: ``scan`` with its NaN/±inf voxels replaced, where they were, and how many.

    A scan without non-finite voxels is returned as it is (no copy; ``missing`` is None, ``n`` 0). Otherwise
    ``filled`` is a float32 copy (Z, Y, X) in which every non-finite voxel takes the value of the nearest
    finite voxel of its own z-slice (Euclidean distance, ``scipy.ndimage.distance_transform_edt``), and a
    slice without any finite voxel is copied from the nearest slice that has some; ``missing`` is the bool
    mask of the replaced voxels.

    Why the nearest finite value rather than one constant (the median of the finite voxels, or the air
    level): a missing voxel then looks like its surroundings — metal inside the part, air outside — so the
    net's input stays in the range and the local texture it was trained on, and nothing new appears that a
    net or Algorithm 1 would react to. A constant would paint a dark, pore-like blob into the metal (or a
    bright speck into the air), which the nets score as a pore around the missing voxels, and which moves
    the Otsu threshold and the flood-filled object mask (the skin suppression and the porosity reference).
    The scores at the missing voxels themselves carry no information and are set to NaN by the caller
    (``porelab.model.PoreModel.predict``).

    Memory: the float32 copy and the bool mask (5 bytes per voxel) are only made when something is missing.

    Raises
    ------
    ScanError
        When every voxel is non-finite (nothing to score).
    """
    from scipy.ndimage import distance_transform_edt

    if np.ndim(scan) != 3:
        raise ScanError(f"expected a 3-D scan (z, y, x), got shape {np.shape(scan)}")
    n = count_nonfinite(scan)
    if n == 0:
        return scan, None, 0
    size = int(np.prod(np.shape(scan)))
    if n == size:
        raise ScanError(f"every voxel of the scan ({size:,}) is NaN or infinite: nothing to score")
    filled = np.empty(np.shape(scan), dtype=np.float32)
    missing = np.zeros(np.shape(scan), dtype=bool)
    empty = []
    for z in range(len(scan)):
        plane = np.asarray(scan[z], dtype=np.float32)
        bad = ~np.isfinite(plane)
        missing[z] = bad
        if not bad.any():
            filled[z] = plane
        elif bad.all():
            empty.append(z)
        else:
            idx = distance_transform_edt(bad, return_distances=False, return_indices=True)
            filled[z] = plane[idx[0], idx[1]]
    if empty:
        full = np.setdiff1d(np.arange(len(scan)), empty)
        for z in empty:
            filled[z] = filled[full[np.argmin(np.abs(full - z))]]
    return filled, missing, n


@dataclass
class Normalisation:
    """Linear map of a scan's grey values: ``(v − air) / (material − air) · 0.8``, clipped to ``clip``.

    Parameters
    ----------
    air, material : float
        Reference levels (scan units) that map onto 0 and ``target`` (0.8).
    target : float
        Value of the material after normalisation.
    clip : (float, float)
        Range of the normalised values; (0, 1) matches the sigmoid outputs of the paper's networks.
    per_scan : bool
        When True (default) a saved model re-fits the levels on every new scan it scores (``refit``): scans
        of other alloys or energies differ in their raw grey values. When False the stored levels are used.
    sample : int
        Voxel budget of the subsample used by ``fit``.
    """

    air: float = 0.0
    material: float = 1.0
    target: float = TARGET_MATERIAL
    clip: tuple[float, float] = (0.0, 1.0)
    per_scan: bool = True
    sample: int = 2_000_000

    @classmethod
    def fit(cls, scan: np.ndarray, object_mask: np.ndarray | None = None, *, sample: int = 2_000_000,
            **kwargs) -> Normalisation:
        """Robust air and material levels of ``scan`` (medians outside / inside the Otsu object).

        Parameters
        ----------
        scan : array (Z, Y, X)
            Any real dtype; may be a memmap (only a strided subsample of ``sample`` voxels is read).
        object_mask : array (Z, Y, X) of bool, optional
            The part; if None, the Otsu foreground of the subsample (Otsu 1979, as in Iuso et al. 2024,
            Algorithm 1, step 1).
        """
        from skimage.filters import threshold_otsu

        if np.ndim(scan) != 3:
            raise ScanError(f"normalisation needs a 3-D scan, got shape {np.shape(scan)}")
        sub, steps = subsample(scan, sample)
        sub = sub.astype(np.float32, copy=False)
        finite = np.isfinite(sub)
        if object_mask is not None:
            if np.shape(object_mask) != np.shape(scan):
                raise ScanError(f"object mask shape {np.shape(object_mask)} differs from scan {np.shape(scan)}")
            inside = np.asarray(object_mask[tuple(slice(None, None, t) for t in steps)]).astype(bool)
        else:
            vals = sub[finite]
            if vals.size == 0 or float(vals.min()) == float(vals.max()):
                raise ScanError("cannot normalise a constant or non-finite scan")
            inside = sub > threshold_otsu(vals)
        inside &= finite
        outside = ~inside & finite
        if not inside.any() or not outside.any():
            raise ScanError("cannot normalise: the scan has no separable air and material (Otsu split is empty)")
        air = float(np.median(sub[outside]))
        material = float(np.median(sub[inside]))
        if not material > air:
            raise ScanError(f"cannot normalise: material level {material:g} is not above air level {air:g}")
        return cls(air=air, material=material, sample=sample, **kwargs)

    def refit(self, scan: np.ndarray, object_mask: np.ndarray | None = None) -> Normalisation:
        """The normalisation to use for ``scan``: re-fitted if ``per_scan``, else ``self``."""
        if not self.per_scan:
            return self
        return Normalisation.fit(scan, object_mask, sample=self.sample, target=self.target,
                                 clip=tuple(self.clip), per_scan=True)

    @property
    def scale(self) -> float:
        return self.target / (self.material - self.air)

    def apply(self, array: np.ndarray, *, out: np.ndarray | None = None, chunk: int = 16) -> np.ndarray:
        """Normalised float32 copy of ``array`` (or written into ``out``), processed ``chunk`` slices at a time.

        Working slab by slab keeps the temporaries small for memory-mapped inputs.
        """
        array = np.asarray(array) if not isinstance(array, np.memmap) else array
        if out is None:
            out = np.empty(np.shape(array), dtype=np.float32)
        if np.ndim(array) < 1 or len(array) == 0:
            return out
        lo, hi = self.clip
        for z in range(0, len(array), chunk):
            block = np.asarray(array[z:z + chunk], dtype=np.float32)
            block = (block - np.float32(self.air)) * np.float32(self.scale)
            np.clip(block, lo, hi, out=block)
            out[z:z + chunk] = block
        return out

    def apply_torch(self, tensor):
        """The same map on a torch tensor (used inside patch-wise inference, no full-volume copy)."""
        lo, hi = self.clip
        return ((tensor.float() - self.air) * self.scale).clamp_(lo, hi)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["clip"] = list(self.clip)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Normalisation:
        d = dict(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown normalisation keys: {sorted(unknown)}")
        if "clip" in d:
            d["clip"] = tuple(float(v) for v in d["clip"])
        return cls(**d)


__all__ = ["TARGET_MATERIAL", "Normalisation", "count_nonfinite", "fill_nonfinite", "subsample"]
