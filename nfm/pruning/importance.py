r"""Importance scores of hidden units, input features and single weights of ``nn.Linear`` layers.

A *unit* of a layer :math:`l` is one entry :math:`h_j` of the layer's input (a hidden unit of
the previous layer, or an input feature for the first layer). Its scores:

* ``"agop_diag"``: the AGOP diagonal :math:`G_{jj} = \frac1n\sum_i \lVert \partial f(x_i) /
  \partial h_j \rVert^2`, the mean squared sensitivity of the outputs to the unit;
* ``"agop_eig"``: the energy of the unit in the top-``rank`` eigenvectors of the AGOP,
  :math:`\sum_{k \le r} \lambda_k u_k[j]^2` (``rank = d`` gives the diagonal back);
* ``"agop_activation"``: :math:`G_{jj}\, \frac1n\sum_i h_j(x_i)^2`, the AGOP diagonal times
  the unit's mean squared value. A ReLU network computes the same function when a unit's
  incoming weights are multiplied by :math:`c > 0` and its outgoing weights divided by
  :math:`c`; :math:`G_{jj}` then changes by :math:`1/c^2` and :math:`E[h_j^2]` by
  :math:`c^2`, so only the product is a property of the function, not of the parametrisation
  (``"agop_diag"``, ``"nfm"`` and ``"magnitude"`` are not invariant; ``docs/pruning.md``
  shows what this costs);
* ``"nfm"``: the NFM diagonal :math:`(W_l^T W_l)_{jj} = \lVert W_l[:, j] \rVert^2`, how much
  the layer reads the unit;
* ``"magnitude"``: the L1 norm of the unit's *incoming* weights, :math:`\sum_k
  |W_{l-1}[j, k]|`, the row of the layer that produces it (the usual structured magnitude
  criterion; needs ``producers``);
* ``"random"``: independent uniform draws from a private generator seeded by ``seed``.

A *weight* :math:`W_l[i, j]` is scored by its magnitude times the importance of the unit it
reads, :math:`|W_{ij}|\, \sqrt{s_j}` with :math:`s_j` the unit score above (``"agop_diag"``,
``"agop_eig"``, ``"agop_activation"``, ``"nfm"``); ``"magnitude"`` is :math:`|W_{ij}|` and
``"random"`` random draws. Higher means more important everywhere. Scores are float64 CPU tensors.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from nfm.exceptions import LayerSelectionError, NFMInputError
from nfm.models.selection import LayerSpec, select_layers

__all__ = [
    "UNIT_METHODS",
    "WEIGHT_METHODS",
    "diagonal_importance",
    "eigen_energy_importance",
    "input_second_moments",
    "linear_layers",
    "unit_importance",
    "weight_importance",
]

#: Scores of units (entries of a layer's input), see the module docstring.
UNIT_METHODS = ("agop_diag", "agop_eig", "agop_activation", "nfm", "magnitude", "random")
#: Scores of single weights, see the module docstring.
WEIGHT_METHODS = UNIT_METHODS
_AGOP_METHODS = ("agop_diag", "agop_eig", "agop_activation")


def _as_float64_matrix(matrix: Any, name: str) -> torch.Tensor:
    m = torch.as_tensor(np.asarray(matrix) if not isinstance(matrix, torch.Tensor) else matrix)
    m = m.detach().to("cpu", torch.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise NFMInputError(f"{name} must be a square matrix; got shape {tuple(m.shape)}")
    if not torch.isfinite(m).all():
        raise NFMInputError(f"{name} has NaN or infinite entries")
    return m


def diagonal_importance(matrix: Any) -> torch.Tensor:
    r"""The diagonal :math:`G_{jj}` of a PSD feature matrix, as float64 scores.

    Rounding can leave tiny negative entries in a computed PSD matrix; they are clamped to 0.

    Parameters
    ----------
    matrix : (d, d) tensor or array
        An AGOP or an NFM.

    Returns
    -------
    (d,) float64 tensor
    """
    m = _as_float64_matrix(matrix, "matrix")
    return torch.diagonal(m).clamp(min=0.0).clone()


def eigen_energy_importance(matrix: Any, rank: int) -> torch.Tensor:
    r"""Energy of each coordinate in the top-``rank`` eigenvectors of a PSD matrix.

    .. math:: s_j = \sum_{k=1}^{r} \lambda_k\, u_k[j]^2 ,

    with :math:`\lambda_1 \ge \lambda_2 \ge \dots` the eigenvalues (negative rounding noise
    clamped to 0) and :math:`u_k` the unit eigenvectors of the symmetrised matrix. With
    ``rank = d`` this is the diagonal; with a smaller rank it keeps only the directions the
    matrix weighs most. When :math:`\lambda_r = \lambda_{r+1}` the top-``r`` eigenspace is not
    unique and neither are the scores.

    Parameters
    ----------
    matrix : (d, d) tensor or array
    rank : int in 1..d

    Returns
    -------
    (d,) float64 tensor
    """
    m = _as_float64_matrix(matrix, "matrix")
    d = m.shape[0]
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 1 <= rank <= d:
        raise NFMInputError(f"rank must be an integer in 1..{d} (the matrix size); got {rank!r}")
    eigenvalues, eigenvectors = torch.linalg.eigh((m + m.T) / 2)
    top = slice(d - int(rank), d)  # eigh sorts ascending
    lam = eigenvalues[top].clamp(min=0.0)
    return (eigenvectors[:, top] ** 2) @ lam


def linear_layers(
    model: nn.Module, layers: LayerSpec | Sequence[LayerSpec]
) -> dict[str, nn.Linear]:
    """Select ``layers`` of ``model`` (any :func:`nfm.select_layers` spec); all must be Linear.

    Raises
    ------
    LayerSelectionError
        A selector that matches nothing, or a selected layer that is not an ``nn.Linear``
        (pruning by units and weights is defined here for linear layers only).
    """
    if not isinstance(model, nn.Module):
        raise NFMInputError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    selected = select_layers(model, layers)
    for name, module in selected.items():
        if not isinstance(module, nn.Linear):
            raise LayerSelectionError(
                f"layer {name!r} is a {type(module).__name__}; nfm.pruning scores and prunes "
                "nn.Linear layers only (units = the columns of their (out, in) weight)"
            )
    return selected  # type: ignore[return-value]


def _check_method(method: str, allowed: tuple[str, ...]) -> None:
    if method not in allowed:
        raise NFMInputError(f"method must be one of {allowed}; got {method!r}")


def _layer_agops(
    model: nn.Module,
    data: Any,
    selected: Mapping[str, nn.Linear],
    agops: Mapping[str, Any] | None,
    agop_options: Mapping[str, Any],
) -> dict[str, torch.Tensor]:
    """The AGOP of each selected layer's input: from ``agops`` when given, else one pass."""
    if agops is None:
        if data is None:
            raise NFMInputError(
                "data is required for the AGOP methods (or pass agops=, the result of "
                "nfm.compute_agop on the same layers)"
            )
        from nfm.features.agop import compute_agop

        agops = compute_agop(
            model, data, layers=list(selected), include_input=False, **dict(agop_options)
        )
    result = {}
    for name, module in selected.items():
        if name not in agops:
            raise NFMInputError(
                f"agops has no entry for layer {name!r}; it has {sorted(agops)} (compute it with "
                f"nfm.compute_agop(model, data, layers=[...{name!r}...]))"
            )
        g = _as_float64_matrix(agops[name], f"agops[{name!r}]")
        if g.shape[0] != module.in_features:
            raise NFMInputError(
                f"agops[{name!r}] has shape {tuple(g.shape)}; layer {name!r} has "
                f"in_features={module.in_features}, so a ({module.in_features}, "
                f"{module.in_features}) AGOP was expected"
            )
        result[name] = g
    return result


def _weight(module: nn.Linear) -> torch.Tensor:
    """The effective weight (masks of torch.nn.utils.prune applied), float64 on the CPU."""
    return module.weight.detach().to("cpu", torch.float64)


def _random_scores(shape: tuple[int, ...], seed: int, name: str) -> torch.Tensor:
    """Uniform draws that depend only on ``seed`` and the layer's name (not on the selection)."""
    generator = torch.Generator().manual_seed(
        (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % 2**63
    )
    return torch.rand(shape, generator=generator, dtype=torch.float64)


def _check_seed(seed: Any) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise NFMInputError(f"seed must be an integer; got {seed!r}")


def input_second_moments(
    model: nn.Module,
    data: Any,
    *,
    layers: LayerSpec | Sequence[LayerSpec],
    chunk_size: int = 1024,
) -> dict[str, torch.Tensor]:
    r"""Mean squared input of every selected ``nn.Linear`` layer: :math:`rac1n \sum_i
    h_j(x_i)^2` per input unit :math:`j`.

    One forward pass over ``data`` in eval mode without gradients; forward pre-hooks read each
    layer's input and are removed afterwards, and every module's mode and ``requires_grad``
    flag is restored (:class:`nfm.models.state.ModelState`), also on error. Inputs with more
    than two dimensions (tokens) average over the positions too.

    Returns
    -------
    dict[str, torch.Tensor]
        ``{layer name: (in_features,) float64 CPU tensor}``.
    """
    from nfm.features.data import iter_chunks
    from nfm.models.state import ModelState, model_device_dtype

    selected = linear_layers(model, layers)
    sums = {name: torch.zeros(m.in_features, dtype=torch.float64) for name, m in selected.items()}
    counts = dict.fromkeys(selected, 0)

    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            h = args[0].detach().to("cpu", torch.float64)
            h = h.reshape(-1, h.shape[-1])
            sums[name] += (h**2).sum(dim=0)
            counts[name] += h.shape[0]

        return hook

    device, dtype = model_device_dtype(model)
    _, _, chunks = iter_chunks(data, int(chunk_size))
    handles = []
    with ModelState(model, mode="eval"), torch.no_grad():
        try:
            for name, module in selected.items():
                handles.append(module.register_forward_pre_hook(make_hook(name)))
            for _, raw in chunks:
                x = torch.as_tensor(np.asarray(raw) if not isinstance(raw, torch.Tensor) else raw)
                model(x.to(device=device, dtype=dtype if x.is_floating_point() else None))
        finally:
            for handle in handles:
                handle.remove()
    for name, count in counts.items():
        if count == 0:
            raise LayerSelectionError(
                f"layer {name!r} was never called in the forward pass over data"
            )
    return {name: sums[name] / counts[name] for name in selected}


def _agop_unit_scores(g: torch.Tensor, method: str, rank: int | None) -> torch.Tensor:
    if method in ("agop_diag", "agop_activation"):
        return diagonal_importance(g)
    if rank is None:
        raise NFMInputError("method='agop_eig' needs rank= (the number of top eigenvectors)")
    return eigen_energy_importance(g, rank)


def unit_importance(
    model: nn.Module,
    data: Any = None,
    *,
    layers: LayerSpec | Sequence[LayerSpec],
    method: str = "agop_diag",
    rank: int | None = None,
    producers: Mapping[str, str] | None = None,
    seed: int = 0,
    agops: Mapping[str, Any] | None = None,
    moments: Mapping[str, Any] | None = None,
    **agop_options: Any,
) -> dict[str, torch.Tensor]:
    r"""Importance of each input unit of every selected ``nn.Linear`` layer.

    The units of a layer are the entries of its input: for ``fc2`` of an MLP ``fc1 -> act1 ->
    fc2`` they are the hidden units of ``fc1`` (after the activation); for the first layer
    they are the input features. Scores (higher = more important), per layer of input width
    :math:`d`:

    * ``"agop_diag"``: :math:`G_{jj}`, :math:`G = \frac1n \sum_i J_i^T J_i` the AGOP of the
      layer's input (:func:`nfm.compute_agop`);
    * ``"agop_eig"``: :math:`\sum_{k\le r} \lambda_k u_k[j]^2`, eigenpairs of :math:`G`,
      :math:`r` = ``rank`` (:func:`eigen_energy_importance`);
    * ``"agop_activation"``: :math:`G_{jj}\,\frac1n\sum_i h_j(x_i)^2`, invariant to the
      rescaling of a ReLU unit (module docstring; :func:`input_second_moments`);
    * ``"nfm"``: :math:`\lVert W[:, j]\rVert_2^2`, the diagonal of :math:`W^T W`
      (:func:`nfm.compute_nfm`): what the layer reads of the unit;
    * ``"magnitude"``: :math:`\lVert W_{\mathrm{prod}}[j, :]\rVert_1`, the L1 norm of the
      incoming weights of the unit in its producing layer ``producers[name]`` (biases
      excluded);
    * ``"random"``: uniform draws from a generator seeded by ``seed`` (and the layer's
      name), for the random-pruning baseline.

    Weights are read as they act (a mask of :mod:`torch.nn.utils.prune` applied), so a unit
    pruned before has NFM and magnitude score 0, and AGOP score 0 when its column is masked.

    Parameters
    ----------
    model : nn.Module
        Not modified (the AGOP pass restores every mode and flag).
    data : tensor, array or iterable of batches, optional
        Samples for the AGOP (training data, never the test set); needed for the AGOP methods
        unless ``agops`` is given.
    layers : LayerSpec or sequence of LayerSpec
        The layers whose input units are scored; each must be an ``nn.Linear``.
    method : {"agop_diag", "agop_eig", "nfm", "magnitude", "random"}
    rank : int, optional
        Number of top eigenvectors for ``"agop_eig"``.
    producers : mapping, optional
        ``{layer name: name of the nn.Linear that produces its input}`` for ``"magnitude"``.
    seed : int
        Seed of ``"random"``.
    agops : mapping, optional
        A precomputed :func:`nfm.compute_agop` result holding every selected layer (reused
        instead of a new pass).
    moments : mapping, optional
        A precomputed :func:`input_second_moments` result for ``"agop_activation"``.
    **agop_options
        Passed to :func:`nfm.compute_agop` (``chunk_size``, ``outputs``, ``dtype``, ...).

    Returns
    -------
    dict[str, torch.Tensor]
        ``{layer name: (in_features,) float64 CPU tensor}`` in model order.

    Raises
    ------
    NFMInputError
        Unknown method, missing data / rank / producer, a producer whose output width is not
        the layer's input width, an ``agops`` entry of the wrong shape.
    LayerSelectionError
        A layer or producer that is not in the model or is not an ``nn.Linear``.
    """
    _check_method(method, UNIT_METHODS)
    _check_seed(seed)
    selected = linear_layers(model, layers)
    if method in _AGOP_METHODS:
        if method == "agop_eig" and rank is None:
            raise NFMInputError("method='agop_eig' needs rank= (the number of top eigenvectors)")
        g = _layer_agops(model, data, selected, agops, agop_options)
        scores = {name: _agop_unit_scores(g[name], method, rank) for name in selected}
        if method == "agop_activation":
            if moments is None:
                if data is None:
                    raise NFMInputError(
                        "method='agop_activation' needs data (or moments=, the result of "
                        "nfm.pruning.input_second_moments)"
                    )
                moments = input_second_moments(model, data, layers=list(selected))
            for name, module in selected.items():
                if name not in moments:
                    raise NFMInputError(f"moments has no entry for layer {name!r}")
                m2 = torch.as_tensor(moments[name]).detach().to("cpu", torch.float64)
                if tuple(m2.shape) != (module.in_features,):
                    raise NFMInputError(
                        f"moments[{name!r}] must have shape ({module.in_features},); got "
                        f"{tuple(m2.shape)}"
                    )
                scores[name] = scores[name] * m2
        return scores
    if method == "nfm":
        return {name: (_weight(m) ** 2).sum(dim=0) for name, m in selected.items()}
    if method == "random":
        return {name: _random_scores((m.in_features,), seed, name) for name, m in selected.items()}
    # magnitude: the incoming weights, in the producing layer
    if producers is None:
        raise NFMInputError(
            "method='magnitude' scores a unit by the L1 norm of its incoming weights and needs "
            "producers={layer: name of the nn.Linear producing its input}, e.g. {'fc2': 'fc1'}"
        )
    result = {}
    for name, module in selected.items():
        if name not in producers:
            raise NFMInputError(
                f"producers has no entry for layer {name!r}; got keys {sorted(producers)}"
            )
        producer_name = producers[name]
        producer = linear_layers(model, [producer_name])[producer_name]
        if producer.out_features != module.in_features:
            raise NFMInputError(
                f"producer {producer_name!r} of layer {name!r} has out_features="
                f"{producer.out_features}, but {name!r} has in_features={module.in_features}"
            )
        result[name] = _weight(producer).abs().sum(dim=1)
    return result


def weight_importance(
    model: nn.Module,
    data: Any = None,
    *,
    layers: LayerSpec | Sequence[LayerSpec],
    method: str = "agop_diag",
    rank: int | None = None,
    seed: int = 0,
    agops: Mapping[str, Any] | None = None,
    moments: Mapping[str, Any] | None = None,
    **agop_options: Any,
) -> dict[str, torch.Tensor]:
    r"""Importance of each weight :math:`W_{ij}` of every selected ``nn.Linear`` layer.

    * ``"magnitude"``: :math:`|W_{ij}|`;
    * ``"agop_diag"``, ``"agop_eig"``, ``"agop_activation"``, ``"nfm"``:
      :math:`|W_{ij}|\sqrt{s_j}` with :math:`s_j` the score of the input unit :math:`j` the
      weight reads (:func:`unit_importance`: AGOP diagonal, top-``rank`` eigen-energy of the
      AGOP, AGOP diagonal times mean squared input, or :math:`\lVert W[:, j]\rVert^2`): the
      magnitude of the weight measured in the feature matrix's metric on the layer's input;
    * ``"random"``: uniform draws seeded by ``seed``.

    Parameters and errors are those of :func:`unit_importance` (no ``producers``).

    Returns
    -------
    dict[str, torch.Tensor]
        ``{layer name: (out_features, in_features) float64 CPU tensor}``.
    """
    _check_method(method, WEIGHT_METHODS)
    _check_seed(seed)
    selected = linear_layers(model, layers)
    if method == "random":
        return {
            name: _random_scores(tuple(m.weight.shape), seed, name) for name, m in selected.items()
        }
    if method == "magnitude":
        return {name: _weight(m).abs() for name, m in selected.items()}
    units = unit_importance(
        model,
        data,
        layers=list(selected),
        method=method,
        rank=rank,
        agops=agops,
        moments=moments,
        **agop_options,
    )
    return {name: _weight(m).abs() * units[name].sqrt()[None, :] for name, m in selected.items()}
