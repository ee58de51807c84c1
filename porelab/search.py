"""The AutoML pipeline (``mlflow run . -e search``): Optuna studies, cross-validation, registry, tables.

Design note §5, the experiments of Iuso et al. (2024) as one job:

1. data: a dataset manifest (or simulate one); the ``cv`` scans are the cross-validation scans, leave one
   out (the profile's ``folds``: with k below the number of cv scans the first k scans are held out in
   turn); the ``hard`` scan is the challenging test scan, never trained on;
2. unsupervised study ``<study>-unsupervised``: architecture (VAE family) + width, latent size, KL weight;
   a trial trains one model per fold, scores the held-out and the hard scan with and without the surface
   post-processing (eq. (2)-(3)), reports fold by fold to a median pruner; value = mean post-processed
   validation AP;
3. the best trial's model (the fold with the best validation AP) is registered as ``porelab-unsupervised``
   and promoted by ``registry/policy.json``;
4. pseudo-labels: ``models:/porelab-unsupervised@production`` is loaded by name, scores every cv scan,
   threshold = the model's, small pores suppressed (policy);
5. supervised study ``<study>-supervised``: FTL α, β, γ + architecture (UNet family), trained on the
   pseudo-labels (``paper``: the paper's grid via ``GridSampler``; else TPE); value = mean validation AP;
   with ``profile.heuristic_comparison`` the best configuration is retrained on Algorithm 1 labels;
6. the best is registered as ``porelab-supervised`` and promoted;
7. the parent run gets tables like the paper's Tables 3-7 (mean ± 95 % CI over folds), PR/ROC plots, the
   complexity table and the Optuna plots.

Metrics: voxel-wise AP, ROC-AUC and Dice of the pore class, counted inside the part (the dataset's object
mask), against the exact truth of the simulated scans and, as a second family (suffix ``_alg1``), against
Algorithm 1 labels as the paper did. Runs nest: parent → study → trial → fold.

MLflow and Optuna are imported inside functions (through :mod:`porelab.tracking`), so importing this
module stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from porelab.config import Profile, get_profile
from porelab.errors import ConfigError

UNSUPERVISED_NAME = "porelab-unsupervised"
SUPERVISED_NAME = "porelab-supervised"

#: architectures searched per profile (the paper's five each; smaller sets where CPU time is short)
DEFAULT_UNSUPERVISED_NETS = {"smoke": ("cevae",), "quick": ("vae", "cevae"),
                             "paper": ("vae", "cevae", "gmvae", "vqvae", "rvvae")}
DEFAULT_SUPERVISED_NETS = {"smoke": ("unet",), "quick": ("unet", "unetpp"),
                           "paper": ("unet", "mssunet", "unetpp", "unet3p", "accunet")}
#: width multipliers (× profile.net_scale) searched
DEFAULT_WIDTHS = {"smoke": (1.0,), "quick": (1.0, 2.0), "paper": (0.5, 1.0)}
#: the paper's FTL grid (Iuso et al. 2024, §4.3): α, β ∈ linspace(0.1, 0.9, 4), γ ∈ {1/3, …, 2}
PAPER_ALPHAS = tuple(float(v) for v in np.linspace(0.1, 0.9, 4))
PAPER_GAMMAS = (1 / 3, 1 / 2, 2 / 3, 1.0, 4 / 3, 3 / 2, 5 / 3, 2.0)
#: the paper's FTL optimum (§5.1, Tables 1-2), the first trial of every TPE supervised study
PAPER_FTL_OPTIMUM = {"alpha": 0.633, "beta": 0.1, "gamma": 1.0}
#: voxels; larger than the simulator's largest gas pore (r 1-4), so a closing fills every such pore. Measured
#: on unseen quick scans (seed 12345), AP cylinders / cube: radius 3: 0.88 / 0.28, 4: 0.95 / 0.48, 5: 0.95 / 0.56
TOPHAT_RADIUS = 5
#: anomaly residuals tried on every unsupervised fold (``postprocess.anomaly_map``; ``Profile.extra["residuals"]``
#: overrides); the validation scan picks
DEFAULT_RESIDUALS = ("abs", "dark")

def pipeline_profile(profile) -> Profile:
    """The profile as the pipeline runs it: a ``Profile`` as given, a name through ``porelab.config``."""
    return profile if isinstance(profile, Profile) else get_profile(profile)


METRIC_KEYS = ("ap", "auc", "dice")


# ------------------------------------------------------------------------------------------------ data
@dataclass
class Scan:
    """One scan in memory: raw grey values, normalised copy, truth, object mask, Algorithm 1 labels."""

    name: str
    raw: np.ndarray
    scan: np.ndarray
    truth: np.ndarray
    object: np.ndarray
    alg1: np.ndarray
    role: str = "cv"


@dataclass
class Context:
    """Everything a study needs: profile, seed, scans, folds, scratch folder, policy."""

    profile: Profile
    seed: int
    cv: list[Scan]
    hard: Scan | None
    folds: list[int]
    workdir: Path
    policy: dict
    dataset_root: Path | None = None
    progress: bool = False
    notes: list[str] = field(default_factory=list)
    _baselines: dict | None = None

    def option(self, key, default):
        """A pipeline option: ``profile.extra[key]`` if present, else the per-profile default."""
        value = self.profile.extra.get(key)
        if value is not None:
            return value
        return default.get(self.profile.name, default.get("quick")) if isinstance(default, dict) else default


def load_scans(data_dir, *, progress: bool = False) -> tuple[list[Scan], Scan | None, object]:
    """Load a dataset (manifest) into :class:`Scan` objects; each scan normalised on its own.

    The normalisation is ``Normalisation.fit(scan)`` without a mask, exactly what ``PoreModel.predict``
    refits on every scan it scores, so training and inference see the same grey levels.
    """
    from porelab.labels import heuristic_labels
    from porelab.normalise import Normalisation
    from porelab.simulate.dataset import load_manifest

    ds = load_manifest(data_dir)

    def make(info) -> Scan:
        raw, truth, obj = info.load(mmap=False)
        raw = np.ascontiguousarray(raw, dtype=np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            alg1 = heuristic_labels(raw)
        return Scan(info.name, raw, Normalisation.fit(raw).apply(raw), np.asarray(truth) > 0,
                    np.asarray(obj) > 0, np.asarray(alg1, bool), info.role)

    cv = [make(i) for i in ds.cv]
    hard = make(ds.hard) if ds.hard is not None else None
    if len(cv) < 2:
        raise ConfigError(f"{data_dir}: cross-validation needs at least 2 cv scans, found {len(cv)}")
    return cv, hard, ds


def ensure_dataset(data, profile: Profile, seed: int, *, progress: bool = False) -> Path:
    """The dataset folder: ``data`` if given (must hold a manifest), else ``<store>/porelab-data/<profile>``,
    simulated with the profile's preset and ``seed`` unless a manifest is already there."""
    from porelab.simulate.dataset import simulate_dataset

    if data:
        path = Path(data).expanduser().resolve()
        if not (path / "manifest.json").is_file() and not (path.is_file() and path.suffix == ".json"):
            raise ConfigError(f"data {data!r}: no manifest.json there (create one with `porelab simulate`)")
        return path
    from porelab.tracking import store_dir

    path = store_dir() / "porelab-data" / profile.name
    if not (path / "manifest.json").is_file():
        simulate_dataset(path, preset=profile.sim_preset, seed=seed, progress=progress)
    return path


def make_context(profile="quick", data=None, seed: int = 0, *, workdir=None, progress: bool = False,
                 policy: dict | None = None) -> Context:
    """Profile + dataset → :class:`Context` (folds chosen and explained in ``notes``)."""
    from porelab.tracking import load_policy

    prof = pipeline_profile(profile)
    root = ensure_dataset(data, prof, seed, progress=progress)
    cv, hard, _ = load_scans(root, progress=progress)
    k = min(int(prof.folds), len(cv))
    notes = []
    if k < len(cv):
        notes.append(f"{k} folds over {len(cv)} cv scans: held out in turn are the first {k} "
                     f"({', '.join(s.name for s in cv[:k])}); every fold trains on all other cv scans")
    workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="porelab-search-"))
    workdir.mkdir(parents=True, exist_ok=True)
    return Context(prof, int(seed), cv, hard, list(range(k)), workdir, policy or load_policy(), root,
                   progress, notes)


def file_hashes(root: Path) -> dict:
    """SHA-256 of every file of a dataset folder (manifest included)."""
    out = {}
    for p in sorted(Path(root).iterdir()):
        if p.is_file():
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            out[p.name] = h.hexdigest()
    return out


def git_commit() -> str:
    """The project's git commit (``unknown`` outside a checkout), ``+dirty`` if files changed."""
    from porelab.tracking import repo_dir

    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_dir(), capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo_dir(),
                               capture_output=True, text=True, timeout=10, check=False).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# --------------------------------------------------------------------------------------- classical rows
def tophat_score(scan: Scan, radius: int = TOPHAT_RADIUS, smooth: float | None = None) -> np.ndarray:
    """Black top-hat of the normalised scan inside the part: grey closing (ball) minus scan.

    A classical pore score (dark holes smaller than the ball light up), the baseline row in every table.
    The scan is first Gaussian-filtered with the VAEs' pre-filter (``smooth``, default
    ``porelab.postprocess.DEFAULT_SMOOTH``), so that the row shows what learning adds to the same generic
    steps: measured on the unseen quick cube, AP 0.56 → 0.84 with it (cylinders 0.95 either way).
    """
    from scipy import ndimage
    from skimage.morphology import ball

    from porelab.postprocess import DEFAULT_SMOOTH

    smooth = DEFAULT_SMOOTH if smooth is None else float(smooth)
    x = ndimage.gaussian_filter(scan.scan.astype(np.float32), smooth, mode="nearest") if smooth > 0 else scan.scan
    closed = ndimage.grey_closing(x, footprint=ball(radius))
    return np.where(scan.object, closed - x, 0.0).astype(np.float32)


def baselines(ctx: Context) -> dict:
    """Fold metrics of the two classical rows: Algorithm 1 labels used as a score, and the black top-hat."""
    if ctx._baselines is not None:
        return ctx._baselines
    rows = {"Algorithm 1 labels (as score)": [], "black top-hat": []}
    hard_scores = {}
    if ctx.hard is not None:
        hard_scores = {"Algorithm 1 labels (as score)": ctx.hard.alg1.astype(np.float32),
                       "black top-hat": tophat_score(ctx.hard)}
    hard_metrics = {k: evaluate(v, ctx.hard, "hard") for k, v in hard_scores.items()}
    for i in ctx.folds:
        s = ctx.cv[i]
        for name, score in (("Algorithm 1 labels (as score)", s.alg1.astype(np.float32)),
                            ("black top-hat", tophat_score(s))):
            m = evaluate(score, s, "val")
            m.update(hard_metrics.get(name, {}))
            rows[name].append(m)
    ctx._baselines = rows
    return rows


# ------------------------------------------------------------------------------------------ evaluation
def evaluate(score: np.ndarray, scan: Scan, prefix: str, suffix: str = "",
             threshold: float | None = None) -> dict:
    """``{prefix}_ap{suffix}``, ``_auc``, ``_dice`` vs the truth and ``…_alg1`` vs Algorithm 1 labels,
    counted inside the part. Dice at ``threshold`` (the model's), else at the F1-optimal threshold."""
    from porelab.metrics import evaluate_scores

    out = {}
    for family, labels in (("", scan.truth), ("_alg1", scan.alg1)):
        if not labels[scan.object].any():
            continue
        m = evaluate_scores(score, labels, mask=scan.object, threshold=threshold)
        for k in METRIC_KEYS:
            out[f"{prefix}_{k}{suffix}{family}"] = float(m[k])
    return out


def unsupervised_scores(model, raw: np.ndarray, residuals=None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{residual: (A, A_pores)}``: the anomaly score without and with the surface post-processing, for
    each residual mode (``porelab.postprocess.anomaly_map``: ``"abs"`` = the paper's ``|x − x̂|``,
    ``"dark"`` = ``max(0, x̂ − x)``; default: the model's own).

    One reconstruction (``PoreModel.reconstruct``, the same grid inference as ``PoreModel.predict``)
    serves all of them. ``A`` is the residual against the model's ``smooth``-filtered scan; ``A_pores`` is
    what ``PoreModel.predict`` returns: eq. (2)-(3) (Iuso et al. 2024) if ``model.postprocess``, then the
    skin suppression (``model.skin``).
    """
    from porelab.postprocess import anomaly_map, apply_skin, interior_mask, surface_compensation

    x_hat = model.reconstruct(raw)
    x = model.normalisation.refit(raw).apply(raw)
    keep = interior_mask(raw, model.skin)
    out = {}
    for mode in (residuals or (model.residual,)):
        a = anomaly_map(x, x_hat, residual=mode, smooth=model.smooth)
        pp = np.asarray(surface_compensation(a, x_hat)[0], dtype=np.float32) if model.postprocess else a.copy()
        out[mode] = (a, apply_skin(pp, keep))
    return out


# ---------------------------------------------------------------------------------------- one fold
def train_fold(ctx: Context, net_name: str, net_kwargs: dict, loss_params: dict, fold: int, *,
               labels: dict[str, np.ndarray] | None = None, seed: int = 0, on_epoch=None):
    """Train ``net_name`` on every cv scan but ``ctx.cv[fold]`` (early stopping on it); return
    ``(PoreModel, history)``. ``labels`` (name → mask) are the training labels of supervised nets."""
    from porelab.model import PoreModel
    from porelab.nets import build, is_supervised
    from porelab.normalise import Normalisation
    from porelab.runtime import seed_everything
    from porelab.train import Sample, TrainConfig, fit

    supervised = is_supervised(net_name)
    if supervised and labels is None:
        raise ConfigError(f"supervised net {net_name!r} needs training labels")
    config = TrainConfig.from_profile(ctx.profile, net=net_name, loss_params=dict(loss_params))

    def sample(s: Scan) -> Sample:
        return Sample(s.scan, labels[s.name].astype(np.uint8) if supervised else None, s.name)

    train = [sample(s) for i, s in enumerate(ctx.cv) if i != fold]
    val = [sample(ctx.cv[fold])]
    seed_everything(seed)       # the initial weights too, not only the training: a fold is reproducible
    net = build(net_name, **net_kwargs)
    net, history = fit(net, net_name, train, val, config, on_epoch=on_epoch, seed=seed, progress=ctx.progress,
                       rebuild=lambda _k: build(net_name, **net_kwargs))
    norm = Normalisation.fit(ctx.cv[0 if fold else 1].raw)
    model = PoreModel.from_trained(net, net_name, norm, ctx.profile, net_kwargs=dict(net_kwargs),
                                   patch=config.patch, postprocess=not supervised)
    return model, history


def score_fold(ctx: Context, model, fold: int, *, threshold_labels: dict[str, np.ndarray] | None = None):
    """Score the held-out and the hard scan; set the model's threshold; return ``(metrics, curves)``.

    Threshold (design note §6: F1-optimal on a labelled validation scan): for supervised nets against the
    held-out scan's training-label source (``threshold_labels``, the pseudo-labels); for unsupervised
    nets against the policy's ``threshold_labels``: ``"truth"`` (default; the held-out scan's truth mask)
    or ``"alg1"`` (Algorithm 1 labels: no truth needed, but on the simulated scans those labels reach a
    Dice of only ≈ 0.16 against the truth, so the threshold they give is poor). Never the hard scan.
    """
    from porelab.model import choose_threshold

    val = ctx.cv[fold]
    targets = [("val", val)] + ([("hard", ctx.hard)] if ctx.hard is not None else [])
    metrics, curves, scores = {}, {}, {}
    unsup = model.kind == "unsupervised"
    residuals = tuple(ctx.option("residuals", DEFAULT_RESIDUALS)) if unsup else ()
    for prefix, s in targets:
        if unsup:
            scores[prefix] = unsupervised_scores(model, s.raw, residuals)
        else:
            scores[prefix] = (model.predict(s.raw, progress=False),)
    if threshold_labels is not None:
        ref = threshold_labels[val.name]
    elif ctx.policy.get("threshold_labels", "truth") == "alg1" or not val.truth[val.object].any():
        ref = val.alg1
    else:
        ref = val.truth
    if unsup:     # the residual mode, like the threshold, is chosen on the labelled validation scan
        from porelab.metrics import evaluate_scores

        choice = {}
        for mode in residuals:
            choice[mode] = float(evaluate_scores(scores["val"][mode][1], ref, mask=val.object)["ap"])
            metrics[f"val_ap_pp_{mode}"] = choice[mode]
        model.residual = max(residuals, key=lambda m: (choice[m], m == "abs"))
        model.meta["residual_choice"] = {"chosen": model.residual, "val_ap_pp": choice}
        scores = {k: v[model.residual] for k, v in scores.items()}
    main = scores["val"][-1]
    model.threshold, policy = choose_threshold(main, ref, kind=model.kind, object_mask=val.object)
    inside = np.asarray(main)[val.object]
    max_frac = float(ctx.policy.get("max_label_fraction", 0.1))
    frac = float(np.mean(inside >= model.threshold)) if inside.size else 0.0
    if frac > max_frac:      # degenerate (a score that does not separate pores labels most of the part)
        model.threshold = float(np.percentile(inside, 100.0 * (1.0 - max_frac / 10.0)))
        policy = (f"{100 * (1 - max_frac / 10):g}th percentile in the part (the {policy} threshold "
                  f"labelled {100 * frac:.0f} % of it, above max_label_fraction {max_frac:g})")
    model.meta["threshold_policy"] = policy
    for prefix, s in targets:
        sc = scores[prefix]
        if unsup:
            metrics.update(evaluate(sc[0], s, prefix, threshold=None))
            metrics.update(evaluate(sc[1], s, prefix, "_pp", threshold=model.threshold))
            curves[f"{prefix} raw"] = (sc[0], s.truth, s.object)
            curves[f"{prefix} post-processed"] = (sc[1], s.truth, s.object)
        else:
            metrics.update(evaluate(sc[0], s, prefix, threshold=model.threshold))
            curves[prefix] = (sc[0], s.truth, s.object)
    metrics["threshold"] = float(model.threshold)
    return metrics, curves


def run_folds(ctx: Context, net_name: str, net_kwargs: dict, loss_params: dict, *, labels=None,
              trial=None, seed: int = 0, main_metric: str = "val_ap", tag: str = ""):
    """Cross-validate one configuration, each fold a nested MLflow run under the active run.

    Reports ``main_metric`` fold by fold to ``trial`` (Optuna) and raises ``TrialPruned`` when the
    pruner says so. Returns ``(fold_metrics, best_model_dir)``: the folder of the fold with the best
    ``main_metric`` (saved under ``ctx.workdir``).
    """
    import mlflow

    from porelab import tracking
    from porelab.metrics import plot_pr_roc

    fold_metrics, best, best_dir = [], -math.inf, None
    out_root = ctx.workdir / (tag or net_name) / f"run-{time.time_ns()}"
    for step, fold in enumerate(ctx.folds):
        val_name = ctx.cv[fold].name
        with tracking.child_run(f"fold-{fold}", tags={"porelab.level": "fold", "porelab.fold": str(fold),
                                                      "porelab.val_scan": val_name}) as run:
            if trial is not None:
                trial.set_user_attr(f"mlflow_fold_{fold}", run.info.run_id)
            mlflow.log_params({"fold": fold, "val_scan": val_name,
                               "train_scans": ",".join(s.name for i, s in enumerate(ctx.cv) if i != fold)})

            def on_epoch(epoch, losses):
                tracking.check_interrupted()
                tracking.log_metrics({"train_loss": losses["train_loss"], "val_loss": losses["val_loss"],
                                      "epoch_seconds": losses["seconds"]}, step=epoch)

            t0 = time.perf_counter()
            model, history = train_fold(ctx, net_name, net_kwargs, loss_params, fold, labels=labels,
                                        seed=seed + fold, on_epoch=on_epoch)
            train_s = time.perf_counter() - t0
            metrics, curves = score_fold(ctx, model, fold, threshold_labels=labels)
            metrics.update({"epochs": history["epochs"], "best_epoch": history["best_epoch"] or 0,
                            "train_seconds": train_s, "score_seconds": time.perf_counter() - t0 - train_s})
            tracking.log_metrics(metrics)
            with tempfile.TemporaryDirectory() as tmp:
                png = Path(tmp) / f"pr_roc_fold{fold}.png"
                plot_pr_roc(curves, png, title=f"{net_name} fold {fold} (held out {val_name})")
                mlflow.log_artifact(str(png))
            fold_metrics.append(metrics)
            value = metrics.get(main_metric, math.nan)
            if value > best or best_dir is None:
                best = value
                best_dir = out_root / f"fold{fold}"
                model.meta.update({"fold": fold, "val_scan": val_name, "fold_metrics": metrics})
                model.save(best_dir)
        if trial is not None:
            import optuna

            trial.report(float(value) if math.isfinite(value) else 0.0, step=step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after fold {fold} ({main_metric}={value:.4f})")
    return fold_metrics, best_dir


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


# ------------------------------------------------------------------------------------------ studies
def unsupervised_space(trial, ctx: Context) -> tuple[str, dict, dict]:
    """Suggest ``(net, net_kwargs, loss_params)`` for the unsupervised study."""
    from porelab.nets import get_class

    nets = tuple(ctx.option("unsupervised_nets", DEFAULT_UNSUPERVISED_NETS))
    widths = tuple(ctx.option("widths", DEFAULT_WIDTHS))
    name = trial.suggest_categorical("net", nets)
    width = trial.suggest_categorical("width", widths) if len(widths) > 1 else widths[0]
    patch = (ctx.profile.extra.get("unsupervised_train") or {}).get("patch", ctx.profile.patch)
    kwargs = {"scale": float(ctx.profile.net_scale * width), "patch_size": int(patch)}
    loss: dict = {}
    if name in ("vae", "cevae", "rvvae"):
        base = tuple(get_class(name).default_depths)
        latent = trial.suggest_categorical(f"{name}_latent_channels", (base[4] // 2, base[4]))
        kwargs["channel_depths"] = [*base[:4], int(latent)]
        loss["kl_weight"] = trial.suggest_float(f"{name}_kl_weight", 1e-6, 1e-3, log=True)
    elif name == "gmvae":
        loss["w_weight"] = trial.suggest_float("gmvae_w_weight", 1e-8, 1e-5, log=True)
    elif name == "vqvae":
        kwargs["embedding_dim"] = trial.suggest_categorical("vqvae_embedding_dim", (32, 64))
        loss["commitment"] = trial.suggest_float("vqvae_commitment", 0.1, 0.5)
    return name, kwargs, loss


def supervised_space(trial, ctx: Context) -> tuple[str, dict, dict]:
    """Suggest ``(net, net_kwargs, loss_params)``: FTL α, β, γ (Iuso et al. 2024, eq. (1)), architecture."""
    nets = tuple(ctx.option("supervised_nets", DEFAULT_SUPERVISED_NETS))
    name = trial.suggest_categorical("net", nets)
    if ctx.profile.grid_search:
        alpha = trial.suggest_categorical("alpha", PAPER_ALPHAS)
        beta = trial.suggest_categorical("beta", PAPER_ALPHAS)
        gamma = trial.suggest_categorical("gamma", PAPER_GAMMAS)
    else:
        alpha = trial.suggest_float("alpha", 0.1, 0.9)
        beta = trial.suggest_float("beta", 0.1, 0.9)
        gamma = trial.suggest_float("gamma", 1 / 3, 2.0)
    kwargs = {"scale": float(ctx.profile.net_scale), **dict(ctx.profile.extra.get("supervised_net_kwargs") or {})}
    return name, kwargs, {"alpha": alpha, "beta": beta, "gamma": gamma}


def make_study(name: str, storage, *, seed: int, grid: dict | None = None):
    """Create or load (``load_if_exists``) a maximising study; TPE (seeded) or the paper's grid."""
    import optuna

    sampler = optuna.samplers.GridSampler(grid, seed=seed) if grid else optuna.samplers.TPESampler(seed=seed)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    return optuna.create_study(study_name=name, storage=storage, direction="maximize", sampler=sampler,
                               pruner=pruner, load_if_exists=True)


def _objective(ctx: Context, kind: str, labels=None):
    """The Optuna objective of the ``kind`` ("unsupervised"/"supervised") study: one trial = k folds."""
    from porelab import tracking

    space = unsupervised_space if kind == "unsupervised" else supervised_space
    main_metric = "val_ap_pp" if kind == "unsupervised" else "val_ap"

    def objective(trial):
        for k, v in tracking.worker_tag().items():
            trial.set_user_attr(k, v)
        name, net_kwargs, loss = space(trial, ctx)
        tags = {"porelab.level": "trial", "optuna.study": trial.study.study_name,
                "optuna.trial": str(trial.number), "porelab.net": name}
        with tracking.child_run(f"trial-{trial.number}-{name}", tags=tags) as run:
            trial.set_user_attr("mlflow_run_id", run.info.run_id)
            tracking.log_params({"net": name, "net_kwargs": net_kwargs, "loss": loss, **trial.params})
            folds, best_dir = run_folds(ctx, name, net_kwargs, loss, labels=labels, trial=trial,
                                        seed=ctx.seed * 1000 + trial.number * 10, main_metric=main_metric,
                                        tag=f"{kind}/trial{trial.number}")
            summary = mean_metrics(folds)
            tracking.log_metrics(summary)
            import mlflow

            mlflow.log_artifacts(str(best_dir), artifact_path="model")
            trial.set_user_attr("net", name)
            trial.set_user_attr("net_kwargs", net_kwargs)
            trial.set_user_attr("loss", loss)
            trial.set_user_attr("fold_metrics", _clean(folds))
            trial.set_user_attr("model_dir", str(best_dir))
            value = summary.get(main_metric, math.nan)
            if not math.isfinite(value):
                raise ConfigError(f"trial {trial.number}: {main_metric} is not finite (no pores in the "
                                  "held-out scans?)")
            return float(value)

    return objective


def _clean(obj):
    return json.loads(json.dumps(obj, default=float).replace("NaN", "null"))


def run_study(ctx: Context, kind: str, study_name: str, storage, n_trials: int, *, labels=None):
    """Run ``n_trials`` trials of the ``kind`` study in a nested MLflow run ``study-<kind>``; return it.

    Resumes a study of the same name; trials whose worker died are marked FAIL first. A trial that
    raises is recorded FAIL (its runs FAILED) and the study goes on.
    """
    import mlflow
    import optuna

    from porelab import tracking

    grid = None
    if kind == "supervised" and ctx.profile.grid_search:
        grid = {"net": list(ctx.option("supervised_nets", DEFAULT_SUPERVISED_NETS)),
                "alpha": list(PAPER_ALPHAS), "beta": list(PAPER_ALPHAS), "gamma": list(PAPER_GAMMAS)}
    full_name = f"{study_name}-{kind}"
    study = make_study(full_name, storage, seed=ctx.seed, grid=grid)
    orphans = tracking.fail_orphaned_trials(study)
    if not grid:   # another seed per resumption so a resumed study does not replay the same suggestions
        study.sampler = optuna.samplers.TPESampler(seed=ctx.seed * 1000 + len(study.trials))
        if kind == "supervised" and not study.trials:
            # TPE starts from the paper's optimum: with a high β (FP weight) and few steps the UNets were
            # measured to collapse to "no pore" (validation FTL 1.0), while α 0.633, β 0.1, γ 1 learned.
            nets = tuple(ctx.option("supervised_nets", DEFAULT_SUPERVISED_NETS))
            study.enqueue_trial({"net": nets[0], **PAPER_FTL_OPTIMUM})
    with tracking.child_run(f"study-{kind}", tags={"porelab.level": "study", "optuna.study": full_name}):
        defaults = DEFAULT_UNSUPERVISED_NETS if kind == "unsupervised" else DEFAULT_SUPERVISED_NETS
        tracking.log_params({"study_name": full_name, "n_trials": n_trials, "sampler":
                             type(study.sampler).__name__, "pruner": "MedianPruner(n_startup_trials=2)",
                             "orphaned_trials_failed": len(orphans),
                             "nets": ",".join(ctx.option(f"{kind}_nets", defaults))})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=optuna.exceptions.ExperimentalWarning)
            # (the callback stops the loop if a SIGTERM was swallowed while the trial ended)
            study.optimize(_objective(ctx, kind, labels), n_trials=n_trials, catch=(Exception,),
                           gc_after_trial=True, callbacks=[tracking.check_interrupted])
        log_study(study, kind)
    if mlflow.active_run() is not None:      # the plots and the trials table on the parent run as well
        log_study(study, kind, metrics=False)
    return study


def log_study(study, kind: str, *, metrics: bool = True) -> None:
    """Trials table and Optuna plots (history; importances with ≥ 2 complete trials) on the active run;
    with ``metrics`` also the trial counts and the best value."""
    import mlflow
    from optuna.trial import TrialState

    from porelab import tracking

    trials = study.get_trials(deepcopy=False)
    rows = [{"number": t.number, "state": t.state.name, "value": t.value, **t.params,
             "worker": f"{t.user_attrs.get('host', '')}:{t.user_attrs.get('pid', '')}"} for t in trials]
    mlflow.log_text(_csv(rows), f"optuna/{kind}_trials.csv")
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if metrics:
        tracking.log_metrics({"trials_complete": len(complete), "trials_total": len(trials),
                              "trials_pruned": sum(t.state == TrialState.PRUNED for t in trials),
                              "trials_failed": sum(t.state == TrialState.FAIL for t in trials)})
    if complete and metrics:
        tracking.log_metrics({"best_value": study.best_value})
    import optuna.visualization.matplotlib as ovm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plots = [("optimization_history", ovm.plot_optimization_history)]
        if len(complete) >= 2:
            plots.append(("param_importances", ovm.plot_param_importances))
        for name, fn in plots:
            try:
                ax = fn(study)
                fig = (ax if not hasattr(ax, "figure") else ax.figure)
                if hasattr(fig, "tight_layout"):
                    fig.tight_layout()
                tracking.log_figure(fig, f"optuna/{kind}_{name}.png")
            except (ValueError, RuntimeError, ZeroDivisionError, IndexError) as exc:
                mlflow.set_tag(f"optuna.{name}_skipped", str(exc)[:250])


def _csv(rows: list[dict]) -> str:
    import csv
    import io

    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------- registry
def register_best(study, registered_name: str, ctx: Context, *, extra_meta: dict | None = None) -> dict:
    """Register the study's best trial (its best fold's model, from the trial run's artifacts) on the
    active run as ``registered_name``, then promote by the policy. Returns the promotion result.

    One trial, one version: a trial registered before (a re-run, a resumed study, another worker on the
    same study) reuses its version (``tracking.register_version``), and promotion is idempotent.
    """
    import mlflow

    from porelab import tracking
    from porelab.model import PoreModel

    best = study.best_trial
    run_id = best.user_attrs.get("mlflow_run_id") or f"optuna:{study.study_name}/{best.number}"
    metric_key = tracking.policy_for(ctx.policy, registered_name)["metric"]
    summary = mean_metrics(best.user_attrs.get("fold_metrics") or [])
    value = float(summary.get(metric_key, best.value))
    tags = {tracking.TRIAL_RUN_TAG: run_id, "porelab.net": best.user_attrs.get("net") or best.params.get("net"),
            "porelab.study": study.study_name, "porelab.trial": best.number}

    def log_model() -> str:
        local = Path(best.user_attrs.get("model_dir", ""))
        with tempfile.TemporaryDirectory() as tmp:
            if not (local / "model.json").is_file():
                local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model",
                                                                 dst_path=tmp))
            model = PoreModel.load(local)
            meta = {"threshold": model.threshold, "threshold_policy": model.meta.get("threshold_policy"),
                    "net": model.name, "net_kwargs": model.net_kwargs, "patch": model.patch,
                    "postprocess": model.postprocess, "kind": model.kind, "profile": ctx.profile.name,
                    "study": study.study_name, "trial": best.number, "trial_run": run_id,
                    "params": best.params, "metrics": {k: v for k, v in summary.items() if math.isfinite(v)},
                    "seed": ctx.seed, **(extra_meta or {})}
            info = tracking.log_pore_model(local, name=registered_name.replace("porelab-", ""), metadata=meta)
        return info.model_uri

    version, reused = tracking.register_version(registered_name, log_model,
                                                {k: v for k, v in tags.items() if v is not None})
    result = tracking.promote(registered_name, version, value, policy=ctx.policy)
    result["reused"] = reused
    return result


# ------------------------------------------------------------------------------------- pseudo-labels
def pseudo_labels(ctx: Context, model_uri: str = f"models:/{UNSUPERVISED_NAME}@production"):
    """Pseudo-labels of every cv scan from a registered model loaded by name (pyfunc).

    score → ``score >= threshold`` (the model's, from its metadata) inside the part →
    ``labels.suppress_small`` with the policy's minimum size. Returns ``(labels, stats)``; ``stats`` per
    scan: porosity %, pore count, Dice against the truth and against Algorithm 1 labels. The hard scan is
    scored for these statistics only: it is never a training label.
    """
    import mlflow.pyfunc
    from scipy import ndimage

    from porelab.labels import suppress_small
    from porelab.metrics import dice

    if Path(str(model_uri)).is_dir():                   # a local model folder (``porelab pseudolabel``)
        from porelab.model import PoreModel

        local = PoreModel.load(model_uri)
        predict, meta = (lambda x: local.predict(x, progress=False)), {"threshold": local.threshold}
    else:
        if not str(model_uri).startswith("models:/"):  # a bare registered name: its Production version
            from porelab.tracking import resolve_version

            mv = resolve_version(str(model_uri))
            model_uri = f"models:/{mv.name}/{mv.version}"
        pyfunc = mlflow.pyfunc.load_model(model_uri)
        predict, meta = pyfunc.predict, (pyfunc.metadata.metadata or {})
    threshold = float(meta.get("threshold", 0.5))
    min_voxels = int(ctx.policy.get("pseudo_label_min_voxels", 1))
    min_extent = int(ctx.policy.get("pseudo_label_min_extent", 1))
    labels, stats = {}, {}
    for s in ctx.cv + ([ctx.hard] if ctx.hard is not None else []):
        score = np.asarray(predict(s.raw), dtype=np.float32)
        if score.shape != s.raw.shape:
            raise ConfigError(f"{model_uri}: predicted shape {score.shape} != scan shape {s.raw.shape}")
        mask = suppress_small((score >= threshold) & s.object, min_voxels=min_voxels, min_extent=min_extent)
        n_obj = int(s.object.sum())
        stats[s.name] = {
            "role": s.role, "porosity_percent": 100.0 * int(mask.sum()) / max(n_obj, 1),
            "true_porosity_percent": 100.0 * int((s.truth & s.object).sum()) / max(n_obj, 1),
            "pore_count": int(ndimage.label(mask)[1]),
            "dice_vs_truth": float(dice(mask.astype(np.float32), s.truth, 0.5, mask=s.object)),
            "dice_vs_alg1": float(dice(mask.astype(np.float32), s.alg1, 0.5, mask=s.object)),
            "alg1_dice_vs_truth": float(dice(s.alg1.astype(np.float32), s.truth, 0.5, mask=s.object)),
        }
        if s.role == "cv":
            labels[s.name] = mask
    info = {"model_uri": model_uri, "threshold": threshold, "min_voxels": min_voxels,
            "min_extent": min_extent,
            "model_version": meta.get("trial_run")}
    return labels, stats, info


def log_pseudo_labels(stats: dict, info: dict, out_dir: Path | None = None, labels=None) -> None:
    """Log the label statistics (params, metrics per scan, JSON) on the active run."""
    import mlflow

    from porelab import tracking

    tracking.log_params({k: v for k, v in info.items() if v is not None})
    for name, st in stats.items():
        tracking.log_metrics({f"{name}_{k}": v for k, v in st.items() if k != "role"})
    cv = [st for st in stats.values() if st["role"] == "cv"]
    if cv:
        tracking.log_metrics({f"mean_{k}": float(np.mean([st[k] for st in cv]))
                              for k in ("porosity_percent", "pore_count", "dice_vs_truth", "dice_vs_alg1")})
    mlflow.log_dict(stats, "pseudo_labels/stats.json")
    if out_dir is not None and labels:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, m in labels.items():
            np.save(out_dir / f"{name}_pseudo.npy", m.astype(np.uint8))


# --------------------------------------------------------------------------------------------- tables
def _fmt(mean: float, half: float) -> str:
    if mean is None or not math.isfinite(mean):
        return "n/a"
    return f"{mean:.3f} ± {half:.3f}" if half is not None and math.isfinite(half) else f"{mean:.3f}"


def summary_rows(entries: list[tuple[str, str, str, list[dict]]]) -> list[dict]:
    """One row per (model, family, labels, fold metrics): mean ± 95 % CI of every val/hard metric."""
    from porelab.metrics import fold_summary

    rows = []
    for model, family, source, folds in entries:
        for pp in ("", "_pp"):
            if pp and not any("val_ap_pp" in m for m in folds):
                continue
            row = {"model": model, "family": family, "labels": source,
                   "postprocessed": "yes" if pp else ("no" if family == "unsupervised" else "n/a"),
                   "folds": len(folds)}
            for scan in ("val", "hard"):
                for k in ("ap", "auc", "dice"):
                    for fam in ("", "_alg1"):
                        key = f"{scan}_{k}{pp}{fam}"
                        mean, half = fold_summary([m[key] for m in folds if m.get(key) is not None])
                        row[f"{scan}_{k}{fam}"] = mean
                        row[f"{scan}_{k}{fam}_ci95"] = half
            rows.append(row)
    return rows


def markdown_table(rows: list[dict], cols: list[tuple[str, str]], title: str) -> str:
    """Markdown table with ``mean ± CI`` cells; ``cols`` = (key, header)."""
    head = ["model", "labels", "post-processed"] + [h for _, h in cols]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], r["labels"], r["postprocessed"]] + [_fmt(r.get(k), r.get(f"{k}_ci95"))
                                                                 for k, _ in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def best_per_net(study) -> dict[str, object]:
    """The best COMPLETE trial of each architecture in a study."""
    from optuna.trial import TrialState

    best: dict[str, object] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        net = t.params.get("net")
        if net and (net not in best or t.value > best[net].value):
            best[net] = t
    return best


def build_tables(ctx: Context, unsup_study, sup_study, heuristic_folds: list[dict] | None) -> dict[str, str]:
    """The paper-like tables (Tables 3-7 of Iuso et al. 2024) as ``{file name: text}`` (CSV + markdown)."""
    entries = []
    for name, rows in baselines(ctx).items():
        entries.append((name, "classical", "none", rows))
    if unsup_study is not None:
        for net, t in sorted(best_per_net(unsup_study).items()):
            entries.append((net, "unsupervised", "none (reconstruction)",
                            t.user_attrs.get("fold_metrics", [])))
    if sup_study is not None:
        for net, t in sorted(best_per_net(sup_study).items()):
            entries.append((net, "supervised", "pseudo-labels", t.user_attrs.get("fold_metrics", [])))
    if heuristic_folds:
        net = sup_study.best_trial.params.get("net") if sup_study is not None else "?"
        entries.append((net, "supervised", "Algorithm 1 labels", heuristic_folds))
    rows = summary_rows(entries)
    raw = [r for r in rows if r["postprocessed"] != "yes"]
    pp = [r for r in rows if r["postprocessed"] == "yes" or r["family"] == "classical"]
    sup = [r for r in rows if r["family"] == "supervised" or r["family"] == "classical"]
    truth_cols = [("val_ap", "val AP"), ("val_auc", "val ROC-AUC"), ("hard_ap", "hard AP"),
                  ("hard_auc", "hard ROC-AUC")]
    alg1_cols = [(f"{k}_alg1", f"{h} (vs Alg. 1)") for k, h in truth_cols]
    md = ["# porelab search: summary tables", "",
          (f"Profile `{ctx.profile.name}`, {len(ctx.folds)} folds (mean ± 95 % CI half-width over folds). "
           "Voxel-wise metrics of the pore class inside the part, against the exact truth of the simulated "
           "scans; the `vs Alg. 1` columns score against Algorithm 1 labels, as the paper did."), ""]
    md += [f"- {n}" for n in ctx.notes] + [""]
    md.append(markdown_table(raw, truth_cols, "Tables 3-4: all models, no post-processing"))
    md.append(markdown_table(pp, truth_cols, "Tables 5-6: unsupervised models with post-processing"))
    md.append(markdown_table(sup, truth_cols, "Table 7: supervised, pseudo-labels vs Algorithm 1 labels"))
    md.append(markdown_table(rows, alg1_cols, "All rows scored against Algorithm 1 labels"))
    if heuristic_folds and sup_study is not None:
        from porelab.metrics import welch_test

        best = sup_study.best_trial.user_attrs.get("fold_metrics", [])
        lines = []
        for key in ("val_ap", "hard_ap"):
            a = [m[key] for m in best if m.get(key) is not None]
            b = [m[key] for m in heuristic_folds if m.get(key) is not None]
            if len(a) > 1 and len(b) > 1:
                lines.append(f"- {key}: pseudo-labels {np.mean(a):.3f} vs Algorithm 1 labels "
                             f"{np.mean(b):.3f}, Welch p = {welch_test(a, b):.3g}")
        if lines:
            md += ["", "Pseudo-labels vs Algorithm 1 labels (same configuration):", *lines, ""]
    return {"tables/summary.csv": _csv(rows), "tables/summary.md": "\n".join(md)}


def complexity_rows(ctx: Context, names) -> list[dict]:
    """``porelab.complexity.table`` for ``names`` at the profile's patch and width (cheap: meta device)."""
    from porelab.complexity import table

    return table(list(names), patch=ctx.profile.patch, scale=ctx.profile.net_scale)


# --------------------------------------------------------------------------------------- the pipeline
def heuristic_comparison(ctx: Context, sup_study) -> list[dict]:
    """Retrain the best supervised configuration on Algorithm 1 labels (nested run); fold metrics."""
    from porelab import tracking

    best = sup_study.best_trial
    name, kwargs, loss = best.user_attrs["net"], best.user_attrs["net_kwargs"], best.user_attrs["loss"]
    alg1 = {s.name: s.alg1 for s in ctx.cv}
    with tracking.child_run("heuristic-labels", tags={"porelab.level": "study", "porelab.labels": "alg1"}):
        tracking.log_params({"net": name, "net_kwargs": kwargs, "loss": loss, "labels": "Algorithm 1",
                             "from_trial": best.number})
        folds, _ = run_folds(ctx, name, kwargs, loss, labels=alg1, seed=ctx.seed * 1000 + 999,
                             tag="heuristic")
        tracking.log_metrics(mean_metrics(folds))
    return folds


def run_search(profile: str = "quick", data=None, n_trials: int | None = None, study_name: str = "porelab",
               storage=None, seed: int = 0, *, progress: bool = False, workdir=None) -> dict:
    """The whole AutoML pipeline (module docstring). Returns a summary dict (runs, versions, values).

    ``n_trials`` is the number of trials this call runs in each study (0/None: the profile's budgets);
    several workers with the same ``study_name`` and ``storage`` share the studies. ``storage``: Optuna
    storage (``None``/``""``: ``optuna.db`` beside ``mlflow.db``; an RDB URL; a ``.log`` journal file).
    """
    import mlflow

    from porelab import tracking

    t_start = time.perf_counter()
    prof = pipeline_profile(profile)
    if n_trials is not None and n_trials < 0:
        raise ConfigError(f"n_trials must be >= 0, got {n_trials}")
    tracking.optuna_storage_url(storage)          # bad input fails before anything is written
    if data:
        ensure_dataset(data, prof, seed)
    tracking.setup_mlflow()
    tracking.fail_orphaned_runs()                 # runs left RUNNING by workers killed hard on this host
    storage_obj = tracking.optuna_storage(storage)
    own_workdir = workdir is None
    workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="porelab-search-"))
    summary: dict = {"profile": prof.name, "study_name": study_name}
    try:
        with tracking.sigterm_as_interrupt(), \
                tracking.parent_run("search", tags={"porelab.level": "search"}) as run:
            summary["run_id"] = run.info.run_id
            ctx = make_context(prof, data, seed, workdir=workdir, progress=progress)
            n_unsup = n_trials or prof.n_trials_unsupervised
            n_sup = n_trials or prof.n_trials_supervised
            mlflow.set_tags({"porelab.profile": prof.name, "porelab.git_commit": git_commit(),
                             "porelab.study_name": study_name})
            # (keys differ from the MLproject parameters `mlflow run` logged: params cannot change)
            tracking.log_params({"profile": prof.name, "seed": seed, "dataset_dir": str(ctx.dataset_root),
                                 "study_name": study_name,
                                 "optuna_storage": tracking.optuna_storage_url(storage),
                                 "n_trials_unsupervised": n_unsup, "n_trials_supervised": n_sup,
                                 "folds": len(ctx.folds), "git_commit": git_commit()})
            mlflow.log_dict(prof.to_dict(), "profile.json")
            mlflow.log_artifact(str(ctx.dataset_root / "manifest.json"), "dataset")
            hashes = file_hashes(ctx.dataset_root)
            mlflow.log_dict(hashes, "dataset/sha256.json")
            mlflow.set_tag("porelab.dataset_sha256",
                           hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest())
            for note in ctx.notes:
                mlflow.set_tag("porelab.note.folds", note)

            # 2-3. unsupervised study, registration
            unsup = run_study(ctx, "unsupervised", study_name, storage_obj, n_unsup)
            summary["unsupervised"] = _study_summary(unsup)
            summary["unsupervised_registry"] = register_best(unsup, UNSUPERVISED_NAME, ctx)

            # 4. pseudo-labels from the production model, by name
            with tracking.child_run("pseudo-labels", tags={"porelab.level": "labels"}):
                labels, stats, info = pseudo_labels(ctx)
                log_pseudo_labels(stats, info, workdir / "pseudo_labels", labels)
            summary["pseudo_labels"] = stats

            # 5-6. supervised study on pseudo-labels, registration, heuristic comparison
            sup = run_study(ctx, "supervised", study_name, storage_obj, n_sup, labels=labels)
            summary["supervised"] = _study_summary(sup)
            summary["supervised_registry"] = register_best(sup, SUPERVISED_NAME, ctx,
                                                           extra_meta={"labels": "pseudo-labels",
                                                                       "pseudo_labels": info})
            heur = heuristic_comparison(ctx, sup) if prof.heuristic_comparison else None

            # 7. tables, complexity, plots on the parent run
            for path, text in build_tables(ctx, unsup, sup, heur).items():
                mlflow.log_text(text, path)
            nets = sorted({*best_per_net(unsup), *best_per_net(sup)})
            comp = complexity_rows(ctx, nets)
            mlflow.log_text(_csv(comp), "tables/complexity.csv")
            _log_registered_curves(ctx)
            seconds = time.perf_counter() - t_start
            tracking.log_metrics({"pipeline_seconds": seconds,
                                  "unsupervised_best_value": summary["unsupervised"]["best_value"],
                                  "supervised_best_value": summary["supervised"]["best_value"]})
            summary["seconds"] = seconds
            mlflow.log_dict(_clean(summary), "summary.json")
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return summary


def _start(profile, data, seed, storage, workdir, progress):
    from porelab import tracking

    prof = pipeline_profile(profile)
    tracking.setup_mlflow()
    tracking.fail_orphaned_runs()
    storage_obj = tracking.optuna_storage(storage) if storage is not False else None
    return prof, storage_obj


def load_label_folder(folder, ctx: Context) -> dict[str, np.ndarray]:
    """Training labels from a folder: ``<scan name>_pseudo.npy`` (as ``porelab pseudolabel`` writes) or
    ``<scan name>.npy`` for every cv scan."""
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


def run_retrain(profile: str = "quick", data=None, labels=None, n_trials: int | None = None,
                study_name: str = "porelab", storage=None, seed: int = 0, *, progress: bool = False) -> dict:
    """Steps 4-7 alone: pseudo-labels (or a label folder), supervised study, ``porelab-supervised``."""
    import mlflow

    from porelab import tracking

    prof, storage_obj = _start(profile, data, seed, storage, None, progress)
    with tempfile.TemporaryDirectory(prefix="porelab-retrain-") as tmp, tracking.sigterm_as_interrupt(), \
            tracking.parent_run("retrain", tags={"porelab.level": "search"}) as run:
        ctx = make_context(prof, data, seed, workdir=tmp, progress=progress)
        tracking.log_params({"profile": prof.name, "seed": seed, "dataset_dir": str(ctx.dataset_root),
                             "label_source": labels or "pseudo-labels", "git_commit": git_commit()})
        if labels:
            lab, info = load_label_folder(labels, ctx), {"labels": str(labels)}
        else:
            with tracking.child_run("pseudo-labels", tags={"porelab.level": "labels"}):
                lab, stats, info = pseudo_labels(ctx)
                log_pseudo_labels(stats, info)
        sup = run_study(ctx, "supervised", study_name, storage_obj, n_trials or prof.n_trials_supervised,
                        labels=lab)
        result = {"run_id": run.info.run_id, "supervised": _study_summary(sup)}
        meta = {"labels": "pseudo-labels", "pseudo_labels": info}
        result["supervised_registry"] = register_best(sup, SUPERVISED_NAME, ctx, extra_meta=meta)
        heur = heuristic_comparison(ctx, sup) if prof.heuristic_comparison else None
        for path, text in build_tables(ctx, None, sup, heur).items():
            mlflow.log_text(text, path)
    return result


def run_cv(net: str, profile: str = "quick", data=None, labels: str = "truth", seed: int = 0, *,
           net_kwargs: dict | None = None, loss_params: dict | None = None, progress: bool = False) -> dict:
    """Cross-validate one configuration (an MLflow run with one nested run per fold); mean metrics.

    ``labels`` (supervised nets): ``truth``, ``alg1`` (Algorithm 1) or a folder of label files.
    """
    from porelab import tracking
    from porelab.nets import check_name, is_supervised

    check_name(net)
    prof, _ = _start(profile, data, seed, False, None, progress)
    kwargs = {"scale": prof.net_scale, **({} if is_supervised(net) else {"patch_size": prof.patch}),
              **(net_kwargs or {})}
    with tempfile.TemporaryDirectory(prefix="porelab-cv-") as tmp, tracking.sigterm_as_interrupt(), \
            tracking.parent_run(f"cv-{net}", tags={"porelab.level": "cv"}) as run:
        ctx = make_context(prof, data, seed, workdir=tmp, progress=progress)
        lab = None
        if is_supervised(net):
            if labels == "truth":
                lab = {s.name: s.truth for s in ctx.cv}
            elif labels in ("alg1", "heuristic"):
                lab = {s.name: s.alg1 for s in ctx.cv}
            else:
                lab = load_label_folder(labels, ctx)
        tracking.log_params({"net": net, "net_kwargs": kwargs, "loss": loss_params or {}, "labels": labels,
                             "profile": prof.name, "seed": seed})
        folds, _ = run_folds(ctx, net, kwargs, loss_params or {}, labels=lab, seed=seed,
                             main_metric="val_ap" if lab is not None else "val_ap_pp")
        summary = mean_metrics(folds)
        tracking.log_metrics(summary)
    return {"run_id": run.info.run_id, "net": net, "folds": len(folds), "notes": ctx.notes,
            **{k: v for k, v in summary.items() if math.isfinite(v)}}


def _study_summary(study) -> dict:
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise ConfigError(f"study {study.study_name}: no trial completed (see the FAILED runs in MLflow)")
    return {"name": study.study_name, "trials": len(study.trials), "complete": len(complete),
            "best_value": float(study.best_value), "best_params": study.best_params,
            "best_trial": study.best_trial.number}


def _log_registered_curves(ctx: Context) -> None:
    """PR/ROC plots of both production models on the hard scan and the first cv scan, logged on the run."""
    import mlflow

    from porelab import tracking
    from porelab.metrics import plot_pr_roc

    scans = [s for s in (ctx.hard, ctx.cv[0]) if s is not None]
    models = {name: tracking.resolve_model(name) for name in (UNSUPERVISED_NAME, SUPERVISED_NAME)}
    for s in scans:
        curves = {}
        for name, model in models.items():
            curves[f"{name} (production)"] = (model.predict(s.raw), s.truth, s.object)
        curves["Algorithm 1 labels"] = (s.alg1.astype(np.float32), s.truth, s.object)
        curves["black top-hat"] = (tophat_score(s), s.truth, s.object)
        with tempfile.TemporaryDirectory() as tmp:
            png = Path(tmp) / f"pr_roc_{s.name}.png"
            plot_pr_roc(curves, png, title=f"production models on {s.name} ({s.role})")
            mlflow.log_artifact(str(png), "plots")


__all__ = [
    "Context", "Scan", "build_tables", "ensure_dataset", "load_scans", "make_context", "pseudo_labels",
    "register_best", "run_cv", "run_folds", "run_retrain", "run_search", "run_study", "tophat_score",
    "train_fold",
]
