"""Heuristic pore labels (Iuso et al. 2024, Algorithm 1) and pseudo-label clean-up, for scans of 10^9 voxels.

Algorithm 1 of the paper, step by step (the line numbers are the paper's):

6. ``t1`` = Otsu threshold of the whole scan; low voxels are ``scan <= t1`` (air, pores, dark artefacts).
7. Background = the low voxels 6-connected to a corner of the scan (flood fill). The corner is the first
   of the eight corners, in the order (0,0,0), (0,0,X-1), (0,Y-1,0), (0,Y-1,X-1), (Z-1,0,0), …, whose
   voxel is low; ``corners="all"`` unites the fills from every low corner instead (for parts that cut
   the air into several pieces).
8. Watertight object = NOT background: internal voids are not connected to the corner, so they stay
   inside the object whatever their grey value.
9. ``t2`` = Otsu threshold of the scan values inside the object; pore candidates are object voxels with
   ``scan <= t2``.
10. Candidates are grouped into 6-connected components.
12-16. A component whose bounding box is shorter than ``min_extent`` (2 in the paper) along ANY axis is
   dropped: one-voxel-thick specks of noise.
17. The kept components form the pore mask.

How it stays within a few bytes per voxel on 10^9-voxel scans (measured by ``benchmarks/label.py``):

* Otsu works on a 256-bin histogram accumulated slab by slab (integers: one bin per grey value, as
  scikit-image does), never on a sorted or float64 copy of the scan; the threshold is
  ``skimage.filters.threshold_otsu(hist=...)``, so it equals scikit-image's on the same data.
* Masks are bool (1 B/voxel): the low/candidate mask and the object mask are the only full-size arrays.
* Connected components are found slab by slab with ``scipy.ndimage.label`` (6-connectivity) on slabs of
  4 M voxels, and the labels of touching faces between slabs are merged with a sparse graph
  (``scipy.sparse.csgraph.connected_components``); bounding boxes come from ``ndimage.find_objects``.
  A whole-volume int32 label array would cost 4 B/voxel; the slab labels cost 16 MB whatever the size.
  The price is labelling every slab twice (the second pass writes the kept components).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from porelab.errors import ScanError
from porelab.io import iter_slabs

__all__ = ["Algorithm1Result", "heuristic_labels", "object_mask", "otsu_threshold", "run_algorithm1",
           "suppress_small"]

SIX_CONNECTED = ndimage.generate_binary_structure(3, 1)
_SLAB_VOXELS = 1 << 22  # 4 M voxels per slab: 16 MB of int32 labels
_CANDIDATE_WARN = 0.2  # a second threshold that flags > 20 % of the object as pore has split the metal peak


@dataclass
class Algorithm1Result:
    """Everything Algorithm 1 produced: the pore mask, the watertight object and the numbers behind them."""

    pores: np.ndarray
    object: np.ndarray
    low_threshold: float
    pore_threshold: float
    corner: tuple[int, int, int] | None
    candidate_voxels: int
    components: int
    pores_kept: int
    min_extent: int
    surface_margin: int = 0

    def summary(self) -> dict:
        obj = int(np.count_nonzero(self.object))
        pore_vox = int(np.count_nonzero(self.pores))
        return {"low_threshold": self.low_threshold, "pore_threshold": self.pore_threshold,
                "corner": self.corner, "candidate_voxels": self.candidate_voxels,
                "components": self.components, "pores": self.pores_kept, "pore_voxels": pore_vox,
                "object_voxels": obj, "porosity_percent": 100.0 * pore_vox / obj if obj else 0.0,
                "min_extent": self.min_extent, "surface_margin": self.surface_margin, "connectivity": 6}


# ----------------------------------------------------------------------------------------------------------
# Otsu on a slab-accumulated histogram
# ----------------------------------------------------------------------------------------------------------

def otsu_threshold(scan: np.ndarray, *, mask: np.ndarray | None = None, nbins: int = 256) -> float:
    """Otsu's threshold of ``scan`` (optionally only where ``mask``), from a histogram built slab by slab.

    Bins as scikit-image's ``threshold_otsu``: integer scans get one bin per grey value (when the range
    is below 2^20), float scans ``nbins`` equal bins over [min, max]; the threshold is then
    ``skimage.filters.threshold_otsu(hist=(counts, centres))``. Voxels are low when ``scan <= t``.
    NaN and infinite voxels are ignored.

    Memory: one slab (4 M voxels) at a time, never a sorted or float64 copy of the scan.
    """
    slabs = list(iter_slabs(scan.shape, _SLAB_VOXELS))
    integer = otsu_is_integer(scan.dtype)

    def blocks():
        for sl in slabs:
            yield otsu_values(scan[sl], None if mask is None else mask[sl], integer)

    lo, hi = np.inf, -np.inf
    for b in blocks():
        if b.size:
            lo, hi = min(lo, float(b.min())), max(hi, float(b.max()))
    if not np.isfinite(lo):
        raise ScanError("Otsu threshold: no finite voxel to threshold (empty mask or all NaN)")
    if lo == hi:
        return lo
    counts = None
    for b in blocks():
        c = otsu_counts(b, lo, hi, integer, nbins)
        counts = c if counts is None else counts + c
    return otsu_from_counts(counts, lo, hi, integer, nbins)


# The pieces of :func:`otsu_threshold`, shared with the chunked (Dask) path in ``porelab.distributed``: the
# same values, the same bins and the same counts give the same threshold however the scan is cut.

def otsu_is_integer(dtype) -> bool:
    """True when Otsu bins one grey value per bin (integer and boolean scans)."""
    return bool(np.issubdtype(dtype, np.integer) or dtype == bool)


def otsu_values(block, mask_block, integer: bool) -> np.ndarray:
    """The voxels of ``block`` that take part in Otsu: inside ``mask_block`` (if given) and finite."""
    b = np.asarray(block)
    if b.dtype == bool:
        b = b.view(np.uint8)
    if mask_block is not None:
        b = b[np.asarray(mask_block, dtype=bool)]
    if not integer:
        fin = np.isfinite(b)
        if not fin.all():
            b = b[fin]
    return b


def _otsu_integer_bins(lo: float, hi: float, integer: bool) -> bool:
    return integer and hi - lo < 2**20


def otsu_counts(values: np.ndarray, lo: float, hi: float, integer: bool, nbins: int = 256) -> np.ndarray:
    """Histogram counts (int64) of ``values`` (from :func:`otsu_values`) over the scan's range [lo, hi]."""
    if _otsu_integer_bins(lo, hi, integer):
        counts = np.zeros(int(hi - lo) + 1, dtype=np.int64)
        if values.size:
            counts += np.bincount((values.astype(np.int64, copy=False) - int(lo)).ravel(), minlength=counts.size)
        return counts
    if not values.size:
        return np.zeros(nbins, dtype=np.int64)
    return np.histogram(values, bins=nbins, range=(lo, hi))[0].astype(np.int64)


def otsu_from_counts(counts: np.ndarray, lo: float, hi: float, integer: bool, nbins: int = 256) -> float:
    """``skimage.filters.threshold_otsu`` on the merged counts, with the bin centres scikit-image uses."""
    from skimage.filters import threshold_otsu

    if lo == hi:
        return float(lo)
    if _otsu_integer_bins(lo, hi, integer):
        centres = np.arange(int(lo), int(hi) + 1, dtype=np.float64)
    else:
        edges = np.histogram_bin_edges(np.array([lo, hi]), bins=nbins, range=(lo, hi))
        centres = (edges[:-1] + edges[1:]) / 2
    return float(threshold_otsu(hist=(counts, centres)))


# ----------------------------------------------------------------------------------------------------------
# slab-wise 6-connected components
# ----------------------------------------------------------------------------------------------------------

@dataclass
class _Components:
    slabs: list[slice]
    offsets: np.ndarray  # first provisional label of each slab minus one
    comp: np.ndarray  # provisional label -> component id (0 = background)
    n: int  # number of components
    boxes: np.ndarray  # (n + 1, 6) z0, y0, x0, z1, y1, x1 (stop exclusive); row 0 unused
    voxels: np.ndarray  # (n + 1,) voxel count per component
    corners: dict  # corner (z, y, x) -> component id (0 when the corner voxel is not in the mask)
    crops: list  # per slab (y0, y1, x0, x1) of the labelled region
    cached: list  # per slab: labels stored in the output buffer by the first pass


class _SlabLabeller:
    """``ndimage.label`` (6-connectivity) of one z-slab, cropped to the slab's (y, x) bounding box of True
    voxels and written into one reused int32 buffer. The crop makes sparse masks (pore candidates in a
    part that fills a fraction of the field) several times cheaper; reusing the buffer saves the
    allocation and page faults of a fresh 16 MB label array per slab (docs/experiments.md, "Algorithm 1")."""

    def __init__(self, shape):
        first = next(iter_slabs(shape, _SLAB_VOXELS))
        self.buf = np.empty((first.stop - first.start) * shape[1] * shape[2], dtype=np.int32)

    def __call__(self, mask, sl):
        blk = np.asarray(mask[sl])
        if blk.dtype != bool:
            blk = blk != 0
        proj = blk.any(axis=0)
        rows, cols = np.flatnonzero(proj.any(axis=1)), np.flatnonzero(proj.any(axis=0))
        if rows.size == 0:
            return None, 0, (0, 0, 0, 0)
        crop = (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
        sub = blk[:, crop[0]:crop[1], crop[2]:crop[3]]
        lab = self.buf[: sub.size].reshape(sub.shape)
        n = ndimage.label(sub, structure=SIX_CONNECTED, output=lab)
        return lab, int(n), crop


def merge_provisional(edges_a: list, edges_b: list, total: int) -> tuple[np.ndarray, int]:
    """Merge provisional labels 0..``total`` joined by the pairs ``(edges_a[k][m], edges_b[k][m])``.

    Returns ``(comp, n)``: ``comp[provisional]`` is the final label, background (provisional 0) stays 0 and
    components are numbered 1..n in order of their first provisional label (as ``ndimage.label`` would
    number them in one piece). Used by slab-wise labelling here and chunk-wise labelling on Dask.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components


    if not edges_a:
        return np.arange(total + 1), total
    a, b = np.concatenate(edges_a), np.concatenate(edges_b)
    graph = coo_matrix((np.ones(a.size, dtype=np.int8), (a, b)), shape=(total + 1, total + 1))
    _, comp = connected_components(graph, directed=False)
    _, first_idx, inverse = np.unique(comp, return_index=True, return_inverse=True)
    rank = np.empty_like(first_idx)
    rank[np.argsort(first_idx)] = np.arange(first_idx.size)
    comp = rank[inverse]
    return comp, int(comp.max())


def _components(mask: np.ndarray, *, stats: bool = True, store: np.ndarray | None = None,
                progress: bool = False, desc: str = "components") -> _Components:
    """6-connected components of a bool volume, labelled slab by slab and merged across slab faces.

    ``stats`` computes bounding boxes and voxel counts (skipped for the flood fill, which needs neither).
    ``store`` (a uint8 array of the mask's shape, e.g. the future output buffer) caches the labels of
    slabs with fewer than 256 components so that :func:`_paint` need not label them again.
    """

    Z, Y, X = mask.shape
    slabs = list(iter_slabs(mask.shape, _SLAB_VOXELS))
    corner_points = [(z, y, x) for z in (0, Z - 1) for y in (0, Y - 1) for x in (0, X - 1)]
    offsets, boxes, counts, edges_a, edges_b, crops, cached = [], [], [], [], [], [], []
    corner_prov = {}
    total = 0
    prev_last = np.zeros((Y, X), dtype=np.int64)
    label = _SlabLabeller(mask.shape)
    for sl in _progress(slabs, progress, desc):
        lab, n, crop = label(mask, sl)
        crops.append(crop)
        offsets.append(total)
        cached.append(store is not None and 0 < n < 256)
        if n == 0:
            prev_last[:] = 0
            cached[-1] = False
            continue
        y0, y1, x0, x1 = crop
        if stats:
            objs = ndimage.find_objects(lab)
            b = np.fromiter((v for o in objs for s in o for v in (s.start, s.stop)), dtype=np.int64,
                            count=6 * n).reshape(n, 3, 2)
            b = np.concatenate([b[:, :, 0], b[:, :, 1]], axis=1)
            b += np.array([sl.start, y0, x0, sl.start, y0, x0])
            boxes.append(b)
            counts.append(np.bincount(lab.ravel(), minlength=n + 1)[1:])
        first = np.zeros((Y, X), dtype=np.int64)
        first[y0:y1, x0:x1] = lab[0]
        both = (prev_last > 0) & (first > 0)
        if both.any():  # touching labels across the slab face, deduplicated (a face of air has 10^5 pairs)
            key = np.unique(prev_last[both] * (total + n + 1) + (first[both] + total))
            edges_a.append(key // (total + n + 1))
            edges_b.append(key % (total + n + 1))
        prev_last[:] = 0
        last = lab[-1].astype(np.int64)
        prev_last[y0:y1, x0:x1] = np.where(last > 0, last + total, 0)
        for c in corner_points:
            if sl.start <= c[0] < sl.stop and y0 <= c[1] < y1 and x0 <= c[2] < x1:
                v = int(lab[c[0] - sl.start, c[1] - y0, c[2] - x0])
                corner_prov[c] = v + total if v else 0
        if cached[-1]:
            store[sl][:, y0:y1, x0:x1] = lab
        total += n
    comp, n = merge_provisional(edges_a, edges_b, total)
    out_boxes = np.zeros((n + 1, 6), dtype=np.int64)
    voxels = np.zeros(n + 1, dtype=np.int64)
    if total and stats:
        all_boxes = np.concatenate(boxes)
        ids = comp[1:]
        out_boxes[:, :3] = np.iinfo(np.int64).max
        np.minimum.at(out_boxes[:, :3], ids, all_boxes[:, :3])
        np.maximum.at(out_boxes[:, 3:], ids, all_boxes[:, 3:])
        out_boxes[0] = 0
        voxels = np.bincount(ids, weights=np.concatenate(counts), minlength=n + 1).astype(np.int64)
    corners = {c: int(comp[corner_prov[c]]) if corner_prov.get(c) else 0 for c in corner_points}
    return _Components(slabs, np.asarray(offsets, dtype=np.int64), comp, n, out_boxes, voxels, corners,
                       crops, cached)


def _paint(mask: np.ndarray, comps: _Components, keep: np.ndarray, out: np.ndarray, *, invert: bool = False,
           progress: bool = False, desc: str = "write") -> np.ndarray:
    """Second pass: write ``keep[component]`` (or its negation) of every voxel of ``mask`` to ``out``.

    Slabs cached by :func:`_components` (in ``out`` itself, as uint8 labels) are read back; the others
    are labelled again (same crop, so the same provisional labels). ``out`` may be ``mask`` itself:
    each slab is labelled before it is overwritten.
    """
    keep = np.asarray(keep, dtype=bool)
    label = _SlabLabeller(mask.shape)
    items = zip(comps.slabs, comps.offsets, comps.crops, comps.cached, strict=True)
    for sl, off, crop, cached in _progress(list(items), progress, desc):
        y0, y1, x0, x1 = crop
        if cached:
            lab = np.asarray(out[sl]).view(np.uint8)[:, y0:y1, x0:x1]
            n = int(lab.max())
        else:
            lab, n, crop2 = label(mask, sl)
            assert crop2 == crop or n == 0
        lut = np.zeros(n + 1, dtype=bool)
        lut[1:] = keep[comps.comp[off + 1: off + n + 1]]
        if invert:
            lut = ~lut
        block = lut[lab] if n else None
        out[sl] = lut[0]
        if block is not None:
            out[sl][:, y0:y1, x0:x1] = block
    return out


def _progress(items, progress: bool, desc: str):
    from porelab.runtime import progress as bar

    return bar(items, enabled=progress, desc=desc, unit="slab")


def _keep_by_size(comps: _Components, *, min_voxels: int, min_extent: int) -> np.ndarray:
    extent = comps.boxes[:, 3:] - comps.boxes[:, :3]
    keep = (extent >= min_extent).all(axis=1) & (comps.voxels >= min_voxels)
    keep[0] = False
    return keep


# ----------------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------------

def _check_scan(scan) -> np.ndarray:
    if not hasattr(scan, "ndim") or scan.ndim != 3:
        raise ScanError(f"Algorithm 1 needs a 3-D (z, y, x) scan, got shape {getattr(scan, 'shape', None)}")
    return scan


def _object_from_low(low: np.ndarray, *, corners: str, progress: bool):
    """Steps 7-8: flood fill of the low voxels from a corner, inverted; returns (object, corner)."""
    obj = np.empty(low.shape, dtype=bool)
    comps = _components(low, stats=False, store=obj.view(np.uint8), progress=progress, desc="flood fill")
    order = sorted(comps.corners)  # (0,0,0), (0,0,X-1), (0,Y-1,0), ...
    low_corners = [c for c in order if comps.corners[c]]
    keep = np.zeros(comps.n + 1, dtype=bool)
    if not low_corners:
        warnings.warn("no corner of the scan is below the Otsu threshold: no background found, the whole "
                      "field is treated as the object", stacklevel=3)
        obj[...] = True
        return obj, None
    chosen = low_corners if corners == "all" else low_corners[:1]
    for c in chosen:
        keep[comps.corners[c]] = True
    _paint(low, comps, keep, obj, invert=True, progress=progress, desc="object")
    return obj, chosen[0]


def _low_mask(scan: np.ndarray, t: float, out: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
    for sl in iter_slabs(scan.shape, _SLAB_VOXELS):
        np.less_equal(np.asarray(scan[sl]), t, out=out[sl])
        if where is not None:
            out[sl] &= where[sl]
    return out


def _candidates(scan: np.ndarray, t: float, obj: np.ndarray, out: np.ndarray, margin: int) -> np.ndarray:
    """Step 9's candidates ``obj & (scan <= t)``, optionally without the voxels within ``margin`` (city-block)
    voxels of the outside: the object is eroded slab by slab (a ``margin``-slice halo keeps it exact), and
    the field's edges do not count as outside."""
    if margin <= 0:
        return _low_mask(scan, t, out, where=obj)
    z = scan.shape[0]
    for sl in iter_slabs(scan.shape, _SLAB_VOXELS):
        lo, hi = max(sl.start - margin, 0), min(sl.stop + margin, z)
        er = ndimage.binary_erosion(np.asarray(obj[lo:hi]), structure=SIX_CONNECTED, iterations=margin,
                                    border_value=1)
        np.less_equal(np.asarray(scan[sl]), t, out=out[sl])
        out[sl] &= er[sl.start - lo: sl.stop - lo]
    return out


def object_mask(scan: np.ndarray, *, corners: str = "one", progress: bool = False) -> np.ndarray:
    """Watertight object mask (Iuso et al. 2024, Algorithm 1, steps 6-8): NOT (low voxels flood-filled
    from a corner), with low = ``scan <= Otsu(scan)`` and 6-connectivity. See the module docstring."""
    _check_scan(scan)
    if corners not in ("one", "all"):
        raise ValueError(f"corners must be 'one' or 'all', got {corners!r}")
    t1 = otsu_threshold(scan)
    low = _low_mask(scan, t1, np.empty(scan.shape, dtype=bool))
    obj, _ = _object_from_low(low, corners=corners, progress=progress)
    return obj


def run_algorithm1(scan: np.ndarray, *, min_extent: int = 2, corners: str = "one",
                   pore_threshold: float | None = None, surface_margin: int = 0,
                   progress: bool = False) -> Algorithm1Result:
    """Algorithm 1 of Iuso et al. 2024 (pore extraction from X-CT), with every intermediate result.

    Parameters
    ----------
    scan : (z, y, x) array
        The CT scan (any real dtype; may be a read-only memmap). Higher = denser material.
    min_extent : int
        A pore is dropped when its bounding box is shorter than this along any axis (paper: 2).
    corners : "one" or "all"
        Flood fill from the first low corner (the paper) or from every low corner.
    pore_threshold : float, optional
        Replace step 9's Otsu threshold inside the object by this grey value (not the paper's method;
        for scans with so few pores that Otsu splits the material peak, see the warning below).
    surface_margin : int
        0 (the paper): every object voxel may be a candidate. k > 0 (not in the paper): candidates within k
        voxels (6-connected steps) of the outside are ignored; the edges of the field do not count as
        outside. The object's partial-volume skin lies between the two thresholds and otherwise becomes one
        large shell-shaped "pore" that multiplies the porosity several times over; k = 2 removes it on
        simulated scans (docs/experiments.md, "Algorithm 1"). ``t2`` is still computed over the whole
        object, as the paper says.
    progress : bool
        tqdm bars on stderr.

    Returns
    -------
    Algorithm1Result
        ``pores`` (bool), ``object`` (bool), thresholds, the corner used and counts.

    Warns
    -----
    UserWarning
        When more than 20 % of the object falls below the second threshold: Otsu needs two populations,
        and with very few pores it cuts through the material's own noise, so the labels are unreliable.

    References
    ----------
    Iuso et al. 2024, Section 3.1 and Algorithm 1 ("Pore extraction from X-CT images").
    """
    _check_scan(scan)
    if int(min_extent) < 1:
        raise ValueError(f"min_extent must be >= 1, got {min_extent}")
    if int(surface_margin) < 0:
        raise ValueError(f"surface_margin must be >= 0, got {surface_margin}")
    if corners not in ("one", "all"):
        raise ValueError(f"corners must be 'one' or 'all', got {corners!r}")
    t1 = otsu_threshold(scan)                                                    # step 6
    work = _low_mask(scan, t1, np.empty(scan.shape, dtype=bool))
    obj, corner = _object_from_low(work, corners=corners, progress=progress)     # steps 7-8
    t2 = otsu_threshold(scan, mask=obj) if pore_threshold is None else float(pore_threshold)  # step 9
    cand = _candidates(scan, t2, obj, work, int(surface_margin))                 # reuses the low buffer
    n_cand = int(sum(np.count_nonzero(cand[sl]) for sl in iter_slabs(cand.shape, _SLAB_VOXELS)))
    n_obj = int(sum(np.count_nonzero(obj[sl]) for sl in iter_slabs(obj.shape, _SLAB_VOXELS)))
    if n_obj and n_cand > _CANDIDATE_WARN * n_obj:
        warnings.warn(f"Algorithm 1: {100 * n_cand / n_obj:.0f} % of the object is below the second Otsu "
                      f"threshold {t2:g}; too few pores for Otsu to separate them from the material, labels "
                      "are unreliable (set pore_threshold to override)", stacklevel=2)
    comps = _components(cand, progress=progress, desc="pores")                   # step 10
    keep = _keep_by_size(comps, min_voxels=1, min_extent=int(min_extent))       # steps 12-16
    pores = _paint(cand, comps, keep, cand, progress=progress, desc="pore mask")  # step 17, in place
    return Algorithm1Result(pores=pores, object=obj, low_threshold=t1, pore_threshold=t2, corner=corner,
                            candidate_voxels=n_cand, components=comps.n, pores_kept=int(keep.sum()),
                            min_extent=int(min_extent), surface_margin=int(surface_margin))


def heuristic_labels(scan: np.ndarray, *, min_extent: int = 2, corners: str = "one",
                     surface_margin: int = 0, progress: bool = False) -> np.ndarray:
    """Pore mask (bool, z, y, x) of a CT scan by Algorithm 1 of Iuso et al. 2024.

    Otsu over the scan → low voxels; flood fill of the low voxels 6-connected to a corner → background;
    NOT background → watertight object; Otsu inside the object → pore candidates; 6-connected components;
    a component whose bounding box is < ``min_extent`` voxels along any axis is dropped.
    ``surface_margin`` > 0 (not the paper's) ignores candidates that close to the outside, see
    :func:`run_algorithm1`, which also returns the thresholds and the object mask. The module docstring
    gives the corner order and the memory layout (about 2 B/voxel besides the scan).

    Examples
    --------
    >>> mask = heuristic_labels(scan)                      # doctest: +SKIP
    """
    return run_algorithm1(scan, min_extent=min_extent, corners=corners, surface_margin=surface_margin,
                          progress=progress).pores


def suppress_small(mask: np.ndarray, *, min_voxels: int = 1, min_extent: int = 1,
                   progress: bool = False) -> np.ndarray:
    """Drop 6-connected components with fewer than ``min_voxels`` voxels or a bounding box shorter than
    ``min_extent`` along any axis (pseudo-label clean-up; with ``min_extent=2`` it is Algorithm 1's
    size rule). Returns a new bool mask; memory as :func:`heuristic_labels`."""
    if not hasattr(mask, "ndim") or mask.ndim != 3:
        raise ScanError(f"suppress_small needs a 3-D (z, y, x) mask, got shape {getattr(mask, 'shape', None)}")
    m = mask if mask.dtype == bool else (np.asarray(mask) != 0)
    comps = _components(m, progress=progress, desc="components")
    keep = _keep_by_size(comps, min_voxels=int(min_voxels), min_extent=int(min_extent))
    return _paint(m, comps, keep, np.empty(m.shape, dtype=bool), progress=progress)
