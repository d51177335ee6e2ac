r"""How much signal reaches each layer: the AGOP trace and spectrum through depth, and how much
the input each layer sees still varies from sample to sample.

Backward signal. :math:`\mathrm{tr}\,\mathrm{AGOP}_l = \frac1n\sum_i \lVert J_l(x_i)\rVert_F^2`,
:math:`J_l = \partial f / \partial h_{l-1}`, is the mean squared sensitivity of the output to the
input of layer :math:`l`. Divided by the same trace at the reference layer (the output layer
by default, where :math:`J = W_{\mathrm{out}}`), it says how much of the output's sensitivity
survives the way down: a ratio of :math:`10^{-9}` at the first layer means the first layer's
input barely affects the output, so its weights get no gradient (vanishing signal); a ratio of
:math:`10^{9}` means tiny input changes swing the output (exploding signal).

Forward signal. For the input :math:`h` of a layer over the probe samples, the variation share
:math:`\mathrm{tr}\,\mathrm{Cov}(h) / \mathbb{E}\lVert h\rVert^2` is 0 when every sample gives
the layer the same input (the data's information is gone) and 1 for a centred input; the
effective rank of :math:`\mathrm{Cov}(h)` (:mod:`nfm.diagnostics.rank`) says in how many
directions it still varies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from nfm.ansatz import output_layer_names
from nfm.diagnostics._data import as_samples, check_model
from nfm.diagnostics.rank import effective_rank_of_spectrum, rank_summary
from nfm.exceptions import LayerSelectionError, NFMInputError
from nfm.features import compute_agop, compute_nfm
from nfm.models.selection import LayerSpec, select_layers
from nfm.models.state import ModelState

__all__ = ["agop_through_depth", "input_statistics"]

_NAN_RANKS = {
    "trace": math.nan,
    "lambda_max": math.nan,
    "top_eigenvalues": [],
    "effective_rank": math.nan,
    "stable_rank": math.nan,
}


def _summary(matrix: torch.Tensor, name: str, top: int) -> dict[str, Any]:
    m = matrix.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(m).all()):
        return {**_NAN_RANKS, "d": int(m.shape[0])}
    return rank_summary(m, top=top, name=name)


def agop_through_depth(
    model: nn.Module,
    data: Any,
    *,
    layers: LayerSpec | Sequence[LayerSpec] | None = None,
    reference: str | None = None,
    top: int = 10,
    chunk_size: int = 256,
    dtype: torch.dtype | None = None,
) -> list[dict[str, Any]]:
    r"""Per layer: the AGOP's trace (and its ratio to the reference layer's), spectrum and ranks,
    and the effective and stable ranks of the NFM :math:`W^T W`.

    Parameters
    ----------
    model : nn.Module
    data : (n, ...) tensor or array
        Probe samples.
    layers : LayerSpec or sequence, optional
        Default every ``nn.Linear`` (as :func:`nfm.features.compute_agop`).
    reference : str, optional
        The layer whose AGOP trace the others are divided by. Default: the selected layer
        whose output is the model output (the last one if several), else the last selected.
    top : int
        How many leading eigenvalues to keep.
    chunk_size, dtype :
        As in :func:`nfm.features.compute_agop`.

    Returns
    -------
    list of dict
        In model order, one per AGOP key: ``layer``, ``depth`` (0 for the layer nearest the
        input), ``d``, ``agop_trace``, ``agop_trace_ratio``, ``agop_lambda_max``,
        ``agop_top_eigenvalues``, ``agop_effective_rank``, ``agop_stable_rank``,
        ``nfm_trace``, ``nfm_effective_rank``, ``nfm_stable_rank`` (``nan`` for a layer
        without a weight matrix or with a non-finite AGOP) and ``is_reference``.

    Raises
    ------
    NFMInputError, LayerSelectionError
        Bad data, a ``reference`` that is not a selected layer, ``top < 1``.
    """
    check_model(model)
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise NFMInputError(f"top must be a positive integer; got {top!r}")
    x = as_samples(model, data)
    agops = compute_agop(
        model, x, layers=layers, include_input=False, chunk_size=chunk_size, dtype=dtype
    )
    if not agops:
        raise LayerSelectionError("no layer selected: nothing to diagnose")
    names = list(agops)
    if reference is None:
        outputs = output_layer_names(model, x[:2], layers)
        on_output = [n for n in names if n in outputs]
        reference = on_output[-1] if on_output else names[-1]
    elif reference not in agops:
        raise LayerSelectionError(
            f"reference must be one of the selected layers {names}; got {reference!r}"
        )
    try:
        nfms = compute_nfm(model, layers)
    except LayerSelectionError:  # a selected layer without a weight: NFM ranks per layer below
        nfms = {}
    rows: list[dict[str, Any]] = []
    for depth, name in enumerate(names):
        agop = _summary(agops[name], f"the AGOP of {name!r}", top)
        row: dict[str, Any] = {"layer": name, "depth": depth, "d": agop["d"]}
        row["agop_trace"] = agop["trace"]
        row["agop_lambda_max"] = agop["lambda_max"]
        row["agop_top_eigenvalues"] = agop["top_eigenvalues"]
        row["agop_effective_rank"] = agop["effective_rank"]
        row["agop_stable_rank"] = agop["stable_rank"]
        if name in nfms:
            nfm = _summary(nfms[name], f"the NFM of {name!r}", top)
            row["nfm_trace"] = nfm["trace"]
            row["nfm_effective_rank"] = nfm["effective_rank"]
            row["nfm_stable_rank"] = nfm["stable_rank"]
        else:
            row.update(nfm_trace=math.nan, nfm_effective_rank=math.nan, nfm_stable_rank=math.nan)
        row["is_reference"] = name == reference
        rows.append(row)
    ref_trace = next(r["agop_trace"] for r in rows if r["is_reference"])
    for row in rows:
        row["agop_trace_ratio"] = _ratio(row["agop_trace"], ref_trace)
    return rows


def _ratio(value: float, reference: float) -> float:
    if not (math.isfinite(value) and math.isfinite(reference)):
        return math.nan
    if reference == 0:
        return math.inf if value > 0 else math.nan
    return value / reference


def _feature_rows(module: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """The layer input as rows of features: tokens of a linear layer, whole samples otherwise."""
    if h.ndim == 2:
        return h
    if isinstance(module, nn.Linear):
        return h.reshape(-1, h.shape[-1])
    return h.reshape(h.shape[0], -1)


def input_statistics(
    model: nn.Module,
    data: Any,
    *,
    layers: LayerSpec | Sequence[LayerSpec] | None = None,
    chunk_size: int = 256,
    max_covariance_dim: int = 4096,
) -> dict[str, dict[str, float]]:
    r"""Forward signal at each selected layer's input over the probe samples.

    For the input rows :math:`h_i` of a layer (a sample, or a token for a linear layer on
    sequences), in float64:

    * ``input_rms`` :math:`= \sqrt{\frac{1}{n d}\sum_i \lVert h_i\rVert^2}`;
    * ``input_variation`` :math:`= \mathrm{tr}\,\mathrm{Cov}(h) / \frac1n\sum_i\lVert h_i\rVert^2`
      (population covariance; 0: the same input for every sample; ``nan`` for an all-zero
      input);
    * ``input_effective_rank``: effective rank of :math:`\mathrm{Cov}(h)` (``nan`` when the
      input has more than ``max_covariance_dim`` features or does not vary).

    One forward pass without gradients in eval mode; the model's modes are restored and the
    hooks removed afterwards, also on error.
    """
    check_model(model)
    x = as_samples(model, data)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise NFMInputError(f"chunk_size must be a positive integer; got {chunk_size!r}")
    selected = select_layers(model, layers)
    sums: dict[str, dict[str, Any]] = {}

    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if not args or not isinstance(args[0], torch.Tensor):
                return
            rows = _feature_rows(module, args[0].detach()).to("cpu", torch.float64)
            if name not in sums:  # sums of (h - shift): no cancellation when h barely varies
                d = rows.shape[1]
                sums[name] = {
                    "n": 0,
                    "sq": 0.0,
                    "shift": rows.mean(dim=0),
                    "shifted_sq": 0.0,
                    "shifted_sum": torch.zeros(d, dtype=torch.float64),
                }
            entry = sums[name]
            centred = rows - entry["shift"]
            entry["n"] += rows.shape[0]
            entry["sq"] += float((rows**2).sum())
            entry["shifted_sq"] += float((centred**2).sum())
            entry["shifted_sum"] = entry["shifted_sum"] + centred.sum(dim=0)
            if rows.shape[1] <= max_covariance_dim:
                gram = centred.T @ centred
                entry["gram"] = gram if "gram" not in entry else entry["gram"] + gram

        return hook

    handles = []
    try:
        with ModelState(model, mode="eval"), torch.no_grad():
            for name, module in selected.items():
                handles.append(module.register_forward_pre_hook(make_hook(name)))
            for start in range(0, x.shape[0], chunk_size):
                model(x[start : start + chunk_size])
    finally:
        for handle in handles:
            handle.remove()
    result: dict[str, dict[str, float]] = {}
    for name in selected:
        if name not in sums:
            continue
        entry = sums[name]
        n, d = entry["n"], int(entry["shift"].numel())
        mean_sq = entry["sq"] / n
        shifted_mean = entry["shifted_sum"] / n
        variance = max(entry["shifted_sq"] / n - float(shifted_mean @ shifted_mean), 0.0)
        stats = {
            "input_rms": math.sqrt(mean_sq / d),
            "input_variation": variance / mean_sq if mean_sq > 0 else math.nan,
            "input_effective_rank": math.nan,
        }
        if "gram" in entry and variance > 0:
            cov = entry["gram"] / n - torch.outer(shifted_mean, shifted_mean)
            eigenvalues = torch.linalg.eigvalsh((cov + cov.T) / 2).clamp_min(0.0)
            stats["input_effective_rank"] = effective_rank_of_spectrum(eigenvalues)
        result[name] = stats
    return result
