"""``nfm diagnose``: why doesn't a model learn? Per-layer diagnostics and a verdict.

Either a saved model and a data file (as ``nfm analyze``: a TorchScript file or a pickled
``nn.Module``; ``.npz`` with ``X`` and ``y``, ``.npy`` or ``.csv``), or an MLP built here on an
embedded dataset (``--dataset``, ``--hidden-sizes`` or ``--depth``/``--width``,
``--activation``, ``--init-scale``). Runs :func:`nfm.diagnostics.diagnose` with ``--steps``
training steps on a copy of the model (``--optimizer``, ``--lr``), prints the verdict and
writes ``diagnosis.html``, ``diagnosis.json`` and ``diagnosis.png`` into ``--output-dir``.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from nfm.cli._threads import run_with_threads
from nfm.exceptions import NFMInputError

__all__ = ["configure_parser", "run"]

DATASETS = ("mnist5k", "fashion-mnist", "digits")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``nfm diagnose``."""
    parser.add_argument("model", nargs="?", help="TorchScript file or pickled nn.Module (.pt)")
    parser.add_argument("data", nargs="?", help="inputs and labels: .npz (X, y), .npy or .csv")
    parser.add_argument("--label-column", default=None, help="CSV column holding labels")
    parser.add_argument(
        "--dataset",
        choices=DATASETS,
        default="mnist5k",
        help="embedded dataset for a built MLP when no model file is given (default mnist5k)",
    )
    parser.add_argument("--samples", type=int, default=5000, help="rows of the dataset used")
    parser.add_argument("--hidden-sizes", type=int, nargs="+", metavar="N", default=None)
    parser.add_argument("--depth", type=int, default=2, help="hidden layers (with --width)")
    parser.add_argument("--width", type=int, default=128, help="hidden width (with --depth)")
    parser.add_argument(
        "--activation", default="relu", choices=("relu", "tanh", "gelu", "sigmoid", "silu")
    )
    parser.add_argument(
        "--init-scale",
        type=float,
        default=1.0,
        help="multiply the built MLP's initial weights (PyTorch's default init) by this",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of init, probe and batches")
    parser.add_argument("--steps", type=int, default=50, help="training steps on a copy")
    parser.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--loss", choices=("cross_entropy", "mse"), default="cross_entropy")
    parser.add_argument("--probe-size", type=int, default=512, help="samples measured")
    parser.add_argument("--output-dir", default="nfm-diagnosis", help="folder for the report")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: default)")
    parser.add_argument("--dpi", type=int, default=100, help="resolution of the PNG")


def run(args: argparse.Namespace) -> int:
    """Run the job; returns the exit code (2 on bad input)."""
    return run_with_threads("diagnose", args, _run, errors=(NFMInputError, ImportError))


def _builtin(args: argparse.Namespace) -> tuple[Any, torch.Tensor, torch.Tensor, str]:
    from nfm.datasets.images import load_fashion_mnist, load_image_dataset
    from nfm.training import make_mlp

    if args.dataset == "fashion-mnist":
        X, y, _ = load_fashion_mnist("train")
    else:
        X, y, _ = load_image_dataset(args.dataset)
    X, y = X[: args.samples], y[: args.samples]
    hidden = list(args.hidden_sizes) if args.hidden_sizes else [args.width] * args.depth
    if any(h < 1 for h in hidden):
        raise NFMInputError(f"--hidden-sizes must be positive; got {hidden}")
    model = make_mlp(X.shape[1], hidden, int(y.max()) + 1, args.activation, seed=args.seed)
    if args.init_scale != 1.0:
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.Linear):
                    module.weight.mul_(args.init_scale)
    label = (
        f"MLP {X.shape[1]}-{'-'.join(map(str, hidden))}-{int(y.max()) + 1} ({args.activation}, "
        f"init scale {args.init_scale:g}) on {args.dataset}, {X.shape[0]} samples"
    )
    return model, torch.as_tensor(X), torch.as_tensor(y), label


def _from_files(args: argparse.Namespace) -> tuple[Any, torch.Tensor, torch.Tensor, str]:
    from nfm.cli.analyze import load_data_file, load_model_file

    if args.data is None:
        raise NFMInputError("a model file needs a data file: nfm diagnose MODEL DATA")
    model, description, _ = load_model_file(args.model)
    X, y = load_data_file(args.data, args.label_column)
    if y is None:
        raise NFMInputError(
            f"data: {args.data!r} has no labels; the loss gradients and training steps need "
            "them (an .npz array 'y' or a CSV label column)"
        )
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    x = torch.as_tensor(X, dtype=dtype)
    target = torch.as_tensor(y)
    if args.loss == "cross_entropy":
        target = target.to(torch.int64)
    return model, x, target, f"{description} from {args.model} on {args.data}"


def _run(args: argparse.Namespace) -> int:
    from nfm.diagnostics import diagnose
    from nfm.diagnostics.html import write_diagnosis_report
    from nfm.diagnostics.plots import plot_diagnosis

    for label, value in (
        ("samples", args.samples),
        ("batch-size", args.batch_size),
        ("probe-size", args.probe_size),
        ("dpi", args.dpi),
    ):
        if value < 1:
            raise NFMInputError(f"--{label} must be >= 1; got {value}")
    if args.steps < 0:
        raise NFMInputError(f"--steps must be >= 0; got {args.steps}")
    if not args.lr > 0:
        raise NFMInputError(f"--lr must be > 0; got {args.lr}")
    model, x, y, label = _from_files(args) if args.model else _builtin(args)
    lr, momentum = args.lr, args.momentum

    def factory(params):
        if args.optimizer == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=momentum)
        return torch.optim.Adam(params, lr=lr)

    diagnosis = diagnose(
        model,
        x,
        y,
        loss=args.loss,
        probe_size=args.probe_size,
        steps=args.steps,
        optimizer_factory=factory,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    optimizer = f"{args.optimizer} lr={lr:g}"
    if args.optimizer == "sgd":
        optimizer += f" momentum={momentum:g}"
    diagnosis.settings["optimizer"] = optimizer
    fig = plot_diagnosis(diagnosis, title=f"Diagnosis: {diagnosis.cause}")
    files = write_diagnosis_report(
        args.output_dir,
        diagnosis,
        figures={"diagnosis": fig},
        captions={
            "diagnosis": "Signal through depth, effective ranks, dead and saturated units, and "
            "the training steps taken on a copy of the model."
        },
        title=f"Diagnosis of {label}",
        extra={
            "model": label,
            "arguments": {k: v for k, v in vars(args).items() if not k.startswith("_")},
        },
        dpi=args.dpi,
    )
    print(f"nfm diagnose: {label}; {args.steps} steps with {optimizer}")
    print(diagnosis)
    print(f"  report: {files.html}")
    return 0
