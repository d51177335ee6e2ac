r"""Which model outputs an AGOP sums over: all, a subset, a projection :math:`P f`, or a sketch.

:data:`OutputSpec` is ``None`` (all ``c`` outputs), one index, a sequence of indices, a
``(k, c)`` matrix :math:`P`, or a :class:`GaussianSketch`; :func:`output_projection` turns the
first four into the matrix :math:`P` whose rows are the cotangents of the batched
vector-Jacobian products, and :meth:`GaussianSketch.probes` draws the per-sample random
cotangents of a sketch.

**The random sketch.** A model with a huge output space (a causal LM's vocabulary) makes the
exact AGOP cost ``c`` backward passes. With :math:`k \ll c` probes :math:`G_i \in
\mathbb{R}^{k \times c}` of i.i.d. :math:`N(0, 1/k)` entries, drawn afresh for every sample,

.. math::

    \hat A = \frac1n \sum_i J_i^T G_i^T G_i J_i, \qquad
    \mathbb{E}[\hat A] = \frac1n \sum_i J_i^T\, \mathbb{E}[G_i^T G_i]\, J_i = A,

since :math:`\mathbb{E}[G^T G] = I`: the sketch is unbiased. For one Jacobian row per sample
(``(batch, features)`` inputs), with :math:`A_i = J_i^T J_i`, its mean squared error is

.. math::

    \mathbb{E}\,\|\hat A - A\|_F^2 = \frac{1}{k n^2} \sum_i \left(\|A_i\|_F^2
    + \operatorname{tr}(A_i)^2\right),

(:func:`sketch_mean_squared_error`), so the relative error falls as :math:`1/\sqrt{k n}`
(at most :math:`\sqrt{(1 + \mathrm{rank})/(k n)}`-ish for samples alike). The probes are a
function of ``seed`` and of each sample's index in the data, not of the chunking.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from nfm._utils.arrays import check_finite, to_tensor
from nfm.exceptions import NFMInputError

__all__ = [
    "GaussianSketch",
    "OutputSpec",
    "check_sketch_not_centered",
    "output_projection",
    "sketch_mean_squared_error",
]


@dataclass(frozen=True)
class GaussianSketch:
    r"""An unbiased random sketch of the AGOP with ``k`` Gaussian probes per sample.

    Pass it as ``outputs=GaussianSketch(k)`` to :func:`nfm.features.compute_agop` (and every
    function taking ``outputs``). See the module docstring for the estimator and its error.

    Parameters
    ----------
    k : int
        Probes per sample (backward passes per chunk).
    seed : int
        Seed of the probes; sample ``i`` of the data always gets the same probes.
    """

    k: int
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or self.k < 1:
            raise NFMInputError(f"GaussianSketch k must be a positive int; got {self.k!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise NFMInputError(f"GaussianSketch seed must be an int; got {self.seed!r}")

    def probes(
        self, start: int, n: int, c: int, dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        """The probes ``(k, n, c)`` of samples ``start .. start + n - 1``, entries N(0, 1/k).

        Sample ``i``'s probes come from a generator seeded by ``SeedSequence([seed, i])``.
        """
        out = torch.empty(self.k, n, c, dtype=torch.float64)
        scale = 1.0 / np.sqrt(self.k)
        for j in range(n):
            sequence = np.random.SeedSequence([int(self.seed), start + j])
            gen = torch.Generator().manual_seed(int(sequence.generate_state(1, np.uint64)[0] >> 1))
            out[:, j, :] = torch.randn(self.k, c, generator=gen, dtype=torch.float64) * scale
        return out.to(device=device, dtype=dtype)


def sketch_mean_squared_error(per_sample_agops: Sequence[torch.Tensor], k: int) -> float:
    r"""Expected :math:`\|\hat A - A\|_F^2` of a :class:`GaussianSketch` with ``k`` probes.

    For samples with one Jacobian row block each, :math:`A_i = J_i^T J_i`:
    :math:`\frac{1}{k n^2} \sum_i (\|A_i\|_F^2 + \operatorname{tr}(A_i)^2)`.
    """
    n = len(per_sample_agops)
    total = sum(
        float(torch.linalg.matrix_norm(a) ** 2 + torch.trace(a) ** 2) for a in per_sample_agops
    )
    return total / (k * n * n)


#: Which outputs the AGOP sums over: ``None`` (all), one index, a sequence of indices, a
#: ``(k, c)`` projection matrix ``P`` (the AGOP of ``P f``), or a :class:`GaussianSketch`.
OutputSpec = int | Sequence[int] | torch.Tensor | np.ndarray | GaussianSketch | None


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


def check_sketch_not_centered(outputs: OutputSpec, centered: bool) -> None:
    """A sketch has no mean Jacobian to subtract: refuse ``centered=True`` with a sketch."""
    if centered and isinstance(outputs, GaussianSketch):
        raise NFMInputError(
            "centered=True cannot be combined with outputs=GaussianSketch(...): each sample "
            "has its own random probes, so the mean sketched Jacobian is not the sketch of the "
            "mean Jacobian. Use centered=False, or exact outputs"
        )
