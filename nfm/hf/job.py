"""``nfm analyze --hf MODEL``: the per-block NFA report of a pretrained transformer, offline.

The job loads the model from local files (:mod:`nfm.hf.loaders`), cuts the standard library's
docstrings into token windows (:mod:`nfm.hf.corpus`), runs :func:`nfm.hf.analysis.analyze_blocks`
with the output of the model's kind

* an encoder (MiniLM): the mean over the window's positions of the last hidden state, i.e. the
  sentence embedding of sentence-transformers before its normalisation;
* a causal LM (SmolLM2): the next-token logits at the last position,

and writes ``report.html``, ``metrics.json``, ``blocks.json`` (every row, every column) and the
PNGs. The sizes default per model so that a run takes a few minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nfm.exceptions import NFMInputError

__all__ = ["HFDefaults", "add_arguments", "defaults_for", "run_hf"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HFDefaults:
    """Default sizes of a run (each is an option of ``nfm analyze --hf``)."""

    windows: int
    length: int
    probes: int
    fit_alpha: bool
    per_projection: bool


_DEFAULTS = {
    "minilm": HFDefaults(windows=16, length=64, probes=16, fit_alpha=True, per_projection=True),
    "smollm2": HFDefaults(windows=8, length=32, probes=8, fit_alpha=False, per_projection=False),
}
_OTHER = HFDefaults(windows=8, length=32, probes=8, fit_alpha=True, per_projection=True)

_REPORT_COLUMNS = (
    "block",
    "role",
    "layer",
    "d",
    "pearson_a0.5",
    "pearson_a0.5_offdiag",
    "pearson_a1",
    "cosine_a0.5",
    "best_alpha_offdiag",
    "best_corr_offdiag",
    "agop_trace",
    "agop_top_share",
    "agop_effective_rank",
)


def defaults_for(name: str) -> HFDefaults:
    """The default sizes for ``--hf name`` (a short name or any path)."""
    return _DEFAULTS.get(name, _OTHER)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--hf`` options of ``nfm analyze``."""
    group = parser.add_argument_group(
        "pretrained transformers (needs the 'hf' extra; replaces MODEL and DATA)"
    )
    group.add_argument(
        "--hf",
        metavar="MODEL",
        default=None,
        help="'minilm', 'smollm2', a save_pretrained folder or a .gguf file, read offline",
    )
    group.add_argument(
        "--hf-windows", type=int, default=None, help="token windows (default minilm 16, else 8)"
    )
    group.add_argument(
        "--hf-length", type=int, default=None, help="tokens per window (default minilm 64, else 32)"
    )
    group.add_argument(
        "--hf-probes",
        type=int,
        default=None,
        help="Gaussian output probes per window (default minilm 16, else 8; 0: exact AGOP)",
    )
    group.add_argument(
        "--hf-null",
        choices=("shuffled", "reinit", "both", "none"),
        default="shuffled",
        help="null model beside every correlation (default shuffled weights)",
    )
    group.add_argument(
        "--hf-blocks", type=int, nargs="+", default=None, metavar="B", help="blocks (default all)"
    )
    group.add_argument(
        "--hf-per-projection",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also each q/k/v (gate/up) projection on its own (default on, off for smollm2)",
    )
    group.add_argument(
        "--hf-per-head",
        action="store_true",
        help="the attention projections per head instead of whole (grouped-query aware)",
    )
    group.add_argument(
        "--hf-fit-alpha",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fit the best AGOP power per block (default on for minilm, off for smollm2)",
    )
    group.add_argument("--hf-chunk-size", type=int, default=8, help="windows per forward pass")
    group.add_argument("--seed", type=int, default=0, help="seed of the sketch and the null")


def _positive(label: str, value: int, minimum: int = 1) -> int:
    if value < minimum:
        raise NFMInputError(f"--{label} must be >= {minimum}; got {value}")
    return value


def _output_for(kind: str, model: Any) -> dict[str, Any]:
    if kind == "encoder":
        return {"field": "last_hidden_state", "positions": "all", "pool": "mean"}
    accepted = inspect.signature(model.forward).parameters
    call = {k: v for k, v in (("logits_to_keep", 1), ("use_cache", False)) if k in accepted}
    return {"field": "logits", "positions": "last", "call_kwargs": call}


def _mean(rows: list[dict[str, Any]], role: str, column: str) -> float:
    values = [r[column] for r in rows if r["role"] == role and column in r]
    return float(sum(values) / len(values)) if values else float("nan")


def run_hf(args: argparse.Namespace) -> str:
    """Run the job (``args`` from ``nfm analyze``); returns the summary to print."""
    from nfm import __version__
    from nfm.hf.analysis import HEADLINE, analyze_blocks
    from nfm.hf.blocks import find_blocks
    from nfm.hf.corpus import STDLIB_MODULES, stdlib_docstring_text, text_digest, token_windows
    from nfm.hf.loaders import load_pretrained
    from nfm.hf.plots import plot_block_nfa, plot_block_spectra, plot_block_traces
    from nfm.viz.plotting import plot_feature_matrices
    from nfm.viz.report import write_report

    started = time.perf_counter()
    if args.model is not None or args.data is not None:
        raise NFMInputError(
            "--hf analyses a pretrained model on built-in text: give no MODEL or DATA with it"
        )
    base = defaults_for(args.hf)
    windows = _positive("hf-windows", args.hf_windows or base.windows)
    length = _positive("hf-length", args.hf_length or base.length, 2)
    probes = base.probes if args.hf_probes is None else _positive("hf-probes", args.hf_probes, 0)
    fit_alpha = base.fit_alpha if args.hf_fit_alpha is None else bool(args.hf_fit_alpha)
    per_projection = (
        base.per_projection if args.hf_per_projection is None else bool(args.hf_per_projection)
    )
    chunk = _positive("hf-chunk-size", args.hf_chunk_size)
    _positive("dpi", args.dpi)
    null = {"both": ("shuffled", "reinit"), "none": ()}.get(args.hf_null, (args.hf_null,))

    loaded = load_pretrained(args.hf)
    logger.info("loaded %s in %.1f s", loaded.description, loaded.seconds)
    available = [b.index for b in find_blocks(loaded.model)]
    missing = [b for b in args.hf_blocks or () if b not in available]
    if missing:
        raise NFMInputError(f"--hf-blocks {missing} not in the model; it has blocks {available}")
    text_started = time.perf_counter()
    text = stdlib_docstring_text()
    tokens = token_windows(loaded.tokenizer, text, n_windows=windows, length=length)
    text_seconds = time.perf_counter() - text_started
    output = _output_for(loaded.kind, loaded.model)
    analysis = analyze_blocks(
        loaded.model,
        tokens,
        **output,
        probes=probes or None,
        blocks=args.hf_blocks,
        per_projection=per_projection,
        per_head=bool(args.hf_per_head),
        null=null,
        fit_alpha=fit_alpha,
        seed=args.seed,
        chunk_size=chunk,
        verbose=False,
    )
    rows = analysis.rows
    output_text = (
        "mean-pooled last hidden state (sentence embedding)"
        if loaded.kind == "encoder"
        else "next-token logits at the last position"
    )
    sketch = (
        f"Gaussian sketch with {probes} probes of the {analysis.n_outputs} outputs"
        if probes
        else f"exact, all {analysis.n_outputs} outputs"
    )
    metrics: dict[str, Any] = {
        "model": loaded.description,
        "blocks": len({r["block"] for r in rows}),
        "text": f"{windows} windows x {length} tokens of Python {sys.version.split()[0]} "
        "standard-library docstrings",
        "output": output_text,
        "agop_outputs": sketch,
    }
    for role in ("attention", "mlp"):
        for column in (HEADLINE, f"{HEADLINE}_offdiag"):
            metrics[f"mean_{role}_{column}"] = _mean(rows, role, column)
            for kind in null:
                metrics[f"mean_{role}_null_{kind}_{column}"] = _mean(
                    rows, role, f"null_{kind}_{column}"
                )
    for kind in null:
        block_rows = [r for r in rows if r["role"] in ("attention", "mlp")]
        above = sum(
            r[f"{HEADLINE}_offdiag"] > r[f"null_{kind}_{HEADLINE}_offdiag"] for r in block_rows
        )
        metrics[f"rows_above_null_{kind}_offdiag"] = f"{above} of {len(block_rows)}"
    metrics["seconds_load"] = loaded.seconds
    metrics["seconds_text"] = text_seconds
    for kind, seconds in analysis.seconds.items():
        metrics[f"seconds_agop_{kind}"] = seconds

    name = Path(args.hf).name if args.hf not in ("minilm", "smollm2") else args.hf
    figures: dict[str, Any] = {
        "block_nfa": plot_block_nfa(rows, title=f"{name}: NFA correlation per block"),
        "block_spectra": plot_block_spectra(
            analysis.spectra, rows, null=null[0] if null else None, title=f"{name}: AGOP spectra"
        ),
        "block_traces": plot_block_traces(rows, title=f"{name}: AGOP size per block"),
    }
    captions = {
        "block_nfa": "Pearson correlation between each block's NFM (stacked weights of the "
        "projections reading the input) and AGOP^1/2, against depth; filled markers use every "
        "matrix entry, open markers the off-diagonal entries only. Dashed: the same statistic "
        "for the null model(s), on the same text with the same output sketch.",
        "block_spectra": "AGOP eigenvalues divided by the trace (largest 64), one line per "
        "block (colour: depth); a steep fall means the output is sensitive to a few directions "
        "of the block's input.",
        "block_traces": "Left: the AGOP trace (mean squared gradient norm of the sketched "
        "output with respect to the input) per block. Right: its effective rank.",
    }
    attention = [r for r in rows if r["role"] == "attention"]
    middle = attention[len(attention) // 2]
    key = middle["layer_key"]
    null_value = middle.get(f"null_{null[0]}_{HEADLINE}") if null else None
    figures["feature_matrices_middle_block"] = plot_feature_matrices(
        analysis.nfm[key],
        analysis.agop[key],
        alpha=0.5,
        layer=middle["layer"],
        robust=True,
        null_correlation=null_value,
        null_label={"shuffled": "shuffled weights", "reinit": "re-initialised"}.get(
            null[0] if null else "", "null"
        ),
    )
    captions["feature_matrices_middle_block"] = (
        f"NFM and AGOP^1/2 of the attention input of block {middle['block']}, each on its own "
        "symmetric colour scale clipped at the 99.5th percentile of |entries|."
    )
    notes = [
        "The AGOP of a block's attention input is taken along the query, key and value "
        "projections together (one perturbation added to the input of all three), not along "
        "the residual stream; its NFM is the sum of W^T W over those projections. Rows q, k, v "
        "(gate, up) are each projection on its own.",
        f"AGOP outputs: {sketch}. A sketch P f with i.i.d. N(0, 1/k) entries of P has the exact "
        "AGOP as its expectation; with few probes each AGOP is a noisy estimate.",
        "Null columns: the same statistic for a copy of the model with the entries of every "
        "weight matrix randomly permuted (shuffled) or freshly initialised (reinit), on the same "
        "text. Correlations with the diagonal are high even for the null (both matrices have "
        "large diagonals); the off-diagonal columns and the lift over the null are the evidence.",
    ]
    command = ["nfm", "analyze", "--hf", args.hf, "--hf-windows", str(windows),
               "--hf-length", str(length), "--hf-probes", str(probes),
               "--hf-null", args.hf_null, "--seed", str(args.seed),
               "--hf-per-projection" if per_projection else "--no-hf-per-projection",
               "--hf-fit-alpha" if fit_alpha else "--no-hf-fit-alpha"]  # fmt: skip
    if args.hf_per_head:
        command.append("--hf-per-head")
    if args.hf_blocks:
        command += ["--hf-blocks", *(str(b) for b in args.hf_blocks)]
    command += ["--threads", str(args.threads), "--output-dir", str(args.output_dir)]
    settings = {
        "command": " ".join(shlex.quote(c) for c in command),
        "model_source": loaded.source,
        "kind": loaded.kind,
        "windows": windows,
        "length": length,
        "probes": probes or "exact",
        "null": list(null) or "none",
        "per_projection": per_projection,
        "per_head": bool(args.hf_per_head),
        "fit_alpha": fit_alpha,
        "seed": args.seed,
        "chunk_size": chunk,
        "threads": args.threads,
        "corpus": f"docstrings of {len(STDLIB_MODULES)} standard-library modules, "
        f"sha256 {text_digest(text)[:16]}",
    }
    report_rows = [
        {c: r[c] for c in _REPORT_COLUMNS if c in r}
        | {c: v for c, v in r.items() if c.startswith(("null_", "lift_"))}
        for r in rows
    ]
    files = write_report(
        args.output_dir,
        figures=figures,
        nfa_rows=report_rows,
        metrics=metrics,
        settings=settings,
        title=f"Neural feature matrices of {name}, per transformer block",
        subtitle=f"nfm {__version__}: {loaded.description}; {output_text}",
        captions=captions,
        notes=notes,
        dpi=args.dpi,
    )
    from nfm._utils.io import json_ready

    (Path(args.output_dir) / "blocks.json").write_text(
        json.dumps(json_ready(rows), indent=1, allow_nan=False), encoding="utf-8"
    )
    total = time.perf_counter() - started
    lines = [f"nfm analyze --hf {args.hf}: {loaded.description} ({total:.1f} s)"]
    for role in ("attention", "mlp"):
        line = (
            f"  {role:<9} mean {HEADLINE}_offdiag {metrics[f'mean_{role}_{HEADLINE}_offdiag']:.3f}"
        )
        for kind in null:
            value = metrics[f"mean_{role}_null_{kind}_{HEADLINE}_offdiag"]
            line += f"  (null {kind}: {value:.3f})"
        lines.append(line)
    lines.append(f"  report: {files.html}")
    return "\n".join(lines)
