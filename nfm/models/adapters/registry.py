"""Which adapter reads a module: the declared ones first, then nfm's built-in families.

:func:`adapter_for` looks a module up in this order:

1. adapters declared with :func:`register_adapter`, by the module's class and then its base
   classes (the most specific declaration wins);
2. the built-in families: ``nn.Linear`` (and subclasses), ``nn.Bilinear``, Hugging Face
   ``Conv1D`` (recognised by name and shape, without importing ``transformers``), and the
   convolutions;
3. :class:`~nfm.models.adapters.base.GenericAdapter`: ``(batch, features)`` inputs of any module.

A declaration is global to the process (like registering a hook type): undo it with
:func:`unregister_adapter`.
"""

from __future__ import annotations

from torch import nn

from nfm.exceptions import NFMInputError
from nfm.models.adapters.attention import MultiheadAttentionAdapter
from nfm.models.adapters.base import GenericAdapter, LayerAdapter
from nfm.models.adapters.conv import ConvAdapter
from nfm.models.adapters.huggingface import HFConv1DAdapter
from nfm.models.adapters.linear import BilinearAdapter, LinearAdapter

__all__ = ["adapter_for", "layer_feature_count", "register_adapter", "unregister_adapter"]

_BUILTIN: tuple[LayerAdapter, ...] = (
    LinearAdapter(),
    BilinearAdapter(),
    HFConv1DAdapter(),
    ConvAdapter(),
    MultiheadAttentionAdapter(),
)
_GENERIC = GenericAdapter()
_DECLARED: dict[type[nn.Module], LayerAdapter] = {}


def register_adapter(module_type: type[nn.Module], adapter: LayerAdapter) -> LayerAdapter | None:
    """Declare how nfm reads the layers of ``module_type`` (and of its subclasses).

    Parameters
    ----------
    module_type : type
        A subclass of ``nn.Module``.
    adapter : LayerAdapter
        An instance, e.g. ``FeatureAxisAdapter(feature_axis=1)`` for a channels-first input,
        or of your own :class:`~nfm.models.adapters.base.LayerAdapter` subclass.

    Returns
    -------
    LayerAdapter or None
        The adapter declared for ``module_type`` before (``None`` if there was none).

    Examples
    --------
    >>> register_adapter(nn.BatchNorm2d, FeatureAxisAdapter(feature_axis=1))  # doctest: +SKIP
    """
    if not isinstance(module_type, type) or not issubclass(module_type, nn.Module):
        raise NFMInputError(
            f"module_type must be a subclass of torch.nn.Module; got {module_type!r}"
        )
    if not isinstance(adapter, LayerAdapter):
        hint = " (pass an instance, not the class)" if isinstance(adapter, type) else ""
        raise NFMInputError(
            f"adapter must be a LayerAdapter instance{hint}; got {type(adapter).__name__}"
        )
    previous = _DECLARED.get(module_type)
    _DECLARED[module_type] = adapter
    return previous


def unregister_adapter(module_type: type[nn.Module]) -> LayerAdapter | None:
    """Remove the adapter declared for ``module_type``; return it (``None`` if there was none).

    The built-in adapters cannot be removed; declare another one to override them.
    """
    return _DECLARED.pop(module_type, None)


def adapter_for(module: nn.Module) -> LayerAdapter:
    """The adapter that reads ``module`` (see the module docstring for the look-up order)."""
    if _DECLARED:
        for cls in type(module).__mro__:
            adapter = _DECLARED.get(cls)
            if adapter is not None:
                return adapter
    for adapter in _BUILTIN:
        if adapter.handles(module):
            return adapter
    return _GENERIC


def layer_feature_count(module: nn.Module) -> int | None:
    """Number of input features a layer declares (``in_features``, ``in_channels``, ...).

    ``None`` when it declares none. Used to write error messages that say what a layer
    expected.
    """
    return adapter_for(module).feature_count(module)
