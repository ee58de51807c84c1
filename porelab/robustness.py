"""The scan-time trade-off (Iuso et al. 2024, section 4.8, Fig. 9): how much does a model's segmentation
suffer when the part is scanned faster, with fewer projections or a lower exposure?

The scan is re-scanned with the simulator's :func:`porelab.simulate.ct.degrade` (re-projection, a fraction
of the projections kept, Poisson noise for the lower exposure, filtered back-projection) at every
combination of the projection fractions 100 / 50 / 33 % and the exposure fractions 100 / 75 / 50 / 25 %,
each re-scan is segmented with the same model at the model's threshold, and the result is measured:

* with labels (a truth mask of the scan): voxel AP, ROC-AUC and Dice inside the watertight object
  (:func:`porelab.metrics.evaluate_scores`), as in the paper;
* without labels: the detected porosity (% of the watertight object) and pore count (6-connected), next
  to the same numbers on the original, full-quality scan, and the Dice agreement of each mask with the
  original scan's mask.

The watertight object (Algorithm 1 steps 6-8) is found once, on the original scan, so every re-scan is
measured over the same voxels. The 100 % / 100 % re-scan adds no noise: it shows what re-projection and
reconstruction alone change.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from scipy import ndimage

from porelab.errors import ConfigError, ScanError

#: the paper's projection fractions (section 4.8)
PROJECTIONS = (1.0, 0.5, 1.0 / 3.0)
#: the paper's exposure fractions (section 4.8)
EXPOSURES = (1.0, 0.75, 0.5, 0.25)
#: columns of every row, then those with labels, then those without
COMMON_COLUMNS = ("projections_percent", "exposure_percent", "projections", "exposure", "seed", "threshold",
                  "porosity_percent", "pore_count", "mask_voxels")
LABEL_COLUMNS = ("ap", "auc", "dice", "best_dice")
REFERENCE_COLUMNS = ("reference_porosity_percent", "reference_pore_count", "porosity_difference",
                     "pore_count_difference", "dice_vs_reference")


def _fractions(values, name: str) -> tuple[float, ...]:
    out = tuple(float(v) for v in values)
    if not out:
        raise ConfigError(f"{name}: give at least one fraction")
    for v in out:
        if not (math.isfinite(v) and 0 < v <= 1):
            raise ConfigError(f"{name}: {v} is not a fraction in (0, 1]")
    if len(set(out)) != len(out):
        raise ConfigError(f"{name}: {list(out)} repeats a value")
    return out


def _measure(mask: np.ndarray, obj: np.ndarray, n_obj: int) -> dict:
    """Porosity (% of the object), 6-connected pore count and voxels of a pore mask."""
    _, count = ndimage.label(mask, structure=ndimage.generate_binary_structure(3, 1))
    inside = int(np.count_nonzero(mask & obj))
    return {"porosity_percent": 100.0 * inside / n_obj if n_obj else 0.0, "pore_count": int(count),
            "mask_voxels": int(np.count_nonzero(mask))}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total


def _nan_to_none(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def run_robustness(scan, model, *, labels=None, projections=PROJECTIONS, exposures=EXPOSURES,
                   base_projections: int | None = None, base_exposure: float | None = None,
                   voxel_mm: float | None = None, seed: int = 0, progress: bool = False, device=None) -> dict:
    """Re-scan ``scan`` at every (projections, exposure) fraction, segment each with ``model``, measure.

    Parameters
    ----------
    scan : (z, y, x) array or :class:`porelab.io.Volume` — the original (full-quality) scan.
    model : :class:`porelab.model.PoreModel` — segments every re-scan at its own threshold.
    labels : (z, y, x) bool array, optional — the scan's truth: AP/AUC/Dice columns instead of the
        comparison with the original scan's segmentation.
    projections, exposures : fractions in (0, 1]; default the paper's 100/50/33 % × 100/75/50/25 %.
    base_projections, base_exposure, voxel_mm : the original scan's acquisition (see
        :func:`porelab.simulate.ct.degrade`; a simulated dataset's manifest has them; default estimated).
    seed : noise seed; the re-scan of combination ``i`` (row order) uses ``seed + i``.
    progress : one progress bar over the re-scans.

    Returns
    -------
    dict with ``rows`` (one per combination, projections outer, exposure inner; columns
    :data:`COMMON_COLUMNS` + :data:`LABEL_COLUMNS` or :data:`REFERENCE_COLUMNS`), ``reference`` (the same
    measures on the original scan), ``labelled``, ``metric`` (``"ap"`` or ``"porosity_percent"``: what the
    plot shows), ``columns``, ``model`` (name, threshold), ``shape`` and the acquisition settings used.
    """
    from porelab.io import Volume
    from porelab.labels import object_mask
    from porelab.metrics import evaluate_scores
    from porelab.runtime import progress as progress_bar
    from porelab.segment import segment
    from porelab.simulate.ct import degrade

    projections = _fractions(projections, "projections")
    exposures = _fractions(exposures, "exposures")
    array = scan.array if isinstance(scan, Volume) else scan
    array = np.asarray(array, dtype=np.float32)
    if array.ndim != 3:
        raise ScanError(f"the scan must be a 3-D (z, y, x) volume, got shape {array.shape}")
    truth = None
    if labels is not None:
        truth = np.asarray(labels) != 0
        if truth.shape != array.shape:
            raise ScanError(f"labels shape {truth.shape} differs from the scan's {array.shape}")
    obj = object_mask(array)
    n_obj = int(np.count_nonzero(obj))

    def measure(seg) -> dict:
        out = {"threshold": float(seg.threshold), **_measure(seg.mask, obj, n_obj)}
        if truth is not None:
            m = evaluate_scores(seg.score, truth, mask=obj, threshold=seg.threshold)
            out.update({k: float(m[k]) for k in ("ap", "auc", "dice", "best_dice")})
        return out

    ref_seg = segment(array, model, device=device)
    reference = measure(ref_seg)
    ref_mask = ref_seg.mask
    del ref_seg

    grid = [(p, e) for p in projections for e in exposures]
    rows = []
    for i, (p, e) in enumerate(progress_bar(grid, enabled=progress, desc="robustness", unit="scan")):
        rescan = degrade(array, projections=p, exposure=e, seed=seed + i, base_projections=base_projections,
                         base_exposure=base_exposure, voxel_mm=voxel_mm)
        seg = segment(rescan, model, device=device)
        del rescan
        row = {"projections_percent": round(100 * p), "exposure_percent": round(100 * e), "projections": p,
               "exposure": e, "seed": seed + i, **measure(seg)}
        if truth is None:
            row.update({"reference_porosity_percent": reference["porosity_percent"],
                        "reference_pore_count": reference["pore_count"],
                        "porosity_difference": row["porosity_percent"] - reference["porosity_percent"],
                        "pore_count_difference": row["pore_count"] - reference["pore_count"],
                        "dice_vs_reference": _dice(seg.mask, ref_mask)})
        del seg
        rows.append(row)
    labelled = truth is not None
    return {
        "rows": rows,
        "reference": reference,
        "labelled": labelled,
        "metric": "ap" if labelled else "porosity_percent",
        "columns": list(COMMON_COLUMNS) + list(LABEL_COLUMNS if labelled else REFERENCE_COLUMNS),
        "model": {"name": model.name, "kind": model.kind, "threshold": float(model.threshold)},
        "shape": list(array.shape),
        "object_voxels": n_obj,
        "base_projections": base_projections,
        "base_exposure": base_exposure,
        "voxel_mm": voxel_mm,
    }


def plot_robustness(result: dict, *, title: str | None = None) -> bytes:
    """PNG (800 × 500 px): AP (with labels) or detected porosity against exposure %, one line per projection
    fraction; the original scan's value as a dashed line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metric = result["metric"]
    fig = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.11, right=0.97, bottom=0.12, top=0.9)
    ax = fig.add_subplot()
    rows = result["rows"]
    for p in sorted({r["projections_percent"] for r in rows}, reverse=True):
        sel = sorted((r for r in rows if r["projections_percent"] == p), key=lambda r: r["exposure_percent"])
        y = [np.nan if r.get(metric) is None else r[metric] for r in sel]
        ax.plot([r["exposure_percent"] for r in sel], y, marker="o", label=f"{p} % projections")
    ref = result["reference"].get(metric)
    if ref is not None and math.isfinite(ref):
        ax.axhline(ref, color="black", linestyle="--", linewidth=1, label="original scan")
    ax.set_xlabel("exposure (% of the original)")
    ax.set_ylabel("voxel AP" if metric == "ap" else "detected porosity (% of the part)")
    if metric == "ap":
        ax.set_ylim(0, 1.02)
    ax.set_xticks(sorted({r["exposure_percent"] for r in rows}))
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    ax.set_title(title or ("AP against scan time" if metric == "ap" else "detected porosity against scan time"))
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_robustness(out_dir, result: dict, *, title: str | None = None, extra: dict | None = None) -> dict:
    """Write ``robustness.csv`` (one row per re-scan), ``robustness.json`` (rows, reference, settings and
    ``extra``) and ``robustness.png`` (:func:`plot_robustness`) into ``out_dir``; returns the paths."""
    from porelab.io import atomic_path, write_json

    png = plot_robustness(result, title=title)          # everything computed before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "robustness.csv", "json": out / "robustness.json", "png": out / "robustness.png"}
    with atomic_path(paths["csv"]) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=result["columns"], extrasaction="ignore")
        w.writeheader()
        for r in result["rows"]:
            w.writerow({k: ("" if _nan_to_none(r.get(k)) is None else r.get(k)) for k in result["columns"]})
    clean = {**(extra or {}), **{k: v for k, v in result.items() if k != "rows"}}
    clean["reference"] = {k: _nan_to_none(v) for k, v in result["reference"].items()}
    clean["rows"] = [{k: _nan_to_none(v) for k, v in r.items()} for r in result["rows"]]
    write_json(paths["json"], clean)
    with atomic_path(paths["png"]) as tmp:
        tmp.write_bytes(png)
    return paths


__all__ = ["EXPOSURES", "PROJECTIONS", "plot_robustness", "run_robustness",
           "write_robustness"]
