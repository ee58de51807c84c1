"""The time budget's rules with an injected clock (no waiting): phases, the split, trial admission, a trial
stopped at its study's deadline, per-epoch steps, the pruners, the leaderboard rows, the experiment tag."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest

from porelab.automl.budget import SAFETY_FRACTION, Budget, StudyClock, parse_minutes, tail_estimate
from porelab.automl.leaderboard import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    leaderboard_markdown,
    leaderboard_metrics,
    leaderboard_rows,
    run_name,
)
from porelab.automl.study import make_pruner, tracked_folds, trials_rows
from porelab.config import SearchSpace, get_profile
from porelab.crossval import Context
from porelab.errors import ConfigError

optuna.logging.set_verbosity(optuna.logging.WARNING)


class FakeClock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_budget_measures_phases_and_splits_what_is_left():
    clock = FakeClock()
    budget = Budget.minutes(10, clock=clock)                     # 600 s
    assert budget.end == pytest.approx(1000 + (1 - SAFETY_FRACTION) * 600)
    with budget.phase("data"):
        clock.t += 30
    assert budget.spent("data") == 30 and budget.elapsed() == 30
    # half of what is left once a 90 s reserve is set aside: (570 - 30 - 90) / 2
    assert budget.split(0.5, 90) == pytest.approx((600 * (1 - SAFETY_FRACTION) - 30 - 90) / 2)
    budget.plan("study_unsupervised", 200)
    with budget.phase("study_unsupervised"):
        clock.t += 250
    m = budget.metrics()
    assert m["spent_seconds_data"] == 30 and m["spent_seconds_study_unsupervised"] == 250
    assert m["planned_seconds_study_unsupervised"] == 200 and m["spent_seconds_total"] == 280
    assert m["budget_used_fraction"] == pytest.approx(280 / 600)
    assert budget.params()["planned_seconds_study_unsupervised"] == 200
    assert not Budget(None).limited and Budget(None).remaining() == math.inf


def test_time_budget_values():
    assert parse_minutes("", 30.0) == 30.0 and parse_minutes(None, None) is None
    assert parse_minutes("none", 30.0) is None and parse_minutes("0", 30.0) is None
    assert parse_minutes("2.5", 30.0) == 2.5
    for bad in ("-1", "abc", "nan"):
        with pytest.raises(ConfigError):
            parse_minutes(bad, 30.0)
    with pytest.raises(ConfigError):
        SearchSpace(time_budget=-1.0)


def test_a_trial_starts_only_if_it_can_reach_the_first_pruning_decision():
    clock = FakeClock()
    end = clock.t + 100
    sc = StudyClock(lambda: end, clock=clock, min_epochs=2)
    assert sc.admits()                                   # nothing measured: admitted while time is left
    sc.epoch_seconds += [20.0, 30.0, 25.0]               # median 25 s
    sc.score_seconds += [10.0]
    assert sc.first_decision_cost() == pytest.approx(2 * 25 + 10)
    clock.t = end - 61
    assert sc.admits()
    clock.t = end - 59
    assert not sc.admits() and "59 s left" in sc.stopped_reason
    clock.t = end + 1
    assert sc.expired() and not sc.admits()
    assert StudyClock(None).admits() and not StudyClock(None).expired()


def test_the_supervised_deadline_moves_with_measured_costs():
    # nothing measured: the fallback reserve; measured: registration + scoring the summary's scans + comparison
    assert tail_estimate(register=None, score_per_scan=None, summary_scans=8, heuristic=None, fallback=90) == 90
    assert tail_estimate(register=5, score_per_scan=3, summary_scans=8, heuristic=None, fallback=90) == 29
    assert tail_estimate(register=5, score_per_scan=3, summary_scans=8, heuristic=100, fallback=90) == 129


@pytest.fixture
def no_mlflow(monkeypatch):
    """The epoch hook's MLflow logging replaced by nothing: these tests are about reports and pruning."""
    from porelab import tracking

    monkeypatch.setattr(tracking, "log_metrics", lambda *a, **k: None)


def _ctx(profile="smoke") -> Context:
    return Context(get_profile(profile), 0, [], None, [0, 1], None)


def _losses(ref: float) -> dict:
    return {"train_loss": ref, "val_loss": ref, "val_ref": ref, "seconds": 1.0}


def test_epoch_reports_are_monotone_steps_across_folds(no_mlflow):
    ctx = _ctx()
    max_epochs = ctx.profile.unsupervised.max_epochs
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    trial = study.ask()
    hooks = tracked_folds(ctx, "cevae", trial, clock=StudyClock(None))
    for fold in ctx.folds:
        for epoch in range(max_epochs):
            hooks.epoch(fold, epoch, _losses(0.5 - 0.01 * (fold * max_epochs + epoch)))
    steps = sorted(study.trials[0].intermediate_values)
    assert steps == list(range(len(ctx.folds) * max_epochs))
    # the reported value is −val_ref: higher is better in a maximising study
    assert study.trials[0].intermediate_values[0] == pytest.approx(-0.5)


@pytest.mark.parametrize("has_complete", [True, False])
def test_a_trial_running_past_the_deadline_is_pruned_or_shortened(no_mlflow, has_complete):
    """Past the study's deadline: pruned after the current epoch when the study has a complete trial;
    else (nothing to register yet) the fold is told to stop after this epoch."""
    clock = FakeClock()
    end = clock.t + 10
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    if has_complete:
        study.add_trial(optuna.trial.create_trial(value=0.5, params={}, distributions={}))
    trial = study.ask()
    hooks = tracked_folds(_ctx(), "cevae", trial, clock=StudyClock(lambda: end, clock=clock))
    losses = _losses(0.3)
    hooks.epoch(0, 0, losses)                            # before the deadline: nothing happens
    assert "stop" not in losses
    clock.t = end + 1
    losses = _losses(0.3)
    if has_complete:
        with pytest.raises(optuna.TrialPruned, match="deadline"):
            hooks.epoch(0, 1, losses)
        assert trial.user_attrs["pruned_by"] == "deadline"
    else:
        hooks.epoch(0, 1, losses)
        assert losses["stop"] is True and trial.user_attrs["stopped_by_deadline"]


def test_successive_halving_prunes_a_flat_learning_curve_at_its_first_rung(no_mlflow):
    """The per-epoch hook and the profile's pruner (successive halving, first rung at step 1): a trial
    whose validation loss does not move (e.g. a learning rate of 1e-9) is pruned after its second epoch,
    against a first trial whose loss fell. (The same with real training: tests/test_search_budget.py.)"""

    ctx = _ctx()
    ctx.profile = ctx.profile.replace(unsupervised=ctx.profile.train_config("cevae", max_epochs=4))
    study = optuna.create_study(direction="maximize", pruner=make_pruner(ctx.profile, 4))
    curves = {0: [0.50, 0.30, 0.25, 0.22], 1: [0.50, 0.50, 0.50, 0.50]}
    epochs_run = {}
    for number, curve in curves.items():
        trial = study.ask()
        hooks = tracked_folds(ctx, "cevae", trial)
        epochs_run[number] = 0
        try:
            for fold in ctx.folds:
                for epoch, ref in enumerate(curve):
                    epochs_run[number] += 1
                    hooks.epoch(fold, epoch, _losses(ref - 0.01 * fold))
            study.tell(trial, 0.8)
        except optuna.TrialPruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    good, bad = study.trials
    assert good.state.name == "COMPLETE" and epochs_run[0] == 8
    assert bad.state.name == "PRUNED" and epochs_run[1] == 2 and sorted(bad.intermediate_values) == [0, 1]
    assert bad.user_attrs["pruned_by"] == "pruner"


def test_fit_stops_when_the_epoch_hook_asks():
    from porelab.nets import build
    from porelab.train import Sample, fit

    prof = get_profile("smoke")
    cfg = prof.train_config("vae", max_epochs=3, samples_per_volume=4, val_patches=4, queue_length=8)
    rng = np.random.default_rng(0)
    scans = [Sample(rng.random((32, 32, 32), dtype=np.float32), None, f"s{i}") for i in range(2)]
    seen = []

    def on_epoch(epoch, info):
        seen.append((epoch, info["val_ref"]))
        return "stop"

    _, history = fit(build("vae", scale=0.125, patch_size=16), "vae", scans[:1], scans[1:], cfg,
                     on_epoch=on_epoch, progress=False)
    assert history["epochs"] == 1 and history["stopped_by"] == "on_epoch" and len(seen) == 1
    # val_ref: the mean absolute reconstruction error, a finite non-negative number
    assert math.isfinite(seen[0][1]) and seen[0][1] >= 0


def test_the_pruner_follows_the_profile():
    prof = get_profile("quick")
    sha = make_pruner(prof, 30)
    assert isinstance(sha, optuna.pruners.SuccessiveHalvingPruner)
    hb = make_pruner(prof.replace(search=SearchSpace(pruner="hyperband")), 30)
    assert isinstance(hb, optuna.pruners.HyperbandPruner)
    with pytest.raises(ConfigError):
        SearchSpace(pruner="median")


def _complete(study, net, value, folds, seconds=12.0):
    study.add_trial(optuna.trial.create_trial(
        value=value, params={"net": net}, distributions={"net": optuna.distributions.CategoricalDistribution(
            ["vae", "cevae"])}, user_attrs={"fold_metrics": folds, "seconds": seconds}))


def test_leaderboard_has_one_row_per_architecture_with_mean_and_ci():
    study = optuna.create_study(direction="maximize")
    folds = [{"val_ap": 0.8, "val_auc": 0.9, "hard_ap": 0.6, "val_ap_pp": 0.85},
             {"val_ap": 0.6, "val_auc": 0.95, "hard_ap": 0.5, "val_ap_pp": 0.75}]
    _complete(study, "vae", 0.8, folds)
    _complete(study, "vae", 0.2, [{"val_ap": 0.2}, {"val_ap": 0.2}])        # not the best vae trial
    _complete(study, "cevae", 0.5, [{"val_ap": 0.5}, {"val_ap": 0.5}])
    rows = leaderboard_rows({"unsupervised": study, "supervised": None})
    assert [(r["net"], r["trial"]) for r in rows] == [("cevae", 2), ("vae", 0)]
    vae = rows[1]
    assert vae["val_ap"] == pytest.approx(0.7) and vae["test_ap"] == pytest.approx(0.55)
    assert vae["val_ap_ci95"] > 0 and vae["test_auc_pp"] is None and vae["seconds"] == 12.0
    assert "0.700 ±" in leaderboard_markdown(rows)
    assert leaderboard_metrics(rows)["lb_unsupervised_vae_val_ap"] == pytest.approx(0.7)
    table = trials_rows(study)
    assert [r["state"] for r in table] == ["COMPLETE"] * 3 and table[0]["seconds"] == 12.0


def test_run_name_and_experiment_kind():
    assert run_name("quick", "porelab", 0) == "quick-porelab-seed0"
    assert (EXPERIMENT_KIND_TAG, EXPERIMENT_KIND) == ("mlflow.experimentKind", "custom_model_development")


@pytest.mark.parametrize("args, message", [
    (["--time-budget", "abc"], "time budget 'abc'"),
    (["--time-budget", "-5"], "time budget must be > 0"),
    (["--experiment", " "], "experiment: give an MLflow experiment name"),
])
def test_bad_search_options_are_one_line_exit_2(tmp_path, args, message):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "from porelab.cli import main; main()", "search", "--profile",
                           "smoke", *args], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and message in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()
