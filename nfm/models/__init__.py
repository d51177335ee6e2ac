"""How nfm reaches into a PyTorch model: layer addressing, layer adapters, hooks, state restore.

* :mod:`nfm.models.selection` -- select layers by name, module, type or predicate;
* :mod:`nfm.models.adapters` -- per layer family, where its input's features live and its
  weight as an ``(out, in)`` matrix;
* :mod:`nfm.models.hooks` -- forward pre-hooks that expose layer inputs to autograd;
* :mod:`nfm.models.state` -- hand a model back exactly as it came (modes, ``requires_grad``).
"""

from nfm.models.selection import INPUT_KEY, LayerSpec, select_layers
from nfm.models.state import ModelState

__all__ = ["INPUT_KEY", "LayerSpec", "ModelState", "select_layers"]
