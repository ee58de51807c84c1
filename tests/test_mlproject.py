"""MLproject / conda.yaml / entry points: declared, typed, in step with the CLI and pyproject.toml."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
#: one script per entry point in entrypoints/ (``_common.py`` is their shared helper)
ENTRY_POINTS = tuple(sorted(p.stem for p in (ROOT / "entrypoints").glob("*.py") if not p.stem.startswith("_")))


@pytest.fixture(scope="module")
def project():
    from mlflow.projects._project_spec import load_project

    return load_project(str(ROOT))


def _command(name):
    from porelab.cli import COMMANDS

    return __import__(COMMANDS[name][0], fromlist=["x"]).__dict__[COMMANDS[name][1]]


def test_entry_points_declared_and_typed(project):
    """Every script is an entry point, and each parameter's type and default agree with the click option it
    fills: ``mlflow run`` without ``-P`` does what ``porelab`` without the option does."""
    import click

    assert set(project._entry_points) == set(ENTRY_POINTS)
    assert project.env_type == "conda_env"
    assert Path(project.env_config_path).name == "conda.yaml"
    click_type = {"int": (click.types.IntParamType,), "float": (click.types.FloatParamType,),
                  "string": (click.types.StringParamType, click.Path, click.Choice), "path": (click.Path,)}
    checked = 0
    for name in ENTRY_POINTS:
        ep = project.get_entry_point(name)
        command = _command(name)
        for key, param in ep.parameters.items():
            m = re.search(r"(--?[a-z][\w-]*)\s+\{" + re.escape(key) + r"\}", ep.command)
            if m is None:                                   # a positional argument
                continue
            option = next(o for o in command.params if m.group(1) in o.opts)
            assert isinstance(option.type, click_type[param.type]), (name, key, option.type)
            if isinstance(option.type, click.Choice) and param.default is not None:
                assert param.default in option.type.choices, (name, key)
            if isinstance(option.default, (str, int, float)):      # options without a default are skipped
                assert str(param.default) == str(option.default), (name, key, param.default, option.default)
                checked += 1
    assert checked >= 10       # the comparison above really runs


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_each_entry_point_runs_a_porelab_command(project, name, tmp_path):
    from porelab.cli import COMMANDS

    ep = project.get_entry_point(name)
    params = {k: (str(tmp_path) if p.type == "path" else "x") for k, p in ep.parameters.items()
              if p.default is None}
    cmd = ep.compute_command(params, str(tmp_path))
    script = re.match(r"python (entrypoints/\w+\.py)", cmd).group(1)
    text = (ROOT / script).read_text()
    assert f'run("{name}"' in text and name in COMMANDS
    # every --option the MLproject passes exists on the click command
    command = _command(name)
    known = {o for p in command.params for o in getattr(p, "opts", [])}
    passed = set(re.findall(r"\s(--?[a-z][\w-]*)", cmd))
    assert passed <= known, f"{name}: unknown options {passed - known}"


def test_conda_env_lists_the_package_dependencies():
    env = yaml.safe_load((ROOT / "conda.yaml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps and "pip" in deps
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert set(declared) <= set(pip)
    assert "-e ." in pip


def test_mlflow_run_entry_point_writes_beside_the_store(tmp_path):
    """`mlflow run <project> -e simulate --env-manager local` from another folder: the relative output
    lands beside mlflow.db (the caller's folder), not in the project folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update({"OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    res = subprocess.run([sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", "simulate",
                          "--env-manager", "local", "-P", "out=simdata", "-P", "preset=smoke"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "simdata" / "manifest.json").is_file()
    assert not (ROOT / "simdata").exists()


def test_entry_points_import_the_porelab_of_their_own_checkout(tmp_path):
    """`mlflow run <checkout>` must run that checkout's code, not whichever porelab is installed."""
    import shutil
    import subprocess
    import sys

    shutil.copytree(ROOT / "entrypoints", tmp_path / "entrypoints")
    (tmp_path / "porelab").mkdir()
    (tmp_path / "porelab" / "__init__.py").write_text("CHECKOUT = 'copy'\n")
    probe = tmp_path / "entrypoints" / "probe.py"
    probe.write_text("import _common  # noqa: F401\nimport porelab\nprint(porelab.__file__)\n")
    out = subprocess.run([sys.executable, str(probe)], cwd=str(tmp_path.parent), capture_output=True,
                         text=True, check=True, timeout=60).stdout.strip()
    assert out == str(tmp_path / "porelab" / "__init__.py")
