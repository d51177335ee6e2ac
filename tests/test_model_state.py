"""Tests of nfm.models.state: ModelState hands every module's mode and every parameter's
requires_grad flag back, module by module, also on error; the device/dtype query and the
sample-independence checks."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from nfm.exceptions import NFMInputError
from nfm.models.state import ModelState, check_sample_independence, model_device_dtype


def mixed_model() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.2), nn.Linear(4, 2))
    model.train()
    model[1].eval()
    model[0].bias.requires_grad_(False)
    return model


def flags(model: nn.Module) -> tuple[list[bool], list[bool]]:
    return [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]


@pytest.mark.parametrize("mode", ["eval", "train", None])
def test_every_mode_and_flag_restored(mode):
    model = mixed_model()
    before = flags(model)
    with ModelState(model, mode=mode):
        modes_inside = [m.training for m in model.modules()]
        if mode == "eval":
            assert not any(modes_inside)
        elif mode == "train":
            assert all(modes_inside)
        else:
            assert modes_inside == before[0]
        for p in model.parameters():  # code inside may freeze or unfreeze anything
            p.requires_grad_(not p.requires_grad)
        model[2].train(not model[2].training)
    assert flags(model) == before


def test_restored_on_error():
    model = mixed_model()
    before = flags(model)
    with pytest.raises(KeyError):
        with ModelState(model, mode="train"):
            model[3].weight.requires_grad_(False)
            raise KeyError("boom")
    assert flags(model) == before


def test_restoring_the_root_only_would_not_do():
    # what ModelState guards against: model.train(True) unfreezes the frozen batch-norm
    model = mixed_model()
    model.eval()
    model.train(True)
    assert model[1].training
    model = mixed_model()
    with ModelState(model):
        pass
    assert not model[1].training and model.training


def test_bad_mode():
    with pytest.raises(NFMInputError, match="mode"):
        ModelState(nn.Linear(2, 2), mode="inference")


def test_device_and_dtype_query():
    assert model_device_dtype(nn.Linear(2, 2).double()) == (torch.device("cpu"), torch.float64)
    assert model_device_dtype(nn.ReLU()) == (None, None)
    int_buffers_only = nn.Module()
    int_buffers_only.register_buffer("index", torch.zeros(3, dtype=torch.int64))
    assert model_device_dtype(int_buffers_only) == (torch.device("cpu"), None)


def test_sample_independence_checks():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    model.train()
    with pytest.warns(UserWarning, match="running statistics"):
        check_sample_independence(model)
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_sample_independence(model)
    batch_stats = nn.Sequential(nn.BatchNorm1d(4, track_running_stats=False))
    with pytest.raises(NFMInputError, match=r"'0'.*track_running_stats=False"):
        check_sample_independence(batch_stats)
