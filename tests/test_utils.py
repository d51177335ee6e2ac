"""nfm._utils: the JSON sanitiser, the machine description and the square-matrix check."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nfm._utils.env import machine_info, package_version
from nfm._utils.io import json_ready
from nfm._utils.validation import check_square
from nfm.exceptions import NFMInputError


def strict_loads(text: str):
    """json.loads that rejects the non-standard NaN / Infinity tokens."""

    def reject(token: str):
        raise AssertionError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=reject)


@dataclasses.dataclass
class _Settings:
    name: str
    rate: float


def test_json_ready_converts_library_values():
    value = {
        "np_float": np.float32(0.5),
        "np_int": np.int64(3),
        "np_bool": np.bool_(True),
        "array": np.array([[1.0, np.nan], [np.inf, -2.0]]),
        "tensor": torch.tensor([1.5, float("-inf")]),
        "scalar_tensor": torch.tensor(2.0, dtype=torch.float64),
        "path": Path("results") / "run.json",
        "nan": float("nan"),
        "tuple": (1, 2.5),
        "set": {3, 1, 2},
        2: "integer key",
        "settings": _Settings("x", float("inf")),
        "dtype": torch.float32,
        "none": None,
    }
    out = json_ready(value)
    assert out == {
        "np_float": 0.5,
        "np_int": 3,
        "np_bool": True,
        "array": [[1.0, None], [None, -2.0]],
        "tensor": [1.5, None],
        "scalar_tensor": 2.0,
        "path": str(Path("results") / "run.json"),
        "nan": None,
        "tuple": [1, 2.5],
        "set": [1, 2, 3],
        "2": "integer key",
        "settings": {"name": "x", "rate": None},
        "dtype": "torch.float32",
        "none": None,
    }
    assert type(out["np_int"]) is int and type(out["np_bool"]) is bool
    assert strict_loads(json.dumps(out, allow_nan=False)) == out


def test_json_ready_can_keep_infinities_as_strings():
    out = json_ready([float("inf"), -np.inf, np.nan, 1.0], infinity="string")
    assert out == ["inf", "-inf", None, 1.0]
    with pytest.raises(ValueError, match="infinity"):
        json_ready(1.0, infinity="Infinity")


json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.floats(allow_nan=True, allow_infinity=True).map(np.float64),
    st.floats(width=32, allow_nan=True, allow_infinity=True).map(np.float32),
)
json_trees = st.recursive(
    json_leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=4), children, max_size=4),
    ),
    max_leaves=20,
)


def _same_up_to_nonfinite(original, converted) -> bool:
    """Finite numbers and strings survive exactly; NaN and infinities become None."""
    if isinstance(original, dict):
        return set(converted) == set(original) and all(
            _same_up_to_nonfinite(v, converted[k]) for k, v in original.items()
        )
    if isinstance(original, list):
        return len(original) == len(converted) and all(
            _same_up_to_nonfinite(a, b) for a, b in zip(original, converted, strict=True)
        )
    if isinstance(original, (float, np.floating)) and not math.isfinite(float(original)):
        return converted is None
    if isinstance(original, np.generic):
        return converted == original.item() and type(converted) is type(original.item())
    return converted == original and type(converted) is type(original)


@settings(max_examples=60, deadline=None)
@given(tree=json_trees)
def test_json_ready_output_is_strict_json_and_keeps_finite_values(tree):
    out = json_ready(tree)
    text = json.dumps(out, allow_nan=False)
    assert _same_up_to_nonfinite(tree, out)
    assert strict_loads(text) == out


def test_machine_info_keys_and_values():
    info = machine_info(packages=["sklearn", "surely_not_an_installed_package"])
    assert set(info) == {
        "uname",
        "cpu",
        "cores",
        "cores_available",
        "torch_threads",
        "gpus",
        "python",
        "versions",
        "date_utc",
    }
    assert info["cores"] >= 1 and 1 <= info["cores_available"] <= info["cores"]
    assert info["torch_threads"] == torch.get_num_threads()
    cuda = torch.cuda.is_available()
    expected_gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    assert info["gpus"] == (expected_gpus if cuda else [])
    assert info["python"] == ".".join(map(str, sys.version_info[:3]))
    import sklearn

    import nfm

    assert info["versions"]["nfm"] == nfm.__version__
    assert info["versions"]["numpy"] == np.__version__
    assert info["versions"]["torch"] == torch.__version__
    assert info["versions"]["sklearn"] == sklearn.__version__
    assert info["versions"]["surely_not_an_installed_package"] is None
    stamp = datetime.strptime(info["date_utc"], "%Y-%m-%d %H:%M UTC")
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    assert abs((now - stamp).total_seconds()) < 600
    assert strict_loads(json.dumps(info, allow_nan=False)) == info


def test_machine_info_does_not_import_the_packages_it_reports():
    code = (
        "import sys\n"
        "from nfm._utils.env import machine_info\n"
        "info = machine_info(packages=['sklearn', 'pandas'])\n"
        "print(info['versions']['sklearn'] is not None, 'sklearn' in sys.modules,"
        " 'pandas' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False", "False"]


def test_package_version_prefers_the_running_module():
    assert package_version("numpy") == np.__version__
    assert package_version("surely_not_an_installed_package") is None


@pytest.mark.parametrize("shape", [(3,), (2, 3), (2, 2, 2), (0, 1)])
def test_check_square_names_the_argument_and_shape(shape):
    expected = re.escape(f"metric must be a square matrix; got shape {shape}")
    with pytest.raises(NFMInputError, match=f"^{expected}$"):
        check_square(torch.zeros(shape), "metric")
    check_square(torch.zeros(3, 3), "metric")
