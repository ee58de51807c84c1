"""MLproject entry point `robustness`: a model's segmentation on faster re-scans (`porelab robustness`); inside
`mlflow run` the table and the plot are also logged to the run."""

import os
import sys

from _common import absolute, fix_options, run


def _log_to_run(out_dir: str) -> None:
    """Log robustness.csv/.json/.png and one metric per re-scan to the run `mlflow run` started."""
    import json
    from pathlib import Path

    import mlflow

    from porelab.tracking import log_metrics, parent_run

    out = Path(out_dir)
    data = json.loads((out / "robustness.json").read_text())
    metric = data["metric"]
    with parent_run("robustness"):
        for name in ("robustness.csv", "robustness.json", "robustness.png"):
            mlflow.log_artifact(str(out / name), artifact_path="robustness")
        log_metrics({f"{metric}_p{r['projections_percent']}_e{r['exposure_percent']}": r.get(metric)
                     for r in data["rows"]})
        log_metrics({f"{metric}_original": data["reference"].get(metric)})


if __name__ == "__main__":
    argv = fix_options(sys.argv[1:], ("-o", "--output", "--labels"))
    for i, arg in enumerate(argv[:-1]):          # a relative model folder, not a registered name
        if arg == "--model" and os.path.isdir(absolute(argv[i + 1])):
            argv[i + 1] = absolute(argv[i + 1])
    out = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("-o", "--output")), None)
    try:
        run("robustness", argv)
    except SystemExit as exc:
        if exc.code in (0, None) and out and os.environ.get("MLFLOW_RUN_ID"):
            _log_to_run(out)
        raise
