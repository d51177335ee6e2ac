r"""Plain-words verdicts from the diagnostic numbers: per layer, and one cause for the model.

Each rule compares one number with a threshold of :class:`Thresholds` and, when it fires, adds
a :class:`Finding` (``"problem"`` or ``"warning"``) whose message quotes the number, e.g.
``"signal to fc1 vanishes: AGOP trace 2.0e-12 of the output layer's"``. The model's cause is
the first that applies, in this order: the loss diverges; dead units; saturated units;
vanishing signal; exploding signal; a forward pass that loses the data; features that do not
move. For vanishing or exploding signal the per-layer factor

.. math:: f = r_{\mathrm{first}}^{1/k},

with :math:`r_{\mathrm{first}}` the AGOP trace ratio of the layer nearest the input and
:math:`k` the number of layers between it and the reference, is the mean factor by which the
trace shrinks (or grows) from one layer to the next. Since
:math:`\mathrm{tr}\,\mathrm{AGOP}_{l} \approx s_l^2\, c_l\, \mathrm{tr}\,\mathrm{AGOP}_{l+1}` when
layer :math:`l`'s weight is scaled by :math:`s_l`, scaling every weight by :math:`1/\sqrt{f}`
brings the factor to about 1: that is the suggested fix, beside fewer layers or normalisation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Finding", "ModelVerdict", "Thresholds", "UnitVerdict", "judge"]


@dataclass(frozen=True)
class Thresholds:
    """Where the verdict rules fire (``problem`` / ``warning`` levels).

    Attributes
    ----------
    vanishing, weak : float
        AGOP trace ratio to the reference below which the signal vanishes / is weak.
    exploding, strong : float
        AGOP trace ratio above which the signal explodes / is strong.
    grad_vanishing, grad_weak, grad_exploding, grad_strong : float
        The same for the loss-gradient norm ratio (a norm, so about the square roots).
    input_constant, input_low : float
        Input variation share below which a layer sees (nearly) the same input for every sample.
    collapsed_rank : float
        Effective rank at or below which an AGOP or input covariance is about one direction.
    dead, dead_warning : float
        Share of dead or saturated units of an activation for a problem / warning.
    still, slow : float
        NFM change over the steps, relative to the layer that moved most, below which a
        layer's features do not move / move little.
    loss_drop : float
        Relative fall of the loss (mean of the first five steps to the mean of the last five)
        below which the loss is called flat.
    """

    vanishing: float = 1e-4
    weak: float = 1e-2
    exploding: float = 1e4
    strong: float = 1e2
    grad_vanishing: float = 1e-2
    grad_weak: float = 1e-1
    grad_exploding: float = 1e2
    grad_strong: float = 1e1
    input_constant: float = 1e-4
    input_low: float = 1e-2
    collapsed_rank: float = 1.5
    dead: float = 0.5
    dead_warning: float = 0.1
    still: float = 1e-3
    slow: float = 1e-2
    loss_drop: float = 0.01


@dataclass
class Finding:
    """One rule that fired: ``code``, ``level`` ("problem" or "warning"), ``message``, numbers."""

    code: str
    level: str
    message: str
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class UnitVerdict:
    """The verdict on one layer or activation module: ``status`` is "problem", "warning" or
    "ok"; ``text`` the findings in words (or a healthy summary), ``findings`` the rules."""

    name: str
    kind: str
    status: str
    text: str
    findings: list[Finding] = field(default_factory=list)


@dataclass
class ModelVerdict:
    """The model's verdict: the ``cause`` (a code, ``"healthy"`` when none), a sentence
    ``summary``, a ``suggestion`` (what to change), the per-layer ``units`` and ``values``
    (numbers behind the cause, e.g. ``weight_scale``)."""

    cause: str
    summary: str
    suggestion: str
    units: list[UnitVerdict] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _status(findings: Sequence[Finding]) -> str:
    levels = {f.level for f in findings}
    return "problem" if "problem" in levels else "warning" if "warning" in levels else "ok"


def _layer_findings(
    row: Mapping[str, Any], ref: str, t: Thresholds, dyn: Mapping[str, Any] | None
) -> list[Finding]:
    name = row["layer"]
    found: list[Finding] = []
    ratio = row.get("agop_trace_ratio", math.nan)
    if not row.get("is_reference"):
        if _finite(ratio) and ratio == 0:
            found.append(
                Finding(
                    "no_signal",
                    "problem",
                    f"no signal reaches {name}: its AGOP is zero (the output does not depend on "
                    "its input)",
                    {"agop_trace_ratio": ratio},
                )
            )
        elif _finite(ratio) and ratio < t.weak:
            level = "problem" if ratio < t.vanishing else "warning"
            verb = "vanishes" if level == "problem" else "is weak"
            found.append(
                Finding(
                    "vanishing",
                    level,
                    f"signal to {name} {verb}: AGOP trace {ratio:.1e} of {ref}'s",
                    {"agop_trace_ratio": ratio},
                )
            )
        elif _finite(ratio) and ratio > t.strong:
            level = "problem" if ratio > t.exploding else "warning"
            verb = "explodes" if level == "problem" else "is strong"
            found.append(
                Finding(
                    "exploding",
                    level,
                    f"signal to {name} {verb}: AGOP trace {ratio:.1e} times {ref}'s",
                    {"agop_trace_ratio": ratio},
                )
            )
        elif not _finite(row.get("agop_trace", math.nan)):
            found.append(Finding("non_finite", "problem", f"the AGOP of {name} is not finite"))
        g = row.get("loss_grad_ratio", math.nan)
        if _finite(g) and 0 < g < t.grad_weak:
            level = "problem" if g < t.grad_vanishing else "warning"
            found.append(
                Finding(
                    "loss_gradient_vanishing",
                    level,
                    f"the loss gradient reaching {name} is {g:.1e} of {ref}'s",
                    {"loss_grad_ratio": g},
                )
            )
        elif _finite(g) and g > t.grad_strong:
            level = "problem" if g > t.grad_exploding else "warning"
            found.append(
                Finding(
                    "loss_gradient_exploding",
                    level,
                    f"the loss gradient reaching {name} is {g:.1e} times {ref}'s",
                    {"loss_grad_ratio": g},
                )
            )
    rms = row.get("input_rms", math.nan)
    variation = row.get("input_variation", math.nan)
    if _finite(rms) and rms == 0:
        found.append(
            Finding(
                "zero_input",
                "problem",
                f"{name} receives an all-zero input on every probe sample",
                {"input_rms": rms},
            )
        )
    elif _finite(variation) and variation < t.input_low:
        level = "problem" if variation < t.input_constant else "warning"
        found.append(
            Finding(
                "input_constant",
                level,
                f"the input of {name} barely differs between samples: variation share "
                f"{variation:.1e} (the data's information is lost on the way up)",
                {"input_variation": variation},
            )
        )
    for key, what in (
        ("agop_effective_rank", "the output's sensitivity to its input"),
        ("input_effective_rank", "its input"),
    ):
        value = row.get(key, math.nan)
        if _finite(value) and value <= t.collapsed_rank and row.get("d", 0) > 2:
            found.append(
                Finding(
                    "rank_collapse",
                    "warning",
                    f"{what} at {name} is about one direction: effective rank {value:.2f} "
                    f"of d={row['d']}",
                    {key: value},
                )
            )
    if dyn is not None and name in dyn.get("relative_change", {}):
        change = dyn["relative_change"][name]
        top = dyn["largest_change"]
        raw = dyn["nfm_total_change"][name]
        if _finite(change) and change < t.slow:
            level = "problem" if change < t.still else "warning"
            verb = "do not move" if level == "problem" else "move little"
            found.append(
                Finding(
                    "features_still",
                    level,
                    f"the features of {name} {verb}: NFM changed by {raw:.1e} over "
                    f"{dyn['steps']} steps ({top[0]}'s by {top[1]:.1e})",
                    {"nfm_total_change": raw, "relative_to_largest": change},
                )
            )
    return found


def _unit_findings(row: Mapping[str, Any], t: Thresholds) -> list[Finding]:
    if row.get("skipped"):
        return []
    found: list[Finding] = []
    name, act = row["module"], row["activation"]
    word = "saturated" if row["saturating"] else "dead"
    share = row["saturated_fraction"] if row["saturating"] else row["dead_fraction"]
    if share >= t.dead_warning:
        level = "problem" if share >= t.dead else "warning"
        where = (
            "flat (|slope| < 1% of its largest) on 99% of the probe samples"
            if row["saturating"]
            else "never active on the probe samples"
        )
        found.append(
            Finding(
                f"{word}_units",
                level,
                f"{share:.0%} of the {row['units']} {act} units of {name} are {word}: {where}",
                {f"{word}_fraction": share},
            )
        )
    return found


def _healthy_text(row: Mapping[str, Any]) -> str:
    parts = []
    if _finite(row.get("agop_trace_ratio")) and not row.get("is_reference"):
        parts.append(f"AGOP trace {row['agop_trace_ratio']:.2g} of the reference")
    elif row.get("is_reference"):
        parts.append("reference layer")
    if _finite(row.get("agop_effective_rank")):
        parts.append(f"AGOP effective rank {row['agop_effective_rank']:.1f}")
    if _finite(row.get("input_variation")):
        parts.append(f"input variation {row['input_variation']:.2g}")
    return "healthy: " + ", ".join(parts) if parts else "healthy"


def judge(
    layers: Sequence[Mapping[str, Any]],
    units: Sequence[Mapping[str, Any]] = (),
    dynamics: Mapping[str, Any] | None = None,
    thresholds: Thresholds | None = None,
    order: Sequence[str] | None = None,
) -> ModelVerdict:
    """Verdicts per layer and per activation, and the model's cause.

    Parameters
    ----------
    layers : sequence of dict
        Rows of :func:`nfm.diagnostics.diagnose` (AGOP, input and gradient numbers per layer).
    units : sequence of dict
        Rows of :func:`nfm.diagnostics.unit_activity`.
    dynamics : dict, optional
        :meth:`TrainingDynamics.to_dict` of the training steps.
    thresholds : Thresholds, optional
    order : sequence of str, optional
        Module names in model order, to interleave layers and activations.

    Returns
    -------
    ModelVerdict
    """
    t = thresholds or Thresholds()
    ref = next((r["layer"] for r in layers if r.get("is_reference")), "the output layer")
    ref_words = f"the output layer {ref}" if ref != "the output layer" else ref
    dyn_view = None
    if dynamics is not None and dynamics.get("steps", 0) > 0:
        totals = {k: v for k, v in dynamics["nfm_total_change"].items() if _finite(v)}
        if totals:
            top = max(totals.items(), key=lambda kv: kv[1])
            relative = {k: (v / top[1] if top[1] > 0 else math.nan) for k, v in totals.items()}
            dyn_view = {
                "relative_change": relative,
                "largest_change": top,
                "nfm_total_change": totals,
                "steps": dynamics["steps"],
            }
    verdicts: list[UnitVerdict] = []
    for row in layers:
        found = _layer_findings(row, ref_words, t, dyn_view)
        text = "; ".join(f.message for f in found) if found else _healthy_text(row)
        verdicts.append(UnitVerdict(row["layer"], "layer", _status(found), text, found))
    for row in units:
        found = _unit_findings(row, t)
        if row.get("skipped"):
            text = f"not checked: {row['skipped']}"
        elif found:
            text = "; ".join(f.message for f in found)
        else:
            text = (
                f"healthy: {row['dead_fraction']:.0%} dead, {row['saturated_fraction']:.0%} "
                f"saturated of {row['units']} units"
            )
        verdicts.append(UnitVerdict(row["module"], "activation", _status(found), text, found))
    if order is not None:
        position = {name: i for i, name in enumerate(order)}
        verdicts.sort(key=lambda v: position.get(v.name, len(position)))
    return _model_verdict(layers, units, dynamics, verdicts, t, ref)


def _problems(verdicts: Sequence[UnitVerdict], *codes: str) -> list[tuple[str, Finding]]:
    return [
        (v.name, f)
        for v in verdicts
        for f in v.findings
        if f.code in codes and f.level == "problem"
    ]


def _per_layer_factor(layers: Sequence[Mapping[str, Any]]) -> tuple[float, int]:
    ref_depth = next((r["depth"] for r in layers if r.get("is_reference")), len(layers) - 1)
    first = next(
        (r for r in layers if _finite(r.get("agop_trace_ratio")) and r["agop_trace_ratio"] > 0),
        None,
    )
    if first is None or ref_depth - first["depth"] < 1:
        return math.nan, 0
    k = ref_depth - first["depth"]
    return first["agop_trace_ratio"] ** (1.0 / k), k


def _model_verdict(
    layers: Sequence[Mapping[str, Any]],
    units: Sequence[Mapping[str, Any]],
    dynamics: Mapping[str, Any] | None,
    verdicts: list[UnitVerdict],
    t: Thresholds,
    ref: str,
) -> ModelVerdict:
    notes: list[str] = []
    losses = list((dynamics or {}).get("losses", []))
    loss_flat = None
    if dynamics and dynamics.get("steps", 0) >= 10:
        head, tail = losses[:5], losses[-5:]
        start, end = sum(head) / len(head), sum(tail) / len(tail)
        drop = (start - end) / abs(start) if start else math.nan
        loss_flat = _finite(drop) and drop < t.loss_drop
        notes.append(
            f"loss over {dynamics['steps']} steps: {start:.4g} -> {end:.4g} "
            f"({'flat' if loss_flat else f'{drop:.1%} lower'})"
        )
    if dynamics and dynamics.get("nfa_initial") and dynamics.get("nfa_final"):
        built = set(dynamics.get("by_construction", []))
        rises = {
            k: dynamics["nfa_final"][k] - v
            for k, v in dynamics["nfa_initial"].items()
            if k in dynamics["nfa_final"] and k not in built and _finite(v)
        }
        rises = {k: v for k, v in rises.items() if _finite(v)}
        if rises:
            up = [k for k, v in rises.items() if v > 0.01]
            notes.append(
                f"NFA correlation (Pearson, alpha 1/2) rose above its initial value at "
                f"{len(up)} of {len(rises)} layers"
                + (f" ({', '.join(up[:6])}{', ...' if len(up) > 6 else ''})" if up else "")
            )
    base = {"notes": notes, "units": verdicts}
    if dynamics and dynamics.get("diverged_at") is not None:
        step = dynamics["diverged_at"]
        return ModelVerdict(
            "diverges",
            f"training diverges: the loss is not finite at step {step}",
            "lower the learning rate (or clip gradients)",
            values={"diverged_at": step},
            **base,
        )
    broken = _problems(verdicts, "non_finite")
    if broken:
        return ModelVerdict(
            "non_finite",
            f"the AGOP of {broken[0][0]} is not finite: the weights or outputs hold NaN or inf",
            "check the weights for NaN or inf; if they came from training, lower the learning rate",
            values={"layers": [n for n, _ in broken]},
            **base,
        )
    dead = _problems(verdicts, "dead_units")
    if dead:
        names = ", ".join(n for n, _ in dead)
        worst = max(f.values["dead_fraction"] for _, f in dead)
        return ModelVerdict(
            "dead_units",
            f"dead units at {names} (up to {worst:.0%} never active): no gradient passes them",
            "their pre-activations are below zero on every sample: re-initialise the bias and "
            "weights feeding them (so that each unit is active on part of the data), use a "
            "smaller learning rate (large steps kill ReLUs), or a leaky activation",
            values={"modules": [n for n, _ in dead], "dead_fraction": worst},
            **base,
        )
    saturated = _problems(verdicts, "saturated_units")
    if saturated:
        names = ", ".join(n for n, _ in saturated)
        worst = max(f.values["saturated_fraction"] for _, f in saturated)
        return ModelVerdict(
            "saturated_units",
            f"saturated units at {names} (up to {worst:.0%} flat): no gradient passes them",
            "their pre-activations are too large: scale down the weights (or bias) feeding "
            "them, standardise the inputs, or add normalisation before the activation",
            values={"modules": [n for n, _ in saturated], "saturated_fraction": worst},
            **base,
        )
    vanishing = _problems(verdicts, "vanishing", "no_signal", "loss_gradient_vanishing")
    exploding = _problems(verdicts, "exploding", "loss_gradient_exploding")
    for cause, hits, word in (
        ("vanishing", vanishing, "vanishes"),
        ("exploding", exploding, "explodes"),
    ):
        if not hits:
            continue
        factor, k = _per_layer_factor(layers)
        first = hits[0][0]
        ratio = next(r["agop_trace_ratio"] for r in layers if r["layer"] == first)
        scale = 1.0 / math.sqrt(factor) if _finite(factor) and factor > 0 else math.nan
        summary = f"signal {word} through depth: AGOP trace of {first} is {ratio:.1e} of {ref}'s"
        if _finite(factor):
            summary += f", a factor {factor:.3g} per layer over {k} layers"
        direction = "up" if cause == "vanishing" else "down"
        suggestion = (
            f"scale the weights {direction} by about {scale:.2g} (re-initialise with that "
            "gain, so the factor per layer is near 1), or use fewer layers, or add "
            "normalisation or residual connections"
            if _finite(scale)
            else "change the initial weight scale, use fewer layers, or add normalisation"
        )
        return ModelVerdict(
            cause,
            summary,
            suggestion,
            values={
                "first_layer": first,
                "agop_trace_ratio": ratio,
                "per_layer_factor": factor,
                "layers_spanned": k,
                "weight_scale": scale,
            },
            **base,
        )
    lost = _problems(verdicts, "input_constant", "zero_input")
    if lost:
        first = lost[0][0]
        return ModelVerdict(
            "forward_collapse",
            f"the forward pass loses the data: {lost[0][1].message}",
            "check the initial weight scale and the activations before that layer",
            values={"first_layer": first},
            **base,
        )
    still = _problems(verdicts, "features_still")
    if still:
        return ModelVerdict(
            "features_still",
            f"features do not move at {', '.join(n for n, _ in still)}",
            "the learning rate may be too small for those layers, or their gradients are "
            "blocked: check the numbers behind each layer",
            values={"layers": [n for n, _ in still]},
            **base,
        )
    summary = "no problem found: the signal reaches every layer, no dead or saturated units"
    if loss_flat is False:
        summary += ", and the loss falls"
    return ModelVerdict("healthy", summary, "none needed", values={}, **base)
