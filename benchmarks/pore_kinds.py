"""How well the pore-kind rule (``porelab.pores.kinds``) tells gas, keyhole and lack-of-fusion pores apart;
prints JSON.

    OMP_NUM_THREADS=1 python benchmarks/pore_kinds.py [--test-seed 12345] [--train-seeds 8] [--tune]

The simulator's phantoms (``porelab.simulate.phantom.make_phantom``, 96 × 128 × 128 voxels, a cylinder and a
cube per seed, 2 % porosity) place pores of known kind (``Phantom.pores[i]["kind"]``, also written to
``<name>_pores.json``) that touch no other pore, so every 6-connected component of the exact truth mask
belongs to one placed pore (``Phantom.labels``). The table of the truth mask (with the phantom's object mask,
so the ``surface`` kind is possible) is compared with the placed kinds.

Output: the confusion matrix (rows: true kind, columns: porelab's kind) on the test seed for pores of at
least ``--min-voxels`` voxels and for all pores, and the fraction correct. ``--tune`` first searches the
rule's thresholds on the training seeds 0 … N-1 (never the test seed) and prints the best rule; the
thresholds in ``porelab/pores/kinds.py`` are what this printed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys

import numpy as np
from scipy import ndimage

from porelab.pores import KINDS, pore_table
from porelab.pores.kinds import RULE, classify

TRUE_KIND = {"gas": "gas", "keyhole": "keyhole", "lof": "lack_of_fusion"}
SHAPE = (96, 128, 128)
POROSITY = 2.0

GRID = {
    "flat_max": [0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7],
    "flat_normal_tilt_max_deg": [25.0, 35.0, 45.0, 90.0],
    "elongation_min": [1.1, 1.15, 1.2, 1.25, 1.3, 1.35, 1.4, 1.5],
    "keyhole_tilt_max_deg": [25.0, 35.0, 45.0, 90.0],
    "irregular_sphericity_max": [0.0, 0.7, 0.75, 0.8, 0.85, 0.88, 0.9],
}


def pores_of(seed: int) -> list[dict]:
    """Table rows of the exact pores of a cylinder and a cube phantom of ``seed``, each with ``true_kind``."""
    from porelab.simulate.phantom import make_phantom

    rows = []
    for part in ("cylinder", "cube"):
        ph = make_phantom(SHAPE, part=part, porosity=POROSITY, seed=seed)
        truth = ph.truth.astype(bool)
        table = pore_table(truth, object_mask=ph.object.astype(bool))
        lab, n = ndimage.label(truth, structure=ndimage.generate_binary_structure(3, 1))
        assert n == len(table)
        placed = ndimage.maximum(ph.labels, lab, np.arange(1, n + 1)).astype(int)  # one placed pore each
        kinds = {p["id"]: TRUE_KIND[p["kind"]] for p in ph.pores}
        for r, pid in zip(table, placed, strict=True):
            rows.append(dict(r, true_kind=kinds[pid], seed=seed, part=part))
    return rows


def features(rows):
    def col(k):
        return np.array([np.nan if r[k] is None else r[k] for r in rows], dtype=np.float64)

    return (col("sphericity"), col("elongation"), col("flatness"), col("axis_tilt_deg"), col("normal_tilt_deg"),
            np.array([r["kind"] == "surface" for r in rows]))


def confusion(true, pred) -> dict:
    truths = [k for k in KINDS if k != "surface"]
    return {t: {p: int(np.count_nonzero((true == t) & (pred == p))) for p in KINDS} for t in truths}


def tune(rows, min_voxels: int) -> tuple[dict, float]:
    big = np.array([r["voxels"] >= min_voxels for r in rows])
    rows = [r for r, b in zip(rows, big, strict=True) if b]
    f = features(rows)
    true = np.array([r["true_kind"] for r in rows], dtype=object)
    results = []
    for values in itertools.product(*GRID.values()):
        rule = dict(zip(GRID, values, strict=True))
        results.append((float(np.mean(classify(*f, rule=rule) == true)), values))
    best_acc = max(acc for acc, _ in results)
    # among the equally good rules, the one nearest the middle of their ranges (in grid steps): a margin
    # on every side of each threshold
    tied = np.array([[GRID[k].index(v) for k, v in zip(GRID, values, strict=True)]
                     for acc, values in results if acc == best_acc], dtype=float)
    mid = np.median(tied, axis=0)
    pick = tied[np.argmin(((tied - mid) ** 2).sum(axis=1))].astype(int)
    return {k: GRID[k][i] for k, i in zip(GRID, pick, strict=True)}, best_acc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--test-seed", type=int, default=12345)
    ap.add_argument("--train-seeds", type=int, default=8, help="seeds 0 .. N-1 for --tune")
    ap.add_argument("--min-voxels", type=int, default=30)
    ap.add_argument("--tune", action="store_true", help="search the thresholds on the training seeds first")
    a = ap.parse_args(argv)
    if a.tune and a.test_seed < a.train_seeds:
        ap.error("the test seed must not be a training seed")
    out: dict = {"rule": dict(RULE), "min_voxels": a.min_voxels, "test_seed": a.test_seed,
                 "phantoms": f"cylinder + cube {SHAPE}, porosity {POROSITY} %"}
    rule = None
    if a.tune:
        train = [r for s in range(a.train_seeds) for r in pores_of(s)]
        rule, acc = tune(train, a.min_voxels)
        out.update(rule=rule, train_seeds=f"0-{a.train_seeds - 1}", train_pores=len(train),
                   train_accuracy_min_voxels=round(acc, 4))
    test = pores_of(a.test_seed)
    f = features(test)
    pred = classify(*f, rule=rule) if rule else np.array([r["kind"] for r in test], dtype=object)
    true = np.array([r["true_kind"] for r in test], dtype=object)
    big = np.array([r["voxels"] >= a.min_voxels for r in test])
    out.update(
        test_pores=len(test), test_pores_min_voxels=int(big.sum()),
        confusion_min_voxels=confusion(true[big], pred[big]),
        accuracy_min_voxels=round(float(np.mean(true[big] == pred[big])), 4),
        confusion_all=confusion(true, pred),
        accuracy_all=round(float(np.mean(true == pred)), 4),
    )
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
