"""``report.html``: the pore report as one page a person reads, with nothing beside it.

One self-contained file: CSS inline, every figure an inline base64 PNG (matplotlib, Agg), no script and no
network reference, so it opens the same from a mail attachment, a share or an archive. It shows what the
numbers are of (scan name, size z×y×x, voxel size), how they were made (the model or algorithm and every
parameter in the summary's ``parameters``), the porosity with and without the pores cut by the field's
edge, the count per kind, the size histogram, sphericity against size, three orthogonal slices through
the largest pore with the mask overlaid, sum projections of the mask along z, y and x, and the largest
pores as a table.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import numpy as np

from porelab.io import atomic_path, iter_slabs
from porelab.pores.kinds import KINDS

#: colour of each pore kind in every figure of the page
KIND_COLOURS = {"gas": "#1f77b4", "keyhole": "#ff7f0e", "lack_of_fusion": "#d62728", "surface": "#9467bd"}
#: rows of the largest-pores table
TOP_N = 20
#: (column, header) of the largest-pores table; lengths get the report's unit
TABLE_COLUMNS = (("id", "id"), ("kind", "kind"), ("voxels", "voxels"), ("volume_mm3", "volume ({u}³)"),
                 ("eq_diameter_mm", "eq. diameter ({u})"), ("sphericity", "sphericity"),
                 ("centroid_z_mm", "z ({u})"), ("centroid_y_mm", "y ({u})"), ("centroid_x_mm", "x ({u})"),
                 ("aspect_ratio", "aspect ratio"), ("distance_to_surface_mm", "to surface ({u})"),
                 ("touches_edge", "cut by edge"))

_CSS = """
body { font-family: "DejaVu Sans", Arial, sans-serif; margin: 24px auto; max-width: 1150px; color: #1b1b1b;
       background: #ffffff; line-height: 1.35; }
h1 { font-size: 24px; margin: 0 0 4px 0; }
h2 { font-size: 18px; margin: 26px 0 8px 0; border-bottom: 2px solid #d0d7de; padding-bottom: 3px; }
.sub { color: #555; margin: 0 0 14px 0; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 8px 0; }
.card { background: #f3f6f9; border: 1px solid #d0d7de; border-radius: 6px; padding: 8px 14px; min-width: 150px; }
.card .v { font-size: 22px; font-weight: bold; color: #0b4f8a; }
.card .k { font-size: 12px; color: #555; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0; }
th, td { border: 1px solid #d0d7de; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #eef2f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.param { max-width: 760px; word-break: break-word; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 2px; margin-right: 5px; }
figure { margin: 10px 0; }
figure img { max-width: 100%; border: 1px solid #d0d7de; }
figcaption { font-size: 12px; color: #555; }
.note { font-size: 12px; color: #666; }
"""


def write_html_report(out_dir, summary: dict, table: list[dict], *, scan=None, mask=None,
                      spacing=None, title: str | None = None) -> Path:
    """Write ``out_dir/report.html`` (atomically) and return its path.

    Parameters
    ----------
    out_dir : folder that receives ``report.html`` (created if needed).
    summary : the dict of :func:`porelab.pores.summarise` (``summary.json``).
    table : its per-pore rows (:func:`porelab.pores.pore_table`, ``pores.csv``).
    scan : (z, y, x) array, optional — grey background of the slices and of the projections.
    mask : (z, y, x) bool/uint8 array, optional — the pore mask (slices and projections need it).
    spacing : voxel size (z, y, x); default the summary's ``spacing``.
    title : shown at the top (the scan's name); default "Pore report".
    """
    page = render_html(summary, table, scan=scan, mask=mask, spacing=spacing, title=title)
    return write_page(out_dir, page)


def write_page(out_dir, page: str) -> Path:
    """Write a page made by :func:`render_html` as ``out_dir/report.html``, atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.html"
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path


def render_html(summary: dict, table: list[dict], *, scan=None, mask=None, spacing=None,
                title: str | None = None) -> str:
    """The page of :func:`write_html_report` as a string (everything computed, nothing written)."""
    spacing = tuple(float(s) for s in (spacing if spacing is not None else summary.get("spacing", (1, 1, 1))))
    unit = "mm" if summary.get("units", "mm") == "mm" else "voxel"
    title = title or "Pore report"
    e = html.escape
    shape = summary.get("shape") or (list(np.shape(mask)) if mask is not None else None)
    size = "×".join(str(int(n)) for n in shape) if shape else "unknown"
    voxel = " × ".join(f"{s:.4g}" for s in spacing) + (" mm" if unit == "mm" else " (voxel units: size unknown)")
    params = summary.get("parameters") or {}
    method = _method(params)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)} — pore report</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        (f'<p class="sub">size {e(size)} voxels (z × y × x) · voxel size {e(voxel)} (z, y, x) · '
         f"segmentation: {e(method)}</p>"),
        "<h2>Porosity</h2>",
        _cards(summary, unit),
        (f'<p class="note">Porosity is relative to the {e(str(summary.get("porosity_reference", "object")))}. '
         f'{int(summary.get("edge_pore_count", 0))} pores touch the edge of the field of view (cut: their '
         "true size is unknown); the second number leaves them out.</p>"),
        "<h2>Pores per kind</h2>",
        _kinds_table(summary, unit),
        "<h2>Sizes and shapes</h2>",
        _figure(_histogram_png(table, unit), "Size histogram: equivalent sphere diameter, stacked by kind."),
        _figure(_scatter_png(table, unit),
                "Wadell sphericity (≤ 1; 1 = a sphere) against equivalent diameter, one dot per pore."),
    ]
    if mask is not None:
        from porelab.pores.report import _overlay_png

        m = _as_bool(mask)
        parts += [
            "<h2>Slices through the largest pore</h2>",
            _figure(_overlay_png(m, scan, summary.get("largest_pore"), spacing),
                    "Three orthogonal slices through the centroid of the largest pore; pores in red"
                    + ("" if scan is not None else " (no scan given: the mask alone)") + "."),
            "<h2>Projections through the part</h2>",
            _figure(_projection_png(m, scan, spacing),
                    "Pore voxels summed along each axis (a 3-D glimpse of where the pores are)"
                    + (", over the scan's mean projection in grey" if scan is not None else "") + "."),
        ]
    else:
        parts.append('<p class="note">No mask given: slices and projections are not shown.</p>')
    parts += [
        f"<h2>Largest pores (top {min(TOP_N, len(table))} of {len(table)} by volume)</h2>",
        _pores_table(table, unit),
        "<h2>Parameters</h2>",
        ('<p class="note">Every threshold and definition used for the numbers above (summary.json '
         "<code>parameters</code>).</p>"),
        _params_table(params),
        '<p class="note">Full per-pore table: pores.csv; all numbers: summary.json.</p>',
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------------------------------------ text parts
def _method(params: dict) -> str:
    """One line saying which model or algorithm made the mask."""
    if params.get("net") or params.get("model"):
        text = f"model {params.get('model', '')}".strip()
        if params.get("net"):
            text += f" (net {params['net']})"
        if params.get("threshold") is not None:
            text += f", threshold {_fmt(params['threshold'])}"
        if params.get("threshold_policy"):
            text += f" ({params['threshold_policy']})"
        return text
    if params.get("algorithm"):
        return str(params["algorithm"])
    return "the given mask (no model recorded)"


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return "–" if not math.isfinite(float(v)) else f"{float(v):.{digits}g}"
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v, default=str)
    return str(v)


def _cards(summary: dict, unit: str) -> str:
    e = html.escape
    p50 = (summary.get("eq_diameter_mm") or {}).get("p50")
    cards = [("porosity", f"{_fmt(summary.get('porosity_percent'))} %"),
             ("porosity without edge pores", f"{_fmt(summary.get('porosity_percent_without_edge_pores'))} %"),
             ("pores", _fmt(summary.get("pore_count"))),
             ("pores cut by the edge", _fmt(summary.get("edge_pore_count"))),
             (f"pore volume ({unit}³)", _fmt(summary.get("pore_volume_mm3"))),
             (f"median eq. diameter ({unit})", _fmt(p50))]
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="v">{e(v)}</div><div class="k">{e(k)}</div></div>' for k, v in cards
    ) + "</div>"


def _kinds_table(summary: dict, unit: str) -> str:
    e = html.escape
    rows = [f"<tr><th>kind</th><th>count</th><th>volume ({e(unit)}³)</th><th>porosity %</th></tr>"]
    for kind, v in (summary.get("kinds") or {}).items():
        colour = KIND_COLOURS.get(kind, "#777")
        rows.append(f'<tr><td><span class="swatch" style="background:{colour}"></span>{e(kind)}</td>'
                    f'<td class="num">{e(_fmt(v.get("count")))}</td><td class="num">{e(_fmt(v.get("volume_mm3")))}'
                    f'</td><td class="num">{e(_fmt(v.get("porosity_percent")))}</td></tr>')
    return "<table>" + "".join(rows) + "</table>"


def _pores_table(table: list[dict], unit: str) -> str:
    e = html.escape
    if not table:
        return '<p class="note">No pores.</p>'
    top = sorted(table, key=lambda r: (-int(r["voxels"]), int(r["id"])))[:TOP_N]
    cols = [(k, h.format(u=unit)) for k, h in TABLE_COLUMNS if k in top[0]]
    head = "".join(f"<th>{e(h)}</th>" for _, h in cols)
    body = []
    for r in top:
        cells = []
        for k, _ in cols:
            v = r.get(k)
            cls = ' class="num"' if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) else ""
            cells.append(f"<td{cls}>{e(_fmt(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="pores"><tr>{head}</tr>' + "".join(body) + "</table>"


def _params_table(params: dict) -> str:
    e = html.escape
    if not params:
        return '<p class="note">None recorded.</p>'
    rows = "".join(f'<tr><th>{e(str(k))}</th><td class="param">{e(_fmt(v, 6))}</td></tr>'
                   for k, v in params.items())
    return f"<table>{rows}</table>"


def _figure(png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


# ------------------------------------------------------------------------------------------------ figures
def _as_bool(m) -> np.ndarray:
    return m if getattr(m, "dtype", None) == bool else (np.asarray(m) != 0)


def _fig(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _log_x(ax) -> None:
    """Log x axis with plain decimal tick labels (0.5, 1, 2 rather than 5×10⁻¹)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_xscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:.2g}")
    ax.xaxis.set_major_formatter(plain)
    lo, hi = ax.get_xlim()
    # within about one decade the minor ticks (2, 3, … × 10^k) are the only labels: label them plainly too
    ax.xaxis.set_minor_formatter(plain if hi / lo < 20 else NullFormatter())


def _no_pores(ax) -> None:
    ax.text(0.5, 0.5, "no pores", ha="center", va="center", transform=ax.transAxes, fontsize=14)


def _histogram_png(table: list[dict], unit: str) -> bytes:
    """Equivalent diameters, log bins, stacked by kind."""
    fig = _fig(10, 3.8)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.15, top=0.9)
    ax = fig.add_subplot()
    d = np.array([r["eq_diameter_mm"] for r in table], dtype=float)
    if d.size:
        lo, hi = d.min(), d.max()
        bins = np.geomspace(lo * 0.95, hi * 1.05, 31) if hi > lo else np.array([lo * 0.9, lo * 1.1])
        kinds = [k for k in KINDS if any(r["kind"] == k for r in table)]
        data = [[r["eq_diameter_mm"] for r in table if r["kind"] == k] for k in kinds]
        ax.hist(data, bins=bins, stacked=True, color=[KIND_COLOURS.get(k, "#777") for k in kinds],
                edgecolor="black", linewidth=0.4, label=[f"{k} ({len(x)})" for k, x in zip(kinds, data, strict=True)])
        _log_x(ax)
        ax.legend(frameon=False)
    else:
        _no_pores(ax)
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"equivalent sphere diameter ({unit})")
    ax.set_ylabel("pores")
    ax.set_title(f"{len(table)} pores")
    return _png(fig)


def _scatter_png(table: list[dict], unit: str) -> bytes:
    """Sphericity against equivalent diameter, coloured by kind (pores without a sphericity are left out)."""
    fig = _fig(10, 4.2)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.14, top=0.9)
    ax = fig.add_subplot()
    rows = [r for r in table if r.get("sphericity") is not None]
    if rows:
        for k in KINDS:
            sel = [r for r in rows if r["kind"] == k]
            if sel:
                ax.scatter([r["eq_diameter_mm"] for r in sel], [r["sphericity"] for r in sel], s=30,
                           color=KIND_COLOURS.get(k, "#777"), edgecolor="black", linewidth=0.3, alpha=0.85,
                           label=f"{k} ({len(sel)})")
        _log_x(ax)
        ax.set_ylim(0, 1.05)
        ax.legend(frameon=False, loc="lower left")
    else:
        _no_pores(ax)
    ax.set_xlabel(f"equivalent sphere diameter ({unit})")
    ax.set_ylabel("sphericity (Wadell)")
    missing = len(table) - len(rows)
    ax.set_title("sphericity against size" + (f" ({missing} pores without a sphericity)" if missing else ""))
    return _png(fig)


def _projection_png(mask, scan, spacing) -> bytes:
    """Pore voxels summed along z, y and x (slab by slab: memory-mapped masks stay on disk), in a hot colour
    map over the scan's mean projection in grey."""
    nz, ny, nx = mask.shape
    sums = [np.zeros((ny, nx)), np.zeros((nz, nx)), np.zeros((nz, ny))]
    grey = [np.zeros((ny, nx)), np.zeros((nz, nx)), np.zeros((nz, ny))] if scan is not None else None
    for sl in iter_slabs(mask.shape):
        m = np.asarray(mask[sl]) != 0
        sums[0] += m.sum(axis=0)
        sums[1][sl] = m.sum(axis=1)
        sums[2][sl] = m.sum(axis=2)
        if grey is not None:
            g = np.asarray(scan[sl], dtype=np.float64)
            g = np.where(np.isfinite(g), g, 0.0)
            grey[0] += g.sum(axis=0) / nz
            grey[1][sl] = g.mean(axis=1)
            grey[2][sl] = g.mean(axis=2)
    fig = _fig(12, 4.4)
    fig.subplots_adjust(left=0.05, right=0.93, bottom=0.1, top=0.86, wspace=0.25)
    sz, sy, sx = spacing
    views = [("along z (top view)", ("x", "y"), sy / sx), ("along y", ("x", "z"), sz / sx),
             ("along x", ("y", "z"), sz / sy)]
    vmax = max(1.0, max(float(s.max()) for s in sums))
    im = None
    for k, (name, (xl, yl), aspect) in enumerate(views):
        ax = fig.add_subplot(1, 3, k + 1)
        if grey is not None:
            lo, hi = np.percentile(grey[k], [1, 99.5])
            ax.imshow(grey[k], cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, aspect=aspect,
                      interpolation="nearest")
        else:
            ax.imshow(np.zeros(sums[k].shape), cmap="gray", vmin=0, vmax=1, aspect=aspect)
        shown = np.ma.masked_equal(sums[k], 0)
        im = ax.imshow(shown, cmap="autumn_r", vmin=0, vmax=vmax, aspect=aspect, interpolation="nearest",
                       alpha=0.9)
        ax.set_title(f"{name}: {int(sums[k].sum())} pore voxels")
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
    cax = fig.add_axes([0.945, 0.15, 0.012, 0.66])
    fig.colorbar(im, cax=cax, label="pore voxels along the ray")
    return _png(fig)
