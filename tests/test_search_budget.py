"""Real training under the search's rules: the pruner stops a clearly worse configuration within two epochs,
a resumed study continues inside a new budget, and (slow) a smoke search keeps its time budget."""

from __future__ import annotations

import dataclasses
import time

import mlflow
import pytest

from porelab import tracking
from porelab.automl import pipeline
from porelab.automl.budget import StudyClock
from porelab.automl.study import make_study, run_study
from porelab.config import get_profile
from porelab.crossval import make_context


@pytest.mark.slow
def test_a_clearly_worse_configuration_is_pruned_within_two_epochs_in_a_resumed_study(mlflow_env, smoke_dataset,
                                                                                       tmp_path):
    """Trial 0 (the study's first configuration, lr 1e-3) completes; the study is resumed under a new
    budget with a configuration whose learning rate is 1e-9 (it cannot learn): successive halving stops it
    at its first rung, after two epochs of the four a trial may train (~2-8 min on a loaded 2-core machine;
    the same rule without training: tests/test_automl_budget.py)."""
    from optuna.trial import TrialState

    smoke = get_profile("smoke")
    prof = smoke.replace(unsupervised=dataclasses.replace(smoke.unsupervised, max_epochs=4, patience=10),
                         search=dataclasses.replace(smoke.search, lr_range=(1e-9, 1e-2)))
    ctx = make_context(prof, smoke_dataset.root, 0, folds=[0], workdir=tmp_path / "work")
    storage = mlflow_env["optuna_storage"]
    tracking.setup_mlflow()
    with mlflow.start_run():
        first = run_study(ctx, "unsupervised", "t", storage, 1)
        assert first.trials[0].params["lr"] == pytest.approx(1e-3)
        make_study("t-unsupervised", storage, seed=0).enqueue_trial({**first.trials[0].params, "lr": 1e-9})
        clock = StudyClock(lambda: time.monotonic() + 3600)          # a new (generous) budget
        study = run_study(ctx, "unsupervised", "t", storage, 1, clock=clock)
    good, bad = study.trials
    assert (good.number, good.state, bad.number, bad.state) == (0, TrialState.COMPLETE, 1, TrialState.PRUNED)
    assert sorted(good.intermediate_values) == [0, 1, 2, 3]
    assert sorted(bad.intermediate_values) == [0, 1] and bad.user_attrs["pruned_by"] == "pruner"
    assert bad.intermediate_values[1] < good.intermediate_values[1]     # −val_ref: worse reconstruction
    assert len(clock.epoch_seconds) == 2 and clock.trial_seconds.keys() == {1}


@pytest.mark.slow
def test_a_smoke_search_keeps_its_time_budget_and_registers_both_models(mlflow_env, smoke_dataset):
    """No trial cap: the budget alone decides how many trials run; the whole job (data included) ends within
    the budget + 10 % and both models are registered in Production."""
    smoke = get_profile("smoke")
    prof = smoke.replace(search=dataclasses.replace(smoke.search, n_trials_unsupervised=0, n_trials_supervised=0,
                                                    heuristic_comparison=True))
    minutes = 5.0
    t0 = time.monotonic()
    summary = pipeline.run_search(prof, data=str(smoke_dataset.root), storage=mlflow_env["optuna_storage"],
                                  seed=0, time_budget=minutes)
    wall = time.monotonic() - t0
    assert wall <= 1.1 * 60 * minutes, summary["phases"]
    client = mlflow.MlflowClient()
    for name in (pipeline.UNSUPERVISED_NAME, pipeline.SUPERVISED_NAME):
        assert client.get_model_version_by_alias(name, "production").current_stage == "Production"
    run = client.get_run(summary["run_id"])
    assert run.data.params["time_budget_minutes"] == "5.0"
    assert run.data.metrics["budget_seconds"] == 300 and run.data.metrics["spent_seconds_total"] <= 330
    assert summary["unsupervised"]["trials"] >= 1 and summary["supervised"]["trials"] >= 1
    # what was registered (best fold or fold ensemble) was chosen on the test scan's injected pores, and the
    # production model is that form
    from porelab import tracking
    from porelab.automl import ensemble

    for kind, name in (("unsupervised", pipeline.UNSUPERVISED_NAME), ("supervised", pipeline.SUPERVISED_NAME)):
        form = summary[f"{kind}_registry"]["registered_form"]
        assert run.data.tags[f"porelab.registered_form.{kind}"].startswith(form)
        ap_best, ap_ens = (run.data.metrics[f"{kind}_ap_inj_{k}"] for k in ("best_fold", "fold_ensemble"))
        model = tracking.resolve_model(name)
        assert model.meta["registered_form"] == form
        won = ap_ens >= ap_best + ensemble.MARGIN
        assert (model.members, form.startswith("fold ensemble")) == ((2, True) if won else (1, False))


def test_a_budgeted_search_with_the_algorithm1_comparison_runs_every_step(mlflow_env, smoke_dataset):
    """The quick profile's steps at smoke sizes: a time budget (so the supervised study's deadline is planned
    from measured costs before its first trial) and the Algorithm 1 comparison after it. One trial per study
    (the smoke cap); the comparison runs or is skipped with a tag saying why, depending on the time left."""
    smoke = get_profile("smoke")
    prof = smoke.replace(search=dataclasses.replace(smoke.search, heuristic_comparison=True))
    summary = pipeline.run_search(prof, data=str(smoke_dataset.root), storage=mlflow_env["optuna_storage"],
                                  seed=0, time_budget=4.0)
    client = mlflow.MlflowClient()
    for name in (pipeline.UNSUPERVISED_NAME, pipeline.SUPERVISED_NAME):
        assert client.get_model_version_by_alias(name, "production").current_stage == "Production"
    run = client.get_run(summary["run_id"])
    assert run.data.metrics["planned_seconds_study_supervised"] > 0
    assert summary["heuristic_comparison"] or "porelab.skipped.heuristic_comparison" in run.data.tags
