"""Cross-validation: scans in memory, folds, and the one recipe that trains a net on a fold and scores it.

A dataset's ``cv`` scans are the cross-validation scans, leave one out: with k = ``profile.folds`` below
their number, the first k are held out in turn and every fold trains on all the others. The ``hard`` scan
(the dataset's first ``test`` scan: the challenging one) is scored on every fold and never trained on.

Labels are optional (a dataset of the user's own scans may have none): ``Scan.truth`` is then None, the
metrics against it are not computed, and decisions fall back to Algorithm 1 labels (``Scan.alg1``).

Decisions are label-free where the design note asks for it, except where stated: a fold's decision threshold
is F1-optimal on its held-out scan against the labels given (supervised nets: their training labels) or the
profile's ``labels.threshold_labels`` (unsupervised nets); truth and Algorithm 1 labels are only reported.

Metrics are voxel-wise AP, ROC-AUC and Dice of the pore class inside the part (the dataset's object mask),
against the truth (``val_ap`` …) and against Algorithm 1 labels (``val_ap_alg1`` …), as Iuso et al. (2024)
scored theirs. Tracking and pruning come in through :func:`run_folds`' hooks (``porelab.automl``).
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from porelab.config import Profile, get_profile
from porelab.errors import ConfigError

METRIC_KEYS = ("ap", "auc", "dice")


# ------------------------------------------------------------------------------------------------ data
@dataclass
class Scan:
    """One scan in memory: raw grey values, normalised copy, truth (the dataset's labels; None when it has
    none), object mask (the dataset's, else Algorithm 1 steps 6-8), Algorithm 1 labels."""

    name: str
    raw: np.ndarray
    scan: np.ndarray
    truth: np.ndarray | None
    object: np.ndarray
    alg1: np.ndarray
    role: str = "cv"


@dataclass
class Context:
    """Everything cross-validation needs: the profile, the seed, the scans, the folds, a scratch folder."""

    profile: Profile
    seed: int
    cv: list[Scan]
    hard: Scan | None
    folds: list[int]
    workdir: Path | None
    dataset_root: Path | None = None
    progress: bool = False
    notes: list[str] = field(default_factory=list)
    cache: dict = field(default_factory=dict)


def load_scans(data_dir, *, hard: bool = True) -> tuple[list[Scan], Scan | None, object]:
    """A dataset (manifest) as :class:`Scan` objects, each normalised on its own; ``(cv, hard, manifest)``.

    The normalisation is ``Normalisation.fit(scan)`` without a mask, exactly what ``PoreModel.predict``
    refits on every scan it scores, so training and inference see the same grey levels. Cross-validation
    needs at least 2 cv scans (``ConfigError`` otherwise). A scan without labels gets ``truth=None``; without
    an object mask file, the object of the same Algorithm 1 pass that gives ``alg1``. ``hard`` is the first
    test scan.
    """
    from porelab.dataset import load_manifest
    from porelab.labels import run_algorithm1
    from porelab.normalise import Normalisation

    ds = load_manifest(data_dir)
    if len(ds.cv) < 2:
        raise ConfigError(f"{data_dir}: cross-validation needs at least 2 cv scans, found {len(ds.cv)}")

    def make(info) -> Scan:
        raw, truth, obj = info.load(mmap=False, derive_object=False)
        raw = np.ascontiguousarray(raw, dtype=np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            alg1 = run_algorithm1(raw)
        obj = alg1.object if obj is None else np.asarray(obj) > 0
        return Scan(info.name, raw, Normalisation.fit(raw).apply(raw),
                    None if truth is None else np.asarray(truth) > 0, obj, np.asarray(alg1.pores, bool),
                    info.role)

    cv = [make(i) for i in ds.cv]
    hard_scan = make(ds.hard) if hard and ds.hard is not None else None
    return cv, hard_scan, ds


def make_context(profile, data_dir, seed: int = 0, *, workdir=None, progress: bool = False,
                 folds: list[int] | None = None, hard: bool = True) -> Context:
    """Profile (or its name) + dataset folder → :class:`Context`; the folds chosen are explained in ``notes``.

    ``folds`` (indices of held-out cv scans; negative ones count from the end) replaces the profile's
    first-k choice. Without ``workdir`` a temporary folder is made when :func:`run_folds` first needs one.
    """
    prof = get_profile(profile)
    root = Path(data_dir)
    cv, hard_scan, ds = load_scans(root, hard=hard)
    notes = []
    if hard and len(ds.test) > 1:
        notes.append(f"{len(ds.test)} test scans: {ds.test[0].name} is scored as the hard scan, "
                     f"{', '.join(s.name for s in ds.test[1:])} are not used here")
    if folds is not None:
        folds = [int(f) % len(cv) for f in folds]
    else:
        k = min(int(prof.folds), len(cv))
        folds = list(range(k))
        if k < len(cv):
            notes.append(f"{k} folds over {len(cv)} cv scans: held out in turn are the first {k} "
                         f"({', '.join(s.name for s in cv[:k])}); every fold trains on all other cv scans")
    if workdir:
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
    return Context(prof, int(seed), cv, hard_scan, list(folds), workdir or None, root, progress, notes)


def label_source(ctx: Context, labels) -> dict[str, np.ndarray]:
    """Training labels per cv scan: ``"truth"``, ``"alg1"`` (``"heuristic"``: Algorithm 1), or a folder of
    ``<scan>_pseudo.npy`` / ``<scan>.npy`` files (as ``porelab pseudolabel`` writes). ``"truth"`` on a
    dataset whose cv scans lack labels is a ``ConfigError``."""
    if labels == "truth":
        missing = [s.name for s in ctx.cv if s.truth is None]
        if missing:
            raise ConfigError(f"{ctx.dataset_root}: cv scans without labels: {', '.join(missing)}; train on "
                              "Algorithm 1 labels (heuristic) or pseudo-labels instead")
        return {s.name: s.truth for s in ctx.cv}
    if labels in ("alg1", "heuristic"):
        return {s.name: s.alg1 for s in ctx.cv}
    return load_label_folder(labels, ctx)


def load_label_folder(folder, ctx: Context) -> dict[str, np.ndarray]:
    """Training labels from a folder: ``<scan name>_pseudo.npy`` or ``<scan name>.npy`` for every cv scan."""
    folder = Path(folder)
    out = {}
    for s in ctx.cv:
        for cand in (folder / f"{s.name}_pseudo.npy", folder / f"{s.name}.npy"):
            if cand.is_file():
                m = np.load(cand)
                if m.shape != s.raw.shape:
                    raise ConfigError(f"{cand}: shape {m.shape} differs from scan {s.name} {s.raw.shape}")
                out[s.name] = m > 0
                break
        else:
            raise ConfigError(f"{folder}: no label file for scan {s.name!r} "
                              f"({s.name}_pseudo.npy or {s.name}.npy)")
    return out


def default_net_kwargs(profile: Profile, net: str, scale: float | None = None) -> dict:
    """Constructor arguments of ``net`` under ``profile``: its width, the VAEs' patch size, the supervised
    nets' dropout."""
    from porelab.nets import is_supervised

    kw = {"scale": float(profile.net_scale if scale is None else scale)}
    if is_supervised(net):
        kw.update(profile.supervised_net_kwargs)
    else:
        kw["patch_size"] = int(profile.unsupervised.patch)
    return kw


# ------------------------------------------------------------------------------------------ evaluation
def evaluate(score: np.ndarray, scan: Scan, prefix: str, suffix: str = "",
             threshold: float | None = None) -> dict:
    """``{prefix}_ap{suffix}``, ``_auc``, ``_dice`` vs the truth and ``…_alg1`` vs Algorithm 1 labels,
    counted inside the part (a scan without truth: only the latter). Dice at ``threshold`` (the model's),
    else at the F1-optimal threshold."""
    from porelab.metrics import evaluate_scores

    out = {}
    for family, labels in (("", scan.truth), ("_alg1", scan.alg1)):
        if labels is None or not labels[scan.object].any():
            continue
        m = evaluate_scores(score, labels, mask=scan.object, threshold=threshold)
        for k in METRIC_KEYS:
            out[f"{prefix}_{k}{suffix}{family}"] = float(m[k])
    return out


def mean_metrics(fold_metrics: list[dict]) -> dict:
    """Mean over folds of every metric (NaNs ignored) plus ``<name>_ci95`` half-widths."""
    from porelab.metrics import fold_summary

    keys = sorted({k for m in fold_metrics for k in m})
    out = {}
    for k in keys:
        vals = [m[k] for m in fold_metrics if k in m and m[k] is not None]
        mean, half = fold_summary(vals)
        out[k] = mean
        if k.startswith(("val_", "hard_")):
            out[f"{k}_ci95"] = half
    return out


def clamp_threshold(score: np.ndarray, part: np.ndarray, threshold: float, policy: str,
                    max_fraction: float) -> tuple[float, str]:
    """``(threshold, policy)``, unchanged unless ``score >= threshold`` labels more than ``max_fraction`` of
    the part (a score that does not separate pores): then the ``100 (1 − max_fraction / 10)``-th percentile
    of the score inside the part, and a policy text that says why."""
    inside = np.asarray(score)[part]
    frac = float(np.mean(inside >= threshold)) if inside.size else 0.0
    if frac <= max_fraction:
        return float(threshold), policy
    clamped = float(np.percentile(inside, 100.0 * (1.0 - max_fraction / 10.0)))
    return clamped, (f"{100 * (1 - max_fraction / 10):g}th percentile in the part (the {policy} threshold "
                     f"labelled {100 * frac:.0f} % of it, above max_label_fraction {max_fraction:g})")


# ---------------------------------------------------------------------------------------- one fold
def train_fold(ctx: Context, net_name: str, net_kwargs: dict, loss_params: dict, fold: int, *,
               labels: dict[str, np.ndarray] | None = None, seed: int = 0, on_epoch=None,
               overrides: dict | None = None, checkpoint_dir=None):
    """Train ``net_name`` on every cv scan but ``ctx.cv[fold]`` (early stopping on it); return
    ``(PoreModel, history)``. ``labels`` (name → mask) are the training labels of supervised nets;
    ``overrides`` replace training settings of the profile (``Profile.train_config``)."""
    from porelab.model import PoreModel
    from porelab.nets import build, is_supervised
    from porelab.normalise import Normalisation
    from porelab.runtime import seed_everything
    from porelab.train import Sample, fit

    supervised = is_supervised(net_name)
    if supervised and labels is None:
        raise ConfigError(f"supervised net {net_name!r} needs training labels")
    config = ctx.profile.train_config(net_name, **(overrides or {}), loss_params=dict(loss_params))

    def sample(s: Scan) -> Sample:
        return Sample(s.scan, labels[s.name].astype(np.uint8) if supervised else None, s.name)

    train = [sample(s) for i, s in enumerate(ctx.cv) if i != fold]
    val = [sample(ctx.cv[fold])]
    seed_everything(seed)       # the initial weights too, not only the training: a fold is reproducible
    net = build(net_name, **net_kwargs)
    net, history = fit(net, net_name, train, val, config, on_epoch=on_epoch, seed=seed, progress=ctx.progress,
                       rebuild=lambda _k: build(net_name, **net_kwargs), checkpoint_dir=checkpoint_dir)
    norm = Normalisation.fit(ctx.cv[0 if fold else 1].raw)
    model = PoreModel.from_trained(net, net_name, norm, ctx.profile, net_kwargs=dict(net_kwargs),
                                   patch=config.patch, postprocess=not supervised)
    model.meta["train_config"] = config.to_dict()
    return model, history


def score_fold(ctx: Context, model, fold: int, *, threshold_labels: dict[str, np.ndarray] | None = None):
    """Score the held-out and the hard scan; set the model's threshold (and residual); ``(metrics, curves)``.

    Threshold (design note §6: F1-optimal on a labelled validation scan): against the held-out scan's
    ``threshold_labels`` when given (supervised nets: their training labels); else against
    ``profile.labels.threshold_labels``: ``"truth"`` (the held-out scan's truth mask) or ``"alg1"``
    (Algorithm 1 labels: no truth needed, but on the simulated scans those labels reach a Dice of only
    ≈ 0.16 against the truth, so the threshold they give is poor; a held-out scan without truth falls back
    to them). Never the hard scan. Curves are kept for scans with truth only. A threshold that
    labels more than ``labels.max_label_fraction`` of the part is clamped (:func:`clamp_threshold`).
    Unsupervised nets score every residual of ``search.residuals`` from one reconstruction and keep the
    one with the best post-processed AP on the held-out scan.
    """
    from porelab.metrics import evaluate_scores
    from porelab.model import choose_threshold

    val = ctx.cv[fold]
    targets = [("val", val)] + ([("hard", ctx.hard)] if ctx.hard is not None else [])
    metrics, curves, scores = {}, {}, {}
    unsup = model.kind == "unsupervised"
    residuals = tuple(ctx.profile.search.residuals) if unsup else ()
    for prefix, s in targets:
        if unsup:
            scores[prefix] = model.unsupervised_scores(s.raw, residuals)
        else:
            scores[prefix] = (model.predict(s.raw, progress=False),)
    if threshold_labels is not None:
        ref = threshold_labels[val.name]
    elif (ctx.profile.labels.threshold_labels == "alg1" or val.truth is None
          or not val.truth[val.object].any()):
        ref = val.alg1
    else:
        ref = val.truth
    if unsup:     # the residual mode, like the threshold, is chosen on the labelled validation scan
        choice = {}
        for mode in residuals:
            choice[mode] = float(evaluate_scores(scores["val"][mode][1], ref, mask=val.object)["ap"])
            metrics[f"val_ap_pp_{mode}"] = choice[mode]
        model.residual = max(residuals, key=lambda m: (choice[m], m == "abs"))
        model.meta["residual_choice"] = {"chosen": model.residual, "val_ap_pp": choice}
        scores = {k: v[model.residual] for k, v in scores.items()}
    main = scores["val"][-1]
    threshold, policy = choose_threshold(main, ref, kind=model.kind, object_mask=val.object)
    model.threshold, policy = clamp_threshold(main, val.object, threshold, policy,
                                              float(ctx.profile.labels.max_label_fraction))
    model.meta["threshold_policy"] = policy
    for prefix, s in targets:
        sc = scores[prefix]
        if unsup:
            metrics.update(evaluate(sc[0], s, prefix, threshold=None))
            metrics.update(evaluate(sc[1], s, prefix, "_pp", threshold=model.threshold))
            if s.truth is not None:
                curves[f"{prefix} raw"] = (sc[0], s.truth, s.object)
                curves[f"{prefix} post-processed"] = (sc[1], s.truth, s.object)
        else:
            metrics.update(evaluate(sc[0], s, prefix, threshold=model.threshold))
            if s.truth is not None:
                curves[prefix] = (sc[0], s.truth, s.object)
    metrics["threshold"] = float(model.threshold)
    return metrics, curves


@dataclass
class FoldResult:
    """One trained and scored fold: the model (threshold set), its training history, metrics and curves."""

    fold: int
    model: object
    history: dict
    metrics: dict
    curves: dict


def fit_fold(ctx: Context, net_name: str, net_kwargs: dict, loss_params: dict, fold: int, *,
             labels: dict[str, np.ndarray] | None = None, threshold_labels=None, seed: int = 0,
             on_epoch=None, overrides: dict | None = None, checkpoint_dir=None) -> FoldResult:
    """Train a net on a fold and choose its threshold: :func:`train_fold` then :func:`score_fold`.

    The one recipe behind ``porelab train`` (one fold: the last cv scan validates), ``porelab cv`` and every
    trial of the AutoML pipeline. ``threshold_labels`` default to ``labels``; the metrics get the epochs,
    the best epoch and the training and scoring seconds.
    """
    t0 = time.perf_counter()
    model, history = train_fold(ctx, net_name, net_kwargs, loss_params, fold, labels=labels, seed=seed,
                                on_epoch=on_epoch, overrides=overrides, checkpoint_dir=checkpoint_dir)
    train_s = time.perf_counter() - t0
    metrics, curves = score_fold(ctx, model, fold,
                                 threshold_labels=labels if threshold_labels is None else threshold_labels)
    metrics.update({"epochs": history["epochs"], "best_epoch": history["best_epoch"] or 0,
                    "train_seconds": train_s, "score_seconds": time.perf_counter() - t0 - train_s})
    return FoldResult(fold, model, history, metrics, curves)


@dataclass
class FoldHooks:
    """What a caller (tracking, pruning) adds to :func:`run_folds`; every hook is optional.

    ``start(fold)`` returns a context manager entered around the fold (e.g. a nested MLflow run);
    ``epoch(fold, epoch, losses)`` is called after every epoch; ``end(result)`` inside the fold's context
    once the fold is scored; ``report(step, fold, value)`` after the context closed, with the fold's main
    metric; it may raise to stop the remaining folds (Optuna's pruning).
    """

    start: Callable | None = None
    epoch: Callable | None = None
    end: Callable | None = None
    report: Callable | None = None


def run_folds(ctx: Context, net_name: str, net_kwargs: dict, loss_params: dict, *, labels=None, seed: int = 0,
              main_metric: str = "val_ap", tag: str = "", hooks: FoldHooks | None = None):
    """Cross-validate one configuration over ``ctx.folds`` (fold ``i`` trains with seed ``seed + i``).

    Returns ``(fold_metrics, best_model_dir)``: the folder (under ``ctx.workdir``) of the fold with the best
    ``main_metric``, its model's ``meta`` carrying the fold, held-out scan and metrics.
    """
    hooks = hooks or FoldHooks()
    if ctx.workdir is None:
        ctx.workdir = Path(tempfile.mkdtemp(prefix="porelab-cv-"))
    fold_metrics, best, best_dir = [], -math.inf, None
    out_root = ctx.workdir / (tag or net_name) / f"run-{time.time_ns()}"
    for step, fold in enumerate(ctx.folds):
        val_name = ctx.cv[fold].name
        with (hooks.start(fold) if hooks.start else contextlib.nullcontext()):
            on_epoch = None
            if hooks.epoch is not None:
                def on_epoch(epoch, losses, _fold=fold):
                    hooks.epoch(_fold, epoch, losses)
            result = fit_fold(ctx, net_name, net_kwargs, loss_params, fold, labels=labels, seed=seed + fold,
                              on_epoch=on_epoch)
            if hooks.end is not None:
                hooks.end(result)
            fold_metrics.append(result.metrics)
            value = result.metrics.get(main_metric, math.nan)
            if value > best or best_dir is None:
                best = value
                best_dir = out_root / f"fold{fold}"
                result.model.meta.update({"fold": fold, "val_scan": val_name, "fold_metrics": result.metrics})
                result.model.save(best_dir)
        if hooks.report is not None:
            hooks.report(step, fold, value)
    return fold_metrics, best_dir


__all__ = ["METRIC_KEYS", "Context", "FoldHooks", "FoldResult", "Scan", "clamp_threshold", "default_net_kwargs",
           "evaluate", "fit_fold", "label_source", "load_label_folder", "load_scans", "make_context",
           "mean_metrics", "run_folds", "score_fold", "train_fold"]
