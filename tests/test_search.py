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


def test_killed_worker_trial_fails_and_study_resumes(mlflow_env, smoke_dataset):
    """SIGTERM mid-trial: the Optuna trial ends FAIL, its MLflow runs FAILED; the same study name resumes."""
    import optuna
    from optuna.trial import TrialState

    tracking.setup_mlflow()
    storage = mlflow_env["dir"] / "optuna.log"
    proc = _worker(mlflow_env["dir"], smoke_dataset.root, storage, 5)
    deadline = time.time() + 300
    running = None
    while time.time() < deadline and running is None:
        time.sleep(1.0)
        if storage.exists():
            try:
                study = optuna.load_study(study_name="shared-unsupervised",
                                          storage=tracking.optuna_storage(str(storage)))
            except KeyError:           # the worker has not created the study yet
                continue
            running = next((t for t in study.get_trials() if t.state == TrialState.RUNNING
                            and "mlflow_fold_0" in t.user_attrs), None)
    assert running is not None, "the worker never started a fold"
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    study = optuna.load_study(study_name="shared-unsupervised", storage=tracking.optuna_storage(str(storage)))
    t = study.trials[running.number]
    assert t.state == TrialState.FAIL
    assert mlflow.get_run(t.user_attrs["mlflow_run_id"]).info.status == "FAILED"
    assert mlflow.get_run(t.user_attrs["mlflow_fold_0"]).info.status == "FAILED"
    # resume: the same study name continues with new trials
    again = search.make_study("shared-unsupervised", tracking.optuna_storage(str(storage)), seed=0)
    assert len(again.trials) == len(study.trials)


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
