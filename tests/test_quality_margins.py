"""benchmarks/quality.py ``margins``: the better production model against the best label-free classical row,
with the lead each preset asks for (0.10 AP on ``hard``, a tie elsewhere)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def quality():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "quality.py"
    spec = importlib.util.spec_from_file_location("quality_benchmark", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _result(models: dict, classical: dict, truth_rows: dict | None = None) -> dict:
    def row(cyl, cube):
        return {"cv_mean_ap": cyl, "hard_ap": cube}

    out = {"models": {n: row(*v) for n, v in models.items()}, "classical": {n: row(*v) for n, v in classical.items()}}
    if truth_rows:
        out["classical_truth_optimal"] = {n: row(*v) for n, v in truth_rows.items()}
    return out


def test_margins_pick_the_best_of_each_side_per_scan_group_and_apply_the_presets_lead(quality):
    r = _result({"sup": (0.70, 0.67), "unsup": (0.74, 0.49)},
                {"top-hat": (0.43, 0.54), "sauvola": (0.70, 0.43)},
                truth_rows={"oracle": (0.99, 0.99)})      # truth-chosen rows are reporting only: never compared
    hard = quality.margins(r, "hard")
    assert hard["required_lead"] == pytest.approx(0.10)
    assert (hard["cylinders"]["model"], hard["cylinders"]["classical"]) == ("unsup", "sauvola")
    assert hard["cylinders"]["lead"] == pytest.approx(0.04) and not hard["cylinders"]["met"]
    assert (hard["cube"]["model"], hard["cube"]["classical"]) == ("sup", "top-hat")
    assert hard["cube"]["lead"] == pytest.approx(0.13) and hard["cube"]["met"]
    easy = quality.margins(r, "quick")
    assert easy["required_lead"] == 0.0 and easy["cylinders"]["met"] and easy["cube"]["met"]
    text = quality.margins_text(hard)
    assert "lead +0.040" in text and "not met" in text and "lead +0.130" in text


def test_margins_need_both_sides(quality):
    r = _result({}, {"top-hat": (0.43, 0.54)})
    assert quality.margins(r, "hard") == {"required_lead": pytest.approx(0.10)}
    r = _result({"sup": (0.8, None)}, {"top-hat": (0.5, None)})
    m = quality.margins(r, "quick")
    assert "cube" not in m and m["cylinders"]["lead"] == pytest.approx(0.3)
