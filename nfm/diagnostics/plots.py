"""Figures of a diagnosis: the signal through depth, ranks, unit activity and training steps.

matplotlib is imported when a figure is drawn; no backend or global style is set.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from nfm.exceptions import NFMInputError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from nfm.diagnostics.diagnosis import Diagnosis

__all__ = ["plot_diagnosis", "plot_signal_comparison"]


def _values(rows: list[dict[str, Any]], key: str) -> list[float]:
    out = []
    for row in rows:
        v = row.get(key, math.nan)
        out.append(float(v) if isinstance(v, (int, float)) and v is not None else math.nan)
    return out


def _positive(values: list[float]) -> list[float]:
    return [v if math.isfinite(v) and v > 0 else math.nan for v in values]


def _check(diagnosis: Any) -> None:
    from nfm.diagnostics.diagnosis import Diagnosis

    if not isinstance(diagnosis, Diagnosis):
        raise NFMInputError(f"expected a Diagnosis; got {type(diagnosis).__name__}")


def plot_diagnosis(diagnosis: Diagnosis, *, title: str | None = None) -> Figure:
    """Four panels: signal through depth, ranks, dead/saturated units, and the training steps.

    Top left: per layer (input side left) the AGOP trace ratio to the reference, the squared
    loss-gradient ratio (comparable to it) and the input variation share, on a log axis. Top
    right: effective ranks of the AGOP, the NFM and the input covariance. Bottom left: share of
    dead and saturated units per activation. Bottom right: each layer's relative NFM change over
    the training steps (when steps were taken), with the loss of the first and last five steps.
    """
    _check(diagnosis)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 7.2), layout="constrained")
    (ax_signal, ax_rank), (ax_units, ax_steps) = fig.subplots(2, 2)
    rows = diagnosis.layers
    names = [r["layer"] for r in rows]
    xs = list(range(len(rows)))
    ax_signal.semilogy(xs, _positive(_values(rows, "agop_trace_ratio")), "o-", label="AGOP trace")
    grad = _values(rows, "loss_grad_ratio")
    if any(math.isfinite(g) for g in grad):
        ax_signal.semilogy(
            xs, _positive([g * g for g in grad]), "s--", label="(loss-gradient norm)$^2$"
        )
    ax_signal.semilogy(
        xs, _positive(_values(rows, "input_variation")), "^:", label="input variation share"
    )
    ax_signal.set_title("Signal through depth (ratio to the reference layer)")
    ax_signal.set_xlabel("layer")
    ax_signal.legend(fontsize=8)
    for ax, xlabels in ((ax_signal, names), (ax_rank, names)):
        step = max(1, len(xlabels) // 12)
        ax.set_xticks(xs[::step], xlabels[::step], rotation=45, ha="right", fontsize=8)
    ax_rank.plot(xs, _values(rows, "agop_effective_rank"), "o-", label="AGOP")
    ax_rank.plot(xs, _values(rows, "nfm_effective_rank"), "s--", label="NFM $W^TW$")
    ax_rank.plot(xs, _values(rows, "input_effective_rank"), "^:", label="input covariance")
    ax_rank.set_yscale("log")
    ax_rank.set_title("Effective rank")
    ax_rank.legend(fontsize=8)
    units = [u for u in diagnosis.units if not u.get("skipped")]
    if units:
        ux = list(range(len(units)))
        width = 0.4
        ax_units.bar(
            [x - width / 2 for x in ux],
            [u["dead_fraction"] for u in units],
            width,
            label="dead (flat on every sample)",
        )
        ax_units.bar(
            [x + width / 2 for x in ux],
            [u["saturated_fraction"] for u in units],
            width,
            label="saturated (flat on 99%)",
        )
        step = max(1, len(units) // 12)
        ax_units.set_xticks(
            ux[::step], [u["module"] for u in units][::step], rotation=45, ha="right", fontsize=8
        )
        ax_units.set_ylim(0, 1.05)
        ax_units.legend(fontsize=8)
    else:
        ax_units.text(0.5, 0.5, "no activation module checked", ha="center", va="center")
    ax_units.set_title("Units passing no gradient")
    dyn = diagnosis.dynamics
    if dyn is not None and dyn.steps > 0:
        changes = _positive([dyn.nfm_total_change.get(n, math.nan) for n in names])
        ax_steps.semilogy(xs, changes, "o-", color="tab:red")
        step = max(1, len(names) // 12)
        ax_steps.set_xticks(xs[::step], names[::step], rotation=45, ha="right", fontsize=8)
        ax_steps.set_ylabel("relative NFM change")
        head, tail = dyn.losses[:5], dyn.losses[-5:]
        ax_steps.set_title(
            f"NFM change over {dyn.steps} steps on a copy "
            f"(loss {sum(head) / len(head):.3g} -> {sum(tail) / len(tail):.3g})",
            fontsize=10,
        )
    else:
        ax_steps.text(0.5, 0.5, "no training steps", ha="center", va="center")
        ax_steps.set_title("Training steps")
    fig.suptitle(title or f"Diagnosis: {diagnosis.verdict.cause}")
    return fig


def plot_signal_comparison(
    diagnoses: Mapping[str, Diagnosis], *, key: str = "agop_trace_ratio", title: str | None = None
) -> Figure:
    """One curve per named diagnosis: ``key`` per layer against depth (0 = input side), log axis."""
    if not diagnoses:
        raise NFMInputError("diagnoses must name at least one Diagnosis")
    for d in diagnoses.values():
        _check(d)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.subplots()
    for label, d in diagnoses.items():
        values = _positive(_values(d.layers, key))
        ax.semilogy(range(len(values)), values, "o-", markersize=3, label=f"{label}: {d.cause}")
    ax.set_xlabel("layer depth (0 = first layer)")
    ax.set_ylabel(key.replace("_", " "))
    ax.set_title(title or f"{key.replace('_', ' ')} through depth")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    return fig
