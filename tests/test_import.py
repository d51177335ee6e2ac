"""The lazy top-level API (PEP 562): ``import nfm`` is cheap and every public name resolves."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import nfm

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("sklearn", "pandas", "matplotlib")


def _fresh_interpreter(code: str) -> str:
    """Run ``code`` in a new interpreter (no modules shared with pytest) and return stdout."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_feature_matrix_api_loads_no_heavy_dependency():
    code = (
        "import json, sys\n"
        "import nfm\n"
        "after_import = sorted(sys.modules)\n"
        "nfm.compute_agop, nfm.nfa_report, nfm.NFATracker\n"
        f"heavy = {HEAVY!r}\n"
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & set(heavy))\n"
        "print(json.dumps({'loaded': loaded, 'torch_after_import': 'torch' in after_import}))\n"
    )
    report = json.loads(_fresh_interpreter(code).splitlines()[-1])
    assert report["loaded"] == []
    assert not report["torch_after_import"]  # the bare import loads nothing heavy at all


def test_the_estimators_still_load_scikit_learn_on_use():
    code = "import sys, nfm\nnfm.RFMRegressor\nprint('sklearn' in sys.modules)\n"
    assert _fresh_interpreter(code).strip().splitlines()[-1] == "True"


def test_every_public_name_resolves_and_is_listed():
    assert len(nfm.__all__) == len(set(nfm.__all__))
    for name in nfm.__all__:
        value = getattr(nfm, name)
        assert value is not None, name
        if name != "__version__":
            # the object is the one its defining module exports, not a copy
            module = sys.modules[nfm._EXPORTS[name]]
            assert getattr(module, name) is value, name
    assert set(nfm.__all__) == set(nfm._EXPORTS) | {"__version__"}
    listed = dir(nfm)
    assert set(nfm.__all__) <= set(listed)
    assert listed == sorted(listed)


def test_unknown_attribute_raises_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        nfm.not_a_name  # noqa: B018
    assert not hasattr(nfm, "compute_agops")


def test_type_checking_imports_match_the_lazy_table():
    """Static type checkers read the ``if TYPE_CHECKING:`` imports: they must be the same map."""
    tree = ast.parse((ROOT / "nfm" / "__init__.py").read_text(encoding="utf-8"))
    static: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom)
                for alias in stmt.names:
                    static[alias.asname or alias.name] = str(stmt.module)
    assert static == nfm._EXPORTS
