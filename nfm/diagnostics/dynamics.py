r"""The loss-gradient signal reaching each layer, and what a few training steps do to the
features: how far each NFM moves per step and whether the NFA correlation rises.

Loss gradient. With per-sample losses :math:`\ell_i`, the signal reaching layer :math:`l` is

.. math:: g_l = \Big(\frac1n \sum_i \big\lVert \partial \ell_i / \partial h_{l-1}(x_i)
          \big\rVert^2\Big)^{1/2},

the root mean square norm of the loss gradient with respect to the layer's (literal) input,
reported with its ratio to the reference (output) layer's, and the weight gradient
:math:`\lVert \partial \bar\ell / \partial W_l\rVert_F` of the mean loss relative to
:math:`\lVert W_l\rVert_F`.

Training steps (:func:`training_dynamics`) run on a deep copy of the model, so the model
passed in comes back unchanged. After step :math:`t` the NFM moves by
:math:`\lVert \mathrm{NFM}_t - \mathrm{NFM}_{t-1}\rVert_F / \lVert \mathrm{NFM}_{t-1}\rVert_F`;
the NFA correlation :math:`\rho(\mathrm{NFM}, \mathrm{AGOP}^{1/2})` (Pearson,
:func:`nfm.ansatz.nfa_report`) is taken on the probe samples before the first step and after
the last.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nfm.ansatz import nfa_report
from nfm.diagnostics._data import (
    LossSpec,
    as_samples,
    as_targets,
    check_loss,
    check_model,
    per_sample_loss,
    probe_rows,
)
from nfm.exceptions import LayerSelectionError, NFMInputError
from nfm.features import compute_nfm
from nfm.models.selection import LayerSpec, select_layers
from nfm.models.state import ModelState

__all__ = ["OptimizerFactory", "TrainingDynamics", "gradient_signal", "training_dynamics"]

#: ``params -> optimizer``, e.g. ``lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9)``.
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


def _check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise NFMInputError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return value


def gradient_signal(
    model: nn.Module,
    data: Any,
    targets: Any,
    *,
    layers: LayerSpec | Sequence[LayerSpec] | None = None,
    loss: LossSpec = "cross_entropy",
    reference: str | None = None,
    chunk_size: int = 256,
) -> list[dict[str, Any]]:
    """Loss-gradient norm at each selected layer's input and at its weight (formulas above).

    The model runs in eval mode (dropout off, batch-norm on running statistics, so that the
    per-sample gradients are those of independent samples); gradients come from
    :func:`torch.autograd.grad`, so no ``.grad`` is written, and the modes and hooks are
    restored and removed afterwards, also on error.

    Parameters
    ----------
    model : nn.Module
    data : (n, ...) tensor or array
    targets : (n,) labels for ``"cross_entropy"``; labels or ``(n, c)`` values for ``"mse"``
    layers : LayerSpec or sequence, optional
        Default every ``nn.Linear``.
    loss : "cross_entropy", "mse" or callable ``(outputs, targets) -> (B,)`` losses
    reference : str, optional
        The layer the ratios are relative to; default the last selected layer.
    chunk_size : int

    Returns
    -------
    list of dict
        ``layer``, ``loss_grad_rms``, ``loss_grad_ratio``, ``weight_grad_norm``,
        ``weight_norm``, ``weight_grad_relative`` (``nan`` without a trainable ``weight``).
    """
    check_model(model)
    loss = check_loss(loss)
    _check_positive_int(chunk_size, "chunk_size")
    x = as_samples(model, data)
    y = as_targets(targets, x.shape[0], loss, x.device)
    selected = select_layers(model, layers)
    names = list(selected)
    if reference is None:
        reference = names[-1]
    elif reference not in selected:
        raise LayerSelectionError(
            f"reference must be one of the selected layers {names}; got {reference!r}"
        )
    weights = {
        n: m.weight
        for n, m in selected.items()
        if isinstance(getattr(m, "weight", None), nn.Parameter) and m.weight.requires_grad
    }
    squares = dict.fromkeys(names, 0.0)
    weight_grads: dict[str, torch.Tensor] = {}
    seen: set[str] = set()
    deltas: dict[str, torch.Tensor] = {}

    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            if not args or not isinstance(args[0], torch.Tensor) or name in deltas:
                return None
            delta = torch.zeros_like(args[0], requires_grad=True)
            deltas[name] = delta
            return (args[0] + delta, *args[1:])

        return hook

    handles = []
    try:
        with ModelState(model, mode="eval"):
            for name, module in selected.items():
                handles.append(module.register_forward_pre_hook(make_hook(name)))
            for start in range(0, x.shape[0], chunk_size):
                deltas.clear()
                with torch.enable_grad():
                    out = model(x[start : start + chunk_size])
                    losses = per_sample_loss(loss, out, y[start : start + chunk_size])
                    reached = [n for n in names if n in deltas]
                    seen.update(reached)
                    inputs = [deltas[n] for n in reached] + list(weights.values())
                    grads = torch.autograd.grad(losses.sum(), inputs, allow_unused=True)
                for name, grad in zip(reached, grads[: len(reached)], strict=True):
                    if grad is not None:
                        squares[name] += float(grad.detach().double().pow(2).sum())
                for name, grad in zip(weights, grads[len(reached) :], strict=True):
                    if grad is not None:
                        g = grad.detach().double()
                        weight_grads[name] = weight_grads.get(name, 0) + g
    finally:
        for handle in handles:
            handle.remove()
    missing = [n for n in names if n not in seen]
    if missing:
        raise LayerSelectionError(f"the forward pass never called the selected layers {missing}")
    n = x.shape[0]
    rms = {name: math.sqrt(squares[name] / n) for name in names}
    rows = []
    for name in names:
        row: dict[str, Any] = {"layer": name, "loss_grad_rms": rms[name]}
        ref = rms[reference]
        row["loss_grad_ratio"] = rms[name] / ref if ref > 0 else math.nan
        if name in weights:
            g = weight_grads.get(name)
            gnorm = float(torch.linalg.vector_norm(g / n)) if g is not None else 0.0
            wnorm = float(torch.linalg.vector_norm(weights[name].detach().double()))
            row.update(
                weight_grad_norm=gnorm,
                weight_norm=wnorm,
                weight_grad_relative=gnorm / wnorm if wnorm > 0 else math.nan,
            )
        else:
            row.update(weight_grad_norm=math.nan, weight_norm=math.nan)
            row["weight_grad_relative"] = math.nan
        rows.append(row)
    return rows


@dataclass
class TrainingDynamics:
    """What :func:`training_dynamics` measured on its copy of the model.

    Attributes
    ----------
    steps : int
        Optimisation steps taken (fewer than asked when the loss became non-finite).
    losses : list of float
        Mean minibatch loss of each step, before that step's update.
    nfm_step_change : dict[str, list of float]
        Per layer, the relative NFM change of every step.
    nfm_total_change : dict[str, float]
        Per layer, :math:`\\lVert \\mathrm{NFM}_T - \\mathrm{NFM}_0\\rVert_F /
        \\lVert \\mathrm{NFM}_0\\rVert_F`.
    nfa_initial, nfa_final : dict[str, float]
        NFA correlation (Pearson, alpha 1/2) before the first and after the last step
        (``nfa_final`` empty when training diverged).
    by_construction : list of str
        Layers where the NFA holds by construction (output layers; not evidence).
    diverged_at : int or None
        The step whose loss was NaN or infinite, if any.
    gradient_after : list of dict
        :func:`gradient_signal` of the trained copy on 512 training rows drawn with ``seed``
        (empty when training diverged).
    model : nn.Module or None
        The trained copy, when ``keep_model=True``.
    """

    steps: int
    losses: list[float] = field(default_factory=list)
    nfm_step_change: dict[str, list[float]] = field(default_factory=dict)
    nfm_total_change: dict[str, float] = field(default_factory=dict)
    nfa_initial: dict[str, float] = field(default_factory=dict)
    nfa_final: dict[str, float] = field(default_factory=dict)
    by_construction: list[str] = field(default_factory=list)
    diverged_at: int | None = None
    gradient_after: list[dict[str, Any]] = field(default_factory=list)
    model: nn.Module | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain values (no model), for JSON."""
        return {
            "steps": self.steps,
            "losses": list(self.losses),
            "nfm_step_change": {k: list(v) for k, v in self.nfm_step_change.items()},
            "nfm_total_change": dict(self.nfm_total_change),
            "nfa_initial": dict(self.nfa_initial),
            "nfa_final": dict(self.nfa_final),
            "by_construction": list(self.by_construction),
            "diverged_at": self.diverged_at,
            "gradient_after": [dict(r) for r in self.gradient_after],
        }


def _nfa(model: nn.Module, probe: torch.Tensor, layers: list[str]) -> tuple[dict, list[str]]:
    report = nfa_report(
        model,
        probe,
        layers=layers,
        alphas=(0.5,),
        kinds=("pearson",),
        exclude_diagonal=(False,),
        fit_best_alpha=False,
    )
    column = report.headline_column
    values = {r["layer"]: float(r[column]) for r in report.rows}
    return values, [r["layer"] for r in report.rows if r["by_construction"]]


def _relative_change(new: torch.Tensor, old: torch.Tensor) -> float:
    base = float(torch.linalg.matrix_norm(old))
    diff = float(torch.linalg.matrix_norm(new - old))
    return diff / base if base > 0 else math.nan


def training_dynamics(
    model: nn.Module,
    data: Any,
    targets: Any,
    *,
    steps: int = 50,
    optimizer_factory: OptimizerFactory | None = None,
    batch_size: int = 64,
    loss: LossSpec = "cross_entropy",
    layers: LayerSpec | Sequence[LayerSpec] | None = None,
    probe: Any = None,
    seed: int = 0,
    keep_model: bool = False,
) -> TrainingDynamics:
    """Take ``steps`` minibatch steps on a deep copy of ``model`` and record how the features move.

    Minibatches of ``batch_size`` rows are drawn without replacement (a new permutation each
    pass over the data) from a ``torch.Generator`` seeded with ``seed``; each step minimises
    the mean of the per-sample losses. The copy trains with the modes it has when the model
    comes in training mode, and in training mode when the model's root is in eval mode (as
    :func:`nfm.training.train_classifier`).

    Parameters
    ----------
    model : nn.Module
        Left unchanged (a deep copy is trained).
    data, targets : training samples and their targets
    steps : int
    optimizer_factory : callable ``params -> torch.optim.Optimizer``, optional
        Default ``torch.optim.Adam(params, lr=1e-3)``.
    batch_size : int
    loss : "cross_entropy", "mse" or callable ``(outputs, targets) -> (B,)`` losses
    layers : LayerSpec or sequence, optional
        Layers whose NFM and NFA are followed; default every ``nn.Linear``.
    probe : (m, ...) tensor or array, optional
        Samples for the NFA correlations; default 512 rows of ``data`` drawn with ``seed``.
    seed : int
    keep_model : bool
        Keep the trained copy in the result.

    Returns
    -------
    TrainingDynamics
    """
    check_model(model)
    loss = check_loss(loss)
    _check_positive_int(steps, "steps")
    _check_positive_int(batch_size, "batch_size")
    x = as_samples(model, data)
    y = as_targets(targets, x.shape[0], loss, x.device)
    if probe is None:
        probe_x = x[probe_rows(x.shape[0], 512, seed).to(x.device)]
    else:
        probe_x = as_samples(model, probe, "probe")
    try:
        trained = copy.deepcopy(model)
    except Exception as exc:
        raise NFMInputError(
            f"model cannot be deep-copied for the training steps ({type(exc).__name__}: {exc}); "
            "pass steps=0 to diagnose without training"
        ) from None
    names = list(select_layers(trained, layers))
    if not trained.training:
        trained.train()
    params = [p for p in trained.parameters() if p.requires_grad]
    if not params:
        raise NFMInputError("model has no parameter with requires_grad=True: nothing to train")
    if optimizer_factory is None:
        optimizer = torch.optim.Adam(params, lr=1e-3)
    else:
        optimizer = optimizer_factory(params)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise NFMInputError(
                "optimizer_factory must return a torch.optim.Optimizer; got "
                f"{type(optimizer).__name__}"
            )
    nfa_initial, by_construction = _nfa(trained, probe_x, names)
    previous = {k: v.double() for k, v in compute_nfm(trained, names).items()}
    first = dict(previous)
    result = TrainingDynamics(steps=0, nfa_initial=nfa_initial, by_construction=by_construction)
    result.nfm_step_change = {k: [] for k in previous}
    generator = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(x.shape[0], generator=generator)
    position = 0
    for step in range(steps):
        if position + batch_size > x.shape[0] and position > 0:
            order, position = torch.randperm(x.shape[0], generator=generator), 0
        index = order[position : position + batch_size].to(x.device)
        position += batch_size
        optimizer.zero_grad(set_to_none=True)
        value = per_sample_loss(loss, trained(x[index]), y[index]).mean()
        if not bool(torch.isfinite(value)):
            result.diverged_at = step
            result.losses.append(float(value.detach()))
            break
        value.backward()
        optimizer.step()
        result.losses.append(float(value.detach()))
        result.steps = step + 1
        current = {k: v.double() for k, v in compute_nfm(trained, names).items()}
        for key, matrix in current.items():
            result.nfm_step_change[key].append(_relative_change(matrix, previous[key]))
        previous = current
    optimizer.zero_grad(set_to_none=True)
    result.nfm_total_change = {k: _relative_change(previous[k], first[k]) for k in first}
    finite = all(bool(torch.isfinite(p).all()) for p in trained.parameters())
    if finite and result.diverged_at is None:
        try:
            result.nfa_final, _ = _nfa(trained, probe_x, names)
        except torch.linalg.LinAlgError:  # weights so large the AGOP cannot be decomposed
            result.nfa_final = {}
        rows = probe_rows(x.shape[0], 512, seed).to(x.device)
        result.gradient_after = gradient_signal(trained, x[rows], y[rows], layers=names, loss=loss)
    if keep_model:
        result.model = trained
    return result
