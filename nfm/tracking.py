r"""Track the Neural Feature Ansatz of every layer through training.

:class:`NFATracker` is called by any training loop every few steps on a fixed *probe set*. Each
record computes, for every selected layer :math:`l`,

* the NFA correlations :math:`\rho(\mathrm{NFM}_l, \mathrm{AGOP}_l^{\alpha})` for every requested
  ``alpha``, correlation ``kind`` (``"pearson"`` or ``"cosine"``) and diagonal option, with
  :math:`\mathrm{NFM}_l = W_l^T W_l` and :math:`\mathrm{AGOP}_l` over the probe set (see
  :func:`nfm.linalg.matrix_correlation` for the two definitions);
* the relative change of the NFM since the first record,
  :math:`\lVert \mathrm{NFM}_l(t) - \mathrm{NFM}_l(t_0)\rVert_F
  / \lVert \mathrm{NFM}_l(t_0)\rVert_F` (do the layer's features move at all?);
* the AGOP trace :math:`\mathrm{tr}\,\mathrm{AGOP}_l = \frac1n\sum_i \lVert J_l(x_i)\rVert_F^2`
  (how strongly the output depends on the layer's input);

plus the metrics the loop passes (``loss=...``, ``test_accuracy=...``). The history is a tidy
table, one row per (step, layer); :class:`TrackingHistory` holds it, converts it to a pandas
DataFrame and saves/loads it as JSON or CSV.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nfm.agop import compute_agop, compute_nfm
from nfm.exceptions import NFMInputError
from nfm.linalg import matrix_correlation, symmetric_matrix_power
from nfm.nfa import correlation_column, output_layer_names

__all__ = [
    "NFATracker",
    "TrackingHistory",
    "as_history",
    "is_nfa_column",
    "parse_nfa_column",
]

_FORMAT = "nfm-tracking-history"
_FORMAT_VERSION = 1
_RESERVED = (
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
    """Whether ``column`` names an NFA correlation (:func:`nfm.nfa.correlation_column` form)."""
    return bool(_NFA_COLUMN.match(str(column)))


def parse_nfa_column(column: str) -> tuple[str, float, bool]:
    """``(kind, alpha, exclude_diagonal)`` of a column such as ``"pearson_a0.5_offdiag"``.

    The inverse of :func:`nfm.nfa.correlation_column`.
    """
    match = _NFA_COLUMN.match(str(column))
    if match is None:
        raise NFMInputError(
            f"{column!r} is not an NFA correlation column (<pearson|cosine>_a<alpha>[_offdiag])"
        )
    return match.group(1), float(match.group(2)), match.group(3) is not None


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (torch.Tensor,)):
        return _json_safe(value.item()) if value.numel() == 1 else value.tolist()
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        try:
            return _json_safe(value.item())
        except (TypeError, ValueError):
            return str(value)
    return value


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
    :func:`nfm.nfa.correlation_column`, e.g. ``pearson_a0.5``), ``nfm_relative_change``,
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
        return [c for c in self.columns if c not in _RESERVED and not is_nfa_column(c)]

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

    def to_frame(self) -> Any:
        """The table as a :class:`pandas.DataFrame` (requires pandas)."""
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover - pandas is a test dependency
            raise ImportError("to_frame() needs pandas: pip install pandas") from exc
        return pd.DataFrame(self.rows, columns=self.columns or None)

    def save(self, path: str | Path) -> Path:
        """Write the history to ``path``: ``.csv`` as CSV, anything else as JSON.

        JSON keeps the settings and every value type (NaN is written as ``null``); CSV keeps
        the rows only. :meth:`load` reads both back.
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
                "settings": {k: _json_safe(v) for k, v in self.settings.items()},
                "rows": [{k: _json_safe(v) for k, v in row.items()} for row in self.rows],
            }
            path.write_text(json.dumps(payload, indent=1), encoding="utf-8")
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


def _example_input(probe_data: Any) -> Any:
    """A small batch taken from the probe data, for :func:`nfm.nfa.output_layer_names`."""
    if isinstance(probe_data, torch.Tensor):
        return probe_data[:2]
    if hasattr(probe_data, "shape") and hasattr(probe_data, "__getitem__"):
        return torch.as_tensor(probe_data[:2])
    batch = next(iter(probe_data))
    if isinstance(batch, (tuple, list)):
        batch = batch[0]
    return torch.as_tensor(batch)[:2]


class NFATracker:
    r"""Record NFA correlations, NFM change and AGOP trace of each layer during training.

    Call :meth:`record` from the training loop (every ``every`` steps, or whenever you like);
    read :attr:`history` (list of dicts), :meth:`to_frame` or :meth:`to_history`, and plot with
    :func:`nfm.plotting.plot_nfa_history`.

    For every selected layer :math:`l` (default: every ``nn.Linear``) a record computes
    :math:`\mathrm{NFM}_l = W_l^T W_l` (:func:`nfm.agop.compute_nfm`) and the AGOP over the
    probe set (:func:`nfm.agop.compute_agop`, all layers in one pass), then

    * ``<kind>_a<alpha>[_offdiag]`` (e.g. ``pearson_a0.5``) :
      :math:`\rho_{kind}(\mathrm{NFM}_l, \mathrm{AGOP}_l^{a})` for every combination of
      ``alphas``, ``kinds`` and ``exclude_diagonal`` (matrix power by eigendecomposition,
      eigenvalues clamped at 0);
    * ``nfm_relative_change`` :
      :math:`\lVert \mathrm{NFM}_l(t) - \mathrm{NFM}_l(t_0)\rVert_F /
      \lVert \mathrm{NFM}_l(t_0)\rVert_F` with :math:`t_0` the first record;
    * ``agop_trace`` : :math:`\mathrm{tr}\,\mathrm{AGOP}_l`;
    * ``by_construction`` : True for layers where NFM = AGOP exactly
      (:func:`nfm.nfa.output_layer_names`, e.g. the last linear layer); their correlation is
      1 whatever the training did and is no evidence for the ansatz (never set for a
      centred AGOP or a chosen subset of ``outputs``, where the identity does not hold);
    * ``nfm_trace`` : :math:`\mathrm{tr}\,\mathrm{NFM}_l = \lVert W_l\rVert_F^2`.

    The model is left as it was found (training mode, parameters, ``requires_grad``; the AGOP
    engine removes its hooks), also when a record raises.

    Parameters
    ----------
    model : torch.nn.Module
    probe_data : tensor, ndarray or iterable of batches
        The fixed set of inputs on which the AGOP is computed at every record (a few hundred
        samples are usually enough).
    layers : layer selector, optional
        As in :func:`nfm.layers.select_layers`; default every ``nn.Linear``.
    alphas : sequence of float
        Powers of the AGOP to correlate with (1/2 is the usual choice, 1 the early one).
    kinds : sequence of {"pearson", "cosine"}
    exclude_diagonal : sequence of bool
        Which diagonal options to record (``(False, True)`` records both).
    every : int
        :meth:`record` skips steps that are not multiples of ``every`` (unless ``force``).
    **agop_kwargs
        Passed on to :func:`nfm.agop.compute_agop` (``centered``, ``dtype``, ``chunk_size``,
        ``batch_size``, ...). ``include_input`` defaults to False here.
    """

    def __init__(
        self,
        model: nn.Module,
        probe_data: Any,
        *,
        layers: Any = None,
        alphas: Sequence[float] = (0.5, 1.0),
        kinds: Sequence[str] = ("pearson",),
        exclude_diagonal: Sequence[bool] | bool = (False,),
        every: int = 1,
        **agop_kwargs: Any,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise NFMInputError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        if isinstance(exclude_diagonal, bool):
            exclude_diagonal = (exclude_diagonal,)
        alphas = tuple(float(a) for a in alphas)
        if not alphas or any(not math.isfinite(a) or a < 0 for a in alphas):
            raise NFMInputError(f"alphas must be finite numbers >= 0; got {alphas!r}")
        kinds = tuple(kinds)
        bad_kinds = [k for k in kinds if k not in ("pearson", "cosine")]
        if not kinds or bad_kinds:
            raise NFMInputError(f"kinds must be 'pearson' and/or 'cosine'; got {kinds!r}")
        if int(every) < 1:
            raise NFMInputError(f"every must be an integer >= 1; got {every!r}")
        self.model = model
        self.probe_data = probe_data
        self.layers = layers
        self.alphas = alphas
        self.kinds = kinds
        self.exclude_diagonal = tuple(bool(e) for e in exclude_diagonal)
        self.every = int(every)
        self.agop_kwargs = {"include_input": False, **agop_kwargs}
        self._rows: list[dict[str, Any]] = []
        self._initial_nfm: dict[str, torch.Tensor] = {}
        self._by_construction: set[str] | None = None

    # ------------------------------------------------------------------ settings / views
    @property
    def settings(self) -> dict[str, Any]:
        """The tracker's settings as plain values (saved with the history)."""
        return {
            "alphas": list(self.alphas),
            "kinds": list(self.kinds),
            "exclude_diagonal": list(self.exclude_diagonal),
            "every": self.every,
            "agop_kwargs": {k: repr(v) for k, v in self.agop_kwargs.items()},
        }

    @property
    def nfa_columns(self) -> list[str]:
        """The NFA correlation columns each record fills."""
        return [
            correlation_column(kind, alpha, excl)
            for alpha in self.alphas
            for kind in self.kinds
            for excl in self.exclude_diagonal
        ]

    @property
    def history(self) -> list[dict[str, Any]]:
        """All records so far, one dict per (step, layer) (copies)."""
        return [dict(row) for row in self._rows]

    def to_history(self) -> TrackingHistory:
        """The records as a :class:`TrackingHistory`."""
        return TrackingHistory(rows=self.history, settings=self.settings)

    def to_frame(self) -> Any:
        """The records as a :class:`pandas.DataFrame` (requires pandas)."""
        return self.to_history().to_frame()

    def save(self, path: str | Path) -> Path:
        """Save the history (``.csv``: CSV, otherwise JSON); see :meth:`TrackingHistory.save`."""
        return self.to_history().save(path)

    @classmethod
    def load(cls, path: str | Path) -> TrackingHistory:
        """Load a saved history; returns a :class:`TrackingHistory` (usable by the plots)."""
        return TrackingHistory.load(path)

    def reset(self) -> None:
        """Forget all records and the reference NFM of the first record."""
        self._rows.clear()
        self._initial_nfm.clear()
        self._by_construction = None

    def due(self, step: int) -> bool:
        """Whether :meth:`record` would record at ``step`` (``step % every == 0``)."""
        return int(step) % self.every == 0

    # ------------------------------------------------------------------ recording
    def record(self, step: int, *, force: bool = False, **metrics: Any) -> list[dict] | None:
        """Compute the per-layer quantities now and append one row per layer.

        Parameters
        ----------
        step : int
            The training step (or epoch) the record belongs to.
        force : bool
            Record even when ``step`` is not a multiple of ``every``.
        **metrics
            Numbers from the training loop (``loss=``, ``train_accuracy=``, ...), stored on
            every row of this step. Names must not clash with the computed columns.

        Returns
        -------
        list of dict or None
            The new rows, or None when the step was skipped.
        """
        if not force and not self.due(step):
            return None
        clash = [m for m in metrics if m in _RESERVED or is_nfa_column(m)]
        if clash:
            raise NFMInputError(
                f"metrics: names {clash} are reserved for computed columns; rename them"
            )

        model = self.model
        was_training = model.training
        try:
            with torch.no_grad():
                nfms = {
                    name: matrix.detach().to(device="cpu", dtype=torch.float64)
                    for name, matrix in compute_nfm(model, self.layers).items()
                }
            agops = compute_agop(model, self.probe_data, layers=self.layers, **self.agop_kwargs)
            if self._by_construction is None:
                identity_holds = self.agop_kwargs.get("outputs") is None and not bool(
                    self.agop_kwargs.get("centered", False)
                )
                self._by_construction = (
                    set(output_layer_names(model, _example_input(self.probe_data), self.layers))
                    if identity_holds
                    else set()
                )
        finally:
            model.train(was_training)

        new_rows = []
        for name, nfm_matrix in nfms.items():
            if name not in agops:
                continue
            # float64 throughout, so that records agree with nfm.nfa.nfa_report: in float32 the
            # square roots of tiny eigenvalues are dominated by rounding
            agop = torch.as_tensor(agops[name]).detach().to(device="cpu", dtype=torch.float64)
            row: dict[str, Any] = {
                "step": int(step),
                "layer": name,
                "d": int(nfm_matrix.shape[0]),
                "by_construction": name in self._by_construction,
            }
            for alpha in self.alphas:
                powered = symmetric_matrix_power(agop, alpha)
                for kind in self.kinds:
                    for excl in self.exclude_diagonal:
                        row[correlation_column(kind, alpha, excl)] = matrix_correlation(
                            nfm_matrix, powered, kind=kind, exclude_diagonal=excl
                        )
            initial = self._initial_nfm.setdefault(name, nfm_matrix.clone())
            norm0 = float(torch.linalg.matrix_norm(initial))
            change = float(torch.linalg.matrix_norm(nfm_matrix - initial))
            row["nfm_relative_change"] = change / norm0 if norm0 > 0 else float("nan")
            row["nfm_trace"] = float(torch.trace(nfm_matrix))
            row["agop_trace"] = float(torch.trace(agop))
            row.update({k: _plain(v) for k, v in metrics.items()})
            new_rows.append(row)
        self._rows.extend(new_rows)
        return [dict(r) for r in new_rows]


def _plain(value: Any) -> Any:
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
    if isinstance(history, NFATracker):
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
