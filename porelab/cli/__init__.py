"""The ``porelab`` command line. Thin: parse, call a porelab function, print.

Commands live in small modules under ``porelab.cli`` and are imported only when used, so ``porelab --help``
stays fast. Every error a user can cause is printed as one line (``porelab: error: …``) with exit status 2;
set ``PORELAB_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

# command name -> (module, attribute, one-line help shown by `porelab --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "info": ("porelab.cli.scan_cmds", "info", "Shape, dtype, spacing and value range of a scan."),
    "label": ("porelab.cli.scan_cmds", "label", "Algorithm 1 heuristic pore labels (Otsu, flood fill)."),
    "report": ("porelab.cli.scan_cmds", "report", "Per-pore table, porosity % and plots from a mask."),
    "simulate": ("porelab.cli.sim_cmds", "simulate", "Simulated CT dataset of AM parts with exact truth."),
    "degrade": ("porelab.cli.sim_cmds", "degrade", "Re-scan with fewer projections / lower exposure."),
    "dataset": ("porelab.cli.dataset_cmds", "dataset", "A dataset (manifest) over your own scans, labels optional."),
    "robustness": ("porelab.cli.robustness_cmds", "robustness", "A model's pores on faster re-scans (Fig. 9)."),
    "train": ("porelab.cli.engine_cmds", "train", "Train one network on a dataset; save a model folder."),
    "segment": ("porelab.cli.engine_cmds", "segment", "Segment pores in a scan with a model."),
    "evaluate": ("porelab.cli.eval_cmds", "evaluate", "AP, ROC-AUC, Dice of a score volume against truth."),
    "complexity": ("porelab.cli.eval_cmds", "complexity", "Parameters, MACs and memory of the ten nets."),
    "search": ("porelab.cli.automl_cmds", "search", "The whole AutoML pipeline (MLflow + Optuna)."),
    "cv": ("porelab.cli.automl_cmds", "cv", "Cross-validate one network configuration."),
    "pseudolabel": ("porelab.cli.automl_cmds", "pseudolabel", "Pseudo-labels from a registered model."),
    "retrain": ("porelab.cli.automl_cmds", "retrain", "Supervised study on pseudo-labels; register."),
}


class LazyGroup(click.Group):
    """A group whose commands are imported on first use, and whose errors are one line."""

    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:  # a command whose module is missing stays listed
            reason = str(exc)

            @click.command(name=name, help=COMMANDS[name][2])
            def unavailable():
                raise click.ClickException(f"'{name}' is unavailable: {reason}")

            return unavailable

    def format_commands(self, ctx, formatter):
        rows = [(name, help_) for name, (_, _, help_) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx):
        from porelab.errors import PorelabError

        terminated = []
        previous = _on_sigterm(terminated)
        try:
            result = super().invoke(ctx)
            if terminated:      # a SIGTERM whose KeyboardInterrupt was dropped on the way: still a stop
                raise KeyboardInterrupt
            return result
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            if terminated:
                _exit_interrupted(terminated)
            raise
        except KeyboardInterrupt:
            _exit_interrupted(terminated)
        except PermissionError as exc:  # an output (or input) the user may not write (or read)
            if os.environ.get("PORELAB_DEBUG"):
                raise
            where = exc.filename if exc.filename else _one_line(exc)
            click.echo(f"porelab: error: {where}: permission denied", err=True)
            sys.exit(2)
        except PorelabError as exc:
            if os.environ.get("PORELAB_DEBUG"):
                raise
            click.echo(f"porelab: error: {_one_line(exc)}", err=True)
            sys.exit(2)
        except (OSError, MemoryError, ValueError, RuntimeError) as exc:
            if os.environ.get("PORELAB_DEBUG"):
                raise
            click.echo(f"porelab: error: {type(exc).__name__}: {_one_line(exc)} "
                       "(set PORELAB_DEBUG=1 for the traceback)", err=True)
            sys.exit(1)
        finally:
            _restore_sigterm(previous)


def _exit_interrupted(terminated: list):
    """Print one line and exit at once: 143 after SIGTERM, 130 after Ctrl-C.

    The writers' cleanup (``porelab.io.atomic_path``) has run while the exception unwound. A normal
    interpreter shutdown after an interrupt could still end by KeyboardInterrupt (status -2) and must never
    look like success, hence ``os._exit``."""
    click.echo("porelab: interrupted", err=True)
    sys.stderr.flush()
    os._exit(143 if terminated else 130)


def _on_sigterm(flag: list):
    """Turn SIGTERM into ``KeyboardInterrupt`` (as SIGINT), so temporary outputs are removed on the way out.

    ``flag`` gets an entry when SIGTERM arrived (exit status 143 instead of 130). Returns the previous
    handler, or None when handlers cannot be set (not the main thread).
    """
    import signal

    from porelab.runtime import note_termination  # imported here, not inside the handler

    def handler(signum, frame):
        flag.append(signum)
        note_termination(signum)
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError, AttributeError):
        return None


def _restore_sigterm(previous) -> None:
    import signal

    if previous is None:
        return
    try:
        signal.signal(signal.SIGTERM, previous)
    except (ValueError, OSError):
        pass


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 400 else text[:397] + "..."


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="porelab")
def main():
    """porelab: find pores in X-ray CT scans of 3D-printed metal parts, voxel by voxel.

    Arrays are (z, y, x) and spacing is in millimetres (z, y, x) throughout.

    \b
    Typical session:
      porelab simulate data --preset quick          # five cylinders + a hard cube, with truth
      porelab label data/cyl1_scan.npy -o cyl1_lab.npy
      porelab report cyl1_lab.npy --volume data/cyl1_scan.npy -o cyl1_report
      mlflow run . -e search --env-manager local     # the whole AutoML pipeline
      porelab segment scan.tif -o out --model porelab-supervised
    """


if __name__ == "__main__":  # pragma: no cover
    main()
