"""Tests of nfm.ansatz.null and of the null option of nfa_report: shuffled and re-initialised
copies leave the model and the global random state untouched, are deterministic given the seed,
and the report's null is the same statistic computed for the null copy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mixed_mode import mixed_mode_model, modes_and_flags
from torch import nn

from nfm.ansatz import nfa_report, null_model, reinitialized_copy, shuffled_copy
from nfm.exceptions import LayerSelectionError, NFMInputError


def mlp(seed=0):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 3)
        )


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, state, flags):
    assert modes_and_flags(model) == flags
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------- shuffled copies
def test_shuffled_copy_permutes_the_selected_weights_only():
    model = mixed_mode_model()
    state, flags = snapshot(model), modes_and_flags(model)
    rng_before = torch.random.get_rng_state()
    copy = shuffled_copy(model, ["0", "4"], seed=5)
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    assert_unchanged(model, state, flags)
    assert modes_and_flags(copy) == flags  # the copy is in the model's modes too
    copied = copy.state_dict()
    for key, value in state.items():
        if key in ("0.weight", "4.weight"):
            assert not torch.equal(copied[key], value)
            assert torch.equal(
                copied[key].reshape(-1).sort().values, value.reshape(-1).sort().values
            )
        else:
            assert torch.equal(copied[key], value), key


def test_shuffled_copy_is_deterministic_given_the_seed():
    model = mlp()
    a = shuffled_copy(model, seed=3)
    b = shuffled_copy(model, seed=3)
    c = shuffled_copy(model, seed=4)
    assert same_weights(a, b)
    assert not same_weights(a, c)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert same_weights(shuffled_copy(model, seed=g1), shuffled_copy(model, seed=g2))
    n1, n2 = np.random.default_rng(2), np.random.default_rng(2)
    assert same_weights(shuffled_copy(model, seed=n1), shuffled_copy(model, seed=n2))


def test_a_shared_weight_is_shuffled_once_and_stays_shared():
    model = mlp()
    tied = nn.Sequential(model[0], nn.Tanh(), nn.Linear(7, 5, bias=False))
    tied[2].weight = nn.Parameter(model[0].weight.detach().T.clone())
    tied.add_module("again", nn.Linear(5, 7))
    tied.again.weight = tied[0].weight  # the same Parameter twice
    copy = shuffled_copy(tied, ["0", "again"], seed=1)
    assert copy[0].weight is copy.again.weight
    before = tied[0].weight.detach().reshape(-1).sort().values
    assert torch.equal(copy[0].weight.detach().reshape(-1).sort().values, before)


@settings(max_examples=25, deadline=None)
@given(
    out_features=st.integers(1, 6),
    in_features=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
)
def test_shuffling_keeps_the_entries_and_the_nfm_trace(out_features, in_features, seed):
    with torch.random.fork_rng():
        torch.manual_seed(seed % 1000)
        layer = nn.Sequential(nn.Linear(in_features, out_features))
    copy = shuffled_copy(layer, seed=seed)
    w, ws = layer[0].weight.detach(), copy[0].weight.detach()
    assert torch.equal(w.reshape(-1).sort().values, ws.reshape(-1).sort().values)
    assert torch.trace(ws.T @ ws).item() == pytest.approx(torch.trace(w.T @ w).item(), rel=1e-6)
    assert torch.equal(copy[0].bias, layer[0].bias)


def test_shuffled_copy_errors():
    model = mlp()
    with pytest.raises(LayerSelectionError, match="no weight parameter"):
        shuffled_copy(model, "1")
    with pytest.raises(NFMInputError, match="seed"):
        shuffled_copy(model, seed=-1)
    with pytest.raises(NFMInputError, match="seed"):
        shuffled_copy(model, seed=1.5)
    with pytest.raises(NFMInputError, match="null must be"):
        null_model(model, "permuted")


def test_attention_projections_are_shuffled_with_their_out_proj():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True, dropout=0.0)
    model = nn.Sequential(layer)
    copy = shuffled_copy(model, "0.self_attn.out_proj", seed=2)
    before, after = layer.self_attn, copy[0].self_attn
    for block in range(3):  # query, key and value rows: each keeps its own entries
        rows = slice(8 * block, 8 * (block + 1))
        a = before.in_proj_weight[rows].detach().reshape(-1).sort().values
        b = after.in_proj_weight[rows].detach().reshape(-1).sort().values
        assert torch.equal(a, b)
        assert not torch.equal(before.in_proj_weight[rows], after.in_proj_weight[rows])
    assert not torch.equal(before.out_proj.weight, after.out_proj.weight)
    assert torch.equal(before.in_proj_bias, after.in_proj_bias)
    assert torch.equal(layer.linear1.weight, copy[0].linear1.weight)  # not selected


# --------------------------------------------------------------------------- re-initialised copies
def test_reinitialized_copy_does_not_depend_on_the_trained_weights():
    model = mixed_mode_model()
    state, flags = snapshot(model), modes_and_flags(model)
    with torch.no_grad():  # "train": make the weights far from any initialisation
        for p in model.parameters():
            p.mul_(7.0).add_(0.3)
    state = snapshot(model)
    rng_before = torch.random.get_rng_state()
    a = reinitialized_copy(model, seed=11)
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    assert_unchanged(model, state, flags)
    b = reinitialized_copy(mixed_mode_model(), seed=11)
    assert same_weights(a, b)
    assert not same_weights(a, reinitialized_copy(model, seed=12))
    for name in ("0", "4", "7"):
        layer = getattr(a, name)
        bound = 1 / math.sqrt(layer.in_features)  # nn.Linear's uniform initialisation
        assert float(layer.weight.abs().max()) <= bound
        assert not torch.equal(layer.weight, getattr(model, name).weight)
    # batch norm statistics are reset as well
    assert torch.equal(a[1].running_mean, torch.zeros(8))


def test_reinit_covers_attention_and_warns_about_bare_parameters():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(4, 2)
            self.scale = nn.Parameter(torch.ones(4))

        def forward(self, x):
            return self.attn(x, x, x)[0] * self.scale

    block = Block()
    with torch.no_grad():
        block.attn.in_proj_weight.fill_(5.0)
        block.scale.fill_(3.0)
    with pytest.warns(UserWarning, match="scale"):
        copy = reinitialized_copy(block, seed=0)
    assert float(copy.attn.in_proj_weight.abs().max()) < 5.0
    assert torch.equal(copy.scale, block.scale)


def test_reinit_of_a_hugging_face_model_uses_its_initializer():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        initializer_range=0.02,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = transformers.BertModel(config)
    with torch.no_grad():
        model.encoder.layer[0].intermediate.dense.weight.mul_(50.0)
    rng_before = torch.random.get_rng_state()
    copy = reinitialized_copy(model, seed=1)
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    weight = copy.encoder.layer[0].intermediate.dense.weight.detach()
    assert 0.015 < float(weight.std()) < 0.025  # normal(0, initializer_range)
    assert float(model.encoder.layer[0].intermediate.dense.weight.std()) > 0.5
    again = reinitialized_copy(model, seed=1)
    assert same_weights(copy, again)


# --------------------------------------------------------------------------- nfa_report(null=...)
def test_report_null_is_the_same_statistic_for_the_null_copy():
    model = mlp()
    x = torch.randn(30, 5, generator=torch.Generator().manual_seed(1))
    state = snapshot(model)
    report = nfa_report(model, x, null="shuffled", null_seed=4)
    assert same_weights(model, mlp()) and all(
        torch.equal(v, state[k]) for k, v in model.state_dict().items()
    )
    assert report.headline_column == "pearson_a0.5"
    names = [r["layer"] for r in report.rows]
    direct = nfa_report(shuffled_copy(model, names, seed=4), x)
    assert report.null is not None
    for row, null_row, direct_row in zip(report.rows, report.null.rows, direct.rows, strict=True):
        assert row["null"] == "shuffled"
        assert row["null_correlation"] == direct_row["pearson_a0.5"] == null_row["pearson_a0.5"]
        assert row["lift"] == row["pearson_a0.5"] - row["null_correlation"]
        # the output layer is flagged in the report and in its null
        assert row["by_construction"] == null_row["by_construction"] == (row["layer"] == "4")
    assert {"null", "null_correlation", "lift"} <= set(report.columns)
    again = nfa_report(model, x, null="shuffled", null_seed=4)
    assert [r["null_correlation"] for r in again.rows] == [
        r["null_correlation"] for r in report.rows
    ]


def test_report_reinit_null_and_options_carry_over():
    model = mlp()
    x = torch.randn(30, 5, generator=torch.Generator().manual_seed(2))
    report = nfa_report(
        model,
        x,
        layers=["0", "2"],
        alphas=(1.0,),
        kinds=("cosine",),
        exclude_diagonal=True,
        fit_best_alpha=False,
        centered=True,
        null="reinit",
        null_seed=7,
    )
    assert report.headline_column == "cosine_a1_offdiag"
    direct = nfa_report(
        reinitialized_copy(model, seed=7),
        x,
        layers=["0", "2"],
        alphas=(1.0,),
        kinds=("cosine",),
        exclude_diagonal=True,
        fit_best_alpha=False,
        centered=True,
    )
    for row, direct_row in zip(report.rows, direct.rows, strict=True):
        assert row["null_correlation"] == direct_row["cosine_a1_offdiag"]
        assert row["by_construction"] is False  # centred: no identity
    with pytest.raises(NFMInputError, match="null must be"):
        nfa_report(model, x, null="random")


def test_report_with_null_leaves_a_mixed_mode_model_unchanged():
    model = mixed_mode_model()
    state, flags = snapshot(model), modes_and_flags(model)
    x = torch.randn(12, 6, generator=torch.Generator().manual_seed(3))
    with pytest.warns(UserWarning, match="training mode"):
        report = nfa_report(model, x, null="shuffled")
    assert_unchanged(model, state, flags)
    assert all(math.isfinite(r["null_correlation"]) for r in report.rows)


# --------------------------------------------------------------------------- figures and report
@pytest.fixture
def tracked():
    """An NFATracker with three records (step 0 = initialisation) and the null report."""
    from nfm.tracking import NFATracker

    model = mlp(3)
    x = torch.randn(25, 5, generator=torch.Generator().manual_seed(4))
    tracker = NFATracker(model, x)
    for step in range(3):
        tracker.record(step, loss=1.0 / (step + 1), test_accuracy=0.5 + 0.1 * step)
        with torch.no_grad():
            model[0].weight.mul_(1.3)
    return tracker, nfa_report(model, x, null="shuffled", null_seed=1)


def test_history_first_and_last_records(tracked):
    tracker, _ = tracked
    hist = tracker.to_history()
    assert {r["step"] for r in hist.first()} == {0}
    entries = hist.first_and_last("pearson_a0.5")
    assert [e["layer"] for e in entries] == ["0", "2", "4"]
    for entry in entries:
        _, values = hist.series(entry["layer"], "pearson_a0.5")
        assert (entry["first_step"], entry["first"]) == (0, values[0])
        assert (entry["last_step"], entry["last"]) == (2, values[-1])
        assert entry["change"] == values[-1] - values[0]
    assert entries[2]["by_construction"] is True


def test_plots_show_the_null_and_the_first_record(tracked):
    from matplotlib import pyplot as plt

    from nfm.viz import plotting

    tracker, report = tracked
    try:
        fig = plotting.plot_nfa_lift(report, history=tracker)
        ax = fig.axes[0]
        assert len(ax.patches) == 3 * len(report.rows)  # value, null, first record per layer
        heights = [p.get_height() for p in ax.patches]
        assert heights[:3] == [r["pearson_a0.5"] for r in report.rows]
        assert heights[3:6] == [r["null_correlation"] for r in report.rows]
        first = {
            e["layer"]: e["first"] for e in tracker.to_history().first_and_last("pearson_a0.5")
        }
        assert heights[6:] == [first[r["layer"]] for r in report.rows]
        texts = [t.get_text() for t in ax.texts]
        assert f"lift {report.rows[0]['lift']:+.2f}" in texts
        assert "(by construction)" in ax.get_xticklabels()[2].get_text()
        # the null only applies to the headline column
        other = plotting.plot_nfa_lift(report, column="cosine_a1")
        assert len(other.axes[0].patches) == len(report.rows)

        nulls = {r["layer"]: r["null_correlation"] for r in report.rows}
        fig = plotting.plot_nfa_history(tracker, null_values=nulls, null_label="shuffled")
        top = fig.axes[0]
        dashed = [ln for ln in top.get_lines() if "shuffled" in ln.get_label()]
        assert [float(ln.get_ydata()[0]) for ln in dashed] == list(nulls.values())
        _, values = tracker.to_history().series("0", "pearson_a0.5")
        assert f"{values[-1]:.2f} (first {values[0]:.2f})" in [t.get_text() for t in top.texts]

        row = report.rows[0]
        fig = plotting.plot_feature_matrices(
            report.nfm["0"],
            report.agop["0"],
            layer="0",
            null_correlation=row["null_correlation"],
            null_label="shuffled weights",
            initial_correlation=0.5,
        )
        title = fig._suptitle.get_text()
        assert f"shuffled weights {row['null_correlation']:.3f}, lift {row['lift']:+.3f}" in title
        assert "at initialisation 0.500" in title
        fig = plotting.plot_feature_matrices(
            report.nfm["4"], report.agop["4"], by_construction=True
        )
        assert "by construction" in fig._suptitle.get_text()
        with pytest.raises(NFMInputError, match="column"):
            plotting.plot_nfa_lift(report, column="nope")
        with pytest.raises(NFMInputError, match="report"):
            plotting.plot_nfa_lift(42)
    finally:
        plt.close("all")


def test_html_report_shows_null_fact_and_first_record(tmp_path, tracked):
    import json

    from nfm.ansatz import fact_report
    from nfm.viz.report import write_report

    tracker, report = tracked
    x = torch.randn(25, 5, generator=torch.Generator().manual_seed(4))
    y = torch.randint(0, 3, (25,), generator=torch.Generator().manual_seed(5))
    facts = fact_report(tracker.model, x, y, weight_decay=1e-3, null="reinit")
    files = write_report(
        tmp_path,
        figures={},
        nfa_rows=report.rows,
        metrics={},
        settings={},
        history=tracker,
        fact_rows=facts.rows,
    )
    page = files.html.read_text(encoding="utf-8")
    assert "null_correlation" in page and "lift" in page
    assert "weight entries shuffled" in page and "re-initialised" in page
    assert "FACT per layer" in page and "fact_pearson" in page
    assert "at the first record" in page and "first_step" in page
    payload = json.loads(files.metrics_json.read_text(encoding="utf-8"))
    assert payload["fact"][0]["layer"] == "0"
    assert payload["nfa"][0]["null"] == "shuffled"
    bare = write_report(
        tmp_path / "bare",
        figures={},
        nfa_rows=nfa_report(tracker.model, x).rows,
        metrics={},
        settings={},
    )
    assert "No null baseline" in bare.html.read_text(encoding="utf-8")
