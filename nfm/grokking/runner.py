"""Run grokking experiments and write their records, tables and figures to a folder.

Shared by the ``nfm grokking`` command (:mod:`nfm.cli.grokking`) and
``benchmarks/grokking.py``. Nothing here prints; progress goes to :mod:`logging`.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nfm._utils.env import machine_info
from nfm._utils.io import json_ready
from nfm.grokking.data import modular_arithmetic_dataset
from nfm.grokking.kernel import (
    KernelGrokkingResult,
    fixed_metric_scores,
    random_circulant_metric,
    run_kernel_grokking,
)
from nfm.grokking.measures import feature_block
from nfm.grokking.neural import NeuralGrokkingResult, run_neural_grokking

logger = logging.getLogger(__name__)

__all__ = [
    "THRESHOLDS",
    "kernel_summary",
    "machine_info",
    "neural_summary",
    "run_kernel_suite",
    "run_neural_experiment",
    "write_markdown_table",
]

THRESHOLDS: tuple[float, ...] = (0.5, 0.9, 0.99)


def _write_history(rows: Sequence[dict[str, Any]], path: Path) -> None:
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json_ready(v) for k, v in row.items()})


def kernel_summary(result: KernelGrokkingResult, train_fraction: float) -> dict[str, Any]:
    """One table row: first iteration past 50/90/99% test accuracy, final accuracy, seconds."""
    last = result.history[-1]
    row: dict[str, Any] = {
        "op": result.op,
        "p": result.p,
        "train_fraction": train_fraction,
        "iterations_run": int(last["iteration"]),
    }
    for threshold in THRESHOLDS:
        row[f"iter_{round(threshold * 100)}"] = result.first_iteration_above(threshold)
    row["final_test_accuracy"] = result.final_test_accuracy
    row["seconds_to_99"] = result.seconds_to(0.99)
    row["seconds"] = result.seconds
    to_99 = result.first_iteration_above(0.99)
    row["cpu_seconds_to_99"] = None if to_99 is None else result.history[to_99]["cpu_seconds"]
    row["cpu_seconds"] = result.cpu_seconds
    row["structure"] = last["structure"]
    row["structure_deviation"] = json_ready(last["structure_deviation"])
    return row


def neural_summary(result: NeuralGrokkingResult) -> dict[str, Any]:
    """Epochs and CPU time to 99% test accuracy; first-layer NFA and structure at the end."""
    first = result.first_row_above(0.99)
    train = result.first_row_above(1.0, "train_accuracy")
    last = result.history[-1]
    start = result.history[0]
    return {
        "op": result.op,
        "p": result.p,
        "epoch_train_100": None if train is None else train["epoch"],
        "epoch_test_99": None if first is None else first["epoch"],
        "cpu_seconds_to_99": None if first is None else first["cpu_seconds"],
        "wall_seconds_to_99": None if first is None else first["wall_seconds"],
        "epochs_run": last["epoch"],
        "final_test_accuracy": last["test_accuracy"],
        "cpu_seconds": result.cpu_seconds,
        "wall_seconds": result.wall_seconds,
        "nfa_pearson_a0.5_init": start["pearson_a0.5"],
        "nfa_pearson_a0.5": last["pearson_a0.5"],
        "nfa_pearson_a0.5_offdiag": last["pearson_a0.5_offdiag"],
        "nfa_pearson_a1": last["pearson_a1"],
        "nfa_pearson_a1_offdiag": last["pearson_a1_offdiag"],
        "nfa_pearson_a0.5_at_99": None if first is None else first["pearson_a0.5"],
        "circulant_deviation": last["circulant_deviation"],
        "hankel_deviation": last["hankel_deviation"],
        "structure": last["structure"],
    }


def write_markdown_table(rows: Sequence[dict[str, Any]], path: Path, header: str = "") -> None:
    """Write rows as a Markdown table (numbers rounded for reading)."""
    columns = list(rows[0])

    def fmt(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    lines = [header, ""] if header else []
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "---|" * len(columns))
    lines.extend("| " + " | ".join(fmt(row[c]) for c in columns) + " |" for row in rows)
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _snapshot_indices(n: int, count: int = 4) -> list[int]:
    if n <= count:
        return list(range(n))
    return sorted({round(i * (n - 1) / (count - 1)) for i in range(count)})


def _save_grokking_figures(
    result: KernelGrokkingResult | NeuralGrokkingResult,
    out: Path,
    *,
    name: str,
    progress_title: str,
    x: str | None,
    matrices: list,
    matrices_suffix: str,
    snapshot_label: Callable[[dict], str],
    matrix_name: str,
) -> list[Path]:
    """Write the progress figure, feature matrices at a few snapshots, and the final spectrum."""
    from matplotlib import pyplot as plt

    from nfm.grokking.plots import (
        plot_feature_matrices_over_time,
        plot_fourier_spectrum,
        plot_grokking_progress,
    )

    def save(fig, suffix: str, dpi: int) -> None:
        paths.append(out / f"{name}_{suffix}.png")
        fig.savefig(paths[-1], dpi=dpi)
        plt.close(fig)

    paths: list[Path] = []
    save(plot_grokking_progress(result, x=x, title=progress_title), "progress", 120)
    if matrices:
        picks = _snapshot_indices(len(matrices))
        fig = plot_feature_matrices_over_time(
            [matrices[i] for i in picks],
            result.p,
            op=result.op,
            labels=[snapshot_label(result.history[i]) for i in picks],
        )
        save(fig, matrices_suffix, 110)
        block = feature_block(matrices[-1], result.p, op=result.op)
        title = f"Fourier spectrum of the final {matrix_name} block, {result.op} mod {result.p}"
        save(plot_fourier_spectrum(block, title=title), "spectrum", 110)
    return paths


def _save_kernel_figures(result: KernelGrokkingResult, out: Path) -> list[Path]:
    return _save_grokking_figures(
        result,
        out,
        name=f"kernel_{result.op}_p{result.p}",
        progress_title=f"RFM, {result.op} mod {result.p}",
        x=None,
        matrices=result.metrics,
        matrices_suffix="matrices",
        snapshot_label=lambda row: f"iteration {row['iteration']}",
        matrix_name="M",
    )


def _save_neural_figures(result: NeuralGrokkingResult, out: Path) -> list[Path]:
    return _save_grokking_figures(
        result,
        out,
        name=f"neural_{result.op}_p{result.p}",
        progress_title=f"2-layer network, {result.op} mod {result.p}",
        x="epoch",
        matrices=result.nfms,
        matrices_suffix="nfm",
        snapshot_label=lambda row: f"epoch {row['epoch']:.0f}",
        matrix_name="W1^T W1",
    )


def run_kernel_suite(
    ops: Sequence[str],
    *,
    p: int = 61,
    train_fraction: float = 0.5,
    n_iter: int = 50,
    seed: int = 0,
    stop_at_test_accuracy: float | None = None,
    controls: bool = True,
    output_dir: str | Path | None = None,
    figures: bool = True,
    verbose: bool = False,
) -> list[dict[str, Any]]:
    """Kernel grokking for each operation; returns one summary row per operation.

    With ``output_dir``: ``kernel_<op>_p<p>_history.csv`` per operation, the figures, and
    ``kernel_summary.json`` / ``kernel_summary.md`` (with :func:`machine_info`). With
    ``controls``, each row also has the test accuracy of the plain kernel (iteration 0) and of
    :func:`~nfm.grokking.kernel.random_circulant_metric` (fixed metric, seed ``seed``).
    """
    out = Path(output_dir) if output_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    rows = []
    for op in ops:
        data = modular_arithmetic_dataset(op, p, train_fraction, seed)
        result = run_kernel_grokking(
            data,
            n_iter=n_iter,
            stop_at_test_accuracy=stop_at_test_accuracy,
            random_state=seed,
            verbose=verbose,
            keep_metrics=figures,
        )
        row = kernel_summary(result, train_fraction)
        if controls:
            row["plain_kernel_test_accuracy"] = result.history[0]["test_accuracy"]
            start = time.perf_counter()
            scores = fixed_metric_scores(data, random_circulant_metric(op, p, seed=seed))
            row["random_circulant_test_accuracy"] = scores["test_accuracy"]
            row["random_circulant_seconds"] = time.perf_counter() - start
        rows.append(row)
        logger.info("kernel %s: %s", op, row)
        if out is not None:
            _write_history(result.history, out / f"kernel_{op}_p{p}_history.csv")
            if figures:
                _save_kernel_figures(result, out)
    if out is not None and rows:
        info = machine_info()
        (out / "kernel_summary.json").write_text(
            json.dumps(
                {"machine": info, "rows": [{k: json_ready(v) for k, v in r.items()} for r in rows]},
                indent=2,
            ),
            encoding="utf-8",
        )
        write_markdown_table(
            rows,
            out / "kernel_summary.md",
            header=f"Kernel grokking (RFM), {info['date_utc']}, {info['cpu']}, "
            f"{info['cores']} cores",
        )
    return rows


def run_neural_experiment(
    op: str = "add",
    *,
    p: int = 61,
    train_fraction: float = 0.5,
    epochs: int = 100,
    seed: int = 0,
    stop_at_test_accuracy: float | None = 0.99,
    extra_epochs: int = 10,
    output_dir: str | Path | None = None,
    figures: bool = True,
    verbose: bool = False,
) -> dict[str, Any]:
    """Neural grokking for one operation; returns its summary (see :func:`neural_summary`).

    With ``output_dir``: ``neural_<op>_p<p>_history.csv``, the figures and
    ``neural_summary.json`` / ``.md``.
    """
    data = modular_arithmetic_dataset(op, p, train_fraction, seed)
    result = run_neural_grokking(
        data,
        epochs=epochs,
        seed=seed,
        stop_at_test_accuracy=stop_at_test_accuracy,
        extra_epochs=extra_epochs,
        keep_nfms=figures,
        verbose=verbose,
    )
    row = {**neural_summary(result), "train_fraction": train_fraction}
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        _write_history(result.history, out / f"neural_{op}_p{p}_history.csv")
        if figures:
            _save_neural_figures(result, out)
        info = machine_info()
        (out / "neural_summary.json").write_text(
            json.dumps(
                {"machine": info, "rows": [{k: json_ready(v) for k, v in row.items()}]}, indent=2
            ),
            encoding="utf-8",
        )
        write_markdown_table(
            [row],
            out / "neural_summary.md",
            header=f"Neural grokking, {info['date_utc']}, {info['cpu']}, {info['cores']} cores",
        )
    return row
