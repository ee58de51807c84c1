"""The pore report: ``summary.json`` (porosity, per kind, with and without pores cut by the field's edge),
``pores.csv``, a size histogram and a slice overlay. The per-pore numbers are defined in
:mod:`porelab.pores.table`.

* **Porosity %** = pore voxels inside the watertight object / object voxels × 100. The object is the one
  given, or Algorithm 1 steps 6-8 (:func:`porelab.labels.object_mask`) on the scan, or else — said in
  ``porosity_reference`` — all voxels of the field. ``porosity_percent_without_edge_pores`` leaves out the
  pores with ``touches_edge`` (cut by the field of view), over the same object volume; ``kinds`` gives the
  count, volume and porosity of each kind.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from scipy import ndimage

from porelab.io import atomic_path, iter_slabs, write_json
from porelab.pores.kinds import KINDS
from porelab.pores.table import (
    COLUMNS,
    DEFINITIONS,
    EDT_MAX_VOXELS,
    SIX_CONNECTED,
    _as_bool,
    _check_spacing,
    _crop_box,
    _object_from_scan,
    grid_factors,
    pore_table,
)


def _inside_per_pore(m: np.ndarray, object_mask, n: int) -> np.ndarray:
    """(n,) voxels of each pore (ids as in :func:`pore_table`: 6-connected labels of the mask's bounding box
    in raster order) that lie inside ``object_mask`` (every voxel when it is None)."""
    box = _crop_box(m)
    if box is None:
        return np.zeros(0, dtype=np.int64)
    lab, k = ndimage.label(m[box], structure=SIX_CONNECTED)
    if k != n:
        raise ValueError(f"the table has {n} pores, the mask {k}: the table is of another mask")
    if object_mask is not None:
        lab = lab[np.asarray(object_mask[box]) != 0]
    return np.bincount(lab.ravel(), minlength=n + 1)[1:]


def summarise(mask, *, spacing=(1.0, 1.0, 1.0), object_mask=None, volume=None, table=None,
              parameters: dict | None = None, spacing_known: bool = True) -> dict:
    """Porosity and size statistics of a pore mask.

    Returns a dict with ``pore_count``, ``pore_volume_voxels``, ``pore_volume_mm3``, ``object_volume_voxels``,
    ``object_volume_mm3``, ``porosity_percent``, ``porosity_reference`` (which object the percentage is
    relative to), ``edge_pore_count`` (pores with ``touches_edge``), ``porosity_percent_without_edge_pores``
    (the same ratio without them), ``kinds`` (for each of ``gas``, ``keyhole``, ``lack_of_fusion``,
    ``surface``: ``count``, ``volume_mm3``, ``porosity_percent``), ``eq_diameter_mm`` percentiles
    ``p10``/``p50``/``p90``/``p99`` (None without pores), ``sphericity_median``, ``largest_pore`` (its table
    row), ``shape``, ``spacing``, ``units`` ("mm" or "voxel") and ``parameters`` (the definitions used, plus
    any given ``parameters`` such as a segmentation threshold).

    The object is ``object_mask`` if given, else Algorithm 1's watertight object of ``volume`` (a scan) if
    given, else every voxel. ``table`` (from :func:`pore_table` on the same mask) avoids recomputing it.
    """
    m = _as_bool(mask)
    spacing = _check_spacing(spacing)
    if object_mask is None and volume is not None:
        object_mask = _object_from_scan(volume)
        reference = "watertight object from the scan (Algorithm 1 steps 6-8)"
    elif object_mask is not None:
        reference = "watertight object (given object mask)"
    else:
        reference = "all voxels of the field (no object mask or scan given)"
    if table is None:
        table = pore_table(m, spacing=spacing, object_mask=object_mask)
    pore_vox = int(sum(np.count_nonzero(m[sl]) for sl in iter_slabs(m.shape)))
    if object_mask is not None:
        obj_vox = 0
        for sl in iter_slabs(m.shape):
            obj_vox += int(np.count_nonzero(np.asarray(object_mask[sl])))
    else:
        obj_vox = int(m.size)
    inside = _inside_per_pore(m, object_mask, len(table))
    voxel_volume = spacing[0] * spacing[1] * spacing[2]

    def pct(voxels) -> float:
        return 100.0 * int(voxels) / obj_vox if obj_vox else 0.0

    edge = np.array([bool(r["touches_edge"]) for r in table], dtype=bool)
    kind = np.array([r["kind"] for r in table], dtype=object)
    vox = np.array([r["voxels"] for r in table], dtype=np.int64)
    kinds = {k: {"count": int(np.count_nonzero(kind == k)),
                 "volume_mm3": float(vox[kind == k].sum() * voxel_volume),
                 "porosity_percent": pct(inside[kind == k].sum())} for k in KINDS}
    d = np.array([r["eq_diameter_mm"] for r in table])
    perc = {f"p{q}": (float(np.percentile(d, q)) if d.size else None) for q in (10, 50, 90, 99)}
    largest = max(table, key=lambda r: r["voxels"]) if table else None
    params = dict(DEFINITIONS)
    if object_mask is not None:
        box = _crop_box(np.asarray(object_mask) != 0)
        shape = [min(b.stop + 1, n) - max(b.start - 1, 0) for b, n in zip(box, m.shape, strict=True)] \
            if box is not None else [1, 1, 1]
        params["distance_grid_factor"] = list(grid_factors(shape, spacing, EDT_MAX_VOXELS))
    params.update(parameters or {})
    sph = [r["sphericity"] for r in table if r["sphericity"] is not None]
    return {
        "pore_count": len(table),
        "pore_volume_voxels": pore_vox,
        "pore_volume_mm3": pore_vox * voxel_volume,
        "object_volume_voxels": obj_vox,
        "object_volume_mm3": obj_vox * voxel_volume,
        "porosity_percent": pct(inside.sum()),
        "porosity_reference": reference,
        "edge_pore_count": int(edge.sum()),
        "porosity_percent_without_edge_pores": pct(inside[~edge].sum()),
        "kinds": kinds,
        "eq_diameter_mm": perc,
        "sphericity_median": float(np.median(sph)) if sph else None,
        "largest_pore": largest,
        "shape": list(m.shape),
        "spacing": list(spacing),
        "units": "mm" if spacing_known else "voxel",
        "parameters": params,
    }


def write_report(mask, out_dir, *, volume=None, spacing=None, object_mask=None, score=None,
                 parameters: dict | None = None, progress: bool = False, title: str | None = None) -> dict:
    """Write ``pores.csv``, ``summary.json``, ``size_histogram.png``, ``overlay.png`` and ``report.html`` (the
    whole report as one self-contained page, :mod:`porelab.reporting.html`) into ``out_dir``.

    Parameters
    ----------
    mask : (z, y, x) bool/uint8 array
    out_dir : folder (created if needed; other files in it are left alone)
    volume : array or :class:`porelab.io.Volume`, optional
        The scan: grey background of the overlay, source of the spacing (if its file had one) and of the
        watertight object (Algorithm 1 steps 6-8) when ``object_mask`` is not given.
    spacing : 3 floats, optional
        Voxel size (z, y, x) in mm; else the volume's known spacing; else voxel units (``units: "voxel"``).
    object_mask, score : arrays, optional
        See :func:`pore_table` and :func:`summarise`.
    parameters : dict, optional
        Extra provenance stored in ``summary.json`` (threshold, model, …).
    title : str, optional
        Heading of ``report.html``; default the scan file's name (a :class:`porelab.io.Volume` read from a file).

    Returns
    -------
    dict — the summary written to ``summary.json``.

    Everything is computed before anything is written, and each file is written atomically.
    """
    from porelab.io import Volume

    m = _as_bool(mask)
    scan = volume.array if isinstance(volume, Volume) else volume
    known = True
    if spacing is None:
        if isinstance(volume, Volume) and volume.spacing_known:
            spacing = volume.spacing
        else:
            spacing, known = (1.0, 1.0, 1.0), False
    spacing = _check_spacing(spacing)
    if scan is not None and tuple(scan.shape) != m.shape:
        from porelab.errors import ScanError

        raise ScanError(f"scan shape {tuple(scan.shape)} differs from the mask's {m.shape}")
    if object_mask is None and scan is not None:
        object_mask = _object_from_scan(scan, progress=progress)
        reference_from_scan = True
    else:
        reference_from_scan = False
    table = pore_table(m, spacing=spacing, object_mask=object_mask, score=score, progress=progress)
    summary = summarise(m, spacing=spacing, object_mask=object_mask, table=table, parameters=parameters,
                        spacing_known=known)
    if reference_from_scan:
        summary["porosity_reference"] = "watertight object from the scan (Algorithm 1 steps 6-8)"
    hist_png = _histogram_png(table, "mm" if known else "voxel")
    overlay_png = _overlay_png(m, scan, summary["largest_pore"], spacing)
    from porelab.reporting.html import render_html, write_page

    if title is None and isinstance(volume, Volume) and volume.path is not None:
        title = Path(volume.path).name
    page = render_html(summary, table, scan=scan, mask=m, spacing=spacing, title=title)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "pores.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in table:
            w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    write_json(out / "summary.json", summary)
    for name, data in (("size_histogram.png", hist_png), ("overlay.png", overlay_png)):
        with atomic_path(out / name) as tmp:
            tmp.write_bytes(data)
    write_page(out, page)
    return summary


def _figure(w, h):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")  # no bbox_inches="tight": it renders the figure twice
    return buf.getvalue()


def _histogram_png(table, unit: str) -> bytes:
    fig = _figure(6, 4)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.14, top=0.9)
    ax = fig.add_subplot()
    d = np.array([r["eq_diameter_mm"] for r in table])
    if d.size:
        lo, hi = d.min(), d.max()
        bins = np.geomspace(lo * 0.95, hi * 1.05, 31) if hi > lo else np.array([lo * 0.9, lo * 1.1])
        ax.hist(d, bins=bins, color="tab:red", edgecolor="black", linewidth=0.4)
        ax.set_xscale("log")
    else:
        ax.text(0.5, 0.5, "no pores", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(f"equivalent sphere diameter ({unit})")
    ax.set_ylabel("pores")
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"{len(table)} pores")
    return _png(fig)


def _overlay_png(m: np.ndarray, scan, largest, spacing) -> bytes:
    """Three orthogonal slices (z, y, x) through the largest pore's centroid (else the slice with the most
    pore voxels): scan in grey (or the mask alone), pores in translucent red."""
    if largest is not None:
        c = [round(largest[f"centroid_{a}_mm"] / s) for a, s in zip("zyx", spacing, strict=True)]
    else:
        c = [s // 2 for s in m.shape]
    c = [min(max(v, 0), s - 1) for v, s in zip(c, m.shape, strict=True)]
    fig = _figure(12, 4.4)
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.1, top=0.84, wspace=0.25)
    sz, sy, sx = spacing
    views = [("z", (c[0], slice(None), slice(None)), ("x", "y"), sy / sx),
             ("y", (slice(None), c[1], slice(None)), ("x", "z"), sz / sx),
             ("x", (slice(None), slice(None), c[2]), ("y", "z"), sz / sy)]
    for k, (axis, index, (xl, yl), aspect) in enumerate(views):
        ax = fig.add_subplot(1, 3, k + 1)
        pm = np.asarray(m[index])
        if scan is not None:
            g = np.asarray(scan[index], dtype=np.float32)
            fin = g[np.isfinite(g)]
            lo, hi = (np.percentile(fin, [1, 99.5]) if fin.size else (0, 1))
            ax.imshow(g, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest",
                      aspect=aspect)
        else:
            ax.imshow(np.zeros(pm.shape), cmap="gray", vmin=0, vmax=1, aspect=aspect)
        rgba = np.zeros(pm.shape + (4,), dtype=np.float32)
        rgba[pm] = (1.0, 0.1, 0.1, 0.6)
        ax.imshow(rgba, interpolation="nearest", aspect=aspect)
        ax.set_title(f"{axis} = {c['zyx'.index(axis)]}  ({int(pm.sum())} pore voxels)")
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
    if largest is not None:
        fig.suptitle(f"through the largest pore (id {largest['id']}, {largest['voxels']} voxels)")
    return _png(fig)
