"""How nfm reaches into a PyTorch model: layer addressing, layer adapters, hooks, state restore.

* :mod:`nfm.models.selection` -- select layers by name, module, type or predicate;
* :mod:`nfm.models.adapters` -- per layer family, where its input's features are and its
  weight as an ``(out, in)`` matrix; :func:`register_adapter` declares a layer family of yours;
* :mod:`nfm.models.adapters.probes` -- where the engine differentiates inside a layer (input,
  output times W for patches and heads, an explicit attention forward); :class:`HeadSplit`;
* :mod:`nfm.models.hooks` -- the forward hooks that install the probes;
* :mod:`nfm.models.state` -- hand a model back exactly as it came (modes, ``requires_grad``).
"""

from nfm.models.adapters import (
    FeatureAxisAdapter,
    LayerAdapter,
    adapter_for,
    register_adapter,
    unregister_adapter,
)
from nfm.models.adapters.probes import HeadSplit
from nfm.models.selection import INPUT_KEY, HeadsSpec, LayerSpec, select_layers
from nfm.models.state import ModelState

__all__ = [
    "INPUT_KEY",
    "FeatureAxisAdapter",
    "HeadSplit",
    "HeadsSpec",
    "LayerAdapter",
    "LayerSpec",
    "ModelState",
    "adapter_for",
    "register_adapter",
    "select_layers",
    "unregister_adapter",
]
