"""No label decides: with every label of the dataset replaced by a random mask, every decision of the pipeline
(the residual, the threshold, the label-free scores, the weights, the pseudo-labels, the trials' values, the
registered models) is the same as with the true labels, while the metrics reported against them differ."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from porelab import crossval
from porelab.config import get_profile

#: what a fold decides (or derives from its decisions only); everything else in its metrics is reported
DECISION_KEYS = ("threshold", "injected_pores")


def _randomised(ctx: crossval.Context, seed: int) -> crossval.Context:
    rng = np.random.default_rng(seed)
    refs = {name: crossval.Reference(rng.random(r.labels.shape) < 0.02, rng.random(r.labels.shape) < 0.6)
            for name, r in ctx.references.items()}
    return dataclasses.replace(ctx, references=refs, cache={})


def _decisions(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k in DECISION_KEYS or "_inj" in k}


def test_a_scan_holds_no_label():
    """What decisions see has no field for the dataset's labels; they live in ``Context.references``."""
    assert {f.name for f in dataclasses.fields(crossval.Scan)} == {"name", "raw", "scan", "object", "alg1", "role"}


@pytest.fixture(scope="module")
def contexts(smoke_dataset, tmp_path_factory):
    prof = get_profile("smoke")
    prof = prof.replace(supervised=prof.train_config("unet", max_epochs=1, samples_per_volume=2),
                        unsupervised=prof.train_config("cevae", max_epochs=1, samples_per_volume=2))
    true = crossval.make_context(prof, smoke_dataset.root, 0, workdir=tmp_path_factory.mktemp("true"))
    fake = _randomised(crossval.make_context(prof, smoke_dataset.root, 0, workdir=tmp_path_factory.mktemp("fake")),
                       seed=11)
    assert set(true.references) == {s.name for s in true.cv} | {true.hard.name}
    return true, fake


@pytest.mark.parametrize("net,labels", [("cevae", None), ("unet", "alg1")])
def test_fold_decisions_are_the_same_with_random_labels(contexts, net, labels):
    import torch

    results = []
    for ctx in contexts:
        lab = crossval.label_source(ctx, labels) if labels else None
        results.append(crossval.fit_fold(ctx, net, {"scale": 0.125, **({"patch_size": 16} if lab is None else {})},
                                         {}, 0, labels=lab, seed=5))
    a, b = results
    assert _decisions(a.metrics) == _decisions(b.metrics) and _decisions(a.metrics)
    assert a.model.threshold == b.model.threshold and a.model.residual == b.model.residual
    assert a.model.meta["threshold_policy"] == b.model.meta["threshold_policy"]
    assert "injected" in a.model.meta["threshold_policy"]
    assert all(torch.equal(a.model.state_dict[k], b.model.state_dict[k]) for k in a.model.state_dict)
    # the labels were really different, and they are reported
    assert a.metrics["val_ap"] != b.metrics["val_ap"] and a.metrics["hard_ap"] != b.metrics["hard_ap"]
    assert a.curves and b.curves


def test_pseudo_labels_are_the_same_with_random_labels(contexts):
    from porelab.pseudolabels import pseudo_labels

    true, fake = contexts
    score = {s.name: -s.scan for s in true.cv}                # a fixed, label-free score: dark = pore
    predict = {id(s.raw): score[s.name] for s in true.cv}
    predict.update({id(s.raw): score[s.name] for s in fake.cv})
    a, sa = pseudo_labels(true.cv, lambda raw: predict[id(raw)], threshold=-0.3, references=true.references)
    b, sb = pseudo_labels(fake.cv, lambda raw: predict[id(raw)], threshold=-0.3, references=fake.references)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert [sa[k]["dice_vs_truth"] for k in sa] != [sb[k]["dice_vs_truth"] for k in sb]


def _random_label_copy(dataset, dst, seed: int):
    """A copy of a simulated dataset whose truth and object files are random masks (fingerprints updated)."""
    from porelab.dataset import fingerprint

    shutil.copytree(dataset.root, dst)
    rng = np.random.default_rng(seed)
    manifest = json.loads((dst / "manifest.json").read_text())
    for s in manifest["samples"]:
        for key in ("labels", "object"):
            if s.get(key):
                path = dst / s[key]
                shape = np.load(path).shape
                np.save(path, (rng.random(shape) < (0.02 if key == "labels" else 0.6)).astype(np.uint8))
                s["fingerprints"][key] = fingerprint(path)
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return dst


@pytest.mark.slow
def test_the_whole_search_is_the_same_with_random_labels(smoke_dataset, tmp_path):
    """The smoke search twice, same seed, once on the true labels and once on random ones: the same trials
    and values, the same registered models (weights, threshold, residual), the same pseudo-labels."""
    import mlflow
    import torch

    from porelab import tracking
    from porelab.automl import pipeline

    fake = _random_label_copy(smoke_dataset, tmp_path / "fake-data", seed=3)
    out = {}
    for tag, data in (("true", smoke_dataset.root), ("fake", fake)):
        work = tmp_path / tag
        work.mkdir()
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
            mp.chdir(work)
            summary = pipeline.run_search("smoke", data=str(data), storage=f"sqlite:///{work / 'optuna.db'}",
                                          seed=0, time_budget="none", workdir=work / "w")
            models = {n: tracking.resolve_model(n) for n in (pipeline.UNSUPERVISED_NAME, pipeline.SUPERVISED_NAME)}
            run = mlflow.MlflowClient().get_run(summary["run_id"])
        pseudo = {p.name: np.load(p) for p in sorted((work / "w" / "pseudo_labels").glob("*.npy"))}
        out[tag] = (summary, models, pseudo, run.data.metrics)
    (sa, ma, pa, ra), (sb, mb, pb, rb) = out["true"], out["fake"]
    for fam in ("unsupervised", "supervised"):
        assert sa[fam]["best_params"] == sb[fam]["best_params"]
        assert sa[fam]["best_value"] == sb[fam]["best_value"]
    for name in ma:
        a, b = ma[name], mb[name]
        assert (a.threshold, a.residual) == (b.threshold, b.residual)
        assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert pa.keys() == pb.keys() and pa and all(np.array_equal(pa[k], pb[k]) for k in pa)
    assert ra["unsupervised_val_ap"] != rb["unsupervised_val_ap"]          # reported against different labels
