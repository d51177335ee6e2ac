r"""The contract between nfm and one family of layers, and the layouts every family shares.

A :class:`LayerAdapter` answers, for the modules of one family, the two questions the feature
matrices need:

(a) **where the features of the layer input are** -- :meth:`LayerAdapter.input_layout` reads the
    shape of the first positional argument the layer receives (what its forward pre-hook sees)
    and returns an :class:`InputLayout`: ``positions`` Jacobians of ``features`` entries per
    sample, or raises :class:`~nfm.exceptions.LayerSelectionError` when the layout is not
    supported;
(b) **its weight as an** ``(out, in)`` **matrix** :math:`W` -- :meth:`LayerAdapter.weight_matrix`,
    from which :func:`nfm.features.compute_nfm` forms :math:`\mathrm{NFM} = W^T W` (``in`` is the
    same feature axis as the AGOP's).

:class:`FeatureAxisAdapter` is the adapter for inputs with the features on one axis and positions
on all the others (``-1``: features last, as ``nn.Linear`` on ``(batch, tokens, d)``; ``1``:
channels first, as ``nn.BatchNorm2d`` on ``(batch, C, H, W)``); users declare such a layout for
their own layers with :func:`nfm.models.adapters.register_adapter`. :class:`GenericAdapter` is what
nfm uses for a module no adapter is declared for: a ``(batch, features)`` input is unambiguous;
an input of three or more dimensions is refused with a message that says how to declare it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn

from nfm.exceptions import LayerSelectionError
from nfm.models.adapters.probes import HeadSplit, InputProbe, LayerProbe, RowBlock, head_blocks

__all__ = [
    "FeatureAxisAdapter",
    "GenericAdapter",
    "InputLayout",
    "LayerAdapter",
    "features_on_axis",
    "split_blocks",
    "unknown_layout_error",
]


@dataclass(frozen=True)
class InputLayout:
    r"""Where the features of a layer input are: ``positions`` Jacobians of ``features`` each.

    A layer input holding :math:`b` samples has :math:`b \cdot \mathrm{positions} \cdot
    \mathrm{features}` entries. ``feature_axis`` is the axis of the input (batch axis included)
    that holds the features, or ``None`` when they are the last axis; every other entry of a
    sample is a position. The AGOP of the layer is the average of :math:`J_r^T J_r` over the
    :math:`b \cdot \mathrm{positions}` rows :math:`r`; only the set of rows matters, so
    positions and samples may be interleaved in memory (``(tokens, batch, d)`` gives the same
    AGOP as ``(batch, tokens, d)``).
    """

    positions: int
    features: int
    feature_axis: int | None = None

    def jacobian_rows(self, grads: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Jacobians ``(k, *input shape)`` as ``(k, batch_size, positions, features)``.

        The feature axis is moved last (when it is not already); then the other axes are read
        as ``batch_size * positions`` rows of ``features`` entries.
        """
        if self.feature_axis is not None:
            grads = grads.movedim(1 + self.feature_axis, -1)
        return grads.reshape(grads.shape[0], batch_size, self.positions, self.features)


def _describe(name: str, module: nn.Module) -> str:
    return f"layer {name!r} ({type(module).__name__})"


def unknown_layout_error(
    name: str, module: nn.Module, shape: tuple[int, ...], reason: str
) -> LayerSelectionError:
    """The error for a layer input whose feature axis nfm does not know.

    Names the layer, its type and the input shape, says why (``reason``) and how to declare a
    layout with :func:`~nfm.models.adapters.register_adapter`.
    """
    kind = type(module).__name__
    return LayerSelectionError(
        f"{_describe(name, module)} receives an input of shape {shape}: {reason}. "
        "nfm takes the AGOP of a (batch, features) input for any layer, but for more "
        "dimensions it must know which axis holds the features. Declare it for this layer "
        "type, e.g. for channels first "
        f"nfm.models.adapters.register_adapter({kind}, FeatureAxisAdapter(feature_axis=1)), "
        f"or for features last (tokens) register_adapter({kind}, FeatureAxisAdapter(-1)); "
        "or select another layer"
    )


def features_on_axis(
    name: str, module: nn.Module, shape: tuple[int, ...], batch_size: int, feature_axis: int
) -> InputLayout:
    """The layout with the features on ``feature_axis`` of ``shape`` and positions elsewhere.

    Raises
    ------
    LayerSelectionError
        ``shape`` has no such axis, or does not hold ``batch_size`` samples (its size is not
        ``batch_size`` times a whole number of feature vectors).
    """
    ndim = len(shape)
    if not -ndim <= feature_axis < ndim or feature_axis in (0, -ndim):
        raise LayerSelectionError(
            f"{_describe(name, module)} receives an input of shape {shape}, which has no "
            f"feature axis {feature_axis} (axis 0 is the batch)"
        )
    axis = feature_axis % ndim
    d = shape[axis]
    positions, remainder = divmod(math.prod(shape), max(1, batch_size * d))
    if remainder or positions == 0:
        raise LayerSelectionError(
            f"{_describe(name, module)} receives a tensor of shape {shape}, which does not hold "
            f"{batch_size} samples of {d} features (feature axis {axis})"
        )
    return InputLayout(positions, d, None if axis == ndim - 1 else axis)


class LayerAdapter(ABC):
    """How nfm reads the layers of one family: their input layout and their weight matrix.

    Subclass it and implement :meth:`input_layout` (and :meth:`weight_matrix` when the layer
    has a weight with an NFM), then declare it with
    :func:`~nfm.models.adapters.register_adapter` (the built-in families are declared by nfm).
    An adapter is stateless: one instance serves every module of its family.
    """

    #: module types this adapter handles (used by :meth:`handles` of the built-in adapters)
    module_types: tuple[type[nn.Module], ...] = ()

    def handles(self, module: nn.Module) -> bool:
        """Whether ``module`` belongs to this family (built-in adapters only)."""
        return bool(self.module_types) and isinstance(module, self.module_types)

    @abstractmethod
    def input_layout(
        self, module: nn.Module, shape: tuple[int, ...], batch_size: int, name: str
    ) -> InputLayout:
        """Layout of the first positional input of ``module``, of ``shape``, for the AGOP.

        Parameters
        ----------
        module : nn.Module
        shape : tuple of int
            Shape of the tensor the layer receives (batch included).
        batch_size : int
            Number of samples it holds.
        name : str
            The layer's name, for messages.

        Raises
        ------
        LayerSelectionError
            The layout is not supported.
        """

    def weight_matrix(self, module: nn.Module, name: str) -> torch.Tensor:
        """The layer's weight as a detached ``(out, in)`` matrix :math:`W` (NFM = W^T W).

        ``in`` must index the same features as :meth:`input_layout`. The default raises: the
        layer has no weight matrix nfm knows how to read.
        """
        weight = getattr(module, "weight", None)
        what = (
            f"a weight of shape {tuple(weight.shape)}"
            if isinstance(weight, torch.Tensor)
            else "no weight"
        )
        raise LayerSelectionError(
            f"{_describe(name, module)} has {what}, and no weight matrix nfm knows how to read "
            "as (out, in); the NFM W^T W is defined for nn.Linear, HF Conv1D and convolution "
            "layers, or for a layer type whose adapter (register_adapter) defines weight_matrix"
        )

    def probe(self, module: nn.Module, name: str, split: HeadSplit | None = None) -> LayerProbe:
        """The probe the engine differentiates this layer with (see :mod:`.probes`).

        The default takes the AGOP with respect to the first positional input, laid out by
        :meth:`input_layout`; it cannot split a layer into heads.
        """
        if split is not None:
            raise _no_heads_error(module, name)
        return InputProbe(name, lambda shape, b: self.input_layout(module, shape, b, name))

    def weight_matrices(
        self, module: nn.Module, name: str, split: HeadSplit | None = None
    ) -> dict[str, torch.Tensor]:
        """``{result key: (out, in) weight}`` for the NFM of each key of :meth:`probe`.

        The default is ``{name: weight_matrix(module, name)}``; with a head split, one block of
        rows of :math:`W` per head, under the keys of :func:`~.probes.head_blocks` (for layers
        whose :meth:`probe` splits the same way).
        """
        weight = self.weight_matrix(module, name)
        if split is None:
            return {name: weight}
        return {b.key: weight[b.rows] for b in self.head_blocks(module, name, split, weight)}

    def head_blocks(
        self, module: nn.Module, name: str, split: HeadSplit, weight: torch.Tensor
    ) -> list[RowBlock]:
        """Row blocks of ``weight`` for ``split`` (layers that cannot be split raise)."""
        raise _no_heads_error(module, name)

    def feature_count(self, module: nn.Module) -> int | None:
        """Number of input features the layer declares (``None`` when it declares none)."""
        return None

    def expected_input(self, module: nn.Module) -> str | None:
        """What the layer expects, for error messages (e.g. ``"in_features=5"``)."""
        count = self.feature_count(module)
        return None if count is None else f"{count} input features"


def _no_heads_error(module: nn.Module, name: str) -> LayerSelectionError:
    return LayerSelectionError(
        f"{_describe(name, module)} cannot be split into heads: heads= applies to linear "
        "projections (nn.Linear, Hugging Face Conv1D) and nn.MultiheadAttention"
    )


def split_blocks(name: str, weight: torch.Tensor, split: HeadSplit) -> list[RowBlock]:
    """Row blocks of an ``(out, in)`` projection weight split into parts and heads."""
    return head_blocks(name, int(weight.shape[0]), split)


class FeatureAxisAdapter(LayerAdapter):
    """Inputs with the features on one axis and positions on every other non-batch axis.

    Parameters
    ----------
    feature_axis : int
        Axis of the layer input (batch axis 0 included) holding the features: ``-1`` features
        last (tokens ``(batch, T, d)``), ``1`` channels first (``(batch, C, H, W)``: one
        ``C``-vector per pixel).
    """

    def __init__(self, feature_axis: int = -1) -> None:
        if isinstance(feature_axis, bool) or not isinstance(feature_axis, int):
            raise LayerSelectionError(f"feature_axis must be an int; got {feature_axis!r}")
        if feature_axis == 0:
            raise LayerSelectionError("feature_axis must not be 0: axis 0 is the batch")
        self.feature_axis = feature_axis

    def __repr__(self) -> str:
        return f"{type(self).__name__}(feature_axis={self.feature_axis})"

    def input_layout(
        self, module: nn.Module, shape: tuple[int, ...], batch_size: int, name: str
    ) -> InputLayout:
        return features_on_axis(name, module, shape, batch_size, self.feature_axis)


class GenericAdapter(LayerAdapter):
    """The adapter of a module no other adapter is declared for.

    A ``(batch, features)`` input has one unambiguous feature axis, so its AGOP is taken for any
    module (an activation, a custom block); an input of three or more dimensions raises
    (channels first or features last cannot be told apart from the shape) with a message that
    says how to declare its layout. It has no weight matrix.
    """

    def input_layout(
        self, module: nn.Module, shape: tuple[int, ...], batch_size: int, name: str
    ) -> InputLayout:
        if len(shape) == 2:
            return features_on_axis(name, module, shape, batch_size, -1)
        raise unknown_layout_error(
            name,
            module,
            shape,
            f"nfm has no adapter for {type(module).__name__} and does not know where the "
            f"features of a {len(shape)}-dimensional input are (channels first? features last?)",
        )

    def feature_count(self, module: nn.Module) -> int | None:
        count = getattr(module, "in_features", None)
        return count if isinstance(count, int) and not isinstance(count, bool) else None

    def expected_input(self, module: nn.Module) -> str | None:
        count = self.feature_count(module)
        return None if count is None else f"in_features={count}"
