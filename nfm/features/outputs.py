r"""Which model outputs an AGOP sums over: all, a subset, or a projection :math:`P f`.

:data:`OutputSpec` is ``None`` (all ``c`` outputs), one index, a sequence of indices, or a
``(k, c)`` matrix :math:`P`; :func:`output_projection` turns it into the matrix :math:`P` whose rows
are the cotangents of the batched vector-Jacobian products.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from nfm._utils.arrays import check_finite, to_tensor
from nfm.exceptions import NFMInputError

__all__ = ["OutputSpec", "output_projection"]


#: Which outputs the AGOP sums over: ``None`` (all), one index, a sequence of indices, or a
#: ``(k, c)`` projection matrix ``P`` (the AGOP of ``P f``).
OutputSpec = int | Sequence[int] | torch.Tensor | np.ndarray | None


def output_projection(
    outputs: OutputSpec, n_outputs: int, dtype: torch.dtype, device: torch.device
):
    """The (k, c) matrix P with AGOP of P f; rows of the identity for index selections."""
    if outputs is None:
        return torch.eye(n_outputs, dtype=dtype, device=device)
    if isinstance(outputs, (torch.Tensor, np.ndarray)) and np.ndim(outputs) == 2:
        p = to_tensor(outputs, "outputs").to(device=device, dtype=dtype)
        if p.shape[1] != n_outputs:
            raise NFMInputError(
                f"outputs projection matrix has shape {tuple(p.shape)}; expected (k, "
                f"{n_outputs}) for a model with {n_outputs} outputs"
            )
        check_finite(p, "outputs")
        return p
    if isinstance(outputs, (bool, np.bool_)):
        raise NFMInputError(f"outputs must be None, an int, ints or a matrix; got {outputs!r}")
    if isinstance(outputs, (int, np.integer)):
        indices = [int(outputs)]
    else:
        try:
            indices = [int(i) for i in outputs]  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise NFMInputError(
                "outputs must be None, an output index, a sequence of indices or a (k, c) "
                f"projection matrix; got {type(outputs).__name__}"
            ) from None
        if not indices:
            raise NFMInputError("outputs is an empty sequence; select at least one output")
    bad = [i for i in indices if not -n_outputs <= i < n_outputs]
    if bad:
        raise NFMInputError(
            f"outputs {bad} out of range for a model with {n_outputs} outputs "
            f"(valid: 0 to {n_outputs - 1})"
        )
    eye = torch.eye(n_outputs, dtype=dtype, device=device)
    return eye[torch.tensor(indices, device=device)]
