r"""The tidy history of an NFA tracking run: one row per (step, layer), saved as JSON or CSV.

:class:`TrackingHistory` holds the rows an :class:`~nfm.tracking.tracker.NFATracker` records,
answers the queries the figures need (layers, steps, series), converts to a pandas DataFrame and
saves/loads itself. NFA columns are named ``{kind}_a{alpha}[_offdiag]`` (for example
``pearson_a0.5``); :func:`parse_nfa_column` reads such a name back.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nfm._utils.io import json_ready
from nfm.exceptions import NFMInputError

__all__ = ["TrackingHistory", "as_history", "is_nfa_column", "parse_nfa_column"]


_FORMAT = "nfm-tracking-history"
_FORMAT_VERSION = 1
RESERVED_COLUMNS = (
    "step",
    "layer",
    "d",
    "by_construction",
    "nfm_relative_change",
    "nfm_trace",
    "agop_trace",
)


_NFA_COLUMN = re.compile(r"^(pearson|cosine)_a([0-9.eE+-]+?)(_offdiag)?$")


def is_nfa_column(column: str) -> bool:
    """Whether ``column`` names an NFA correlation (:func:`nfm.ansatz.correlation_column` form)."""
    return bool(_NFA_COLUMN.match(str(column)))


def parse_nfa_column(column: str) -> tuple[str, float, bool]:
    """``(kind, alpha, exclude_diagonal)`` of a column such as ``"pearson_a0.5_offdiag"``.

    The inverse of :func:`nfm.ansatz.correlation_column`.
    """
    match = _NFA_COLUMN.match(str(column))
    if match is None:
        raise NFMInputError(
            f"{column!r} is not an NFA correlation column (<pearson|cosine>_a<alpha>[_offdiag])"
        )
    return match.group(1), float(match.group(2)), match.group(3) is not None


def _from_json(value: Any) -> Any:
    if value is None:
        return float("nan")
    if value == "inf":
        return float("inf")
    if value == "-inf":
        return float("-inf")
    return value


def _parse_csv_cell(text: str) -> Any:
    if text == "":
        return float("nan")
    if text in ("True", "False"):
        return text == "True"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


@dataclass
class TrackingHistory:
    """A tidy table of tracker records: one row (a dict) per (step, layer).

    Columns: ``step``, ``layer``, ``d`` (the layer's input dimension), ``by_construction``
    (True for layers where NFM = AGOP holds exactly, e.g. the last linear layer), one
    ``<kind>_a<alpha>[_offdiag]`` column per NFA correlation (the names of
    :func:`nfm.ansatz.correlation_column`, e.g. ``pearson_a0.5``), ``nfm_relative_change``,
    ``nfm_trace``, ``agop_trace``, and the metrics the training loop passed (repeated on each
    layer's row of that step).

    Attributes
    ----------
    rows : list of dict
    settings : dict
        The tracker's settings (alphas, kinds, ...), saved with the JSON format.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    @property
    def columns(self) -> list[str]:
        """Every column name, in order of first appearance."""
        names: dict[str, None] = {}
        for row in self.rows:
            names.update(dict.fromkeys(row))
        return list(names)

    @property
    def layers(self) -> list[str]:
        """Layer names in order of first appearance."""
        return list(dict.fromkeys(row["layer"] for row in self.rows))

    @property
    def steps(self) -> list[int]:
        """Recorded steps in increasing order, each once."""
        return sorted({int(row["step"]) for row in self.rows})

    @property
    def nfa_columns(self) -> list[str]:
        """The NFA correlation columns."""
        return [c for c in self.columns if is_nfa_column(c)]

    @property
    def metric_columns(self) -> list[str]:
        """The columns the training loop passed (everything that is not computed per layer)."""
        return [c for c in self.columns if c not in RESERVED_COLUMNS and not is_nfa_column(c)]

    def by_construction(self, layer: str) -> bool:
        """Whether ``layer`` was flagged as satisfying the ansatz by construction."""
        return any(bool(r.get("by_construction")) for r in self.rows if r["layer"] == layer)

    def series(self, layer: str, column: str) -> tuple[list[int], list[float]]:
        """``(steps, values)`` of one column for one layer."""
        pairs = [
            (int(r["step"]), float(r.get(column, float("nan"))))
            for r in self.rows
            if r["layer"] == layer
        ]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def metric_series(self, column: str) -> tuple[list[int], list[float]]:
        """``(steps, values)`` of a loop metric, one value per step (the first row's)."""
        seen: dict[int, float] = {}
        for row in self.rows:
            if column in row:
                seen.setdefault(int(row["step"]), float(row[column]))
        steps = sorted(seen)
        return steps, [seen[s] for s in steps]

    def last(self) -> list[dict[str, Any]]:
        """The rows of the last recorded step."""
        if not self.rows:
            return []
        last_step = max(int(r["step"]) for r in self.rows)
        return [dict(r) for r in self.rows if int(r["step"]) == last_step]

    def first(self) -> list[dict[str, Any]]:
        """The rows of the first recorded step (the values at initialisation when it is 0)."""
        if not self.rows:
            return []
        first_step = min(int(r["step"]) for r in self.rows)
        return [dict(r) for r in self.rows if int(r["step"]) == first_step]

    def first_and_last(self, column: str) -> list[dict[str, Any]]:
        """Per layer, ``column`` at its first and last record, for "then versus now" tables.

        Returns one dict per layer (in order of first appearance) with ``layer``,
        ``by_construction``, ``first_step``, ``first`` (the value there), ``last_step``,
        ``last`` and ``change`` (``last - first``). Layers without the column are skipped.
        """
        result = []
        for layer in self.layers:
            steps, values = self.series(layer, column)
            if not steps or column not in self.columns:
                continue
            first, last = int(np.argmin(steps)), int(np.argmax(steps))
            result.append(
                {
                    "layer": layer,
                    "by_construction": self.by_construction(layer),
                    "first_step": steps[first],
                    "first": values[first],
                    "last_step": steps[last],
                    "last": values[last],
                    "change": values[last] - values[first],
                }
            )
        return result

    def to_frame(self) -> Any:
        """The table as a :class:`pandas.DataFrame` (requires pandas)."""
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover - pandas is a test dependency
            raise ImportError("to_frame() needs pandas: pip install pandas") from exc
        return pd.DataFrame(self.rows, columns=self.columns or None)

    def save(self, path: str | Path) -> Path:
        """Write the history to ``path``: ``.csv`` as CSV, anything else as JSON.

        JSON keeps the settings and every value type (NaN is written as ``null``, infinities as
        ``"inf"`` / ``"-inf"``; numpy and torch numbers as plain numbers); CSV keeps the rows
        only. :meth:`load` reads both back.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() == ".csv":
            columns = self.columns
            with path.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=columns)
                writer.writeheader()
                for row in self.rows:
                    writer.writerow(
                        {
                            k: ("" if isinstance(v, float) and math.isnan(v) else v)
                            for k, v in row.items()
                        }
                    )
        else:
            payload = {
                "format": _FORMAT,
                "version": _FORMAT_VERSION,
                "settings": json_ready(self.settings, infinity="string"),
                "rows": json_ready(self.rows, infinity="string"),
            }
            path.write_text(json.dumps(payload, indent=1, allow_nan=False), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> TrackingHistory:
        """Read a history written by :meth:`save` (JSON or CSV)."""
        path = Path(path)
        if not path.is_file():
            raise NFMInputError(f"path: no tracking history file at {str(path)!r}")
        if path.suffix.lower() == ".csv":
            with path.open(newline="", encoding="utf-8") as handle:
                rows = [
                    {k: _parse_csv_cell(v) for k, v in row.items()}
                    for row in csv.DictReader(handle)
                ]
            for row in rows:
                row["layer"] = str(row["layer"])
            return cls(rows=rows, settings={})
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise NFMInputError(f"path: {str(path)!r} is not valid JSON ({exc})") from None
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise NFMInputError(
                f"path: {str(path)!r} is not an nfm tracking history (expected a JSON object "
                f"with format={_FORMAT!r})"
            )
        rows = [{k: _from_json(v) for k, v in row.items()} for row in payload["rows"]]
        return cls(rows=rows, settings=dict(payload.get("settings", {})))


def plain_value(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (str, bytes)):
        try:
            return value.item()
        except (TypeError, ValueError):
            return value
    return value


def as_history(history: Any) -> TrackingHistory:
    """Coerce a tracker, a :class:`TrackingHistory`, a DataFrame or a list of dict rows."""
    if isinstance(history, TrackingHistory):
        return history
    if callable(getattr(history, "to_history", None)):  # an NFATracker
        return history.to_history()
    if hasattr(history, "to_dict") and hasattr(history, "columns"):
        return TrackingHistory(rows=history.to_dict(orient="records"))
    if isinstance(history, (str, Path)):
        return TrackingHistory.load(history)
    if isinstance(history, Iterable):
        rows = list(history)
        if not all(isinstance(r, Mapping) and "step" in r and "layer" in r for r in rows):
            raise NFMInputError("history rows must be dicts with 'step' and 'layer' keys")
        return TrackingHistory(rows=[dict(r) for r in rows])
    raise NFMInputError(
        "history must be an NFATracker, a TrackingHistory, a pandas DataFrame, a path or a "
        f"list of dict rows; got {type(history).__name__}"
    )
