r"""Turn a Hugging Face model into a function ``token ids -> tensor (batch, ...)`` for the AGOP.

nfm's gradient engine needs a module whose forward takes one batch tensor and returns one tensor
with the batch first. A Hugging Face model returns a ``ModelOutput`` (a dict-like object) and a
causal LM returns ``(T, V)`` logits per sample, far more outputs than an AGOP needs.
:class:`SelectedOutput` calls the model on ``input_ids`` (no attention mask: every position is a
real token, see :func:`nfm.hf.corpus.token_windows`), picks one field of the ``ModelOutput``
(``logits``, ``last_hidden_state``, ...), keeps some positions and optionally averages them:

.. math::

    f(x) = \mathrm{pool}\big(\mathrm{field}(\mathrm{model}(x))[:, S]\big),

with :math:`S` all positions, the last one, one index, or a boolean mask over the ``T``
positions; ``pool="mean"`` averages over :math:`S` (the mean-pooled sentence embedding of a
sentence-transformers encoder when :math:`S` is every position).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from nfm.exceptions import NFMInputError

__all__ = ["SelectedOutput"]

_POSITION_WORDS = ("all", "last")


class SelectedOutput(nn.Module):
    """``f(input_ids)``: one field of a Hugging Face model's output, at chosen positions.

    Parameters
    ----------
    model : nn.Module
        A Hugging Face model (or any module taking ``input_ids=`` and returning a mapping, an
        object with the field as attribute, or a tensor when ``field`` is None). It becomes the
        submodule ``model``, so its layers are named ``"model.<its own names>"``.
    field : str or None
        The output field (``"logits"``, ``"last_hidden_state"``, ...); None: the model returns
        a tensor.
    positions : "all", "last", int or bool tensor of shape (T,)
        Which positions of the ``(batch, T, ...)`` field to keep. An int or ``"last"`` drops
        the position axis; ``"all"`` and a mask keep it.
    pool : None or "mean"
        ``"mean"``: average over the kept positions (needs ``"all"`` or a mask).
    call_kwargs : mapping, optional
        Further keyword arguments of every model call, e.g. ``{"logits_to_keep": 1}`` for a
        causal LM analysed at its last position (its LM head then runs on that position only).

    Examples
    --------
    >>> f = SelectedOutput(bert, field="last_hidden_state", pool="mean")  # doctest: +SKIP
    >>> g = SelectedOutput(causal_lm, field="logits", positions="last")  # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        field: str | None = "logits",
        positions: str | int | torch.Tensor = "all",
        pool: str | None = None,
        call_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise NFMInputError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        if field is not None and not isinstance(field, str):
            raise NFMInputError(f"field must be a str or None; got {field!r}")
        if isinstance(positions, torch.Tensor):
            if positions.dtype != torch.bool or positions.ndim != 1 or not bool(positions.any()):
                raise NFMInputError(
                    "positions given as a tensor must be a 1-D boolean mask over the T "
                    f"positions with at least one True; got dtype {positions.dtype}, shape "
                    f"{tuple(positions.shape)}"
                )
            positions = positions.detach().clone()
        elif isinstance(positions, bool) or not (
            positions in _POSITION_WORDS or isinstance(positions, int)
        ):
            raise NFMInputError(
                f"positions must be 'all', 'last', an int or a boolean mask; got {positions!r}"
            )
        if pool not in (None, "mean"):
            raise NFMInputError(f"pool must be None or 'mean'; got {pool!r}")
        if pool == "mean" and not (isinstance(positions, torch.Tensor) or positions == "all"):
            raise NFMInputError(
                f"pool='mean' averages over several positions; got positions={positions!r} "
                "(use 'all' or a mask)"
            )
        self.model = model
        self.call_kwargs = dict(call_kwargs or {})
        if "input_ids" in self.call_kwargs:
            raise NFMInputError("call_kwargs must not hold 'input_ids': it is the forward input")
        self.field = field
        self.positions = positions
        self.pool = pool

    def extra_repr(self) -> str:
        where = "mask" if isinstance(self.positions, torch.Tensor) else repr(self.positions)
        return f"field={self.field!r}, positions={where}, pool={self.pool!r}"

    def _field(self, out: Any) -> torch.Tensor:
        if self.field is None:
            value = out
        elif isinstance(out, Mapping):
            if self.field not in out or out[self.field] is None:
                raise NFMInputError(
                    f"field {self.field!r} is not in the model's output; it has "
                    f"{[k for k, v in out.items() if v is not None]}"
                )
            value = out[self.field]
        else:
            value = getattr(out, self.field, None)
            if value is None:
                raise NFMInputError(
                    f"the model returned a {type(out).__name__} without a field "
                    f"{self.field!r}; pass field=None if it returns a tensor"
                )
        if not isinstance(value, torch.Tensor):
            raise NFMInputError(
                f"field {self.field!r} of the model output is a {type(value).__name__}, not a "
                "tensor"
            )
        return value

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The selected output, ``(batch, ...)``."""
        value = self._field(self.model(input_ids=input_ids, **self.call_kwargs))
        keep_all = isinstance(self.positions, str) and self.positions == "all"
        if keep_all and self.pool is None:
            return value
        if value.ndim < 2:
            raise NFMInputError(
                f"field {self.field!r} has shape {tuple(value.shape)}: no position axis to "
                f"select positions={self.positions!r} from"
            )
        n_positions = value.shape[1]
        if isinstance(self.positions, torch.Tensor):
            if self.positions.numel() != n_positions:
                raise NFMInputError(
                    f"the positions mask has {self.positions.numel()} entries but the output "
                    f"has {n_positions} positions (shape {tuple(value.shape)})"
                )
            value = value[:, self.positions.to(value.device)]
        elif isinstance(self.positions, str):
            if self.positions == "last":
                value = value[:, -1]
        else:
            if not -n_positions <= self.positions < n_positions:
                raise NFMInputError(
                    f"positions={self.positions} is out of range for {n_positions} positions"
                )
            value = value[:, self.positions]
        if self.pool == "mean":
            value = value.mean(dim=1)
        return value
