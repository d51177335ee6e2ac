"""Figures of the tabular benchmark: mean ranks, score versus time, critical difference.

The rank and score figures take a results table (``results.csv`` as a DataFrame) and draw one
panel per task present; the critical-difference diagram takes mean ranks and the CD. All return
a ``matplotlib.figure.Figure`` and never call ``show()`` or change the backend.
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


def plot_critical_difference(
    mean_ranks: dict[str, float],
    cd: float,
    *,
    n_datasets: int,
    title: str = "",
    fig: Figure | None = None,
) -> Figure:
    """Critical-difference diagram: methods on a rank axis, CD bar, non-significant groups.

    Methods are placed at their mean rank on an axis from 1 (best, left) to k; the better half
    is labelled on the left, the rest on the right. A bar of length ``cd`` shows the Nemenyi
    critical difference, and each thick horizontal line joins a maximal group of methods whose
    mean ranks differ by less than ``cd`` (:func:`nfm.tabular.stats.cd_cliques`).
    """
    from nfm.tabular.stats import cd_cliques

    names = sorted(mean_ranks, key=lambda m: (mean_ranks[m], m))
    values = [mean_ranks[m] for m in names]
    k = len(names)
    if fig is None:
        from matplotlib.figure import Figure as MplFigure

        fig = MplFigure(figsize=(7.5, 1.6 + 0.32 * k), layout="constrained")
    ax = fig.subplots()
    margin = 0.3 * k + 1.0  # room for the labels on both sides
    ax.set_xlim(0.5 - margin, k + 0.5 + margin)
    half = (k + 1) // 2
    top = 0.0
    ax.hlines(top, 1, k, color="black", linewidth=1)
    for tick in range(1, k + 1):
        ax.vlines(tick, top, top + 0.12, color="black", linewidth=1)
        ax.text(tick, top + 0.18, str(tick), ha="center", va="bottom", fontsize=8)
    for i, (name, value) in enumerate(zip(names, values, strict=True)):
        left = i < half
        row = (i if left else k - 1 - i) + 1
        y = top - 0.35 * row - 0.3
        x_text = 0.6 if left else k + 0.4
        color = _HIGHLIGHT.get(name, "black")
        ax.plot([value, value, x_text], [top, y, y], color=color, linewidth=0.9)
        ax.text(
            x_text - 0.05 if left else x_text + 0.05,
            y,
            f"{name} ({value:.2f})",
            ha="right" if left else "left",
            va="center",
            fontsize=8,
            color=color,
        )
    groups = cd_cliques(values, cd)
    for j, group in enumerate(groups):
        lo, hi = min(values[g] for g in group), max(values[g] for g in group)
        y = top - 0.12 - 0.1 * j
        ax.hlines(y, lo - 0.03, hi + 0.03, color="gray", linewidth=3)
    ax.hlines(top + 0.55, 1, 1 + cd, color="black", linewidth=1.5)
    ax.text(1 + cd / 2, top + 0.6, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylim(top - 0.35 * (half + 1) - 0.4, top + 0.9)
    ax.set_axis_off()
    ax.set_title(title or f"Nemenyi critical difference, {n_datasets} datasets", fontsize=9)
    return fig
