"""Layer adapters: per layer family, where its input's features are and its ``(out, in)`` weight.

A family is one file: an adapter class (a subclass of :class:`LayerAdapter`) that says how the
first positional input of its layers is laid out as ``(batch, positions, features)``
(:meth:`LayerAdapter.input_layout`) and how its weight reads as the ``(out, in)`` matrix of the
NFM (:meth:`LayerAdapter.weight_matrix`). Built in: :mod:`~nfm.models.adapters.linear`
(``nn.Linear``, ``nn.Bilinear``), :mod:`~nfm.models.adapters.huggingface` (GPT-2 ``Conv1D``),
:mod:`~nfm.models.adapters.conv` (convolutions: AGOP and NFM in patch space),
:mod:`~nfm.models.adapters.attention` (``nn.MultiheadAttention``: q/k/v/out projections, per
head). An adapter's :meth:`LayerAdapter.probe` says where the engine differentiates
(:mod:`~nfm.models.adapters.probes`). Declare your own layers with :func:`register_adapter`, e.g.
``register_adapter(MyChannelsFirstNorm, FeatureAxisAdapter(feature_axis=1))``.
"""

from nfm.models.adapters.base import (
    FeatureAxisAdapter,
    GenericAdapter,
    InputLayout,
    LayerAdapter,
    features_on_axis,
    unknown_layout_error,
)
from nfm.models.adapters.registry import (
    adapter_for,
    layer_feature_count,
    register_adapter,
    unregister_adapter,
)

__all__ = [
    "FeatureAxisAdapter",
    "GenericAdapter",
    "InputLayout",
    "LayerAdapter",
    "adapter_for",
    "features_on_axis",
    "layer_feature_count",
    "register_adapter",
    "unknown_layout_error",
    "unregister_adapter",
]
