"""Voxel-wise and object-wise metrics on the pore class, and statistics across folds.

Voxel metrics (pore class only, never averaged with the background):

* **AP** — scikit-learn's step-wise average precision, ``AP = Σ_n (R_n − R_{n−1}) P_n`` over the thresholds
  in decreasing order, with no interpolation (``sklearn.metrics.average_precision_score``). This is *not*
  the trapezoid area under the PR curve that the paper's public code computes; the step-wise form does not reward linear interpolation between operating points.
* **ROC-AUC** — trapezoid area under (FPR, TPR), ties counted as one threshold (``roc_auc_score``).
* **Dice/F1** at a threshold (a voxel is predicted a pore when ``score ≥ threshold``) and the F1-optimal
  threshold over all thresholds of the PR curve.

Two ways to compute the curves, chosen by ``method="auto"``:

* ``"exact"`` (≤ ``EXACT_MAX_VOXELS`` = 2·10⁷ voxels): scikit-learn on the flattened voxels.
* ``"binned"`` (more voxels): two streaming passes slab by slab along z (works on memmaps): the score range,
  then per-bin counts of pore and background voxels in ``bins`` = 2¹⁶ equal-width bins; the curves follow
  from cumulative sums. Every bin is one threshold (its lower edge), so voxels whose scores share a bin
  count as ties. Memory is O(bins + one slab), never a 10⁹-element sort. ``tests/test_metrics.py`` checks
  |AP_binned − AP_exact| < 10⁻³ on 10⁶ voxels; ``benchmarks/metrics.py`` measures time and memory.

An optional ``mask`` (the object mask) restricts every voxel metric to the voxels inside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from porelab.errors import ScanError
from porelab.io import iter_slabs

__all__ = [
    "EXACT_MAX_VOXELS",
    "Curve",
    "average_precision",
    "best_f1_threshold",
    "compute_curve",
    "detection_rate",
    "dice",
    "evaluate_scores",
    "fold_summary",
    "plot_curves",
    "plot_pr_roc",
    "porosity_error",
    "pr_curve",
    "roc_auc",
    "roc_curve",
    "welch_test",
]

#: above this many voxels ``method="auto"`` switches from sklearn to the histogram-binned streaming mode
EXACT_MAX_VOXELS = 20_000_000
DEFAULT_BINS = 1 << 16
_SLAB_VOXELS = 1 << 23


# ------------------------------------------------------------------------------------------- the curve

@dataclass
class Curve:
    """Cumulative counts at every threshold, thresholds in *decreasing* order.

    ``tp[k]``/``fp[k]``: pore / background voxels with ``score ≥ thresholds[k]``. ``n_pos``/``n_neg``: totals.
    ``exact``: whether every distinct score is a threshold (sklearn) or thresholds are bin edges.
    """

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    n_pos: int
    n_neg: int
    exact: bool

    @property
    def n_voxels(self) -> int:
        return self.n_pos + self.n_neg

    def precision_recall(self):
        """Precision and recall at every threshold (decreasing thresholds → increasing recall)."""
        tp, fp = self.tp.astype(np.float64), self.fp.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(tp + fp > 0, tp / (tp + fp), 1.0)
            recall = tp / self.n_pos if self.n_pos else np.full_like(tp, np.nan)
        return precision, recall

    def average_precision(self) -> float:
        """``Σ (R_n − R_{n−1}) P_n`` (scikit-learn's definition; NaN without pore voxels)."""
        if self.n_pos == 0:
            return float("nan")
        precision, recall = self.precision_recall()
        r_prev = np.concatenate([[0.0], recall[:-1]])
        return float(np.sum((recall - r_prev) * precision))

    def roc(self):
        """FPR, TPR with the (0, 0) start point."""
        fpr = np.concatenate([[0.0], self.fp / self.n_neg]) if self.n_neg else None
        tpr = np.concatenate([[0.0], self.tp / self.n_pos]) if self.n_pos else None
        return fpr, tpr

    def roc_auc(self) -> float:
        """Trapezoid area under ROC (NaN unless both classes are present)."""
        if self.n_pos == 0 or self.n_neg == 0:
            return float("nan")
        fpr, tpr = self.roc()
        return float(np.trapezoid(tpr, fpr))

    def best_f1(self) -> tuple[float, float]:
        """(threshold, F1) maximising F1 = 2TP / (2TP + FP + FN); ties → the highest threshold."""
        if self.n_pos == 0 or self.thresholds.size == 0:
            return float("nan"), float("nan")
        f1 = 2.0 * self.tp / (self.tp + self.fp + self.n_pos)
        k = int(np.argmax(f1))
        return float(self.thresholds[k]), float(f1[k])


def compute_curve(score, truth, *, mask=None, method: str = "auto", bins: int = DEFAULT_BINS,
                  progress: bool = False) -> Curve:
    """The PR/ROC :class:`Curve` of ``score`` against boolean ``truth`` (inside ``mask`` if given).

    ``method``: ``"exact"`` (sklearn's ``_binary_clf_curve`` logic via ``precision_recall_curve``
    thresholds, all distinct scores), ``"binned"`` (streaming histogram, ``bins`` equal-width bins over
    the score range) or ``"auto"`` (exact up to ``EXACT_MAX_VOXELS`` voxels).
    """
    _check_shapes(score, truth, mask)
    if method not in ("auto", "exact", "binned"):
        raise ValueError(f"method must be 'auto', 'exact' or 'binned', got {method!r}")
    n = _count(mask, np.shape(score))
    if method == "exact" or (method == "auto" and n <= EXACT_MAX_VOXELS):
        return _exact_curve(score, truth, mask)
    return _binned_curve(score, truth, mask, bins, progress)


def _exact_curve(score, truth, mask) -> Curve:
    s, t = _flatten(score, truth, mask)
    _check_finite(s)
    n_pos = int(np.count_nonzero(t))
    n_neg = int(t.size - n_pos)
    if t.size == 0:
        return Curve(np.zeros(0), np.zeros(0), np.zeros(0), 0, 0, True)
    # the same cumulative counts as sklearn's precision_recall_curve / roc_curve (decreasing thresholds)
    order = np.argsort(s, kind="mergesort")[::-1]
    s_sorted = s[order]
    t_sorted = t[order]
    distinct = np.flatnonzero(np.diff(s_sorted))
    ends = np.concatenate([distinct, [s_sorted.size - 1]])
    tp = np.cumsum(t_sorted, dtype=np.int64)[ends]
    fp = (ends + 1) - tp
    return Curve(s_sorted[ends].astype(np.float64), tp, fp, n_pos, n_neg, True)


def _binned_curve(score, truth, mask, bins: int, progress: bool) -> Curve:
    lo, hi = math.inf, -math.inf
    slabs = list(iter_slabs(np.shape(score), _SLAB_VOXELS))
    for sl in _progress(slabs, progress, "score range"):
        s = np.asarray(score[sl])
        if mask is not None:
            s = s[np.asarray(mask[sl], dtype=bool)]
        if s.size:
            _check_finite(s)
            lo, hi = min(lo, float(s.min())), max(hi, float(s.max()))
    if lo == math.inf:
        return Curve(np.zeros(0), np.zeros(0), np.zeros(0), 0, 0, False)
    width = (hi - lo) / bins if hi > lo else 1.0
    pos = np.zeros(bins, dtype=np.int64)
    tot = np.zeros(bins, dtype=np.int64)
    for sl in _progress(slabs, progress, "histogram"):
        s = np.asarray(score[sl], dtype=np.float64)
        t = np.asarray(truth[sl], dtype=bool)
        if mask is not None:
            m = np.asarray(mask[sl], dtype=bool)
            s, t = s[m], t[m]
        else:
            s, t = s.ravel(), t.ravel()
        idx = ((s - lo) / width).astype(np.int64)
        np.clip(idx, 0, bins - 1, out=idx)
        tot += np.bincount(idx, minlength=bins)
        pos += np.bincount(idx[t], minlength=bins)
    keep = np.flatnonzero(tot)[::-1]                 # non-empty bins, highest first
    tp = np.cumsum(pos[keep])
    fp = np.cumsum(tot[keep] - pos[keep])
    thresholds = lo + keep * width
    return Curve(thresholds, tp, fp, int(pos.sum()), int(tot.sum() - pos.sum()), False)


# ------------------------------------------------------------------------------------- voxel metrics

def average_precision(score, truth, *, mask=None, method: str = "auto", bins: int = DEFAULT_BINS) -> float:
    """Voxel-wise AP of the pore class, ``Σ (R_n − R_{n−1}) P_n`` (scikit-learn's step-wise definition).

    NaN when there is no pore voxel. ``method`` as in :func:`compute_curve`; in exact mode the value is
    ``sklearn.metrics.average_precision_score``.
    """
    if _use_exact(score, mask, method):
        from sklearn.metrics import average_precision_score

        s, t = _flatten(score, truth, mask)
        _check_finite(s)
        if not t.any():
            return float("nan")
        return float(average_precision_score(t, s))
    return compute_curve(score, truth, mask=mask, method="binned", bins=bins).average_precision()


def roc_auc(score, truth, *, mask=None, method: str = "auto", bins: int = DEFAULT_BINS) -> float:
    """Voxel-wise ROC-AUC (``sklearn.metrics.roc_auc_score`` in exact mode); NaN unless both classes occur."""
    if _use_exact(score, mask, method):
        from sklearn.metrics import roc_auc_score

        s, t = _flatten(score, truth, mask)
        _check_finite(s)
        if t.all() or not t.any():
            return float("nan")
        return float(roc_auc_score(t, s))
    return compute_curve(score, truth, mask=mask, method="binned", bins=bins).roc_auc()


def pr_curve(score, truth, *, mask=None, method: str = "auto", bins: int = DEFAULT_BINS):
    """``(precision, recall, thresholds)`` in decreasing-threshold order (recall increasing)."""
    c = compute_curve(score, truth, mask=mask, method=method, bins=bins)
    p, r = c.precision_recall()
    return p, r, c.thresholds


def roc_curve(score, truth, *, mask=None, method: str = "auto", bins: int = DEFAULT_BINS):
    """``(fpr, tpr, thresholds)``; the first point is (0, 0) at threshold +inf."""
    c = compute_curve(score, truth, mask=mask, method=method, bins=bins)
    fpr, tpr = c.roc()
    return fpr, tpr, np.concatenate([[np.inf], c.thresholds])


def best_f1_threshold(score, truth, *, mask=None, method: str = "auto", bins: int = DEFAULT_BINS):
    """The F1-optimal threshold and its F1 (= Dice) over all thresholds of the PR curve."""
    return compute_curve(score, truth, mask=mask, method=method, bins=bins).best_f1()


def dice(score, truth, threshold: float = 0.5, *, mask=None) -> float:
    """Dice = F1 = 2TP / (2TP + FP + FN) of ``score ≥ threshold`` against ``truth`` (inside ``mask``).

    Streams slab by slab (memmaps welcome). Both empty → 1.0 (nothing to find, nothing found).
    """
    _check_shapes(score, truth, mask)
    tp = fp = fn = 0
    for sl in iter_slabs(np.shape(score), _SLAB_VOXELS):
        p = np.asarray(score[sl]) >= threshold
        t = np.asarray(truth[sl], dtype=bool)
        if mask is not None:
            m = np.asarray(mask[sl], dtype=bool)
            p, t = p & m, t & m
        tp += int(np.count_nonzero(p & t))
        fp += int(np.count_nonzero(p & ~t))
        fn += int(np.count_nonzero(~p & t))
    return 1.0 if tp + fp + fn == 0 else 2.0 * tp / (2.0 * tp + fp + fn)


def evaluate_scores(score, truth, *, mask=None, threshold: float | None = None, method: str = "auto",
                    bins: int = DEFAULT_BINS, progress: bool = False) -> dict:
    """All voxel metrics of a score volume against a truth mask, in one call.

    Parameters
    ----------
    score : array_like float (z, y, x)
        Higher = more likely pore (a probability or a post-processed anomaly score). May be a memmap.
    truth : array_like bool/uint8 (z, y, x)
        Pore voxels.
    mask : array_like bool, optional
        Object mask: only voxels inside count.
    threshold : float, optional
        Threshold for ``dice`` (score ≥ threshold → pore); ``None`` → the F1-optimal threshold.
    method, bins : see :func:`compute_curve`.

    Returns
    -------
    dict
        ``ap`` (step-wise, sklearn's definition), ``auc``, ``dice`` (at ``threshold``), ``threshold``,
        ``best_threshold``, ``best_dice`` (F1-optimal), ``pore_fraction`` (pore voxels / voxels counted),
        ``n_voxels`` (voxels counted), ``method`` ("exact" or "binned"). AP/AUC are NaN when a class is
        missing.
    """
    curve = compute_curve(score, truth, mask=mask, method=method, bins=bins, progress=progress)
    best_t, best_d = curve.best_f1()
    if curve.exact:
        # sklearn's own numbers (identical to the curve's up to float rounding; the tests check it)
        ap = average_precision(score, truth, mask=mask, method="exact")
        auc = roc_auc(score, truth, mask=mask, method="exact")
    else:
        ap, auc = curve.average_precision(), curve.roc_auc()
    if not curve.exact and not math.isnan(best_t):
        best_d = dice(score, truth, best_t, mask=mask)   # exact Dice at the bin edge (one streaming pass)
    if threshold is None:
        thr, d = best_t, best_d
    else:
        thr = float(threshold)
        d = dice(score, truth, thr, mask=mask)
    n = curve.n_voxels
    return {
        "ap": ap, "auc": auc, "dice": d, "threshold": thr, "best_threshold": best_t, "best_dice": best_d,
        "pore_fraction": curve.n_pos / n if n else float("nan"), "n_voxels": int(n),
        "method": "exact" if curve.exact else "binned",
    }


# ------------------------------------------------------------------------------------ object metrics

def detection_rate(score_mask, truth, spacing=(1.0, 1.0, 1.0), *, bins=None, min_fraction: float = 0.5,
                   connectivity: int = 1) -> dict:
    """Probability of detection (POD) of truth pores per equivalent-diameter bin.

    A truth pore (a connected component of ``truth``; ``connectivity`` 1 = 6-neighbours as in Algorithm 1,
    3 = 26) counts as **detected when at least ``min_fraction`` of its voxels are predicted** (default 50 %,
    which a large false-positive blob cannot satisfy by touching a pore's rim); ``min_fraction=0`` means
    "at least one voxel". Equivalent diameter ``d = (6 V / π)^{1/3}`` with ``V`` = voxel count × voxel
    volume (mm³ when ``spacing`` is in mm).

    Parameters
    ----------
    score_mask : array_like bool (z, y, x)
        Predicted pore voxels (a thresholded score).
    truth : array_like bool (z, y, x)
    spacing : 3 floats, voxel size (z, y, x).
    bins : sequence of float, optional
        Diameter bin edges (same unit as spacing). Default: 8 log-spaced bins from the smallest to the
        largest diameter.

    Returns
    -------
    dict with ``bin_edges``, ``n_pores``, ``n_detected``, ``pod`` (per bin; NaN for empty bins),
    ``overall`` (all pores), ``diameters``, ``detected`` (per pore), ``min_fraction``.
    """
    from scipy import ndimage

    _check_shapes(score_mask, truth, None)
    truth = np.asarray(truth, dtype=bool)
    pred = np.asarray(score_mask, dtype=bool)
    structure = ndimage.generate_binary_structure(3, connectivity)
    labels, n = ndimage.label(truth, structure=structure)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    hits = np.bincount(labels[pred & truth], minlength=n + 1)[1:]
    frac = hits / np.maximum(sizes, 1)
    detected = hits >= 1 if min_fraction <= 0 else frac >= min_fraction
    voxel_volume = float(np.prod(np.asarray(spacing, dtype=np.float64)))
    diam = np.cbrt(6.0 * sizes * voxel_volume / np.pi)
    if bins is None:
        if n:
            lo, hi = diam.min(), diam.max()
            bins = np.geomspace(lo, hi * (1 + 1e-9), 9) if hi > lo else np.array([lo * 0.999, lo * 1.001])
        else:
            bins = np.array([0.0, 1.0])
    bins = np.asarray(bins, dtype=np.float64)
    which = np.digitize(diam, bins) - 1
    n_pores = np.array([(which == k).sum() for k in range(bins.size - 1)])
    n_det = np.array([(detected & (which == k)).sum() for k in range(bins.size - 1)])
    with np.errstate(invalid="ignore", divide="ignore"):
        pod = np.where(n_pores > 0, n_det / np.maximum(n_pores, 1), np.nan)
    return {"bin_edges": bins, "n_pores": n_pores, "n_detected": n_det, "pod": pod,
            "overall": float(detected.mean()) if n else float("nan"), "diameters": diam,
            "detected": detected, "min_fraction": min_fraction}


def porosity_error(pred_mask, truth, *, mask=None) -> dict:
    """Porosity % (pore voxels / object voxels × 100) of a prediction and of the truth, and their difference.

    Returns ``predicted_percent``, ``true_percent``, ``error_points`` (predicted − true, percentage points),
    ``relative_error`` ((predicted − true) / true; NaN if the truth has no pores). Without ``mask`` every
    voxel counts as object.
    """
    _check_shapes(pred_mask, truth, mask)
    n_pred = n_true = n_obj = 0
    for sl in iter_slabs(np.shape(truth), _SLAB_VOXELS):
        p = np.asarray(pred_mask[sl], dtype=bool)
        t = np.asarray(truth[sl], dtype=bool)
        if mask is not None:
            m = np.asarray(mask[sl], dtype=bool)
            p, t = p & m, t & m
            n_obj += int(np.count_nonzero(m))
        else:
            n_obj += p.size
        n_pred += int(np.count_nonzero(p))
        n_true += int(np.count_nonzero(t))
    if n_obj == 0:
        raise ScanError("porosity_error: the object mask is empty")
    pp, tp = 100.0 * n_pred / n_obj, 100.0 * n_true / n_obj
    return {"predicted_percent": pp, "true_percent": tp, "error_points": pp - tp,
            "relative_error": (pp - tp) / tp if tp > 0 else float("nan")}


# -------------------------------------------------------------------------------------- fold statistics

def fold_summary(values) -> tuple[float, float]:
    """Mean and the half-width of its 95 % confidence interval (Student t, n − 1 d.o.f.) over folds.

    NaN values are dropped; one value → half-width NaN.
    """
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    if v.size == 1:
        return float(v[0]), float("nan")
    half = stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    return float(v.mean()), float(half)


def welch_test(a, b) -> float:
    """Two-sided p-value of Welch's t-test (unequal variances) between two models' fold scores."""
    from scipy import stats

    return float(stats.ttest_ind(np.asarray(a, float), np.asarray(b, float), equal_var=False).pvalue)


# -------------------------------------------------------------------------------------------- plotting

def plot_pr_roc(curves: dict, path, *, title: str | None = None, method: str = "auto",
                max_points: int = 4000):
    """Two-panel PNG: precision-recall (step-wise, AP in the legend) and ROC (AUC in the legend).

    ``curves`` maps a label to ``(score, truth)`` or ``(score, truth, mask)``. Written atomically with the
    Agg backend; returns the path.
    """
    # a bare Figure renders with Agg whatever the backend; pyplot's global state is not touched
    from matplotlib.figure import Figure

    from porelab.io import atomic_path

    fig = Figure(figsize=(10, 4.5), dpi=100)
    ax_pr, ax_roc = fig.subplots(1, 2)
    for name, item in curves.items():
        score, truth = item[0], item[1]
        mask = item[2] if len(item) > 2 else None
        c = compute_curve(score, truth, mask=mask, method=method)
        if c.n_pos == 0:
            continue
        p, r = c.precision_recall()
        k = _decimate(r.size, max_points)
        ax_pr.plot(np.concatenate([[0.0], r[k]]), np.concatenate([[p[k][0]], p[k]]), drawstyle="steps-pre",
                   label=f"{name} (AP {c.average_precision():.3f})")
        fpr, tpr = c.roc()
        if fpr is not None:
            k = _decimate(fpr.size, max_points)
            ax_roc.plot(fpr[k], tpr[k], label=f"{name} (AUC {c.roc_auc():.3f})")
        frac = c.n_pos / c.n_voxels
        ax_pr.axhline(frac, color="0.6", lw=0.8, ls=":")
    ax_roc.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls=":")
    for ax, (xl, yl, t) in zip((ax_pr, ax_roc), (("recall", "precision", "precision-recall (pore class)"),
                                                 ("false positive rate", "true positive rate", "ROC"))):
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.set_title(t)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower left" if ax is ax_pr else "lower right", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def plot_curves(results: dict, path, **kwargs):
    """Alias of :func:`plot_pr_roc` (the name in docs/contracts.md)."""
    return plot_pr_roc(results, path, **kwargs)


# --------------------------------------------------------------------------------------------- helpers

def _decimate(n: int, max_points: int) -> np.ndarray:
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_points).astype(np.int64))


def _progress(items, enabled: bool, desc: str):
    from porelab.runtime import progress

    return progress(items, enabled=enabled, desc=desc, unit="slab")


def _count(mask, shape) -> int:
    if mask is None:
        return int(np.prod(shape))
    return sum(int(np.count_nonzero(np.asarray(mask[sl]))) for sl in iter_slabs(shape, _SLAB_VOXELS))


def _use_exact(score, mask, method: str) -> bool:
    if method not in ("auto", "exact", "binned"):
        raise ValueError(f"method must be 'auto', 'exact' or 'binned', got {method!r}")
    return method == "exact" or (method == "auto" and _count(mask, np.shape(score)) <= EXACT_MAX_VOXELS)


def _flatten(score, truth, mask):
    _check_shapes(score, truth, mask)
    s = np.asarray(score)
    t = np.asarray(truth).astype(bool, copy=False)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        return s[m], t[m]
    return s.ravel(), t.ravel()


def _check_shapes(score, truth, mask):
    if np.shape(score) != np.shape(truth):
        raise ScanError(f"score shape {tuple(np.shape(score))} differs from truth shape {tuple(np.shape(truth))}")
    if mask is not None and np.shape(mask) != np.shape(score):
        raise ScanError(f"mask shape {tuple(np.shape(mask))} differs from score shape {tuple(np.shape(score))}")


def _check_finite(s):
    if s.size and not np.isfinite(s).all():
        raise ScanError("score contains NaN or infinite values")
