"""The AutoML pipeline: the whole smoke run, two workers on one study, a killed worker, tables."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest

from porelab import search, tracking


def _runs(**filters):
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    return [r for r in runs if all(r.data.tags.get(k) == v for k, v in filters.items())]


def test_smoke_pipeline_end_to_end(mlflow_env, smoke_dataset):
    """run_search(profile="smoke"): both models registered, in Production with aliases, loadable by name,
    nested runs with fold metrics, tables logged; `porelab segment --model NAME` works."""
    summary = search.run_search("smoke", data=str(smoke_dataset.root), storage=mlflow_env["optuna_storage"],
                                seed=0)
    client = mlflow.MlflowClient()
    scan = np.load(smoke_dataset.hard.scan).astype(np.float32)
    for name in (search.UNSUPERVISED_NAME, search.SUPERVISED_NAME):
        prod = client.get_model_version_by_alias(name, "production")
        assert prod.current_stage == "Production"
        for uri in (f"models:/{name}@production", f"models:/{name}/Production"):
            model = mlflow.pyfunc.load_model(uri)
            assert str(model.metadata.run_id) == summary["run_id"]
            out = model.predict(scan)
            assert out.shape == scan.shape and out.dtype == np.float32 and np.isfinite(out).all()
        meta = mlflow.pyfunc.load_model(f"models:/{name}@production").metadata.metadata
        assert {"threshold", "net", "profile", "metrics"} <= set(meta) and meta["profile"] == "smoke"
        pm = tracking.resolve_model(name)                      # bare name → Production version
        assert pm.kind == ("unsupervised" if name.endswith("unsupervised") else "supervised")
        assert pm.threshold == pytest.approx(meta["threshold"])

    # nesting: search → study → trial → fold, fold runs carry the fold metrics and per-epoch losses
    parent = client.get_run(summary["run_id"])
    studies = [r for r in _runs(**{"porelab.level": "study"})
               if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert {r.info.run_name for r in studies} >= {"study-unsupervised", "study-supervised"}
    study_ids = {r.info.run_id for r in studies}
    trials = [r for r in _runs(**{"porelab.level": "trial"})
              if r.data.tags["mlflow.parentRunId"] in study_ids]
    assert len(trials) == 2
    trial_ids = {r.info.run_id for r in trials}
    folds = [r for r in _runs(**{"porelab.level": "fold"}) if r.data.tags["mlflow.parentRunId"] in trial_ids]
    assert len(folds) == 2 * len(search.make_context("smoke", smoke_dataset.root, 0).folds)
    for f in folds:
        assert {"val_ap", "val_auc", "val_dice", "hard_ap", "hard_auc", "val_ap_alg1"} <= set(f.data.metrics)
        assert 0.0 <= f.data.metrics["val_ap"] <= 1.0
        assert len(client.get_metric_history(f.info.run_id, "train_loss")) >= 1
    unsup_folds = [f for f in folds if "val_ap_pp" in f.data.metrics]
    assert len(unsup_folds) == len(folds) // 2
    for f in unsup_folds:      # both residuals scored; the fold's model uses the better one on validation
        m = f.data.metrics
        assert m["val_ap_pp_abs"] >= 0 and m["val_ap_pp_dark"] >= 0
    chosen = tracking.resolve_model(search.UNSUPERVISED_NAME)
    choice = chosen.meta["residual_choice"]
    assert choice["chosen"] == chosen.residual == max(choice["val_ap_pp"], key=choice["val_ap_pp"].get)

    arts = {a.path for a in client.list_artifacts(parent.info.run_id, "tables")}
    assert {"tables/summary.csv", "tables/summary.md", "tables/complexity.csv"} <= arts
    optuna_arts = {a.path for a in client.list_artifacts(parent.info.run_id, "optuna")}
    assert {"optuna/unsupervised_optimization_history.png", "optuna/supervised_trials.csv"} <= optuna_arts
    md = Path(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id,
                                                  artifact_path="tables/summary.md",
                                                  dst_path=str(mlflow_env["dir"] / "dl"))).read_text()
    assert "black top-hat" in md and "Algorithm 1 labels (as score)" in md and "cevae" in md
    assert parent.data.tags["porelab.dataset_sha256"]
    assert parent.data.params["profile"] == "smoke"

    # segment by registered name through the CLI (porelab/cli/engine_cmds.py → tracking.resolve_model)
    out = mlflow_env["dir"] / "seg"
    res = subprocess.run([sys.executable, "-m", "porelab", "segment", str(smoke_dataset.hard.scan), "-o",
                          str(out), "--model", search.SUPERVISED_NAME], capture_output=True, text=True,
                         check=False,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert any(out.iterdir())
    res = subprocess.run([sys.executable, "-m", "porelab", "segment", str(smoke_dataset.hard.scan), "-o",
                          str(mlflow_env["dir"] / "seg2"), "--model", "porelab-nonexistent"],
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 2 and "porelab-unsupervised" in res.stderr and "Traceback" not in res.stderr


_WORKER = textwrap.dedent("""
    import sys
    from porelab import search, tracking
    from porelab.config import get_profile
    data, storage, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    tracking.setup_mlflow()
    prof = get_profile("smoke").replace(folds=1)
    ctx = search.make_context(prof, data, 0)
    with tracking.sigterm_as_interrupt(), tracking.parent_run("worker"):
        search.run_study(ctx, "unsupervised", "shared", tracking.optuna_storage(storage), n)
""")


def _worker(tmp: Path, data, storage, n) -> subprocess.Popen:
    script = tmp / "worker.py"
    script.write_text(_WORKER)
    return subprocess.Popen([sys.executable, str(script), str(data), str(storage), str(n)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_two_workers_share_one_study(mlflow_env, smoke_dataset):
    """Two processes, one journal-file Optuna store, one MLflow sqlite DB created first: no trial lost
    (1 + 2 trials, every one finished)."""
    import optuna
    from optuna.trial import TrialState

    tracking.setup_mlflow()                                  # initialise the MLflow DB once, before workers
    storage = mlflow_env["dir"] / "optuna.log"
    procs = [_worker(mlflow_env["dir"], smoke_dataset.root, storage, n) for n in (1, 2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="shared-unsupervised", storage=tracking.optuna_storage(str(storage)))
    # every trial ran to its end: COMPLETE, or PRUNED by the median pruner (its MLflow run KILLED)
    states = [(t.number, t.state.name, t.system_attrs.get("fail_reason")) for t in study.trials]
    assert len(study.trials) == 3, states
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials), states
    assert len({t.user_attrs["pid"] for t in study.trials}) == 2
    for t in study.trials:
        run = mlflow.get_run(t.user_attrs["mlflow_run_id"])
        if t.state == TrialState.COMPLETE:
            assert run.info.status == "FINISHED" and "val_ap_pp" in run.data.metrics
        else:
            assert run.info.status == "KILLED"


_BLOCKED_SEARCH = textwrap.dedent("""
    import sys
    import time
    from pathlib import Path

    from porelab import search

    ready = Path(sys.argv[1])

    def blocked_train_fold(*args, **kwargs):
        # stands in for a long fold: the search, study, trial and fold runs exist, the trial is RUNNING
        ready.write_text("in fold 0")
        while True:
            time.sleep(0.05)

    search.train_fold = blocked_train_fold
    from porelab.cli import main

    main(["search", "--profile", "smoke", "--quiet", *sys.argv[2:]], prog_name="porelab")
""")


def _blocked_search(tmp: Path, data, storage) -> tuple[subprocess.Popen, Path]:
    """`porelab search` in a subprocess that stops inside its first fold (readiness file: ``ready``)."""
    script, ready = tmp / "blocked_search.py", tmp / "ready"
    script.write_text(_BLOCKED_SEARCH)
    proc = subprocess.Popen([sys.executable, str(script), str(ready), "--data", str(data), "--storage",
                             str(storage), "--study-name", "s1", "--n-trials", "2"],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"the worker never reached its first fold: {err[-3000:]}")
        time.sleep(0.1)
    return proc, ready


def _levels(status: str) -> dict[str, str]:
    return {r.data.tags.get("porelab.level"): r.info.status for r in _runs() if r.info.status == status}


def test_sigterm_mid_trial_is_one_line_non_zero_and_leaves_nothing_running(mlflow_env, smoke_dataset):
    """SIGTERM while a fold trains: exit 143 with one line and no traceback, the trial FAIL, every run of
    the tree KILLED; the same study name resumes."""
    import optuna
    from optuna.trial import TrialState

    tracking.setup_mlflow()
    storage = mlflow_env["dir"] / "optuna.log"
    proc, _ = _blocked_search(mlflow_env["dir"], smoke_dataset.root, storage)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    said = [line for line in err.splitlines() if line.startswith("porelab:")]
    assert len(said) == 1 and "SIGTERM" in said[0], err[-3000:]
    study = optuna.load_study(study_name="s1-unsupervised", storage=tracking.optuna_storage(str(storage)))
    assert [t.state for t in study.trials] == [TrialState.FAIL]
    t = study.trials[0]
    assert mlflow.get_run(t.user_attrs["mlflow_run_id"]).info.status == "KILLED"
    assert mlflow.get_run(t.user_attrs["mlflow_fold_0"]).info.status == "KILLED"
    assert _levels("RUNNING") == {}
    assert {"search", "study", "trial", "fold"} <= set(_levels("KILLED"))
    again = search.make_study("s1-unsupervised", tracking.optuna_storage(str(storage)), seed=0)
    assert len(again.trials) == len(study.trials)


def test_hard_killed_worker_is_cleaned_up_on_resume(mlflow_env, smoke_dataset):
    """kill -9 while a fold trains leaves a RUNNING trial and RUNNING search/study/trial/fold runs; the
    next worker's start marks the trial FAIL and ends every one of those runs KILLED."""
    from optuna.trial import TrialState

    tracking.setup_mlflow()
    storage = mlflow_env["dir"] / "optuna.log"
    proc, _ = _blocked_search(mlflow_env["dir"], smoke_dataset.root, storage)
    proc.kill()
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert {"search", "study", "trial", "fold"} <= set(_levels("RUNNING"))
    study = search.make_study("s1-unsupervised", tracking.optuna_storage(str(storage)), seed=0)
    assert tracking.fail_orphaned_trials(study) == [0]
    assert study.trials[0].state == TrialState.FAIL
    assert _levels("RUNNING") == {}
    killed = [r for r in _runs() if r.info.status == "KILLED"]
    assert len(killed) >= 4 and all("porelab.closed_by" in r.data.tags for r in killed)


@pytest.mark.slow
def test_rerunning_the_search_keeps_one_production_per_name(mlflow_env, smoke_dataset):
    """The smoke search twice with one study name: after each run, exactly one Production version per
    name with its alias, one version per registered trial, and no Production version moved back."""
    client = mlflow.MlflowClient()
    before: dict = {}
    for _ in range(2):
        search.run_search("smoke", data=str(smoke_dataset.root), storage=mlflow_env["optuna_storage"],
                          seed=0, study_name="s1", n_trials=1)
        for name in (search.UNSUPERVISED_NAME, search.SUPERVISED_NAME):
            versions = client.search_model_versions(f"name='{name}'")
            stages = {str(v.version): v.current_stage for v in versions}
            prod = [v for v, st in stages.items() if st == "Production"]
            assert len(prod) == 1, stages
            assert str(client.get_model_version_by_alias(name, "production").version) == prod[0]
            trial_runs = [v.tags["porelab.trial_run"] for v in versions]
            assert len(set(trial_runs)) == len(trial_runs), trial_runs
            for v, st in before.get(name, {}).items():
                if st == "Production":
                    assert stages[v] in ("Production", "Archived"), stages
            before[name] = stages


def test_tables_and_classical_rows(smoke_dataset, tmp_path):
    """Black top-hat lights up dark pores; summary rows carry mean ± CI of the fold metrics."""
    ctx = search.make_context("smoke", smoke_dataset.root, 0, workdir=tmp_path)
    s = ctx.cv[0]
    th = search.tophat_score(s)
    assert th.shape == s.raw.shape and (th >= 0).all() and not th[~s.object].any()
    assert th[s.truth & s.object].mean() > th[~s.truth & s.object].mean()
    rows = search.summary_rows([("m", "unsupervised", "none",
                                 [{"val_ap": 0.5, "val_ap_pp": 0.7}, {"val_ap": 0.7, "val_ap_pp": 0.9}])])
    assert [r["postprocessed"] for r in rows] == ["no", "yes"]
    assert rows[0]["val_ap"] == pytest.approx(0.6) and rows[1]["val_ap"] == pytest.approx(0.8)
    assert rows[0]["val_ap_ci95"] == pytest.approx(12.706 * 0.1, rel=1e-3)   # t(0.975, 1) · s / √2
    base = search.baselines(ctx)
    assert len(base["black top-hat"]) == len(ctx.folds)
    assert 0.0 < base["black top-hat"][0]["val_ap"] <= 1.0


def test_unsupervised_scores_match_predict(smoke_dataset):
    """One reconstruction gives every score, equal to PoreModel.predict without any post-processing / with
    all of it (eq. (2)-(3) and the skin suppression), for both residual modes."""
    from porelab.model import PoreModel
    from porelab.nets import build
    from porelab.normalise import Normalisation

    raw = np.load(smoke_dataset.cv[0].scan).astype(np.float32)
    net = build("vae", scale=0.125, patch_size=16)
    model = PoreModel.from_trained(net, "vae", Normalisation.fit(raw), "smoke", patch=16)
    scores = search.unsupervised_scores(model, raw, ("abs", "dark"))
    for mode, (a, a_pp) in scores.items():
        m = model.replace(residual=mode)
        np.testing.assert_allclose(a, m.replace(postprocess=False, skin=0).predict(raw), atol=1e-6)
        np.testing.assert_allclose(a_pp, m.replace(postprocess=True).predict(raw), atol=1e-6)
        assert not np.allclose(a, a_pp)
    assert (scores["dark"][0] <= scores["abs"][0] + 1e-6).all()
    assert list(search.unsupervised_scores(model, raw)) == ["abs"]          # default: the model's own


def test_supervised_space_takes_net_kwargs_from_the_profile(smoke_dataset, tmp_path):
    import optuna
    import torch

    from porelab.nets import build

    ctx = search.make_context("smoke", smoke_dataset.root, 0, workdir=tmp_path)
    trial = optuna.create_study().ask()
    name, kwargs, loss = search.supervised_space(trial, ctx)
    assert kwargs == {"scale": ctx.profile.net_scale} and set(loss) == {"alpha", "beta", "gamma"}
    ctx.profile = ctx.profile.replace(extra={**ctx.profile.extra, "supervised_net_kwargs": {"dropout": 0.0}})
    name, kwargs, _ = search.supervised_space(optuna.create_study().ask(), ctx)
    assert kwargs["dropout"] == 0.0
    net = build(name, **kwargs)
    assert not any(isinstance(m, torch.nn.Dropout3d) for m in net.modules())


def test_a_fold_is_reproducible_from_its_seed(smoke_dataset, tmp_path):
    """train_fold seeds the initial weights as well as the training: same seed, same model."""
    import torch

    ctx = search.make_context("smoke", smoke_dataset.root, 0, workdir=tmp_path)
    ctx.profile = ctx.profile.replace(max_epochs=1, samples_per_volume=2)
    labels = {s.name: s.truth for s in ctx.cv}
    runs = []
    for seed in (3, 3, 4):
        torch.manual_seed(len(runs))           # a different global state before every call
        model, _ = search.train_fold(ctx, "unet", {"scale": 0.125}, {}, 0, labels=labels, seed=seed)
        runs.append(model.state_dict)
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])
