"""``porelab evaluate`` (voxel metrics of a score volume) and ``porelab complexity`` (Table 8)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

_KEYS = ("name", "params", "trainable_params", "macs", "fwd_peak_mb", "bwd_peak_mb", "total_macs")


def _stem(path: Path) -> str:
    name = path.name.rstrip("/")
    for suffix in (".nii.gz", ".tiff", ".tif", ".npy", ".nii", ".mhd", ".mha", ".nrrd", ".raw", ".vol", ".zarr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _clean(obj):
    """JSON-safe: NaN → null, numpy scalars → Python."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item"):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


@click.command()
@click.argument("score", type=click.Path(path_type=Path))
@click.argument("truth", type=click.Path(path_type=Path))
@click.option("--mask", "object_mask", type=click.Path(path_type=Path), default=None,
              help="Object mask: only voxels inside it count (same (z, y, x) shape).")
@click.option("--threshold", type=float, default=None,
              help="Decision threshold for Dice (score ≥ T is a pore). Default: the F1-optimal threshold.")
@click.option("--method", type=click.Choice(["auto", "exact", "binned"]), default="auto", show_default=True,
              help="exact = scikit-learn on all voxels; binned = streaming 2^16-bin histogram (for >2e7 voxels).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Folder for <score>_pr_roc.png and <score>_metrics.json. Default: beside SCORE, "
              "or none with --json (print only).")
def evaluate(score, truth, object_mask, threshold, method, as_json, out_dir):
    """Voxel-wise AP, ROC-AUC and Dice of a SCORE volume against a TRUTH pore mask.

    SCORE is any scan format porelab reads (higher = more likely pore: a probability or an anomaly score);
    its NaN/infinite voxels (missing data, as `porelab segment` writes them) are left out, with a warning.
    TRUTH is a mask of the same (z, y, x) shape (boolean or 0/1; 1 = pore); a scan given as TRUTH or
    --mask is refused. AP is scikit-learn's step-wise average
    precision, Σ (R_n − R_{n−1}) P_n, on the pore class. Dice uses --threshold, or the F1-optimal threshold
    when none is given. Volumes above 2·10^7 voxels are evaluated by a streaming histogram (memory-mapped).

    Writes the PR/ROC figure and the metrics JSON into -o DIR (default: SCORE's folder; with --json and no
    -o nothing is written, the metrics are only printed).

    \b
    Example:
      porelab evaluate out/cyl1_score.npy data/cyl1_truth.npy --mask data/cyl1_object.npy --json
    """
    import numpy as np

    from porelab import metrics
    from porelab.errors import ConfigError, ScanError
    from porelab.io import iter_slabs, read_mask, read_volume, write_json
    from porelab.normalise import count_nonfinite
    from porelab.pores import check_binary_file

    if threshold is not None and not math.isfinite(threshold):
        raise ConfigError(f"--threshold must be a finite number, got {threshold}")
    vol = read_volume(score)
    s = vol.array
    check_binary_file(truth, role="truth")
    t = read_mask(truth)
    if t.shape != s.shape:
        raise ScanError(f"{truth}: truth shape {list(t.shape)} differs from score shape {list(s.shape)}")
    m = None
    if object_mask is not None:
        check_binary_file(object_mask, role="object mask")
        m = read_mask(object_mask)
        if m.shape != s.shape:
            raise ScanError(f"{object_mask}: mask shape {list(m.shape)} differs from score shape {list(s.shape)}")
        if not m.any():
            raise ScanError(f"{object_mask}: the object mask is empty")
    if not np.issubdtype(s.dtype, np.number):
        raise ScanError(f"{score}: score dtype {s.dtype} is not numeric")
    n_missing = count_nonfinite(s)
    if n_missing:  # missing voxels (NaN score) count as outside the object
        known = np.empty(s.shape, dtype=bool)
        for sl in iter_slabs(s.shape):
            known[sl] = np.isfinite(np.asarray(s[sl]))
        m = known if m is None else m & known
        if not m.any():
            raise ScanError(f"{score}: no finite score inside the object mask")
    n = s.size if m is None else int(m.sum())
    res = metrics.evaluate_scores(s, t, mask=m, threshold=threshold, method=method, progress=n > 2e7)
    res = {"score": str(score), "truth": str(truth), "mask": str(object_mask) if object_mask else None, **res,
           "nonfinite_voxels": n_missing}
    if n_missing:
        click.echo(f"porelab: warning: {n_missing} non-finite score voxels treated as missing (left out)",
                   err=True)

    write_files = out_dir is not None or not as_json  # --json alone prints and writes nothing
    out_dir = Path(out_dir) if out_dir is not None else Path(score).resolve().parent
    stem = _stem(Path(score))
    png = out_dir / f"{stem}_pr_roc.png"
    if write_files and res["pore_fraction"] and res["pore_fraction"] > 0:
        metrics.plot_pr_roc({stem: (s, t, m)}, png, method=method,
                            title=f"{stem}: AP {res['ap']:.3f}, ROC-AUC {res['auc']:.3f}")
        res["figure"] = str(png)
    else:
        res["figure"] = None
    if write_files:
        write_json(out_dir / f"{stem}_metrics.json", _clean(res))
    if as_json:
        click.echo(json.dumps(_clean(res), indent=2))
    else:
        for key in ("ap", "auc", "dice", "threshold", "best_threshold", "best_dice", "pore_fraction", "n_voxels"):
            v = res[key]
            click.echo(f"{key:<15} {v:.6g}" if isinstance(v, float) else f"{key:<15} {v}")
        click.echo(f"{'figure':<15} {res['figure']}")


@click.command()
@click.option("--patch", type=int, default=64, show_default=True, help="Cubic patch edge in voxels (multiple of 16).")
@click.option("--scale", type=float, default=1.0, show_default=True,
              help="Width multiplier of every net (1.0 = the paper's sizes).")
@click.option("--names", default=None, help="Comma-separated nets (default: all ten), e.g. unet,vae.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {name, params, trainable_params, macs, "
              "fwd_peak_mb, bwd_peak_mb, total_macs}.")
def complexity(patch, scale, names, as_json):
    """Parameters, MACs, peak memory and total MACs of the nets (Iuso et al. 2024, Table 8).

    Per net at one PATCH³ input (batch 1): parameters as Table 8 counts them (params: the vqVAE's codebook
    included) and those the optimiser trains (trainable_params); MACs of one forward pass (every convolution
    and matrix product); forward/backward peak memory in MiB (the CUDA allocator on a GPU; on CPU the
    tensors a training step keeps: saved activations + outputs, plus parameter gradients for backward);
    total MACs to infer an 800×800×2000 (x, y, z) scan with half-overlapping patches. The human table
    shows the paper's values and the ratio ours/paper. Runs on the meta device on CPU: seconds per net.

    \b
    Example:
      porelab complexity --names unet,vae --json
    """
    from porelab import complexity as cx
    from porelab.errors import ConfigError

    if scale <= 0:
        raise ConfigError(f"--scale must be > 0, got {scale}")
    if patch <= 0 or patch % 16:
        raise ConfigError(f"--patch must be a positive multiple of 16, got {patch}")
    selected = [n.strip() for n in names.split(",") if n.strip()] if names else None
    rows = cx.table(selected, patch=patch, scale=scale, progress=True)
    if as_json:
        click.echo(json.dumps([_clean({k: r[k] for k in _KEYS}) for r in rows], indent=2))
    else:
        click.echo(cx.format_table(rows, patch=patch))
