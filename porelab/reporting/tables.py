"""The paper-like summary tables (Iuso et al. 2024, Tables 3-7) and the complexity table (Table 8) as text.

Input is plain data: one entry per (model, family, label source, fold metrics), the fold metrics being the
dicts :func:`porelab.crossval.fit_fold` returns. Cells are mean ± 95 % CI half-width over folds.
"""

from __future__ import annotations

import csv
import io
import math

import numpy as np

#: (model, family, label source, fold metrics)
Entry = tuple[str, str, str, list[dict]]


def csv_text(rows: list[dict]) -> str:
    """CSV of dict rows; the columns are the union of the keys, in first-seen order."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def _fmt(mean: float, half: float) -> str:
    if mean is None or not math.isfinite(mean):
        return "n/a"
    return f"{mean:.3f} ± {half:.3f}" if half is not None and math.isfinite(half) else f"{mean:.3f}"


def summary_rows(entries: list[Entry]) -> list[dict]:
    """One row per (model, family, labels, fold metrics) and post-processing: mean ± 95 % CI of every
    val/hard metric (``porelab.metrics.fold_summary``)."""
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


def build_tables(entries: list[Entry], *, profile: str, n_folds: int, notes=(),
                 comparison: tuple[list[dict], list[dict]] | None = None) -> dict[str, str]:
    """The summary tables as ``{file name: text}`` (``tables/summary.csv`` and ``tables/summary.md``).

    ``comparison``: the fold metrics of one supervised configuration trained on pseudo-labels and on
    Algorithm 1 labels, compared by Welch's t-test (the paper's Table 7).
    """
    rows = summary_rows(entries)
    raw = [r for r in rows if r["postprocessed"] != "yes"]
    pp = [r for r in rows if r["postprocessed"] == "yes" or r["family"] == "classical"]
    sup = [r for r in rows if r["family"] == "supervised" or r["family"] == "classical"]
    truth_cols = [("val_ap", "val AP"), ("val_auc", "val ROC-AUC"), ("hard_ap", "hard AP"),
                  ("hard_auc", "hard ROC-AUC")]
    alg1_cols = [(f"{k}_alg1", f"{h} (vs Alg. 1)") for k, h in truth_cols]
    md = ["# porelab search: summary tables", "",
          (f"Profile `{profile}`, {n_folds} folds (mean ± 95 % CI half-width over folds). "
           "Voxel-wise metrics of the pore class inside the part, against the exact truth of the simulated "
           "scans; the `vs Alg. 1` columns score against Algorithm 1 labels, as the paper did."), ""]
    md += [f"- {n}" for n in notes] + [""]
    md.append(markdown_table(raw, truth_cols, "Tables 3-4: all models, no post-processing"))
    md.append(markdown_table(pp, truth_cols, "Tables 5-6: unsupervised models with post-processing"))
    md.append(markdown_table(sup, truth_cols, "Table 7: supervised, pseudo-labels vs Algorithm 1 labels"))
    md.append(markdown_table(rows, alg1_cols, "All rows scored against Algorithm 1 labels"))
    if comparison is not None:
        from porelab.metrics import welch_test

        pseudo, alg1 = comparison
        lines = []
        for key in ("val_ap", "hard_ap"):
            a = [m[key] for m in pseudo if m.get(key) is not None]
            b = [m[key] for m in alg1 if m.get(key) is not None]
            if len(a) > 1 and len(b) > 1:
                lines.append(f"- {key}: pseudo-labels {np.mean(a):.3f} vs Algorithm 1 labels "
                             f"{np.mean(b):.3f}, Welch p = {welch_test(a, b):.3g}")
        if lines:
            md += ["", "Pseudo-labels vs Algorithm 1 labels (same configuration):", *lines, ""]
    return {"tables/summary.csv": csv_text(rows), "tables/summary.md": "\n".join(md)}


def complexity_rows(profile, names) -> list[dict]:
    """``porelab.complexity.table`` for ``names`` at the profile's patch and width (cheap: meta device)."""
    from porelab.complexity import table

    return table(list(names), patch=profile.patch, scale=profile.net_scale)


__all__ = ["Entry", "build_tables", "complexity_rows", "csv_text", "markdown_table", "summary_rows"]
