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

plus the metrics the loop passes (``loss=...``, ``test_accuracy=...``), into a
:class:`~nfm.tracking.history.TrackingHistory`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nfm.ansatz.correlation import correlation_column
from nfm.ansatz.report import AGOP_OPTIONS, layer_agops
from nfm.exceptions import NFMInputError
from nfm.features import compute_nfm
from nfm.linalg import matrix_correlation, power_from_eigh, psd_eigh
from nfm.models.state import ModelState
from nfm.tracking.history import RESERVED_COLUMNS, TrackingHistory, is_nfa_column, plain_value

__all__ = ["NFATracker"]


class NFATracker:
    r"""Record NFA correlations, NFM change and AGOP trace of each layer during training.

    Call :meth:`record` from the training loop (every ``every`` steps, or whenever you like);
    read :attr:`history` (list of dicts), :meth:`to_frame` or :meth:`to_history`, and plot with
    :func:`nfm.viz.plotting.plot_nfa_history`.

    For every selected layer :math:`l` (default: every ``nn.Linear``) a record computes
    :math:`\mathrm{NFM}_l = W_l^T W_l` (:func:`nfm.features.compute_nfm`) and the AGOP over the
    probe set (:func:`nfm.features.compute_agop`, all layers in one pass), then

    * ``<kind>_a<alpha>[_offdiag]`` (e.g. ``pearson_a0.5``) :
      :math:`\rho_{kind}(\mathrm{NFM}_l, \mathrm{AGOP}_l^{a})` for every combination of
      ``alphas``, ``kinds`` and ``exclude_diagonal`` (matrix power by eigendecomposition in
      float64, eigenvalues clamped at 0 as in :func:`nfm.linalg.symmetric_matrix_power`);
    * ``nfm_relative_change`` :
      :math:`\lVert \mathrm{NFM}_l(t) - \mathrm{NFM}_l(t_0)\rVert_F /
      \lVert \mathrm{NFM}_l(t_0)\rVert_F` with :math:`t_0` the first record;
    * ``agop_trace`` : :math:`\mathrm{tr}\,\mathrm{AGOP}_l`;
    * ``by_construction`` : True for layers where NFM = AGOP exactly
      (:func:`nfm.ansatz.output_layer_names`, e.g. the last linear layer); their correlation is
      1 whatever the training did and is no evidence for the ansatz (never set for a
      centred AGOP or a chosen subset of ``outputs``, where the identity does not hold);
    * ``nfm_trace`` : :math:`\mathrm{tr}\,\mathrm{NFM}_l = \lVert W_l\rVert_F^2`.

    The model is left as it was found, also when a record raises: every module's training mode
    and every parameter's ``requires_grad`` flag (:class:`nfm.models.state.ModelState`), the
    parameters, and no hooks (the AGOP engine removes its own).

    Parameters
    ----------
    model : torch.nn.Module
    probe_data : tensor, ndarray or iterable of batches
        The fixed set of inputs on which the AGOP is computed at every record (a few hundred
        samples are usually enough).
    layers : layer selector, optional
        As in :func:`nfm.models.selection.select_layers`; default every ``nn.Linear``.
    alphas : sequence of float
        Powers of the AGOP to correlate with (1/2 is the usual choice, 1 the early one).
    kinds : sequence of {"pearson", "cosine"}
    exclude_diagonal : sequence of bool
        Which diagonal options to record (``(False, True)`` records both).
    every : int
        :meth:`record` skips steps that are not multiples of ``every`` (unless ``force``).
    **agop_kwargs
        The options of :func:`nfm.features.compute_agop` (``outputs``, ``centered``, ``dtype``,
        ``chunk_size`` or ``batch_size``, ``output_chunk_size``, ``vectorize``,
        ``check_independence``, ``verbose``, ``process_group``, ``heads``); ``include_input``
        is ignored (the input has no NFM). Any other name is an error. With a ``process_group``,
        ``probe_data`` is this rank's shard, every rank must call :meth:`record` at the same
        steps, every rank gets the same rows, and :meth:`save` writes on rank 0 of the group
        only.
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
        unknown = sorted(set(agop_kwargs) - set(AGOP_OPTIONS))
        if unknown:
            raise NFMInputError(
                f"unknown keyword argument(s) for NFATracker: {unknown}; the AGOP options are "
                f"{list(AGOP_OPTIONS)}"
            )
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
        """Save the history (``.csv``: CSV, otherwise JSON); see :meth:`TrackingHistory.save`.

        With a ``process_group``, only rank 0 of the group writes; every rank gets the path.
        """
        from nfm.distributed.groups import is_main_process

        if not is_main_process(self.agop_kwargs.get("process_group")):
            return Path(path)
        return self.to_history().save(path)

    @classmethod
    def load(cls, path: str | Path) -> TrackingHistory:
        """Load a saved history; returns a :class:`TrackingHistory` (usable by the plots)."""
        return TrackingHistory.load(path)

    def reset(self) -> None:
        """Forget all records and the reference NFM of the first record."""
        self._rows.clear()
        self._initial_nfm.clear()

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
        clash = [m for m in metrics if m in RESERVED_COLUMNS or is_nfa_column(m)]
        if clash:
            raise NFMInputError(
                f"metrics: names {clash} are reserved for computed columns; rename them"
            )

        model = self.model
        options = dict(self.agop_kwargs)
        options.pop("include_input", None)  # the NFM has no input key
        outputs = options.pop("outputs", None)
        centered = bool(options.pop("centered", False))
        heads = options.pop("heads", None)
        # every module's mode and requires_grad flag come back as they were, also on error
        with ModelState(model, mode=None):
            with torch.no_grad():
                nfms = {
                    name: matrix.detach().to(device="cpu", dtype=torch.float64)
                    for name, matrix in compute_nfm(model, self.layers, heads=heads).items()
                }
            agop_pass = layer_agops(
                model,
                self.probe_data,
                layers=self.layers,
                outputs=outputs,
                centered=centered,
                caller="NFATracker",
                heads=heads,
                **options,
            )
        # NFM = AGOP exactly at an output layer, for the plain AGOP of all outputs only
        identity_holds = outputs is None and not centered

        new_rows = []
        for name, nfm_matrix in nfms.items():
            # powers in float64, so that records agree with nfm.ansatz.nfa_report: in float32 the
            # square roots of tiny eigenvalues are dominated by rounding. The AGOP keeps its own
            # dtype here so that psd_eigh judges its negative eigenvalues at that precision.
            agop = agop_pass.agops[name].detach().to(device="cpu")
            eig = psd_eigh(
                agop,
                name=f"the AGOP of layer {name!r}",
                dtype=torch.float64,
                scale=agop_pass.rounding_scales.get(name),
            )
            row: dict[str, Any] = {
                "step": int(step),
                "layer": name,
                "d": int(nfm_matrix.shape[0]),
                "by_construction": identity_holds and name in agop_pass.output_layers,
            }
            for alpha in self.alphas:
                powered = power_from_eigh(eig, alpha)
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
            row["agop_trace"] = float(torch.trace(agop.to(torch.float64)))
            row.update({k: plain_value(v) for k, v in metrics.items()})
            new_rows.append(row)
        self._rows.extend(new_rows)
        return [dict(r) for r in new_rows]
