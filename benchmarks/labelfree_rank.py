"""Does the label-free validation signal rank pore detectors as the labels would? Prints JSON.

    OMP_NUM_THREADS=1 python benchmarks/labelfree_rank.py --data DATA [--profile quick] [--seed 0]
                                                         [--tracking-uri URI ...] [--scans cyl1 cube]
                                                         [--radii 1 2 3 4 5 6 7] [--smooths 0 0.5 1.0 1.5]

DATA is a dataset with labels (``porelab simulate DATA --preset quick --seed S``, or any dataset whose
manifest names labels), loaded as the cross-validation loads it (``porelab.crossval.make_context``); its
labels are ``Context.references``, read here only to compare.

The signal under test is the one every fold decision of the pipeline is made on (``porelab/crossval.py``,
``score_fold``): synthetic pores are injected into the held-out scan (``injection_for``: seed from the
context's seed and the scan's name, clear of the skin and of Algorithm 1's candidate pores grown by 2
voxels), the detector scores the injected scan, ``porelab.injection.injected_metrics(score, inj,
scan.object)["ap"]`` is the objective and ``porelab.crossval.injected_threshold`` the decision threshold. Here it is computed for a population of detectors (each maps a raw scan to a score, higher =
pore) on every cv scan and on the hard (first test) scan, beside what the labels say on the clean scan:

* ``truth_ap``: AP against the labels inside the dataset's region (``porelab.metrics.compute_curve``, whose
  ``average_precision`` is ``porelab.metrics.average_precision``'s step-wise AP);
* ``dice_free``: Dice against the labels of the clean scan's score thresholded at the pipeline's decision
  threshold (``porelab.crossval.injected_threshold``: F1-optimal on the injected pores of the injected scan's
  score, their partial-volume shell counted as negatives), clamped as ``score_fold`` clamps it
  (``porelab.crossval.clamp_threshold``: a threshold labelling more than ``labels.max_label_fraction`` of the
  part is replaced by a percentile); ``dice_free_unclamped`` without the clamp; ``dice_inj_metrics`` at
  ``injected_metrics(...)["threshold"]`` (F1-optimal with the shell ignored), clamped; ``dice_opt``: Dice at
  the labels' own F1-optimal threshold (the best any threshold achieves);
* ``truth_ap_band_ignored``: the truth AP with the negatives the injected metrics ignore left out too
  (Algorithm 1's candidate pores grown by 2 voxels, mostly the band under the surface): how much of the
  disagreement that exclusion explains.

The detectors span a wide range of quality. Every classical one scores the scan normalised as the nets
normalise it (``Normalisation.fit(raw)``) and gives 0 outside ``porelab.postprocess.interior_mask(raw,
profile.skin)`` (the nets' skin suppression), everything computed from the raw scan it is given:

* ``tophat r=R s=S``: ``porelab.baselines.tophat.tophat_score`` (black top-hat, ball of radius R, Gaussian
  pre-filter σ = S), over ``--radii`` × ``--smooths``;
* ``sauvola w=W k=K``: ``porelab.baselines.sauvola.sauvola_score`` over ``--sauvola-windows`` ×
  ``--sauvola-ks``;
* ``dark s=S``: the darkness of the scan smoothed at σ = S (0, 1, 2, 3): ``1 + max − G_S * x`` inside the
  interior, so every interior voxel ranks above the suppressed skin;
* ``alg1``: Algorithm 1's pore labels of the scan (Iuso et al. 2024) as a 0/1 score;
* poor on purpose: ``gradient``, the gradient magnitude (derivative of Gaussian, σ = 1), high on a pore's
  rim and not inside it; ``random``, a Gaussian-smoothed (σ = 2) white-noise field that ignores the scan;
* with ``--tracking-uri`` (repeatable): the Production versions of ``porelab-unsupervised`` and
  ``porelab-supervised`` of each store (``porelab.tracking.resolve_model``), scored with ``.predict(raw)``
  (their own skin suppression and, for the VAEs, post-processing), named ``<model>@<store>``, the store
  being the folder of its SQLite file. A store whose models fail to load is skipped and listed under
  ``skipped_stores``.

Output (JSON, stdout; progress on stderr; nothing written to disk):

* ``scans``: per scan, the injected pores and voxels counted, the share of the part excluded, and the
  quartiles over positive voxels of their pore's equivalent radius, injected against native (a voxel-wise
  AP weighs a pore by its volume);
* ``pairs``: Spearman and Kendall's tau between injected AP and truth AP over every (detector, scan) pair,
  over all scans and over the cv scans only (``cv_band_ignored``: against ``truth_ap_band_ignored``);
* ``per_scan``: the same over the detectors on one scan, the injected-AP range, the share of detectors with
  injected AP ≥ 0.99 (saturation), and the top-1 check on that scan;
* ``detectors``: over detectors, each summarised by its mean over the cv scans (``cv``) and over the
  profile's held-out fold scans only (``folds``): Spearman, Kendall, and the top-1 check: the detector with
  the best mean injected AP, its rank and mean truth AP by the labels, whether it is among the top 3, and
  the truth-best detector's mean truth AP (``band_ignored``: the same against ``truth_ap_band_ignored``);
  ``near_top``: the same correlations among the detectors whose
  mean injected AP is within 0.05 of the best (the ones a search would have to tell apart);
* ``families``: the correlations and the top-1 check within each family of ≥ 3 detectors (e.g. the
  top-hat grid: does the signal pick its radius and pre-filter?);
* ``dice``: mean Dice at the label-free threshold against at the truth-optimal one, over all cv pairs,
  over the 5 detectors with the best mean truth AP, for the detector the signal picks, and on the hard scan;
* ``rows``: per detector, its per-scan injected AP, truth AP, Dice values and thresholds, and its ranks.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

RADII = (1, 2, 3, 4, 5, 6, 7)
SMOOTHS = (0.0, 0.5, 1.0, 1.5)
SAUVOLA_WINDOWS = (7, 15, 31)
SAUVOLA_KS = (0.05, 0.2, 0.5)
DARK_SMOOTHS = (0.0, 1.0, 2.0, 3.0)
NET_NAMES = ("porelab-unsupervised", "porelab-supervised")
#: injected AP at or above which a detector counts as saturated on a scan
SATURATED = 0.99
#: mean injected AP within this of the best makes a detector "near the top"
NEAR_TOP = 0.05
#: seed of the ``random`` detector's field (the same field on a clean scan and its injected copy)
RANDOM_SEED = 12


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------- detectors
@dataclass
class View:
    """One raw scan as every classical detector sees it: the raw grey values, the normalised copy the nets
    would score (``Normalisation.fit(raw)``) and the interior (``interior_mask(raw, skin)``), all from the
    raw scan alone, computed once and shared by the detectors scoring that scan."""

    raw: np.ndarray
    skin: int
    x: np.ndarray = field(init=False, repr=False)
    keep: np.ndarray = field(init=False, repr=False)
    _smoothed: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        from porelab.labels import object_mask
        from porelab.normalise import Normalisation
        from porelab.postprocess import interior_mask

        self.x = Normalisation.fit(self.raw).apply(self.raw).astype(np.float32)
        keep = interior_mask(self.raw, self.skin)
        self.keep = np.asarray(object_mask(self.raw) if keep is None else keep, dtype=bool)

    def smoothed(self, sigma: float) -> np.ndarray:
        from scipy import ndimage

        if sigma not in self._smoothed:
            self._smoothed[sigma] = (ndimage.gaussian_filter(self.x, sigma, mode="nearest") if sigma > 0
                                     else self.x)
        return self._smoothed[sigma]


@dataclass
class Detector:
    """A pore detector: ``score(view) -> float32 score`` of the view's raw scan (higher = pore)."""

    name: str
    family: str
    params: dict
    score: Callable = field(repr=False)


def _inside(view: View, values: np.ndarray) -> np.ndarray:
    return np.where(view.keep, values, 0.0).astype(np.float32)


def _darkness(values: np.ndarray, view: View) -> np.ndarray:
    """``1 + max − values`` inside the interior (every interior voxel above the suppressed skin's 0)."""
    top = float(values[view.keep].max()) if view.keep.any() else 0.0
    return _inside(view, 1.0 + top - values)


def classical_detectors(radii, smooths, windows, ks) -> list[Detector]:
    from scipy import ndimage

    from porelab.baselines.sauvola import sauvola_score
    from porelab.baselines.tophat import tophat_score

    dets = []
    for s in smooths:
        for r in radii:
            dets.append(Detector(f"tophat r={r} s={s:g}", "tophat", {"radius": int(r), "smooth": float(s)},
                                 lambda v, r=r, s=s: tophat_score(v.x, v.keep, radius=int(r), smooth=float(s))))
    for w in windows:
        for k in ks:
            dets.append(Detector(f"sauvola w={w} k={k:g}", "sauvola", {"window": int(w), "k": float(k)},
                                 lambda v, w=w, k=k: sauvola_score(v.x, v.keep, window=int(w), k=float(k))))
    for s in DARK_SMOOTHS:
        dets.append(Detector(f"dark s={s:g}", "dark", {"smooth": s},
                             lambda v, s=s: _darkness(v.smoothed(s), v)))

    def alg1(v: View) -> np.ndarray:
        from porelab.labels import run_algorithm1

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            pores = np.asarray(run_algorithm1(v.raw).pores, bool)
        return _inside(v, pores.astype(np.float32))

    def gradient(v: View) -> np.ndarray:
        return _inside(v, ndimage.gaussian_gradient_magnitude(v.x, 1.0))

    def random_field(v: View) -> np.ndarray:
        noise = np.random.default_rng(RANDOM_SEED).standard_normal(v.raw.shape).astype(np.float32)
        field_ = ndimage.gaussian_filter(noise, 2.0)
        return _inside(v, field_ - float(field_.min()) + 1.0)

    dets += [Detector("alg1", "alg1", {}, alg1),
             Detector("gradient", "poor", {"sigma": 1.0}, gradient),
             Detector("random", "poor", {"sigma": 2.0, "seed": RANDOM_SEED}, random_field)]
    return dets


def store_label(uri: str) -> str:
    """A short name of a tracking store: the folder of its SQLite file, else the URI."""
    from porelab.tracking.stores import sqlite_file

    db = sqlite_file(uri)
    return db.parent.name if db is not None else uri


def net_detectors(uri: str) -> tuple[list[Detector], str | None]:
    """The Production models of a store as detectors, or ``([], reason)`` when loading fails."""
    import os

    import mlflow

    from porelab.tracking import resolve_model
    from porelab.tracking.resolve import resolve_version

    os.environ["MLFLOW_TRACKING_URI"] = uri          # resolve_model reads the store from here
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    label = store_label(uri)
    dets = []
    try:
        for name in NET_NAMES:
            mv = resolve_version(name)
            model = resolve_model(f"models:/{mv.name}/{mv.version}")
            params = {"store": uri, "model": name, "version": int(mv.version), "run_id": mv.run_id,
                      "net": model.name, "kind": model.kind}
            if model.kind == "unsupervised":
                params["residual"] = model.residual
            dets.append(Detector(f"{name.removeprefix('porelab-')}@{label}", "net", params,
                                 lambda v, m=model: np.asarray(m.predict(v.raw), dtype=np.float32)))
    except Exception as exc:  # noqa: BLE001 - a store still being written, a missing model: skip the store
        return [], f"{type(exc).__name__}: {exc}"
    return dets, None


# ------------------------------------------------------------------------------------------ measuring
def score_scan(ctx, scan, detectors: list[Detector]) -> tuple[dict[str, dict], dict]:
    """Every detector's label-free objective and truth metrics on one scan (``{detector name: metrics}``),
    and the injection's counts."""
    from porelab.crossval import clamp_threshold, injected_threshold, injection_for
    from porelab.injection import injected_metrics
    from porelab.metrics import compute_curve, dice

    ref = ctx.references[scan.name]
    inj = injection_for(ctx, scan)
    # the voxels the injected pores were kept away from (Algorithm 1's candidates grown by 2 voxels, or less
    # where they leave no room): injected_metrics ignores them as negatives
    exclude = ctx.cache.get(("injection_exclude", scan.name))
    exclude = np.zeros_like(scan.object) if exclude is None else np.asarray(exclude, bool)
    band_ignored = ref.region & (ref.labels | ~exclude)
    skin = int(ctx.profile.skin)
    v_inj, v_clean = View(inj.scan, skin), View(scan.raw, skin)
    max_fraction = float(ctx.profile.labels.max_label_fraction)

    def dice_at(s, thr):
        """Dice against the labels at ``thr`` clamped as score_fold clamps it, and whether it was."""
        if not math.isfinite(thr):
            return math.nan, math.nan, False
        thr_c, policy = clamp_threshold(s, scan.object, thr, "injected", max_fraction)
        return dice(s, ref.labels, thr_c, mask=ref.region), thr_c, policy != "injected"

    out = {}
    for det in detectors:
        t0 = time.perf_counter()
        s_inj = det.score(v_inj)
        im = injected_metrics(s_inj, inj, scan.object)
        thr_free = injected_threshold(ctx, s_inj, scan)          # the pipeline's decision threshold
        del s_inj
        s = det.score(v_clean)
        curve = compute_curve(s, ref.labels, mask=ref.region)
        thr_opt, dice_opt = curve.best_f1()
        d_free, thr_c, clamped = dice_at(s, thr_free)
        d_metrics, _, _ = dice_at(s, float(im["threshold"]))
        out[det.name] = {
            "inj_ap": float(im["ap"]), "inj_auc": float(im["auc"]),
            "truth_ap": curve.average_precision(), "truth_auc": curve.roc_auc(),
            "truth_ap_band_ignored": compute_curve(s, ref.labels, mask=band_ignored).average_precision(),
            "threshold_opt": float(thr_opt), "dice_opt": float(dice_opt),
            "threshold_free": thr_c, "dice_free": d_free, "clamped": clamped,
            "dice_free_unclamped": (dice(s, ref.labels, thr_free, mask=ref.region) if math.isfinite(thr_free)
                                    else math.nan),
            "threshold_inj_metrics": float(im["threshold"]), "dice_inj_metrics": d_metrics,
            "seconds": time.perf_counter() - t0}
    inj_pos = inj.mask & scan.object
    return out, {"injected_pores": len(inj.pores), "requested": int(inj.requested),
                 "positives": int(inj_pos.sum()), "negatives": int(inj.negatives(scan.object).sum()),
                 "excluded_share_of_part": float(exclude[scan.object].mean()),
                 "native_pore_voxels": int((ref.labels & ref.region).sum()),
                 "radius_injected": _radius_quartiles(inj_pos), "radius_native": _radius_quartiles(ref.labels
                                                                                                   & ref.region)}


def _radius_quartiles(mask: np.ndarray) -> list[float] | None:
    """Quartiles over a mask's voxels of the equivalent radius ``(3 V / 4π)^(1/3)`` (voxels) of the
    26-connected component each voxel belongs to: the pore sizes a voxel-wise AP is weighted by."""
    from scipy import ndimage

    lab, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return None
    sizes = np.bincount(lab.ravel())[1:]
    radius = (3.0 * sizes / (4.0 * np.pi)) ** (1.0 / 3.0)
    return [float(q) for q in np.percentile(np.repeat(radius, sizes), (25, 50, 75))]


# ------------------------------------------------------------------------------------------ summaries
def _corr(a, b) -> dict:
    """Spearman and Kendall between two sequences (pairs with a NaN dropped; None when undefined)."""
    from scipy.stats import kendalltau, spearmanr

    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None
             and math.isfinite(x) and math.isfinite(y)]
    out = {"n": len(pairs), "spearman": None, "spearman_p": None, "kendall": None, "kendall_p": None}
    if len(pairs) < 3 or len({p[0] for p in pairs}) < 2 or len({p[1] for p in pairs}) < 2:
        return out
    x, y = zip(*pairs)
    r, k = spearmanr(x, y), kendalltau(x, y)
    out.update(spearman=float(r.statistic), spearman_p=float(r.pvalue), kendall=float(k.statistic),
               kendall_p=float(k.pvalue))
    return out


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def _top1(names, free, truth) -> dict:
    """The detector with the best label-free value, judged by the labels."""
    from scipy.stats import rankdata

    ok = [i for i in range(len(names)) if free[i] is not None and truth[i] is not None
          and math.isfinite(free[i]) and math.isfinite(truth[i])]
    if not ok:
        return {}
    names = [names[i] for i in ok]
    free = np.array([free[i] for i in ok])
    truth = np.array([truth[i] for i in ok])
    ranks = rankdata(-truth, method="min")
    i_free, i_truth = int(np.argmax(free)), int(np.argmax(truth))
    return {"chosen": names[i_free], "chosen_inj_ap": float(free[i_free]), "chosen_truth_ap": float(truth[i_free]),
            "chosen_truth_rank": int(ranks[i_free]), "chosen_in_truth_top3": bool(ranks[i_free] <= 3),
            "truth_best": names[i_truth], "truth_best_ap": float(truth[i_truth]),
            "truth_best_inj_ap": float(free[i_truth]), "regret": float(truth[i_truth] - truth[i_free]),
            "of": len(names)}


def _over_detectors(names, free, truth) -> dict:
    return {**_corr(free, truth), "top1": _top1(names, free, truth)}


def summarise(results: dict, detectors: list[Detector], cv_names: list[str], fold_names: list[str],
              hard_name: str | None) -> dict:
    names = [d.name for d in detectors]
    scans = list(results)
    cv = [s for s in scans if s in cv_names]
    folds = [s for s in scans if s in fold_names]

    def vals(scan_list, key):
        return [results[s][n][key] for s in scan_list for n in names]

    pairs = {"all": _corr(vals(scans, "inj_ap"), vals(scans, "truth_ap")),
             "cv": _corr(vals(cv, "inj_ap"), vals(cv, "truth_ap")),
             "cv_band_ignored": _corr(vals(cv, "inj_ap"), vals(cv, "truth_ap_band_ignored"))}

    per_scan = {}
    for s in scans:
        free = [results[s][n]["inj_ap"] for n in names]
        truth = [results[s][n]["truth_ap"] for n in names]
        fin = [v for v in free if math.isfinite(v)]
        per_scan[s] = {**_over_detectors(names, free, truth),
                       "inj_ap_min": min(fin) if fin else None, "inj_ap_median": float(np.median(fin)) if fin else None,
                       "inj_ap_max": max(fin) if fin else None,
                       "saturated_share": float(np.mean([v >= SATURATED for v in fin])) if fin else None,
                       "truth_ap_of_saturated": ([min(t for f, t in zip(free, truth) if f >= SATURATED),
                                                  max(t for f, t in zip(free, truth) if f >= SATURATED)]
                                                 if any(f >= SATURATED for f in fin) else None)}

    def means(scan_list, key):
        return [_mean(results[s][n][key] for s in scan_list) for n in names]

    detectors_out, near_top = {}, {}
    for label, group in (("cv", cv), ("folds", folds)):
        if not group:
            continue
        free, truth = means(group, "inj_ap"), means(group, "truth_ap")
        detectors_out[label] = {"scans": group, **_over_detectors(names, free, truth),
                                "band_ignored": _over_detectors(names, free, means(group, "truth_ap_band_ignored"))}
        best = max(v for v in free if v is not None)
        idx = [i for i, v in enumerate(free) if v is not None and v >= best - NEAR_TOP]
        near_top[label] = {"within": NEAR_TOP, "detectors": [names[i] for i in idx],
                           **_over_detectors([names[i] for i in idx], [free[i] for i in idx],
                                             [truth[i] for i in idx])}

    families = {}
    free_cv, truth_cv = means(cv, "inj_ap"), means(cv, "truth_ap")
    for fam in dict.fromkeys(d.family for d in detectors):
        idx = [i for i, d in enumerate(detectors) if d.family == fam]
        if len(idx) >= 3:
            families[fam] = _over_detectors([names[i] for i in idx], [free_cv[i] for i in idx],
                                            [truth_cv[i] for i in idx])

    top_truth = [names[i] for i in np.argsort([-(v if v is not None else -1) for v in truth_cv])[:5]]
    chosen = detectors_out.get("cv", {}).get("top1", {}).get("chosen")

    def dice_block(scan_list, subset):
        free = [results[s][n]["dice_free"] for s in scan_list for n in subset]
        unclamped = [results[s][n]["dice_free_unclamped"] for s in scan_list for n in subset]
        opt = [results[s][n]["dice_opt"] for s in scan_list for n in subset]
        metrics_thr = [results[s][n]["dice_inj_metrics"] for s in scan_list for n in subset]
        clamped = [results[s][n]["clamped"] for s in scan_list for n in subset]
        return {"pairs": len(free), "dice_free_mean": _mean(free), "dice_free_unclamped_mean": _mean(unclamped),
                "dice_inj_metrics_mean": _mean(metrics_thr), "dice_opt_mean": _mean(opt),
                "clamped_share": float(np.mean(clamped)) if clamped else None}

    dice_out = {"cv_all": dice_block(cv, names), "cv_top5_by_truth": {"detectors": top_truth,
                                                                       **dice_block(cv, top_truth)}}
    if chosen:
        dice_out["cv_label_free_choice"] = {"detector": chosen, **dice_block(cv, [chosen])}
    if hard_name in results:
        dice_out["hard_all"] = dice_block([hard_name], names)
        dice_out["hard_top5_by_truth"] = dice_block([hard_name], top_truth)

    from scipy.stats import rankdata

    def rank(values):
        arr = np.array([-v if v is not None else np.inf for v in values])
        return [int(r) for r in rankdata(arr, method="min")]

    r_free, r_truth = rank(free_cv), rank(truth_cv)
    rows = []
    for i, d in enumerate(detectors):
        rows.append({"detector": d.name, "family": d.family, "params": d.params,
                     "cv_inj_ap": free_cv[i], "cv_truth_ap": truth_cv[i],
                     "cv_truth_ap_band_ignored": _mean(results[s][d.name]["truth_ap_band_ignored"] for s in cv),
                     "rank_inj": r_free[i], "rank_truth": r_truth[i],
                     **{key: {s: results[s][d.name][key] for s in scans}
                        for key in ("inj_ap", "truth_ap", "truth_ap_band_ignored", "dice_free",
                                    "dice_inj_metrics", "dice_opt", "threshold_free",
                                    "threshold_opt")}})
    rows.sort(key=lambda r: r["rank_truth"])
    return {"pairs": pairs, "per_scan": per_scan, "detectors": detectors_out, "near_top": near_top,
            "families": families, "dice": dice_out, "rows": rows}


def _clean(obj):
    """JSON-safe: NaN → None, numpy scalars → Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# ------------------------------------------------------------------------------------------------ main
def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a dataset with labels (manifest.json)")
    ap.add_argument("--profile", default="quick", help="skin, folds and threshold clamp come from it")
    ap.add_argument("--seed", type=int, default=0, help="the context's seed (the injected pores' seed)")
    ap.add_argument("--tracking-uri", action="append", default=[],
                    help="add the Production porelab-unsupervised / porelab-supervised of this store "
                         "(repeatable)")
    ap.add_argument("--scans", nargs="*", default=None, help="only these scans (default: every cv scan and "
                                                             "the hard scan)")
    ap.add_argument("--radii", type=int, nargs="*", default=list(RADII))
    ap.add_argument("--smooths", type=float, nargs="*", default=list(SMOOTHS))
    ap.add_argument("--sauvola-windows", type=int, nargs="*", default=list(SAUVOLA_WINDOWS))
    ap.add_argument("--sauvola-ks", type=float, nargs="*", default=list(SAUVOLA_KS))
    args = ap.parse_args(argv)

    from porelab.crossval import make_context

    t_start = time.perf_counter()
    ctx = make_context(args.profile, args.data, seed=args.seed)
    detectors = classical_detectors(args.radii, args.smooths, args.sauvola_windows, args.sauvola_ks)
    stores, skipped = [], {}
    for uri in args.tracking_uri:
        dets, why = net_detectors(uri)
        if why is None:
            detectors += dets
            stores.append({"uri": uri, "models": {d.name: d.params for d in dets}})
        else:
            skipped[uri] = why
            _log(f"skipping store {uri}: {why}")

    scans = list(ctx.cv) + ([ctx.hard] if ctx.hard is not None else [])
    if args.scans:
        scans = [s for s in scans if s.name in args.scans]
    unlabelled = [s.name for s in scans if s.name not in ctx.references
                  or not ctx.references[s.name].labels[ctx.references[s.name].region].any()]
    scans = [s for s in scans if s.name not in unlabelled]

    results, injections, seconds = {}, {}, {}
    for s in scans:
        t0 = time.perf_counter()
        _log(f"{s.name}: {len(detectors)} detectors")
        results[s.name], injections[s.name] = score_scan(ctx, s, detectors)
        seconds[s.name] = time.perf_counter() - t0
        _log(f"{s.name}: {seconds[s.name]:.0f} s")

    fam_seconds: dict[str, float] = {}
    for d in detectors:
        fam_seconds[d.family] = fam_seconds.get(d.family, 0.0) + sum(results[s][d.name]["seconds"] for s in results)

    summary = summarise(results, detectors, [s.name for s in ctx.cv], [ctx.cv[f].name for f in ctx.folds],
                        ctx.hard.name if ctx.hard is not None else None)
    out = {"data": str(Path(args.data).resolve()), "profile": ctx.profile.name, "seed": ctx.seed,
           "skin": int(ctx.profile.skin), "scans": {s.name: {"role": s.role, **injections[s.name]} for s in scans},
           "unlabelled_scans": unlabelled, "detector_count": len(detectors),
           "grid": {"radii": args.radii, "smooths": args.smooths, "sauvola_windows": args.sauvola_windows,
                    "sauvola_ks": args.sauvola_ks, "dark_smooths": list(DARK_SMOOTHS)},
           "stores": stores, "skipped_stores": skipped, **summary,
           "seconds": {"total": time.perf_counter() - t_start, "per_scan": seconds, "per_family": fam_seconds}}
    out = _clean(out)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
