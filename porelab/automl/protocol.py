"""The paper's supervised search protocol (Iuso et al. 2024, §4.3 and §5.1), run on one Optuna study.

1. The first supervised net (UNet) over the α × β grid (α, β ∈ linspace(0.1, 0.9, 4): 16 pairs), γ fixed
   (§4.3: "the γ parameter was kept at 0.5"), each pair cross-validated;
2. γ over {1/3, 1/2, 2/3, 1, 4/3, 3/2, 5/3, 2} at the best α, β;
3. every other supervised net at the best (α, β, γ).

Each stage enqueues its parameter sets (``study.enqueue_trial``) and runs them with ``study.optimize``, so
all trials live in one study and the trials table, the leaderboard and registration read it as any other
study; the sampler never proposes a value (a trial that was not enqueued by the protocol, which only a
second worker racing for the last queued trial can start, is pruned before it suggests anything). "Best" is
the highest value among the stage's COMPLETE trials; a pruned or failed parameter set does not compete.

Resuming: a parameter set with a COMPLETE, PRUNED, RUNNING or WAITING trial in the study is not enqueued
again (a FAILED one is), and the stages are re-derived from the study, so a study stopped after stage 1
goes on with stage 2. The parameter set of stage 2 at the stage-1 γ is stage 1's own trial: it is not
trained twice, so the paper's full protocol is 16 + 7 + (nets − 1) trials. A stage with a trial still
running elsewhere (another worker) or cut short (trial cap, time budget, ``study.stop``) ends this call
before the next stage is chosen.
"""

from __future__ import annotations

import logging
import math

from porelab.errors import ConfigError

logger = logging.getLogger(__name__)

#: the trial user attribute that names the protocol stage of an enqueued trial
STAGE_ATTR = "paper_stage"


def _key(params: dict) -> tuple:
    """A parameter set as a hashable key (floats rounded: the values round-trip through the storage)."""
    return (params.get("net"), *(round(float(params.get(k, math.nan)), 9) for k in ("alpha", "beta", "gamma")))


def _trial_params(trial) -> dict:
    """The protocol parameters of a trial: the enqueued ones (also while WAITING), else the suggested ones."""
    return trial.system_attrs.get("fixed_params") or trial.params


def _by_key(study) -> dict[tuple, list]:
    out: dict[tuple, list] = {}
    for t in study.get_trials(deepcopy=False):
        out.setdefault(_key(_trial_params(t)), []).append(t)
    return out


def snap(values, choices, field: str) -> tuple[float, ...]:
    """``values`` replaced by the equal (within 1e-6) member of ``choices``: the supervised space suggests
    α, β, γ with ``suggest_categorical`` over the paper's values, and an enqueued value must be one of them."""
    out = []
    for v in values:
        hit = [c for c in choices if abs(float(c) - float(v)) <= 1e-6]
        if not hit:
            raise ConfigError(f"search.{field}: {v} is not one of the paper's grid values "
                              f"{', '.join(f'{c:.4g}' for c in choices)}")
        out.append(float(hit[0]))
    return tuple(out)


def paper_stages(search) -> dict:
    """The protocol's grids of a profile's :class:`~porelab.config.SearchSpace`, snapped to the values the
    supervised space suggests (``porelab.automl.spaces.PAPER_ALPHAS`` / ``PAPER_GAMMAS``)."""
    from porelab.automl.spaces import PAPER_ALPHAS, PAPER_GAMMAS

    alphas = snap(search.paper_alphas, PAPER_ALPHAS, "paper_alphas")
    return {"nets": tuple(search.supervised_nets), "alphas": alphas, "betas": alphas,
            "gammas": snap(search.paper_gammas, PAPER_GAMMAS, "paper_gammas"),
            "gamma0": snap((search.paper_gamma0,), PAPER_GAMMAS, "paper_gamma0")[0]}


def protocol_trials(nets, alphas, betas, gammas, gamma0) -> int:
    """How many trials the full protocol trains (stage 2's set at ``gamma0`` is stage 1's trial)."""
    g0 = round(float(gamma0), 9)
    return len(alphas) * len(betas) + sum(round(float(g), 9) != g0 for g in gammas) + len(nets) - 1


def _guarded(objective):
    """``objective`` for enqueued trials only: a trial the sampler would fill is pruned before it
    suggests anything (module docstring)."""
    import optuna

    def run(trial):
        if STAGE_ATTR not in trial.user_attrs:
            trial.set_user_attr("pruned_by", "paper protocol (not an enqueued trial)")
            raise optuna.TrialPruned("the paper protocol runs enqueued trials only")
        return objective(trial)

    return run


def _run_stage(study, objective, stage: str, param_sets: list[dict], *, budget: int | None, callbacks,
               catch) -> tuple[int, bool]:
    """Enqueue the stage's parameter sets not yet in the study, run its waiting trials (at most
    ``budget``); return (trials run, whether every set now has a finished trial and none is pending)."""
    from optuna.trial import TrialState

    keep = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    present = _by_key(study)
    for params in param_sets:
        if not any(t.state in keep for t in present.get(_key(params), [])):
            study.enqueue_trial(params, user_attrs={STAGE_ATTR: stage})
    keys = {_key(p) for p in param_sets}
    waiting = sum(_key(_trial_params(t)) in keys
                  for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    n = waiting if budget is None else min(waiting, budget)

    def started() -> int:
        return sum(t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False))

    before = started()
    if n > 0:
        study.optimize(_guarded(objective), n_trials=n, callbacks=list(callbacks), catch=catch, gc_after_trial=True)
    ran = started() - before
    present = _by_key(study)
    done = all(any(t.state.is_finished() for t in present.get(k, [])) and
               not any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in present.get(k, []))
               for k in keys)
    return ran, done


def _best(study, param_sets: list[dict]):
    """The COMPLETE trial with the highest value among ``param_sets`` (the earliest on ties), or ``None``."""
    from optuna.trial import TrialState

    keys = {_key(p) for p in param_sets}
    best = None
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if _key(_trial_params(t)) in keys and (best is None or t.value > best.value):
            best = t
    return best


def _choice(trial, n_sets: int, study, param_sets) -> dict:
    from optuna.trial import TrialState

    keys = {_key(p) for p in param_sets}
    complete = sum(_key(_trial_params(t)) in keys
                   for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    p = _trial_params(trial)
    return {"net": p["net"], "alpha": float(p["alpha"]), "beta": float(p["beta"]), "gamma": float(p["gamma"]),
            "value": float(trial.value), "trial": trial.number, "param_sets": n_sets, "complete": complete}


def run_paper_protocol(study, objective, nets, *, alphas, betas, gammas, gamma0: float, n_trials: int | None = None,
                       callbacks=(), catch=(Exception,)) -> dict:
    """Run the paper's three stages (module docstring) on ``study`` with ``objective`` (one trial = one
    parameter set ``{"net", "alpha", "beta", "gamma"}``, suggested by the objective with those names).

    ``n_trials``: at most this many trials in this call (``None``: the whole protocol). Returns each
    stage's choice: ``{"stage1": {best α, β at γ0, value, trial, …}, "stage2": {best γ at that α, β, …},
    "stage3": [one row per net at the optimum: trial, state, value], "finished": bool}``; a stage not
    finished in this call (and the ones after it) is ``None``.
    """
    from optuna.trial import TrialState

    nets = list(nets)
    if not nets or not alphas or not betas or not gammas:
        raise ConfigError("paper protocol: give at least one net, α, β and γ")
    result: dict = {"stage1": None, "stage2": None, "stage3": None, "finished": False}
    left = n_trials

    def stage(name, sets):
        nonlocal left
        ran, done = _run_stage(study, objective, name, sets, budget=left, callbacks=callbacks, catch=catch)
        if left is not None:
            left -= ran
        return done

    first = nets[0]
    s1 = [{"net": first, "alpha": float(a), "beta": float(b), "gamma": float(gamma0)} for a in alphas for b in betas]
    if not stage("stage1", s1) or (best := _best(study, s1)) is None:
        return result
    result["stage1"] = _choice(best, len(s1), study, s1)
    a, b = result["stage1"]["alpha"], result["stage1"]["beta"]
    logger.info("paper protocol stage 1: alpha %.4g, beta %.4g (value %.4f)", a, b, best.value)

    s2 = [{"net": first, "alpha": a, "beta": b, "gamma": float(g)} for g in gammas]
    if not stage("stage2", s2) or (best := _best(study, s2)) is None:
        return result
    result["stage2"] = _choice(best, len(s2), study, s2)
    g = result["stage2"]["gamma"]
    logger.info("paper protocol stage 2: gamma %.4g at alpha %.4g, beta %.4g (value %.4f)", g, a, b, best.value)

    s3 = [{"net": net, "alpha": a, "beta": b, "gamma": g} for net in nets]
    if not stage("stage3", s3[1:]):
        return result
    present = _by_key(study)
    rows = []
    for params in s3:
        trials = present.get(_key(params), [])
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        t = max(complete, key=lambda t: t.value) if complete else (trials[-1] if trials else None)
        rows.append({"net": params["net"], "trial": None if t is None else t.number,
                     "state": None if t is None else t.state.name,
                     "value": None if t is None or t.value is None else float(t.value)})
    result["stage3"] = rows
    result["finished"] = True
    logger.info("paper protocol stage 3: %s", ", ".join(f"{r['net']} {r['value']}" for r in rows))
    return result


def log_protocol(result: dict) -> None:
    """Each stage's choice on the active MLflow run: ``optuna/paper_protocol.json`` and the chosen
    α, β, γ as params ``paper_alpha``, ``paper_beta``, ``paper_gamma``."""
    import mlflow

    from porelab import tracking

    mlflow.log_dict(result, "optuna/paper_protocol.json")
    params = {}
    if result.get("stage1"):
        params.update(paper_alpha=result["stage1"]["alpha"], paper_beta=result["stage1"]["beta"])
    if result.get("stage2"):
        params["paper_gamma"] = result["stage2"]["gamma"]
    if params:
        tracking.log_params(params)
    mlflow.set_tag("porelab.paper_protocol", "finished" if result.get("finished") else
                   ("stage 3" if result.get("stage2") else "stage 2" if result.get("stage1") else "stage 1"))


__all__ = ["STAGE_ATTR", "log_protocol", "paper_stages", "protocol_trials", "run_paper_protocol", "snap"]
