"""Validators shared by the public functions: the one square-matrix check of the package.

Positive semi-definiteness is judged where the eigenvalues are computed anyway, by
:func:`nfm.linalg.psd_eigh` (a warning, since rounding makes PSD matrices slightly indefinite).
"""

from __future__ import annotations

import torch

from nfm.exceptions import NFMInputError

__all__ = ["check_square"]


def check_square(t: torch.Tensor, name: str) -> None:
    """Raise :class:`NFMInputError` naming ``name`` unless ``t`` is a square 2-D matrix."""
    if t.ndim != 2 or t.shape[0] != t.shape[1]:
        raise NFMInputError(f"{name} must be a square matrix; got shape {tuple(t.shape)}")
