"""Classical pore scores, the rows beside the nets in every table: what learning adds is measured against them.

Every row is fitted like a net: its choices are made on the training scans only, label-free, and it is then
scored on held-out and test scans exactly as the nets are, with the same skin suppression
(``porelab.postprocess.interior_mask``, ``Profile.skin``). A registry by name (like ``porelab.nets.build``):
:func:`get_baseline` returns ``fit(train_scans, profile=None, *, seed=0) -> predictor`` and
``predictor(scan) -> score`` (float32, the scan's shape, higher = more likely pore, 0 outside the part's
interior) for :class:`porelab.crossval.Scan` objects; an unknown name is an error listing the available ones.

=================================  ==========================================================================
row                                label-free choice on the training scans
=================================  ==========================================================================
Algorithm 1 labels (as score)      none: the labels of Iuso et al. (2024), Algorithm 1, as a 0/1 score
black top-hat                      radius: smallest ball filling the 99th-percentile Algorithm 1 component;
                                   pre-filter σ: AP against Algorithm 1 labels (``baselines.tophat``)
Sauvola threshold                  window and k: AP against Algorithm 1 labels (``baselines.sauvola``;
                                   Sauvola & Pietikäinen 2000)
random forest (Alg. 1 labels)      trained on Algorithm 1 labels, multiscale filter features, as in ilastik's
                                   pixel classification (``baselines.forest``)
=================================  ==========================================================================

Labels never decide: "AP against Algorithm 1 labels" scores a candidate against labels computed from the scan's
own grey values; the truth is only reported (``criterion="truth"`` reports what a truth-chosen row would reach).
Measurements: docs/experiments.md, "Classical rows at their best".
"""

from __future__ import annotations

import numpy as np

from porelab.baselines._common import CRITERIA, Predictor, interior, skin_of
from porelab.baselines.forest import fit_forest, forest_score, voxel_features
from porelab.baselines.sauvola import fit_sauvola, sauvola_score
from porelab.baselines.tophat import fit_tophat, structure_radius, tophat_score
from porelab.errors import ConfigError


def fit_alg1(train_scans, profile=None, *, seed: int = 0, criterion: str = "alg1") -> Predictor:
    """Algorithm 1 labels (Iuso et al. 2024) used as a score: 1 in a labelled pore inside the interior, else
    0. Nothing is fitted (``train_scans``, ``seed`` and ``criterion`` are unused); the labels are the scan's
    own (``Scan.alg1``, computed from its raw grey values)."""
    skin = skin_of(profile)

    def score(scan):
        return np.where(interior(scan, skin), np.asarray(scan.alg1, dtype=bool), False).astype(np.float32)

    return Predictor("Algorithm 1 labels (as score)", {"skin": skin}, score)


_REGISTRY = {
    "Algorithm 1 labels (as score)": fit_alg1,
    "black top-hat": fit_tophat,
    "Sauvola threshold": fit_sauvola,
    "random forest (Alg. 1 labels)": fit_forest,
}
#: the classical rows, in table order
NAMES = tuple(_REGISTRY)


def get_baseline(name: str):
    """``fit(train_scans, profile=None, *, seed=0, criterion="alg1") -> predictor`` of the classical row
    ``name``; ``predictor(scan) -> score``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown classical baseline {name!r}; available: {', '.join(NAMES)}") from None


def fit_all(train_scans, profile=None, *, seed: int = 0, criterion: str = "alg1") -> dict[str, Predictor]:
    """Every registered row fitted on ``train_scans``: name → predictor, in table order."""
    return {name: get_baseline(name)(train_scans, profile, seed=seed, criterion=criterion) for name in NAMES}


def chosen(params: dict) -> dict:
    """The choices of a predictor's ``params`` without the per-candidate APs behind them (for notes, tables)."""
    return {k: v for k, v in params.items() if not k.startswith("ap_") and k != "criterion"}


def baseline_rows(ctx) -> dict[str, list[dict]]:
    """Fold metrics of every classical row on a cross-validation context (``porelab.crossval.Context``).

    Per fold every row is fitted on the fold's training scans (all cv scans but the held-out one), then the
    held-out scan (``val_…``) and the hard scan (``hard_…``) are scored as a net's are
    (``porelab.crossval.evaluate``). The choices of each fold are added to ``ctx.notes`` (they go beside the
    tables). Cached on the context."""
    from porelab.crossval import evaluate

    if "baselines" in ctx.cache:
        return ctx.cache["baselines"]
    rows = {name: [] for name in NAMES}
    for fold in ctx.folds:
        train = [s for i, s in enumerate(ctx.cv) if i != fold]
        held = ctx.cv[fold]
        for name, pred in fit_all(train, ctx.profile, seed=ctx.seed + fold).items():
            m = evaluate(pred(held), held, "val", reference=ctx.references.get(held.name))
            if ctx.hard is not None:
                m.update(evaluate(pred(ctx.hard), ctx.hard, "hard", reference=ctx.references.get(ctx.hard.name)))
            rows[name].append(m)
            if name != NAMES[0]:
                ctx.notes.append(f"{name}, fold {fold} (held out {held.name}): chose {chosen(pred.params)}")
    ctx.cache["baselines"] = rows
    return rows


__all__ = ["CRITERIA", "NAMES", "Predictor", "baseline_rows", "chosen", "fit_alg1", "fit_all", "fit_forest",
           "fit_sauvola", "fit_tophat", "forest_score", "get_baseline", "sauvola_score", "structure_radius",
           "tophat_score", "voxel_features"]
