"""Per-scan intensity normalisation: air → 0, material → 0.8, float32.

The paper's networks end in a sigmoid and were trained on scans implicitly in [0, 1] (no normalisation in the
loader of the public code; see ``reference/paper-code-facts.md`` §9). Scans of different alloys, energies and
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


__all__ = ["TARGET_MATERIAL", "Normalisation", "subsample"]
