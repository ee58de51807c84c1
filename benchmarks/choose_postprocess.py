"""Choose the unsupervised score's post-processing constants on the training scans, label-free. Prints JSON.

    OMP_NUM_THREADS=1 python benchmarks/choose_postprocess.py DATA [--model DIR | --tracking-uri URI]
                                                            [--skins 0 1 2 3 4] [--smooths 0 0.5 0.7 1.0]
                                                            [--margin 5] [--seed 0] [--tophat]

DATA is the training dataset: ``porelab simulate DATA --preset quick --seed 0`` (the pipeline's own data).
A simulated dataset of any other seed is refused: the constants are chosen on the training seed only, so
that the scans of every other seed stay unseen. The model is an unsupervised ``PoreModel`` trained on DATA:
a folder (``--model``), else the registered ``porelab-unsupervised`` (Production) of the tracking store
(``--tracking-uri``, default ``MLFLOW_TRACKING_URI`` or ``./mlflow.db``).

The two constants (``porelab.config.Profile.skin`` / ``smooth``; ``porelab.postprocess.DEFAULT_SKIN`` /
``DEFAULT_SMOOTH``):

* ``skin``: voxels below the part's surface where the score is set to 0 (``postprocess.interior_mask``);
* ``smooth``: σ (voxels) of the Gaussian pre-filter of the scan before the residual (``postprocess.anomaly_map``).

Criterion (label-free, as ``porelab/crossval.py`` ``injection_for`` / ``score_fold`` judge a fold): into
every cv scan synthetic pores are injected (``porelab.injection.inject_pores``: the part is the scan's
Algorithm 1 object, Iuso et al. 2024 steps 6-8; ``exclude`` its Algorithm 1 candidate pores grown by 2
voxels; the seed ``seed · 1000003 + crc32(name)``), with one fixed ``--margin`` for every candidate so
that all of them are judged on the same injected pores. The injected scan is reconstructed once; for each
``smooth`` the residual (the model's own mode) and the surface compensation (eq. (2)-(3), if the model
applies it) are computed once and each ``skin`` is applied to a copy. The score of a candidate is the mean
over the cv scans of the post-processed AP on the injected pores (``injection.injected_metrics`` inside the
Algorithm 1 object). The choice is its argmax; on a tie the current value (the profile's) is kept, and it
is replaced only when the gain exceeds ``--min-gain`` AP.

Reported beside it and never used: the same candidates' AP against the dataset's labels (the simulator's
truth) on the clean scans (reconstructed once each), inside the dataset's object mask, as
``porelab.crossval.evaluate`` reports ``val_ap_pp``; and both means over the cv scans the model did not
train on (``model.meta["val_scan"]``, when the model records it).

A limit of the criterion: the injected pores keep at least ``--margin`` voxels clear of the surface, so
the skin's cost (pores within ``skin`` voxels of the surface are not scored) is invisible to it, and for
skins below the margin it can only see the skin's gain (fewer surface false positives), and only on the
part of the skin band it counts as negatives: the band Algorithm 1 marks as candidate pores (grown by 2
voxels) is ignored by the injected metrics. ``skin_band_counted`` reports, per scan and skin, the share of the
band ``object & ~interior_mask(skin)`` counted as negatives. The truth AP shows both sides for the
simulator's pores.

``--tophat`` also reports the classical top-hat's label-free fit on the same scans
(``porelab.baselines.fit_tophat``: radius from the scans' Algorithm 1 structure, pre-filter σ by AP against
Algorithm 1 labels), beside ``porelab.config.TOPHAT_RADIUS``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
import zlib
from pathlib import Path

#: the training seed: the only simulation seed constants may be chosen on
TRAINING_SEED = 0


def _injection(scan, seed: int, margin: int):
    """The pores injected into ``scan`` as ``porelab.crossval.injection_for`` makes them, at ``margin``."""
    from scipy import ndimage

    from porelab.injection import inject_pores

    exclude = ndimage.binary_dilation(scan.alg1, iterations=2)
    inj_seed = (int(seed) * 1_000_003 + zlib.crc32(scan.name.encode())) % (2 ** 31)
    return inject_pores(scan.raw, scan.object, seed=inj_seed, exclude=exclude, margin=int(margin))


def _reconstruct(model, raw):
    """``(x, x_hat, filled, missing)``: the normalised filled scan and its reconstruction (one pass of the net),
    as ``PoreModel.unsupervised_scores`` makes them."""
    from porelab.normalise import fill_nonfinite

    filled, missing, _ = fill_nonfinite(raw)
    norm = model.normalisation.refit(raw)
    x_hat = model._reconstruct(filled, norm, None, False)
    return norm.apply(filled), x_hat, filled, missing


def _variants(model, raw, skins, smooths):
    """``({(skin, smooth): score}, {skin: keep})`` of ``raw`` from one reconstruction
    (``postprocess.unsupervised_score``; ``keep``: ``postprocess.interior_mask``, ``None`` for skin 0)."""
    import numpy as np

    from porelab.postprocess import interior_mask, unsupervised_score

    x, x_hat, filled, missing = _reconstruct(model, raw)
    keeps = {skin: interior_mask(filled, skin) for skin in skins}
    out = {}
    for smooth in smooths:
        _, pp = unsupervised_score(x, x_hat, residual=model.residual, smooth=float(smooth),
                                   postprocess=model.postprocess, keep=None, keep_raw=False)
        for skin in skins:
            score = pp.copy()
            if keeps[skin] is not None:
                score *= keeps[skin]
            if missing is not None:
                score[missing] = np.nan
            out[(skin, smooth)] = score
    return out, keeps


def _load_model(args):
    if args.model:
        from porelab.model import PoreModel

        return PoreModel.load(args.model)
    import os

    import mlflow

    if args.tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
        mlflow.set_tracking_uri(args.tracking_uri)
    from porelab.tracking import resolve_model

    return resolve_model(args.registered)


def _table(rows, skins, smooths, key) -> str:
    head = "| skin \\ smooth | " + " | ".join(f"{s:g}" for s in smooths) + " |"
    lines = [head, "|---" * (len(smooths) + 1) + "|"]
    for skin in skins:
        cells = [f"{rows[(skin, sm)][key]:.4f}" for sm in smooths]
        lines.append(f"| {skin} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="the training dataset (porelab simulate DATA --preset quick --seed 0)")
    ap.add_argument("--model", help="an unsupervised PoreModel folder (default: the registered model)")
    ap.add_argument("--registered", default="porelab-unsupervised", help="registered name or models:/ URI")
    ap.add_argument("--tracking-uri", help="MLflow tracking/registry URI holding the registered model")
    ap.add_argument("--profile", default="quick", help="profile whose skin/smooth are the current values")
    ap.add_argument("--skins", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--smooths", type=float, nargs="+", default=[0.0, 0.5, 0.7, 1.0])
    ap.add_argument("--margin", type=int, default=5, help="injection margin (voxels), the same for every candidate")
    ap.add_argument("--seed", type=int, default=0, help="injection seed (as the cross-validation's context seed)")
    ap.add_argument("--min-gain", type=float, default=0.005, help="AP gain over the current values needed to change")
    ap.add_argument("--tophat", action="store_true", help="also report the top-hat's label-free fit on DATA")
    args = ap.parse_args(argv)

    import numpy as np

    from porelab.config import TOPHAT_RADIUS, get_profile
    from porelab.crossval import load_scans
    from porelab.injection import injected_metrics
    from porelab.metrics import evaluate_scores

    t0 = time.perf_counter()
    manifest = json.loads((Path(args.data) / "manifest.json").read_text())
    sim_seed = manifest.get("seed")
    if sim_seed is not None and int(sim_seed) != TRAINING_SEED:
        print(f"choose_postprocess: {args.data} was simulated with seed {sim_seed}; constants are chosen on the "
              f"training seed {TRAINING_SEED} only", file=sys.stderr)
        return 2
    profile = get_profile(args.profile)
    current = (int(profile.skin), float(profile.smooth))
    skins = sorted(set(args.skins) | {current[0]})
    smooths = sorted(set(args.smooths) | {current[1]})
    if args.margin <= max(skins):
        print(f"choose_postprocess: --margin {args.margin} must exceed the largest skin {max(skins)} so that "
              f"no candidate suppresses an injected pore", file=sys.stderr)
        return 2

    model = _load_model(args)
    if model.kind != "unsupervised":
        print(f"choose_postprocess: {model.name} is a supervised model; give an unsupervised one", file=sys.stderr)
        return 2
    cv, _, _, references = load_scans(args.data, hard=False)
    val_scan = model.meta.get("val_scan")
    held_out = [s.name for s in cv if s.name == val_scan]

    per_scan: dict = {}
    cands = list(itertools.product(skins, smooths))
    for scan in cv:
        t1 = time.perf_counter()
        inj = _injection(scan, args.seed, args.margin)
        scores, keeps = _variants(model, inj.scan, skins, smooths)
        counted = inj.negatives(scan.object)
        band_counted = {}   # share of each skin band the injected criterion counts (the rest is ignored)
        for skin, keep in keeps.items():
            if keep is not None:
                band = scan.object & ~keep
                band_counted[skin] = float(np.count_nonzero(band & counted) / max(np.count_nonzero(band), 1))
        rec = {"injected_pores": len(inj.pores), "requested": int(inj.requested),
               "skin_band_counted": band_counted, "injected_ap": {}, "truth_ap": {}}
        for c in cands:
            rec["injected_ap"][c] = float(injected_metrics(scores[c], inj, scan.object)["ap"])
        del scores
        ref = references.get(scan.name)
        if ref is not None:
            clean, _ = _variants(model, scan.raw, skins, smooths)
            for c in cands:
                rec["truth_ap"][c] = float(evaluate_scores(clean[c], ref.labels, mask=ref.region)["ap"])
            del clean
        rec["seconds"] = round(time.perf_counter() - t1, 1)
        per_scan[scan.name] = rec

    def mean(key, c, names=None):
        vals = [r[key][c] for n, r in per_scan.items() if (names is None or n in names) and c in r[key]]
        return float(np.mean(vals)) if vals else math.nan

    rows = {c: {"skin": c[0], "smooth": c[1], "injected_ap": mean("injected_ap", c),
                "truth_ap": mean("truth_ap", c)} for c in cands}
    if held_out:
        for c in cands:
            rows[c]["injected_ap_held_out"] = mean("injected_ap", c, held_out)
            rows[c]["truth_ap_held_out"] = mean("truth_ap", c, held_out)
    best = max(cands, key=lambda c: (rows[c]["injected_ap"], c == current))
    gain = rows[best]["injected_ap"] - rows[current]["injected_ap"]
    change = best != current and gain > args.min_gain
    chosen = best if change else current
    truth_best = max(cands, key=lambda c: (rows[c]["truth_ap"], c == current))

    out = {
        "data": str(args.data), "simulation_seed": sim_seed, "injection_seed": args.seed, "margin": args.margin,
        "model": {"name": model.name, "residual": model.residual, "postprocess": bool(model.postprocess),
                  "skin": int(model.skin), "smooth": float(model.smooth),
                  "registered": model.meta.get("registered"), "val_scan": val_scan},
        "cv_scans": [s.name for s in cv], "held_out_scans": held_out,
        "current": {"skin": current[0], "smooth": current[1], "profile": profile.name,
                    "injected_ap": rows[current]["injected_ap"], "truth_ap": rows[current]["truth_ap"]},
        "argmax": {"skin": best[0], "smooth": best[1], "injected_ap": rows[best]["injected_ap"],
                   "truth_ap": rows[best]["truth_ap"]},
        "gain": gain, "min_gain": args.min_gain,
        "chosen": {"skin": chosen[0], "smooth": chosen[1], "changed": bool(change)},
        "truth_argmax_reporting_only": {"skin": truth_best[0], "smooth": truth_best[1],
                                        "truth_ap": rows[truth_best]["truth_ap"]},
        "rows": list(rows.values()),
        "per_scan": {n: {"injected_pores": r["injected_pores"], "requested": r["requested"],
                         "seconds": r["seconds"], "skin_band_counted": r["skin_band_counted"],
                         "injected_ap": {f"{k[0]}/{k[1]:g}": v for k, v in r["injected_ap"].items()},
                         "truth_ap": {f"{k[0]}/{k[1]:g}": v for k, v in r["truth_ap"].items()}}
                     for n, r in per_scan.items()},
        "table_injected_ap": _table(rows, skins, smooths, "injected_ap"),
        "table_truth_ap": _table(rows, skins, smooths, "truth_ap"),
    }
    if args.tophat:
        from porelab.baselines import fit_tophat

        t1 = time.perf_counter()
        fit = fit_tophat(cv, profile.replace(skin=chosen[0]))
        out["tophat"] = {"label_free_fit": fit.params, "TOPHAT_RADIUS": int(TOPHAT_RADIUS),
                         "profile_tophat_radius": int(profile.tophat_radius),
                         "seconds": round(time.perf_counter() - t1, 1)}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
