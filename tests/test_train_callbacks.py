"""Training callbacks on their own: synthetic loss sequences, a tiny linear net instead of a 3-D one."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from porelab.errors import ConfigError
from porelab.train import TrainConfig
from porelab.train.callbacks import (
    CONTINUE,
    RESTART,
    STOP,
    Action,
    Callback,
    Checkpointer,
    CollapseRollback,
    EarlyStopping,
    PlateauRestart,
    TrainState,
    WarmUp,
)
from porelab.train.loop import apply_action, default_callbacks


def _net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Linear(3, 2)


def _state(callbacks=(), *, lr=1e-3, seed=0, **config):
    cfg = TrainConfig(lr=lr, **config)
    net = _net(seed)
    return TrainState(net=net, optimiser=torch.optim.Adam(net.parameters(), lr=lr), config=cfg, name="unet",
                      history={"best_epoch": None, "best_val_loss": None, "stopped_early": False,
                               "rollbacks": [], "restarts": []},
                      callbacks=list(callbacks))


def _run(state, losses, *, rebuild=None):
    """The loop's epoch end for a sequence of validation losses: record, ``on_validation_end``, then every
    callback's ``on_epoch_end`` in order, each action applied before the next callback. Returns the actions'
    kinds per epoch (``continue`` left out)."""
    kinds = []
    for loss in losses:
        state.epoch = len(kinds) + state.start_epoch
        state.record_losses(loss, loss, loss)
        for cb in state.callbacks:
            cb.on_validation_end(state)
        epoch_kinds = []
        for cb in state.callbacks:
            action = cb.on_epoch_end(state)
            apply_action(state, action, rebuild=rebuild)
            if action.kind != "continue":
                epoch_kinds.append(action.kind)
        kinds.append(epoch_kinds)
        if state.stop:
            break
    return kinds


# -- WarmUp ---------------------------------------------------------------------------------------------------
def test_warmup_ramps_linearly_then_leaves_the_rate_alone():
    w = WarmUp(lr=1e-3, steps=4)
    assert [w.on_step_start() for _ in range(6)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, None, None])
    assert WarmUp(lr=1e-3, steps=0).on_step_start() is None


def test_warmup_target_rollback_and_new_attempt():
    w = WarmUp(lr=1e-3, steps=4)
    w.on_step_start()
    assert w.lr_target(2.5e-4) == 1e-3              # mid-ramp: heading to the configured rate
    w.on_rollback(None)                              # a rollback ends the ramp
    assert w.on_step_start() is None and w.lr_target(5e-4) == 5e-4
    w.on_attempt_start(None)                         # a restart begins a new one
    assert w.on_step_start() == pytest.approx(2.5e-4)


def test_warmup_state_round_trip_and_old_checkpoints():
    w = WarmUp(lr=1e-3, steps=4)
    for _ in range(3):
        w.on_step_start()
    assert w.state_dict() == {"attempt_steps": 3}
    resumed = WarmUp(lr=1e-3, steps=4)
    resumed.load_state_dict(w.state_dict())
    assert resumed.on_step_start() == pytest.approx(1e-3)
    old = WarmUp(lr=1e-3, steps=4)
    old.load_state_dict({})                          # a checkpoint from before the warm-up: it is over
    assert old.on_step_start() is None


# -- CollapseRollback -----------------------------------------------------------------------------------------
def test_collapse_rolls_back_to_the_best_weights_at_half_the_rate():
    state = _state([CollapseRollback(2)], lr=1e-3)
    _run(state, [0.6, 0.5])                          # epoch 1 is the best
    best = {k: v.clone() for k, v in state.net.state_dict().items()}
    with torch.no_grad():
        state.net.weight.fill_(-100.0)               # the collapse
    old_optimiser = state.optimiser
    state.start_epoch = 2
    assert _run(state, [1.0]) == [["rollback"]]
    assert state.history["rollbacks"] == [{"epoch": 2, "lr": 5e-4}]
    for k, v in state.net.state_dict().items():
        assert torch.equal(v, best[k])
    assert state.optimiser is not old_optimiser and state.lr == 5e-4 and not state.optimiser.state


def test_collapse_needs_a_best_below_the_threshold():
    assert _run(_state([CollapseRollback(2)]), [1.0, 1.0, 1.0]) == [[], [], []]       # never left "no pore"
    assert _run(_state([CollapseRollback(2)]), [0.6, 0.999]) == [[], ["rollback"]]   # ≥ 0.999 is a collapse
    assert _run(_state([CollapseRollback(2)]), [0.6, 0.998]) == [[], []]
    assert _run(_state([CollapseRollback(0)]), [0.6, 1.0]) == [[], []]                # 0: never


def test_rollbacks_are_counted_per_attempt():
    state = _state([CollapseRollback(1)])
    assert _run(state, [0.6, 1.0, 1.0]) == [[], ["rollback"], []]     # one per attempt
    state.start_epoch = 3
    state.callbacks.append(PlateauRestart(epochs=4, loss=0.0, restarts=1, max_epochs=99))
    kinds = _run(state, [1.0], rebuild=lambda k: _net(k))              # 4th epoch, best ≥ 0.0: restart
    assert kinds == [["restart"]] and state.attempt_start == 4
    state.start_epoch = 4
    assert _run(state, [0.6, 1.0]) == [[], ["rollback"]]                # the new attempt has its own
    assert [r["epoch"] for r in state.history["rollbacks"]] == [1, 5]


def test_rollback_during_warmup_halves_the_target_not_the_ramp():
    warm = WarmUp(lr=1e-3, steps=100)
    state = _state([warm, CollapseRollback(1)], lr=1e-3)
    for _ in range(2):
        state.optimiser.param_groups[0]["lr"] = warm.on_step_start()
    assert state.lr == pytest.approx(2e-5) and state.target_lr == 1e-3
    assert _run(state, [0.6, 1.0]) == [[], ["rollback"]]
    assert state.history["rollbacks"][0]["lr"] == 5e-4 and warm.on_step_start() is None


def test_rollback_count_restored_from_the_history():
    cb = CollapseRollback(2)
    cb.load_state_dict({"attempt_start": 3, "history": {"rollbacks": [{"epoch": 1}, {"epoch": 4}]}})
    assert cb.used == 1


# -- PlateauRestart -------------------------------------------------------------------------------------------
def test_plateau_of_four_epochs_asks_for_a_restart():
    cb = PlateauRestart(epochs=4, loss=0.85, restarts=2, max_epochs=20)
    state = _state([cb])
    calls = []

    def rebuild(k):
        calls.append(k)
        return _net(100 + k)

    assert _run(state, [0.93, 0.9, 0.88, 0.86], rebuild=rebuild) == [[], [], [], ["restart"]]
    assert calls == [1] and state.attempt_start == 4 and state.best_loss == float("inf")
    assert state.history["restarts"] == [{"epoch": 3, "best_val_loss": 0.86}]
    assert state.history["best_epoch"] is None and state.best_state is None
    assert state.lr == state.config.lr                                  # a fresh optimiser


def test_plateau_left_in_time_or_no_epoch_left_means_no_restart():
    left = PlateauRestart(epochs=4, loss=0.85, restarts=2, max_epochs=20)
    assert _run(_state([left]), [0.93, 0.9, 0.84, 0.86]) == [[], [], [], []]
    last = PlateauRestart(epochs=4, loss=0.85, restarts=2, max_epochs=4)
    assert _run(_state([last]), [0.93, 0.9, 0.88, 0.86]) == [[], [], [], []]


def test_plateau_restarts_are_limited_and_restored():
    cb = PlateauRestart(epochs=1, loss=0.85, restarts=2, max_epochs=20)
    state = _state([cb])
    kinds = _run(state, [0.9, 0.9, 0.9, 0.9], rebuild=_net)
    assert kinds == [["restart"], ["restart"], [], []]
    resumed = PlateauRestart(epochs=1, loss=0.85, restarts=2, max_epochs=20)
    resumed.load_state_dict({"history": state.history})
    assert resumed.done == 2


def test_restart_with_the_same_seed_gives_the_same_fresh_net():
    nets = []
    for _ in range(2):
        state = _state()
        state.best_loss = 0.9
        apply_action(state, RESTART, rebuild=lambda k: torch.nn.Linear(3, 2), seed=4)
        nets.append(state.net.weight.detach().clone())
    assert torch.equal(nets[0], nets[1])
    with pytest.raises(ConfigError, match="rebuild"):
        apply_action(_state(), RESTART)


# -- EarlyStopping --------------------------------------------------------------------------------------------
def test_early_stopping_after_patience_epochs_without_improvement():
    state = _state([EarlyStopping(patience=2)], min_delta=0.01)
    # 0.895 is not an improvement on 0.9 by min_delta 0.01
    assert _run(state, [1.0, 0.9, 0.895, 0.95, 0.5]) == [[], [], [], ["stop"]]
    assert state.stop and state.history["stopped_early"] is True


def test_early_stopping_counts_afresh_in_a_new_attempt():
    es = EarlyStopping(patience=2)
    state = _state([PlateauRestart(epochs=2, loss=0.85, restarts=1, max_epochs=20), es])
    assert _run(state, [0.9, 0.95, 0.96, 0.97, 0.98], rebuild=_net) == [[], ["restart"], [], [], ["stop"]]
    # epoch 1 (not improved) ended the first attempt and does not count for the second: 2 (best), 3, 4 -> stop
    assert es.state_dict() == {"wait": 2}
    impatient = _state([PlateauRestart(epochs=2, loss=0.85, restarts=1, max_epochs=20), EarlyStopping(patience=1)])
    assert _run(impatient, [0.9, 0.95, 0.96], rebuild=_net) == [[], ["restart"], []]   # the restart wins


def test_early_stopping_state_round_trip():
    es = EarlyStopping(patience=5)
    _run(_state([es]), [1.0, 1.1, 1.2])
    resumed = EarlyStopping(patience=5)
    resumed.load_state_dict(es.state_dict())
    assert resumed.wait == es.wait == 2


# -- Checkpointer ---------------------------------------------------------------------------------------------
def _train_a_little(state, steps=3):
    for _ in range(steps):
        state.optimiser.zero_grad()
        state.net(torch.ones(4, 3)).square().sum().backward()
        state.optimiser.step()


def test_checkpoint_save_and_resume_restore_epoch_rng_optimiser_and_callbacks(tmp_path):
    warm, es = WarmUp(lr=1e-3, steps=10), EarlyStopping(patience=9)
    state = _state([warm, es, Checkpointer(tmp_path)])
    state.callbacks[-1].on_train_start(state)        # no last.pt: a fresh start
    assert state.start_epoch == 0
    for _ in range(5):
        warm.on_step_start()
    _train_a_little(state)
    _run(state, [0.7, 0.8, 0.9])                      # best at epoch 0, then two epochs without improvement
    assert (tmp_path / "best.pt").is_file() and (tmp_path / "last.pt").is_file()
    after_save = (random.random(), np.random.rand(), torch.rand(3))

    fresh_warm, fresh_es = WarmUp(lr=1e-3, steps=10), EarlyStopping(patience=9)
    resumed = _state([fresh_warm, fresh_es, Checkpointer(tmp_path)], seed=1)
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    resumed.callbacks[-1].on_train_start(resumed)
    assert random.random() == after_save[0] and np.random.rand() == after_save[1]
    assert torch.equal(torch.rand(3), after_save[2])
    assert resumed.start_epoch == 3 and resumed.history["resumed_from"] == 2
    assert resumed.best_loss == 0.7 and resumed.history["best_epoch"] == 0
    for k, v in state.net.state_dict().items():
        assert torch.equal(resumed.net.state_dict()[k], v)
        assert torch.equal(resumed.best_state[k], state.best_state[k])
    saved, loaded = state.optimiser.state_dict(), resumed.optimiser.state_dict()
    for i, s in saved["state"].items():
        assert torch.equal(loaded["state"][i]["exp_avg"], s["exp_avg"]) and float(loaded["state"][i]["step"]) == 3
    assert fresh_es.wait == 2 and fresh_warm.state_dict() == {"attempt_steps": 5}


def test_checkpoint_of_a_stopped_run_leaves_nothing_to_do(tmp_path):
    state = _state([EarlyStopping(patience=1), Checkpointer(tmp_path)], max_epochs=10)
    assert _run(state, [0.7, 0.8]) == [[], ["stop"]]
    resumed = _state([EarlyStopping(patience=1), Checkpointer(tmp_path)], max_epochs=10)
    resumed.callbacks[-1].on_train_start(resumed)
    assert resumed.start_epoch == 10


def test_best_weights_are_saved_when_they_improve_even_if_a_restart_follows(tmp_path):
    state = _state([PlateauRestart(epochs=1, loss=0.85, restarts=1, max_epochs=9), Checkpointer(tmp_path)])
    best = {k: v.clone() for k, v in state.net.state_dict().items()}
    state.epoch = 0
    state.record_losses(0.9, 0.9, 0.9)
    for cb in state.callbacks:
        cb.on_validation_end(state)
    for cb in state.callbacks:
        apply_action(state, cb.on_epoch_end(state), rebuild=lambda k: _net(7))
    saved = torch.load(tmp_path / "best.pt", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in best.items()) and state.best_state is None


def test_callback_checkpoint_entries_must_not_clash():
    class Clash(Callback):
        def state_dict(self):
            return {"epoch": 1}

    with pytest.raises(ValueError, match="epoch"):
        _state([Clash()]).state_dict()


# -- the loop's side ------------------------------------------------------------------------------------------
def test_fit_orders_the_callbacks_so_actions_compose(tmp_path):
    cfg = TrainConfig(warmup_steps=3)
    kinds = [type(cb) for cb in default_callbacks(cfg, supervised=True, rebuild=_net, checkpoint_dir=tmp_path)]
    assert kinds == [WarmUp, CollapseRollback, PlateauRestart, EarlyStopping, Checkpointer]
    assert [type(cb) for cb in default_callbacks(cfg, supervised=False, rebuild=_net, checkpoint_dir=None)] == [
        WarmUp, EarlyStopping]


def test_actions():
    assert Action.rollback(0.1) == Action("rollback", 0.1) and STOP.kind == "stop" and CONTINUE.kind == "continue"
    with pytest.raises(ValueError, match="unknown training action"):
        apply_action(_state(), Action("jump"))
