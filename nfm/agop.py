r"""Average gradient outer products (AGOP) of every selected layer, and neural feature matrices.

Definitions (``docs/feature-matrices.md`` has the full conventions). For a network
:math:`f: \mathbb{R}^d \to \mathbb{R}^c` and a layer :math:`l` whose input is
:math:`h_{l-1}(x) \in \mathbb{R}^{d_l}`, let :math:`J_l(x) = \partial f(x) / \partial h_{l-1}
\in \mathbb{R}^{c \times d_l}` (the rest of the network held fixed). Then

.. math::

    \mathrm{AGOP}_l = \frac{1}{n} \sum_{i=1}^n J_l(x_i)^T J_l(x_i), \qquad
    \mathrm{AGOP}^{\mathrm{centered}}_l = \frac{1}{n} \sum_i (J_l(x_i) - \bar J_l)^T
    (J_l(x_i) - \bar J_l), \quad \bar J_l = \frac{1}{n} \sum_i J_l(x_i),

and :math:`\mathrm{NFM}_l = W_l^T W_l`.

How it is computed. A forward pre-hook on each selected layer adds a zero tensor
:math:`\delta_l` (the shape of the layer's input, requiring grad) to the layer's input, so the
output becomes a function of the :math:`\delta_l` without editing the model's ``forward``. In
eval mode the samples of a batch do not interact, so the gradient of
:math:`\sum_i (P f(x_i))_j` with respect to :math:`\delta_l` holds row :math:`j` of
:math:`P J_l(x_i)` for every sample :math:`i` at once. One forward pass and :math:`k` batched
vector-Jacobian products (``torch.autograd.grad(..., is_grads_batched=True)``, which vmaps the
backward pass over the :math:`k` cotangents) give the Jacobians of all samples of a chunk for all
layers; each layer's Jacobians, reshaped to a :math:`(k \cdot b, d_l)` matrix :math:`G`, enter
:math:`G^T G` (one matrix-matrix product). Chunks bound memory whatever the number of samples.
The sums live in an :class:`AGOPAccumulator` (float64): an AGOP is a sum, so partial sums over
data shards, processes or devices merge exactly.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from nfm._arrays import ArrayKind, check_finite, restore_kind, to_tensor
from nfm.exceptions import LayerSelectionError, NFMInputError
from nfm.layers import INPUT_KEY, LayerSpec, layer_feature_count, select_layers

__all__ = [
    "AGOPAccumulator",
    "OutputSpec",
    "accumulate_agop",
    "compute_agop",
    "compute_nfm",
]

logger = logging.getLogger(__name__)

#: Which outputs the AGOP sums over: ``None`` (all), one index, a sequence of indices, or a
#: ``(k, c)`` projection matrix ``P`` (the AGOP of ``P f``).
OutputSpec = int | Sequence[int] | torch.Tensor | np.ndarray | None

# Largest number of Jacobian entries (outputs x samples x features) held at once when the
# outputs are processed in blocks automatically (2**26 float32 entries = 256 MiB; four times
# that on CUDA devices).
_JACOBIAN_ELEMENT_BUDGET = 2**26


# --------------------------------------------------------------------------------------------
# Partial sums
# --------------------------------------------------------------------------------------------


class AGOPAccumulator:
    r"""Partial sums of Jacobian outer products, per key: first-class, mergeable AGOP state.

    For each key (a layer name or :data:`~nfm.layers.INPUT_KEY`) it holds, in float64,

    * ``n_samples``: number of samples seen, and ``n_rows``: number of Jacobians seen (samples
      times positions: token positions of a transformer layer, patches of a convolution),
    * ``sum_jtj`` :math:`= \sum_r J_r^T J_r` (``(d, d)``),
    * ``sum_j`` :math:`= \sum_r J_r` (``(k, d)``, ``k`` outputs),

    where :math:`r` runs over rows (sample, position). The AGOP is ``sum_jtj / n_rows``; the
    centred AGOP is ``sum_jtj / n_rows - Jbar^T Jbar`` with ``Jbar = sum_j / n_rows``.

    Every field is a plain sum, so accumulators over disjoint data merge exactly with
    :meth:`merge`, and a distributed all-reduce is::

        for t in acc.tensors():
            torch.distributed.all_reduce(t)   # SUM

    Parameters
    ----------
    device : torch.device or str, optional
        Where the sums live (default: where the first update comes from).
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = None if device is None else torch.device(device)
        # key -> [counts (2,) = (n_samples, n_rows), sum_jtj (d, d), sum_j (k, d)], float64
        self._state: dict[str, list[torch.Tensor]] = {}

    # ---- inspection -------------------------------------------------------------------------
    def keys(self) -> list[str]:
        """Keys in insertion (model) order."""
        return list(self._state)

    def __contains__(self, key: object) -> bool:
        return key in self._state

    def __len__(self) -> int:
        return len(self._state)

    def n_samples(self, key: str) -> int:
        """Number of samples accumulated under ``key``."""
        return round(float(self._state[key][0][0]))

    def n_rows(self, key: str) -> int:
        """Number of Jacobians (samples x positions) accumulated under ``key``."""
        return round(float(self._state[key][0][1]))

    def tensors(self) -> list[torch.Tensor]:
        """The raw float64 sum tensors (counts, sum_jtj, sum_j per key, in key order).

        Updating them in place (e.g. ``torch.distributed.all_reduce``) updates the
        accumulator; every one is a plain sum over data.
        """
        return [t for key in self._state for t in self._state[key]]

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """``{key: {"counts": (2,), "sum_jtj": (d, d), "sum_j": (k, d)}}`` (not copies)."""
        return {
            key: {"counts": c, "sum_jtj": s, "sum_j": j} for key, (c, s, j) in self._state.items()
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Mapping[str, Any]]) -> AGOPAccumulator:
        """Rebuild an accumulator from :meth:`state_dict` output (tensors or arrays)."""
        acc = cls()
        for key, fields in state.items():
            try:
                counts = to_tensor(fields["counts"], "counts", dtype=torch.float64)
                sum_jtj = to_tensor(fields["sum_jtj"], "sum_jtj", dtype=torch.float64)
                sum_j = to_tensor(fields["sum_j"], "sum_j", dtype=torch.float64)
            except KeyError as exc:
                raise NFMInputError(
                    f"state[{key!r}] must have 'counts', 'sum_jtj' and 'sum_j'; missing {exc}"
                ) from None
            acc._add(key, counts.reshape(2), sum_jtj, sum_j)
        return acc

    # ---- updates ----------------------------------------------------------------------------
    def _add(
        self, key: str, counts: torch.Tensor, sum_jtj: torch.Tensor, sum_j: torch.Tensor
    ) -> None:
        if self.device is None:
            self.device = sum_jtj.device
        if key not in self._state:
            d = sum_jtj.shape[-1]
            if sum_jtj.shape != (d, d) or sum_j.ndim != 2 or sum_j.shape[1] != d:
                raise NFMInputError(
                    f"partial sums for {key!r} have inconsistent shapes: sum_jtj "
                    f"{tuple(sum_jtj.shape)}, sum_j {tuple(sum_j.shape)}"
                )
            self._state[key] = [
                torch.zeros(2, dtype=torch.float64, device=self.device),
                torch.zeros(d, d, dtype=torch.float64, device=self.device),
                torch.zeros(sum_j.shape, dtype=torch.float64, device=self.device),
            ]
        c, s, j = self._state[key]
        if s.shape != sum_jtj.shape or j.shape != sum_j.shape:
            raise NFMInputError(
                f"cannot add partial sums for {key!r}: shapes sum_jtj {tuple(sum_jtj.shape)}, "
                f"sum_j {tuple(sum_j.shape)} differ from the accumulated {tuple(s.shape)}, "
                f"{tuple(j.shape)}"
            )
        c.add_(counts.to(c.device))
        s.add_(sum_jtj.to(s.device))
        j.add_(sum_j.to(j.device))

    def _add_gradients(self, key: str, grads: torch.Tensor, n_samples: int) -> None:
        """Add Jacobians laid out outputs first: ``grads`` is ``(k, n, p, d)``."""
        partial = _PartialSums()
        partial.add(grads, n_samples)
        partial.flush_into(self, key)

    def update(self, key: str, jacobians: Any) -> AGOPAccumulator:
        """Add per-sample Jacobians.

        Parameters
        ----------
        key : str
            Layer name or ``"input"``.
        jacobians : array or tensor, shape ``(n, k, d)`` or ``(n, p, k, d)``
            :math:`J(x_i)` for ``n`` samples (``k`` outputs, ``d`` features), optionally for
            ``p`` positions per sample (tokens, patches), each position one Jacobian.

        Returns
        -------
        self
        """
        t = to_tensor(jacobians, "jacobians")
        if not t.is_floating_point():
            t = t.to(torch.float64)
        if t.ndim == 3:
            t = t.unsqueeze(1)
        if t.ndim != 4:
            raise NFMInputError(
                f"jacobians must have shape (n, k, d) or (n, p, k, d); got {tuple(t.shape)}"
            )
        check_finite(t, "jacobians")
        n = t.shape[0]
        self._add_gradients(key, t.permute(2, 0, 1, 3).contiguous(), n)
        return self

    def merge(self, other: AGOPAccumulator) -> AGOPAccumulator:
        """Add ``other``'s partial sums into this accumulator (in place); return ``self``.

        Keys only in ``other`` are added; shapes of shared keys must agree.
        """
        if not isinstance(other, AGOPAccumulator):
            raise NFMInputError(f"other must be an AGOPAccumulator; got {type(other).__name__}")
        for key, (c, s, j) in other._state.items():
            self._add(key, c, s, j)
        return self

    # ---- results ----------------------------------------------------------------------------
    def result(
        self, centered: bool = False, dtype: torch.dtype | None = None
    ) -> dict[str, torch.Tensor]:
        r"""The AGOP (or centred AGOP) of every key, as float64 tensors (or ``dtype``).

        Centred: :math:`S / m - \bar J^T \bar J` with :math:`S = \sum_r J_r^T J_r`,
        :math:`\bar J = \frac{1}{m}\sum_r J_r`, :math:`m` = number of rows, computed in float64
        from float64 sums and symmetrised. The subtraction loses relative accuracy when the
        mean Jacobian dominates (error about :math:`\epsilon \lVert S/m \rVert`, with
        :math:`\epsilon` the precision the Jacobians were computed in); compute in float64
        (``dtype=torch.float64`` in :func:`compute_agop`) when that matters.
        """
        out: dict[str, torch.Tensor] = {}
        for key, (c, s, j) in self._state.items():
            m = float(c[1])
            if m <= 0:
                raise NFMInputError(f"no samples were accumulated under {key!r}")
            agop = s / m
            if centered:
                mean_j = j / m
                agop = agop - mean_j.T @ mean_j
            agop = 0.5 * (agop + agop.T)
            out[key] = agop if dtype is None else agop.to(dtype)
        return out


# Block width of the symmetric rank-k update: only the blocks on and above the diagonal are
# multiplied, about (1 + block / d) / 2 of the full product's multiply-adds.
_SYRK_BLOCK = 256


def _as_rows(grads: torch.Tensor) -> torch.Tensor:
    """Jacobian rows ``(m, d)`` of ``grads`` ``(k, n, p, d)`` without copying when possible.

    The row order does not matter for :math:`G^T G`, so any memory order of the leading
    dimensions is accepted (batched backward passes may return them permuted).
    """
    d = grads.shape[-1]
    if grads.stride(-1) == 1:
        lead = sorted(range(grads.ndim - 1), key=lambda i: grads.stride(i), reverse=True)
        permuted = grads.permute(*lead, grads.ndim - 1)
        if permuted.is_contiguous():
            return permuted.view(-1, d)
    return grads.reshape(-1, d)


def _add_upper_gram(buffer: torch.Tensor, rows: torch.Tensor) -> None:
    """``buffer += rows^T rows`` on and above the diagonal blocks (a blocked syrk).

    The blocks below the diagonal are left untouched; :func:`_symmetric_from_upper` completes
    the matrix. Every product is a matrix-matrix multiply (``addmm_`` straight into the
    buffer, no temporary).
    """
    d = rows.shape[1]
    if d < 2 * _SYRK_BLOCK:
        buffer.addmm_(rows.T, rows)
        return
    for lo in range(0, d, _SYRK_BLOCK):
        hi = min(lo + _SYRK_BLOCK, d)
        buffer[lo:hi, lo:].addmm_(rows[:, lo:hi].T, rows[:, lo:])


def _symmetric_from_upper(buffer: torch.Tensor) -> torch.Tensor:
    upper = torch.triu(buffer)
    return upper + torch.triu(buffer, diagonal=1).T


class _PartialSums:
    """Per-key sums of one pass, kept in the compute dtype and flushed to float64 regularly."""

    def __init__(self) -> None:
        self.gram: torch.Tensor | None = None
        self.sum_j: torch.Tensor | None = None
        self.n_samples = 0
        self.n_rows = 0
        self.pending = 0

    def add(self, grads: torch.Tensor, n_samples: int) -> None:
        """Add all ``k`` output rows of ``n_samples`` samples: ``grads`` is ``(k, n, p, d)``."""
        self.add_block(grads, 0, grads.shape[0])
        self.add_counts(n_samples, grads.shape[1] * grads.shape[2])

    def add_block(self, grads: torch.Tensor, first_output: int, n_outputs: int) -> None:
        """Add rows ``first_output ...`` of ``n_outputs``; ``grads`` is ``(k_block, n, p, d)``.

        The Gram matrix is additive over output rows, so output blocks need no concatenation.
        """
        if grads.dtype in (torch.float16, torch.bfloat16):  # sum half-precision Jacobians in fp32
            grads = grads.float()
        k_block, _, _, d = grads.shape
        if self.gram is None:
            self.gram = torch.zeros(d, d, dtype=grads.dtype, device=grads.device)
            self.sum_j = torch.zeros(n_outputs, d, dtype=grads.dtype, device=grads.device)
        _add_upper_gram(self.gram, _as_rows(grads))
        self.sum_j[first_output : first_output + k_block].add_(grads.sum(dim=(1, 2)))

    def add_counts(self, n_samples: int, n_rows: int) -> None:
        self.n_samples += n_samples
        self.n_rows += n_rows
        self.pending += 1

    def clone(self) -> _PartialSums:
        twin = _PartialSums()
        twin.gram = None if self.gram is None else self.gram.clone()
        twin.sum_j = None if self.sum_j is None else self.sum_j.clone()
        twin.n_samples, twin.n_rows, twin.pending = self.n_samples, self.n_rows, self.pending
        return twin

    def add_to(self, accumulator: AGOPAccumulator, key: str) -> None:
        """Add these sums to ``accumulator`` under ``key`` (in float64)."""
        if self.gram is None or self.pending == 0:
            return
        counts = torch.tensor([float(self.n_samples), float(self.n_rows)], dtype=torch.float64)
        accumulator._add(key, counts, _symmetric_from_upper(self.gram), self.sum_j)

    def reset(self) -> None:
        if self.gram is not None and self.sum_j is not None:
            self.gram.zero_()
            self.sum_j.zero_()
        self.n_samples = self.n_rows = self.pending = 0

    def flush_into(self, accumulator: AGOPAccumulator, key: str) -> None:
        self.add_to(accumulator, key)
        self.reset()


# --------------------------------------------------------------------------------------------
# Hooks
# --------------------------------------------------------------------------------------------


class _LayerInputPerturbation:
    """Forward pre-hooks adding a zero tensor (requires grad) to each selected layer's input.

    Registered on enter, removed on exit (also on error). While ``active`` is False the hooks
    do nothing. ``deltas`` maps layer name -> the zero tensor added in the current forward pass.
    Forward hooks also keep each layer's output while ``keep_outputs`` is set (to find layers
    whose output is the model output), and pre-hooks on every layer declaring ``in_features``
    record the last one entered (for error messages).
    """

    def __init__(self, model: nn.Module, layers: Mapping[str, nn.Module]) -> None:
        self.model = model
        self.layers = dict(layers)
        self.deltas: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self.active = False
        self.keep_outputs = False
        self.last_entered: tuple[str, nn.Module] | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> _LayerInputPerturbation:
        try:
            for name, module in self.layers.items():
                self._handles.append(module.register_forward_pre_hook(self._pre_hook(name)))
                self._handles.append(module.register_forward_hook(self._post_hook(name)))
            for name, module in self.model.named_modules():
                if isinstance(module, torch.jit.ScriptModule):
                    continue  # no Python hooks on TorchScript modules
                if layer_feature_count(module) is not None:
                    self._handles.append(module.register_forward_pre_hook(self._entry_hook(name)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.deltas.clear()
        self.outputs.clear()

    def _entry_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            self.last_entered = (name, module)

        return hook

    def _pre_hook(self, name: str) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> Any:
            if not self.active:
                return None
            if not args or not isinstance(args[0], torch.Tensor):
                raise LayerSelectionError(
                    f"layer {name!r} ({type(module).__name__}) was called without a tensor as "
                    "its first positional argument; the AGOP is taken with respect to that "
                    "argument"
                )
            h = args[0]
            if name in self.deltas:
                raise LayerSelectionError(
                    f"layer {name!r} ({type(module).__name__}) is called more than once in one "
                    "forward pass; the AGOP with respect to 'its input' is then ambiguous. "
                    "Select another layer"
                )
            if not h.is_floating_point():
                raise LayerSelectionError(
                    f"layer {name!r} ({type(module).__name__}) receives a {h.dtype} tensor; "
                    "gradients with respect to integer inputs do not exist. Select layers that "
                    "receive floating-point inputs"
                )
            if h.ndim < 2:
                raise LayerSelectionError(
                    f"layer {name!r} receives a tensor of shape {tuple(h.shape)}; expected a "
                    "batch dimension first and a feature dimension last"
                )
            delta = torch.zeros_like(h, requires_grad=True)
            self.deltas[name] = delta
            return (h + delta, *args[1:])

        return hook

    def _post_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if self.active and self.keep_outputs:
                self.outputs[name] = output

        return hook


class _ModelState:
    """Put a model in eval mode and restore every module's training flag afterwards."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._modes = {module: module.training for module in model.modules()}

    def __enter__(self) -> _ModelState:
        self.model.eval()
        return self

    def __exit__(self, *exc_info: object) -> None:
        for module, mode in self._modes.items():
            module.training = mode


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------


def _model_device_dtype(model: nn.Module) -> tuple[torch.device | None, torch.dtype | None]:
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    for tensor in [*model.parameters(), *model.buffers()]:
        return tensor.device, None
    return None, None


def _batch_input(batch: Any, index: int) -> Any:
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise NFMInputError(f"data batch {index} is an empty {type(batch).__name__}")
        return batch[0]
    if isinstance(batch, Mapping):
        raise NFMInputError(
            f"data batch {index} is a mapping (keys {list(batch)[:5]}); pass batches as "
            "tensors, arrays or (x, y) tuples"
        )
    return batch


def _iter_chunks(
    data: Any, chunk_size: int
) -> tuple[ArrayKind, int | None, Iterator[tuple[int, Any]]]:
    """Return (kind, total rows or None, iterator of (first row index, raw chunk))."""
    if isinstance(data, (torch.Tensor, np.ndarray)):
        if data.ndim == 0:
            raise NFMInputError(
                f"data must have a batch dimension first; got a scalar of type "
                f"{type(data).__name__}"
            )
        kind: ArrayKind = "torch" if isinstance(data, torch.Tensor) else "numpy"
        n = int(data.shape[0])

        def array_chunks() -> Iterator[tuple[int, Any]]:
            for start in range(0, n, chunk_size):
                yield start, data[start : start + chunk_size]

        return kind, n, array_chunks()
    if _is_nested_numbers(data):  # [[1.0, 2.0], [3.0, 4.0]]: one array, not batches
        return _iter_chunks(np.asarray(data), chunk_size)
    if isinstance(data, (str, bytes, Mapping)) or not isinstance(data, Iterable):
        raise NFMInputError(
            "data must be a tensor, a numpy array or an iterable of batches (tensors, arrays "
            f"or (x, y) tuples, e.g. a DataLoader); got {type(data).__name__}"
        )
    iterator = iter(data)
    try:
        first = next(iterator)
    except StopIteration:
        raise NFMInputError("data is empty: the iterable yielded no batch") from None
    first_x = _batch_input(first, 0)
    kind = "torch" if isinstance(first_x, torch.Tensor) else "numpy"
    total = None  # the number of rows of an iterable is not known up front

    def batch_chunks() -> Iterator[tuple[int, Any]]:
        start = 0
        for index, batch in enumerate(_chain_first(first, iterator)):
            x = _batch_input(batch, index)
            if not isinstance(x, torch.Tensor):
                x = to_tensor(x, f"data batch {index}")
            if x.ndim == 0:
                raise NFMInputError(f"data batch {index} is a scalar; expected a batch of samples")
            for offset in range(0, x.shape[0], chunk_size):
                yield start + offset, x[offset : offset + chunk_size]
            start += x.shape[0]

    return kind, total, batch_chunks()


def _is_nested_numbers(data: Any) -> bool:
    """A (nested) list of plain numbers, as opposed to a list of batches."""
    probe = data
    while isinstance(probe, list) and probe:
        probe = probe[0]
    return isinstance(data, list) and isinstance(probe, (int, float, np.number))


def _chain_first(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


def _prepare_chunk(
    raw: Any,
    start: int,
    *,
    device: torch.device,
    dtype: torch.dtype,
    needs_grad_input: bool,
) -> torch.Tensor:
    x = raw if isinstance(raw, torch.Tensor) else to_tensor(raw, "data")
    if x.ndim == 0:
        raise NFMInputError("data must have a batch dimension first")
    if x.is_complex():
        raise NFMInputError(f"data has complex dtype {x.dtype}; expected real numbers")
    if x.is_floating_point():
        x = x.detach().to(device=device, dtype=dtype)
    elif needs_grad_input:
        raise NFMInputError(
            f"data has dtype {x.dtype}: the AGOP with respect to the model input needs "
            "gradients, which integer or boolean inputs cannot carry. Cast the data to float "
            "(e.g. x.float() or x.astype(np.float32)), or pass include_input=False if the "
            "model embeds integer tokens"
        )
    else:
        x = x.detach().to(device=device)
    if x.is_floating_point():
        finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
        if not bool(finite.all()):
            rows = (~finite).nonzero().flatten()
            raise NFMInputError(
                f"data contains NaN or infinite values in {rows.numel()} row(s) of rows {start} "
                f"to {start + x.shape[0] - 1} (first bad row: {start + int(rows[0])}); remove "
                "or impute them first"
            )
    return x


def _projection(outputs: OutputSpec, n_outputs: int, dtype: torch.dtype, device: torch.device):
    """The (k, c) matrix P with AGOP of P f; rows of the identity for index selections."""
    if outputs is None:
        return torch.eye(n_outputs, dtype=dtype, device=device)
    if isinstance(outputs, (torch.Tensor, np.ndarray)) and np.ndim(outputs) == 2:
        p = to_tensor(outputs, "outputs").to(device=device, dtype=dtype)
        if p.shape[1] != n_outputs:
            raise NFMInputError(
                f"outputs projection matrix has shape {tuple(p.shape)}; expected (k, "
                f"{n_outputs}) for a model with {n_outputs} outputs"
            )
        check_finite(p, "outputs")
        return p
    if isinstance(outputs, (bool, np.bool_)):
        raise NFMInputError(f"outputs must be None, an int, ints or a matrix; got {outputs!r}")
    if isinstance(outputs, (int, np.integer)):
        indices = [int(outputs)]
    else:
        try:
            indices = [int(i) for i in outputs]  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise NFMInputError(
                "outputs must be None, an output index, a sequence of indices or a (k, c) "
                f"projection matrix; got {type(outputs).__name__}"
            ) from None
        if not indices:
            raise NFMInputError("outputs is an empty sequence; select at least one output")
    bad = [i for i in indices if not -n_outputs <= i < n_outputs]
    if bad:
        raise NFMInputError(
            f"outputs {bad} out of range for a model with {n_outputs} outputs "
            f"(valid: 0 to {n_outputs - 1})"
        )
    eye = torch.eye(n_outputs, dtype=dtype, device=device)
    return eye[torch.tensor(indices, device=device)]


def _check_sample_independence(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if module.running_mean is None:
                raise NFMInputError(
                    f"module {name!r} ({type(module).__name__}) has track_running_stats=False, "
                    "so it normalises with batch statistics even in eval mode and the samples "
                    "of a batch interact; the AGOP needs a per-sample function of the input"
                )
            if module.training:
                warnings.warn(
                    f"module {name!r} ({type(module).__name__}) is in training mode; the AGOP "
                    "is computed in eval mode, i.e. with its running statistics, not batch "
                    "statistics",
                    UserWarning,
                    stacklevel=4,
                )


def _is_same_tensor(a: Any, b: torch.Tensor) -> bool:
    if not isinstance(a, torch.Tensor):
        return False
    if a is b:
        return True
    return (
        a.numel() == b.numel()
        and a.device == b.device
        and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
        and a.storage_offset() == b.storage_offset()
        and a.is_contiguous()
        and b.is_contiguous()
    )


def _shape_error(
    exc: BaseException, x: torch.Tensor, hooks: _LayerInputPerturbation
) -> NFMInputError | None:
    message = str(exc)
    shape_words = ("shape", "size", "dimension", "mat1", "mat2")
    if not isinstance(exc, RuntimeError) or not any(w in message for w in shape_words):
        return None
    per_sample = tuple(x.shape[1:])
    where = ""
    if hooks.last_entered is not None:
        name, module = hooks.last_entered
        expected = layer_feature_count(module)
        label = "in_features" if hasattr(module, "in_features") else "in_channels"
        where = (
            f"; the forward failed in layer {name!r} ({type(module).__name__}), which expects "
            f"{label}={expected}"
        )
    first_line = message.strip().splitlines()[0] if message.strip() else type(exc).__name__
    return NFMInputError(
        f"data has shape {tuple(x.shape)} ({per_sample[-1] if per_sample else 1} features "
        f"per sample, sample shape {per_sample}){where}. The model raised: {first_line}"
    )


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------


def _functional_state(model: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        t = tensor.detach()
        if t.is_floating_point() and t.dtype != dtype:
            t = t.to(dtype)
        state[name] = t
    return state


class _AGOPRun:
    """One pass over the data: the state shared by the chunks."""

    def __init__(
        self,
        model: nn.Module,
        layers: dict[str, nn.Module],
        *,
        include_input: bool,
        outputs: OutputSpec,
        dtype: torch.dtype,
        device: torch.device,
        vectorize: bool,
        output_chunk_size: int | None,
        check_independence: bool,
    ) -> None:
        self.model = model
        self.layers = layers
        self.include_input = include_input
        self.outputs = outputs
        self.dtype = dtype
        self.device = device
        self.vectorize = vectorize
        self.output_chunk_size = output_chunk_size
        self.check_independence = check_independence
        self.scripted = isinstance(model, torch.jit.ScriptModule)
        _, model_dtype = _model_device_dtype(model)
        if self.scripted and model_dtype is not None and dtype != model_dtype:
            raise NFMInputError(
                f"dtype={dtype} differs from the TorchScript model's {model_dtype}; a "
                "TorchScript model cannot be run on cast copies of its parameters"
            )
        self.state = {} if self.scripted else _functional_state(model, dtype)
        self.projection: torch.Tensor | None = None
        self.n_outputs: int | None = None
        self.output_layers: set[str] = set()
        self.accumulator = AGOPAccumulator(device=device)
        self.chunks_done = 0
        self.flush_every = 8
        self.partials: dict[str, _PartialSums] = {}
        self.aliases: dict[str, str] = {}
        self.keys_in_order = ([INPUT_KEY] if include_input else []) + list(layers)

    def _forward(self, x: torch.Tensor) -> Any:
        if self.scripted:  # TorchScript: call as is (gradients asked for the inputs only)
            return self.model(x)
        return torch.func.functional_call(self.model, self.state, (x,))

    def process(self, x: torch.Tensor, start: int, hooks: _LayerInputPerturbation) -> None:
        b = x.shape[0]
        if b == 0:
            return
        first = self.chunks_done == 0
        hooks.deltas.clear()
        hooks.last_entered = None
        hooks.active = True
        hooks.keep_outputs = first
        try:
            with torch.enable_grad():
                x_in = x.requires_grad_(True) if self.include_input else x
                try:
                    out = self._forward(x_in)
                except (LayerSelectionError, NFMInputError):
                    raise
                except RuntimeError as exc:
                    wrapped = _shape_error(exc, x, hooks)
                    if wrapped is None:
                        raise
                    raise wrapped from None
        finally:
            hooks.active = False
        deltas = {name: hooks.deltas[name] for name in self.layers if name in hooks.deltas}
        missing = [name for name in self.layers if name not in deltas]
        if missing:
            raise LayerSelectionError(
                f"selected layer(s) {missing} were never called in the model's forward pass "
                f"(rows {start} to {start + b - 1}); select layers the forward uses"
            )
        flat = self._flat_output(out, b)
        if first:
            self.output_layers = {
                name for name, o in hooks.outputs.items() if _is_same_tensor(o, out)
            }
            hooks.outputs.clear()
            hooks.keep_outputs = False
            if self.check_independence and b >= 2:
                self._check_independence(x, flat, hooks)
        inputs: list[torch.Tensor] = []
        keys: list[str] = []
        if self.include_input:
            inputs.append(x_in)
            keys.append(INPUT_KEY)
        for name, delta in deltas.items():
            inputs.append(delta)
            keys.append(name)
        layouts = [
            _input_layout(t, b) if key == INPUT_KEY else _layer_layout(t, b, key)
            for key, t in zip(keys, inputs, strict=True)
        ]
        k = self.projection.shape[0]
        for index, (lo, grads) in enumerate(self._jacobian_blocks(flat, inputs, layouts, b)):
            self._accumulate(keys, grads, lo, k, establish=first and index == 0)
        for key, (positions, _) in zip(keys, layouts, strict=True):
            if key not in self.aliases:
                self.partials[key].add_counts(b, b * positions)
        self.chunks_done += 1
        if self.chunks_done % self.flush_every == 0:
            self.flush()

    def _accumulate(
        self, keys: list[str], grads: list[torch.Tensor], lo: int, k: int, establish: bool
    ) -> None:
        """Add one block of output rows of one chunk's Jacobians.

        A key whose gradient tensor *is* an earlier key's (the model input feeding only the
        first layer: autograd hands back one tensor for both) reuses that key's sums instead of
        repeating the same products; the relation is established on the first block and
        checked on every later one.
        """
        same_as: dict[str, str] = {}
        for i, (key, g) in enumerate(zip(keys, grads, strict=True)):
            for earlier, g_earlier in zip(keys[:i], grads[:i], strict=False):
                if g is g_earlier and earlier not in same_as:
                    same_as[key] = earlier
                    break
        if establish:
            self.aliases = dict(same_as)
        for key, source in list(self.aliases.items()):
            if same_as.get(key) != source:  # no longer identical: sums of its own from now on
                self.partials[key] = self.partials[source].clone()
                del self.aliases[key]
        for key, g in zip(keys, grads, strict=True):
            if key in self.aliases:
                continue
            self.partials.setdefault(key, _PartialSums()).add_block(g, lo, k)

    def flush(self) -> None:
        """Move the compute-dtype sums into the float64 accumulator (model order)."""
        for key in self.keys_in_order:
            source = self.aliases.get(key, key)
            if source in self.partials:
                self.partials[source].add_to(self.accumulator, key)
        for partial in self.partials.values():
            partial.reset()

    def _flat_output(self, out: Any, b: int) -> torch.Tensor:
        if not isinstance(out, torch.Tensor):
            raise NFMInputError(
                f"the model returned {type(out).__name__}; compute_agop needs a model whose "
                "forward returns one tensor of shape (batch, ...) (wrap it to pick the output)"
            )
        if out.ndim == 0 or out.shape[0] != b:
            raise NFMInputError(
                f"the model returned shape {tuple(out.shape)} for a batch of {b} samples; "
                "expected the batch dimension first"
            )
        if not out.is_floating_point():
            raise NFMInputError(f"the model returned a {out.dtype} tensor; expected floats")
        flat = out.reshape(b, -1)
        c = flat.shape[1]
        if self.n_outputs is None:
            self.n_outputs = c
            self.projection = _projection(self.outputs, c, flat.dtype, flat.device)
        elif c != self.n_outputs:
            raise NFMInputError(
                f"the model returned {c} outputs per sample for one chunk and "
                f"{self.n_outputs} for an earlier one"
            )
        return flat

    def _check_independence(
        self, x: torch.Tensor, flat: torch.Tensor, hooks: _LayerInputPerturbation
    ) -> None:
        with torch.no_grad():
            alone = self._forward(x[:1].detach()).reshape(1, -1)
        batched = flat[:1].detach()
        scale = float(batched.abs().max()) + float(alone.abs().max())
        # loose in low precision: batched and single-sample kernels (TF32, half) round
        # differently, while interacting samples change the output at order one
        rtol = 1e-8 if flat.dtype == torch.float64 else 1e-2
        tol = rtol * scale + torch.finfo(flat.dtype).tiny
        if float((alone - batched).abs().max()) > tol:
            raise NFMInputError(
                "the model's output for a sample changes with the other samples in its batch "
                "(sample 0 alone vs. in a batch differ); the AGOP needs samples that do not "
                "interact in eval mode (no batch statistics, no random layers). Pass "
                "check_independence=False to skip this check"
            )

    def _jacobian_blocks(
        self,
        flat: torch.Tensor,
        inputs: list[torch.Tensor],
        layouts: list[tuple[int, int]],
        b: int,
    ) -> Iterator[tuple[int, list[torch.Tensor]]]:
        """Yield (first output row, per input the Jacobians ``(k_block, b, p, d)`` of P f)."""
        projection = self.projection
        k, c = projection.shape
        per_sample = sum(t.numel() for t in inputs) // b
        block = self.output_chunk_size
        if block is None:
            budget = _JACOBIAN_ELEMENT_BUDGET * (4 if flat.device.type == "cuda" else 1)
            block = max(1, budget // max(1, b * per_sample))
        block = min(block, k)
        for lo in range(0, k, block):
            rows = projection[lo : lo + block]
            kb = rows.shape[0]
            if not flat.requires_grad:  # the output does not depend on any input
                yield (
                    lo,
                    [
                        torch.zeros(kb, b, *layout, dtype=flat.dtype, device=flat.device)
                        for layout in layouts
                    ],
                )
                continue
            # contiguous: an expanded (stride-0) cotangent sends the batched backward to bmm
            cotangents = rows[:, None, :].expand(kb, b, c).contiguous()
            grads = self._vjp(flat, inputs, cotangents)
            blocks = []
            for g, t, layout in zip(grads, inputs, layouts, strict=True):
                if g is None:  # the output does not depend on this input
                    g = torch.zeros((kb, *t.shape), dtype=t.dtype, device=t.device)
                blocks.append(g.reshape(kb, b, *layout))
            yield lo, blocks

    def _vjp(
        self,
        flat: torch.Tensor,
        inputs: list[torch.Tensor],
        cotangents: torch.Tensor,
    ) -> Sequence[torch.Tensor | None]:
        if self.vectorize:
            try:
                return torch.autograd.grad(
                    flat,
                    inputs,
                    grad_outputs=cotangents,
                    retain_graph=True,
                    allow_unused=True,
                    is_grads_batched=True,
                )
            except RuntimeError as exc:  # a backward op without a batching rule
                logger.info("batched backward failed (%s); using a loop over outputs", exc)
                self.vectorize = False
        columns: list[list[torch.Tensor | None]] = [[] for _ in inputs]
        for j in range(cotangents.shape[0]):
            grads = torch.autograd.grad(
                flat, inputs, grad_outputs=cotangents[j], retain_graph=True, allow_unused=True
            )
            for i, g in enumerate(grads):
                columns[i].append(g)
        result: list[torch.Tensor | None] = []
        for i, t in enumerate(inputs):
            gs = [g if g is not None else torch.zeros_like(t) for g in columns[i]]
            result.append(torch.stack(gs))
        return result


def _layer_layout(t: torch.Tensor, b: int, name: str) -> tuple[int, int]:
    """(positions, features) per sample of a layer input ``t`` holding ``b`` samples.

    The feature dimension is the last one; every other entry of the ``b`` samples' input is a
    position. Only the total count matters for the sums, so a sequence-first layout
    ``(T, b, d)`` gives the same AGOP as ``(b, T, d)``.
    """
    d = t.shape[-1]
    positions, remainder = divmod(t.numel(), max(1, b * d))
    if remainder or positions == 0:
        raise LayerSelectionError(
            f"layer {name!r} receives a tensor of shape {tuple(t.shape)}, which does not hold "
            f"{b} samples of {d} features (feature dimension last)"
        )
    return positions, d


def _input_layout(t: torch.Tensor, b: int) -> tuple[int, int]:
    """The model input is one flattened vector per sample."""
    return 1, t.numel() // b


def accumulate_agop(
    model: nn.Module,
    data: Any,
    *,
    layers: LayerSpec | Sequence[LayerSpec] | None = None,
    include_input: bool = True,
    outputs: OutputSpec = None,
    dtype: torch.dtype | None = None,
    chunk_size: int = 256,
    output_chunk_size: int | None = None,
    vectorize: bool = True,
    check_independence: bool = True,
    accumulator: AGOPAccumulator | None = None,
    verbose: bool = False,
) -> AGOPAccumulator:
    """Partial sums of the AGOP of every selected layer over ``data`` (see :func:`compute_agop`).

    Returns an :class:`AGOPAccumulator` (``accumulator`` itself when given, updated in place),
    so that results over several data shards or processes can be merged before
    :meth:`AGOPAccumulator.result` is called. Arguments as in :func:`compute_agop`.
    """
    acc, _, _ = _run(
        model,
        data,
        layers=layers,
        include_input=include_input,
        outputs=outputs,
        dtype=dtype,
        chunk_size=chunk_size,
        output_chunk_size=output_chunk_size,
        vectorize=vectorize,
        check_independence=check_independence,
        verbose=verbose,
    )
    if accumulator is not None:
        return accumulator.merge(acc)
    return acc


def _run(
    model: nn.Module,
    data: Any,
    *,
    layers: LayerSpec | Sequence[LayerSpec] | None,
    include_input: bool,
    outputs: OutputSpec,
    dtype: torch.dtype | None,
    chunk_size: int,
    output_chunk_size: int | None,
    vectorize: bool,
    check_independence: bool,
    verbose: bool,
) -> tuple[AGOPAccumulator, ArrayKind, _AGOPRun]:
    if not isinstance(model, nn.Module):
        raise NFMInputError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, (int, np.integer))
        or chunk_size < 1
    ):
        raise NFMInputError(f"chunk_size must be a positive integer; got {chunk_size!r}")
    if output_chunk_size is not None and (
        isinstance(output_chunk_size, bool)
        or not isinstance(output_chunk_size, (int, np.integer))
        or output_chunk_size < 1
    ):
        raise NFMInputError(
            f"output_chunk_size must be None or a positive integer; got {output_chunk_size!r}"
        )
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise NFMInputError(f"dtype must be a floating torch.dtype or None; got {dtype!r}")
    if isinstance(layers, Sequence) and not isinstance(layers, str) and len(layers) == 0:
        selected: dict[str, nn.Module] = {}  # layers=[]: only the input AGOP
    elif layers is None and include_input:
        selected = _default_layers(model)
    else:
        selected = select_layers(model, layers)
    scripted = isinstance(model, torch.jit.ScriptModule)
    if scripted and selected:
        raise LayerSelectionError(
            f"model is a TorchScript module and TorchScript does not run Python hooks, so the "
            f"AGOP of its layers {list(selected)} cannot be taken. Load the weights into the "
            "eager nn.Module class (model.load_state_dict) for layer AGOPs, or pass layers=[] "
            "for the input AGOP alone"
        )
    if not selected and not include_input:
        raise LayerSelectionError("no layer selected and include_input=False: nothing to compute")
    _check_sample_independence(model)
    model_device, model_dtype = _model_device_dtype(model)
    kind, total, chunks = _iter_chunks(data, int(chunk_size))
    compute_dtype = dtype or model_dtype
    run: _AGOPRun | None = None
    n_seen = 0
    with _ModelState(model), _LayerInputPerturbation(model, selected) as hooks:
        bar = tqdm(total=total, disable=not verbose, desc="AGOP", unit="sample")
        try:
            for start, raw in chunks:
                raw_t = raw if isinstance(raw, torch.Tensor) else to_tensor(raw, "data")
                if run is None:
                    device = model_device or raw_t.device
                    if compute_dtype is None:
                        compute_dtype = (
                            raw_t.dtype if raw_t.is_floating_point() else torch.get_default_dtype()
                        )
                    run = _AGOPRun(
                        model,
                        selected,
                        include_input=include_input,
                        outputs=outputs,
                        dtype=compute_dtype,
                        device=device,
                        vectorize=vectorize,
                        output_chunk_size=output_chunk_size,
                        check_independence=check_independence,
                    )
                x = _prepare_chunk(
                    raw_t,
                    start,
                    device=run.device,
                    dtype=run.dtype,
                    needs_grad_input=include_input,
                )
                run.process(x, start, hooks)
                n_seen += x.shape[0]
                bar.update(x.shape[0])
        finally:
            bar.close()
    if run is None or n_seen == 0:
        shape = tuple(data.shape) if isinstance(data, (torch.Tensor, np.ndarray)) else None
        raise NFMInputError(
            "data is empty: no samples to average over"
            + (f" (got shape {shape})" if shape is not None else "")
        )
    run.flush()
    return run.accumulator, kind, run


def _default_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every nn.Linear; none (only the input AGOP) when the model has no nn.Linear below root."""
    try:
        return select_layers(model, None)
    except LayerSelectionError:
        return {}


def compute_agop(
    model: nn.Module,
    data: Any,
    *,
    layers: LayerSpec | Sequence[LayerSpec] | None = None,
    include_input: bool = True,
    outputs: OutputSpec = None,
    centered: bool = False,
    dtype: torch.dtype | None = None,
    chunk_size: int = 256,
    batch_size: int | None = None,
    output_chunk_size: int | None = None,
    vectorize: bool = True,
    check_independence: bool = True,
    verbose: bool = False,
) -> dict[str, Any]:
    r"""AGOP with respect to the input of every selected layer (and of the model), in one pass.

    .. math::

        \mathrm{AGOP}_l = \frac{1}{n} \sum_{i=1}^{n} J_l(x_i)^T J_l(x_i), \qquad
        J_l(x) = \frac{\partial\, P f(x)}{\partial h_{l-1}(x)} \in \mathbb{R}^{k \times d_l},

    where :math:`h_{l-1}(x)` is the first positional input of layer :math:`l` and :math:`P` the
    output selection (identity by default: the sum over all outputs). With ``centered=True``,
    :math:`\frac{1}{n}\sum_i (J_i - \bar J)^T (J_i - \bar J)` with :math:`\bar J` the mean
    Jacobian.

    Conventions:

    * **Extra dimensions.** A layer input of shape ``(batch, t_1, ..., d)`` has feature
      dimension ``d`` (last) and ``t_1 * ...`` positions (tokens); the Jacobian of each position
      is one term and the average runs over samples and positions
      (:math:`\frac{1}{n T}\sum_i\sum_t J_{i,t}^T J_{i,t}`). The model input is taken as one
      flattened vector per sample (an image ``(C, H, W)`` gives a ``C H W`` square AGOP).
    * **Outputs.** The model output is flattened per sample to ``c`` entries.
    * **Samples must not interact.** The Jacobians of a whole chunk come from one backward pass
      over the summed outputs, which is exact only when each output depends on its own sample
      alone. The model is put in eval mode for the computation (dropout off, batch-norm on its
      running statistics) and every module's mode is restored afterwards. A batch-norm layer
      in training mode triggers a warning (its running statistics are used); batch-norm with
      ``track_running_stats=False`` is an error; and with ``check_independence`` the first
      sample is also run alone and compared with its output inside the batch.
    * **The model is left unchanged**: no parameter, flag or hook is touched; the computation
      runs on detached (and, for ``dtype``, cast) copies of the parameters through
      :func:`torch.func.functional_call`, and the hooks are removed even on error.

    Parameters
    ----------
    model : nn.Module
        Any module whose forward takes one batch tensor and returns one tensor
        ``(batch, ...)``.
    data : tensor, numpy array or iterable of batches
        Samples along the first dimension; an iterable (e.g. a DataLoader) yields tensors,
        arrays or tuples whose first element is the input.
    layers : LayerSpec or sequence of LayerSpec, optional
        Which layers (see :func:`nfm.layers.select_layers`); default every ``nn.Linear``.
    include_input : bool
        Also return the AGOP with respect to the model input, under key ``"input"`` (first).
    outputs : None, int, sequence of int, or (k, c) matrix
        ``None``: sum over all ``c`` outputs; an int: that output only; a sequence: those
        outputs; a matrix :math:`P`: the AGOP of :math:`P f`.
    centered : bool
        Subtract the mean Jacobian (see :meth:`AGOPAccumulator.result` on accuracy).
    dtype : torch.dtype, optional
        Compute dtype (default: the model's). The model itself is never cast.
    chunk_size : int
        Samples per chunk; memory grows with ``chunk_size * k * sum_l d_l`` and not with the
        number of samples. On a GPU, 1024 to 4096 is usually faster than the default.
    batch_size : int, optional
        Accepted for symmetry with training code: when given, it is used as ``chunk_size``.
    output_chunk_size : int, optional
        Outputs per backward pass (default: as many as fit in about 2**26 Jacobian entries,
        2**28 on CUDA); each block's products go straight into the sums.
    vectorize : bool
        Batch the ``k`` vector-Jacobian products with vmap (``is_grads_batched``); False loops
        over outputs (also the automatic fallback when an op has no batching rule).
    check_independence : bool
        Compare the first sample's output alone and in its batch (one extra tiny forward).
    verbose : bool
        Show a progress bar.

    Returns
    -------
    dict[str, matrix]
        ``{"input": ..., layer name: ...}`` in model order; ``(d_l, d_l)`` matrices in the
        compute dtype on the model's device, numpy arrays when the data was numpy.

    Raises
    ------
    NFMInputError
        Empty data, NaN/inf in the data, integer data with ``include_input``, data whose shape
        the model rejects (the message names the data shape and the layer's expected features).
    LayerSelectionError
        Unknown layer names, or a selected layer the forward pass never calls.
    """
    if batch_size is not None:
        chunk_size = batch_size
    acc, kind, run = _run(
        model,
        data,
        layers=layers,
        include_input=include_input,
        outputs=outputs,
        dtype=dtype,
        chunk_size=chunk_size,
        output_chunk_size=output_chunk_size,
        vectorize=vectorize,
        check_independence=check_independence,
        verbose=verbose,
    )
    result = acc.result(centered=centered, dtype=run.dtype)
    return {key: restore_kind(value, kind) for key, value in result.items()}


def compute_nfm(
    model: nn.Module,
    layers: LayerSpec | Sequence[LayerSpec] | None = None,
    *,
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    r"""Neural feature matrix :math:`\mathrm{NFM}_l = W_l^T W_l` of every selected layer.

    The bias is excluded: the NFM describes how the layer weighs directions of its input.
    For a convolution the weight is reshaped to ``(C_out, C_in * kh * kw)`` first (the filter
    covariance). Keys match :func:`compute_agop` (no ``"input"`` key: the input has no weight).

    Parameters
    ----------
    model : nn.Module
    layers : LayerSpec or sequence, optional
        Default every ``nn.Linear``. Every selected module must have a 2-D or higher ``weight``.
    dtype : torch.dtype, optional
        Result dtype (default the weight's).

    Returns
    -------
    dict[str, torch.Tensor]
        ``(d_l, d_l)`` tensors on the weights' device, detached.
    """
    selected = select_layers(model, layers)
    result: dict[str, torch.Tensor] = {}
    for name, module in selected.items():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.ndim < 2:
            raise LayerSelectionError(
                f"layer {name!r} ({type(module).__name__}) has no weight matrix; the NFM "
                "W^T W is defined for nn.Linear (and convolution) layers"
            )
        w = weight.detach().reshape(weight.shape[0], -1)
        if dtype is not None:
            w = w.to(dtype)
        result[name] = w.T @ w
    return result
