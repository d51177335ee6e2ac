r"""Figures of what a network learned: neuron weights, feature matrices, NFA over training.

Every function takes ``ax=None`` (one-panel figures) or ``fig=None`` (multi-panel figures),
draws into it or into a new figure, and returns the :class:`matplotlib.figure.Figure`. Nothing
calls ``show()`` or changes the backend; close figures you no longer need
(``matplotlib.pyplot.close(fig)``).

Colour convention for signed quantities (weights, matrix entries, eigenvectors): the diverging
map ``"RdBu"`` on a symmetric scale ``[-v, v]``, so **blue is positive** ("the neuron likes this
pixel"), **red is negative** ("dislikes") and white is zero. Panels that are meant to be compared
(all hidden neurons of a layer) share one scale.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib import pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import nn

from nfm._utils.validation import check_square
from nfm.exceptions import NFMInputError
from nfm.linalg import matrix_correlation, symmetric_matrix_power
from nfm.tracking import TrackingHistory, as_history, parse_nfa_column

__all__ = [
    "DIVERGING_CMAP",
    "plot_agop_diagonal",
    "plot_feature_change",
    "plot_feature_matrices",
    "plot_neuron_weights",
    "plot_nfa_history",
    "plot_nfa_lift",
    "plot_output_weights",
    "plot_top_eigenvectors",
]

#: Diverging colour map: red negative, white zero, blue positive.
DIVERGING_CMAP = "RdBu"


def _as_matrix(x: Any, name: str) -> np.ndarray:
    """A 2-d float64 numpy array from an array, a tensor or a layer with a ``weight``."""
    if isinstance(x, nn.Module):
        weight = getattr(x, "weight", None)
        if not isinstance(weight, torch.Tensor):
            raise NFMInputError(f"{name}: module {type(x).__name__} has no weight tensor")
        x = weight
    if isinstance(x, torch.Tensor):
        x = x.detach().to(device="cpu", dtype=torch.float64).numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise NFMInputError(f"{name} must be a 2-d matrix; got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise NFMInputError(f"{name} contains NaN or infinite values; shape {arr.shape}")
    return arr


def _float_dtype(x: Any) -> torch.dtype:
    """The floating dtype ``x`` holds (float64 for anything that is not a float32/16 array)."""
    dtype = getattr(x, "dtype", None)
    if dtype in (torch.float32, torch.float16, torch.bfloat16, np.float32, np.float16):
        return torch.float32
    return torch.float64


def _check_image_shape(image_shape: Sequence[int] | None, d: int, name: str) -> tuple | None:
    if image_shape is None:
        return None
    shape = tuple(int(s) for s in image_shape)
    if math.prod(shape) != d:
        raise NFMInputError(
            f"image_shape {shape} has {math.prod(shape)} pixels but {name} has {d} entries "
            "per vector; pass the shape of one input image"
        )
    return shape


def _symmetric_limit(values: np.ndarray, robust: bool = False) -> float:
    magnitude = np.abs(values)
    vmax = float(np.percentile(magnitude, 99.5)) if robust else float(magnitude.max(initial=0))
    return vmax if vmax > 0 else 1.0


def _figure_and_axis(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig = plt.figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _new_figure(fig: Figure | None, figsize: tuple[float, float]) -> Figure:
    if fig is not None:
        return fig
    return plt.figure(figsize=figsize, layout="constrained")


def plot_neuron_weights(
    weights: Any,
    image_shape: Sequence[int],
    *,
    fig: Figure | None = None,
    max_neurons: int | None = 64,
    ncols: int | None = None,
    cmap: str = DIVERGING_CMAP,
    title: str | None = "Incoming weights of each hidden neuron",
    neuron_labels: Sequence[str] | None = None,
) -> Figure:
    """One heat map per hidden neuron of its incoming weights, shaped as the input image.

    Row ``j`` of ``W`` (``k x d``) is neuron ``j``'s weight on each input pixel; it is drawn as
    an ``image_shape`` image, blue for positive weights (the neuron is excited by ink there),
    red for negative, all neurons on one shared symmetric scale ``[-max|W|, max|W|]``.

    Parameters
    ----------
    weights : (k, d) array, tensor, or nn.Linear
        First-layer weights (``layer.weight``).
    image_shape : (height, width)
        With ``height * width == d``.
    fig : Figure, optional
        Drawn into (cleared of nothing; new axes are added).
    max_neurons : int or None
        Show at most this many neurons (the first ones); None shows all.
    ncols : int, optional
        Grid columns (default about the square root of the neuron count).
    cmap : str
        A diverging colour map; the default puts positive in blue.
    title : str or None
    neuron_labels : sequence of str, optional
        Panel titles (default ``"h1", "h2", ...``).

    Returns
    -------
    Figure
    """
    w = _as_matrix(weights, "weights")
    shape = _check_image_shape(image_shape, w.shape[1], "weights")
    n_total = w.shape[0]
    n_show = n_total if max_neurons is None else min(int(max_neurons), n_total)
    w = w[:n_show]
    ncols = int(ncols) if ncols else max(1, math.ceil(math.sqrt(n_show)))
    nrows = math.ceil(n_show / ncols)
    panel = 1.15
    width, height = panel * ncols + 1.1, panel * nrows + (0.75 if title else 0.3)
    if fig is None:
        # a fixed grid (no layout engine): a layout engine costs seconds with many panels
        fig = plt.figure(figsize=(width, height))
    width, height = fig.get_size_inches()
    fig.subplots_adjust(
        left=0.15 / width,
        right=1 - 0.95 / width,
        bottom=0.1 / height,
        top=1 - (0.7 if title else 0.25) / height,
        wspace=0.08,
        hspace=0.3,
    )
    vmax = _symmetric_limit(w)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    image = None
    for index, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if index >= n_show:
            ax.set_axis_off()
            continue
        image = ax.imshow(
            w[index].reshape(shape), cmap=cmap, vmin=-vmax, vmax=vmax, interpolation="nearest"
        )
        label = neuron_labels[index] if neuron_labels is not None else f"h{index + 1}"
        ax.set_title(label, fontsize=7, pad=1.5)
    if image is not None:
        bar_axis = fig.add_axes(
            (1 - 0.8 / width, 0.1 / height + 0.1, 0.16 / width, 0.8 * (1 - 1.0 / height))
        )
        bar = fig.colorbar(image, cax=bar_axis)
        bar.set_label("weight (blue +, red -)")
    if title:
        suffix = f" (first {n_show} of {n_total})" if n_show < n_total else ""
        fig.suptitle(title + suffix, y=1 - 0.2 / height, va="top")
    return fig


def plot_output_weights(
    weights: Any,
    *,
    ax: Axes | None = None,
    class_names: Sequence[str] | None = None,
    cmap: str = DIVERGING_CMAP,
    title: str | None = "Output neurons' weights over the hidden units",
) -> Figure:
    """Heat map of the output layer's weights: one row per output neuron, one column per unit.

    Blue positive, red negative, symmetric scale ``[-max|W|, max|W|]``.

    Parameters
    ----------
    weights : (c, k) array, tensor, or nn.Linear
        Last-layer weights.
    ax : Axes, optional
    class_names : sequence of str, optional
        Row labels (default ``0..c-1``).
    cmap, title : display options

    Returns
    -------
    Figure
    """
    w = _as_matrix(weights, "weights")
    c, k = w.shape
    fig, ax = _figure_and_axis(ax, (min(2.5 + 0.13 * k, 11.0), 1.2 + 0.32 * c))
    vmax = _symmetric_limit(w)
    # hidden units are numbered from 1, as in plot_neuron_weights (h1, h2, ...)
    image = ax.imshow(
        w,
        cmap=cmap,
        vmin=-vmax,
        vmax=vmax,
        aspect="auto",
        interpolation="nearest",
        extent=(0.5, k + 0.5, c - 0.5, -0.5),
    )
    ax.set_xlabel("hidden unit")
    ax.set_ylabel("output neuron")
    names = class_names if class_names is not None else range(c)
    ax.set_yticks(range(c), [str(n) for n in names])
    if k <= 32:
        ax.set_xticks(range(1, k + 1), [str(i) for i in range(1, k + 1)], fontsize=7)
    bar = ax.figure.colorbar(image, ax=ax)
    bar.set_label("weight (blue +, red -)")
    if title:
        ax.set_title(title)
    return fig


def plot_feature_matrices(
    nfm_matrix: Any,
    agop_matrix: Any,
    *,
    alpha: float = 0.5,
    kind: str = "pearson",
    exclude_diagonal: bool = False,
    layer: str | None = None,
    fig: Figure | None = None,
    cmap: str = DIVERGING_CMAP,
    robust: bool = False,
    null_correlation: float | None = None,
    null_label: str = "null",
    initial_correlation: float | None = None,
    by_construction: bool = False,
) -> Figure:
    r"""The NFM and :math:`\mathrm{AGOP}^\alpha` of one layer side by side.

    The title gives their correlation :math:`\rho(\mathrm{NFM}, \mathrm{AGOP}^\alpha)` (``kind``
    and ``exclude_diagonal`` as in :func:`nfm.linalg.matrix_correlation`) and, on a second line,
    whatever baseline is given: the same statistic for a null model (``null_correlation``, with
    the lift over it), at initialisation (``initial_correlation``), and whether the layer
    satisfies NFM = AGOP by construction (its output is the model output), so that a reader
    sees the value against what a network that learned nothing gives. Each panel has its own
    symmetric colour scale (the two matrices have different units); blue positive, red negative.

    Parameters
    ----------
    nfm_matrix, agop_matrix : (d, d) arrays or tensors
    alpha : float
        Power of the AGOP (eigendecomposition, eigenvalues clamped at 0).
    kind : {"pearson", "cosine"}
    exclude_diagonal : bool
    layer : str, optional
        Layer name for the title.
    fig : Figure, optional
    cmap : str
    robust : bool
        Set each colour scale by the 99.5th percentile of ``|entries|`` instead of the maximum
        (a dominant diagonal otherwise washes out the off-diagonal structure).
    null_correlation : float, optional
        The same correlation (same kind, alpha and diagonal option) for the null model, e.g.
        the ``null_correlation`` of an :func:`nfm.ansatz.nfa_report` row.
    null_label : str
        What the null model is (``"shuffled weights"``, ``"re-initialised"``).
    initial_correlation : float, optional
        The same correlation at initialisation (a tracker's first record).
    by_construction : bool
        The layer's output is the model output: NFM = AGOP exactly at alpha = 1.

    Returns
    -------
    Figure
    """
    nfm_arr = _as_matrix(nfm_matrix, "nfm_matrix")
    agop_arr = _as_matrix(agop_matrix, "agop_matrix")
    check_square(torch.from_numpy(nfm_arr), "nfm_matrix")
    if nfm_arr.shape != agop_arr.shape:
        raise NFMInputError(
            "nfm_matrix and agop_matrix must be square and of the same shape; got "
            f"{nfm_arr.shape} and {agop_arr.shape}"
        )
    # judge rounding at the precision the AGOP was computed in, compute the power in float64
    source_dtype = _float_dtype(agop_matrix)
    powered = symmetric_matrix_power(
        torch.from_numpy(agop_arr).to(source_dtype), alpha, dtype=torch.float64, name="agop_matrix"
    ).numpy()
    corr = matrix_correlation(nfm_arr, powered, kind=kind, exclude_diagonal=exclude_diagonal)
    fig = _new_figure(fig, (10.0, 4.6))
    axes = fig.subplots(1, 2)
    panels = [
        (nfm_arr, r"NFM $= W^T W$"),
        (powered, rf"AGOP$^{{{alpha:g}}}$"),
    ]
    for ax, (matrix, label) in zip(axes, panels, strict=True):
        vmax = _symmetric_limit(matrix, robust=robust)
        image = ax.imshow(matrix, cmap=cmap, vmin=-vmax, vmax=vmax, interpolation="nearest")
        ax.set_title(label)
        ax.set_xlabel("input feature")
        ax.set_ylabel("input feature")
        fig.colorbar(image, ax=ax, shrink=0.85)
    where = f"layer {layer}: " if layer else ""
    diag = ", diagonal excluded" if exclude_diagonal else ""
    headline = f"{where}{kind} correlation {corr:.3f} (alpha = {alpha:g}{diag})"
    baselines = _baseline_text(corr, null_correlation, null_label, initial_correlation)
    if by_construction:
        baselines.append("output layer: NFM = AGOP by construction at alpha = 1, not evidence")
    fig.suptitle("\n".join([headline, "; ".join(baselines)]) if baselines else headline)
    return fig


def _baseline_text(
    value: float, null: float | None, null_label: str, initial: float | None
) -> list[str]:
    """``["null (shuffled) 0.880, lift +0.020", "at initialisation 0.850"]`` as given."""
    parts = []
    if null is not None:
        parts.append(f"{null_label} {float(null):.3f}, lift {value - float(null):+.3f}")
    if initial is not None:
        parts.append(f"at initialisation {float(initial):.3f}")
    return parts


def _top_eigenvectors(matrix: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Top-k eigenpairs (decreasing) and the sum of the clamped eigenvalues."""
    sym = torch.from_numpy(0.5 * (matrix + matrix.T))
    values_t, vectors_t = torch.linalg.eigh(sym)
    values, vectors = values_t.numpy(), vectors_t.numpy()
    total = float(np.clip(values, 0, None).sum())
    order = np.argsort(values)[::-1][:k]
    values, vectors = values[order], vectors[:, order]
    # fix the sign: the entry of largest magnitude is positive
    pivots = vectors[np.argmax(np.abs(vectors), axis=0), np.arange(vectors.shape[1])]
    vectors = vectors * np.where(pivots < 0, -1.0, 1.0)
    return values, vectors, total


def plot_top_eigenvectors(
    matrices: Any,
    *,
    k: int = 4,
    image_shape: Sequence[int] | None = None,
    fig: Figure | None = None,
    cmap: str = DIVERGING_CMAP,
    title: str | None = "Top eigenvectors",
) -> Figure:
    r"""The top-``k`` eigenvectors of one or several symmetric matrices.

    One row per matrix (pass a mapping ``{"NFM": M, "AGOP": A}`` to compare them), one column
    per eigenvector, in decreasing eigenvalue order; each panel title gives the eigenvalue's
    share of the trace :math:`\lambda_i / \sum_j \max(\lambda_j, 0)`. With ``image_shape`` the
    vectors are drawn as images (blue positive, red negative, shared symmetric scale), otherwise
    as bars over the feature index. Eigenvectors are defined up to sign; the sign is chosen so
    that each vector's largest-magnitude entry is positive.

    Parameters
    ----------
    matrices : (d, d) matrix or mapping name -> matrix
    k : int
        Number of eigenvectors per matrix.
    image_shape : (height, width), optional
    fig : Figure, optional
    cmap, title : display options

    Returns
    -------
    Figure
    """
    named = dict(matrices) if isinstance(matrices, Mapping) else {"": matrices}
    if not named:
        raise NFMInputError("matrices is an empty mapping; pass at least one matrix")
    arrays = {name: _as_matrix(m, f"matrices[{name!r}]") for name, m in named.items()}
    d = next(iter(arrays.values())).shape[0]
    for name, arr in arrays.items():
        if arr.shape != (d, d):
            raise NFMInputError(
                f"matrices[{name!r}] must be square ({d}, {d}) like the first; got {arr.shape}"
            )
    shape = _check_image_shape(image_shape, d, "the matrices")
    k = max(1, min(int(k), d))
    decomposed = {name: _top_eigenvectors(arr, k) for name, arr in arrays.items()}
    fig = _new_figure(fig, (2.3 * k + 1.2, 2.3 * len(arrays) + 0.6))
    axes = fig.subplots(len(arrays), k, squeeze=False)
    vmax = max(_symmetric_limit(vectors) for _, vectors, _ in decomposed.values())
    image = None
    for row, (name, (values, vectors, total)) in enumerate(decomposed.items()):
        for col in range(k):
            ax = axes[row, col]
            share = values[col] / total if total > 0 else float("nan")
            label = f"{name} " if name else ""
            ax.set_title(f"{label}v{col + 1} ({share:.0%} of trace)", fontsize=9)
            if shape is not None:
                image = ax.imshow(
                    vectors[:, col].reshape(shape),
                    cmap=cmap,
                    vmin=-vmax,
                    vmax=vmax,
                    interpolation="nearest",
                )
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                colours = np.where(vectors[:, col] >= 0, "#2166ac", "#b2182b")
                ax.bar(np.arange(d), vectors[:, col], color=colours)
                ax.axhline(0, color="0.5", linewidth=0.6)
                ax.set_ylim(-vmax * 1.05, vmax * 1.05)
                ax.set_xlabel("feature")
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, aspect=30)
    if title:
        fig.suptitle(title)
    return fig


def plot_agop_diagonal(
    matrix: Any,
    image_shape: Sequence[int] | None = None,
    *,
    ax: Axes | None = None,
    title: str | None = "AGOP diagonal",
    cmap: str = "viridis",
    feature_names: Sequence[str] | None = None,
) -> Figure:
    r"""The diagonal of an AGOP (or any feature matrix): how much each input feature matters.

    :math:`\mathrm{AGOP}_{jj} = \frac1n\sum_i \lVert \partial f(x_i)/\partial x_j\rVert^2`, the
    mean squared sensitivity of the output to feature ``j``. Drawn as an image of
    ``image_shape`` when given (sequential colour map, the diagonal is non-negative), otherwise
    as bars over the features.

    Parameters
    ----------
    matrix : (d, d) array or tensor
    image_shape : (height, width), optional
    ax : Axes, optional
    title, cmap : display options
    feature_names : sequence of str, optional
        Bar labels when no image shape is given.

    Returns
    -------
    Figure
    """
    arr = _as_matrix(matrix, "matrix")
    check_square(torch.from_numpy(arr), "matrix")
    diagonal = np.diag(arr)
    shape = _check_image_shape(image_shape, diagonal.size, "matrix")
    if shape is not None:
        fig, ax = _figure_and_axis(ax, (4.6, 4.0))
        image = ax.imshow(diagonal.reshape(shape), cmap=cmap, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.figure.colorbar(image, ax=ax, shrink=0.85)
    else:
        fig, ax = _figure_and_axis(ax, (min(2.0 + 0.25 * diagonal.size, 14.0), 3.5))
        ax.bar(np.arange(diagonal.size), diagonal, color="#35608d")
        ax.set_xlabel("input feature")
        ax.set_ylabel("diagonal entry")
        if feature_names is not None:
            ax.set_xticks(np.arange(diagonal.size), list(feature_names), rotation=90, fontsize=7)
    if title:
        ax.set_title(title)
    return fig


_METRIC_LABELS = {
    "train_accuracy": "train accuracy",
    "test_accuracy": "test accuracy",
    "loss": "training loss",
}


def _nfa_label(column: str) -> str:
    kind, alpha, exclude = parse_nfa_column(column)
    return f"{kind}, alpha={alpha:g}" + (", off-diagonal" if exclude else "")


def _nonempty_history(history: Any) -> TrackingHistory:
    """``as_history(history)``, refusing an empty one."""
    hist = as_history(history)
    if not hist.rows:
        raise NFMInputError("history is empty; record at least one step first")
    return hist


def plot_nfa_history(
    history: Any,
    *,
    columns: Sequence[str] | str | None = None,
    metrics: Sequence[str] | None = None,
    fig: Figure | None = None,
    include_by_construction: bool = True,
    null_values: Mapping[str, float] | None = None,
    null_label: str = "null",
    annotate: bool = True,
    title: str | None = "Neural Feature Ansatz through training",
) -> Figure:
    """NFA correlation of each layer against the training step, with accuracy below.

    Top panel: one line per layer (and line style per correlation column); layers where the
    ansatz holds by construction are drawn dotted in grey and marked as such. With ``annotate``
    each layer's last value is written at the end of its line beside its first record's value
    (``0.97 (first 0.88)``; the first record is the value at initialisation when the tracker
    recorded step 0), so the change through training reads off the figure. ``null_values``
    (``{layer: value}``, e.g. the ``null_correlation`` of :func:`nfm.ansatz.nfa_report` rows)
    are drawn as thin dashed horizontal lines in the layer's colour: the same statistic for a
    model that learned nothing. Bottom panel (when the history holds loop metrics):
    accuracies on the left axis, training loss on a twin right axis.

    Parameters
    ----------
    history : NFATracker, TrackingHistory, DataFrame, path, or list of dict rows
    columns : str or sequence of str, optional
        NFA columns to draw (default: the first one, e.g. ``"pearson_a0.5"``).
    metrics : sequence of str, optional
        Loop metrics for the bottom panel (default: the accuracies and ``loss`` present).
    fig : Figure, optional
    include_by_construction : bool
        Also draw the by-construction layers.
    null_values : mapping layer -> float, optional
        The null baseline of the (first) drawn column per layer.
    null_label : str
        What the null is, for the legend (e.g. ``"shuffled weights"``).
    annotate : bool
        Write the first and last value of the first column at the end of each line.
    title : str or None

    Returns
    -------
    Figure
    """
    hist = _nonempty_history(history)
    available = hist.nfa_columns
    if columns is None:
        columns = available[:1]
    elif isinstance(columns, str):
        columns = [columns]
    missing = [c for c in columns if c not in available]
    if missing or not columns:
        raise NFMInputError(f"columns {missing or columns} not in the history; have {available}")
    if metrics is None:
        metrics = [m for m in ("train_accuracy", "test_accuracy", "loss") if m in hist.columns]
    metrics = [m for m in metrics if m in hist.columns]
    fig = _new_figure(fig, (8.0, 6.2 if metrics else 4.0))
    if metrics:
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    else:
        top, bottom = fig.subplots(1, 1), None
    styles = ["-", "--", "-.", ":"]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for layer_index, layer in enumerate(hist.layers):
        constructed = hist.by_construction(layer)
        if constructed and not include_by_construction:
            continue
        for column_index, column in enumerate(columns):
            steps, values = hist.series(layer, column)
            label = f"{layer} (= AGOP at alpha=1 by construction)" if constructed else layer
            if len(columns) > 1:
                label += f" [{_nfa_label(column)}]"
            colour = "0.55" if constructed else colours[layer_index % len(colours)]
            top.plot(
                steps,
                values,
                linestyle=":" if constructed else styles[column_index % len(styles)],
                color=colour,
                marker="o" if len(steps) < 30 else None,
                markersize=3,
                label=label,
            )
            if annotate and column_index == 0 and steps:
                first, last = values[int(np.argmin(steps))], values[int(np.argmax(steps))]
                top.annotate(
                    f"{last:.2f} (first {first:.2f})",
                    xy=(max(steps), last),
                    xytext=(4, 0),
                    textcoords="offset points",
                    fontsize=7,
                    color=colour,
                    va="center",
                )
            if null_values is not None and column_index == 0 and layer in null_values:
                top.axhline(
                    float(null_values[layer]),
                    color=colour,
                    linestyle=(0, (2, 2)),
                    linewidth=0.9,
                    alpha=0.8,
                    label=f"{layer}: {null_label} {float(null_values[layer]):.2f}",
                )
    top.set_ylabel(
        "NFA correlation" + (f"\n({_nfa_label(columns[0])})" if len(columns) == 1 else "")
    )
    top.axhline(1.0, color="0.8", linewidth=0.8, zorder=0)
    top.grid(alpha=0.3)
    top.legend(fontsize=8, loc="lower right")
    if title:
        top.set_title(title)
    if bottom is None:
        top.set_xlabel("training step")
        return fig
    loss_axis = None
    for metric in metrics:
        steps, values = hist.metric_series(metric)
        label = _METRIC_LABELS.get(metric, metric)
        if metric == "loss" or "loss" in metric:
            loss_axis = loss_axis or bottom.twinx()
            loss_axis.plot(steps, values, color="0.35", linestyle="--", label=label)
            loss_axis.set_ylabel("loss")
        else:
            bottom.plot(steps, values, marker="o" if len(steps) < 30 else None, ms=3, label=label)
    bottom.set_xlabel("training step")
    bottom.set_ylabel("accuracy")
    bottom.grid(alpha=0.3)
    handles, labels = bottom.get_legend_handles_labels()
    if loss_axis is not None:
        more_handles, more_labels = loss_axis.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    if handles:
        bottom.legend(handles, labels, fontsize=8, loc="center right")
    return fig


def plot_feature_change(
    history: Any,
    *,
    fig: Figure | None = None,
    title: str | None = "Do the features move?",
) -> Figure:
    r"""Relative NFM change since the first record and AGOP trace, per layer, against the step.

    Left: :math:`\lVert \mathrm{NFM}_t - \mathrm{NFM}_0\rVert_F / \lVert \mathrm{NFM}_0\rVert_F`
    (a layer whose curve stays near 0 is not learning features). Right: the AGOP trace, the
    mean squared Jacobian norm of the output with respect to the layer's input (log scale).

    Parameters
    ----------
    history : NFATracker, TrackingHistory, DataFrame, path, or list of dict rows
    fig : Figure, optional
    title : str or None

    Returns
    -------
    Figure
    """
    hist = _nonempty_history(history)
    fig = _new_figure(fig, (10.0, 3.8))
    left, right = fig.subplots(1, 2)
    for layer in hist.layers:
        label = f"{layer} (by construction)" if hist.by_construction(layer) else layer
        left.plot(*hist.series(layer, "nfm_relative_change"), label=label)
        right.plot(*hist.series(layer, "agop_trace"), label=label)
    left.set_ylabel(r"$\|NFM_t - NFM_0\|_F / \|NFM_0\|_F$")
    left.set_title("relative change of the NFM")
    right.set_ylabel("trace of the AGOP")
    right.set_title("AGOP trace")
    positive = [r["agop_trace"] for r in hist.rows if float(r.get("agop_trace", 0)) > 0]
    if positive:
        right.set_yscale("log")
    for ax in (left, right):
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    left.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def _report_rows(report: Any) -> tuple[list[dict[str, Any]], str | None]:
    """``(rows, headline column)`` of an NFA/FACT report, or of a list of row dicts."""
    rows = getattr(report, "rows", report)
    if isinstance(rows, Mapping) or not isinstance(rows, Sequence):
        raise NFMInputError(
            "report must be an NFAReport, a FACTReport or a list of row dicts; got "
            f"{type(report).__name__}"
        )
    rows = [dict(r) for r in rows]
    if not rows or not all("layer" in r for r in rows):
        raise NFMInputError("report has no rows with a 'layer' key; nothing to draw")
    return rows, getattr(report, "headline_column", None) or None


def plot_nfa_lift(
    report: Any,
    *,
    column: str | None = None,
    history: Any = None,
    ax: Axes | None = None,
    title: str | None = "Correlation per layer against its baselines",
) -> Figure:
    """Each layer's correlation beside its null and its value at initialisation, as bars.

    Per layer, up to three bars: the value (``column`` of the report row); the null
    (``null_correlation``: the same statistic for the shuffled or re-initialised copy of the
    model, present when the report was made with ``null=``), with the lift written above; and
    the first record of ``history`` (the value at initialisation when the tracker recorded step
    0). Layers whose output is the model output (``by_construction``: NFM = AGOP exactly) are
    hatched, grey and labelled, since their value is no evidence. Works for
    :func:`nfm.ansatz.nfa_report` and :func:`nfm.ansatz.fact_report` reports.

    Parameters
    ----------
    report : NFAReport, FACTReport or list of dict rows
    column : str, optional
        The correlation to draw (default: the report's ``headline_column``, the one its null
        refers to; for plain rows the first NFA column). The null is drawn only for that
        column.
    history : NFATracker, TrackingHistory, ... optional
        For the first-record bars (when it has ``column``).
    ax : Axes, optional
    title : str or None

    Returns
    -------
    Figure
    """
    from nfm.tracking import is_nfa_column

    rows, headline = _report_rows(report)
    if column is None:
        column = headline or next((c for c in rows[0] if is_nfa_column(c)), None)
    if column is None or any(column not in r for r in rows):
        raise NFMInputError(f"column {column!r} is not in every report row; have {sorted(rows[0])}")
    null_applies = headline is None or column == headline
    nulls = [r.get("null_correlation") if null_applies else None for r in rows]
    first: dict[str, tuple[int, float]] = {}
    if history is not None:
        hist = as_history(history)
        if column in hist.columns:
            first = {e["layer"]: (e["first_step"], e["first"]) for e in hist.first_and_last(column)}
    series = [("value", [float(r[column]) for r in rows], "#2166ac")]
    if any(v is not None for v in nulls):
        kind = next((r.get("null") for r in rows if r.get("null")), "null")
        label = {"shuffled": "null: weights shuffled", "reinit": "null: re-initialised"}
        values = [float("nan") if v is None else float(v) for v in nulls]
        series.append((label.get(kind, f"null: {kind}"), values, "#b2182b"))
    if first:
        step = min(s for s, _ in first.values())
        values = [first[r["layer"]][1] if r["layer"] in first else float("nan") for r in rows]
        series.append((f"first record (step {step})", values, "#999999"))
    n = len(rows)
    fig, ax = _figure_and_axis(ax, (max(4.0, 1.1 * n * len(series) + 1.5), 3.8))
    width = 0.8 / len(series)
    positions = np.arange(n)
    constructed = [bool(r.get("by_construction")) for r in rows]
    for index, (label, values, colour) in enumerate(series):
        offsets = positions + (index - (len(series) - 1) / 2) * width
        bars = ax.bar(offsets, values, width=width, color=colour, label=label)
        for bar, built in zip(bars, constructed, strict=True):
            if built:
                bar.set_hatch("//")
                bar.set_alpha(0.45)
    if len(series) > 1 and series[1][0].startswith("null"):
        for position, value, null_value in zip(positions, series[0][1], series[1][1], strict=True):
            if math.isfinite(value) and math.isfinite(null_value):
                ax.annotate(
                    f"lift {value - null_value:+.2f}",
                    xy=(position, max(value, null_value)),
                    xytext=(0, 3),
                    textcoords="offset points",
                    ha="center",
                    fontsize=8,
                )
    labels = [
        f"{r['layer']}\n(by construction)" if built else str(r["layer"])
        for r, built in zip(rows, constructed, strict=True)
    ]
    ax.set_xticks(positions, labels, fontsize=8)
    finite = [v for _, values, _ in series for v in values if math.isfinite(v)]
    low = min([0.0, *finite])
    ax.set_ylim(low - 0.05 * (1 - low), 1.12)
    ax.axhline(1.0, color="0.8", linewidth=0.8, zorder=0)
    ax.set_ylabel(column)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    if title:
        ax.set_title(title)
    return fig
