r"""FACT, the Features At Convergence Theorem (Boix-Adsera et al. 2025, arXiv 2507.05644).

Train with weight decay :math:`\lambda` on the objective
:math:`\bar L(W) + \frac{\lambda}{2}\lVert W\rVert_F^2`, with
:math:`\bar L = \frac1m \sum_{r=1}^m \ell_r` the mean of the loss entries (samples, or samples
times positions for a token loss). A layer computes :math:`y_r = W h_r + b` at each of its rows
:math:`r` (a sample, a token, a convolution patch), so
:math:`\nabla_W \bar L = \frac1m \sum_r g_r h_r^T` with :math:`g_r = \partial (m \bar L) /
\partial y_r`. At a stationary point :math:`\nabla_W \bar L = -\lambda W`; multiplying by
:math:`W^T` on the left,

.. math::

    W^T W = -\frac{1}{m\lambda} \sum_r (W^T g_r)\, h_r^T
          = -\frac{1}{m\lambda} \sum_r \nabla_{h_r}(m\bar L)\; h_r^T ,

the cross moment of the loss gradient with respect to the layer input (through this layer) and
the layer input. The right-hand side is the **FACT matrix** :math:`F`. Unlike the NFA, this is an
identity, not a conjecture: it holds exactly at every stationary point, whatever the
architecture, and it fails in proportion to the remaining gradient,
:math:`F - W^T W = -\frac{1}{\lambda} W^T (\nabla_W \bar L + \lambda W)`, hence
:math:`\lVert F - W^TW\rVert_F \le \lVert W\rVert_2 \lVert \nabla_W(\bar L +
\tfrac\lambda2\lVert W\rVert^2)\rVert_F / \lambda`.

:math:`F` is not symmetric away from a stationary point; :func:`compute_fact` returns its
symmetric part :math:`\frac12 (F + F^T)` by default (the part a correlation with the symmetric
:math:`W^T W` sees; the antisymmetric part, which vanishes at stationarity, is reported as
``asymmetry`` by :func:`fact_report`).

Layers: ``nn.Linear`` and Hugging Face ``Conv1D`` (features on the last axis; the rows are the
samples times the positions of a ``(batch, T, d)`` input, summed) and ``nn.Conv1d`` /
``nn.Conv2d`` (any stride, padding, dilation, padding mode, groups), where :math:`h_r` is the
unfolded input patch under output position :math:`r` (channel major, as
``torch.nn.functional.unfold``) and :math:`W` the filters as ``(C_out, C_in * prod(kernel))``
(:func:`nfm.features.compute_nfm`'s patch-space matrix). With ``groups > 1`` a filter only sees
its group's channels: the weight gradient is the masked :math:`\sum_r g_r h_r^T` (zero outside
each filter's group), and so is the FACT matrix.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.conv import _ConvNd
from tqdm.auto import tqdm

from nfm._utils.arrays import to_tensor
from nfm.ansatz.table import RowTable
from nfm.exceptions import LayerSelectionError, NFMInputError
from nfm.linalg import CorrelationKind, matrix_correlation
from nfm.models.adapters.huggingface import HFConv1DAdapter
from nfm.models.selection import LayerSpec, select_layers
from nfm.models.state import ModelState, check_sample_independence, model_device_dtype

__all__ = [
    "FACTReport",
    "FACTSums",
    "LossSpec",
    "accumulate_fact",
    "compute_fact",
    "fact_column",
    "fact_report",
]

LossSpec = Literal["cross_entropy", "mse"] | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_HF_CONV1D = HFConv1DAdapter()


# --------------------------------------------------------------------------- layers
@dataclass(frozen=True)
class _Layer:
    """How one selected layer's rows (input, output gradient) and weight matrix are read."""

    name: str
    module: nn.Module
    conv: bool
    weight: torch.Tensor  # (out, in), detached
    mask: torch.Tensor | None  # (out, in) support of the weight (grouped convolutions)


def _conv_group_mask(module: _ConvNd) -> torch.Tensor | None:
    groups = int(module.groups)
    if groups == 1:
        return None
    c_out, c_in = int(module.out_channels), int(module.in_channels)
    kernel = math.prod(module.kernel_size)
    mask = torch.zeros(c_out, c_in * kernel, dtype=torch.bool)
    rows, cols = c_out // groups, (c_in // groups) * kernel
    for g in range(groups):
        mask[g * rows : (g + 1) * rows, g * cols : (g + 1) * cols] = True
    return mask


def _conv_patch_weight(module: _ConvNd) -> torch.Tensor:
    """The filters as ``(C_out, C_in * prod(kernel))``, zero outside each filter's group."""
    weight = module.weight.detach()
    flat = weight.reshape(weight.shape[0], -1)
    mask = _conv_group_mask(module)
    if mask is None:
        return flat
    full = flat.new_zeros(mask.shape)
    full[mask.to(flat.device)] = flat.reshape(-1)
    return full


def _read_layer(name: str, module: nn.Module) -> _Layer:
    if isinstance(module, nn.Linear):
        return _Layer(name, module, False, module.weight.detach(), None)
    if _HF_CONV1D.handles(module):
        return _Layer(name, module, False, module.weight.detach().T, None)
    if isinstance(module, _ConvNd) and not module.transposed:
        if len(module.kernel_size) not in (1, 2):
            raise LayerSelectionError(
                f"layer {name!r} ({type(module).__name__}): the FACT matrix of a convolution "
                "lives in patch space and is implemented for Conv1d and Conv2d only (patches "
                "through torch.nn.functional.unfold); select other layers"
            )
        mask = _conv_group_mask(module)
        return _Layer(name, module, True, _conv_patch_weight(module), mask)
    raise LayerSelectionError(
        f"layer {name!r} ({type(module).__name__}): the FACT matrix needs a layer that computes "
        "y = W h + b on its input rows; it is implemented for nn.Linear, Hugging Face Conv1D, "
        "nn.Conv1d and nn.Conv2d. Select such layers (default: every nn.Linear)"
    )


def _patches(layer: _Layer, x: torch.Tensor) -> torch.Tensor:
    """The unfolded input patches ``(batch, C_in * prod(kernel), positions)`` of a convolution."""
    module = layer.module
    spatial = len(module.kernel_size)
    if x.ndim != spatial + 2:
        raise LayerSelectionError(
            f"layer {layer.name!r} ({type(module).__name__}) receives an input of shape "
            f"{tuple(x.shape)}; the FACT matrix needs a batched input (batch, C, "
            f"{'L' if spatial == 1 else 'H, W'})"
        )
    pad = list(module._reversed_padding_repeated_twice)
    if any(pad):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, pad, mode=mode)
    kernel, dilation, stride = module.kernel_size, module.dilation, module.stride
    if spatial == 1:  # a Conv1d is a Conv2d of height 1
        x = x.unsqueeze(2)
        kernel, dilation, stride = (1, kernel[0]), (1, dilation[0]), (1, stride[0])
    return F.unfold(x, kernel_size=kernel, dilation=dilation, stride=stride)


def _cross_sum(layer: _Layer, h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    r""":math:`\sum_r g_r h_r^T` over the rows of one chunk, ``(out, in)``, in the chunk's dtype."""
    d_out, d_in = layer.weight.shape
    if layer.conv:
        patches = _patches(layer, h)  # (b, d_in, L)
        grads = g.reshape(g.shape[0], g.shape[1], -1)  # (b, d_out, L)
        if patches.shape[1:] != (d_in, grads.shape[2]) or grads.shape[1] != d_out:
            raise LayerSelectionError(
                f"layer {layer.name!r}: its output {tuple(g.shape)} does not match the "
                f"{tuple(patches.shape[1:])} patches of its input {tuple(h.shape)}"
            )
        return torch.einsum("bol,bil->oi", grads, patches)
    if h.ndim < 2 or h.shape[-1] != d_in or g.shape[-1] != d_out:
        raise LayerSelectionError(
            f"layer {layer.name!r} ({type(layer.module).__name__}) maps an input of shape "
            f"{tuple(h.shape)} to {tuple(g.shape)}; expected a batch first and {d_in} input "
            f"features last"
        )
    return g.reshape(-1, d_out).T @ h.reshape(-1, d_in)


# --------------------------------------------------------------------------- data and loss
def _pairs(data: Any, targets: Any, chunk_size: int) -> Iterator[tuple[Any, Any]]:
    """``(x, y)`` chunks of at most ``chunk_size`` samples."""
    if targets is not None:
        x_all = data if isinstance(data, torch.Tensor) else to_tensor(data, "data")
        y_all = targets if isinstance(targets, torch.Tensor) else to_tensor(targets, "targets")
        if x_all.ndim == 0 or y_all.ndim == 0 or x_all.shape[0] != y_all.shape[0]:
            raise NFMInputError(
                f"data and targets must hold the same number of samples along their first "
                f"axis; got shapes {tuple(x_all.shape)} and {tuple(y_all.shape)}"
            )
        for start in range(0, x_all.shape[0], chunk_size):
            yield x_all[start : start + chunk_size], y_all[start : start + chunk_size]
        return
    if isinstance(data, (torch.Tensor, np.ndarray, str, bytes, Mapping)) or not hasattr(
        data, "__iter__"
    ):
        raise NFMInputError(
            "targets is None, so data must be an iterable of (inputs, targets) batches (e.g. a "
            f"DataLoader); got {type(data).__name__}. Pass targets= with tensor data"
        )
    for index, batch in enumerate(data):
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise NFMInputError(
                f"data batch {index} is a {type(batch).__name__}; with targets=None each batch "
                "must be an (inputs, targets) pair"
            )
        x = batch[0] if isinstance(batch[0], torch.Tensor) else to_tensor(batch[0], "data")
        y = batch[1] if isinstance(batch[1], torch.Tensor) else to_tensor(batch[1], "targets")
        if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
            raise NFMInputError(
                f"data batch {index}: inputs {tuple(x.shape)} and targets {tuple(y.shape)} "
                "must hold the same number of samples"
            )
        for start in range(0, x.shape[0], chunk_size):
            yield x[start : start + chunk_size], y[start : start + chunk_size]


def _output_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    logits = out.get("logits") if isinstance(out, Mapping) else getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise NFMInputError(
        f"the model returned a {type(out).__name__}; the FACT needs a tensor (or an output "
        "with a .logits tensor) to apply the loss to"
    )


def _loss_entries(loss: LossSpec, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The per-entry losses ``(batch, ...)`` of one chunk (their mean is the objective)."""
    if loss == "cross_entropy":
        if y.is_floating_point() or y.is_complex():
            raise NFMInputError(
                f"loss='cross_entropy' needs integer class labels as targets; got dtype "
                f"{y.dtype}. Pass loss='mse' for real targets, or a callable"
            )
        if out.ndim < 2 or tuple(out.shape[:-1]) != tuple(y.shape):
            raise NFMInputError(
                "loss='cross_entropy' takes the classes on the last axis of the output: "
                f"output {tuple(out.shape)} needs targets of shape {tuple(out.shape[:-1])}; got "
                f"{tuple(y.shape)}"
            )
        flat = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="none")
        return flat.reshape(y.shape)
    if loss == "mse":
        if out.numel() != y.numel():
            raise NFMInputError(
                f"loss='mse' needs targets with as many entries as the output {tuple(out.shape)}; "
                f"got {tuple(y.shape)}"
            )
        return (out - y.reshape(out.shape).to(out.dtype)) ** 2
    if isinstance(loss, str) or not callable(loss):
        raise NFMInputError(
            f"loss must be 'cross_entropy', 'mse' or a callable (output, targets) -> per-sample "
            f"losses; got {loss!r}"
        )
    entries = loss(out, y)
    if not isinstance(entries, torch.Tensor) or entries.ndim == 0:
        got = tuple(entries.shape) if isinstance(entries, torch.Tensor) else type(entries).__name__
        raise NFMInputError(
            f"loss must return per-sample losses of shape (batch, ...), as with "
            f"reduction='none'; got {got}"
        )
    if entries.shape[0] != out.shape[0]:
        raise NFMInputError(
            f"loss returned shape {tuple(entries.shape)} for a chunk of {out.shape[0]} samples; "
            "expected the batch first (reduction='none')"
        )
    return entries


# --------------------------------------------------------------------------- the pass
@dataclass
class FACTSums:
    r"""Partial sums of one FACT pass: :math:`G_l = \sum_r g_r h_r^T` and the entry count.

    Attributes
    ----------
    cross : dict[str, torch.Tensor]
        ``(out, in)`` float64 sums per layer (masked to the weight's support), on the CPU;
        :math:`G_l / m` is the gradient of the mean loss with respect to the weight matrix.
    weights : dict[str, torch.Tensor]
        The ``(out, in)`` weight matrices :math:`W_l` (float64, CPU).
    count : int
        :math:`m`, the number of loss entries summed.
    """

    cross: dict[str, torch.Tensor]
    weights: dict[str, torch.Tensor]
    count: int

    def merge(self, other: FACTSums) -> FACTSums:
        """Add ``other``'s sums (the same layers and weights, e.g. another data shard)."""
        if set(other.cross) != set(self.cross):
            raise NFMInputError(
                f"cannot merge FACT sums of layers {sorted(other.cross)} into {sorted(self.cross)}"
            )
        for name, value in other.cross.items():
            self.cross[name] = self.cross[name] + value
        self.count += other.count
        return self

    def matrices(
        self, *, weight_decay: float | None = None, symmetric: bool = True
    ) -> dict[str, torch.Tensor]:
        r"""The FACT matrices :math:`-\frac{1}{m\lambda} W^T G` (symmetric part by default)."""
        scale = _check_weight_decay(weight_decay)
        if self.count == 0:
            raise NFMInputError("no loss entries were summed: data is empty")
        result = {}
        for name, cross in self.cross.items():
            fact = -(self.weights[name].T @ cross) / (self.count * scale)
            result[name] = 0.5 * (fact + fact.T) if symmetric else fact
        return result


def _check_weight_decay(weight_decay: float | None) -> float:
    if weight_decay is None:
        return 1.0
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float, np.floating)):
        raise NFMInputError(f"weight_decay must be a positive number or None; got {weight_decay!r}")
    value = float(weight_decay)
    if not (math.isfinite(value) and value > 0):
        raise NFMInputError(f"weight_decay must be a positive finite number; got {weight_decay!r}")
    return value


def accumulate_fact(
    model: nn.Module,
    data: Any,
    targets: Any = None,
    *,
    layers: LayerSpec | Sequence[LayerSpec] | None = None,
    loss: LossSpec = "cross_entropy",
    dtype: torch.dtype | None = None,
    chunk_size: int = 256,
    verbose: bool = False,
) -> FACTSums:
    r"""One pass over the data: :math:`G_l = \sum_r g_r h_r^T` per layer, and the count :math:`m`.

    Per chunk: one forward pass in eval mode on detached (and, for ``dtype``, cast) copies of the
    parameters (:func:`torch.func.functional_call`, so no parameter or ``.grad`` is written),
    forward hooks that keep each selected layer's input :math:`h` and add a zero tensor to its
    output, one backward pass of the summed loss entries to those zero tensors (giving
    :math:`g = \partial \sum \ell / \partial y`), then :math:`\sum_r g_r h_r^T` in the compute
    dtype, added to float64 sums. Arguments as in :func:`compute_fact`.
    """
    if not isinstance(model, nn.Module):
        raise NFMInputError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)):
        raise NFMInputError(f"chunk_size must be a positive integer; got {chunk_size!r}")
    if chunk_size < 1:
        raise NFMInputError(f"chunk_size must be a positive integer; got {chunk_size!r}")
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise NFMInputError(f"dtype must be a floating torch.dtype or None; got {dtype!r}")
    if isinstance(loss, str) and loss not in ("cross_entropy", "mse"):
        raise NFMInputError(f"loss must be 'cross_entropy', 'mse' or a callable; got {loss!r}")
    selected = select_layers(model, layers)
    readers = {name: _read_layer(name, module) for name, module in selected.items()}
    check_sample_independence(model)
    device, model_dtype = model_device_dtype(model)
    compute_dtype = dtype or model_dtype or torch.get_default_dtype()
    sums = {
        name: torch.zeros(tuple(r.weight.shape), dtype=torch.float64) for name, r in readers.items()
    }
    inputs: dict[str, torch.Tensor] = {}
    deltas: dict[str, torch.Tensor] = {}

    def pre_hook(name: str):
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if name in inputs:
                raise LayerSelectionError(
                    f"layer {name!r} ({type(module).__name__}) is called more than once in one "
                    "forward pass; its input rows are then ambiguous. Select another layer"
                )
            if not args or not isinstance(args[0], torch.Tensor):
                raise LayerSelectionError(
                    f"layer {name!r} ({type(module).__name__}) was called without a tensor as "
                    "its first positional argument"
                )
            inputs[name] = args[0].detach()

        return hook

    def post_hook(name: str):
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            if not isinstance(output, torch.Tensor):
                raise LayerSelectionError(
                    f"layer {name!r} ({type(module).__name__}) returned a "
                    f"{type(output).__name__}; expected a tensor"
                )
            delta = torch.zeros_like(output, requires_grad=True)
            deltas[name] = delta
            return output + delta

        return hook

    tensors = {
        **dict(model.named_parameters()),
        **dict(model.named_buffers()),
    }
    cast = {
        key: (t.detach().to(compute_dtype) if t.is_floating_point() else t.detach())
        for key, t in tensors.items()
    }
    count = 0
    handles = []
    bar = tqdm(disable=not verbose, desc="FACT", unit="sample")
    try:
        with ModelState(model, mode="eval"):
            for name, module in selected.items():
                handles.append(module.register_forward_pre_hook(pre_hook(name)))
                handles.append(module.register_forward_hook(post_hook(name)))
            for x, y in _pairs(data, targets, int(chunk_size)):
                if x.shape[0] == 0:
                    continue
                x = x.to(device=device or x.device)
                if x.is_floating_point():
                    x = x.to(compute_dtype)
                    if not bool(torch.isfinite(x).all()):
                        raise NFMInputError("data contains NaN or infinite values")
                y = y.to(device=device or y.device)
                if y.is_floating_point():
                    y = y.to(compute_dtype)
                inputs.clear()
                deltas.clear()
                with torch.enable_grad():
                    out = _output_tensor(torch.func.functional_call(model, cast, (x,)))
                    missing = [n for n in selected if n not in deltas]
                    if missing:
                        raise LayerSelectionError(
                            f"selected layers {missing} were never called in the forward pass; "
                            "select layers the model calls as modules (nn.Linear, Conv1d/2d, "
                            "HF Conv1D)"
                        )
                    entries = _loss_entries(loss, out, y)
                    names = list(selected)
                    grads = torch.autograd.grad(
                        entries.sum(), [deltas[n] for n in names], allow_unused=True
                    )
                for name, grad in zip(names, grads, strict=True):
                    if grad is None:  # the loss does not depend on this layer
                        continue
                    cross = _cross_sum(readers[name], inputs[name], grad)
                    sums[name] += cross.detach().to("cpu", torch.float64)
                count += int(entries.numel())
                bar.update(int(x.shape[0]))
    finally:
        bar.close()
        for handle in handles:
            handle.remove()
        inputs.clear()
        deltas.clear()
    if count == 0:
        raise NFMInputError("data is empty: no samples to average over")
    for name, reader in readers.items():
        if reader.mask is not None:
            sums[name] = sums[name] * reader.mask.to(torch.float64)
    weights = {name: r.weight.to("cpu", torch.float64) for name, r in readers.items()}
    return FACTSums(cross=sums, weights=weights, count=count)


def compute_fact(
    model: nn.Module,
    data: Any,
    targets: Any = None,
    *,
    layers: LayerSpec | Sequence[LayerSpec] | None = None,
    loss: LossSpec = "cross_entropy",
    weight_decay: float | None = None,
    symmetric: bool = True,
    dtype: torch.dtype | None = None,
    chunk_size: int = 256,
    verbose: bool = False,
) -> dict[str, torch.Tensor]:
    r"""The FACT matrix of every selected layer.

    .. math::

        F_l = -\frac{1}{m\lambda} \sum_{r=1}^{m'} \nabla_{h_r} \Big(\sum_{s} \ell_s\Big)\,
        h_r^T = -\frac{1}{m\lambda} W_l^T \sum_r g_r h_r^T ,

    over the rows :math:`r` of layer :math:`l` (samples; samples times tokens for a
    ``(batch, T, d)`` input; samples times patches for a convolution), with :math:`m` the number
    of loss entries, :math:`\lambda` = ``weight_decay`` and :math:`g_r` the gradient of the
    summed loss with respect to the layer's output at row :math:`r`. At a stationary point of
    :math:`\frac1m\sum_s \ell_s + \frac\lambda2\lVert W_l\rVert_F^2`, :math:`F_l = W_l^T W_l`
    exactly (module docstring). ``symmetric`` returns :math:`\frac12(F_l + F_l^T)`.

    Parameters
    ----------
    model : nn.Module
        Returns a tensor, or an output with a ``.logits`` tensor. Comes back unchanged (modes,
        ``requires_grad`` flags, parameters, no hooks), also on error.
    data : tensor, array, or iterable of (inputs, targets) batches
        Samples along the first axis. With ``targets=None``, an iterable (a DataLoader)
        yielding ``(inputs, targets)``.
    targets : tensor or array, optional
        One target per sample: integer class labels of shape ``output.shape[:-1]`` for
        ``"cross_entropy"`` (tokens: ``(batch, T)``), real values with the output's number of
        entries for ``"mse"``.
    layers : LayerSpec or sequence, optional
        ``nn.Linear``, HF ``Conv1D``, ``nn.Conv1d`` or ``nn.Conv2d`` layers; default every
        ``nn.Linear``.
    loss : "cross_entropy", "mse" or callable
        ``"cross_entropy"``: classes on the last axis of the output, the entries are
        ``F.cross_entropy(..., reduction="none")`` per sample (and per token);
        ``"mse"``: the entries are :math:`(f - y)^2`, as ``nn.MSELoss`` averages them;
        a callable ``(output, targets) -> entries`` returns the losses unreduced, batch first
        (``reduction="none"``). The objective is the **mean** of all entries, as with
        ``reduction="mean"``: pass the ``weight_decay`` of an optimiser that adds
        :math:`\lambda W` to the gradient of that mean (``torch.optim.SGD``/``Adam``
        ``weight_decay``; AdamW's decoupled decay is not this objective).
    weight_decay : float, optional
        :math:`\lambda`. ``None``: :math:`\lambda = 1`; the correlation with :math:`W^T W` does
        not depend on :math:`\lambda > 0`, only the scale does.
    symmetric : bool
        Return the symmetric part (default) or :math:`F_l` itself.
    dtype : torch.dtype, optional
        Compute dtype of the passes (default the model's); the sums over chunks are float64.
    chunk_size : int
        Samples per forward/backward pass; memory grows with it, not with the data size.
    verbose : bool
        Show a progress bar.

    Returns
    -------
    dict[str, torch.Tensor]
        ``(d_l, d_l)`` float64 CPU tensors in model order, ``d_l`` the layer's input features
        (``C_in * prod(kernel)`` for a convolution).

    Raises
    ------
    LayerSelectionError
        A layer of another kind, a Conv3d or transposed convolution, a layer never called or
        called twice in one forward pass.
    NFMInputError
        Mismatched data and targets, targets the loss cannot take, a callable loss that reduces
        over the batch, a non-positive ``weight_decay``, empty or non-finite data.
    """
    _check_weight_decay(weight_decay)
    sums = accumulate_fact(
        model,
        data,
        targets,
        layers=layers,
        loss=loss,
        dtype=dtype,
        chunk_size=chunk_size,
        verbose=verbose,
    )
    return sums.matrices(weight_decay=weight_decay, symmetric=symmetric)


# --------------------------------------------------------------------------- the report
def fact_column(kind: str, exclude_diagonal: bool) -> str:
    """Column name of one FACT correlation in :class:`FACTReport` rows (``"fact_pearson"``)."""
    return f"fact_{kind}" + ("_offdiag" if exclude_diagonal else "")


@dataclass
class FACTReport(RowTable):
    r"""Per-layer agreement of :math:`W^T W` with the FACT matrix.

    Each row has ``layer``, ``d``, one ``fact_<kind>[_offdiag]`` correlation per (kind, diagonal)
    setting (:func:`nfm.linalg.matrix_correlation` of :math:`W^T W` and the symmetric FACT
    matrix; no power: FACT is an identity at :math:`\alpha = 1`), ``relative_error``
    :math:`\lVert F_{sym} - W^TW\rVert_F / \lVert W^TW\rVert_F` (only with a ``weight_decay``,
    else NaN), ``asymmetry`` :math:`\lVert F - F^T\rVert_F / \lVert F + F^T\rVert_F` (0 at a
    stationary point), ``nfm_trace`` and ``fact_trace``; with a null model also ``null`` (its
    kind), ``null_correlation`` (the first correlation column for the null model) and ``lift``
    (the first column minus its null).

    Attributes
    ----------
    rows : list of dict
    nfm, fact : dict[str, torch.Tensor]
        :math:`W^T W` and the symmetric FACT matrix per layer (float64, CPU).
    columns : list of str
    headline_column : str
        The correlation column the null and the lift refer to.
    null : FACTReport or None
        The same report for the null model.
    """

    rows: list[dict[str, Any]]
    nfm: dict[str, torch.Tensor]
    fact: dict[str, torch.Tensor]
    columns: list[str] = field(default_factory=list)
    headline_column: str = "fact_pearson"
    null: FACTReport | None = None


def _frobenius(t: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(t))


def fact_report(
    model: nn.Module,
    data: Any,
    targets: Any = None,
    *,
    layers: LayerSpec | Sequence[LayerSpec] | None = None,
    loss: LossSpec = "cross_entropy",
    weight_decay: float | None = None,
    kinds: Sequence[CorrelationKind] = ("pearson", "cosine"),
    exclude_diagonal: Sequence[bool] | bool = (False, True),
    null: str | None = None,
    null_seed: Any = 0,
    dtype: torch.dtype | None = None,
    chunk_size: int = 256,
    verbose: bool = False,
) -> FACTReport:
    r"""FACT of every selected layer, as a table: :math:`\rho(W^T W, F_{sym})` and its null.

    Computes the FACT matrices (:func:`compute_fact`; the arguments are the same) and correlates
    each with :math:`W_l^T W_l` for every (kind, diagonal) combination. With ``null``
    (``"shuffled"`` or ``"reinit"``, :func:`nfm.ansatz.null.null_model` seeded by
    ``null_seed``) the whole report is computed again for the null copy of the model on the
    same data and targets, and each row gets ``null``, ``null_correlation`` and ``lift``.

    Returns
    -------
    FACTReport
    """
    from nfm.ansatz.null import NULL_KINDS, null_model

    if isinstance(exclude_diagonal, bool):
        exclude_diagonal = (exclude_diagonal,)
    kinds = tuple(kinds)
    diags = tuple(bool(d) for d in exclude_diagonal)
    if not kinds or not diags:
        raise NFMInputError("kinds and exclude_diagonal must each be non-empty")
    for kind in kinds:
        if kind not in ("pearson", "cosine"):
            raise NFMInputError(f"kinds must hold 'pearson' or 'cosine'; got {kind!r}")
    if null is not None and null not in NULL_KINDS:
        raise NFMInputError(f"null must be one of {list(NULL_KINDS)} or None; got {null!r}")
    sums = accumulate_fact(
        model,
        data,
        targets,
        layers=layers,
        loss=loss,
        dtype=dtype,
        chunk_size=chunk_size,
        verbose=verbose,
    )
    symmetric = sums.matrices(weight_decay=weight_decay, symmetric=True)
    raw = sums.matrices(weight_decay=weight_decay, symmetric=False)
    corr_columns = [fact_column(k, d) for k in kinds for d in diags]
    headline = corr_columns[0]
    columns = ["layer", "d", *corr_columns, "relative_error", "asymmetry"]
    columns += ["nfm_trace", "fact_trace"]
    nfms: dict[str, torch.Tensor] = {}
    rows: list[dict[str, Any]] = []
    for name, fact in symmetric.items():
        w = sums.weights[name]
        nfm_matrix = w.T @ w
        nfms[name] = nfm_matrix
        row: dict[str, Any] = {"layer": name, "d": int(nfm_matrix.shape[0])}
        for k in kinds:
            for d in diags:
                row[fact_column(k, d)] = matrix_correlation(
                    nfm_matrix, fact, kind=k, exclude_diagonal=d
                )
        norm = _frobenius(nfm_matrix)
        row["relative_error"] = (
            _frobenius(fact - nfm_matrix) / norm
            if weight_decay is not None and norm > 0
            else float("nan")
        )
        both = _frobenius(raw[name] + raw[name].T)
        row["asymmetry"] = _frobenius(raw[name] - raw[name].T) / both if both > 0 else float("nan")
        row["nfm_trace"] = float(torch.trace(nfm_matrix))
        row["fact_trace"] = float(torch.trace(fact))
        rows.append(row)
    null_report = None
    if null is not None:
        copy = null_model(model, null, layers=list(symmetric), seed=null_seed)
        null_report = fact_report(
            copy,
            data,
            targets,
            layers=list(symmetric),
            loss=loss,
            weight_decay=weight_decay,
            kinds=kinds,
            exclude_diagonal=diags,
            null=None,
            dtype=dtype,
            chunk_size=chunk_size,
            verbose=verbose,
        )
        del copy
        null_rows = {r["layer"]: r for r in null_report.rows}
        for row in rows:
            value = null_rows[row["layer"]][headline]
            row["null"] = null
            row["null_correlation"] = value
            row["lift"] = row[headline] - value
        columns += ["null", "null_correlation", "lift"]
    return FACTReport(
        rows=rows,
        nfm=nfms,
        fact=symmetric,
        columns=columns,
        headline_column=headline,
        null=null_report,
    )
