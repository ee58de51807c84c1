"""What gets registered: the best trial's best fold model, or the ensemble of all its fold models.

nnU-Net and MONAI Auto3DSeg ship the ensemble of a configuration's fold models (mean score) rather than one
fold's model. Which of the two validates better here is decided label-free, like every other choice of the
pipeline, on the one scan no fold model trained on: the dataset's test ("hard") scan, with the synthetic
pores of ``porelab.crossval.injection_for`` injected into it. The AP of the injected pores against the
part's other voxels is computed for the best fold's model and for the ensemble (post-processed score for
unsupervised nets, as ``PoreModel.predict`` returns it); the ensemble is registered only when its AP is
higher by at least :data:`MARGIN` (it costs one inference per member). Its threshold is the mean of its
members' thresholds, each chosen on pores injected into that member's own held-out scan (the ensemble's
score is the mean of theirs). A threshold chosen on the test scan itself was tried first and is wrong
for the cv scans: on the quick data (cupping in the cube) it labelled 3 % of the cylinders where 0.8 % are
pores, and the pseudo-labels' Dice fell from 0.83 to 0.41 (docs/experiments.md).

Without a test scan, or with one fold, the best fold's model is registered (nothing to validate on). The
choice and both APs go into the registered model's metadata (``registered_form``, ``form_choice``).

This is the one decision the hard scan takes part in; its labels, where the dataset has them, still decide
nothing.
"""

from __future__ import annotations

import math
from pathlib import Path

#: AP on the test scan's injected pores by which the fold ensemble must beat the best fold to be registered
MARGIN = 0.01


def fold_model_dirs(best_dir: Path) -> list[Path]:
    """The saved fold models of the trial whose best fold is in ``best_dir`` (its sibling ``fold*``
    folders, as ``porelab.crossval.run_folds`` writes them), the best first."""
    best_dir = Path(best_dir)
    others = sorted(d for d in best_dir.parent.glob("fold*") if d != best_dir and (d / "model.json").is_file())
    return [best_dir, *others]


def choose_form(ctx, models: list) -> tuple[object, dict]:
    """``(model, choice)``: the best fold's model (``models[0]``) or the ensemble of ``models``, whichever
    has the higher AP on the pores injected into ``ctx.hard`` (module docstring)."""
    from porelab.crossval import injection_for
    from porelab.injection import injected_metrics
    from porelab.model import PoreModel

    best = models[0]
    if len(models) < 2:
        return best, {"registered_form": "best fold", "why": "one fold model"}
    if ctx.hard is None:
        return best, {"registered_form": "best fold",
                      "why": "the dataset has no test scan that no fold model trained on"}
    scan = ctx.hard
    inj = injection_for(ctx, scan)
    ens = PoreModel.ensemble(models, meta=dict(best.meta),
                             threshold=sum(m.threshold for m in models) / len(models))
    ap = {}
    scores = {}
    for form, model in (("best fold", best), ("fold ensemble", ens)):
        scores[form] = model.predict(inj.scan)
        ap[form] = float(injected_metrics(scores[form], inj, scan.object)["ap"])
    choice = {"scan": scan.name, "injected_pores": len(inj.pores), "members": len(models),
              "ap_inj_best_fold": ap["best fold"], "ap_inj_fold_ensemble": ap["fold ensemble"]}
    if not (math.isfinite(ap["fold ensemble"]) and ap["fold ensemble"] >= ap["best fold"] + MARGIN):
        choice.update(registered_form="best fold",
                      why=f"injected-pore AP on {scan.name}: ensemble of {len(models)} {ap['fold ensemble']:.4f} "
                          f"is not {MARGIN} above the best fold's {ap['best fold']:.4f}")
        return best, choice
    ens.meta["threshold_policy"] = ("mean of the members' thresholds, each f1-optimal on pores injected into "
                                    "its own held-out scan")
    choice.update(registered_form=f"fold ensemble ({len(models)} models, mean score)",
                  why=f"injected-pore AP on {scan.name}: ensemble {ap['fold ensemble']:.4f} >= best fold "
                      f"{ap['best fold']:.4f} + {MARGIN}")
    return ens, choice


__all__ = ["MARGIN", "choose_form", "fold_model_dirs"]
