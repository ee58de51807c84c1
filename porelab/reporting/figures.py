"""PR/ROC figures of models on scans (``porelab.metrics.plot_pr_roc``), written as PNG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def model_curves(scans, models: dict, out_dir, *, profile=None, train_scans=None,
                 references: dict | None = None) -> list[Path]:
    """One ``pr_roc_<scan>.png`` per labelled scan in ``out_dir``: every model of ``models`` (label →
    ``PoreModel``) beside every classical row (``porelab.baselines``, fitted on ``train_scans``; default: the
    cv scans among ``scans``, else all of them), against the scan's labels (``references``: name →
    ``porelab.crossval.Reference``) inside their region. Scans without labels get no figure."""
    from porelab.baselines import fit_all
    from porelab.metrics import plot_pr_roc

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if train_scans is None:
        train_scans = [s for s in scans if s.role == "cv"] or list(scans)
    references = references or {}
    scans = [s for s in scans if s.name in references]
    if not scans:
        return []
    rows = fit_all(train_scans, profile)
    paths = []
    for s in scans:
        ref = references[s.name]
        curves = {label: (model.predict(s.raw), ref.labels, ref.region) for label, model in models.items()}
        for name, predict in rows.items():
            score = predict(s)
            curves["Algorithm 1 labels" if name.startswith("Algorithm 1") else name] = (
                np.asarray(score, dtype=np.float32), ref.labels, ref.region)
        png = out_dir / f"pr_roc_{s.name}.png"
        plot_pr_roc(curves, png, title=f"production models on {s.name} ({s.role})")
        paths.append(png)
    return paths


__all__ = ["model_curves"]
