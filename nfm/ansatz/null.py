r"""Null models for the feature-matrix statistics: weights shuffled, or weights re-initialised.

A correlation such as the NFA's :math:`\rho(W^T W, \mathrm{AGOP}^{1/2}) = 0.97` says little on its
own: a random network already gives a positive value (both matrices have a dominant diagonal, and
the AGOP of a layer depends on that layer's own weights through the rest of the network). The
evidence is the *lift* over the same statistic computed for a model that has not learned
anything. Two such null models, each a copy that leaves the passed model untouched:

* :func:`shuffled_copy` -- every selected layer's weight entries permuted at random. The entries'
  distribution (hence :math:`\lVert W\rVert_F`, the trace of the NFM) is kept, every learned
  structure (which input a neuron weighs, correlations between neurons) is destroyed;
* :func:`reinitialized_copy` -- every module re-initialised as at construction
  (``reset_parameters()``; Hugging Face models through their ``_init_weights``), i.e. the model
  as it might have been before training.

Randomness comes only from the ``seed`` given (an int, a :class:`torch.Generator` or a
:class:`numpy.random.Generator`): the global random state of torch is the same after a call as
before it.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import nn

from nfm.exceptions import LayerSelectionError, NFMInputError
from nfm.models.selection import LayerSpec, select_layers

__all__ = ["NULL_KINDS", "NullKind", "null_model", "reinitialized_copy", "shuffled_copy"]

NullKind = Literal["shuffled", "reinit"]

#: The null models :func:`null_model` builds.
NULL_KINDS: tuple[str, ...] = ("shuffled", "reinit")

SeedLike = int | torch.Generator | np.random.Generator


def _cpu_generator(seed: SeedLike, name: str = "seed") -> torch.Generator:
    """A CPU :class:`torch.Generator` from an int (a fresh generator) or a generator."""
    if isinstance(seed, torch.Generator):
        if seed.device.type != "cpu":
            raise NFMInputError(
                f"{name} must be a CPU torch.Generator (the permutations are drawn on the CPU); "
                f"got a generator on {seed.device}"
            )
        return seed
    generator = torch.Generator()
    generator.manual_seed(_int_seed(seed, name))
    return generator


def _int_seed(seed: SeedLike, name: str = "seed") -> int:
    """A non-negative int seed; a generator is advanced by one draw to give it."""
    if isinstance(seed, torch.Generator):
        if seed.device.type != "cpu":
            raise NFMInputError(f"{name} must be a CPU torch.Generator; got one on {seed.device}")
        return int(torch.randint(0, 2**62, (1,), generator=seed))
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(0, 2**62))
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise NFMInputError(
            f"{name} must be a non-negative int, a torch.Generator or a numpy Generator; "
            f"got {seed!r}"
        )
    return int(seed)


def _weight_parameters(module: nn.Module, name: str) -> list[tuple[str, nn.Parameter]]:
    """The module's own parameters named ``*weight*`` (``weight``, ``in_proj_weight``)."""
    found = [(n, p) for n, p in module.named_parameters(recurse=False) if "weight" in n]
    if not found:
        raise LayerSelectionError(
            f"layer {name!r} ({type(module).__name__}) has no weight parameter to shuffle; "
            "select layers with a weight (nn.Linear, convolutions, ...)"
        )
    return found


def _shuffle_targets(modules: dict[str, nn.Module], name: str) -> list[tuple[nn.Parameter, int]]:
    """``(parameter, row blocks)`` to permute for the selected layer ``name``.

    An ``nn.MultiheadAttention`` (selected itself, or through its ``out_proj``, which is how
    the feature-matrix code reaches its query, key and value projections) contributes its
    projection weights and ``out_proj.weight``; a packed ``in_proj_weight`` is permuted within
    each of its three row blocks (query, key, value) so that each projection keeps its own
    entries. Any other layer contributes its own ``*weight*`` parameters, permuted whole.
    """
    module = modules[name]
    parent = modules.get(name.rpartition(".")[0]) if name else None
    if isinstance(parent, nn.MultiheadAttention) and parent.out_proj is module:
        module = parent
    if isinstance(module, nn.MultiheadAttention):
        targets = [
            (p, 3 if n == "in_proj_weight" else 1)
            for n, p in module.named_parameters(recurse=False)
            if "weight" in n
        ]
        return [*targets, (module.out_proj.weight, 1)]
    return [(p, 1) for _, p in _weight_parameters(module, name)]


def _permute_within_row_blocks(
    parameter: nn.Parameter, blocks: int, generator: torch.Generator
) -> None:
    """Permute the entries of ``parameter`` within each of ``blocks`` equal row blocks."""
    rows = parameter.shape[0] // blocks
    for b in range(blocks):
        part = parameter[b * rows : (b + 1) * rows]
        flat = part.detach().reshape(-1)
        order = torch.randperm(flat.numel(), generator=generator).to(flat.device)
        part.copy_(flat[order].reshape(part.shape))


def shuffled_copy(
    model: nn.Module,
    layers: LayerSpec | Sequence[LayerSpec] | None = None,
    *,
    seed: SeedLike = 0,
) -> nn.Module:
    r"""A copy of ``model`` with the entries of each selected layer's weight permuted at random.

    For each selected layer, every parameter of its own whose name contains ``weight`` is
    replaced by :math:`\mathrm{vec}(W)_{\pi}` reshaped back, :math:`\pi` a uniformly random
    permutation of all its entries (one permutation per parameter, drawn in model order). An
    ``nn.MultiheadAttention``, selected itself or through its ``out_proj``, has its query, key
    and value weights permuted (a packed ``in_proj_weight`` within each projection's rows) and
    its ``out_proj.weight``. Biases, other layers and buffers are copied unchanged; a parameter
    shared by two selected layers is shuffled once.

    Parameters
    ----------
    model : nn.Module
        Not modified (the copy is a :func:`copy.deepcopy`).
    layers : LayerSpec or sequence, optional
        Which layers (:func:`nfm.models.selection.select_layers`); default every ``nn.Linear``.
    seed : int, torch.Generator or numpy.random.Generator
        Source of the permutations (a CPU torch generator is used as it is and advanced; a
        numpy generator gives one integer seed). The global random state is not touched.

    Returns
    -------
    nn.Module
        The shuffled copy, on the model's devices and dtypes, in the model's modes.

    Raises
    ------
    LayerSelectionError
        A selected layer without a weight parameter, or a selection that matches nothing.
    """
    generator = _cpu_generator(seed)
    names = list(select_layers(model, layers))
    originals = dict(model.named_modules())
    for name in names:
        _shuffle_targets(originals, name)  # refuse before copying
    clone = copy.deepcopy(model)
    modules = dict(clone.named_modules())
    done: set[int] = set()
    with torch.no_grad():
        for name in names:
            for parameter, blocks in _shuffle_targets(modules, name):
                if id(parameter) not in done:
                    done.add(id(parameter))
                    _permute_within_row_blocks(parameter, blocks, generator)
    return clone


def _is_hf_model(model: nn.Module) -> bool:
    return callable(getattr(model, "_init_weights", None)) and hasattr(model, "config")


def _cuda_indices(model: nn.Module) -> list[int]:
    devices = {t.device for t in [*model.parameters(), *model.buffers()]}
    unsupported = sorted(str(d) for d in devices if d.type not in ("cpu", "cuda"))
    if unsupported:
        raise NFMInputError(
            f"model has tensors on {unsupported}; the re-initialised null is seeded on CPU and "
            "CUDA generators only. Move the model to the CPU or a CUDA device first"
        )
    return sorted({d.index or 0 for d in devices if d.type == "cuda"})


def reinitialized_copy(model: nn.Module, *, seed: SeedLike = 0) -> nn.Module:
    """A copy of ``model`` with every module re-initialised as at construction.

    The copy (:func:`copy.deepcopy`) is re-initialised module by module, every module before the
    module that contains it (so a container's own initialisation, e.g. the Xavier one of
    ``nn.Transformer``, has the last word, as in its constructor):

    * a Hugging Face ``PreTrainedModel`` (a model with ``_init_weights`` and a ``config``):
      ``model._init_weights(module)`` for every module, the initialisation its ``post_init``
      uses (``config.initializer_range``);
    * any other model: ``module.reset_parameters()`` for every module that has it, and
      ``module._reset_parameters()`` for those that only have the private one
      (``nn.MultiheadAttention``, ``nn.Transformer``).

    The random draws come from a fork of torch's CPU generator (and of the CUDA generators of the
    model's devices) seeded from ``seed``: after the call, the global random state is what it
    was before. Parameters that no module re-initialises (a bare ``nn.Parameter`` of a custom
    module without ``reset_parameters``) keep their values; a warning names them.

    Parameters
    ----------
    model : nn.Module
        Not modified.
    seed : int, torch.Generator or numpy.random.Generator

    Returns
    -------
    nn.Module
        The re-initialised copy, on the model's devices and dtypes, in the model's modes. For a
        given seed it does not depend on the model's current weights.

    Raises
    ------
    NFMInputError
        A bad seed, or tensors on a device other than the CPU or CUDA.
    """
    if not isinstance(model, nn.Module):
        raise NFMInputError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    seed_int = _int_seed(seed)
    cuda = _cuda_indices(model)
    clone = copy.deepcopy(model)
    hf = _is_hf_model(clone)
    modules = list(clone.modules())[::-1]  # descendants before their ancestors
    covered: set[int] = set()
    with torch.random.fork_rng(devices=cuda), torch.no_grad():
        torch.default_generator.manual_seed(seed_int)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(seed_int)
        for module in modules:
            if hf:
                clone._init_weights(module)
                covered.update(id(p) for p in module.parameters(recurse=False))
                continue
            reset = getattr(module, "reset_parameters", None)
            recurse = False
            if not callable(reset):
                reset = getattr(module, "_reset_parameters", None)
                recurse = True  # nn.Transformer's resets every parameter below it
            if callable(reset):
                reset()
                covered.update(id(p) for p in module.parameters(recurse=recurse))
    untouched = [name for name, p in clone.named_parameters() if id(p) not in covered]
    if untouched:
        shown = ", ".join(untouched[:8]) + (" ..." if len(untouched) > 8 else "")
        warnings.warn(
            f"reinitialized_copy: {len(untouched)} parameter(s) belong to modules without "
            f"reset_parameters and keep their trained values: {shown}",
            UserWarning,
            stacklevel=2,
        )
    return clone


def null_model(
    model: nn.Module,
    kind: NullKind,
    *,
    layers: LayerSpec | Sequence[LayerSpec] | None = None,
    seed: SeedLike = 0,
) -> nn.Module:
    """The null copy of ``model`` of the given ``kind`` (``"shuffled"`` or ``"reinit"``).

    ``"shuffled"``: :func:`shuffled_copy` of the selected ``layers``; ``"reinit"``:
    :func:`reinitialized_copy` of the whole model (``layers`` unused). ``model`` is not modified.
    """
    if kind == "shuffled":
        return shuffled_copy(model, layers, seed=seed)
    if kind == "reinit":
        return reinitialized_copy(model, seed=seed)
    raise NFMInputError(f"null must be one of {list(NULL_KINDS)} or None; got {kind!r}")
