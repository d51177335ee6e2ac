"""Conversion between numpy arrays and torch tensors, keeping track of what came in.

The library computes in torch; public functions return the kind of array they were given
(numpy in, numpy out; a torch tensor on its device in, a torch tensor on that device out).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch

from nfm.exceptions import NFMInputError

ArrayKind = Literal["numpy", "torch"]

__all__ = ["ArrayKind", "array_kind", "check_finite", "restore_kind", "to_tensor"]


def array_kind(x: Any) -> ArrayKind:
    """Return ``"torch"`` for a tensor and ``"numpy"`` for anything else array-like."""
    return "torch" if isinstance(x, torch.Tensor) else "numpy"


def to_tensor(
    x: Any,
    name: str,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Convert ``x`` (tensor, numpy array or nested sequence) to a torch tensor.

    Parameters
    ----------
    x : array-like or torch.Tensor
        The data.
    name : str
        The argument's name, used in error messages.
    dtype, device : optional
        Target dtype and device; ``None`` keeps the tensor's own (numpy data keeps its dtype).

    Raises
    ------
    NFMInputError
        If ``x`` cannot be converted to a numeric tensor.
    """
    if isinstance(x, torch.Tensor):
        t = x
    else:
        try:
            arr = np.asarray(x)
        except Exception as exc:  # pragma: no cover - numpy's own errors vary
            raise NFMInputError(
                f"{name} must be array-like; got {type(x).__name__} ({exc})"
            ) from None
        if arr.dtype == object or not (
            np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_
        ):
            raise NFMInputError(
                f"{name} must hold numbers; got an array of dtype {arr.dtype} and shape {arr.shape}"
            )
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if dtype is not None or device is not None:
        t = t.to(dtype=dtype if dtype is not None else t.dtype, device=device)
    return t


def restore_kind(t: torch.Tensor, kind: ArrayKind) -> Any:
    """Return ``t`` as the kind of array the caller passed in (detached)."""
    t = t.detach()
    if kind == "torch":
        return t
    return t.cpu().numpy()


def check_finite(t: torch.Tensor, name: str) -> None:
    """Raise :class:`NFMInputError` if ``t`` holds NaN or infinite values.

    The message gives the number of bad entries and the first bad row.
    """
    if not (t.is_floating_point() or t.is_complex()):
        return
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        n_bad = int(bad.sum())
        first = int(bad.reshape(bad.shape[0], -1).any(dim=1).nonzero()[0, 0]) if t.ndim else 0
        raise NFMInputError(
            f"{name} contains {n_bad} NaN or infinite value(s) (first in row {first}); "
            f"shape {tuple(t.shape)}. Remove or impute them first."
        )
