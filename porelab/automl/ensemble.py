"""What gets registered: the best trial's best fold model, or the ensemble of all its fold models.

nnU-Net and MONAI Auto3DSeg ship the ensemble of a configuration's fold models (mean score) rather than one
fold's model. Which of the two validates better here is decided label-free, like every other choice of the
pipeline, on the one scan no fold model trained on: the dataset's test ("hard") scan, with the synthetic
pores of ``porelab.crossval.injection_for`` injected into it. The AP of the injected pores against the
part's other voxels is computed for the best fold's model and for the ensemble (post-processed score for
unsupervised nets, as ``PoreModel.predict`` returns it); the ensemble is registered only when its AP is
higher. Its threshold is chosen the same way as a fold's (F1-optimal on the injected pores, clamped by
``labels.max_label_fraction``), on that scan.

Without a test scan, or with one fold, the best fold's model is registered (nothing to validate on). The
choice and both APs go into the registered model's metadata (``registered_form``, ``form_choice``).

This is the one decision the hard scan takes part in; its labels, where the dataset has them, still decide
nothing.
"""

from __future__ import annotations

import math
from pathlib import Path


def fold_model_dirs(best_dir: Path) -> list[Path]:
    """The saved fold models of the trial whose best fold is in ``best_dir`` (its sibling ``fold*``
    folders, as ``porelab.crossval.run_folds`` writes them), the best first."""
    best_dir = Path(best_dir)
    others = sorted(d for d in best_dir.parent.glob("fold*") if d != best_dir and (d / "model.json").is_file())
    return [best_dir, *others]


def choose_form(ctx, models: list) -> tuple[object, dict]:
    """``(model, choice)``: the best fold's model (``models[0]``) or the ensemble of ``models``, whichever
    has the higher AP on the pores injected into ``ctx.hard`` (module docstring)."""
    from porelab.crossval import clamp_threshold, injected_threshold, injection_for
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
    ens = PoreModel.ensemble(models, meta=dict(best.meta))
    ap = {}
    scores = {}
    for form, model in (("best fold", best), ("fold ensemble", ens)):
        scores[form] = model.predict(inj.scan)
        ap[form] = float(injected_metrics(scores[form], inj, scan.object)["ap"])
    choice = {"scan": scan.name, "injected_pores": len(inj.pores), "members": len(models),
              "ap_inj_best_fold": ap["best fold"], "ap_inj_fold_ensemble": ap["fold ensemble"]}
    if not (math.isfinite(ap["fold ensemble"]) and ap["fold ensemble"] > ap["best fold"]):
        choice.update(registered_form="best fold",
                      why=f"injected-pore AP on {scan.name}: best fold {ap['best fold']:.4f} >= "
                          f"ensemble of {len(models)} {ap['fold ensemble']:.4f}")
        return best, choice
    thr = injected_threshold(ctx, scores["fold ensemble"], scan)
    policy = f"f1-optimal on {len(inj.pores)} pores injected into test scan {scan.name} (fold ensemble)"
    ens.threshold, policy = clamp_threshold(scores["fold ensemble"], scan.object, thr, policy,
                                            float(ctx.profile.labels.max_label_fraction))
    ens.meta["threshold_policy"] = policy
    choice.update(registered_form=f"fold ensemble ({len(models)} models, mean score)",
                  why=f"injected-pore AP on {scan.name}: ensemble {ap['fold ensemble']:.4f} > best fold "
                      f"{ap['best fold']:.4f}")
    return ens, choice


__all__ = ["choose_form", "fold_model_dirs"]
