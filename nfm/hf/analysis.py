r"""Per-block NFA of a pretrained transformer on real text, against a null model.

For every block :math:`b` of the model (:func:`nfm.hf.blocks.find_blocks`) and every *role*

* ``attention`` -- the attention input :math:`h_b`, read by the query, key and value
  projections: its AGOP along those three paths (:mod:`nfm.hf.taps`) and the NFM of the stacked
  weights :math:`W_q^T W_q + W_k^T W_k + W_v^T W_v`;
* ``mlp`` -- the MLP input, read by ``intermediate.dense`` (BERT), ``gate_proj`` and ``up_proj``
  (Llama) or ``c_fc`` (GPT-2), likewise;
* with ``per_projection``, each of those projections alone (its own input, its own
  :math:`W^T W`);
* with ``per_head``, each head of each attention projection (the AGOP along that head's rows
  :math:`W_h` of the projection and :math:`W_h^T W_h`; key and value have
  ``num_key_value_heads`` heads under grouped-query attention),

:func:`analyze_blocks` computes the AGOP on token windows (averaged over windows and positions),
the NFM of the pretrained weights, their NFA correlations (:func:`nfm.ansatz.nfa_report`), the
AGOP spectrum, and the same for null copies of the model (:mod:`nfm.ansatz.null`: every weight
matrix shuffled, or the model re-initialised) on the same text with the same output probes. The
output is chosen by a :class:`~nfm.hf.outputs.SelectedOutput` (e.g. the last position's logits)
and, when it has many entries, sketched by :class:`nfm.features.outputs.GaussianSketch`: ``k``
probes :math:`G_i` of i.i.d. :math:`N(0, 1/k)` entries per window, an unbiased estimate of the
AGOP since :math:`E[G^T G] = I`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from nfm.ansatz import nfa_report
from nfm.ansatz.correlation import correlation_column, fit_alpha_from_eigh
from nfm.ansatz.null import NULL_KINDS, null_model
from nfm.exceptions import NFMInputError
from nfm.features.outputs import GaussianSketch
from nfm.hf.blocks import BlockLayers, find_blocks
from nfm.hf.outputs import SelectedOutput
from nfm.hf.taps import TappedModel
from nfm.linalg import psd_eigh
from nfm.models.state import ModelState

__all__ = ["BlockAnalysis", "analyze_blocks", "null_weight_layers"]

logger = logging.getLogger(__name__)

ALPHAS = (0.5, 1.0)
KINDS = ("pearson", "cosine")
DIAGONALS = (False, True)
#: The correlation the figures and the printed summary use.
HEADLINE = correlation_column("pearson", 0.5, False)
#: Columns of the NFA table that get a null counterpart ``null_<kind>_<column>``.
NULL_COLUMNS = (
    HEADLINE,
    correlation_column("pearson", 0.5, True),
    correlation_column("pearson", 1.0, False),
)
#: The correlation whose best power is fitted (block-level rows, with ``fit_alpha``).
FIT_KIND, FIT_OFFDIAG = "pearson", True
ALPHA_BOUNDS = (0.05, 2.0)

_PART_NAMES = {
    "query": "q",
    "key": "k",
    "value": "v",
    "q_proj": "q",
    "k_proj": "k",
    "v_proj": "v",
    "gate_proj": "gate",
    "up_proj": "up",
    "dense": "dense",
    "c_attn": "qkv",
    "c_fc": "fc",
}


def null_weight_layers(name: str, module: nn.Module) -> bool:
    """The layers whose weights the shuffled null permutes: every weight matrix.

    ``nn.Linear`` (projections, LM heads), Hugging Face ``Conv1D`` (GPT-2) and ``nn.Embedding``
    (token and position embeddings); normalisation gains and biases are kept. A selection
    predicate for :func:`nfm.ansatz.null.shuffled_copy`.
    """
    return isinstance(module, (nn.Linear, nn.Embedding)) or type(module).__name__ == "Conv1D"


@dataclass
class BlockAnalysis:
    """What :func:`analyze_blocks` found.

    Attributes
    ----------
    rows : list of dict
        One per (block, role): ``block``, ``role`` (``attention``, ``mlp``, ``q``, ``k``, ...,
        ``q[head=3]``), ``layer`` (the model's own layer name; for a shared input, the block
        and the projections reading it), ``layer_key`` (the key of :attr:`spectra`, ``nfm``
        and ``agop``), ``d``, the NFA columns of
        :func:`nfm.ansatz.nfa_report` (correlations, ``nfm_trace``, ``agop_trace``),
        ``agop_top_share`` (largest eigenvalue over the trace), ``agop_effective_rank``
        (:math:`(\\sum\\lambda)^2 / \\sum\\lambda^2`), with ``fit_alpha`` on the attention and
        MLP rows ``best_alpha_offdiag`` and ``best_corr_offdiag``, and for each null kind
        ``null_<kind>_<column>`` for :data:`NULL_COLUMNS`, ``null_<kind>_agop_trace``,
        ``null_<kind>_best_corr_offdiag`` and ``lift_<kind>`` (:data:`HEADLINE` correlation
        minus its null).
    spectra : dict
        ``{"pretrained" | null kind: {layer_key: eigenvalues (descending, numpy)}}``.
    nfm, agop : dict
        ``{layer_key: matrix}``: the pretrained NFMs (float64) and AGOPs (in the compute dtype,
        the precision their rounding is judged at) of the attention and MLP rows, on the CPU.
    n_outputs, probes : int
        Entries of the selected output; probes per window (``None``: exact AGOP).
    seconds : dict
        Wall time of each pass (``pretrained`` and each null kind).
    """

    rows: list[dict[str, Any]]
    spectra: dict[str, dict[str, np.ndarray]]
    nfm: dict[str, torch.Tensor]
    agop: dict[str, torch.Tensor]
    n_outputs: int
    probes: int | None
    seconds: dict[str, float] = field(default_factory=dict)
    columns: list[str] = field(default_factory=list)


def _layer_plan(
    blocks: Sequence[BlockLayers], per_projection: bool, per_head: bool
) -> tuple[dict[str, list[str]], list[tuple[int, str, str, str]], dict[str, Any]]:
    """Tap groups, the (block, role, layer key, display name) list, heads per projection."""
    groups: dict[str, list[str]] = {}
    plan: list[tuple[int, str, str, str]] = []
    heads: dict[str, Any] = {}
    for block in blocks:
        for role, names in (("attention", block.attention), ("mlp", block.mlp)):
            key = f"block{block.index}_{role}"
            groups[key] = [f"model.{n}" for n in names]  # names inside the SelectedOutput
            parts = ", ".join(n.rsplit(".", 1)[1] for n in names)
            plan.append((block.index, role, f"taps.{key}", f"{block.prefix} [input of {parts}]"))
            if (per_projection and len(names) > 1) or (per_head and role == "attention"):
                for name in names:
                    last = name.rsplit(".", 1)[1]
                    plan.append(
                        (block.index, _PART_NAMES.get(last, last), f"net.model.{name}", name)
                    )
        if per_head:
            for name, n_heads in block.heads.items():
                heads[f"net.model.{name}"] = n_heads
    return groups, plan, heads


def _spectrum(matrix: Any) -> np.ndarray:
    m = torch.as_tensor(matrix).detach().to("cpu", torch.float64)
    values = torch.linalg.eigvalsh((m + m.T) / 2).flip(0).clamp_min(0.0)
    return values.numpy()


def _one_pass(
    model: nn.Module,
    tokens: torch.Tensor,
    *,
    output: dict[str, Any],
    groups: dict[str, list[str]],
    layers: list[str],
    heads: dict[str, Any],
    probes: GaussianSketch | None,
    chunk_size: int,
    verbose: bool,
) -> Any:
    net = SelectedOutput(model, **output)
    tapped = TappedModel(net, groups)
    kwargs: dict[str, Any] = {}
    if heads:
        kwargs["heads"] = heads
    with tapped:
        return nfa_report(
            tapped,
            tokens,
            layers=layers,
            alphas=ALPHAS,
            kinds=KINDS,
            exclude_diagonal=DIAGONALS,
            fit_best_alpha=False,  # fitted below for the block-level rows only
            outputs=probes,
            chunk_size=chunk_size,
            verbose=verbose,
            **kwargs,
        )


def _n_outputs(model: nn.Module, tokens: torch.Tensor, output: dict[str, Any]) -> int:
    with ModelState(model, mode="eval"), torch.no_grad():
        out = SelectedOutput(model, **output)(tokens[:1])
    return int(out[0].numel())


def analyze_blocks(
    model: nn.Module,
    tokens: torch.Tensor,
    *,
    field: str | None = "logits",
    positions: str | int | torch.Tensor = "last",
    pool: str | None = None,
    call_kwargs: dict[str, Any] | None = None,
    probes: int | None = 32,
    blocks: Sequence[int] | None = None,
    per_projection: bool = True,
    per_head: bool = False,
    null: Sequence[str] = ("shuffled",),
    fit_alpha: bool = True,
    seed: int = 0,
    chunk_size: int = 8,
    verbose: bool = False,
) -> BlockAnalysis:
    r"""AGOP, NFM and NFA correlation of every block's attention and MLP inputs, with nulls.

    Parameters
    ----------
    model : nn.Module
        A Hugging Face BERT-, Llama- or GPT-2-family model (it is not modified: its modes,
        ``requires_grad`` flags and hooks are as before, also on error).
    tokens : torch.Tensor
        ``(n, T)`` int64 token ids, every position a real token
        (:func:`nfm.hf.corpus.token_windows`).
    field, positions, pool, call_kwargs
        The output :math:`f` (see :class:`~nfm.hf.outputs.SelectedOutput`).
    probes : int or None
        Gaussian probes per window (:class:`~nfm.features.outputs.GaussianSketch`, an unbiased
        sketch of the AGOP); None: the exact AGOP over all outputs.
    blocks : sequence of int, optional
        Block indices to analyse (default all).
    per_projection : bool
        Also each projection of a shared input on its own.
    per_head : bool
        Each attention projection per head instead of whole (``heads=`` of
        :func:`nfm.ansatz.nfa_report`; GPT-2's fused ``c_attn`` per part and head).
    null : sequence of {"shuffled", "reinit"}
        Null models to compare with (:func:`nfm.ansatz.null.null_model`; ``"shuffled"``
        permutes the layers of :func:`null_weight_layers`); empty for none.
    fit_alpha : bool
        Fit the best power of the off-diagonal Pearson correlation for the attention and MLP
        rows (and their nulls); about twenty matrix powers per row.
    seed : int
        Seeds the probes and the null models.
    chunk_size : int
        Windows per forward pass.
    verbose : bool
        Progress bars.

    Returns
    -------
    BlockAnalysis
    """
    if not isinstance(model, nn.Module):
        raise NFMInputError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.is_floating_point():
        raise NFMInputError(
            "tokens must be an integer tensor of shape (n_windows, length); got "
            + (
                f"{tokens.dtype} of shape {tuple(tokens.shape)}"
                if isinstance(tokens, torch.Tensor)
                else type(tokens).__name__
            )
        )
    null = tuple(null)
    bad = [k for k in null if k not in NULL_KINDS]
    if bad:
        raise NFMInputError(f"null must hold kinds from {NULL_KINDS}; got {bad}")
    found = find_blocks(model)
    if blocks is not None:
        wanted = [int(b) for b in blocks]
        available = [b.index for b in found]
        missing = [b for b in wanted if b not in available]
        if missing or not wanted:
            raise NFMInputError(
                f"blocks {missing or wanted} not in the model; it has blocks {available}"
            )
        found = [b for b in found if b.index in wanted]
    groups, plan, heads = _layer_plan(found, per_projection, per_head)
    output = {"field": field, "positions": positions, "pool": pool, "call_kwargs": call_kwargs}
    n_outputs = _n_outputs(model, tokens, output)
    sketch = None if probes is None else GaussianSketch(probes, seed)
    layers = [layer for _, _, layer, _ in plan]
    seconds: dict[str, float] = {}
    reports: dict[str, Any] = {}
    for kind in ("pretrained", *null):
        started = time.perf_counter()
        subject = (
            model
            if kind == "pretrained"
            else null_model(model, kind, layers=null_weight_layers, seed=seed)
        )
        logger.info("AGOP pass on the %s model (%d layers)", kind, len(layers))
        reports[kind] = _one_pass(
            subject,
            tokens,
            output=output,
            groups=groups,
            layers=layers,
            heads=heads,
            probes=sketch,
            chunk_size=chunk_size,
            verbose=verbose,
        )
        seconds[kind] = time.perf_counter() - started
        del subject
    return _collect(reports, plan, null, n_outputs, probes, seconds, fit_alpha)


def _collect(
    reports: dict[str, Any],
    plan: list[tuple[int, str, str, str]],
    null: tuple[str, ...],
    n_outputs: int,
    probes: int | None,
    seconds: dict[str, float],
    fit_alpha: bool,
) -> BlockAnalysis:
    main = reports["pretrained"]
    by_layer = {row["layer"]: row for row in main.rows}
    null_rows = {kind: {r["layer"]: r for r in reports[kind].rows} for kind in null}
    roles = {layer: (block, role) for block, role, layer, _ in plan}
    display = {layer: shown for _, _, layer, shown in plan}
    spectra: dict[str, dict[str, np.ndarray]] = {
        kind: {name: _spectrum(m) for name, m in report.agop.items()}
        for kind, report in reports.items()
    }
    order = {layer: i for i, (_, _, layer, _) in enumerate(plan)}

    def plan_position(name: str) -> tuple[int, int, str]:
        block, _ = _role_of(name, roles)
        base = name.partition("[")[0]
        position = order.get(base, order.get(base.rpartition(".")[0], len(order)))
        return (block, position, name)

    rows = []
    for name in sorted(by_layer, key=plan_position):
        row = by_layer[name]
        block, role = _role_of(name, roles)
        values = spectra["pretrained"][name]
        total = float(values.sum())
        shown = name.removeprefix("net.model.")
        if name in display:
            shown = display[name]
        out: dict[str, Any] = {"block": block, "role": role, **row, "layer": shown}
        out["layer_key"] = name
        out["agop_top_share"] = float(values[0] / total) if total > 0 else float("nan")
        out["agop_effective_rank"] = (
            float(total**2 / (values**2).sum()) if total > 0 else float("nan")
        )
        fitted = fit_alpha and role in ("attention", "mlp")
        if fitted:
            out["best_alpha_offdiag"], out["best_corr_offdiag"] = _best_alpha(main, name)
        for kind in null:
            other = null_rows[kind][name]
            for column in NULL_COLUMNS:
                out[f"null_{kind}_{column}"] = other[column]
            out[f"null_{kind}_agop_trace"] = other["agop_trace"]
            out[f"lift_{kind}"] = row[HEADLINE] - other[HEADLINE]
            if fitted:
                out[f"null_{kind}_best_corr_offdiag"] = _best_alpha(reports[kind], name)[1]
        rows.append(out)
    columns = ["block", "role", *main.columns, "layer_key"]
    columns += ["agop_top_share", "agop_effective_rank"]
    if fit_alpha:
        columns += ["best_alpha_offdiag", "best_corr_offdiag"]
    for kind in null:
        columns += [f"null_{kind}_{c}" for c in NULL_COLUMNS]
        columns += [f"null_{kind}_agop_trace", f"lift_{kind}"]
        if fit_alpha:
            columns += [f"null_{kind}_best_corr_offdiag"]
    block_level = [layer for _, role, layer, _ in plan if role in ("attention", "mlp")]
    return BlockAnalysis(
        rows=rows,
        spectra=spectra,
        nfm={n: main.nfm[n].detach().to("cpu", torch.float64) for n in block_level},
        agop={n: torch.as_tensor(main.agop[n]).detach().to("cpu") for n in block_level},
        n_outputs=n_outputs,
        probes=probes,
        seconds=seconds,
        columns=columns,
    )


def _best_alpha(report: Any, name: str) -> tuple[float, float]:
    """Best power (and its correlation) of the off-diagonal Pearson NFA of one layer."""
    eig = psd_eigh(
        torch.as_tensor(report.agop[name]).detach().to("cpu"),
        name=f"the AGOP of layer {name!r}",
        dtype=torch.float64,
    )
    nfm64 = report.nfm[name].detach().to("cpu", torch.float64)
    return fit_alpha_from_eigh(
        nfm64, eig, kind=FIT_KIND, exclude_diagonal=FIT_OFFDIAG, bounds=ALPHA_BOUNDS, grid_size=9
    )


def _role_of(name: str, roles: dict[str, tuple[int, str]]) -> tuple[int, str]:
    """Block and role of a result key: a planned layer, one head of a projection
    (``layer[head=h]``: role ``q[head=h]``) or of a fused part (``layer.q[head=h]``: role
    ``qkv.q[head=h]``)."""
    if name in roles:
        return roles[name]
    base, bracket, head = name.partition("[")
    if base in roles:
        block, role = roles[base]
    else:
        parent, _, part = base.rpartition(".")
        block, role = roles.get(parent, (-1, parent))
        role = f"{role}.{part}"
    return block, role + bracket + head
