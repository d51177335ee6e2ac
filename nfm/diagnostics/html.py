"""The diagnosis as HTML: one ``<section>`` for any report, or a whole self-contained page.

:func:`diagnosis_section` returns the section (cause, suggestion, notes, the per-layer verdict
table, the numbers per layer and per activation, figures embedded as base64 PNG);
:func:`write_diagnosis_report` writes ``diagnosis.html``, ``diagnosis.json`` and the PNGs.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nfm._utils.env import machine_info
from nfm._utils.io import json_ready
from nfm.exceptions import NFMInputError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from nfm.diagnostics.diagnosis import Diagnosis

__all__ = ["DiagnosisFiles", "diagnosis_section", "write_diagnosis_report"]

_CSS = """
body { font-family: Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; line-height: 1.45; padding: 0 1em; }
section.diagnosis table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em;
       display: block; overflow-x: auto; }
section.diagnosis th, section.diagnosis td { border: 1px solid #ddd; padding: 0.25em 0.6em;
       text-align: right; }
section.diagnosis td.text { text-align: left; }
section.diagnosis tr.problem td { background: #fbeaea; }
section.diagnosis tr.warning td { background: #fdf6e3; }
section.diagnosis .cause { border-left: 4px solid #b33; padding: 0.4em 0.9em;
       background: #f8f4f4; }
section.diagnosis .cause.healthy { border-color: #393; background: #f3f8f3; }
section.diagnosis figure img { max-width: 100%; }
"""

_LAYER_COLUMNS = (
    "layer",
    "d",
    "agop_trace",
    "agop_trace_ratio",
    "agop_effective_rank",
    "agop_stable_rank",
    "nfm_effective_rank",
    "nfm_stable_rank",
    "input_variation",
    "input_effective_rank",
    "loss_grad_ratio",
    "weight_grad_relative",
)
_UNIT_COLUMNS = (
    "module",
    "activation",
    "units",
    "dead_fraction",
    "saturated_fraction",
    "flat_share",
)


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-2):
            return f"{value:.2e}"
        return f"{value:.3f}"
    return "" if value is None else str(value)


def _table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], classes=None) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for i, row in enumerate(rows):
        klass = f' class="{classes[i]}"' if classes else ""
        cells = "".join(
            f'<td class="{"text" if isinstance(row.get(c), str) else ""}">'
            f"{html.escape(_cell(row.get(c)))}</td>"
            for c in columns
        )
        body.append(f"<tr{klass}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def diagnosis_section(
    diagnosis: Diagnosis,
    *,
    figures: Mapping[str, bytes] | None = None,
    captions: Mapping[str, str] | None = None,
    heading: str = "Diagnosis",
) -> str:
    """An HTML ``<section class="diagnosis">`` of the diagnosis (escaped; PNG bytes inlined).

    Parameters
    ----------
    diagnosis : Diagnosis
    figures : mapping of name to PNG bytes, optional
    captions : mapping of name to caption, optional
    heading : str
    """
    from nfm.diagnostics.diagnosis import Diagnosis

    if not isinstance(diagnosis, Diagnosis):
        raise NFMInputError(f"diagnosis must be a Diagnosis; got {type(diagnosis).__name__}")
    v = diagnosis.verdict
    klass = "cause healthy" if v.cause == "healthy" else "cause"
    parts = [
        f'<section class="diagnosis"><h2>{html.escape(heading)}</h2>',
        f'<div class="{klass}"><p><b>{html.escape(v.cause)}</b>: {html.escape(v.summary)}</p>'
        f"<p>Suggested fix: {html.escape(v.suggestion)}</p></div>",
    ]
    if v.notes:
        parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in v.notes) + "</ul>")
    parts.append("<h3>Verdict per layer</h3>")
    verdict_rows = [{"name": u.name, "status": u.status, "verdict": u.text} for u in v.units]
    parts.append(_table(verdict_rows, ("name", "status", "verdict"), [u.status for u in v.units]))
    for name, png in (figures or {}).items():
        data = base64.b64encode(png).decode("ascii")
        caption = html.escape((captions or {}).get(name, name))
        parts.append(
            f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{caption}</figcaption></figure>"
        )
    parts.append("<h3>Numbers per layer</h3>")
    columns = [c for c in _LAYER_COLUMNS if any(c in r for r in diagnosis.layers)]
    parts.append(_table(diagnosis.layers, columns))
    units = [u for u in diagnosis.units if not u.get("skipped")]
    if units:
        parts.append("<h3>Units per activation</h3>")
        parts.append(_table(units, _UNIT_COLUMNS))
    settings = {k: v for k, v in diagnosis.settings.items() if k != "thresholds"}
    parts.append("<h3>Settings</h3>")
    parts.append(
        _table([{"setting": k, "value": str(x)} for k, x in settings.items()], ("setting", "value"))
    )
    parts.append("</section>")
    return "\n".join(parts)


@dataclass
class DiagnosisFiles:
    """Paths written by :func:`write_diagnosis_report`."""

    directory: Path
    html: Path
    json: Path
    figures: dict[str, Path] = field(default_factory=dict)


def write_diagnosis_report(
    directory: str | Path,
    diagnosis: Diagnosis,
    *,
    figures: Mapping[str, Figure] | None = None,
    captions: Mapping[str, str] | None = None,
    title: str = "Diagnosis",
    extra: Mapping[str, Any] | None = None,
    dpi: int = 100,
) -> DiagnosisFiles:
    """Write ``diagnosis.html`` (self-contained), ``diagnosis.json`` and one PNG per figure.

    ``extra`` is merged into the JSON (e.g. the command and the data set); the JSON also holds
    :func:`nfm._utils.env.machine_info`.
    """
    from nfm.viz.report import figure_to_png

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    pngs: dict[str, bytes] = {}
    paths: dict[str, Path] = {}
    for name, fig in (figures or {}).items():
        pngs[name] = figure_to_png(fig, dpi=dpi)
        paths[name] = out / f"{name}.png"
        paths[name].write_bytes(pngs[name])
    machine = machine_info()
    section = diagnosis_section(diagnosis, figures=pngs, captions=captions, heading=title)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"{section}<footer><p>Written {stamp} on {html.escape(str(machine.get('cpu')))} "
        f"({machine.get('cores')} cores).</p></footer></body></html>"
    )
    html_path = out / "diagnosis.html"
    html_path.write_text(page, encoding="utf-8")
    payload = {**diagnosis.to_dict(), "machine": machine, **dict(extra or {})}
    json_path = out / "diagnosis.json"
    json_path.write_text(json.dumps(json_ready(payload), indent=1, allow_nan=False), "utf-8")
    return DiagnosisFiles(out, html_path, json_path, paths)
