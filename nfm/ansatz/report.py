r"""NFA report of a model on data, per layer; layers where it holds by construction are flagged.

At a linear layer whose output *is* the model output, :math:`J_l = W_l` for every sample, so
:math:`\mathrm{AGOP}_l = W_l^T W_l` exactly and the correlation at :math:`\alpha = 1` is 1 by
construction: :func:`output_layer_names` finds these layers and :func:`nfa_report` flags them
(``by_construction=True``) so they are not counted as evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nfm._utils.arrays import ArrayKind, restore_kind, to_tensor
from nfm.ansatz.correlation import check_fit_settings, correlation_column, fit_alpha_from_eigh
from nfm.ansatz.table import RowTable
from nfm.exceptions import LayerSelectionError, NFMInputError
from nfm.features.agop import run_agop_pass
from nfm.features.jacobians import is_same_tensor
from nfm.features.nfm import compute_nfm
from nfm.features.outputs import OutputSpec, check_sketch_not_centered
from nfm.linalg import CorrelationKind, matrix_correlation, power_from_eigh, psd_eigh
from nfm.models.adapters import adapter_for
from nfm.models.selection import HeadsSpec, LayerSpec, select_layers
from nfm.models.state import ModelState

__all__ = [
    "AGOP_OPTIONS",
    "LayerAGOPs",
    "NFAReport",
    "layer_agops",
    "nfa_report",
    "output_layer_names",
]


def output_layer_names(
    model: nn.Module,
    example_input: Any,
    layers: LayerSpec | Sequence[LayerSpec] | None = None,
) -> set[str]:
    """Selected linear layers whose output is the model output (AGOP = W^T W by construction).

    Runs one forward pass on ``example_input`` in eval mode (no gradients; the model's modes
    are restored and the hooks removed afterwards) and returns the names of the selected layers
    with a ``weight`` whose output tensor is the model's output tensor (the same tensor or a
    contiguous view of the same memory, e.g. after ``squeeze``).
    """
    selected = select_layers(model, layers)
    x = to_tensor(example_input, "example_input")
    device = next((p.device for p in model.parameters()), x.device)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    if x.is_floating_point() and dtype is not None:
        x = x.to(device=device, dtype=dtype)
    else:
        x = x.to(device=device)
    outputs: dict[str, Any] = {}
    handles = []

    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            outputs[name] = output

        return hook

    try:
        with ModelState(model), torch.no_grad():
            for name, module in selected.items():
                handles.append(module.register_forward_hook(make_hook(name)))
            out = model(x)
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(out, torch.Tensor):
        return set()
    return {
        name
        for name, o in outputs.items()
        if is_same_tensor(o, out) and _has_weight_matrix(selected[name], name)
    }


def _has_weight_matrix(module: nn.Module, name: str) -> bool:
    """Whether the layer's adapter reads its weight as an (out, in) matrix."""
    try:
        adapter_for(module).weight_matrix(module, name)
    except LayerSelectionError:
        return False
    return True


AGOP_OPTIONS = (
    "include_input",
    "outputs",
    "centered",
    "dtype",
    "chunk_size",
    "batch_size",
    "output_chunk_size",
    "vectorize",
    "check_independence",
    "verbose",
    "process_group",
    "heads",
)
"""The keyword arguments of :func:`nfm.features.compute_agop` that :func:`layer_agops` takes."""


@dataclass
class LayerAGOPs:
    r"""The AGOPs of one pass, with what the NFA code needs to judge them.

    Attributes
    ----------
    agops : dict[str, torch.Tensor]
        The (centred) AGOP of each layer, in the compute dtype, on the model's device.
    rounding_scales : dict[str, float]
        For a centred AGOP :math:`S/m - \bar J^T \bar J`, the Frobenius norm of the
        uncentred :math:`S/m`, which its rounding errors are relative to (see
        :func:`nfm.linalg.psd_eigh`); empty for uncentred AGOPs.
    output_layers : set of str
        Layers whose output is the model output (AGOP = NFM by construction).
    kind : {"numpy", "torch"}
        What the data was, for returning arrays of the same kind.
    """

    agops: dict[str, torch.Tensor]
    rounding_scales: dict[str, float]
    output_layers: set[str]
    kind: ArrayKind


def layer_agops(
    model: nn.Module,
    data: Any,
    *,
    layers: LayerSpec | Sequence[LayerSpec] | None,
    outputs: OutputSpec = None,
    centered: bool = False,
    caller: str = "nfa_report",
    heads: HeadsSpec = None,
    **agop_kwargs: Any,
) -> LayerAGOPs:
    """One AGOP pass over ``data`` for the selected layers (no input AGOP).

    ``agop_kwargs`` are those of :func:`nfm.features.compute_agop` (``dtype``, ``chunk_size``
    or its alias ``batch_size``, ``output_chunk_size``, ``vectorize``, ``check_independence``,
    ``verbose``, ``process_group``); any other name is an error naming ``caller``.
    """
    agop_kwargs = dict(agop_kwargs)
    agop_kwargs.pop("include_input", None)
    chunk_size = agop_kwargs.pop("chunk_size", 256)
    batch_size = agop_kwargs.pop("batch_size", None)
    if batch_size is not None:
        chunk_size = batch_size
    settings = {
        "dtype": agop_kwargs.pop("dtype", None),
        "output_chunk_size": agop_kwargs.pop("output_chunk_size", None),
        "vectorize": agop_kwargs.pop("vectorize", True),
        "check_independence": agop_kwargs.pop("check_independence", True),
        "verbose": agop_kwargs.pop("verbose", False),
        "process_group": agop_kwargs.pop("process_group", None),  # see nfm.distributed
    }
    if agop_kwargs:
        raise NFMInputError(f"unknown keyword argument(s) for {caller}: {sorted(agop_kwargs)}")
    check_sketch_not_centered(outputs, centered)
    acc, kind, run = run_agop_pass(
        model,
        data,
        layers=layers,
        include_input=False,
        outputs=outputs,
        chunk_size=chunk_size,
        heads=heads,
        **settings,
    )
    agops = acc.result(centered=centered, dtype=run.dtype)
    scales: dict[str, float] = {}
    if centered:
        uncentered = acc.result(centered=False)
        scales = {key: float(torch.linalg.matrix_norm(value)) for key, value in uncentered.items()}
    return LayerAGOPs(agops, scales, set(run.output_layers), kind)


@dataclass
class NFAReport(RowTable):
    """Per-layer NFA correlations: ``rows`` (one dict per layer), the NFMs and the AGOPs.

    Each row has ``layer``, ``d``, ``by_construction`` (the layer's output is the model output,
    so AGOP = NFM exactly and the correlation is not evidence), one column per
    (kind, alpha, exclude_diagonal) named by :func:`correlation_column`, ``best_alpha`` and
    ``best_corr`` (fitted with the first kind and diagonal setting), ``nfm_trace`` and
    ``agop_trace``. A report made with ``null=`` also has ``null`` (the null's kind),
    ``null_correlation`` (the ``headline_column`` statistic for the null model) and ``lift``
    (the layer's value minus its null), and keeps the null model's whole report in ``null``.
    """

    rows: list[dict[str, Any]]
    nfm: dict[str, torch.Tensor]
    agop: dict[str, Any]
    columns: list[str] = field(default_factory=list)
    headline_column: str = ""
    null: NFAReport | None = None


def nfa_report(
    model: nn.Module,
    data: Any,
    *,
    layers: LayerSpec | Sequence[LayerSpec] | None = None,
    alphas: Sequence[float] = (0.5, 1.0),
    kinds: Sequence[CorrelationKind] = ("pearson", "cosine"),
    exclude_diagonal: Sequence[bool] | bool = (False, True),
    fit_best_alpha: bool = True,
    alpha_bounds: tuple[float, float] = (0.05, 2.0),
    outputs: OutputSpec = None,
    centered: bool = False,
    heads: HeadsSpec = None,
    null: str | None = None,
    null_seed: Any = 0,
    **agop_kwargs: Any,
) -> NFAReport:
    r"""NFA correlation of every selected layer, as a table.

    Computes the NFMs (:func:`nfm.features.compute_nfm`) and the AGOPs (one pass, as
    :func:`nfm.features.compute_agop`; ``agop_kwargs`` go there) and correlates them for every
    combination of ``alphas``, ``kinds`` and ``exclude_diagonal``
    (:math:`\rho(\mathrm{NFM}_l, \mathrm{AGOP}_l^\alpha)`, :func:`nfa_correlation`; each AGOP
    is eigendecomposed once, in float64). Layers whose output is the model output are flagged
    ``by_construction`` (detected during the AGOP pass). With ``process_group=`` (see
    :func:`nfm.features.compute_agop`) ``data`` is this rank's shard and every rank of the
    group gets the report of the whole data set.

    With ``null="shuffled"`` or ``"reinit"`` the same report (same layers, data, alphas,
    kinds, centring, options) is computed for a null copy of the model
    (:func:`nfm.ansatz.null.null_model`: each selected layer's weight entries permuted, or the
    whole model re-initialised; seeded by ``null_seed``, the model itself untouched), and each
    row gets ``null``, ``null_correlation`` (the first correlation column, ``headline_column``,
    for the null model) and ``lift`` = value - null. ``data`` is then read twice: pass a
    tensor, an array or a re-iterable loader.

    Returns
    -------
    NFAReport
    """
    if null is not None:
        from nfm.ansatz.null import NULL_KINDS

        if null not in NULL_KINDS:
            raise NFMInputError(f"null must be one of {list(NULL_KINDS)} or None; got {null!r}")
    if isinstance(exclude_diagonal, bool):
        exclude_diagonal = (exclude_diagonal,)
    alphas = tuple(float(a) for a in alphas)
    kinds = tuple(kinds)
    diags = tuple(bool(d) for d in exclude_diagonal)
    if not alphas or not kinds or not diags:
        raise NFMInputError("alphas, kinds and exclude_diagonal must each be non-empty")
    for kind in kinds:
        if kind not in ("pearson", "cosine"):
            raise NFMInputError(f"kinds must hold 'pearson' or 'cosine'; got {kind!r}")
    if fit_best_alpha:
        check_fit_settings(alpha_bounds, 25)
    nfms = compute_nfm(model, layers, heads=heads)
    pass_result = layer_agops(
        model, data, layers=layers, outputs=outputs, centered=centered, heads=heads, **agop_kwargs
    )
    agops = pass_result.agops
    identity_holds = outputs is None and not centered  # AGOP = NFM at an output layer
    columns = ["layer", "d", "by_construction"]
    columns += [correlation_column(k, a, d) for k in kinds for a in alphas for d in diags]
    if fit_best_alpha:
        columns += ["best_alpha", "best_corr"]
    columns += ["nfm_trace", "agop_trace"]
    rows: list[dict[str, Any]] = []
    for name, nfm_matrix in nfms.items():
        agop_matrix = agops[name]
        nfm64 = nfm_matrix.detach().to("cpu", torch.float64)
        # one eigendecomposition per layer, in float64, judged at the AGOP's own precision
        eig = psd_eigh(
            agop_matrix.detach().to("cpu"),
            name=f"the AGOP of layer {name!r}",
            dtype=torch.float64,
            scale=pass_result.rounding_scales.get(name),
        )
        row: dict[str, Any] = {
            "layer": name,
            "d": int(nfm_matrix.shape[0]),
            "by_construction": identity_holds and name in pass_result.output_layers,
        }
        powers = {a: power_from_eigh(eig, a) for a in alphas}
        for k in kinds:
            for a in alphas:
                for d in diags:
                    row[correlation_column(k, a, d)] = matrix_correlation(
                        nfm64, powers[a], kind=k, exclude_diagonal=d
                    )
        if fit_best_alpha:
            row["best_alpha"], row["best_corr"] = fit_alpha_from_eigh(
                nfm64,
                eig,
                kind=kinds[0],
                exclude_diagonal=diags[0],
                bounds=alpha_bounds,
            )
        row["nfm_trace"] = float(torch.trace(nfm64))
        row["agop_trace"] = float(torch.trace(agop_matrix.double()))
        rows.append(row)
    agop_out = {name: restore_kind(value, pass_result.kind) for name, value in agops.items()}
    headline = correlation_column(kinds[0], alphas[0], diags[0])
    null_report = None
    if null is not None:
        from nfm.ansatz.null import null_model

        names = list(select_layers(model, layers))  # names, so that they select in the copy
        null_report = nfa_report(
            null_model(model, null, layers=names, seed=null_seed),
            data,
            layers=names,
            alphas=alphas,
            kinds=kinds,
            exclude_diagonal=diags,
            fit_best_alpha=fit_best_alpha,
            alpha_bounds=alpha_bounds,
            outputs=outputs,
            centered=centered,
            heads=heads,
            **agop_kwargs,
        )
        null_values = {r["layer"]: r[headline] for r in null_report.rows}
        for row in rows:
            row["null"] = null
            row["null_correlation"] = null_values.get(row["layer"], float("nan"))
            row["lift"] = row[headline] - row["null_correlation"]
        columns += ["null", "null_correlation", "lift"]
    return NFAReport(
        rows=rows,
        nfm=nfms,
        agop=agop_out,
        columns=columns,
        headline_column=headline,
        null=null_report,
    )
