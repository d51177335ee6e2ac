r"""AGOP of every selected layer and of the model input, in one pass over the data.

.. math::

    \mathrm{AGOP}_l = \frac{1}{n} \sum_{i=1}^n J_l(x_i)^T J_l(x_i), \qquad
    J_l(x) = \frac{\partial f(x)}{\partial h_{l-1}(x)},

the Jacobian of the output with respect to the input of layer :math:`l` (the rest of the network
held fixed); centred: :math:`\frac1n \sum_i (J_l(x_i) - \bar J_l)^T (J_l(x_i) - \bar J_l)`.
:func:`accumulate_agop` returns the mergeable partial sums, :func:`compute_agop` the matrices.
``docs/feature-matrices.md`` states every convention.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from nfm._utils.arrays import ArrayKind, restore_kind, to_tensor
from nfm.distributed.models import reject_sharded, unwrap_data_parallel
from nfm.exceptions import LayerSelectionError, NFMInputError
from nfm.features.accumulator import AGOPAccumulator
from nfm.features.data import iter_chunks, prepare_chunk
from nfm.features.jacobians import AGOPPass
from nfm.features.outputs import OutputSpec, check_sketch_not_centered
from nfm.models.hooks import LayerInputPerturbation
from nfm.models.selection import (
    HeadsSpec,
    LayerSpec,
    lift_attention_projections,
    resolve_heads,
    select_layers,
)
from nfm.models.state import ModelState, check_sample_independence, model_device_dtype

__all__ = ["accumulate_agop", "compute_agop", "run_agop_pass"]


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
    heads: HeadsSpec = None,
    verbose: bool = False,
    process_group: Any = None,
) -> AGOPAccumulator:
    """Partial sums of the AGOP of every selected layer over ``data`` (see :func:`compute_agop`).

    Returns an :class:`AGOPAccumulator` (``accumulator`` itself when given, updated in place),
    so that results over several data shards or processes can be merged before
    :meth:`AGOPAccumulator.result` is called. Arguments as in :func:`compute_agop`; with a
    ``process_group`` the sums of this call's data are reduced over the group first and then
    merged into ``accumulator``.
    """
    acc, _, _ = run_agop_pass(
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
        heads=heads,
        process_group=process_group,
    )
    if accumulator is not None:
        return accumulator.merge(acc)
    return acc


def run_agop_pass(
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
    heads: HeadsSpec = None,
    process_group: Any = None,
    allow_empty: bool = False,
) -> tuple[AGOPAccumulator, ArrayKind, AGOPPass]:
    if process_group is not None:  # this rank's pass, then one checked all-reduce
        from nfm.distributed.agop import distributed_agop_pass

        return distributed_agop_pass(
            model,
            data,
            process_group=process_group,
            dtype=dtype,
            layers=layers,
            include_input=include_input,
            outputs=outputs,
            chunk_size=chunk_size,
            output_chunk_size=output_chunk_size,
            vectorize=vectorize,
            check_independence=check_independence,
            verbose=verbose,
            heads=heads,
        )
    if not isinstance(model, nn.Module):
        raise NFMInputError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    reject_sharded(model)  # FSDP: see nfm.distributed.full_replica
    forward_model = unwrap_data_parallel(model)  # DDP's own forward would add collectives
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
    check_sample_independence(model)
    model_device, model_dtype = model_device_dtype(model)
    kind, total, chunks = iter_chunks(data, int(chunk_size), allow_empty=allow_empty)
    compute_dtype = dtype or model_dtype
    run: AGOPPass | None = None
    n_seen = 0
    selected = lift_attention_projections(model, selected)
    head_splits = resolve_heads(heads, selected)
    with ModelState(model), LayerInputPerturbation(model, selected, head_splits) as hooks:
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
                    run = AGOPPass(
                        forward_model,
                        selected,
                        hooks.probes,
                        include_input=include_input,
                        outputs=outputs,
                        dtype=compute_dtype,
                        device=device,
                        vectorize=vectorize,
                        output_chunk_size=output_chunk_size,
                        check_independence=check_independence,
                    )
                x = prepare_chunk(
                    raw_t,
                    start,
                    device=run.device,
                    dtype=run.dtype,
                    needs_grad_input=include_input,
                )
                run.process(x, start, hooks)
                n_seen += x.shape[0]
                bar.update(x.shape[0])
            if run is None and allow_empty:  # an empty shard: no sums, the keys of the pass
                run = AGOPPass(
                    forward_model,
                    selected,
                    hooks.probes,
                    include_input=include_input,
                    outputs=outputs,
                    dtype=compute_dtype or torch.get_default_dtype(),
                    device=model_device or torch.device("cpu"),
                    vectorize=vectorize,
                    output_chunk_size=output_chunk_size,
                    check_independence=check_independence,
                )
        finally:
            bar.close()
    if run is None or (n_seen == 0 and not allow_empty):
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
    heads: HeadsSpec = None,
    verbose: bool = False,
    process_group: Any = None,
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

    * **Where the features are.** Each layer's adapter (:mod:`nfm.models.adapters`) reads its
      input as ``(batch, positions, features)``. ``nn.Linear`` (and Hugging Face ``Conv1D``,
      ``nn.Bilinear``'s first input) take the last axis as features: an input
      ``(batch, t_1, ..., d)`` has ``t_1 * ...`` positions (tokens), the Jacobian of each
      position is one term and the average runs over samples and positions
      (:math:`\frac{1}{n T}\sum_i\sum_t J_{i,t}^T J_{i,t}`). Any layer with a
      ``(batch, features)`` input works. Convolutions (``nn.Conv1d/2d/3d``) are read in patch
      space: the Jacobian with respect to each unfolded input patch (``C_in * prod(kernel)``
      features), averaged over samples and output positions, the space of the filter NFM
      (:mod:`nfm.models.adapters.conv`). ``nn.MultiheadAttention`` gives the AGOPs of its
      query, key, value and output projections (keys ``name.q``, ``.k``, ``.v``,
      ``.out_proj``; per head with ``heads``), and selecting its ``out_proj`` (which it calls
      functionally) selects it. Transposed convolutions are refused, and so is any other layer
      whose input has three or more dimensions and no declared layout
      (``register_adapter``). The model input is taken as one flattened vector per sample (an
      image ``(C, H, W)`` gives a ``C H W`` square AGOP).
    * **Outputs.** The model output is flattened per sample to ``c`` entries; a Hugging Face
      ``ModelOutput`` (or any object or dict with a ``logits`` tensor) is read as its
      ``logits``.
    * **Samples must not interact.** The Jacobians of a whole chunk come from one backward pass
      over the summed outputs, which is exact only when each output depends on its own sample
      alone. The model is put in eval mode for the computation (dropout off, batch-norm on its
      running statistics) and every module's mode is restored afterwards. A batch-norm layer
      in training mode triggers a warning (its running statistics are used); batch-norm with
      ``track_running_stats=False`` is an error; and with ``check_independence`` the first
      sample is also run alone and compared with its output inside the batch.
    * **The model comes back unchanged**: the computation runs on detached (and, for
      ``dtype``, cast) copies of the parameters through :func:`torch.func.functional_call`, so
      no parameter, gradient or buffer is written; every module's mode and every parameter's
      ``requires_grad`` flag are restored (:class:`~nfm.models.state.ModelState`) and the hooks
      removed, also on error.

    Parameters
    ----------
    model : nn.Module
        Any module whose forward takes one batch tensor and returns one tensor
        ``(batch, ...)``.
    data : tensor, numpy array or iterable of batches
        Samples along the first dimension; an iterable (e.g. a DataLoader) yields tensors,
        arrays or tuples whose first element is the input.
    layers : LayerSpec or sequence of LayerSpec, optional
        Which layers (see :func:`nfm.models.selection.select_layers`); default every ``nn.Linear``.
    include_input : bool
        Also return the AGOP with respect to the model input, under key ``"input"`` (first).
    outputs : None, int, sequence of int, (k, c) matrix, or GaussianSketch
        ``None``: sum over all ``c`` outputs; an int: that output only; a sequence: those
        outputs; a matrix :math:`P`: the AGOP of :math:`P f`;
        :class:`~nfm.features.outputs.GaussianSketch` ``(k)``: an unbiased random sketch with
        ``k`` probes per sample, for huge output spaces (error stated in
        :mod:`nfm.features.outputs`).
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
        Batch the ``k`` vector-Jacobian products in one backward pass vmapped over the
        cotangents (``torch.autograd.grad(..., is_grads_batched=True)``); False loops over
        outputs (also the automatic fallback when an op has no batching rule).
    check_independence : bool
        Compare the first sample's output alone and in its batch (one extra tiny forward).
    verbose : bool
        Show a progress bar.
    process_group : None, "default" or torch.distributed.ProcessGroup
        ``None`` (default): this process's data alone, no communication, even when
        ``torch.distributed`` is initialised. ``"default"`` or a group: ``data`` is this
        rank's shard (disjoint from the other ranks', e.g. :func:`nfm.distributed.shard_rows`
        or :class:`nfm.distributed.ShardSampler`; a shard may be empty), every rank of the
        group must call, and every rank gets the AGOP of the union of the shards
        (:func:`nfm.distributed.reduce_accumulator`; ``docs/distributed.md``).

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
        Unknown layer names, a selected layer the forward pass never calls (or calls twice),
        a transposed convolution, a bad ``heads`` entry, or a layer input of three or more
        dimensions whose layout no adapter declares (the message says how to declare
        it with :func:`nfm.models.adapters.register_adapter`).
    """
    if batch_size is not None:
        chunk_size = batch_size
    check_sketch_not_centered(outputs, centered)
    acc, kind, run = run_agop_pass(
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
        heads=heads,
        process_group=process_group,
    )
    result = acc.result(centered=centered, dtype=run.dtype)
    return {key: restore_kind(value, kind) for key, value in result.items()}
