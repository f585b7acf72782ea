"""Every third-party package the code imports is declared in a pyproject.toml, so a
fresh `pip install` (the container image's) has it, not only this virtualenv."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import os
import re
import sys
from functools import cache
from pathlib import Path

import pytest
import tomllib

from .livekit_server import ROOT

PLUGINS = sorted((ROOT / "plugins").glob("*/pyproject.toml"))
"""The in-repo plugins: installed from the repository (scripts/setup, the Dockerfile)."""
OURS = {"transcriber", "tests", "benchmarks", "scripts", "web"}


def _name(requirement: str) -> str:
    """PEP 503 normalized distribution name of a requirement string."""
    return re.sub(r"[-_.]+", "-", re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0]).lower()


def _project(pyproject: Path) -> dict:
    return tomllib.loads(pyproject.read_text())["project"]


APP = {_name(r) for r in _project(ROOT / "pyproject.toml")["dependencies"]}
TEST = {_name(r) for r in _project(ROOT / "pyproject.toml")["optional-dependencies"]["test"]}
PLUGIN = {_name(_project(p)["name"]) for p in PLUGINS} | {
    _name(r) for p in PLUGINS for r in _project(p)["dependencies"]
}


def imports(path: Path, *, lazy: bool) -> set[str]:
    """Modules imported at module level (or, with `lazy`, inside functions only)."""
    tree = ast.parse(path.read_text())
    in_functions = {
        id(node)
        for fn in ast.walk(tree)
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
        for node in ast.walk(fn)
    }
    found = set()
    for node in ast.walk(tree):
        if (id(node) in in_functions) != lazy:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in sys.stdlib_module_names | OURS:
                continue
            # `from livekit import rtc` imports the module livekit.rtc (livekit is a
            # namespace several distributions share); `from x import name` imports x
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if _is_module(submodule) else node.module)
    return {m for m in found if m.split(".")[0] not in sys.stdlib_module_names | OURS}


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


@cache
def _file_owners() -> dict[Path, str]:
    owners = {}
    for dist in importlib.metadata.distributions():
        for file in dist.files or []:
            owners[Path(os.path.normpath(dist.locate_file(file)))] = _name(dist.metadata["Name"])
    return owners


def owner(module: str) -> str:
    """The distribution that installs `module`, found by the file it is loaded from (a
    namespace such as `livekit` spans several)."""
    spec = importlib.util.find_spec(module)
    assert spec is not None, f"{module} is not installed"
    origin = Path(spec.origin if spec.origin else next(iter(spec.submodule_search_locations)))
    origin = Path(os.path.normpath(origin))
    for plugin in PLUGINS:
        if origin.is_relative_to(plugin.parent):
            return _name(_project(plugin)["name"])
    for candidate in (origin, origin / "__init__.py"):
        if candidate in _file_owners():
            return _file_owners()[candidate]
    raise AssertionError(f"no installed distribution owns {module} ({origin})")


def sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", sources("transcriber"), ids=lambda p: p.name)
def test_the_application_imports_only_what_it_declares(path: Path) -> None:
    """At import time: `dependencies`. Inside a function (an optional provider): those or
    an in-repo plugin and what it declares."""
    undeclared = {m: owner(m) for m in imports(path, lazy=False)}
    undeclared = {m: d for m, d in undeclared.items() if d not in APP}
    lazy = {m: owner(m) for m in imports(path, lazy=True)}
    undeclared |= {m: d for m, d in lazy.items() if d not in APP | PLUGIN}
    assert undeclared == {}, "add these distributions to pyproject.toml dependencies"


@pytest.mark.parametrize(
    "path", sources("tests", "benchmarks", "scripts"), ids=lambda p: str(p.relative_to(ROOT))
)
def test_tests_and_tools_import_only_what_the_test_extra_declares(path: Path) -> None:
    found = imports(path, lazy=False) | imports(path, lazy=True)
    undeclared = {m: d for m in found if (d := owner(m)) not in APP | TEST | PLUGIN}
    assert undeclared == {}, "add these distributions to the test extra in pyproject.toml"


def test_the_check_sees_an_undeclared_import(tmp_path: Path) -> None:
    module = tmp_path / "uses_typer.py"
    module.write_text("import typer\n\ndef later():\n    import psutil\n")
    assert imports(module, lazy=False) == {"typer"} and imports(module, lazy=True) == {"psutil"}
    assert owner("typer") == "typer" and "typer" not in APP | PLUGIN
