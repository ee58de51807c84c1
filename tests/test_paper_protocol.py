"""The paper profile's supervised search (Iuso et al. 2024, §4.3, §5.1): α × β at a fixed γ on the first net,
then γ at the best α, β, then every other net at the optimum, as enqueued trials of one Optuna study;
resumed without repeating a trained parameter set. Fast tests use a stand-in objective through the real
supervised space; the slow one trains at smoke sizes through ``run_study``."""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest

from porelab.automl.protocol import STAGE_ATTR, _guarded, paper_stages, protocol_trials, run_paper_protocol
from porelab.automl.spaces import PAPER_ALPHAS, PAPER_GAMMAS, get_space
from porelab.config import PAPER_FTL_ALPHAS, PAPER_FTL_GAMMA0, PAPER_FTL_GAMMAS, SearchSpace, get_profile
from porelab.errors import ConfigError

PAPER = get_profile("paper")
NETS = PAPER.search.supervised_nets                  # unet first
BONUS = {"unet": 0.0, "mssunet": 0.01, "unetpp": 0.03, "unet3p": 0.02, "accunet": -0.01}
A_STAR, B_STAR, G_STAR = PAPER_ALPHAS[1], PAPER_ALPHAS[2], 4 / 3       # the stand-in's argmax on the grids


def value(net, a, b, g):
    return -(a - 0.366) ** 2 - (b - 0.633) ** 2 - (g - 4 / 3) ** 2 + BONUS[net]


def stand_in(calls, prune=(), fail=()):
    """An objective that suggests through the paper profile's supervised space (so enqueued values must be
    its categorical choices) and returns :func:`value`; parameter sets in ``prune``/``fail`` are pruned/fail."""
    import optuna

    def run(trial):
        net, _kwargs, loss = get_space("supervised")(trial, PAPER)
        key = (net, loss["alpha"], loss["beta"], loss["gamma"])
        calls.append(key)
        if key in prune:
            raise optuna.TrialPruned("stand-in")
        if key in fail:
            raise RuntimeError("stand-in failure")
        return value(*key)

    return run


def new_study(storage=None, name="sup"):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True,
                               sampler=optuna.samplers.TPESampler(seed=0))


def run(study, calls, **kw):
    return run_paper_protocol(study, stand_in(calls, **kw.pop("objective", {})), **paper_stages(PAPER.search), **kw)


def stage_keys(study, stage):
    return [(t.params["net"], t.params["alpha"], t.params["beta"], t.params["gamma"]) for t in study.trials
            if t.user_attrs.get(STAGE_ATTR) == stage]


def test_the_three_stages_walk_alpha_beta_then_gamma_then_the_nets_at_the_optimum():
    calls: list = []
    study = new_study()
    result = run(study, calls)
    g0 = PAPER_FTL_GAMMA0
    assert g0 == 0.5                                                      # §4.3: "kept at 0.5"
    s1 = stage_keys(study, "stage1")
    assert sorted(s1) == sorted(("unet", a, b, g0) for a, b in itertools.product(PAPER_ALPHAS, PAPER_ALPHAS))
    assert [t.number for t in study.trials if t.user_attrs.get(STAGE_ATTR) == "stage1"] == list(range(16))
    assert result["stage1"] == {"net": "unet", "alpha": A_STAR, "beta": B_STAR, "gamma": g0,
                                "value": pytest.approx(value("unet", A_STAR, B_STAR, g0)),
                                "trial": result["stage1"]["trial"], "param_sets": 16, "complete": 16}
    # stage 2: the 8 γ at the best α, β; the set at γ0 is stage 1's trial, not trained again
    s2 = stage_keys(study, "stage2")
    assert sorted(s2) == sorted(("unet", A_STAR, B_STAR, g) for g in PAPER_GAMMAS if g != g0)
    assert result["stage2"]["gamma"] == G_STAR and result["stage2"]["param_sets"] == 8
    assert result["stage2"]["complete"] == 8
    # stage 3: every other net at (α*, β*, γ*); the first net's row is stage 2's best trial
    assert stage_keys(study, "stage3") == [(n, A_STAR, B_STAR, G_STAR) for n in NETS[1:]]
    assert [r["net"] for r in result["stage3"]] == list(NETS)
    assert result["stage3"][0]["trial"] == result["stage2"]["trial"]
    assert all(r["state"] == "COMPLETE" for r in result["stage3"]) and result["finished"]
    # nothing trained twice; the paper profile's cap is exactly the protocol
    assert len(calls) == len(set(calls)) == len(study.trials) == 16 + 7 + 4
    assert PAPER.search.n_trials_supervised == len(study.trials) == protocol_trials(
        NETS, PAPER_ALPHAS, PAPER_ALPHAS, PAPER_GAMMAS, g0)


def test_stage_one_at_gamma_one_runs_all_eight_gammas_in_stage_two():
    """With γ0 = 1 (also a γ grid value) the protocol has the same shape: 16 + 7 + (nets − 1)."""
    calls: list = []
    study = new_study()
    stages = {**paper_stages(PAPER.search), "gamma0": 1.0}
    result = run_paper_protocol(study, stand_in(calls), **stages)
    assert {k[3] for k in stage_keys(study, "stage1")} == {1.0}
    assert result["stage1"]["alpha"] == A_STAR and result["stage1"]["beta"] == B_STAR
    assert result["stage2"]["gamma"] == G_STAR and len(stage_keys(study, "stage2")) == 7
    assert len(study.trials) == 27


def test_a_resumed_study_does_not_repeat_finished_or_queued_trials(tmp_path):
    """Stopped by the trial cap during stage 1 (10 of 16 run, 6 left queued), then after stage 1's last
    trial (stage 2 queued, none run): each resumption, with a new study object on the same storage, runs only
    what is missing, and the choices are the uninterrupted ones."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    calls: list = []
    r1 = run(new_study(storage), calls, n_trials=10)
    assert r1 == {"stage1": None, "stage2": None, "stage3": None, "finished": False} and len(calls) == 10
    r2 = run(new_study(storage), calls, n_trials=6)
    assert len(calls) == 16 and r2["stage1"]["alpha"] == A_STAR and r2["stage2"] is None
    study = new_study(storage)
    assert len(study.trials) == 16 + 7                    # stage 2 enqueued, waiting
    r3 = run(study, calls)
    assert len(calls) == len(set(calls)) == len(study.trials) == 27
    assert r3["finished"] and (r3["stage1"]["alpha"], r3["stage1"]["beta"], r3["stage2"]["gamma"]) == (
        A_STAR, B_STAR, G_STAR)
    assert run(new_study(storage), calls)["finished"] and len(calls) == 27      # a finished study: nothing to run


def test_pruned_sets_do_not_compete_and_failed_sets_are_retried_when_resumed():
    calls: list = []
    study = new_study()
    best_pair = ("unet", A_STAR, B_STAR, PAPER_FTL_GAMMA0)
    failing = ("unet", PAPER_ALPHAS[0], PAPER_ALPHAS[0], PAPER_FTL_GAMMA0)
    result = run(study, calls, objective={"prune": {best_pair}, "fail": {failing}})
    assert (result["stage1"]["alpha"], result["stage1"]["beta"]) != (A_STAR, B_STAR)
    assert result["stage1"]["complete"] == 14 and result["finished"]
    n = len(calls)
    run(study, calls)                          # resumed: only the failed set runs again (now it completes)
    assert calls[n:n + 1] == [failing] and best_pair not in calls[n:]


def test_a_trial_the_sampler_would_fill_is_pruned_before_it_suggests():
    from optuna.trial import TrialState

    calls: list = []
    study = new_study()
    study.optimize(_guarded(stand_in(calls)), n_trials=1)
    assert not calls and study.trials[0].state == TrialState.PRUNED and study.trials[0].params == {}


def test_the_grids_are_the_papers_and_other_values_are_one_line_errors():
    assert PAPER_FTL_ALPHAS == PAPER_ALPHAS and PAPER_FTL_GAMMAS == PAPER_GAMMAS
    assert paper_stages(SearchSpace(paper_alphas=(0.3666667, 0.9)))["alphas"] == (PAPER_ALPHAS[1], 0.9)
    for bad in ({"paper_alphas": (0.5,)}, {"paper_alphas": ()}, {"paper_gammas": (3.0,)}, {"paper_gamma0": 0.8}):
        with pytest.raises(ConfigError, match=next(iter(bad))) as err:
            SearchSpace(**bad)
        assert "\n" not in str(err.value)


@pytest.mark.slow
def test_the_paper_protocol_trains_at_smoke_sizes_through_run_study(mlflow_env, smoke_dataset, tmp_path):
    """The smoke profile with the paper's protocol on 2 α × 2 β, 2 γ and 2 nets, one epoch: 4 + 2 + 1
    trials in one study, each stage's choice on the ``study-supervised`` run."""
    import mlflow
    from optuna.trial import TrialState

    from porelab import tracking
    from porelab.automl.study import run_study
    from porelab.crossval import label_source, make_context

    smoke = get_profile("smoke")
    search = dataclasses.replace(smoke.search, grid=True, supervised_nets=("unet", "mssunet"),
                                 paper_alphas=PAPER_ALPHAS[1:3], paper_gammas=(2 / 3, 4 / 3))
    prof = smoke.replace(supervised=dataclasses.replace(smoke.supervised, max_epochs=1), search=search)
    ctx = make_context(prof, smoke_dataset.root, 0, folds=[0], workdir=tmp_path / "work")
    tracking.setup_mlflow()
    with mlflow.start_run() as parent:
        study = run_study(ctx, "supervised", "p", mlflow_env["optuna_storage"], 7,
                          labels=label_source(ctx, "alg1"))
    stages = [t.user_attrs.get(STAGE_ATTR) for t in study.trials]
    assert stages == ["stage1"] * 4 + ["stage2"] * 2 + ["stage3"]
    assert all(t.state == TrialState.COMPLETE for t in study.trials), [t.state for t in study.trials]
    client = mlflow.MlflowClient()
    runs = client.search_runs([parent.info.experiment_id],
                              f"tags.mlflow.parentRunId = '{parent.info.run_id}' and tags.`porelab.level` = 'study'")
    assert len(runs) == 1
    result = json.loads(mlflow.artifacts.load_text(f"runs:/{runs[0].info.run_id}/optuna/paper_protocol.json"))
    assert result["finished"] and result["stage1"]["gamma"] == PAPER_FTL_GAMMA0
    a, b, g = result["stage1"]["alpha"], result["stage1"]["beta"], result["stage2"]["gamma"]
    assert {(t.params["alpha"], t.params["beta"]) for t in study.trials[4:]} == {(a, b)}
    assert study.trials[6].params == {"net": "mssunet", "alpha": a, "beta": b, "gamma": g}
    assert runs[0].data.params["paper_alpha"] == str(a) and runs[0].data.params["paper_gamma"] == str(g)
    assert runs[0].data.params["sampler"] == "paper protocol"
    assert [r["net"] for r in result["stage3"]] == ["unet", "mssunet"]
