"""PR/ROC figures of models on scans (``porelab.metrics.plot_pr_roc``), written as PNG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def classical_scores(scans, train_scans, profile=None) -> dict[str, dict[str, np.ndarray]]:
    """Every classical row (``porelab.baselines``) fitted on ``train_scans`` and scored on each of ``scans``:
    scan name → row name → score (float32)."""
    from porelab.baselines import fit_all

    rows = fit_all(train_scans, profile)
    return {s.name: {name: np.asarray(predict(s), dtype=np.float32) for name, predict in rows.items()}
            for s in scans}


def model_curves(scans, models: dict, out_dir, *, profile=None, train_scans=None,
                 references: dict | None = None, classical: dict | None = None) -> list[Path]:
    """One ``pr_roc_<scan>.png`` per labelled scan in ``out_dir``: every model of ``models`` (label →
    ``PoreModel``) beside every classical row, against the scan's labels (``references``: name →
    ``porelab.crossval.Reference``) inside their region. Scans without labels get no figure.

    The classical rows' scores come from ``classical`` (``classical_scores`` computed earlier, so that a
    budgeted search pays for them before it plans its studies); without it they are fitted here on
    ``train_scans`` (default: the cv scans among ``scans``, else all of them)."""
    from porelab.metrics import plot_pr_roc

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if train_scans is None:
        train_scans = [s for s in scans if s.role == "cv"] or list(scans)
    references = references or {}
    scans = [s for s in scans if s.name in references]
    if not scans:
        return []
    if classical is None or any(s.name not in classical for s in scans):
        classical = classical_scores(scans, train_scans, profile)
    paths = []
    for s in scans:
        ref = references[s.name]
        curves = {label: (model.predict(s.raw), ref.labels, ref.region) for label, model in models.items()}
        for name, score in classical[s.name].items():
            curves["Algorithm 1 labels" if name.startswith("Algorithm 1") else name] = (score, ref.labels,
                                                                                        ref.region)
        png = out_dir / f"pr_roc_{s.name}.png"
        plot_pr_roc(curves, png, title=f"production models on {s.name} ({s.role})")
        paths.append(png)
    return paths


__all__ = ["classical_scores", "model_curves"]
