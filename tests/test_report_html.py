"""report.html: one self-contained page (inline CSS and PNGs, no script, no network) with every part a quality
engineer reads, written by `porelab report` and `porelab segment`, and rendered by a real headless browser."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from porelab.cli import main

IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
PARAMS = {"model": "models/unet", "net": "unet", "threshold": 0.42, "threshold_policy": "f1-optimal"}


def _colours(rgb: np.ndarray) -> int:
    """Distinct colours of an (..., 3) uint8-valued image."""
    packed = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    return int(np.unique(packed).size)


def _pngs(page: str) -> list[Image.Image]:
    out = []
    for data in IMG.findall(page):
        im = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        im.load()
        assert im.format == "PNG"
        out.append(im)
    return out


@pytest.fixture(scope="module")
def report(smoke_dataset, tmp_path_factory):
    from porelab.io import read_volume
    from porelab.pores import write_report

    s = smoke_dataset.cv[0]
    out = tmp_path_factory.mktemp("html") / "cyl1_report"
    summary = write_report(np.load(s.truth), out, volume=read_volume(s.scan), parameters=PARAMS)
    return out, summary, (out / "report.html").read_text(encoding="utf-8")


def test_the_page_is_self_contained(report):
    _, _, page = report
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert "http://" not in page and "https://" not in page and "url(" not in page
    assert re.findall(r'src="([^"]{0,22})', page) == ["data:image/png;base64,"] * 4   # nothing else is loaded


def test_the_page_shows_what_the_summary_says(report):
    from porelab.reporting.html import _fmt

    out, summary, page = report
    assert "<h1>cyl1_scan.npy</h1>" in page                              # the scan's name
    assert "size 32×48×48 voxels (z × y × x)" in page
    assert f"voxel size {summary['spacing'][0]:.4g} × " in page
    assert "model models/unet (net unet), threshold 0.42 (f1-optimal)" in page
    for key in ("porosity_percent", "porosity_percent_without_edge_pores"):
        assert f'<div class="v">{_fmt(summary[key])} %</div>' in page
    for kind, v in summary["kinds"].items():
        assert re.search(rf"</span>{kind}</td><td class=\"num\">{v['count']}</td>", page), kind
    for key in summary["parameters"]:                                   # every parameter, definitions too
        assert f"<tr><th>{key}</th>" in page
    table = page.split('<table class="pores">')[1].split("</table>")[0]
    assert table.count("<tr>") == 1 + min(20, summary["pore_count"])
    assert json.loads((out / "summary.json").read_text())["pore_count"] == summary["pore_count"] > 0


def test_every_figure_is_a_real_png(report):
    _, _, page = report
    images = _pngs(page)
    # size histogram, sphericity scatter, slices through the largest pore, projections
    assert [im.size for im in images] == [(1000, 380), (1000, 420), (1200, 440), (1200, 440)]
    for im in images:
        a = np.asarray(im.convert("RGB"))
        # drawn, not blank: a blank figure has std 0 and one colour; a sparse scatter on white measured 19-20
        assert a.std() > 8 and _colours(a) > 20


def test_text_is_escaped(tmp_path):
    from porelab.pores import pore_table, summarise
    from porelab.reporting.html import write_html_report

    mask = np.zeros((8, 8, 8), bool)
    mask[2:4, 2:4, 2:4] = True
    summary = summarise(mask, parameters={"note": "<script>alert(1)</script>"})
    path = write_html_report(tmp_path, summary, pore_table(mask), mask=mask, title="a<b>&c")
    page = path.read_text()
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<h1>a&lt;b&gt;&amp;c</h1>" in page


def test_mask_only_and_without_mask(tmp_path):
    from porelab.pores import pore_table, summarise
    from porelab.reporting.html import write_html_report

    mask = np.zeros((10, 12, 12), np.uint8)
    mask[3:6, 3:6, 3:6] = 1
    mask[7, 9, 9] = 1
    table = pore_table(mask)
    summary = summarise(mask, table=table)
    page = write_html_report(tmp_path / "a", summary, table, mask=mask).read_text()
    assert len(_pngs(page)) == 4 and "(no scan given: the mask alone)" in page
    assert "segmentation: the given mask (no model recorded)" in page and "<h1>Pore report</h1>" in page
    page = write_html_report(tmp_path / "b", summary, table).read_text()
    assert len(_pngs(page)) == 2 and "No mask given" in page


def test_the_table_holds_the_20_largest_pores_largest_first(tmp_path):
    from porelab.pores import write_report

    mask = np.zeros((7, 27, 27), bool)
    sizes = [1 + (7 * k) % 25 for k in range(25)]                 # 25 pores of 1..25 voxels, shuffled
    for k, n in enumerate(sizes):                                 # the first n voxels of a 3³ cell (connected)
        cell = np.zeros(27, bool)
        cell[:n] = True
        y, x = 2 + 5 * (k // 5), 2 + 5 * (k % 5)
        mask[2:5, y:y + 3, x:x + 3] = cell.reshape(3, 3, 3)
    summary = write_report(mask, tmp_path, spacing=(0.1, 0.1, 0.1))
    table = (tmp_path / "report.html").read_text().split('<table class="pores">')[1].split("</table>")[0]
    rows = re.findall(r"<tr><td class=\"num\">(\d+)</td><td>\w+</td><td class=\"num\">(\d+)</td>", table)
    voxels = [int(v) for _, v in rows]
    assert summary["pore_count"] == 25 and len(rows) == 20
    assert voxels == list(range(25, 5, -1))
    assert "(top 20 of" in (tmp_path / "report.html").read_text()


def test_porelab_report_writes_report_html(smoke_dataset, tmp_path):
    s = smoke_dataset.cv[1]
    out = tmp_path / "rep"
    res = CliRunner().invoke(main, ["report", str(s.truth), "-o", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    page = (out / "report.html").read_text()
    assert len(_pngs(page)) == 4 and "(no scan given: the mask alone)" in page


def test_porelab_segment_writes_report_html(smoke_dataset, tmp_path):
    import torch

    from porelab.model import PoreModel
    from porelab.nets import build
    from porelab.normalise import Normalisation

    s = smoke_dataset.cv[0]
    raw = np.load(s.scan)
    torch.manual_seed(0)
    model = PoreModel.from_trained(build("unet", scale=0.125), "unet", Normalisation.fit(raw), "smoke", patch=16,
                                   threshold=0.5, overlap=0.0)
    model.save(tmp_path / "model")
    out = tmp_path / "seg"
    res = CliRunner().invoke(main, ["segment", str(s.scan), "-o", str(out), "--model", str(tmp_path / "model"),
                                    "--no-score"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    page = (out / "report.html").read_text()
    assert "<h1>cyl1_scan.npy</h1>" in page and "(net unet), threshold 0.5" in page
    assert len(_pngs(page)) == 4


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="chromium is not on PATH (Debian: apt-get install chromium; .ci/run installs it)")
def test_a_headless_browser_renders_the_page(report, tmp_path):
    out, _, _ = report
    shot = tmp_path / "shot.png"
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2400",
           (out / "report.html").resolve().as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    a = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int32)
    assert a.shape == (2400, 1200, 3)
    assert a.std() > 30 and _colours(a) > 200
    assert (a != 255).any(axis=-1).mean() > 0.12                       # much more than text on white
    # the figures themselves are on screen: the histogram's blue bars and the scan's dark air in the slices
    assert (np.abs(a - [0x1F, 0x77, 0xB4]).sum(axis=-1) < 40).sum() > 3000
    assert (a.sum(axis=-1) < 120).sum() > 30000
