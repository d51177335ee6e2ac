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
) -> Figure:
    r"""The NFM and :math:`\mathrm{AGOP}^\alpha` of one layer side by side.

    The title gives their correlation :math:`\rho(\mathrm{NFM}, \mathrm{AGOP}^\alpha)` (``kind``
    and ``exclude_diagonal`` as in :func:`nfm.linalg.matrix_correlation`). Each panel has its own
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
    fig.suptitle(f"{where}{kind} correlation {corr:.3f} (alpha = {alpha:g}{diag})")
    return fig


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
    title: str | None = "Neural Feature Ansatz through training",
) -> Figure:
    """NFA correlation of each layer against the training step, with accuracy below.

    Top panel: one line per layer (and line style per correlation column); layers where the
    ansatz holds by construction are drawn dotted in grey and marked as such. Bottom panel (when
    the history holds loop metrics): accuracies on the left axis, training loss on a twin
    right axis.

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
            top.plot(
                steps,
                values,
                linestyle=":" if constructed else styles[column_index % len(styles)],
                color="0.55" if constructed else colours[layer_index % len(colours)],
                marker="o" if len(steps) < 30 else None,
                markersize=3,
                label=label,
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
