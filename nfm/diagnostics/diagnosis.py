"""One call that diagnoses a model: :func:`diagnose` gathers every measurement of
:mod:`nfm.diagnostics` per layer, optionally takes a few training steps on a copy, and turns the
numbers into verdicts (:mod:`nfm.diagnostics.verdict`)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nfm._utils.io import json_ready
from nfm.diagnostics._data import (
    LossSpec,
    as_samples,
    as_targets,
    check_loss,
    check_model,
    probe_rows,
)
from nfm.diagnostics.dynamics import (
    OptimizerFactory,
    TrainingDynamics,
    gradient_signal,
    training_dynamics,
)
from nfm.diagnostics.signal import agop_through_depth, input_statistics
from nfm.diagnostics.units import unit_activity
from nfm.diagnostics.verdict import ModelVerdict, Thresholds, judge
from nfm.exceptions import NFMInputError
from nfm.models.selection import LayerSpec

__all__ = ["Diagnosis", "diagnose"]

logger = logging.getLogger(__name__)


@dataclass
class Diagnosis:
    """What :func:`diagnose` found.

    Attributes
    ----------
    layers : list of dict
        Per selected layer in model order: the AGOP numbers of
        :func:`~nfm.diagnostics.agop_through_depth`, the input numbers of
        :func:`~nfm.diagnostics.input_statistics` and, with targets, the loss-gradient numbers
        of :func:`~nfm.diagnostics.gradient_signal`.
    units : list of dict
        :func:`~nfm.diagnostics.unit_activity` per activation module.
    dynamics : TrainingDynamics or None
        The training steps on a copy, when ``steps > 0``.
    verdict : ModelVerdict
        The cause, its summary and suggestion, and the per-layer verdicts.
    settings : dict
        The probe size, steps, loss and thresholds used.
    """

    layers: list[dict[str, Any]]
    units: list[dict[str, Any]]
    dynamics: TrainingDynamics | None
    verdict: ModelVerdict
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def cause(self) -> str:
        """The model-level cause code (``"healthy"`` when no rule fired)."""
        return self.verdict.cause

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values: settings, layers, units, dynamics, verdicts."""
        v = self.verdict
        return json_ready(
            {
                "settings": self.settings,
                "cause": v.cause,
                "summary": v.summary,
                "suggestion": v.suggestion,
                "values": v.values,
                "notes": v.notes,
                "verdicts": [
                    {
                        "name": u.name,
                        "kind": u.kind,
                        "status": u.status,
                        "text": u.text,
                        "findings": [
                            {"code": f.code, "level": f.level, "values": f.values}
                            for f in u.findings
                        ],
                    }
                    for u in v.units
                ],
                "layers": self.layers,
                "units": self.units,
                "dynamics": None if self.dynamics is None else self.dynamics.to_dict(),
            }
        )

    def __str__(self) -> str:
        v = self.verdict
        lines = [f"cause: {v.cause}", f"  {v.summary}", f"  suggestion: {v.suggestion}"]
        lines += [f"  note: {note}" for note in v.notes]
        width = max((len(u.name) for u in v.units), default=4)
        for u in v.units:
            lines.append(f"  {u.name:<{width}}  {u.status:<7}  {u.text}")
        return "\n".join(lines)


def diagnose(
    model: nn.Module,
    data: Any,
    targets: Any = None,
    *,
    layers: LayerSpec | Sequence[LayerSpec] | None = None,
    loss: LossSpec = "cross_entropy",
    probe_size: int = 512,
    steps: int = 0,
    optimizer_factory: OptimizerFactory | None = None,
    batch_size: int = 64,
    seed: int = 0,
    reference: str | None = None,
    thresholds: Thresholds | None = None,
    unit_axis: int | None = None,
    chunk_size: int = 256,
) -> Diagnosis:
    r"""Diagnose why a model does (not) learn, layer by layer, from its feature matrices.

    On ``probe_size`` rows of ``data`` drawn with ``seed`` (the probe; a random subset, since
    data sets are often sorted by class): the AGOP trace, spectrum,
    effective and stable rank through depth and the NFM ranks
    (:func:`~nfm.diagnostics.agop_through_depth`), the forward signal at each layer's input
    (:func:`~nfm.diagnostics.input_statistics`), dead and saturated units
    (:func:`~nfm.diagnostics.unit_activity`) and, with ``targets``, the loss gradient reaching
    each layer (:func:`~nfm.diagnostics.gradient_signal`). With ``steps > 0`` (targets
    needed), that many minibatch steps on a deep copy of the model
    (:func:`~nfm.diagnostics.training_dynamics`) add the NFM movement and NFA correlation.
    :func:`~nfm.diagnostics.verdict.judge` then gives each layer and activation a verdict in
    words and the model one cause with a suggested fix.

    The model comes back unchanged: measurements run in eval mode under
    :class:`~nfm.models.state.ModelState` with every hook removed (also on error), gradients
    are taken with :func:`torch.autograd.grad` (no ``.grad`` written) and training steps run
    on a copy.

    Parameters
    ----------
    model : nn.Module
    data : (n, ...) tensor or array
        Samples (training data when ``steps > 0``).
    targets : (n,) labels or (n, c) values, optional
        Needed for the loss gradients and the training steps.
    layers : LayerSpec or sequence, optional
        Default every ``nn.Linear``.
    loss : "cross_entropy", "mse" or callable ``(outputs, targets) -> (B,)``
    probe_size : int
        Rows of ``data`` used for the measurements (all when ``data`` has fewer).
    steps : int
        Training steps on a copy (0: none).
    optimizer_factory : callable ``params -> Optimizer``, optional
        Default Adam with learning rate 1e-3.
    batch_size, seed : minibatches of the training steps
    reference : str, optional
        Layer the signal ratios are relative to (default the output layer).
    thresholds : Thresholds, optional
    unit_axis : int, optional
        Unit axis of activations with inputs of three or more dimensions.
    chunk_size : int

    Returns
    -------
    Diagnosis
    """
    check_model(model)
    loss = check_loss(loss)
    if isinstance(probe_size, bool) or not isinstance(probe_size, int) or probe_size < 1:
        raise NFMInputError(f"probe_size must be a positive integer; got {probe_size!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise NFMInputError(f"steps must be an integer >= 0; got {steps!r}")
    if thresholds is not None and not isinstance(thresholds, Thresholds):
        raise NFMInputError(f"thresholds must be a Thresholds; got {type(thresholds).__name__}")
    x = as_samples(model, data)
    y = None
    if targets is not None:
        y = as_targets(targets, x.shape[0], loss, x.device)
    elif steps > 0:
        raise NFMInputError(f"steps={steps} needs targets for the loss; got targets=None")
    rows_index = probe_rows(x.shape[0], probe_size, seed).to(x.device)
    probe = x[rows_index]
    rows = agop_through_depth(
        model, probe, layers=layers, reference=reference, chunk_size=chunk_size
    )
    stats = input_statistics(model, probe, layers=layers, chunk_size=chunk_size)
    for row in rows:
        row.update(
            stats.get(
                row["layer"],
                {
                    "input_rms": math.nan,
                    "input_variation": math.nan,
                    "input_effective_rank": math.nan,
                },
            )
        )
    ref = next(r["layer"] for r in rows if r["is_reference"])
    if y is not None:
        names = [r["layer"] for r in rows]
        grads = gradient_signal(
            model,
            probe,
            y[rows_index],
            layers=names,
            loss=loss,
            reference=ref,
            chunk_size=chunk_size,
        )
        by_name = {g["layer"]: g for g in grads}
        for row in rows:
            row.update({k: v for k, v in by_name[row["layer"]].items() if k != "layer"})
    units = unit_activity(model, probe, unit_axis=unit_axis, chunk_size=chunk_size)
    dynamics = None
    if steps > 0:
        dynamics = training_dynamics(
            model,
            x,
            y,
            steps=steps,
            optimizer_factory=optimizer_factory,
            batch_size=batch_size,
            loss=loss,
            layers=[r["layer"] for r in rows],
            probe=probe,
            seed=seed,
        )
    order = [name for name, _ in model.named_modules()]
    verdict = judge(
        rows,
        units,
        None if dynamics is None else dynamics.to_dict(),
        thresholds,
        order=order,
    )
    settings = {
        "probe_samples": int(probe.shape[0]),
        "steps": steps,
        "batch_size": batch_size,
        "loss": loss if isinstance(loss, str) else getattr(loss, "__name__", "callable"),
        "reference": ref,
        "seed": seed,
        "thresholds": (thresholds or Thresholds()).__dict__,
        "dtype": str(x.dtype).replace("torch.", ""),
        "device": str(x.device),
        "optimizer": "Adam(lr=1e-3)" if optimizer_factory is None else "user factory",
        "torch_threads": torch.get_num_threads(),
    }
    logger.debug("diagnosis of %d layers: %s", len(rows), verdict.cause)
    return Diagnosis(rows, units, dynamics, verdict, settings)
