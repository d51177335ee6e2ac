r"""Argument checks shared by the public solvers of :math:`(K + \lambda I) A = Y`."""

from __future__ import annotations

import math
import numbers

import torch

from nfm._utils.validation import check_square
from nfm.exceptions import NFMInputError

__all__ = ["as_right_hand_sides", "check_integer", "check_kernel_system", "check_reg"]


def _check_finite(t: torch.Tensor, name: str) -> None:
    """Raise unless every entry of ``t`` is finite.

    The sum is one pass without an ``n x n`` temporary; a non-finite sum (NaN / inf entries, or
    an overflow of finite ones) triggers the exact, allocating check.
    """
    if t.numel() == 0 or math.isfinite(float(t.sum())):
        return
    bad = ~torch.isfinite(t)
    count = int(bad.sum())
    if count:
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise NFMInputError(
            f"{name} must be finite; got {count} NaN/inf entries of {t.numel()} "
            f"(shape {tuple(t.shape)}; first at index {first}: {float(t[first])})"
        )


def check_kernel_system(K: object, Y: object, reg: object) -> float:
    r"""Validate the system :math:`(K + \lambda I) A = Y`; returns ``reg`` as a float.

    Raises :class:`~nfm.exceptions.NFMInputError` unless ``K`` is a finite real floating
    ``(n, n)`` tensor, ``Y`` a finite real ``(n,)`` or ``(n, c)`` tensor with the same ``n`` and
    ``reg`` a finite real number ``>= 0``.
    """
    if not isinstance(K, torch.Tensor):
        raise NFMInputError(f"K must be a torch.Tensor; got {type(K).__name__}")
    if not isinstance(Y, torch.Tensor):
        raise NFMInputError(f"Y must be a torch.Tensor; got {type(Y).__name__}")
    check_square(K, "K")
    if not K.dtype.is_floating_point:
        raise NFMInputError(f"K must have a real floating dtype; got {K.dtype}")
    if Y.is_complex():
        raise NFMInputError(f"Y must be real; got dtype {Y.dtype}")
    if Y.ndim not in (1, 2):
        raise NFMInputError(
            f"Y must be a vector (n,) or a matrix (n, c); got {Y.ndim}-D shape {tuple(Y.shape)}"
        )
    if Y.shape[0] != K.shape[0]:
        raise NFMInputError(
            f"Y has {Y.shape[0]} rows (shape {tuple(Y.shape)}) but K is "
            f"{K.shape[0]} x {K.shape[1]}; they must match"
        )
    reg = check_reg(reg)
    _check_finite(K, "K")
    _check_finite(Y, "Y")
    return reg


def check_reg(reg: object) -> float:
    r"""``reg`` as a float; raises :class:`NFMInputError` unless it is a finite real ``>= 0``."""
    if isinstance(reg, torch.Tensor) and reg.numel() == 1 and not reg.is_complex():
        reg = reg.item()
    if isinstance(reg, bool) or not isinstance(reg, numbers.Real):
        raise NFMInputError(f"reg must be a real number >= 0; got {type(reg).__name__} {reg!r}")
    reg = float(reg)
    if not math.isfinite(reg) or reg < 0:
        raise NFMInputError(f"reg must be a finite number >= 0; got {reg!r}")
    return reg


def as_right_hand_sides(Y: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``Y`` as an ``(n, c)`` block on ``K``'s device and dtype, and whether it was a vector."""
    squeeze = Y.ndim == 1
    return Y.reshape(Y.shape[0], -1).to(device=K.device, dtype=K.dtype), squeeze


def check_integer(value: object, name: str, *, minimum: int) -> int:
    """``value`` as an ``int``; raises :class:`NFMInputError` unless it is an integer >= minimum."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise NFMInputError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)
