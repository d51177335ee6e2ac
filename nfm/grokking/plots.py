r"""Figures of grokking: accuracy with progress measures, feature-matrix heat maps, spectra.

Every function takes ``ax=None`` (one panel) or ``fig=None`` (several panels), draws into it or
into a new figure, and returns the :class:`matplotlib.figure.Figure`; nothing calls ``show()``
or changes the backend. Signed matrix entries use the diverging map ``"RdBu"`` on a symmetric
scale (blue positive, red negative), as in :mod:`nfm.viz.plotting`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from nfm.exceptions import NFMInputError
from nfm.grokking.data import feature_order
from nfm.grokking.measures import feature_block, fourier_spectrum

__all__ = [
    "plot_feature_matrices_over_time",
    "plot_fourier_spectrum",
    "plot_grokking_progress",
]

DIVERGING_CMAP = "RdBu"

_LABELS = {
    "train_accuracy": "train accuracy",
    "test_accuracy": "test accuracy",
    "circulant_deviation": "circulant deviation",
    "hankel_deviation": "Hankel deviation",
    "structure_deviation": "structure deviation",
    "alignment": "alignment with final M",
    "pearson_a0.5": "NFA corr. (α=1/2)",
    "pearson_a0.5_offdiag": "NFA corr. (α=1/2, off-diag.)",
    "pearson_a1": "NFA corr. (α=1)",
    "pearson_a1_offdiag": "NFA corr. (α=1, off-diag.)",
}
_STYLES = {
    "train_accuracy": {"color": "tab:blue", "linestyle": "--"},
    "test_accuracy": {"color": "tab:blue", "linewidth": 2.2},
    "circulant_deviation": {"color": "tab:red"},
    "hankel_deviation": {"color": "tab:orange"},
    "alignment": {"color": "tab:green"},
    "pearson_a0.5": {"color": "tab:purple"},
    "pearson_a0.5_offdiag": {"color": "tab:purple", "linestyle": ":"},
    "pearson_a1": {"color": "tab:brown"},
    "pearson_a1_offdiag": {"color": "tab:brown", "linestyle": ":"},
}


def _history_rows(result: Any) -> list[Mapping[str, Any]]:
    rows = getattr(result, "history", result)
    if not isinstance(rows, Sequence) or not rows or not isinstance(rows[0], Mapping):
        raise NFMInputError(
            "expected a grokking result or a non-empty list of history rows (dicts); "
            f"got {type(result).__name__}"
        )
    return list(rows)


def plot_grokking_progress(
    result: Any,
    *,
    x: str | None = None,
    columns: Sequence[str] | None = None,
    loss: str | None = "test_loss",
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """Accuracy and progress measures against iteration (RFM) or epoch (network), one panel.

    Accuracies, deviations, alignment and correlations all lie in [0, 1] and share the left
    axis; ``loss`` (default the test loss) is drawn on a logarithmic right axis.

    Parameters
    ----------
    result : KernelGrokkingResult, NeuralGrokkingResult or list of dict
        The per-iteration history.
    x : str, optional
        x column; default ``"iteration"`` if present, else ``"epoch"``.
    columns : sequence of str, optional
        Columns to draw; default the accuracies plus every known measure present.
    loss : str or None
        Column for the right axis (``None``: no right axis).
    ax : matplotlib Axes, optional
    title : str, optional
    """
    rows = _history_rows(result)
    keys = set(rows[0])
    if x is None:
        x = "iteration" if "iteration" in keys else "epoch"
    if x not in keys:
        raise NFMInputError(f"x column {x!r} not in the history; columns: {sorted(keys)}")
    if columns is None:
        columns = [c for c in _STYLES if c in keys]
    missing = [c for c in columns if c not in keys]
    if missing:
        raise NFMInputError(f"columns {missing} not in the history; columns: {sorted(keys)}")
    if ax is None:
        fig, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
    else:
        fig = ax.figure
    xs = np.array([row[x] for row in rows], dtype=float)
    for column in columns:
        ys = np.array([row[column] for row in rows], dtype=float)
        ax.plot(xs, ys, label=_LABELS.get(column, column), **_STYLES.get(column, {}))
    ax.set_xlabel(x)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("accuracy / measure")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if loss is not None and loss in keys:
        right = ax.twinx()
        values = np.array([row[loss] for row in rows], dtype=float)
        (line,) = right.plot(xs, values, color="0.4", linestyle="-.", label=loss.replace("_", " "))
        if np.all(values[np.isfinite(values)] > 0):
            right.set_yscale("log")
        right.set_ylabel(loss.replace("_", " "))
        handles.append(line)
        labels.append(line.get_label())
    ax.legend(handles, labels, fontsize=8, loc="center right")
    if title:
        ax.set_title(title)
    return fig


def _reorder_full(matrix: np.ndarray, p: int, op: str, reorder: bool) -> np.ndarray:
    order = feature_order(op, p) if reorder else np.arange(p)
    index = np.concatenate([order, p + order])
    return matrix[np.ix_(index, index)]


def plot_feature_matrices_over_time(
    matrices: Sequence[Any],
    p: int,
    *,
    op: str = "add",
    labels: Sequence[str] | None = None,
    block: str = "full",
    reorder: bool = True,
    fig: Figure | None = None,
) -> Figure:
    r"""Heat maps of feature matrices (:math:`M_t` or :math:`W_1^T W_1`) at several times.

    Parameters
    ----------
    matrices : sequence of (2p, 2p) arrays
        E.g. ``[result.metrics[t] for t in (0, 5, 10, 20)]``.
    p : int
    op : str
        With ``reorder=True``, ``mul``/``div`` indices are put in discrete-log order (residue 0
        dropped) so that their structure is visible.
    labels : sequence of str, optional
        Panel titles.
    block : {"full", "ab", "aa", "bb", "ba"}
        The whole matrix (both operands, in feature order) or one :math:`p \times p` block.
    reorder : bool
    fig : Figure, optional

    Each panel has its own symmetric colour scale set by the largest off-diagonal magnitude,
    so a dominant diagonal saturates instead of washing out the structure.
    """
    if len(matrices) == 0:
        raise NFMInputError("matrices must hold at least one matrix")
    if labels is not None and len(labels) != len(matrices):
        raise NFMInputError(
            f"labels must have one entry per matrix; got {len(labels)} for {len(matrices)}"
        )
    if fig is None:
        fig = plt.figure(figsize=(3.2 * len(matrices), 3.4), layout="constrained")
    axes = fig.subplots(1, len(matrices), squeeze=False)[0]
    for k, (ax, matrix) in enumerate(zip(axes, matrices, strict=True)):
        m = np.asarray(matrix, dtype=np.float64)
        if block == "full":
            if m.shape != (2 * p, 2 * p):
                raise NFMInputError(f"matrix {k} must be {2 * p} x {2 * p}; got {m.shape}")
            shown = _reorder_full(m, p, op, reorder)
        else:
            shown = feature_block(m, p, op=op, block=block, reorder=reorder)
        off = shown[~np.eye(shown.shape[0], dtype=bool)]
        limit = float(np.max(np.abs(off))) if off.size and np.any(off) else 1.0
        image = ax.imshow(shown, cmap=DIVERGING_CMAP, vmin=-limit, vmax=limit)
        ax.set_xticks([])
        ax.set_yticks([])
        if labels is not None:
            ax.set_title(labels[k], fontsize=10)
        if block == "full":
            n = shown.shape[0] // 2
            for position in (n - 0.5,):
                ax.axhline(position, color="0.3", linewidth=0.6)
                ax.axvline(position, color="0.3", linewidth=0.6)
        fig.colorbar(image, ax=ax, shrink=0.75)
    order_note = " (discrete-log order)" if reorder and op in ("mul", "div") else ""
    fig.suptitle(f"feature matrices, {op} mod {p}{order_note}", fontsize=11)
    return fig


def plot_fourier_spectrum(
    block: Any,
    *,
    fig: Figure | None = None,
    title: str | None = None,
) -> Figure:
    r"""Fourier spectrum of a square block: :math:`|\hat B|` and its structured lines.

    Left: the magnitude of the 2-D DFT (:func:`nfm.grokking.measures.fourier_spectrum`),
    frequencies centred. Right: the circulant line :math:`|\hat B_{-k,k}|` (the eigenvalue
    magnitudes of a circulant block) and the Hankel line :math:`|\hat B_{k,k}|` against the
    frequency :math:`k`, with the fraction of energy each line carries in the legend.
    """
    spectrum = fourier_spectrum(block)
    if fig is None:
        fig = plt.figure(figsize=(9.0, 3.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    n = spectrum.magnitude.shape[0]
    shifted = np.fft.fftshift(spectrum.magnitude)
    first = -(n // 2)
    extent = (first - 0.5, first + n - 0.5, first + n - 0.5, first - 0.5)
    image = left.imshow(shifted, cmap="viridis", extent=extent)
    left.set_xlabel("$k_2$")
    left.set_ylabel("$k_1$")
    left.set_title(r"$|\hat B_{k_1 k_2}|$", fontsize=10)
    fig.colorbar(image, ax=left, shrink=0.8)
    k = np.arange(n)
    right.plot(
        k,
        spectrum.circulant,
        marker="o",
        markersize=3,
        label=f"circulant line $|\\hat B_{{-k,k}}|$ ({spectrum.circulant_energy_fraction:.0%})",
    )
    right.plot(
        k,
        spectrum.hankel,
        marker="s",
        markersize=3,
        label=f"Hankel line $|\\hat B_{{k,k}}|$ ({spectrum.hankel_energy_fraction:.0%})",
    )
    right.set_xlabel("frequency $k$")
    right.set_ylabel("magnitude")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig
