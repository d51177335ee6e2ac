"""Plain JSON values from what the library computes: numbers, arrays, tensors, paths."""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any, Literal

import numpy as np

__all__ = ["json_ready"]


def json_ready(value: Any, *, infinity: Literal["null", "string"] = "null") -> Any:
    """``value`` as plain JSON types (dict, list, str, int, float, bool, None), recursively.

    * numpy scalars and 0-d arrays or tensors become Python numbers; arrays and tensors with
      dimensions become (nested) lists;
    * NaN becomes ``None`` (JSON ``null``); so do ``inf`` and ``-inf``, unless ``infinity`` is
      ``"string"``, which writes ``"inf"`` / ``"-inf"`` (for files read back by nfm);
    * mappings become dicts with ``str`` keys; lists, tuples and sets become lists (sets
      sorted when their items can be ordered); dataclass instances become dicts;
    * paths become strings; anything else becomes its ``str``.

    The result can be passed to :func:`json.dumps` with ``allow_nan=False``.
    """
    if infinity not in ("null", "string"):
        raise ValueError(f"infinity must be 'null' or 'string'; got {infinity!r}")
    return _convert(value, infinity)


def _convert(value: Any, infinity: str) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return float(value)
        if math.isnan(value) or infinity == "null":
            return None
        return "inf" if value > 0 else "-inf"
    if isinstance(value, np.generic):
        return _convert(value.item(), infinity)
    if isinstance(value, np.ndarray):
        return _convert(value.tolist(), infinity)
    if isinstance(value, Mapping):
        return {str(k): _convert(v, infinity) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        try:
            items = sorted(value)
        except TypeError:
            items = list(value)
        return [_convert(v, infinity) for v in items]
    if isinstance(value, (list, tuple)):
        return [_convert(v, infinity) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _convert(dataclasses.asdict(value), infinity)
    torch = sys.modules.get("torch")  # a tensor exists only if torch was imported
    if torch is not None and isinstance(value, torch.Tensor):
        return _convert(value.detach().cpu().tolist(), infinity)
    return str(value)
