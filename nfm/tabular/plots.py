"""Figures of the tabular benchmark: mean rank per method, and score versus time.

Both functions take a results table (``results.csv`` as a DataFrame), draw one panel per task
present, and return the Figure; they never call ``show()`` or change the backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from nfm.tabular.summary import method_summary

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from matplotlib.figure import Figure

_HIGHLIGHT = {
    "rfm": "tab:red",
    "rfm-default": "tab:orange",
    "rfm-recommended": "tab:pink",
    "xrfm": "tab:purple",
}


def _tasks(results: pd.DataFrame) -> list[str]:
    return [t for t in ("classification", "regression") if (results["task"] == t).any()]


def _present(results: pd.DataFrame, task: str, methods: Sequence[str]) -> list[str]:
    return [m for m in methods if ((results["task"] == task) & (results["method"] == m)).any()]


def _new_figure(n_panels: int, fig: Figure | None) -> tuple[Figure, list]:
    if fig is None:
        from matplotlib.figure import Figure as MplFigure

        fig = MplFigure(figsize=(5.5 * max(n_panels, 1), 4.2), layout="constrained")
    axes = fig.subplots(1, max(n_panels, 1), squeeze=False)[0]
    return fig, list(axes)


def plot_ranks(results: pd.DataFrame, methods: Sequence[str], fig: Figure | None = None) -> Figure:
    """Horizontal bars of the mean rank per method (1 = best), one panel per task."""
    tasks = _tasks(results)
    fig, axes = _new_figure(len(tasks), fig)
    for ax, task in zip(axes, tasks, strict=False):
        table = method_summary(results, task, _present(results, task, methods))
        if table.empty:
            continue
        table = table.sort_values("mean_rank", ascending=False)
        colors = [_HIGHLIGHT.get(m, "tab:gray") for m in table["method"]]
        ax.barh(table["method"], table["mean_rank"], color=colors)
        for y, (rank, wins) in enumerate(zip(table["mean_rank"], table["wins"], strict=True)):
            ax.text(rank, y, f" {rank:.2f} ({wins} wins)", va="center", fontsize=8)
        n = int(table["datasets"].max())
        ax.set_title(f"{task}: mean rank over {n} datasets")
        ax.set_xlabel("mean rank (1 = best)")
        ax.set_xlim(0, len(table) + 2)
    return fig


def plot_score_vs_time(
    results: pd.DataFrame, methods: Sequence[str], fig: Figure | None = None
) -> Figure:
    """Mean accuracy (classification) or mean R^2 (regression) against geometric-mean time."""
    tasks = _tasks(results)
    fig, axes = _new_figure(len(tasks), fig)
    for ax, task in zip(axes, tasks, strict=False):
        table = method_summary(results, task, _present(results, task, methods))
        if table.empty:
            continue
        score = "mean_accuracy" if task == "classification" else "mean_r2"
        for _, row in table.iterrows():
            color = _HIGHLIGHT.get(row["method"], "tab:gray")
            ax.scatter(row["gmean_time_s"], row[score], color=color, s=40)
            ax.annotate(
                row["method"],
                (row["gmean_time_s"], row[score]),
                fontsize=8,
                xytext=(4, 2),
                textcoords="offset points",
            )
        ax.set_xscale("log")
        ax.set_xlabel("geometric-mean fit + predict time per fit (s)")
        ax.set_ylabel("mean test accuracy" if task == "classification" else "mean test R^2")
        ax.set_title(task)
        finite = table[score][np.isfinite(table[score])]
        if len(finite):
            pad = 0.1 * max(float(finite.max() - finite.min()), 1e-3)
            ax.set_ylim(float(finite.min()) - pad, float(finite.max()) + pad)
    return fig
