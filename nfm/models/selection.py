"""Addressing the layers of a PyTorch model.

A layer is selected by its ``named_modules()`` name (``"net.0"``), by the module object itself,
by a module type (``nn.Linear``: every instance) or by a predicate ``(name, module) -> bool``.
Results everywhere in nfm come back as a ``name -> tensor`` mapping in model order (the order of
``model.named_modules()``).

The root module (name ``""``) is matched only when it is selected explicitly (by the object or
by the name ``""``): a bare ``nn.Linear`` model has the AGOP of its one layer under the key
:data:`INPUT_KEY` already.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Union

from torch import nn

from nfm.exceptions import LayerSelectionError
from nfm.models.adapters.probes import HeadSplit, as_head_split

__all__ = [
    "INPUT_KEY",
    "HeadsSpec",
    "LayerSpec",
    "lift_attention_projections",
    "resolve_heads",
    "select_layers",
]

#: Key of the AGOP taken with respect to the model input itself.
INPUT_KEY = "input"

#: One layer selector: a name, a module object, a module type, or a predicate (name, module).
LayerSpec = Union[str, nn.Module, type[nn.Module], Callable[[str, nn.Module], bool]]  # noqa: UP007


#: Which layers to split into attention heads: ``{layer name: number of heads or HeadSplit}``.
HeadsSpec = Mapping[str, Union[int, HeadSplit]] | None  # noqa: UP007


def _spec_repr(spec: LayerSpec) -> str:
    if isinstance(spec, str):
        return repr(spec)
    if isinstance(spec, type):
        return spec.__name__
    if isinstance(spec, nn.Module):
        return f"module object {type(spec).__name__}"
    return getattr(spec, "__name__", repr(spec))


def _matches(spec: LayerSpec, name: str, module: nn.Module) -> bool:
    if isinstance(spec, str):
        return name == spec
    if isinstance(spec, nn.Module):  # before callable: a module is callable too
        return module is spec
    if isinstance(spec, type):
        return name != "" and isinstance(module, spec)
    if callable(spec):
        return name != "" and bool(spec(name, module))
    raise LayerSelectionError(
        "layers must be a name, an nn.Module, an nn.Module type, a predicate "
        f"(name, module) -> bool, or a sequence of these; got {type(spec).__name__}"
    )


def select_layers(
    model: nn.Module,
    layers: LayerSpec | Sequence[LayerSpec] | None = None,
) -> dict[str, nn.Module]:
    """Select layers of ``model``; return ``{name: module}`` in model order.

    Parameters
    ----------
    model : nn.Module
        The model.
    layers : LayerSpec or sequence of LayerSpec, optional
        ``None`` (default) selects every :class:`torch.nn.Linear` below the root. A string
        selects the module of that ``named_modules()`` name; a module object selects itself; a
        module type selects every instance of it; a callable ``(name, module) -> bool`` selects
        the modules for which it returns True. A sequence selects the union. Types and
        predicates never match the root module (name ``""``); name it or pass it to select it.

    Returns
    -------
    dict[str, nn.Module]
        The selected modules, in the order of ``model.named_modules()``, each once.

    Raises
    ------
    LayerSelectionError
        A name that is not in the model (the message lists the available names), a module
        object that is not part of the model, or a selector that matches nothing.
    """
    if not isinstance(model, nn.Module):
        raise LayerSelectionError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if layers is None:
        specs: list[LayerSpec] = [nn.Linear]
    elif isinstance(layers, (str, nn.Module, type)) or (
        callable(layers) and not isinstance(layers, Sequence)
    ):
        specs = [layers]
    elif isinstance(layers, Sequence):
        specs = list(layers)
        if not specs:
            raise LayerSelectionError("layers is an empty sequence; select at least one layer")
    else:
        raise LayerSelectionError(
            "layers must be a name, an nn.Module, an nn.Module type, a predicate or a "
            f"sequence of these; got {type(layers).__name__}"
        )

    named = list(model.named_modules())
    selected: dict[str, nn.Module] = {}
    for spec in specs:
        hits = [(name, module) for name, module in named if _matches(spec, name, module)]
        if not hits:
            if isinstance(spec, str):
                available = ", ".join(repr(n) for n, _ in named if n) or "(none)"
                raise LayerSelectionError(
                    f"layers: no module named {spec!r} in {type(model).__name__}; "
                    f"available names: {available}"
                )
            if isinstance(spec, nn.Module):
                raise LayerSelectionError(
                    f"layers: the {type(spec).__name__} module object passed is not a "
                    f"submodule of {type(model).__name__}"
                )
            if layers is None:
                raise LayerSelectionError(
                    f"{type(model).__name__} has no nn.Linear submodule; pass layers= to "
                    "select layers by name, module, type or predicate"
                )
            raise LayerSelectionError(
                f"layers: selector {_spec_repr(spec)} matched no module of {type(model).__name__}"
            )
        for name, module in hits:
            selected.setdefault(name, module)
    order = {name: i for i, (name, _) in enumerate(named)}
    return dict(sorted(selected.items(), key=lambda item: order[item[0]]))


def lift_attention_projections(
    model: nn.Module, selected: dict[str, nn.Module]
) -> dict[str, nn.Module]:
    """Replace each selected ``out_proj`` of an ``nn.MultiheadAttention`` by the attention module.

    ``nn.MultiheadAttention`` applies its output projection functionally (the ``out_proj``
    module is never called), so its AGOP comes from the attention module's own probe, whose
    keys include ``<attention>.out_proj`` (the same key) besides ``.q``, ``.k`` and ``.v``.
    Model order is kept.
    """
    modules = dict(model.named_modules())
    lifted: dict[str, nn.Module] = {}
    for name, module in selected.items():
        parent_name, _, child = name.rpartition(".")
        parent = modules.get(parent_name) if name else None
        if child == "out_proj" and isinstance(parent, nn.MultiheadAttention):
            lifted.setdefault(parent_name, parent)
        else:
            lifted.setdefault(name, module)
    order = {name: i for i, name in enumerate(modules)}
    return dict(sorted(lifted.items(), key=lambda item: order[item[0]]))


def resolve_heads(heads: HeadsSpec, selected: Mapping[str, nn.Module]) -> dict[str, HeadSplit]:
    """Validate ``heads`` against the selected layers: ``{name: HeadSplit}``.

    Raises
    ------
    LayerSelectionError
        ``heads`` is not a mapping, names a layer that is not selected, or gives a value that
        is neither a positive int nor a :class:`~nfm.models.adapters.probes.HeadSplit`.
    """
    if heads is None:
        return {}
    if not isinstance(heads, Mapping):
        raise LayerSelectionError(
            "heads must be a mapping {layer name: number of heads or HeadSplit}; got "
            f"{type(heads).__name__}"
        )
    unknown = [name for name in heads if name not in selected]
    if unknown:
        raise LayerSelectionError(
            f"heads names layer(s) {unknown} that are not selected; selected layers: "
            f"{list(selected)} (select them with layers=)"
        )
    return {name: as_head_split(spec, name) for name, spec in heads.items()}
