"""Replay the learning curves of a finished study through other pruners: epochs each would have trained, trials
it would have pruned, and whether the study's best trial would have survived. Prints JSON.

    python benchmarks/pruner_replay.py --storage sqlite:///optuna.db --study porelab-unsupervised

A trial of the recorded study that was pruned is replayed as far as it got (its curve is not known beyond);
it counts as "survived" by a pruner when the pruner never stopped it within the recorded steps.
"""

from __future__ import annotations

import argparse
import json


def replay(trials, pruner) -> dict:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    epochs, pruned, survived = 0, [], {}
    for t in trials:
        trial = study.ask()
        stopped = False
        for step in sorted(t.intermediate_values):
            epochs += 1
            trial.report(t.intermediate_values[step], step)
            if trial.should_prune():
                stopped = True
                break
        if stopped:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            pruned.append(t.number)
        elif t.value is not None:
            study.tell(trial, t.value)
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        survived[t.number] = not stopped
    return {"epochs": epochs, "pruned": pruned, "survived": survived}


def main() -> None:
    import optuna

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--storage", required=True)
    ap.add_argument("--study", required=True)
    ap.add_argument("--min-resource", type=int, default=1)
    ap.add_argument("--eta", type=int, default=3)
    args = ap.parse_args()
    study = optuna.load_study(study_name=args.study, storage=args.storage)
    trials = [t for t in study.trials if t.intermediate_values]
    max_step = max(max(t.intermediate_values) for t in trials) + 1
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    best = max(complete, key=lambda t: t.value).number if complete else None
    pruners = {
        "recorded": None,
        "sha": optuna.pruners.SuccessiveHalvingPruner(min_resource=args.min_resource, reduction_factor=args.eta),
        "hyperband": optuna.pruners.HyperbandPruner(min_resource=args.min_resource, max_resource=max_step,
                                                    reduction_factor=args.eta),
        "median": optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
        "none": optuna.pruners.NopPruner(),
    }
    out = {"study": args.study, "trials": len(trials), "best_trial": best, "max_step": max_step}
    for name, pruner in pruners.items():
        if pruner is None:
            out[name] = {"epochs": sum(len(t.intermediate_values) for t in trials),
                         "pruned": [t.number for t in trials if t.state.name == "PRUNED"]}
            continue
        r = replay(trials, pruner)
        out[name] = {"epochs": r["epochs"], "pruned": r["pruned"],
                     "best_survives": None if best is None else r["survived"].get(best)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
