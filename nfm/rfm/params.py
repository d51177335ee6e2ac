"""The estimators' hyper-parameters, checked and turned into working settings.

:func:`check_hyperparameters` reads an estimator's public parameters (it never modifies the
estimator) and raises :class:`~nfm.exceptions.NFMInputError` naming the first bad one; it runs at
``fit``, not at construction, as scikit-learn requires.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nfm.exceptions import NFMInputError
from nfm.kernels import make_kernel

__all__ = [
    "DEFAULT_REG_GRID",
    "NORMALIZATIONS",
    "SELECTIONS",
    "CheckedParams",
    "as_reg_grid",
    "check_hyperparameters",
    "resolve_device",
    "resolve_dtype",
]

#: The default ridge grid, searched by the selection rule at every iteration.
DEFAULT_REG_GRID: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)

NORMALIZATIONS = ("max", "none", "trace")
SELECTIONS = ("loo", "holdout", "last")
_DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclass(frozen=True)
class CheckedParams:
    """The parameters that need resolving: the reg grid, the working dtype and device."""

    regs: tuple[float, ...]
    dtype: torch.dtype
    device: torch.device


def resolve_dtype(dtype: Any) -> torch.dtype:
    """``"float32"`` / ``"float64"`` (or the torch / numpy dtype) as a torch dtype."""
    if isinstance(dtype, torch.dtype) and dtype in (torch.float32, torch.float64):
        return dtype
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    if dtype in (np.float64, np.float32):
        return torch.float64 if dtype is np.float64 else torch.float32
    raise NFMInputError(f"dtype must be 'float64' or 'float32'; got {dtype!r}")


def resolve_device(device: Any) -> torch.device:
    """The torch device, checking that CUDA is there when it is asked for."""
    try:
        dev = torch.device(device)
    except (TypeError, RuntimeError):
        raise NFMInputError(f"device must be 'cpu', 'cuda' or 'cuda:<i>'; got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise NFMInputError(
            f"device={device!r} was requested but torch.cuda.is_available() is False; use "
            "set_params(device='cpu') (a fitted estimator keeps its state on the CPU)"
        )
    return dev


def _is_sequence(value: Any) -> bool:
    return isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, str)


def as_reg_grid(reg: Any) -> tuple[float, ...]:
    """``reg`` (a number or a non-empty sequence of numbers >= 0) as a tuple of floats."""
    values = [reg] if isinstance(reg, numbers.Real) else list(reg) if _is_sequence(reg) else None
    if not values:
        raise NFMInputError(
            f"reg must be a number >= 0 or a non-empty sequence of them; got {reg!r}"
        )
    out = []
    for value in values:
        if not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
            where = f" in {reg!r}" if values is not None and len(values) > 1 else ""
            raise NFMInputError(f"reg values must be finite numbers >= 0; got {value!r}{where}")
        out.append(float(value))
    return tuple(out)


def check_hyperparameters(estimator: Any) -> CheckedParams:
    """Check every public parameter of an RFM estimator; return the resolved ones.

    Raises
    ------
    NFMInputError
        Naming the estimator, the parameter, its value and what was expected.
    """
    name = type(estimator).__name__
    p = estimator.get_params(deep=False)
    if not isinstance(p["n_iter"], numbers.Integral) or p["n_iter"] < 0:
        raise NFMInputError(f"{name}: n_iter must be an integer >= 0; got {p['n_iter']!r}")
    if p["metric_normalization"] not in NORMALIZATIONS:
        raise NFMInputError(
            f"{name}: metric_normalization must be one of {NORMALIZATIONS}; "
            f"got {p['metric_normalization']!r}"
        )
    if p["selection"] not in SELECTIONS:
        raise NFMInputError(
            f"{name}: selection must be one of {SELECTIONS}; got {p['selection']!r}"
        )
    power = p["metric_power"]
    if not isinstance(power, numbers.Real) or not math.isfinite(power) or power <= 0:
        raise NFMInputError(f"{name}: metric_power must be a number > 0; got {power!r}")
    frac = p["validation_fraction"]
    if not isinstance(frac, numbers.Real) or not 0 < frac < 1:
        raise NFMInputError(f"{name}: validation_fraction must lie in (0, 1); got {frac!r}")
    size = p["agop_sample_size"]
    if size is not None and (not isinstance(size, numbers.Integral) or size < 1):
        raise NFMInputError(
            f"{name}: agop_sample_size must be a positive integer or None (all rows); got {size!r}"
        )
    block = p["block_size"]
    if block is not None and (not isinstance(block, numbers.Integral) or block < 1):
        raise NFMInputError(f"{name}: block_size must be a positive integer or None; got {block!r}")
    if p["callback"] is not None and not callable(p["callback"]):
        raise NFMInputError(f"{name}: callback must be callable or None; got {p['callback']!r}")
    bw = p["bandwidth"]
    if isinstance(bw, str):
        if bw != "median":
            raise NFMInputError(f"{name}: bandwidth must be a number > 0 or 'median'; got {bw!r}")
    elif not isinstance(bw, numbers.Real) or not math.isfinite(bw) or bw <= 0:
        raise NFMInputError(f"{name}: bandwidth must be a number > 0 or 'median'; got {bw!r}")
    if p["solver"] not in ("auto", "cholesky", "cg"):
        raise NFMInputError(
            f"{name}: solver must be 'auto', 'cholesky' or 'cg'; got {p['solver']!r}"
        )
    try:
        regs = as_reg_grid(p["reg"])
    except NFMInputError as error:
        raise NFMInputError(f"{name}: {error}") from None
    if p["selection"] == "last" and len(regs) > 1:
        raise NFMInputError(
            f"{name}: selection='last' cannot choose among {len(regs)} reg values; pass one "
            "reg or use selection='loo' / 'holdout'"
        )
    make_kernel(p["kernel"], 1.0, exponent=p["exponent"], kernel_power=p["kernel_power"])
    return CheckedParams(
        regs=regs, dtype=resolve_dtype(p["dtype"]), device=resolve_device(p["device"])
    )
