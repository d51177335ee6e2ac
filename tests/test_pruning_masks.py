"""Unit and weight pruning masks of nfm.pruning: what they zero, and what they leave alone."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune

import nfm
from nfm.exceptions import LayerSelectionError, NFMInputError
from nfm.pruning import (
    lowest_score_mask,
    make_permanent,
    prune_units,
    prune_weights,
    pruning_summary,
    unit_importance,
)
from nfm.pruning.masks import copy_model


def sigmoid_mlp(seed: int = 0) -> nn.Sequential:
    return nfm.make_mlp(6, [8, 5], 3, activation="sigmoid", seed=seed).double()


def data(n: int = 30, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_unit_pruning_masks_exactly_the_lowest_columns():
    model = sigmoid_mlp()
    scores = {"fc2": torch.tensor([5.0, 1.0, 7.0, 0.5, 3.0, 2.0, 9.0, 4.0])}
    pruned = prune_units(model, scores, 0.5)
    w = pruned.fc2.weight.detach()
    removed = [1, 3, 5, 4]  # the four lowest scores
    assert (w[:, removed] == 0).all()
    kept = [0, 2, 6, 7]
    torch.testing.assert_close(w[:, kept], model.fc2.weight.detach()[:, kept])
    assert torch.equal(pruned.fc2.weight_mask[:, removed], torch.zeros(5, 4, dtype=w.dtype))
    assert pruning_summary(pruned)["fc2"]["zero_columns"] == 4


def test_pruned_units_equal_a_narrower_network_built_by_hand():
    """Masking the reader's columns is removing the unit, whatever the activation (sigmoid)."""
    model, x = sigmoid_mlp(), data()
    scores = unit_importance(model, x, layers=["fc2"], method="agop_diag")
    pruned = prune_units(model, scores, 0.5)
    keep = torch.nonzero((pruned.fc2.weight.detach() != 0).any(dim=0)).reshape(-1)
    assert keep.numel() == 4
    small = nfm.make_mlp(6, [4, 5], 3, activation="sigmoid", seed=0).double()
    with torch.no_grad():
        small.fc1.weight.copy_(model.fc1.weight[keep])
        small.fc1.bias.copy_(model.fc1.bias[keep])
        small.fc2.weight.copy_(model.fc2.weight[:, keep])
        small.fc2.bias.copy_(model.fc2.bias)
        small.out.load_state_dict(model.out.state_dict())
        torch.testing.assert_close(pruned(x), small(x), rtol=1e-12, atol=1e-12)
        # zeroing the producer's rows instead would not remove the unit: sigmoid(0) = 0.5
        rows = model.fc1.weight.detach().clone()
        drop = torch.ones(8, dtype=torch.bool)
        drop[keep] = False
        other = copy_model(model)
        other.fc1.weight[drop] = 0.0
        other.fc1.bias[drop] = 0.0
        assert not torch.allclose(other(x), small(x))
        assert torch.equal(model.fc1.weight, rows)


def test_masks_survive_forward_backward_and_training():
    model, x = sigmoid_mlp(), data()
    y = torch.arange(x.shape[0]) % 3
    units = prune_units(model, {"fc2": torch.arange(8.0)}, 0.25)
    pruned = prune_weights(units, {"fc1": torch.arange(48.0).reshape(8, 6)}, 0.5)
    mask1, mask2 = pruned.fc1.weight_mask.clone(), pruned.fc2.weight_mask.clone()
    loss = nn.functional.cross_entropy(pruned(x), y)
    loss.backward()
    assert (pruned.fc2.weight_orig.grad[mask2 == 0] == 0).all()
    assert (pruned.fc1.weight_orig.grad[mask1 == 0] == 0).all()
    assert pruned.fc2.weight_orig.grad.abs().sum() > 0
    nfm.train_classifier(pruned.float(), x.float(), y, epochs=3, batch_size=8, lr=0.05)
    assert (pruned.fc1.weight[mask1 == 0] == 0).all()
    assert (pruned.fc2.weight[mask2 == 0] == 0).all()
    assert pruning_summary(pruned)["fc2"]["zero_columns"] == 2


def test_make_permanent_folds_masks_and_keeps_the_function():
    model, x = sigmoid_mlp(), data()
    pruned = prune_weights(model, {"fc2": torch.rand(5, 8, dtype=torch.float64)}, 0.6)
    flat = make_permanent(pruned)
    assert "weight_orig" not in dict(flat.fc2.named_parameters())
    assert not hasattr(flat.fc2, "weight_mask")
    assert isinstance(flat.fc2.weight, nn.Parameter)
    assert not any(m._forward_pre_hooks for m in flat.modules())
    assert pruning_summary(flat)["fc2"]["zero_weights"] == 24
    assert not pruning_summary(flat)["fc2"]["masked"]
    with torch.no_grad():
        torch.testing.assert_close(flat(x), pruned(x), rtol=0, atol=0)
    assert hasattr(pruned.fc2, "weight_mask")  # the default works on a copy
    assert make_permanent(pruned, inplace=True) is pruned
    assert not hasattr(pruned.fc2, "weight_mask")


def state_of(model: nn.Module) -> dict:
    return {
        "tensors": {k: v.clone() for k, v in model.state_dict().items()},
        "params": [n for n, _ in model.named_parameters()],
        "modes": [m.training for m in model.modules()],
        "grads": [p.requires_grad for p in model.parameters()],
        "hooks": [len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules()],
    }


def assert_same_state(model: nn.Module, before: dict) -> None:
    after = state_of(model)
    assert after["params"] == before["params"]
    assert after["modes"] == before["modes"]
    assert after["grads"] == before["grads"]
    assert after["hooks"] == before["hooks"]
    assert all(torch.equal(v, before["tensors"][k]) for k, v in after["tensors"].items())


def test_the_model_passed_in_is_not_modified():
    model = sigmoid_mlp()
    model.train()
    model.act2.eval()
    model.out.bias.requires_grad_(False)
    before = state_of(model)
    a = prune_units(model, {"fc2": torch.rand(8), "out": torch.rand(5)}, 0.5)
    b = prune_weights(model, {"fc1": torch.rand(8, 6)}, 0.9)
    make_permanent(a)
    assert_same_state(model, before)
    assert a is not model and b is not model
    # the copy keeps the modes and flags too
    assert not a.act2.training and a.training and not a.out.bias.requires_grad
    # a failing in-place call changes nothing either (checked before anything is pruned)
    with pytest.raises(LayerSelectionError):
        prune_units(model, {"fc2": torch.rand(8), "nope": torch.rand(8)}, 0.5, inplace=True)
    with pytest.raises(NFMInputError):
        prune_units(model, {"fc2": torch.rand(8), "out": torch.rand(4)}, 0.5, inplace=True)
    assert_same_state(model, before)


def test_inplace_prunes_the_model_itself():
    model = sigmoid_mlp()
    result = prune_units(model, {"out": torch.rand(5)}, 0.4, inplace=True)
    assert result is model
    assert pruning_summary(model)["out"]["zero_columns"] == 2


def test_amount_is_the_share_after_the_call_and_counts_earlier_masks():
    model = sigmoid_mlp()
    scores = {"fc2": torch.rand(8, generator=torch.Generator().manual_seed(0))}
    once = prune_units(model, scores, 0.5)
    twice = prune_units(once, scores, 0.5)
    assert torch.equal(once.fc2.weight_mask, twice.fc2.weight_mask)
    # other scores: the four columns already removed stay removed, two more go
    more = prune_units(once, {"fc2": torch.arange(8.0)}, 0.75)
    old = (once.fc2.weight_mask == 0).all(dim=0)
    new = (more.fc2.weight_mask == 0).all(dim=0)
    assert new[old].all() and int(new.sum()) == 6
    zero = prune_units(model, scores, 0.0)
    assert pruning_summary(zero)["fc2"] == {**pruning_summary(model)["fc2"], "masked": True}
    # at least one unit is kept
    assert pruning_summary(prune_units(model, scores, 0.99))["fc2"]["zero_columns"] == 7


def test_engine_works_through_masks_and_sees_pruned_units_as_zero():
    model, x = sigmoid_mlp(), data()
    pruned = prune_units(model, {"fc2": torch.arange(8.0)}, 0.5)
    masked = nfm.compute_agop(pruned, x)
    plain = nfm.compute_agop(make_permanent(pruned), x)
    for key in plain:
        torch.testing.assert_close(masked[key], plain[key], rtol=1e-12, atol=1e-15)
    rescored = unit_importance(pruned, x, layers=["fc2"], method="agop_diag")["fc2"]
    assert (rescored[:4] == 0).all() and (rescored[4:] > 0).all()


def test_copy_model_of_a_pruned_model_is_independent():
    model, x = sigmoid_mlp(), data()
    pruned = prune_weights(model, {"out": torch.rand(3, 5)}, 0.5)
    clone = copy_model(pruned)
    with torch.no_grad():
        torch.testing.assert_close(clone(x), pruned(x), rtol=0, atol=0)
        clone.out.weight_orig.add_(1.0)
        assert not torch.allclose(clone(x), pruned(x))
    assert (clone.out.weight[pruned.out.weight_mask == 0] == 0).all()
    assert clone.out.weight_orig is not pruned.out.weight_orig


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.floats(-10, 10, allow_nan=False), min_size=1, max_size=40),
    st.floats(0, 0.999),
)
def test_lowest_score_mask_removes_the_lowest_share(values, amount):
    scores = torch.tensor(values, dtype=torch.float64)
    keep = lowest_score_mask(scores, amount)
    n = len(values)
    assert int((~keep).sum()) == min(round(amount * n), n - 1)
    if (~keep).any() and keep.any():
        assert scores[~keep].max() <= scores[keep].min()


@pytest.mark.parametrize("amount", [-0.1, 1.0, 1.5, math.nan, math.inf, True, "0.5", None])
def test_bad_amount_is_refused(amount):
    model = sigmoid_mlp()
    with pytest.raises(NFMInputError, match=r"amount must be a number in \[0, 1\)"):
        prune_units(model, {"fc2": torch.rand(8)}, amount)
    with pytest.raises(NFMInputError, match=r"amount must be a number in \[0, 1\)"):
        prune_weights(model, {"fc2": torch.rand(5, 8)}, amount)


def test_bad_layers_and_scores_are_refused():
    model = sigmoid_mlp()
    with pytest.raises(LayerSelectionError, match="fc7"):
        prune_units(model, {"fc7": torch.rand(8)}, 0.5)
    with pytest.raises(LayerSelectionError, match=r"act1.*Sigmoid"):
        prune_units(model, {"act1": torch.rand(8)}, 0.5)
    with pytest.raises(NFMInputError, match=r"scores\['fc2'\] must have shape \(8,\); got \(5,\)"):
        prune_units(model, {"fc2": torch.rand(5)}, 0.5)
    with pytest.raises(NFMInputError, match=r"must have shape \(5, 8\)"):
        prune_weights(model, {"fc2": torch.rand(8)}, 0.5)
    with pytest.raises(NFMInputError, match="NaN or infinite"):
        prune_units(model, {"fc2": torch.tensor([np.nan] * 8)}, 0.5)
    with pytest.raises(NFMInputError, match="non-empty mapping"):
        prune_units(model, {}, 0.5)
    with pytest.raises(NFMInputError, match="inplace must be True or False"):
        prune_units(model, {"fc2": torch.rand(8)}, 0.5, inplace=1)
    with pytest.raises(NFMInputError, match="real numbers"):
        prune_units(model, {"fc2": torch.ones(8, dtype=torch.bool)}, 0.5)


def test_attention_output_projection_is_refused():
    model = nn.Sequential()
    model.add_module("attn", nn.MultiheadAttention(4, 2))
    with pytest.raises(LayerSelectionError, match=r"attn\.out_proj.*MultiheadAttention"):
        prune_units(model, {"attn.out_proj": torch.rand(4)}, 0.5)


def test_torch_prune_sees_the_masks():
    pruned = prune_units(sigmoid_mlp(), {"fc2": torch.rand(8)}, 0.5)
    assert prune.is_pruned(pruned)
    assert not prune.is_pruned(make_permanent(pruned))
