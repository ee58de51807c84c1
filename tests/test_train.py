"""Training loop: config, loss falls, early stopping, checkpoints and resume, callbacks; end-to-end AP."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from porelab.errors import ConfigError
from porelab.nets import build
from porelab.train import Sample, TrainConfig, fit


def _toy(seed, shape=(32, 32, 32), n_pores=8, label=True):
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    lab = np.zeros(shape, bool)
    for _ in range(n_pores):
        c = rng.uniform(5, np.array(shape) - 5)
        lab |= ((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) <= rng.uniform(2, 6)
    scan = np.where(lab, 0.1, 0.8).astype(np.float32) + rng.normal(0, 0.03, shape).astype(np.float32)
    return Sample(np.clip(scan, 0, 1), lab.astype(np.uint8) if label else None, f"toy{seed}")


def _cfg(**kw):
    base = {"max_epochs": 3, "patience": 10, "samples_per_volume": 8, "queue_length": 16, "val_patches": 8,
            "batch_size": 4, "lr": 1e-3, "patch": 16}
    base.update(kw)
    from porelab.config import get_profile

    return get_profile("smoke").train_config("unet", **base)


def test_config_defaults_are_the_papers_and_profiles_scale_them():
    c = TrainConfig()
    assert (c.lr, c.min_delta, c.patience, c.max_epochs, c.patch, c.batch_size) == (1e-4, 1e-4, 40, 200, 64, 2)
    from porelab.config import get_profile

    smoke = get_profile("smoke")
    s = smoke.train_config("unet", max_epochs=7)
    assert (s.patch, s.lr, s.max_epochs, s.samples_per_volume) == (smoke.supervised.patch, smoke.supervised.lr, 7,
                                                                    smoke.supervised.samples_per_volume)
    assert smoke.supervised.max_epochs != 7                                  # a copy: the profile is unchanged
    assert get_profile("paper").train_config("vae").patience == 40
    with pytest.raises(ConfigError, match="unknown training option"):
        smoke.train_config("unet", learning_rate=1)
    with pytest.raises(ConfigError, match="unknown profile"):
        get_profile("nope")


def test_profile_training_settings_per_kind_of_net():
    from porelab.config import get_profile

    quick = get_profile("quick")
    u = quick.train_config("unet")
    assert (u.max_epochs, u.lr, u.grad_clip) == (quick.supervised.max_epochs, quick.supervised.lr,
                                                 quick.supervised.grad_clip)
    v = quick.train_config("vae")
    assert v.max_epochs == quick.unsupervised.max_epochs != u.max_epochs and v.grad_clip is None
    assert quick.train_config("unet", max_epochs=3).max_epochs == 3                  # overrides win
    assert quick.train_config("unet", augment={"noise_std": 0.2}).augment.noise_std == 0.2


def test_loss_falls_on_a_toy_volume():
    train, val = [_toy(1), _toy(2)], [_toy(3)]
    torch.manual_seed(0)
    net, hist = fit(build("unet", scale=0.125), "unet", train, val,
                    _cfg(max_epochs=6, samples_per_volume=16, lr=2e-3), progress=False, seed=0)
    assert len(hist["train_loss"]) == 6 and len(hist["seconds"]) == 6
    assert hist["best_val_loss"] < hist["val_loss"][0] - 0.01
    assert min(hist["train_loss"][-2:]) < hist["train_loss"][0]
    assert not net.training  # returned in eval mode with the best weights


def test_same_seed_same_history():
    train, val = [_toy(1)], [_toy(3)]
    torch.manual_seed(0)  # same initial weights
    h1 = fit(build("unet", scale=0.125), "unet", train, val, _cfg(max_epochs=2), progress=False, seed=5)[1]
    torch.manual_seed(0)
    h2 = fit(build("unet", scale=0.125), "unet", train, val, _cfg(max_epochs=2), progress=False, seed=5)[1]
    assert h1["train_loss"] == h2["train_loss"] and h1["val_loss"] == h2["val_loss"]


def test_early_stopping_triggers():
    # min_delta larger than any possible improvement: epoch 0 sets the best, epoch 1 does not improve
    _, hist = fit(build("unet", scale=0.125), "unet", [_toy(1)], [_toy(3)],
                  _cfg(max_epochs=10, patience=1, min_delta=10.0), progress=False)
    assert hist["stopped_early"] is True
    assert hist["epochs"] == 2 and hist["best_epoch"] == 0


@pytest.mark.parametrize("rollbacks", [1, 0])
def test_collapse_to_no_pore_is_rolled_back(rollbacks):
    """A net whose sigmoid saturates (empty prediction, validation FTL 1, no gradient) is reset to its best
    weights with a fresh optimiser at half the learning rate; with ``collapse_rollbacks=0`` it stays dead."""
    train, val = [_toy(1)], [_toy(3)]
    torch.manual_seed(0)
    net = build("unet", scale=0.125)

    def kill(epoch, losses):          # after epoch 0: saturate the head so every voxel predicts 0
        if epoch == 0:
            with torch.no_grad():
                net.head[0].bias.fill_(-1e4)

    net, hist = fit(net, "unet", train, val, _cfg(max_epochs=3, lr=1e-3, collapse_rollbacks=rollbacks),
                    progress=False, seed=0, on_epoch=kill)
    assert hist["val_loss"][1] >= 0.999                     # epoch 1 saw the collapsed net
    if rollbacks:
        assert hist["rollbacks"] == [{"epoch": 1, "lr": pytest.approx(5e-4)}]
        assert hist["val_loss"][2] < 0.999                  # epoch 2 trains the restored weights
    else:
        assert hist["rollbacks"] == [] and hist["val_loss"][2] >= 0.999
    assert float(net.head[0].bias.detach()) > -10            # best (pre-collapse) weights returned


def test_rollback_during_warmup_ends_it_at_half_the_target_lr():
    train, val = [_toy(1)], [_toy(3)]
    torch.manual_seed(0)
    net = build("unet", scale=0.125)

    def kill(epoch, losses):
        if epoch == 0:
            with torch.no_grad():
                net.head[0].bias.fill_(-1e4)

    cfg = _cfg(max_epochs=3, lr=1e-3, samples_per_volume=8, batch_size=4, warmup_steps=100)
    _, hist = fit(net, "unet", train, val, cfg, progress=False, seed=0, on_epoch=kill)
    assert hist["lr"][:2] == pytest.approx([2e-5, 4e-5])     # 2 and 4 of 100 warm-up steps
    assert hist["rollbacks"] == [{"epoch": 1, "lr": pytest.approx(5e-4)}]
    assert hist["lr"][2] == pytest.approx(5e-4)               # the warm-up does not overwrite it


def test_warmup_raises_the_learning_rate_linearly():
    """8 patches of one scan in batches of 4: 2 steps per epoch, so 4 warm-up steps end after epoch 1."""
    train, val = [_toy(1)], [_toy(3)]
    cfg = _cfg(max_epochs=3, lr=1e-3, samples_per_volume=8, batch_size=4, warmup_steps=4)
    _, hist = fit(build("unet", scale=0.125), "unet", train, val, cfg, progress=False, seed=0)
    assert hist["lr"] == pytest.approx([5e-4, 1e-3, 1e-3])
    _, flat = fit(build("unet", scale=0.125), "unet", train, val, _cfg(max_epochs=2, lr=1e-3, samples_per_volume=8,
                                                                          batch_size=4), progress=False, seed=0)
    assert flat["lr"] == pytest.approx([1e-3, 1e-3])


def _saturated(bias=1e4):
    """A UNet whose head says "pore" everywhere: the Focal Tversky plateau where the sigmoid's gradient is 0."""
    net = build("unet", scale=0.125)
    with torch.no_grad():
        net.head[0].bias.fill_(bias)
    return net


@pytest.mark.parametrize("fresh", [True, False])
def test_plateau_restart_starts_again_from_fresh_weights(fresh):
    """A net that never leaves its starting plateau is rebuilt (``rebuild``) after ``plateau_epochs``; at most
    ``plateau_restarts`` times, and never without a factory."""
    train, val = [_toy(1)], [_toy(3)]
    torch.manual_seed(0)
    calls = []

    def rebuild(k):
        calls.append(k)
        return build("unet", scale=0.125) if fresh else _saturated()

    cfg = _cfg(max_epochs=4, lr=1e-3, plateau_epochs=1, plateau_loss=0.5, plateau_restarts=1)
    net, hist = fit(_saturated(), "unet", train, val, cfg, progress=False, seed=0, rebuild=rebuild)
    plateau = hist["val_loss"][0]
    assert plateau >= 0.5 and hist["restarts"] == [{"epoch": 0, "best_val_loss": plateau}] and calls == [1]
    assert hist["best_epoch"] >= 1                          # the best is chosen within the new attempt
    if fresh:                                               # the rebuilt net trains and is returned
        assert all(abs(v - plateau) > 1e-3 for v in hist["val_loss"][1:])
        assert float(net.head[0].bias.detach()) < 100
    else:                                                   # still stuck, but only one restart allowed
        assert all(abs(v - plateau) < 1e-6 for v in hist["val_loss"][1:])
    _, no_factory = fit(_saturated(), "unet", train, val, cfg, progress=False, seed=0)
    assert no_factory["restarts"] == []


def test_a_restarted_attempt_gets_its_own_rollbacks():
    """Attempt 0 uses its one rollback, then restarts; the fresh net collapses too and is rolled back again."""
    train, val = [_toy(1)], [_toy(3)]
    torch.manual_seed(0)
    nets = [build("unet", scale=0.125)]

    def rebuild(k):
        nets.append(build("unet", scale=0.125))
        return nets[-1]

    def kill(epoch, losses):          # saturate the current net after epochs 0 and 2
        if epoch in (0, 2):
            with torch.no_grad():
                nets[-1].head[0].bias.fill_(-1e4)

    cfg = _cfg(max_epochs=5, lr=1e-3, collapse_rollbacks=1, plateau_epochs=2, plateau_loss=0.0,
               plateau_restarts=1)
    _, hist = fit(nets[0], "unet", train, val, cfg, progress=False, seed=0, on_epoch=kill, rebuild=rebuild)
    assert [r["epoch"] for r in hist["restarts"]] == [1] and len(nets) == 2
    assert [r["epoch"] for r in hist["rollbacks"]] == [1, 3]
    assert hist["val_loss"][4] < 0.999                      # the second attempt trains on after its rollback


def test_checkpoints_and_resume(tmp_path):
    train, val = [_toy(1)], [_toy(3)]
    ck = tmp_path / "ck"
    _, h2 = fit(build("unet", scale=0.125), "unet", train, val, _cfg(max_epochs=2), checkpoint_dir=ck,
                progress=False, seed=1)
    assert (ck / "best.pt").is_file() and (ck / "last.pt").is_file()
    last = torch.load(ck / "last.pt", weights_only=False)
    assert last["epoch"] == 1 and "optimizer" in last and "rng" in last
    # resume: a fresh net continues from last.pt, keeps the first two epochs and adds one
    net, h3 = fit(build("unet", scale=0.125), "unet", train, val, _cfg(max_epochs=3), checkpoint_dir=ck,
                  progress=False, seed=1)
    assert h3["resumed_from"] == 1 and h3["epochs"] == 3
    assert h3["train_loss"][:2] == h2["train_loss"] and len(h3["train_loss"]) == 3
    best = torch.load(ck / "best.pt", weights_only=True)
    for k, v in net.state_dict().items():
        assert torch.equal(v.cpu(), best[k])


def test_on_epoch_exception_propagates_after_saving(tmp_path):
    seen = []

    class Pruned(Exception):
        pass

    def on_epoch(epoch, metrics):
        seen.append((epoch, metrics))
        raise Pruned

    with pytest.raises(Pruned):
        fit(build("unet", scale=0.125), "unet", [_toy(1)], [_toy(3)], _cfg(max_epochs=5),
            checkpoint_dir=tmp_path, on_epoch=on_epoch, progress=False)
    assert [e for e, _ in seen] == [0]
    assert {"train_loss", "val_loss", "seconds"} <= set(seen[0][1])
    assert torch.load(tmp_path / "last.pt", weights_only=False)["epoch"] == 0


def test_unsupervised_trains_without_labels_and_supervised_needs_them():
    _, hist = fit(build("vae", scale=0.125, patch_size=16), "vae", [_toy(1, label=False)],
                  [_toy(3, label=False)], _cfg(max_epochs=1), progress=False)
    assert math.isfinite(hist["train_loss"][0]) and math.isfinite(hist["val_loss"][0])
    with pytest.raises(ConfigError, match="needs labels"):
        fit(build("unet", scale=0.125), "unet", [_toy(1, label=False)], [], _cfg(), progress=False)


def test_no_validation_monitors_training_loss():
    _, hist = fit(build("unet", scale=0.125), "unet", [_toy(1)], [], _cfg(max_epochs=2), progress=False)
    assert all(math.isnan(v) for v in hist["val_loss"]) and hist["best_val_loss"] is not None


# ------------------------------------------------------------------------------------------------------------
# Learning works: small nets trained on simulated scans reach an AP far above the pore fraction
# ------------------------------------------------------------------------------------------------------------
def _train_and_score(dataset, name: str, *, epochs: int, spv: int, lr: float, residual: str = "abs"):
    from porelab.metrics import evaluate_scores
    from porelab.model import PoreModel
    from porelab.normalise import Normalisation

    supervised = name == "unet"
    raws, samples = [], []
    for info in dataset.cv:
        scan, truth, _ = info.load()
        scan = np.asarray(scan, np.float32)
        raws.append((scan, np.asarray(truth) > 0))
        samples.append(Sample(Normalisation.fit(scan).apply(scan),
                              np.asarray(truth) if supervised else None, info.name))
    kw = {"scale": 0.125} if supervised else {"scale": 0.125, "patch_size": 16}
    torch.manual_seed(0)
    cfg = _cfg(max_epochs=epochs, samples_per_volume=spv, lr=lr, patience=epochs)
    net, _ = fit(build(name, **kw), name, samples[:3], samples[3:4], cfg, progress=False, seed=0)
    model = PoreModel.from_trained(net, name, Normalisation.fit(raws[0][0]), "smoke", net_kwargs=kw, patch=16,
                                   residual=residual)
    scan, truth = raws[4]
    return evaluate_scores(model.predict(scan), truth)


def test_supervised_ap_well_above_pore_fraction_quick(smoke_dataset):
    # ~15 s: the net has only begun to tell pores (dark, inside metal) from air (dark, outside)
    r = _train_and_score(smoke_dataset, "unet", epochs=4, spv=32, lr=3e-3)
    assert r["ap"] > 3 * r["pore_fraction"] and r["auc"] > 0.8


@pytest.mark.slow
@pytest.mark.parametrize("name", ["unet", "vae"])
def test_ap_well_above_pore_fraction_after_a_minute(smoke_dataset, name):
    # measured on this dataset (pore fraction 0.39 %): unet AP 0.047-0.061; vae at lr 1e-3, post-processed
    # dark residual AP 0.61 (|x - x_hat|: 0.33; at lr 2e-3 the VAE stays on its mean-image plateau: 0.36 / 0.026)
    r = _train_and_score(smoke_dataset, name, epochs=25, spv=32, lr=1e-3, residual="dark")
    assert r["ap"] > 8 * r["pore_fraction"] and r["auc"] > 0.85
