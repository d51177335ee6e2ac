r"""The gradient engine: Jacobians of the model output with respect to every selected layer input.

For a chunk of :math:`b` samples, one forward pass (through :func:`torch.func.functional_call` on
detached parameters, with :class:`~nfm.models.hooks.LayerInputPerturbation` exposing the layer
inputs) and :math:`k` vector-Jacobian products batched over the rows of the output projection
:math:`P` give :math:`P J_l(x_i)` for every sample and every selected layer at once. The batching
is ``torch.autograd.grad(..., is_grads_batched=True)``, which vmaps the *backward pass* over the
``k`` cotangents (one forward, one batched backward); it is not ``torch.func.vmap(jacrev)``. When
an op has no batching rule the engine loops over the ``k`` cotangents instead. This is exact
when the samples of a batch do not interact (eval mode); the first chunk checks it.

Each layer's adapter (:func:`nfm.models.adapters.adapter_for`) says how its input is laid out as
``(batch, positions, features)``; the model input is one flattened vector per sample. Each block
of Jacobians goes straight into :class:`~nfm.features.accumulator.PartialSums`. When two keys get
the very same Jacobians -- autograd returns one gradient tensor for the model input and for the
input of a first layer that receives it unchanged -- the products are done once and the sums
shared (:meth:`AGOPPass._accumulate`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from nfm.exceptions import LayerSelectionError, NFMInputError
from nfm.features.accumulator import AGOPAccumulator, PartialSums
from nfm.features.outputs import GaussianSketch, OutputSpec, output_projection
from nfm.models.adapters import InputLayout, adapter_for
from nfm.models.adapters.probes import InputProbe, LayerProbe
from nfm.models.hooks import LayerInputPerturbation
from nfm.models.selection import INPUT_KEY
from nfm.models.state import model_device_dtype

logger = logging.getLogger(__name__)

__all__ = ["AGOPPass", "functional_state", "is_same_tensor"]


# Largest number of Jacobian entries (outputs x samples x features) held at once when the
# outputs are processed in blocks automatically (2**26 float32 entries = 256 MiB; four times
# that on CUDA devices).
_JACOBIAN_ELEMENT_BUDGET = 2**26


def is_same_tensor(a: Any, b: torch.Tensor) -> bool:
    """Whether ``a`` is ``b`` or a contiguous tensor over the same memory (e.g. a reshape of it).

    Same storage, same offset, same number of entries and both contiguous: the same numbers in
    the same order, whatever the shapes.
    """
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
    exc: BaseException, x: torch.Tensor, hooks: LayerInputPerturbation
) -> NFMInputError | None:
    message = str(exc)
    shape_words = ("shape", "size", "dimension", "mat1", "mat2")
    if not isinstance(exc, RuntimeError) or not any(w in message for w in shape_words):
        return None
    per_sample = tuple(x.shape[1:])
    where = ""
    if hooks.last_entered is not None:
        name, module = hooks.last_entered
        expected = adapter_for(module).expected_input(module)
        where = f"; the forward failed in layer {name!r} ({type(module).__name__})"
        if expected is not None:
            where += f", which expects {expected}"
    first_line = message.strip().splitlines()[0] if message.strip() else type(exc).__name__
    return NFMInputError(
        f"data has shape {tuple(x.shape)} ({per_sample[-1] if per_sample else 1} features "
        f"per sample, sample shape {per_sample}){where}. The model raised: {first_line}"
    )


def functional_state(model: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        t = tensor.detach()
        if t.is_floating_point() and t.dtype != dtype:
            t = t.to(dtype)
        state[name] = t
    return state


class AGOPPass:
    """One pass over the data: the state shared by the chunks."""

    def __init__(
        self,
        model: nn.Module,
        layers: dict[str, nn.Module],
        probes: Mapping[str, LayerProbe],
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
        _, model_dtype = model_device_dtype(model)
        if self.scripted and model_dtype is not None and dtype != model_dtype:
            raise NFMInputError(
                f"dtype={dtype} differs from the TorchScript model's {model_dtype}; a "
                "TorchScript model cannot be run on cast copies of its parameters"
            )
        self.state = {} if self.scripted else functional_state(model, dtype)
        self.projection: torch.Tensor | None = None
        self.n_rows = 0  # output rows k: of the projection, or the sketch's probes
        self.n_outputs: int | None = None
        self.output_layers: set[str] = set()
        self.accumulator = AGOPAccumulator(device=device)
        self.chunks_done = 0
        self.flush_every = 8
        self.partials: dict[str, PartialSums] = {}
        self.aliases: dict[str, str] = {}
        self.positions: dict[str, int] = {}  # result key -> positions per sample (this chunk)
        self.keys_in_order = [INPUT_KEY] if include_input else []
        self.keys_in_order += [key for probe in probes.values() for key in probe.result_keys]
        self.probe_of = {key: probe for probe in probes.values() for key in probe.result_keys}

    def _forward(self, x: torch.Tensor) -> Any:
        if self.scripted:  # TorchScript: call as is (gradients asked for the inputs only)
            return self.model(x)
        return torch.func.functional_call(self.model, self.state, (x,))

    def process(self, x: torch.Tensor, start: int, hooks: LayerInputPerturbation) -> None:
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
        missing = [
            name
            for name, probe in hooks.probes.items()
            if not all(key in hooks.deltas for key in probe.tensor_keys)
        ]
        if missing:
            raise LayerSelectionError(
                f"selected layer(s) {missing} were never called in the model's forward pass "
                f"(rows {start} to {start + b - 1}); select layers the forward uses"
            )
        out = _model_output_tensor(out)
        flat = self._flat_output(out, b)
        if first:
            self.output_layers = {
                name for name, o in hooks.outputs.items() if is_same_tensor(o, out)
            }
            hooks.outputs.clear()
            hooks.keep_outputs = False
            if self.check_independence and b >= 2:
                self._check_independence(x, flat, hooks)
        # the tensors differentiated with respect to, and how their gradients become rows
        inputs: list[torch.Tensor] = []
        owners: list[str | None] = []  # None: the model input; else the layer whose probe it is
        if self.include_input:
            inputs.append(x_in)
            owners.append(None)
        for name, probe in hooks.probes.items():
            for key in probe.tensor_keys:
                inputs.append(hooks.deltas[key])
                owners.append(name)
        layouts = [
            _input_layout(t, b) if owner is None else _identity_layout(hooks.probes[owner], t, b)
            for owner, t in zip(owners, inputs, strict=True)
        ]
        k = self.n_rows
        for index, (lo, grads, duplicates) in enumerate(
            self._jacobian_blocks(flat, inputs, layouts, b, start)
        ):
            key_of = [INPUT_KEY if owner is None else owner for owner in owners]
            duplicate_keys = {key_of[i]: key_of[j] for i, j in duplicates.items()}
            rows = self._rows(hooks, owners, inputs, grads, b)
            self._accumulate(rows, duplicate_keys, lo, k, establish=first and index == 0)
        for key, positions in self.positions.items():
            if key not in self.aliases:
                self.partials[key].add_counts(b, b * positions)
        self.chunks_done += 1
        if self.chunks_done % self.flush_every == 0:
            self.flush()

    def _rows(
        self,
        hooks: LayerInputPerturbation,
        owners: list[str | None],
        inputs: list[torch.Tensor],
        grads: list[torch.Tensor],
        b: int,
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(result key, rows (k, b, positions, features))`` for one block of outputs.

        Rows are produced lazily, one key at a time, so a layer split into many heads holds one
        head's rows at once.
        """
        by_owner: dict[str | None, dict[str, torch.Tensor]] = {}
        for owner, t, g in zip(owners, inputs, grads, strict=True):
            if owner is None:
                yield INPUT_KEY, _input_layout(t, b).jacobian_rows(g, b)
                continue
            by_owner.setdefault(owner, {})
            probe = hooks.probes[owner]
            by_owner[owner][probe.tensor_keys[len(by_owner[owner])]] = g
            if len(by_owner[owner]) == len(probe.tensor_keys):
                yield from probe.rows(by_owner.pop(owner), b)

    def _accumulate(
        self,
        rows: Iterator[tuple[str, torch.Tensor]],
        duplicates: dict[str, str],
        lo: int,
        k: int,
        establish: bool,
    ) -> None:
        """Add one block of output rows of one chunk's Jacobians.

        ``duplicates`` maps a key to an earlier key whose Jacobians in this block are the same
        numbers in the same layout (found by :func:`_duplicate_jacobians` before any reshape):
        the model input feeding only the first layer, for which autograd returns one gradient
        tensor. Such a key shares the earlier key's sums instead of repeating the Gram and mean
        products. The sharing is established on the first block of the first chunk and checked
        on every later block; a key whose Jacobians stop being identical gets a copy of the
        shared sums so far and sums of its own from then on.
        """
        if establish:
            self.aliases = dict(duplicates)
        for key, source in list(self.aliases.items()):
            if duplicates.get(key) != source:  # no longer identical: sums of its own from now on
                self.partials[key] = self.partials[source].clone()
                del self.aliases[key]
        for key, g in rows:
            if lo == 0:
                self.positions[key] = g.shape[2]
            if key in self.aliases:
                continue
            self.partials.setdefault(key, PartialSums()).add_block(g, lo, k)

    def flush(self) -> None:
        """Move the compute-dtype sums into the float64 accumulator (model order)."""
        for key in self.keys_in_order:
            source = self.aliases.get(key, key)
            if source in self.partials:
                probe = self.probe_of.get(source)
                transform = None if probe is None else probe.transform(source)
                self.partials[source].add_to(self.accumulator, key, transform)
        for partial in self.partials.values():
            partial.reset()

    def _flat_output(self, out: Any, b: int) -> torch.Tensor:
        out = _model_output_tensor(out)
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
            if isinstance(self.outputs, GaussianSketch):
                self.n_rows = self.outputs.k
            else:
                self.projection = output_projection(self.outputs, c, flat.dtype, flat.device)
                self.n_rows = self.projection.shape[0]
        elif c != self.n_outputs:
            raise NFMInputError(
                f"the model returned {c} outputs per sample for one chunk and "
                f"{self.n_outputs} for an earlier one"
            )
        return flat

    def _check_independence(
        self, x: torch.Tensor, flat: torch.Tensor, hooks: LayerInputPerturbation
    ) -> None:
        with torch.no_grad():
            alone = _model_output_tensor(self._forward(x[:1].detach())).reshape(1, -1)
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
        layouts: list[InputLayout | None],
        b: int,
        start: int,
    ) -> Iterator[tuple[int, list[torch.Tensor], dict[int, int]]]:
        """Yield, per block of output rows, (first output row, gradients, duplicates).

        The gradients of ``P f`` are one ``(k_block, *input shape)`` tensor per input;
        ``duplicates`` maps the index of an input to that of an earlier one whose gradients are
        the same tensor memory with the same row layout (detected on autograd's own tensors;
        only inputs whose rows are their gradients reshaped, ``layouts[i]`` not None, qualify).
        """
        k, c = self.n_rows, flat.shape[1]
        sketch = self.outputs if isinstance(self.outputs, GaussianSketch) else None
        probes = None if sketch is None else sketch.probes(start, b, c, flat.dtype, flat.device)
        per_sample = sum(t.numel() for t in inputs) // b
        block = self.output_chunk_size
        if block is None:
            budget = _JACOBIAN_ELEMENT_BUDGET * (4 if flat.device.type == "cuda" else 1)
            block = max(1, budget // max(1, b * per_sample))
        block = min(block, k)
        for lo in range(0, k, block):
            kb = min(block, k - lo)
            if not flat.requires_grad:  # the output does not depend on any input
                zeros = [
                    torch.zeros((kb, *t.shape), dtype=t.dtype, device=t.device) for t in inputs
                ]
                yield lo, zeros, {}
                continue
            # contiguous: an expanded (stride-0) cotangent sends the batched backward to bmm
            if probes is not None:  # per-sample random probes
                cotangents = probes[lo : lo + kb].contiguous()
            else:
                cotangents = self.projection[lo : lo + kb, None, :].expand(kb, b, c).contiguous()
            grads = [
                torch.zeros((kb, *t.shape), dtype=t.dtype, device=t.device) if g is None else g
                for g, t in zip(self._vjp(flat, inputs, cotangents), inputs, strict=True)
            ]
            yield lo, grads, _duplicate_jacobians(grads, layouts)

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
            twin = next(
                (
                    j
                    for j in range(i)
                    if all(
                        a is not None and c is not None and _same_memory(a, c)
                        for a, c in zip(columns[i], columns[j], strict=True)
                    )
                ),
                None,
            )
            if twin is not None:  # autograd handed back the same gradients: keep them shared
                result.append(result[twin].reshape(cotangents.shape[0], *t.shape))
                continue
            gs = [g if g is not None else torch.zeros_like(t) for g in columns[i]]
            result.append(torch.stack(gs))
        return result


def _model_output_tensor(out: Any) -> torch.Tensor:
    """The tensor the AGOP is of: ``out`` itself, or the ``logits`` of a ``ModelOutput``.

    Hugging Face models return a ``ModelOutput`` (a dict subclass with attributes); any object
    or mapping with a ``logits`` tensor is read as its logits.
    """
    if isinstance(out, torch.Tensor):
        return out
    logits = out.get("logits") if isinstance(out, dict) else getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    fields = f" (fields: {sorted(out.keys())})" if isinstance(out, dict) else ""
    raise NFMInputError(
        f"the model returned {type(out).__name__}{fields}; compute_agop needs a model whose "
        "forward returns one tensor of shape (batch, ...), or an output with a 'logits' tensor "
        "(wrap the model to pick the output, e.g. a hidden state or one token position)"
    )


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` hold the same numbers in the same memory order.

    True for the same object, for tensors over the same storage with the same offset, shape
    and strides, and for contiguous tensors over the same storage and offset with the same
    number of entries (a reshape).
    """
    if a is b:
        return True
    if a.device != b.device or a.dtype != b.dtype or a.numel() != b.numel():
        return False
    if a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False
    if a.storage_offset() != b.storage_offset():
        return False
    if a.shape == b.shape and a.stride() == b.stride():
        return True
    return a.is_contiguous() and b.is_contiguous()


def _duplicate_jacobians(
    grads: Sequence[torch.Tensor], layouts: Sequence[InputLayout | None]
) -> dict[int, int]:
    """``{i: j}`` for each input ``i`` whose Jacobian rows are those of an earlier input ``j``.

    Rows are identical when the layouts are equal and the gradient tensors are the same memory
    (:func:`_same_memory`); with the features on another axis than the last, the shapes must
    agree too (the rows then depend on the shape). ``j`` is the first such input, so it is
    never itself a duplicate.
    """
    duplicates: dict[int, int] = {}
    for i, (g, layout) in enumerate(zip(grads, layouts, strict=True)):
        if layout is None:
            continue
        for j in range(i):
            if (
                layouts[j] == layout
                and (layout.feature_axis is None or grads[j].shape == g.shape)
                and _same_memory(grads[j], g)
            ):
                duplicates[i] = j
                break
    return duplicates


def _identity_layout(probe: LayerProbe, t: torch.Tensor, b: int) -> InputLayout | None:
    """The row layout of an input probe's delta (rows = its gradient, reshaped), else None.

    Raises :class:`~nfm.exceptions.LayerSelectionError` for a layout the adapter does not
    support (see :meth:`nfm.models.adapters.LayerAdapter.input_layout`).
    """
    if isinstance(probe, InputProbe):
        return probe.layout(tuple(t.shape), b)
    return None


def _input_layout(t: torch.Tensor, b: int) -> InputLayout:
    """The model input is one flattened vector per sample."""
    return InputLayout(1, t.numel() // b)
