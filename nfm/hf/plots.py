"""Figures of a per-block transformer analysis (:class:`nfm.hf.analysis.BlockAnalysis`).

* :func:`plot_block_nfa` -- the NFA correlation of each block's attention and MLP input against
  depth, for the pretrained model and each null model (with and without the diagonal);
* :func:`plot_block_spectra` -- the AGOP spectra (eigenvalues over the trace) of every block,
  pretrained and null side by side;
* :func:`plot_block_traces` -- the AGOP trace and effective rank against depth.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from nfm.exceptions import NFMInputError

__all__ = ["plot_block_nfa", "plot_block_spectra", "plot_block_traces"]

ROLES = ("attention", "mlp")
_ROLE_TITLES = {"attention": "attention input (q, k, v)", "mlp": "MLP input"}
_NULL_STYLES = {
    "shuffled": ("tab:red", "shuffled weights"),
    "reinit": ("tab:gray", "re-initialised"),
}


def _role_rows(rows: Sequence[Mapping[str, Any]], role: str) -> list[Mapping[str, Any]]:
    selected = sorted((r for r in rows if r.get("role") == role), key=lambda r: r["block"])
    if not selected:
        raise NFMInputError(f"rows hold no {role!r} row; pass BlockAnalysis.rows")
    return selected


def _null_kinds(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return [k for k in _NULL_STYLES if any(f"lift_{k}" in r for r in rows)]


def plot_block_nfa(
    rows: Sequence[Mapping[str, Any]],
    *,
    alpha: float = 0.5,
    title: str | None = None,
) -> Figure:
    """NFA correlation per block (Pearson, AGOP^alpha), pretrained against the null models.

    Solid lines: the pretrained model; dashed: the null models. Filled markers: all entries of
    the matrices; open markers: off-diagonal entries only.
    """
    column = f"pearson_a{alpha:g}"
    kinds = _null_kinds(rows)
    fig = Figure(figsize=(10.0, 3.9), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, role in zip(axes, ROLES, strict=True):
        selected = _role_rows(rows, role)
        blocks = [r["block"] for r in selected]
        for suffix, marker, fill in (("", "o", "full"), ("_offdiag", "o", "none")):
            label = "pretrained" + (" (off-diagonal)" if suffix else "")
            ax.plot(
                blocks,
                [r[column + suffix] for r in selected],
                color="tab:blue",
                marker=marker,
                fillstyle=fill,
                label=label,
            )
            for kind in kinds:
                key = f"null_{kind}_{column}{suffix}"
                if key not in selected[0]:
                    continue
                colour, name = _NULL_STYLES[kind]
                ax.plot(
                    blocks,
                    [r[key] for r in selected],
                    color=colour,
                    linestyle="--",
                    marker=marker,
                    fillstyle=fill,
                    label=name + (" (off-diagonal)" if suffix else ""),
                )
        ax.axhline(0, color="0.6", linewidth=0.6)
        ax.set_title(_ROLE_TITLES[role])
        ax.set_xlabel("block")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"Pearson corr(NFM, AGOP^{alpha:g})")
    axes[1].legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title)
    return fig


def plot_block_spectra(
    spectra: Mapping[str, Mapping[str, np.ndarray]],
    rows: Sequence[Mapping[str, Any]],
    *,
    null: str | None = "shuffled",
    top: int = 64,
    title: str | None = None,
) -> Figure:
    """AGOP eigenvalues over the trace (first ``top``), one line per block coloured by depth.

    Rows of the figure: attention input, MLP input; columns: the pretrained model and the null
    model ``null`` (when it was computed).
    """
    from matplotlib import colormaps

    kinds = ["pretrained"] + ([null] if null is not None and null in spectra else [])
    fig = Figure(figsize=(4.6 * len(kinds) + 0.6, 7.0), layout="constrained")
    axes = fig.subplots(2, len(kinds), squeeze=False, sharey="row")
    cmap = colormaps["viridis"]
    for i, role in enumerate(ROLES):
        selected = _role_rows(rows, role)
        n = len(selected)
        for j, kind in enumerate(kinds):
            ax = axes[i, j]
            for index, row in enumerate(selected):
                values = np.asarray(spectra[kind][row["layer_key"]], dtype=float)
                total = values.sum()
                if total <= 0:
                    continue
                shown = values[: min(top, values.size)] / total
                colour = cmap(index / max(1, n - 1))
                ax.semilogy(np.arange(1, shown.size + 1), shown, color=colour, linewidth=1.0)
            label = "pretrained" if kind == "pretrained" else _NULL_STYLES[kind][1]
            ax.set_title(f"{_ROLE_TITLES[role]}: {label}", fontsize=10)
            ax.set_xlabel("eigenvalue index")
            ax.grid(alpha=0.3, which="both")
        axes[i, 0].set_ylabel("eigenvalue / trace")
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    blocks = [r["block"] for r in _role_rows(rows, "attention")]
    mappable = ScalarMappable(norm=Normalize(min(blocks), max(blocks)), cmap=cmap)
    fig.colorbar(mappable, ax=axes.ravel().tolist(), label="block", shrink=0.6)
    if title:
        fig.suptitle(title)
    return fig


def plot_block_traces(rows: Sequence[Mapping[str, Any]], *, title: str | None = None) -> Figure:
    """AGOP trace (log scale) and effective rank per block, pretrained against the nulls."""
    kinds = _null_kinds(rows)
    fig = Figure(figsize=(10.0, 3.9), layout="constrained")
    left, right = fig.subplots(1, 2)
    for role, marker in zip(ROLES, ("o", "s"), strict=True):
        selected = _role_rows(rows, role)
        blocks = [r["block"] for r in selected]
        name = _ROLE_TITLES[role]
        left.semilogy(
            blocks, [r["agop_trace"] for r in selected], marker=marker, label=f"{name}, pretrained"
        )
        for kind in kinds:
            colour, null_name = _NULL_STYLES[kind]
            left.semilogy(
                blocks,
                [r[f"null_{kind}_agop_trace"] for r in selected],
                marker=marker,
                linestyle="--",
                color=colour,
                label=f"{name}, {null_name}",
            )
        right.plot(blocks, [r["agop_effective_rank"] for r in selected], marker=marker, label=name)
    left.set_title("AGOP trace")
    left.set_xlabel("block")
    left.legend(fontsize=7)
    left.grid(alpha=0.3, which="both")
    right.set_title("AGOP effective rank (sum λ)² / sum λ², pretrained")
    right.set_xlabel("block")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig
