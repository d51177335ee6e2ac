"""One self-contained HTML report of a network's feature matrices, plus JSON and PNG files.

:func:`write_report` writes into an output folder

* ``report.html`` -- a single file with no external resource: figures embedded as base64 PNG,
  inline CSS, the summary metrics, the per-layer NFA table, the training history summary (when
  there is one), the settings, the nfm version and the date;
* ``metrics.json`` -- the same numbers, machine-readable;
* one ``<name>.png`` per figure;
* ``tracking_history.json`` -- the full tracker history, when one is given.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from nfm._utils.env import machine_info
from nfm._utils.io import json_ready
from nfm.exceptions import NFMInputError

__all__ = ["ReportFiles", "figure_to_png", "write_report"]

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; color: #222; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.7em; margin-bottom: 0.1em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.8em; }
.subtitle { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; display: block;
        overflow-x: auto; max-width: 100%; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.7em; text-align: right; }
th { background: #f4f6f8; }
td.text, th.text { text-align: left; }
tr.construction td { color: #888; font-style: italic; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.92em; margin-top: 0.3em; }
.note { background: #f7f7f2; border-left: 4px solid #c9c27a; padding: 0.5em 0.9em; }
footer { color: #888; font-size: 0.85em; margin-top: 3em; }
"""


@dataclass
class ReportFiles:
    """Paths written by :func:`write_report`."""

    directory: Path
    html: Path
    metrics_json: Path
    figures: dict[str, Path] = field(default_factory=dict)
    history: Path | None = None


def figure_to_png(fig: Figure, dpi: int = 100, *, palette: bool = True) -> bytes:
    """Render a matplotlib figure to PNG bytes.

    With ``palette`` the image is reduced to a 256-colour palette (Pillow's median cut, opaque
    white background), which keeps heat maps visually unchanged and makes the files about 3x
    smaller.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    if not palette:
        return buffer.getvalue()
    from PIL import Image  # a dependency of matplotlib

    buffer.seek(0)
    with Image.open(buffer) as image:
        reduced = image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    compact = io.BytesIO()
    reduced.save(compact, format="PNG", optimize=True)
    return compact.getvalue()


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3e}"
        return f"{value:.4f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_format_value(v) for v in value)
    return str(value)


def _table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    if not rows:
        return "<p>(none)</p>"
    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
    head = "".join(
        f'<th class="{"text" if c in ("layer", "setting", "metric") else ""}">'
        f"{html.escape(str(c))}</th>"
        for c in columns
    )
    body = []
    for row in rows:
        klass = ' class="construction"' if row.get("by_construction") is True else ""
        cells = []
        for c in columns:
            value = row.get(c, "")
            klass_cell = "text" if isinstance(value, str) else ""
            text = html.escape(_format_value(value))
            cells.append(f'<td class="{klass_cell}">{text}</td>')
        body.append(f"<tr{klass}>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _key_value_table(mapping: Mapping[str, Any], key_name: str) -> str:
    rows = [{key_name: str(k), "value": v} for k, v in mapping.items()]
    return _table(rows, [key_name, "value"])


_NULL_NAMES = {
    "shuffled": "the same model with each layer's weight entries shuffled",
    "reinit": "the same model re-initialised",
}


def _null_note(rows: Sequence[Mapping[str, Any]], function: str = "nfa_report") -> str:
    """What ``null_correlation`` and ``lift`` mean, or a warning that no null was computed."""
    if not rows:
        return ""
    kinds = sorted({str(r["null"]) for r in rows if r.get("null")})
    if not kinds:
        return (
            '<p class="note">No null baseline in this table: a network that learned nothing '
            "already gives positive correlations, so a value alone is not evidence. "
            f'<code>{function}(..., null="shuffled")</code> adds the same statistic for the '
            "model with its weights shuffled, and the lift over it.</p>"
        )
    what = "; ".join(html.escape(_NULL_NAMES.get(k, k)) for k in kinds)
    return (
        '<p class="note"><i>null_correlation</i> is the first correlation column computed the '
        f"same way (same data and settings) for a null model: {what}. <i>lift</i> is the "
        "layer's value minus its null: what training added beyond what any network with such "
        "weights gives. At a layer marked <i>by construction</i> the null is 1 at alpha = 1.</p>"
    )


def _first_and_last_section(hist: Any) -> str:
    """Each layer's first and last record of the first NFA column (the value at step 0)."""
    columns = hist.nfa_columns
    entries = hist.first_and_last(columns[0]) if columns else []
    if not entries:
        return ""
    return (
        f"<p>{html.escape(columns[0])} at the first record (the value at initialisation when "
        "the first step is 0) and at the last:</p>" + _table(entries)
    )


def _fact_section(rows: Sequence[Mapping[str, Any]] | None) -> str:
    """The FACT table with what it means (empty without rows)."""
    if rows is None:
        return ""
    return (
        "<h2>FACT per layer</h2><p>Correlation between each layer's W<sup>T</sup>W and its "
        "FACT matrix &minus;(1/(n&lambda;)) &Sigma;<sub>i</sub> &nabla;<sub>h</sub>"
        "&#8467;<sub>i</sub> h<sub>i</sub><sup>T</sup> (the loss gradient with respect to the "
        "layer input against the layer input, symmetrised). With weight decay &lambda; the two "
        "are equal at every stationary point of the regularised loss (Boix-Adsera et al. "
        "2025), so a value below 1 measures the distance from convergence; "
        "<i>relative_error</i> compares the matrices themselves when &lambda; is given, "
        "<i>asymmetry</i> is the antisymmetric share, 0 at a stationary point.</p>"
        + _null_note(rows, "fact_report")
        + _table(rows)
    )


def write_report(
    output_dir: str | Path,
    *,
    figures: Mapping[str, Figure],
    nfa_rows: Sequence[Mapping[str, Any]],
    metrics: Mapping[str, Any],
    settings: Mapping[str, Any],
    title: str = "nfm report",
    subtitle: str | None = None,
    captions: Mapping[str, str] | None = None,
    history: Any = None,
    notes: Sequence[str] = (),
    fact_rows: Sequence[Mapping[str, Any]] | None = None,
    dpi: int = 100,
) -> ReportFiles:
    """Write ``report.html``, ``metrics.json`` and the figures' PNGs into ``output_dir``.

    Parameters
    ----------
    output_dir : str or Path
        Created if missing; existing files of the same names are overwritten.
    figures : mapping name -> Figure
        In display order; each becomes ``<name>.png`` and an embedded image. Names must be
        simple file stems (letters, digits, ``-``, ``_``).
    nfa_rows : sequence of dict
        The per-layer NFA table (e.g. :attr:`nfm.ansatz.NFAReport.rows`); rows with
        ``by_construction`` True are greyed and flagged.
    metrics : mapping
        Headline numbers (accuracy, runtime, ...), shown first and saved to JSON.
    settings : mapping
        How the result was produced (dataset, architecture, epochs, seed, command, ...).
    title, subtitle : str
    captions : mapping name -> str, optional
        A caption under each figure.
    history : NFATracker or TrackingHistory, optional
        Saved as ``tracking_history.json``; its last step is tabulated in the report.
    notes : sequence of str
        Short paragraphs shown under the summary (e.g. what "by construction" means).
    fact_rows : sequence of dict, optional
        The per-layer FACT table (:attr:`nfm.ansatz.FACTReport.rows`), shown in its own
        section and saved to JSON under ``"fact"``.
    dpi : int
        Resolution of the PNGs.

    Returns
    -------
    ReportFiles
    """
    from nfm import __version__

    directory = Path(output_dir)
    if directory.exists() and not directory.is_dir():
        raise NFMInputError(f"output_dir {str(directory)!r} exists and is not a folder")
    directory.mkdir(parents=True, exist_ok=True)
    for name in figures:
        if not name or not all(ch.isalnum() or ch in "-_" for ch in name):
            raise NFMInputError(
                f"figure names must be file stems of letters, digits, '-' and '_'; got {name!r}"
            )
    captions = dict(captions or {})
    created = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
    created_text = created.isoformat().replace("+00:00", "Z")

    figure_paths: dict[str, Path] = {}
    figure_html = []
    for name, fig in figures.items():
        png = figure_to_png(fig, dpi=dpi)
        path = directory / f"{name}.png"
        path.write_bytes(png)
        figure_paths[name] = path
        encoded = base64.b64encode(png).decode("ascii")
        caption = captions.get(name, "")
        figure_html.append(
            f'<figure id="fig-{html.escape(name)}"><img alt="{html.escape(name)}" '
            f'src="data:image/png;base64,{encoded}">'
            f"<figcaption><b>{html.escape(name)}.png</b>"
            f"{' &mdash; ' + html.escape(caption) if caption else ''}</figcaption></figure>"
        )

    history_path = None
    history_section = ""
    if history is not None:
        from nfm.tracking import as_history

        hist = as_history(history)
        history_path = hist.save(directory / "tracking_history.json")
        history_section = (
            "<h2>Training history</h2>"
            f"<p>{len(hist.steps)} records over steps {hist.steps[0]}&ndash;{hist.steps[-1]} "
            f"({len(hist.layers)} layers); full table in <code>tracking_history.json</code>. "
            "Last record:</p>" + _table(hist.last()) + _first_and_last_section(hist)
            if hist.rows
            else ""
        )

    environment = {"nfm_version": __version__, "created_utc": created_text, **machine_info()}

    payload = {
        "title": title,
        "metrics": json_ready(dict(metrics)),
        "nfa": json_ready([dict(r) for r in nfa_rows]),
        "settings": json_ready(dict(settings)),
        "environment": json_ready(environment),
        "figures": {name: path.name for name, path in figure_paths.items()},
        "history_file": history_path.name if history_path else None,
    }
    if fact_rows is not None:
        payload["fact"] = json_ready([dict(r) for r in fact_rows])
    metrics_path = directory / "metrics.json"
    metrics_path.write_text(json.dumps(payload, indent=2, allow_nan=False), encoding="utf-8")

    notes_html = "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)
    body = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="subtitle">{html.escape(subtitle or "")}</p>
<h2>Summary</h2>
{_key_value_table(metrics, "metric")}
{notes_html}
<h2>Neural Feature Ansatz per layer</h2>
<p>Correlation between each layer's neural feature matrix NFM = W<sup>T</sup>W and a power
AGOP<sup>&alpha;</sup> of its average gradient outer product; <i>pearson</i> is the Pearson
correlation of the vectorised matrices, <i>cosine</i> their uncentred cosine similarity,
<i>offdiag</i> columns leave the diagonal out. Layers marked <i>by construction</i> satisfy
NFM = AGOP exactly whatever the training did, so their value is no evidence for the ansatz.</p>
{_null_note(nfa_rows)}
{_table(nfa_rows)}
{_fact_section(fact_rows)}
{history_section}
<h2>Figures</h2>
{"".join(figure_html)}
<h2>Settings</h2>
{_key_value_table(settings, "setting")}
<footer>Made by nfm {html.escape(__version__)} on {html.escape(created_text)}
(Python {html.escape(environment["python"])}, torch {html.escape(environment["versions"]["torch"])},
{html.escape(environment["uname"])}).</footer>
</body></html>
"""
    html_path = directory / "report.html"
    html_path.write_text(body, encoding="utf-8")
    return ReportFiles(
        directory=directory,
        html=html_path,
        metrics_json=metrics_path,
        figures=figure_paths,
        history=history_path,
    )
