"""``nfm analyze MODEL DATA``: the feature-matrix report of your own saved model on your data.

``nfm analyze --hf minilm|smollm2|PATH`` analyses a pretrained transformer instead, per block, on
text that ships with Python (:mod:`nfm.hf.job`; needs the ``hf`` extra).

MODEL is either

* a **TorchScript** file (``torch.jit.script(model).save(path)`` or ``torch.jit.trace``). nfm
  needs an eager module (it hooks each layer's input), so a scripted ``nn.Sequential`` of
  standard layers (Linear, activations, Flatten, Dropout, Identity, ...) is rebuilt as the
  equivalent eager module, checked to give the same outputs, and analysed; other scripted
  architectures are refused with a message; or
* a **pickled full module** (``torch.save(model, path)``), loaded with
  ``torch.load(path, weights_only=False)``. Unpickling runs code from the file: only analyse
  files you trust. A bare ``state_dict`` cannot be analysed (it has no architecture).

DATA is a ``.npz`` (array ``X``, optionally ``y``), a ``.npy`` (the inputs) or a ``.csv``
(numbers, an optional header; a column named ``y``, ``label``, ``target`` or ``class`` -- or the
one given by ``--label-column`` -- holds the labels). The job computes the per-layer NFA table on
up to ``--max-samples`` rows, the accuracy when labels are given, draws the figures and writes
``report.html``, ``metrics.json`` and the PNGs to ``--output-dir``.
"""

from __future__ import annotations

import argparse
import logging
import math
import shlex
import time
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nfm.cli._threads import run_with_threads
from nfm.exceptions import NFMInputError
from nfm.models.state import ModelState

__all__ = ["configure_parser", "load_data_file", "load_model_file", "run"]

logger = logging.getLogger(__name__)

LABEL_NAMES = ("y", "label", "labels", "target", "class")
INPUT_NAMES = ("X", "x", "inputs", "data", "features")

# scripted module name -> constructor keyword arguments read from the scripted module
_REBUILDABLE: dict[str, tuple[str, ...]] = {
    "ReLU": (),
    "ReLU6": (),
    "Tanh": (),
    "Sigmoid": (),
    "SiLU": (),
    "Mish": (),
    "Softsign": (),
    "Tanhshrink": (),
    "Identity": (),
    "GELU": ("approximate",),
    "ELU": ("alpha",),
    "CELU": ("alpha",),
    "SELU": (),
    "LeakyReLU": ("negative_slope",),
    "Softplus": ("beta", "threshold"),
    "Hardtanh": ("min_val", "max_val"),
    "Dropout": ("p",),
    "Flatten": ("start_dim", "end_dim"),
    "Softmax": ("dim",),
    "LogSoftmax": ("dim",),
}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``nfm analyze``."""
    parser.add_argument("model", nargs="?", help="TorchScript file or full pickled nn.Module (.pt)")
    parser.add_argument("data", nargs="?", help="inputs as .npz (X, optional y), .npy or .csv")
    parser.add_argument(
        "--output-dir", default="nfm-analysis", help="report folder (default ./nfm-analysis)"
    )
    parser.add_argument(
        "--layers",
        nargs="+",
        metavar="NAME",
        default=None,
        help="layer names to analyse (default: every nn.Linear)",
    )
    parser.add_argument(
        "--image-shape",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="draw inputs as H x W images (default: from the data's shape, or a square)",
    )
    parser.add_argument(
        "--max-samples", type=int, default=2000, help="rows used for the AGOP (default 2000)"
    )
    parser.add_argument("--label-column", default=None, help="CSV column holding labels")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1; 0: torch default)"
    )
    parser.add_argument("--dpi", type=int, default=100, help="resolution of the PNGs")
    from nfm.hf.job import add_arguments as add_hf_arguments

    add_hf_arguments(parser)


# ---------------------------------------------------------------------------- model loading
def _is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n.endswith("constants.pkl") for n in names) and any("/code/" in n for n in names)


def _rebuild_eager(module: torch.jit.ScriptModule, where: str = "model") -> nn.Module:
    """Rebuild a scripted Sequential of standard layers as the equivalent eager module."""
    name = getattr(module, "original_name", type(module).__name__)
    if name == "Sequential":
        children = OrderedDict(
            (child_name, _rebuild_eager(child, f"{where}.{child_name}"))
            for child_name, child in module.named_children()
        )
        return nn.Sequential(children)
    if name == "Linear":
        weight = module.weight.detach()
        bias = getattr(module, "bias", None)
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        layer = layer.to(dtype=weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(weight)
            if bias is not None:
                layer.bias.copy_(bias.detach())
        return layer
    if name in _REBUILDABLE:
        kwargs = {attr: getattr(module, attr) for attr in _REBUILDABLE[name]}
        return getattr(nn, name)(**kwargs)
    raise NFMInputError(
        f"model: the TorchScript module contains {name!r} at {where}, which nfm cannot rebuild "
        "as an eager module (nfm hooks every layer's input, which compiled TorchScript code "
        "does not allow). Save the eager model with torch.save(model, path) instead, or use "
        "an nn.Sequential of Linear layers and activations."
    )


def load_model_file(path: str | Path) -> tuple[nn.Module, str, torch.jit.ScriptModule | None]:
    """Load a saved model for analysis; returns ``(eager module, description, scripted)``.

    ``scripted`` is the original TorchScript module when the eager one was rebuilt from it
    (compare their outputs before trusting the rebuild), else None.

    TorchScript files are rebuilt as eager modules when they are a ``Sequential`` of standard
    layers (see the module docstring); other files go through
    ``torch.load(path, weights_only=False)``, which **executes code from the file** -- only
    load files you trust.

    Raises
    ------
    NFMInputError
        Missing file, unreadable file, a state_dict, or an unsupported scripted architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise NFMInputError(f"model: no such file {str(path)!r}")
    if _is_torchscript_archive(path):
        try:
            with warnings.catch_warnings():  # torch.jit is deprecated in recent torch
                warnings.simplefilter("ignore", DeprecationWarning)
                scripted = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise NFMInputError(
                f"model: cannot load TorchScript file {str(path)!r}: {exc}"
            ) from None
        eager = _rebuild_eager(scripted)
        return eager, f"TorchScript {scripted.original_name} rebuilt as an eager module", scripted
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise NFMInputError(
            f"model: {str(path)!r} is neither a TorchScript file nor a torch.save pickle "
            f"({type(exc).__name__}: {exc})"
        ) from None
    if isinstance(obj, torch.jit.ScriptModule):
        return _rebuild_eager(obj), "TorchScript module rebuilt as an eager module", obj
    if isinstance(obj, nn.Module):
        return obj, f"pickled {type(obj).__name__}", None
    if isinstance(obj, dict):
        raise NFMInputError(
            f"model: {str(path)!r} holds a dict (a state_dict?), which has no architecture; "
            "save the whole module with torch.save(model, path) or "
            "torch.jit.script(model).save(path)"
        )
    raise NFMInputError(f"model: {str(path)!r} holds a {type(obj).__name__}, not a torch.nn.Module")


# ---------------------------------------------------------------------------- data loading
def _csv_table(path: Path, label_column: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    with path.open(encoding="utf-8") as handle:
        first = handle.readline().strip()
    cells = [c.strip().strip('"') for c in first.split(",")]

    def numeric(text: str) -> bool:
        try:
            float(text)
        except ValueError:
            return False
        return True

    has_header = not all(numeric(c) for c in cells if c)
    try:
        table = np.loadtxt(path, delimiter=",", skiprows=1 if has_header else 0, ndmin=2)
    except ValueError as exc:
        raise NFMInputError(f"data: {str(path)!r} is not a numeric CSV ({exc})") from None
    if table.size == 0:
        raise NFMInputError(f"data: {str(path)!r} has no rows")
    if not has_header:
        if label_column is not None:
            raise NFMInputError(
                f"--label-column {label_column!r} given but {str(path)!r} has no header row"
            )
        return table, None
    wanted = [label_column] if label_column is not None else list(LABEL_NAMES)
    label_index = next((cells.index(n) for n in wanted if n in cells), None)
    if label_column is not None and label_index is None:
        raise NFMInputError(
            f"--label-column {label_column!r} is not a column of {str(path)!r}; columns: {cells}"
        )
    if label_index is None:
        return table, None
    return np.delete(table, label_index, axis=1), table[:, label_index]


def load_data_file(
    path: str | Path, label_column: str | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Read inputs ``X`` (and labels ``y`` when present) from ``.npz``, ``.npy`` or ``.csv``.

    Raises
    ------
    NFMInputError
        Missing file, unknown suffix, no input array, non-numeric or non-finite values, fewer
        than two dimensions, or labels whose length differs from the number of rows.
    """
    path = Path(path)
    if not path.is_file():
        raise NFMInputError(f"data: no such file {str(path)!r}")
    suffix = path.suffix.lower()
    y: np.ndarray | None = None
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {k: archive[k] for k in archive.files}
        except Exception as exc:
            raise NFMInputError(f"data: cannot read {str(path)!r} as .npz ({exc})") from None
        x_key = next((k for k in INPUT_NAMES if k in arrays), None)
        if x_key is None and len(arrays) == 1:
            x_key = next(iter(arrays))
        if x_key is None:
            raise NFMInputError(
                f"data: {str(path)!r} has arrays {sorted(arrays)}; expected one named 'X' "
                "(inputs) and optionally 'y' (labels)"
            )
        X = arrays[x_key]
        y_key = next((k for k in LABEL_NAMES if k in arrays and k != x_key), None)
        y = arrays[y_key] if y_key else None
    elif suffix == ".npy":
        try:
            X = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise NFMInputError(f"data: cannot read {str(path)!r} as .npy ({exc})") from None
    elif suffix == ".csv":
        X, y = _csv_table(path, label_column)
    else:
        raise NFMInputError(
            f"data: unsupported file type {suffix or '(none)'!r} of {str(path)!r}; use .npz "
            "(arrays X and optional y), .npy or .csv"
        )
    X = np.asarray(X)
    if not (np.issubdtype(X.dtype, np.number) or X.dtype == np.bool_):
        raise NFMInputError(f"data: inputs must be numeric; got dtype {X.dtype}")
    if X.ndim < 2 or X.shape[0] == 0:
        raise NFMInputError(
            f"data: inputs must have shape (n_samples, n_features, ...) with n_samples >= 1; "
            f"got shape {X.shape}"
        )
    X = X.astype(np.float64 if X.dtype == np.float64 else np.float32)
    if not np.all(np.isfinite(X)):
        bad = int((~np.isfinite(X)).sum())
        raise NFMInputError(f"data: inputs contain {bad} NaN or infinite values; shape {X.shape}")
    if y is not None:
        y = np.asarray(y).reshape(-1) if np.asarray(y).ndim > 1 else np.asarray(y)
        if y.shape[0] != X.shape[0]:
            raise NFMInputError(
                f"data: {y.shape[0]} labels for {X.shape[0]} input rows; they must match"
            )
    return X, y


# ---------------------------------------------------------------------------- the job
def _prepare_inputs(model: nn.Module, X: np.ndarray) -> torch.Tensor:
    """Inputs as a tensor the model accepts (flattening images when needed)."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    candidates = [torch.as_tensor(X, dtype=dtype)]
    if X.ndim > 2:
        candidates.append(candidates[0].reshape(X.shape[0], -1))
    first_linear = next((m for m in model.modules() if isinstance(m, nn.Linear)), None)
    errors = []
    with ModelState(model, mode="eval"):
        for tensor in candidates:
            try:
                with torch.no_grad():
                    out = model(tensor[:2])
            except Exception as exc:  # the model's own error, re-raised below with shapes
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            if not isinstance(out, torch.Tensor):
                raise NFMInputError(
                    f"model: forward must return one tensor; got {type(out).__name__}"
                )
            return tensor
    expected = (
        f" (its first linear layer expects {first_linear.in_features} features)"
        if (first_linear is not None)
        else ""
    )
    raise NFMInputError(
        f"data: the model rejects inputs of shape {tuple(X.shape[1:])} per sample{expected}: "
        f"{errors[-1]}"
    )


def _guess_image_shape(X: np.ndarray, requested: Any) -> tuple[int, int] | None:
    if requested is not None:
        return int(requested[0]), int(requested[1])
    if X.ndim == 3:
        return int(X.shape[1]), int(X.shape[2])
    if X.ndim == 4 and X.shape[1] == 1:
        return int(X.shape[2]), int(X.shape[3])
    d = int(np.prod(X.shape[1:]))
    side = math.isqrt(d)
    if X.ndim == 2 and side * side == d and d >= 16:
        return side, side
    return None


def _predict(model: nn.Module, X: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
    with ModelState(model, mode="eval"), torch.no_grad():
        parts = [model(X[i : i + batch_size]) for i in range(0, X.shape[0], batch_size)]
    out = torch.cat(parts)
    return out.reshape(out.shape[0], -1)


def run(args: argparse.Namespace) -> int:
    """Run the job; returns the exit code (2 on bad input)."""
    return run_with_threads("analyze", args, _run)


def _run(args: argparse.Namespace) -> int:
    from nfm import __version__
    from nfm.ansatz import nfa_report
    from nfm.cli.train import format_nfa_summary, standard_figures
    from nfm.viz.report import write_report

    if getattr(args, "hf", None) is not None:
        from nfm.hf.job import run_hf

        print(run_hf(args))
        return 0
    if args.model is None or args.data is None:
        raise NFMInputError(
            "nfm analyze needs a MODEL file and a DATA file (or --hf MODEL for a pretrained "
            "transformer)"
        )
    started = time.perf_counter()
    for label, value in (("max-samples", args.max_samples), ("dpi", args.dpi)):
        if value < 1:
            raise NFMInputError(f"--{label} must be >= 1; got {value}")
    model, description, scripted = load_model_file(args.model)
    X, y = load_data_file(args.data, args.label_column)
    inputs = _prepare_inputs(model, X)
    if scripted is not None:
        with torch.no_grad():
            expected = scripted(inputs[:64])
        rebuilt = _predict(model, inputs[:64])
        if not torch.allclose(rebuilt, expected.reshape(rebuilt.shape), rtol=1e-4, atol=1e-5):
            raise NFMInputError(
                "model: the eager rebuild of the TorchScript module gives different outputs "
                "(its forward does more than chain its children); save the eager model with "
                "torch.save(model, path) instead"
            )
    image_shape = _guess_image_shape(X, args.image_shape)
    outputs = _predict(model, inputs)
    n_outputs = int(outputs.shape[1])
    metrics: dict[str, Any] = {
        "model": f"{Path(args.model).name} ({description})",
        "data": f"{Path(args.data).name}: {X.shape[0]} rows of shape {tuple(X.shape[1:])}",
        "outputs": n_outputs,
    }
    if y is not None:
        labels = np.asarray(y)
        if n_outputs > 1 and np.all(np.equal(np.mod(labels, 1), 0)):
            predicted = outputs.argmax(dim=1).numpy()
            metrics["accuracy"] = float(np.mean(predicted == labels.astype(np.int64)))
        else:
            target = torch.as_tensor(labels.astype(np.float64)).reshape(outputs.shape[0], -1)
            if target.shape[1] == n_outputs:
                metrics["mse"] = float(((outputs.double() - target) ** 2).mean())
    subset = inputs[: args.max_samples]
    layers = list(args.layers) if args.layers else None
    final = nfa_report(
        model,
        subset,
        layers=layers,
        alphas=(0.5, 1.0),
        kinds=("pearson", "cosine"),
        exclude_diagonal=(False, True),
        fit_best_alpha=True,
        null="shuffled",
        null_seed=args.seed,
    )
    for row in final.rows:
        metrics[f"nfa_{row['layer']}_pearson_a0.5"] = row["pearson_a0.5"]
    figures, captions = standard_figures(
        model,
        final,
        image_shape=image_shape,
        class_names=[str(c) for c in range(n_outputs)],
    )
    settings = {
        "command": "nfm analyze "
        + " ".join(shlex.quote(str(a)) for a in (args.model, args.data))
        + f" --output-dir {shlex.quote(str(args.output_dir))}",
        "model_file": str(Path(args.model).resolve()),
        "data_file": str(Path(args.data).resolve()),
        "layers": layers or "every nn.Linear",
        "samples_for_agop": int(subset.shape[0]),
        "image_shape": list(image_shape) if image_shape else "none",
    }
    files = write_report(
        args.output_dir,
        figures=figures,
        nfa_rows=final.rows,
        metrics=metrics,
        settings=settings,
        title=f"Neural feature matrices of {Path(args.model).name}",
        subtitle=f"nfm {__version__}: {description}, data {Path(args.data).name}",
        captions=captions,
        dpi=args.dpi,
    )
    from matplotlib import pyplot as plt

    for fig in figures.values():
        plt.close(fig)
    total = time.perf_counter() - started
    accuracy = f"  accuracy {metrics['accuracy']:.4f}\n" if "accuracy" in metrics else ""
    print(
        f"nfm analyze: {metrics['model']} on {metrics['data']} ({total:.1f} s)\n"
        f"{accuracy}{format_nfa_summary(final.rows)}\n  report: {files.html}"
    )
    return 0
