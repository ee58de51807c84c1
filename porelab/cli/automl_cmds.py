"""``porelab search``, ``cv``, ``pseudolabel``, ``retrain``: thin wrappers over :mod:`porelab.automl.pipeline`.

MLflow and Optuna are imported inside the commands so ``porelab --help`` stays fast.
"""

from __future__ import annotations

import json
import math
import sys

import click

from porelab.nets import NAMES

_PROFILES = click.Choice(["smoke", "quick", "paper"])


def _echo_json(obj) -> None:
    def default(o):
        return o.item() if hasattr(o, "item") else str(o)

    text = json.dumps(obj, indent=2, default=default)
    click.echo(text.replace("NaN", "null"))


def _stopped(exc: KeyboardInterrupt):
    """A search stopped by SIGTERM/SIGINT: one line, exit 128 + signal (143 for SIGTERM), never 0."""
    from porelab.runtime import Interrupted

    if not isinstance(exc, Interrupted):
        raise exc
    click.echo(f"porelab: {exc.describe()}", err=True)
    sys.exit(exc.exit_code)


def _parse_params(items) -> dict:
    from porelab.errors import ConfigError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param {item!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


@click.command("search")
@click.option("--profile", type=_PROFILES, default="quick", show_default=True,
              help="smoke (CI, ~3 min), quick (2-core CPU, ~30 min), paper (the paper's sizes; GPUs).")
@click.option("--data", default="", help="Dataset folder with manifest.json; empty: simulate one into "
              "porelab-data/<profile> beside mlflow.db (reused when already there).")
@click.option("--n-trials", type=int, default=0, show_default=True,
              help="At most this many trials per study and worker; 0 = the profile's cap (quick: none, "
              "the time budget decides).")
@click.option("--time-budget", default="", metavar="MINUTES",
              help="Minutes for the whole job (simulation, both studies, registration, summary); empty = "
              "the profile's (smoke 3, quick 30, paper none); 'none' or 0 = no budget.")
@click.option("--study-name", default="porelab", show_default=True,
              help="Optuna study prefix (<name>-unsupervised, <name>-supervised); the same name resumes "
              "(inside the new budget).")
@click.option("--storage", default="", help="Optuna storage: empty = sqlite optuna.db beside mlflow.db; "
              "any RDB URL (postgresql://…) or a journal file path ending in .log.")
@click.option("--experiment", default="porelab", show_default=True,
              help="MLflow experiment; the parent run is named <profile>-<study-name>-seed<seed>.")
@click.option("--seed", type=int, default=0, show_default=True, help="One seed for data, samplers, training.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def search(profile, data, n_trials, time_budget, study_name, storage, experiment, seed, quiet):
    """The whole AutoML pipeline: unsupervised study → register → pseudo-labels → supervised study,
    inside a time budget (--time-budget) that the code splits between the studies from measured costs.

    Scans are (z, y, x). Tracking goes to MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db; runs nest
    search → study → trial → fold. Both best models are registered (porelab-unsupervised,
    porelab-supervised) and promoted by the registry policy (metric, rule). Prints a JSON summary.

    \b
    Example:
      porelab search --profile smoke
      mlflow run . -e search --env-manager local -P profile=quick   # the same as an MLflow Project
      mlflow ui --backend-store-uri sqlite:///mlflow.db             # then open http://127.0.0.1:5000
    """
    from porelab.automl.pipeline import run_search

    try:
        summary = run_search(profile, data or None, n_trials or None, study_name, storage or None, seed,
                             time_budget=time_budget, experiment=experiment, progress=not quiet)
    except KeyboardInterrupt as exc:
        _stopped(exc)
    keys = ("run_id", "run_name", "experiment", "profile", "time_budget_minutes", "seconds", "phases",
            "unsupervised", "unsupervised_registry", "supervised", "supervised_registry")
    _echo_json({k: summary[k] for k in keys if k in summary})


@click.command("cv")
@click.option("--data", default="", help="Dataset folder with manifest.json (empty: simulated, as search).")
@click.option("--net", required=True, type=click.Choice(NAMES), help="Network.")
@click.option("--profile", type=_PROFILES, default="quick", show_default=True, help="Sizes and budgets.")
@click.option("--labels", default="truth", show_default=True,
              help="Supervised training labels: truth, alg1 (Algorithm 1), or a folder of <scan>_pseudo.npy.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="Loss parameter (e.g. alpha=0.7, kl_weight=1e-5); repeatable.")
@click.option("--scale", type=float, default=None, help="Width multiplier (default: the profile's).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def cv(data, net, profile, labels, params, scale, seed, quiet):
    """Cross-validate one network configuration (leave one cv scan out), tracked in MLflow.

    Prints the mean fold metrics (AP, ROC-AUC, Dice of the pore class inside the part, on the held-out
    and on the hard scan) as JSON.

    \b
    Example:
      porelab cv --net cevae --profile smoke --param kl_weight=1e-5
      porelab cv --net unet --labels alg1 --param alpha=0.7 --param beta=0.3
    """
    from porelab.automl.pipeline import run_cv

    kwargs = {"scale": scale} if scale else {}
    try:
        result = run_cv(net, profile, data or None, labels, seed, net_kwargs=kwargs,
                        loss_params=_parse_params(params), progress=not quiet)
    except KeyboardInterrupt as exc:
        _stopped(exc)
    _echo_json({k: v for k, v in result.items() if not (isinstance(v, float) and math.isnan(v))})


@click.command("pseudolabel")
@click.option("--data", required=True, help="Dataset folder with manifest.json.")
@click.option("--model", "model", default="porelab-unsupervised", show_default=True,
              help="Registered name (its Production version), models:/NAME@ALIAS, "
              "models:/NAME/STAGE|VERSION, or a model folder.")
@click.option("-o", "--out", "out", required=True,
              help="Output folder: <scan>_pseudo.npy (uint8) + stats.json.")
@click.option("--overwrite", is_flag=True, help="Replace OUT when it holds an earlier porelab output.")
@click.option("--profile", type=_PROFILES, default="quick", show_default=True,
              help="Profile (simulated data when --data is empty).")
def pseudolabel(data, model, out, profile, overwrite):
    """Pseudo-labels of every cv scan of a dataset from an (unsupervised) model.

    Score → threshold (the model's) inside the part → pores smaller than the profile's minimum size
    removed (porelab.config.LabelConfig). Writes one uint8 (z, y, x) mask per scan and stats.json (porosity %,
    pore count, Dice against truth and against Algorithm 1 labels).

    \b
    Example:
      porelab pseudolabel --data porelab-data/quick -o labels
      porelab retrain --data porelab-data/quick --labels labels
    """

    import numpy as np

    from porelab import tracking
    from porelab.automl.pipeline import model_pseudo_labels, pipeline_context
    from porelab.io import atomic_path, prepare_output

    target = prepare_output(out, inputs=[data], overwrite=overwrite, is_dir=True)
    tracking.setup_mlflow()
    ctx = pipeline_context(profile, data, 0)
    labels, stats, info = model_pseudo_labels(ctx, model)
    with atomic_path(target, is_dir=True, overwrite=overwrite, marker="pseudolabel") as tmp:
        tmp.mkdir(exist_ok=True)
        for name, mask in labels.items():
            np.save(tmp / f"{name}_pseudo.npy", mask.astype(np.uint8))
        (tmp / "stats.json").write_text(json.dumps({"info": info, "scans": stats}, indent=2) + "\n")
    _echo_json({"out": str(out), **info, "scans": stats})


@click.command("retrain")
@click.option("--data", required=True, help="Dataset folder with manifest.json.")
@click.option("--labels", default="", help="Folder of <scan>_pseudo.npy; empty: pseudo-labels from "
              "models:/porelab-unsupervised@production.")
@click.option("--profile", type=_PROFILES, default="quick", show_default=True)
@click.option("--n-trials", type=int, default=0, show_default=True,
              help="At most this many trials; 0 = the profile's cap (quick: the time budget decides).")
@click.option("--time-budget", default="", metavar="MINUTES",
              help="Minutes (as for `porelab search`); empty = the profile's.")
@click.option("--study-name", default="porelab", show_default=True)
@click.option("--storage", default="", help="Optuna storage (as for `porelab search`).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def retrain(data, labels, profile, n_trials, time_budget, study_name, storage, seed, quiet):
    """Supervised study (FTL α, β, γ + UNet family) on pseudo-labels; registers porelab-supervised.

    \b
    Example:
      porelab retrain --data porelab-data/quick --profile quick --n-trials 4
    """
    from porelab.automl.pipeline import run_retrain

    try:
        result = run_retrain(profile, data, labels or None, n_trials or None, study_name, storage or None,
                             seed, time_budget=time_budget, progress=not quiet)
    except KeyboardInterrupt as exc:
        _stopped(exc)
    _echo_json(result)
