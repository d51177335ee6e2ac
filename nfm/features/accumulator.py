r"""Mergeable partial sums of Jacobian outer products: the state behind every AGOP.

An AGOP is a plain sum over data, :math:`\sum_r J_r^T J_r` divided by the number of rows, so partial
sums over chunks, data shards, processes or devices merge exactly. :class:`AGOPAccumulator` holds
them in float64; :class:`PartialSums` collects one pass's sums in the compute dtype with a blocked
symmetric rank-k update and flushes them into the accumulator.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from nfm._utils.arrays import check_finite, to_tensor
from nfm.exceptions import NFMInputError

__all__ = ["AGOPAccumulator", "PartialSums"]


# --------------------------------------------------------------------------------------------
# Partial sums
# --------------------------------------------------------------------------------------------


class AGOPAccumulator:
    r"""Partial sums of Jacobian outer products, per key: first-class, mergeable AGOP state.

    For each key (a layer name or :data:`~nfm.models.selection.INPUT_KEY`) it holds, in float64,

    * ``n_samples``: number of samples seen, and ``n_rows``: number of Jacobians seen (samples
      times positions, e.g. the token positions of a transformer layer),
    * ``sum_jtj`` :math:`= \sum_r J_r^T J_r` (``(d, d)``),
    * ``sum_j`` :math:`= \sum_r J_r` (``(k, d)``, ``k`` outputs),

    where :math:`r` runs over rows (sample, position). The AGOP is ``sum_jtj / n_rows``; the
    centred AGOP is ``sum_jtj / n_rows - Jbar^T Jbar`` with ``Jbar = sum_j / n_rows``.

    Every field is a plain sum, so accumulators over disjoint data merge exactly with
    :meth:`merge`, and across processes with :func:`nfm.distributed.reduce_accumulator`, which
    checks first that every rank holds the same keys and shapes (a bare ``all_reduce`` of
    :meth:`tensors` would add misaligned tensors when they differ), lets ranks with no samples
    take part, and sends all sums in one collective.

    Parameters
    ----------
    device : torch.device or str, optional
        Where the sums live (default: where the first update comes from).
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = None if device is None else torch.device(device)
        # key -> [counts (2,) = (n_samples, n_rows), sum_jtj (d, d), sum_j (k, d)], float64
        self._state: dict[str, list[torch.Tensor]] = {}

    # ---- inspection -------------------------------------------------------------------------
    def keys(self) -> list[str]:
        """Keys in insertion (model) order."""
        return list(self._state)

    def __contains__(self, key: object) -> bool:
        return key in self._state

    def __len__(self) -> int:
        return len(self._state)

    def n_samples(self, key: str) -> int:
        """Number of samples accumulated under ``key``."""
        return round(float(self._state[key][0][0]))

    def n_rows(self, key: str) -> int:
        """Number of Jacobians (samples x positions) accumulated under ``key``."""
        return round(float(self._state[key][0][1]))

    def tensors(self) -> list[torch.Tensor]:
        """The raw float64 sum tensors (counts, sum_jtj, sum_j per key, in key order).

        Updating them in place updates the accumulator; every one is a plain sum over data
        (to sum them across processes, use :func:`nfm.distributed.reduce_accumulator`).
        """
        return [t for key in self._state for t in self._state[key]]

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """``{key: {"counts": (2,), "sum_jtj": (d, d), "sum_j": (k, d)}}`` (not copies)."""
        return {
            key: {"counts": c, "sum_jtj": s, "sum_j": j} for key, (c, s, j) in self._state.items()
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Mapping[str, Any]]) -> AGOPAccumulator:
        """Rebuild an accumulator from :meth:`state_dict` output (tensors or arrays)."""
        acc = cls()
        for key, fields in state.items():
            try:
                counts = to_tensor(fields["counts"], "counts", dtype=torch.float64)
                sum_jtj = to_tensor(fields["sum_jtj"], "sum_jtj", dtype=torch.float64)
                sum_j = to_tensor(fields["sum_j"], "sum_j", dtype=torch.float64)
            except KeyError as exc:
                raise NFMInputError(
                    f"state[{key!r}] must have 'counts', 'sum_jtj' and 'sum_j'; missing {exc}"
                ) from None
            acc._add(key, counts.reshape(2), sum_jtj, sum_j)
        return acc

    # ---- updates ----------------------------------------------------------------------------
    def _add(
        self, key: str, counts: torch.Tensor, sum_jtj: torch.Tensor, sum_j: torch.Tensor
    ) -> None:
        if self.device is None:
            self.device = sum_jtj.device
        if key not in self._state:
            d = sum_jtj.shape[-1]
            if sum_jtj.shape != (d, d) or sum_j.ndim != 2 or sum_j.shape[1] != d:
                raise NFMInputError(
                    f"partial sums for {key!r} have inconsistent shapes: sum_jtj "
                    f"{tuple(sum_jtj.shape)}, sum_j {tuple(sum_j.shape)}"
                )
            self._state[key] = [
                torch.zeros(2, dtype=torch.float64, device=self.device),
                torch.zeros(d, d, dtype=torch.float64, device=self.device),
                torch.zeros(sum_j.shape, dtype=torch.float64, device=self.device),
            ]
        c, s, j = self._state[key]
        if s.shape != sum_jtj.shape or j.shape != sum_j.shape:
            raise NFMInputError(
                f"cannot add partial sums for {key!r}: shapes sum_jtj {tuple(sum_jtj.shape)}, "
                f"sum_j {tuple(sum_j.shape)} differ from the accumulated {tuple(s.shape)}, "
                f"{tuple(j.shape)}"
            )
        c.add_(counts.to(c.device))
        s.add_(sum_jtj.to(s.device))
        j.add_(sum_j.to(j.device))

    def _add_gradients(self, key: str, grads: torch.Tensor, n_samples: int) -> None:
        """Add Jacobians laid out outputs first: ``grads`` is ``(k, n, p, d)``."""
        partial = PartialSums()
        partial.add(grads, n_samples)
        partial.flush_into(self, key)

    def update(self, key: str, jacobians: Any) -> AGOPAccumulator:
        """Add per-sample Jacobians.

        Parameters
        ----------
        key : str
            Layer name or ``"input"``.
        jacobians : array or tensor, shape ``(n, k, d)`` or ``(n, p, k, d)``
            :math:`J(x_i)` for ``n`` samples (``k`` outputs, ``d`` features), optionally for
            ``p`` positions per sample (e.g. tokens), each position one Jacobian.

        Returns
        -------
        self
        """
        t = to_tensor(jacobians, "jacobians")
        if not t.is_floating_point():
            t = t.to(torch.float64)
        if t.ndim == 3:
            t = t.unsqueeze(1)
        if t.ndim != 4:
            raise NFMInputError(
                f"jacobians must have shape (n, k, d) or (n, p, k, d); got {tuple(t.shape)}"
            )
        check_finite(t, "jacobians")
        n = t.shape[0]
        self._add_gradients(key, t.permute(2, 0, 1, 3).contiguous(), n)
        return self

    def merge(self, other: AGOPAccumulator) -> AGOPAccumulator:
        """Add ``other``'s partial sums into this accumulator (in place); return ``self``.

        Keys only in ``other`` are added; shapes of shared keys must agree.
        """
        if not isinstance(other, AGOPAccumulator):
            raise NFMInputError(f"other must be an AGOPAccumulator; got {type(other).__name__}")
        for key, (c, s, j) in other._state.items():
            self._add(key, c, s, j)
        return self

    # ---- results ----------------------------------------------------------------------------
    def result(
        self, centered: bool = False, dtype: torch.dtype | None = None
    ) -> dict[str, torch.Tensor]:
        r"""The AGOP (or centred AGOP) of every key, as float64 tensors (or ``dtype``).

        Centred: :math:`S / m - \bar J^T \bar J` with :math:`S = \sum_r J_r^T J_r`,
        :math:`\bar J = \frac{1}{m}\sum_r J_r`, :math:`m` = number of rows, computed in float64
        from float64 sums and symmetrised. The subtraction loses relative accuracy when the
        mean Jacobian dominates (error about :math:`\epsilon \lVert S/m \rVert`, with
        :math:`\epsilon` the precision the Jacobians were computed in); compute in float64
        (``dtype=torch.float64`` in :func:`compute_agop`) when that matters.
        """
        out: dict[str, torch.Tensor] = {}
        for key, (c, s, j) in self._state.items():
            m = float(c[1])
            if m <= 0:
                raise NFMInputError(f"no samples were accumulated under {key!r}")
            agop = s / m
            if centered:
                mean_j = j / m
                agop = agop - mean_j.T @ mean_j
            agop = 0.5 * (agop + agop.T)
            out[key] = agop if dtype is None else agop.to(dtype)
        return out


# Block width of the symmetric rank-k update: only the blocks on and above the diagonal are
# multiplied, about (1 + block / d) / 2 of the full product's multiply-adds.
_SYRK_BLOCK = 256


def _as_rows(grads: torch.Tensor) -> torch.Tensor:
    """Jacobian rows ``(m, d)`` of ``grads`` ``(k, n, p, d)`` without copying when possible.

    The row order does not matter for :math:`G^T G`, so any memory order of the leading
    dimensions is accepted (batched backward passes may return them permuted).
    """
    d = grads.shape[-1]
    if grads.stride(-1) == 1:
        lead = sorted(range(grads.ndim - 1), key=lambda i: grads.stride(i), reverse=True)
        permuted = grads.permute(*lead, grads.ndim - 1)
        if permuted.is_contiguous():
            return permuted.view(-1, d)
    return grads.reshape(-1, d)


def _add_upper_gram(buffer: torch.Tensor, rows: torch.Tensor) -> None:
    """``buffer += rows^T rows`` on and above the diagonal blocks (a blocked syrk).

    The blocks below the diagonal are left untouched; :func:`_symmetric_from_upper` completes
    the matrix. Every product is a matrix-matrix multiply (``addmm_`` straight into the
    buffer, no temporary).
    """
    d = rows.shape[1]
    if d < 2 * _SYRK_BLOCK:
        buffer.addmm_(rows.T, rows)
        return
    for lo in range(0, d, _SYRK_BLOCK):
        hi = min(lo + _SYRK_BLOCK, d)
        buffer[lo:hi, lo:].addmm_(rows[:, lo:hi].T, rows[:, lo:])


def _symmetric_from_upper(buffer: torch.Tensor) -> torch.Tensor:
    upper = torch.triu(buffer)
    return upper + torch.triu(buffer, diagonal=1).T


class PartialSums:
    """Per-key sums of one pass, kept in the compute dtype and flushed to float64 regularly."""

    def __init__(self) -> None:
        self.gram: torch.Tensor | None = None
        self.sum_j: torch.Tensor | None = None
        self.n_samples = 0
        self.n_rows = 0
        self.pending = 0

    def add(self, grads: torch.Tensor, n_samples: int) -> None:
        """Add all ``k`` output rows of ``n_samples`` samples: ``grads`` is ``(k, n, p, d)``."""
        self.add_block(grads, 0, grads.shape[0])
        self.add_counts(n_samples, grads.shape[1] * grads.shape[2])

    def add_block(self, grads: torch.Tensor, first_output: int, n_outputs: int) -> None:
        """Add rows ``first_output ...`` of ``n_outputs``; ``grads`` is ``(k_block, n, p, d)``.

        The Gram matrix is additive over output rows, so output blocks need no concatenation.
        """
        if grads.dtype in (torch.float16, torch.bfloat16):  # sum half-precision Jacobians in fp32
            grads = grads.float()
        k_block, _, _, d = grads.shape
        if self.gram is None:
            self.gram = torch.zeros(d, d, dtype=grads.dtype, device=grads.device)
            self.sum_j = torch.zeros(n_outputs, d, dtype=grads.dtype, device=grads.device)
        _add_upper_gram(self.gram, _as_rows(grads))
        self.sum_j[first_output : first_output + k_block].add_(grads.sum(dim=(1, 2)))

    def add_counts(self, n_samples: int, n_rows: int) -> None:
        self.n_samples += n_samples
        self.n_rows += n_rows
        self.pending += 1

    def clone(self) -> PartialSums:
        twin = PartialSums()
        twin.gram = None if self.gram is None else self.gram.clone()
        twin.sum_j = None if self.sum_j is None else self.sum_j.clone()
        twin.n_samples, twin.n_rows, twin.pending = self.n_samples, self.n_rows, self.pending
        return twin

    def add_to(
        self, accumulator: AGOPAccumulator, key: str, transform: torch.Tensor | None = None
    ) -> None:
        r"""Add these sums to ``accumulator`` under ``key`` (in float64).

        With ``transform`` :math:`W` (``(e, d)``), the sums were collected for rows
        :math:`g` and the Jacobians are :math:`J = g W`: what is added is
        :math:`W^T (\sum g^T g) W` and :math:`(\sum g) W`, computed in float64 (exact
        algebra, one product per flush instead of one per row).
        """
        if self.gram is None or self.pending == 0:
            return
        counts = torch.tensor([float(self.n_samples), float(self.n_rows)], dtype=torch.float64)
        gram, sum_j = _symmetric_from_upper(self.gram), self.sum_j
        if transform is not None:
            w = transform.to(device=gram.device, dtype=torch.float64)
            gram = w.T @ gram.double() @ w
            gram = 0.5 * (gram + gram.T)
            sum_j = sum_j.double() @ w
        accumulator._add(key, counts, gram, sum_j)

    def reset(self) -> None:
        if self.gram is not None and self.sum_j is not None:
            self.gram.zero_()
            self.sum_j.zero_()
        self.n_samples = self.n_rows = self.pending = 0

    def flush_into(self, accumulator: AGOPAccumulator, key: str) -> None:
        self.add_to(accumulator, key)
        self.reset()
