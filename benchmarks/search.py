"""Does searching pay? The main job at several time budgets against the single fixed configuration.

Every run is ``porelab search`` in its own folder (its own ``mlflow.db`` and ``optuna.db``) on one shared
training dataset (simulated once, seed ``--train-seed``), or with ``--main-job`` the README's main job
(``mlflow run <project> -e search``) simulating its dataset inside its budget:

* ``fixed``: one trial per study and no budget, i.e. each study's enqueued first trial only (the first net of
  each family at width 1 and the profile's learning rate; the supervised one at the paper's FTL optimum,
  ``porelab.automl.spaces.first_trial``): the configuration a search has to beat;
* one run per ``--budgets`` value (minutes, the whole job: data, both studies, registration, summary).

For each run it reports what the studies did (trials complete / pruned / failed, the architectures tried,
the range of α, β, γ tried, the best label-free validation value) and what the two production models score,
loaded by name, on unseen scans (``--unseen``, simulated with another seed unless given): AP and ROC-AUC over
the part, mean over the cylinders and on the hard cube. Labels are read here only, to report.

Prints one JSON document; ``table`` is a markdown summary, ``gain`` each budget's production AP minus the fixed
configuration's.

    python benchmarks/search.py --budgets 10 30 60 --work /tmp/search-bench
    python benchmarks/search.py --profile smoke --budgets 3 --work /tmp/sb      # a few minutes
    python benchmarks/search.py --budgets 10 30 60 --main-job --work /tmp/sb   # each run is the README's job

A run whose folder already holds a finished ``result.json`` is not run again (delete the folder to redo it),
so an interrupted benchmark resumes with its next run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

NAMES = ("porelab-unsupervised", "porelab-supervised")


def _run_search(folder: Path, *, profile: str, data: Path | None, budget: float | None, n_trials: int,
                seed: int) -> dict:
    """``porelab search`` in ``folder`` (its own stores); wall time and exit code. ``data=None``: the main
    job exactly as the README runs it, ``mlflow run <project> -e search``, simulating its own dataset (seed
    ``seed``) inside the budget."""
    folder.mkdir(parents=True, exist_ok=True)
    budget_text = "none" if budget is None else str(budget)
    if data is None:
        cmd = ["mlflow", "run", str(Path(__file__).resolve().parent.parent), "-e", "search", "--env-manager",
               "local", "-P", f"profile={profile}", "-P", f"n_trials={n_trials}", "-P",
               f"time_budget={budget_text}", "-P", f"seed={seed}"]
    else:
        cmd = [sys.executable, "-m", "porelab", "search", "--profile", profile, "--data", str(data),
               "--n-trials", str(n_trials), "--time-budget", budget_text, "--seed", str(seed),
               "--study-name", "porelab"]
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{folder / 'mlflow.db'}")
    t0 = time.perf_counter()
    with open(folder / "stdout", "w") as out, open(folder / "stderr", "w") as err:
        rc = subprocess.run(cmd, check=False, cwd=folder, env=env, stdout=out, stderr=err).returncode
    return {"command": " ".join(cmd), "returncode": rc, "wall_seconds": round(time.perf_counter() - t0, 1)}


def _span(values) -> list | None:
    values = [float(v) for v in values if v is not None]
    return [round(min(values), 4), round(max(values), 4)] if values else None


def study_stats(storage: str, name: str) -> dict:
    """Trials by state, architectures, the α/β/γ ranges tried and the best value of one study."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    count = {s.name.lower(): sum(t.state == s for t in trials)
             for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    nets = sorted({t.params.get("net") for t in trials if t.params.get("net")})
    out = {"trials": len(trials), **count, "nets": nets,
           "alpha": _span(t.params.get("alpha") for t in trials),
           "beta": _span(t.params.get("beta") for t in trials),
           "gamma": _span(t.params.get("gamma") for t in trials)}
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    if done:
        best = max(done, key=lambda t: t.value)
        out.update(best_value=round(float(best.value), 4), best_net=best.params.get("net"),
                   best_params={k: v for k, v in best.params.items()})
    return out


def production_quality(folder: Path, scans) -> dict:
    """Both production models of the run in ``folder``, by name, scored on ``scans``."""
    import mlflow
    from quality import registered_models

    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    out = {}
    for name, r in registered_models(scans).items():
        out[name] = {"version": r["version"], "net": r["net"], "threshold": r["threshold"],
                     "cv_mean_ap": round(r["cv_mean_ap"], 4), "cv_mean_auc": round(r["cv_mean_auc"], 4),
                     "hard_ap": None if r["hard_ap"] is None else round(r["hard_ap"], 4),
                     "hard_auc": None if r["hard_auc"] is None else round(r["hard_auc"], 4)}
    return out


def one_run(label: str, folder: Path, args, data: Path, scans) -> dict:
    done = folder / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    budget = None if label == "fixed" else float(label)
    result = {"run": label, "budget_minutes": budget,
              **_run_search(folder, profile=args.profile, data=None if args.main_job else data, budget=budget,
                            n_trials=1 if label == "fixed" else 0, seed=args.seed)}
    if result["returncode"] == 0:
        storage = f"sqlite:///{folder / 'optuna.db'}"
        result["studies"] = {kind: study_stats(storage, f"porelab-{kind}")
                             for kind in ("unsupervised", "supervised")}
        result["models"] = production_quality(folder, scans)
        tmp = done.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(done)
    return result


def markdown(runs: dict) -> str:
    lines = [("| run | wall | unsup. trials (c/p/f), nets | sup. trials (c/p/f), nets | best val unsup / sup "
              "| unsup. AP cyl / cube | sup. AP cyl / cube |"), "|---|---|---|---|---|---|---|"]
    for label, r in runs.items():
        if r.get("returncode") != 0:
            lines.append(f"| {label} | {r.get('wall_seconds', 0) / 60:.1f} min | failed (rc {r.get('returncode')}) "
                         "| | | | |")
            continue
        st, mo = r["studies"], r["models"]

        def trials(s):
            return f"{s['trials']} ({s['complete']}/{s['pruned']}/{s['fail']}), {len(s['nets'])}: {', '.join(s['nets'])}"

        def ap(m):
            hard = "n/a" if m["hard_ap"] is None else f"{m['hard_ap']:.3f}"
            return f"{m['net']} {m['cv_mean_ap']:.3f} / {hard}"

        best = " / ".join(f"{st[k].get('best_value', float('nan')):.3f}" for k in ("unsupervised", "supervised"))
        lines.append(f"| {label} | {r['wall_seconds'] / 60:.1f} min | {trials(st['unsupervised'])} | "
                     f"{trials(st['supervised'])} | {best} | {ap(mo[NAMES[0]])} | {ap(mo[NAMES[1]])} |")
    return "\n".join(lines)


def gains(runs: dict) -> dict:
    """Each budget's production AP (cylinders, cube) minus the fixed configuration's, per model."""
    base = runs.get("fixed")
    if not base or base.get("returncode") != 0:
        return {}
    out = {}
    for label, r in runs.items():
        if label == "fixed" or r.get("returncode") != 0:
            continue
        out[label] = {}
        for name in NAMES:
            a, b = r["models"][name], base["models"][name]
            out[label][name] = {k: (None if a[k] is None or b[k] is None else round(a[k] - b[k], 4))
                                for k in ("cv_mean_ap", "hard_ap")}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick", choices=["smoke", "quick", "paper"])
    ap.add_argument("--budgets", nargs="+", type=float, default=[10.0, 30.0, 60.0], help="minutes per run")
    ap.add_argument("--no-fixed", dest="fixed", action="store_false", help="leave out the fixed configuration")
    ap.add_argument("--work", default="porelab-search-bench", help="folder for the data and every run")
    ap.add_argument("--train-seed", type=int, default=0, help="simulation seed of the training dataset")
    ap.add_argument("--unseen", default=None, help="dataset folder of the unseen scans (default: simulate)")
    ap.add_argument("--unseen-seed", type=int, default=2027)
    ap.add_argument("--seed", type=int, default=0, help="the search's seed")
    ap.add_argument("--main-job", action="store_true",
                    help="run each configuration as `mlflow run <project> -e search` simulating its own data "
                         "(seed --seed) inside its budget, instead of `porelab search --data` on one dataset")
    args = ap.parse_args(argv)

    from quality import _dataset as simulated  # simulates into the folder unless its manifest is there

    from porelab.config import get_profile
    from porelab.crossval import labelled, load_scans

    work = Path(args.work).resolve()
    preset = get_profile(args.profile).sim_preset
    data = None if args.main_job else simulated(work / "data", preset, args.train_seed)
    unseen = Path(args.unseen).resolve() if args.unseen else simulated(work / f"unseen-s{args.unseen_seed}",
                                                                       preset, args.unseen_seed)
    cv, hard, _, refs = load_scans(unseen)
    scans = labelled(cv + ([hard] if hard is not None else []), refs)

    labels = (["fixed"] if args.fixed else []) + [f"{b:g}" for b in args.budgets]
    runs = {}
    for label in labels:
        runs[label] = one_run(label, work / f"run-{label}", args, data, scans)
    result = {"profile": args.profile,
              "train_data": f"simulated by each run, seed {args.seed}" if data is None else str(data), "unseen": str(unseen), "runs": runs,
              "gain": gains(runs), "table": markdown(runs)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
