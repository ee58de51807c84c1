"""Layering of the package: the science core imports neither MLflow, Optuna nor the edge packages, and no
module grows past the size one reader can hold.

The core is every module under porelab/ except automl/, tracking/ and cli/ (the edge, design note §1).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "porelab"
EDGE = ("automl", "tracking", "cli")
FORBIDDEN = ("mlflow", "optuna")
EDGE_MODULES = tuple(f"porelab.{e}" for e in EDGE)
MAX_LINES = 600

# Modules that break a rule while they are being split up; remove an entry once its module is gone.
TEMPORARY_EXCEPTIONS: dict[str, str] = {}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _core_files() -> list[Path]:
    files = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in EDGE or rel.name == "__main__.py" or "__pycache__" in rel.parts:
            continue
        files.append(path)
    return files


def _rel(path: Path) -> str:
    return str(path.relative_to(PACKAGE.parent))


def test_the_core_imports_neither_mlflow_nor_optuna_nor_the_edge():
    """Import every core module in a fresh interpreter; the first one after which MLflow, Optuna or an edge
    package is loaded is named."""
    names = [_module_name(p) for p in _core_files()]
    assert "porelab.model" in names and "porelab.runtime" in names
    probe = (
        "import importlib, json, sys\n"
        f"names, banned = {names!r}, {FORBIDDEN + EDGE_MODULES!r}\n"
        "offenders = []\n"
        "for name in names:\n"
        "    before = {m for m in banned if m in sys.modules}\n"
        "    importlib.import_module(name)\n"
        "    new = sorted(m for m in banned if m in sys.modules and m not in before)\n"
        "    if new:\n"
        "        offenders.append([name, new])\n"
        "print(json.dumps(offenders))\n"
    )
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=600,
                         cwd=PACKAGE.parent, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    offenders = json.loads(res.stdout.strip().splitlines()[-1])
    assert offenders == [], "; ".join(f"{name} imports {', '.join(new)} at import time"
                                      for name, new in offenders)


def test_no_core_module_imports_the_edge_even_inside_a_function():
    """The core takes model folders and plain objects; registered names, runs and studies are resolved at
    the edge (an import inside a function would be a hidden cycle, e.g. model -> tracking -> model)."""
    found = []
    for path in _core_files():
        if _rel(path) in TEMPORARY_EXCEPTIONS:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for target in targets:
                if target.split(".")[0] in FORBIDDEN or target.startswith(tuple(m + "." for m in EDGE_MODULES)) \
                        or target in EDGE_MODULES:
                    found.append(f"{_rel(path)}:{node.lineno} imports {target}")
                    break
    assert found == [], "core modules import the edge: " + "; ".join(found)


def test_no_module_exceeds_the_line_limit():
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "__pycache__" in path.parts or _rel(path) in TEMPORARY_EXCEPTIONS:
            continue
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_LINES:
            too_long.append(f"{_rel(path)} has {n} lines")
    assert too_long == [], f"modules over {MAX_LINES} lines: " + "; ".join(too_long)


def test_temporary_exceptions_still_break_the_rules():
    """An excepted module that is within the limit again must leave the list (a gone one is harmless)."""
    for rel in TEMPORARY_EXCEPTIONS:
        path = PACKAGE.parent / rel
        if path.exists():
            assert len(path.read_text(encoding="utf-8").splitlines()) > MAX_LINES, (
                f"{rel} is within {MAX_LINES} lines: remove it from TEMPORARY_EXCEPTIONS")
