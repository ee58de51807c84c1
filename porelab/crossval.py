"""Cross-validation: scans in memory, folds, and the one recipe that trains a net on a fold and scores it.

A dataset's ``cv`` scans are the cross-validation scans, leave one out: with k = ``profile.folds`` below
their number, the first k are held out in turn and every fold trains on all the others. The ``hard`` scan
(the dataset's first ``test`` scan: the challenging one) is scored on every fold and never trained on.

No label decides, by construction. A :class:`Scan` — what every decision sees — holds the grey values,
the part found from them (Algorithm 1 steps 6-8) and Algorithm 1's labels, and no label of the dataset.
The dataset's labels, where it has them, live apart in ``Context.references`` (:class:`Reference`), which
only :func:`evaluate` reads, to report. Every decision of a fold — the residual mode of an unsupervised net,
the decision threshold, the fold's main metric (hence the trial objective, the best fold, registration) —
is made on **synthetic pores injected** into the held-out scan (``porelab.injection``: the scan's own
contrast, blur and noise; placed away from Algorithm 1's candidate pores): the AP of the injected pores
against the part's other voxels (``val_ap_inj``; ``val_ap_pp_inj`` after the post-processing) and the
F1-optimal threshold on them. ``profile.labels.threshold = "alg1"`` chooses the threshold against Algorithm
1 labels instead (the paper's route). Labels are optional: a dataset of the user's own scans may have none.

Reported metrics are voxel-wise AP, ROC-AUC and Dice of the pore class inside the part: against the
dataset's labels (``val_ap`` …, inside the dataset's object mask when it gives one), against Algorithm 1
labels (``val_ap_alg1`` …), as Iuso et al. (2024) scored theirs, and on the injected pores (``…_inj``).
Tracking and pruning come in through :func:`run_folds`' hooks (``porelab.automl``).
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
    """One scan as decisions see it: raw grey values, normalised copy, the part (Algorithm 1 steps 6-8 on
    the grey values), Algorithm 1 labels. It holds no label of the dataset (see :class:`Reference`)."""

    name: str
    raw: np.ndarray
    scan: np.ndarray
    object: np.ndarray
    alg1: np.ndarray
    role: str = "cv"


@dataclass(frozen=True)
class Reference:
    """A scan's labels from the dataset (a simulation's truth, hand labels), for reporting only: ``labels``
    (bool) counted inside ``region`` (the dataset's object mask, else the part found from the scan)."""

    labels: np.ndarray
    region: np.ndarray


@dataclass
class LabelledScan(Scan):
    """A :class:`Scan` with its dataset labels (``truth``, counted inside ``region``), for benchmarks and
    tests that report against them; the pipeline never makes one (:func:`labelled`)."""

    truth: np.ndarray | None = None
    region: np.ndarray | None = None


def labelled(scans, references: dict[str, Reference]) -> list[LabelledScan]:
    """``scans`` with their labels attached (a scan without labels: ``truth`` None, ``region`` its part)."""
    import dataclasses

    out = []
    for s in scans:
        ref = references.get(s.name)
        base = {f.name: getattr(s, f.name) for f in dataclasses.fields(Scan)}
        out.append(LabelledScan(**base, truth=None if ref is None else ref.labels,
                                region=s.object if ref is None else ref.region))
    return out


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
    #: scan name → the dataset's labels; read only by :func:`evaluate` (reporting), never by a decision
    references: dict[str, Reference] = field(default_factory=dict, repr=False)


def load_scans(data_dir, *, hard: bool = True) -> tuple[list[Scan], Scan | None, object, dict[str, Reference]]:
    """A dataset (manifest) as :class:`Scan` objects, each normalised on its own, and the dataset's labels
    apart; ``(cv, hard, manifest, references)``.

    The normalisation is ``Normalisation.fit(scan)`` without a mask, exactly what ``PoreModel.predict``
    refits on every scan it scores, so training and inference see the same grey levels. Cross-validation
    needs at least 2 cv scans (``ConfigError`` otherwise). A scan's part is the object of the Algorithm 1
    pass that gives ``alg1``, whatever the dataset holds; ``references`` maps each labelled scan's name to its
    :class:`Reference` (its labels inside the dataset's object mask, else inside that part). ``hard`` is the
    first test scan.
    """
    from porelab.dataset import load_manifest
    from porelab.labels import run_algorithm1
    from porelab.normalise import Normalisation

    ds = load_manifest(data_dir)
    if len(ds.cv) < 2:
        raise ConfigError(f"{data_dir}: cross-validation needs at least 2 cv scans, found {len(ds.cv)}")

    references: dict[str, Reference] = {}

    def make(info) -> Scan:
        raw, truth, obj = info.load(mmap=False, derive_object=False)
        raw = np.ascontiguousarray(raw, dtype=np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            alg1 = run_algorithm1(raw)
        part = np.asarray(alg1.object, bool)
        if truth is not None:
            references[info.name] = Reference(np.asarray(truth) > 0, part if obj is None else np.asarray(obj) > 0)
        return Scan(info.name, raw, Normalisation.fit(raw).apply(raw), part, np.asarray(alg1.pores, bool),
                    info.role)

    cv = [make(i) for i in ds.cv]
    hard_scan = make(ds.hard) if hard and ds.hard is not None else None
    return cv, hard_scan, ds, references


def make_context(profile, data_dir, seed: int = 0, *, workdir=None, progress: bool = False,
                 folds: list[int] | None = None, hard: bool = True) -> Context:
    """Profile (or its name) + dataset folder → :class:`Context`; the folds chosen are explained in ``notes``.

    ``folds`` (indices of held-out cv scans; negative ones count from the end) replaces the profile's
    first-k choice. Without ``workdir`` a temporary folder is made when :func:`run_folds` first needs one.
    """
    prof = get_profile(profile)
    root = Path(data_dir)
    cv, hard_scan, ds, references = load_scans(root, hard=hard)
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
    return Context(prof, int(seed), cv, hard_scan, list(folds), workdir or None, root, progress, notes,
                   references=references)


def label_source(ctx: Context, labels) -> dict[str, np.ndarray]:
    """Training labels per cv scan: ``"truth"``, ``"alg1"`` (``"heuristic"``: Algorithm 1), or a folder of
    ``<scan>_pseudo.npy`` / ``<scan>.npy`` files (as ``porelab pseudolabel`` writes). ``"truth"`` on a
    dataset whose cv scans lack labels is a ``ConfigError``."""
    if labels == "truth":     # the user's explicit choice of training data, not a decision of the pipeline
        missing = [s.name for s in ctx.cv if s.name not in ctx.references]
        if missing:
            raise ConfigError(f"{ctx.dataset_root}: cv scans without labels: {', '.join(missing)}; train on "
                              "Algorithm 1 labels (heuristic) or pseudo-labels instead")
        return {s.name: ctx.references[s.name].labels for s in ctx.cv}
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
             threshold: float | None = None, reference: Reference | None = None) -> dict:
    """Reported metrics of a score: ``{prefix}_ap{suffix}``, ``_auc``, ``_dice`` against ``reference`` (the
    dataset's labels inside its region; nothing without one) and ``…_alg1`` against Algorithm 1 labels inside
    the scan's part. Dice at ``threshold`` (the model's), else at the F1-optimal threshold."""
    from porelab.metrics import evaluate_scores

    out = {}
    pairs = [("_alg1", scan.alg1, scan.object)]
    if reference is not None:
        pairs.insert(0, ("", reference.labels, reference.region))
    for family, labels, region in pairs:
        if not labels[region].any():
            continue
        m = evaluate_scores(score, labels, mask=region, threshold=threshold)
        for k in METRIC_KEYS:
            out[f"{prefix}_{k}{suffix}{family}"] = float(m[k])
    return out


def injection_for(ctx: Context, scan: Scan):
    """The synthetic pores injected into ``scan`` for label-free validation (``porelab.injection``), made
    once per scan and context and cached: every trial and fold of a search is judged on the same pores.
    Their seed comes from the context's seed and the scan's name; they keep out of the skin the nets'
    post-processing suppresses and away from Algorithm 1's candidate pores (dilated by 2 voxels), so that
    an injected pore never lands on a real one. Where those candidates leave no room (a scan whose
    artefacts Algorithm 1 takes for pores), the candidates themselves, then nothing, are kept clear of;
    ``Injection.pores`` and the fold's metrics say how many pores were placed."""
    key = ("injection", scan.name)
    if key not in ctx.cache:
        import zlib

        from scipy import ndimage

        from porelab.injection import inject_pores

        seed = (int(ctx.seed) * 1_000_003 + zlib.crc32(scan.name.encode())) % (2 ** 31)
        last = None
        for grow in (2, 0, None):
            exclude = None if grow is None else (
                ndimage.binary_dilation(scan.alg1, iterations=grow) if grow else scan.alg1.copy())
            try:
                ctx.cache[key] = inject_pores(scan.raw, scan.object, seed=seed, exclude=exclude,
                                              margin=int(ctx.profile.skin) + 1)
                ctx.cache[("injection_exclude", scan.name)] = exclude
                break
            except ConfigError as exc:
                last = exc
        else:
            raise last
    return ctx.cache[key]


def injected_threshold(ctx: Context, score: np.ndarray, scan: Scan) -> float:
    """The F1-optimal decision threshold on the pores injected into ``scan``: positives are the voxels at
    least half inside an injected pore — the convention of labels — and every other voxel of the part
    counts as a negative, the partial-volume shell around each injected pore included (ignoring that shell,
    as the AP does, pulls the threshold down and fattens every pore); only Algorithm 1's candidate pores
    (native pores, maybe) are left out. Missing (NaN) scores are left out."""
    from porelab.metrics import best_f1_threshold

    inj = injection_for(ctx, scan)
    exclude = ctx.cache.get(("injection_exclude", scan.name))
    counted = scan.object & np.isfinite(score)
    if exclude is not None:
        counted &= ~exclude
    thr = best_f1_threshold(score, inj.mask, mask=counted)
    return float(thr[0] if isinstance(thr, tuple) else thr)


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


def _scores(model, raw: np.ndarray, residuals: tuple) -> dict:
    """``{residual: (A, A_pores)}`` of an unsupervised model, ``{None: (probability,)}`` of a supervised one."""
    if model.kind == "unsupervised":
        return model.unsupervised_scores(raw, residuals)
    return {None: (model.predict(raw, progress=False),)}


def score_fold(ctx: Context, model, fold: int):
    """Make the fold's decisions on injected pores, then score the held-out and the hard scan to report;
    ``(metrics, curves)``. Sets the model's threshold (and residual).

    Decisions (label-free; :func:`injection_for`): an unsupervised net scores every residual of
    ``search.residuals`` on the injected held-out scan from one reconstruction and keeps the one with the
    best post-processed AP on the injected pores (``val_ap_pp_inj_<mode>``); the decision threshold is
    F1-optimal on the injected pores (``profile.labels.threshold = "alg1"``: against Algorithm 1 labels of
    the held-out scan), clamped when it labels more than ``labels.max_label_fraction`` of the part
    (:func:`clamp_threshold`). ``val_ap_inj`` (``val_ap_pp_inj`` after the post-processing) is the fold's
    label-free score. Then the clean held-out scan and the hard scan are scored and :func:`evaluate`
    reports against the dataset's labels (``ctx.references``) and Algorithm 1; PR/ROC curves are kept for
    scans with labels. The hard scan takes no part in a fold's decisions (the registration's choice
    between the best fold and the fold ensemble is made on pores injected into it:
    ``porelab.automl.ensemble``).
    """
    from porelab.injection import injected_metrics

    val = ctx.cv[fold]
    unsup = model.kind == "unsupervised"
    residuals = tuple(ctx.profile.search.residuals) if unsup else (None,)
    metrics: dict = {}
    inj = injection_for(ctx, val)
    s_inj = _scores(model, inj.scan, residuals)
    if unsup:
        choice = {mode: float(injected_metrics(s_inj[mode][1], inj, val.object)["ap"]) for mode in residuals}
        metrics.update({f"val_ap_pp_inj_{mode}": v for mode, v in choice.items()})
        model.residual = max(residuals, key=lambda m: (choice[m], m == "abs"))
        model.meta["residual_choice"] = {"chosen": model.residual, "val_ap_pp_inj": choice}
    chosen = s_inj[model.residual if unsup else None]
    im = injected_metrics(chosen[-1], inj, val.object)
    key = "val_{}_pp_inj" if unsup else "val_{}_inj"
    metrics.update({key.format(k): float(im[k]) for k in ("ap", "auc", "dice", "f1")})
    if unsup:
        metrics["val_ap_inj"] = float(injected_metrics(chosen[0], inj, val.object)["ap"])
    metrics["injected_pores"] = len(inj.pores)
    model.meta["injection"] = {"scan": val.name, "seed": int(inj.seed), "pores": len(inj.pores),
                               "acquisition": inj.acquisition.to_dict()}

    targets = [("val", val)] + ([("hard", ctx.hard)] if ctx.hard is not None else [])
    scores = {prefix: _scores(model, s.raw, (model.residual,) if unsup else (None,))
              [model.residual if unsup else None] for prefix, s in targets}
    main = scores["val"][-1]
    if ctx.profile.labels.threshold == "alg1" and val.alg1[val.object].any():
        from porelab.model import choose_threshold

        threshold, policy = choose_threshold(main, val.alg1, kind=model.kind, object_mask=val.object)
        policy = f"{policy} (Algorithm 1 labels of {val.name})"
    else:
        threshold = injected_threshold(ctx, chosen[-1], val)
        policy = f"f1-optimal on {len(inj.pores)} pores injected into held-out scan {val.name}"
    model.threshold, policy = clamp_threshold(main, val.object, threshold, policy,
                                              float(ctx.profile.labels.max_label_fraction))
    model.meta["threshold_policy"] = policy

    curves = {}
    for prefix, s in targets:
        sc, ref = scores[prefix], ctx.references.get(s.name)
        if unsup:
            metrics.update(evaluate(sc[0], s, prefix, threshold=None, reference=ref))
            metrics.update(evaluate(sc[1], s, prefix, "_pp", threshold=model.threshold, reference=ref))
            if ref is not None:
                curves[f"{prefix} raw"] = (sc[0], ref.labels, ref.region)
                curves[f"{prefix} post-processed"] = (sc[1], ref.labels, ref.region)
        else:
            metrics.update(evaluate(sc[0], s, prefix, threshold=model.threshold, reference=ref))
            if ref is not None:
                curves[prefix] = (sc[0], ref.labels, ref.region)
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
             labels: dict[str, np.ndarray] | None = None, seed: int = 0,
             on_epoch=None, overrides: dict | None = None, checkpoint_dir=None) -> FoldResult:
    """Train a net on a fold and choose its threshold: :func:`train_fold` then :func:`score_fold`.

    The one recipe behind ``porelab train`` (one fold: the last cv scan validates), ``porelab cv`` and every
    trial of the AutoML pipeline. ``labels`` are the training labels of supervised nets; the threshold is
    chosen label-free (:func:`score_fold`). The metrics get the epochs, the best epoch and the training and
    scoring seconds.
    """
    t0 = time.perf_counter()
    model, history = train_fold(ctx, net_name, net_kwargs, loss_params, fold, labels=labels, seed=seed,
                                on_epoch=on_epoch, overrides=overrides, checkpoint_dir=checkpoint_dir)
    train_s = time.perf_counter() - t0
    metrics, curves = score_fold(ctx, model, fold)
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
              main_metric: str = "val_ap_inj", tag: str = "", hooks: FoldHooks | None = None):
    """Cross-validate one configuration over ``ctx.folds`` (fold ``i`` trains with seed ``seed + i``).

    Returns ``(fold_metrics, best_model_dir)``: the folder (under ``ctx.workdir``) of the fold with the best
    ``main_metric``; every fold's model is saved beside it (``fold<k>``), its ``meta`` carrying the fold,
    held-out scan and metrics.
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
            # every fold's model is kept (a fold ensemble may be registered: porelab.automl.ensemble)
            result.model.meta.update({"fold": fold, "val_scan": val_name, "fold_metrics": result.metrics})
            result.model.save(out_root / f"fold{fold}")
            if value > best or best_dir is None:
                best = value
                best_dir = out_root / f"fold{fold}"
        if hooks.report is not None:
            hooks.report(step, fold, value)
    return fold_metrics, best_dir


__all__ = [
    "METRIC_KEYS",
    "Context",
    "FoldHooks",
    "FoldResult",
    "LabelledScan",
    "Reference",
    "Scan",
    "clamp_threshold",
    "default_net_kwargs",
    "evaluate",
    "fit_fold",
    "injected_threshold", "injection_for",
    "label_source",
    "labelled",
    "load_label_folder",
    "load_scans",
    "make_context",
    "mean_metrics",
    "run_folds",
    "score_fold",
    "train_fold",
]
