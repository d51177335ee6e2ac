"""Tests of nfm.models.selection: selecting layers by name, object, type and predicate."""

from __future__ import annotations

import pytest
from torch import nn

from nfm.exceptions import LayerSelectionError
from nfm.models.adapters import layer_feature_count
from nfm.models.selection import INPUT_KEY, select_layers


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 5))
        self.act = nn.Tanh()
        self.head = nn.Linear(5, 2)


def test_default_is_every_linear_in_model_order():
    net = Net()
    selected = select_layers(net)
    assert list(selected) == ["encoder.0", "encoder.2", "head"]
    assert selected["head"] is net.head


def test_by_name_object_type_predicate_and_union_in_model_order():
    net = Net()
    assert list(select_layers(net, "head")) == ["head"]
    assert list(select_layers(net, net.encoder[2])) == ["encoder.2"]
    assert list(select_layers(net, nn.Tanh)) == ["act"]
    assert list(select_layers(net, lambda name, m: name.startswith("encoder."))) == [
        "encoder.0",
        "encoder.1",
        "encoder.2",
    ]
    union = select_layers(net, ["head", nn.ReLU, net.encoder[0], "head"])
    assert list(union) == ["encoder.0", "encoder.1", "head"]


def test_root_only_when_named_or_passed():
    lin = nn.Linear(3, 2)
    with pytest.raises(LayerSelectionError, match=r"no nn\.Linear submodule"):
        select_layers(lin)
    assert list(select_layers(lin, "")) == [""]
    assert list(select_layers(lin, lin)) == [""]


def test_unknown_name_lists_available_names():
    with pytest.raises(LayerSelectionError, match=r"'enc'.*available names: 'encoder', "):
        select_layers(Net(), "enc")


def test_selector_errors():
    net = Net()
    with pytest.raises(LayerSelectionError, match="not a submodule"):
        select_layers(net, nn.Linear(4, 5))
    with pytest.raises(LayerSelectionError, match="matched no module"):
        select_layers(net, nn.Conv2d)
    with pytest.raises(LayerSelectionError, match="matched no module"):
        select_layers(net, lambda name, m: False)
    with pytest.raises(LayerSelectionError, match="empty sequence"):
        select_layers(net, [])
    with pytest.raises(LayerSelectionError, match="got int"):
        select_layers(net, [3])
    with pytest.raises(LayerSelectionError, match=r"torch\.nn\.Module"):
        select_layers("model")
    assert issubclass(LayerSelectionError, ValueError)


def test_feature_count_and_input_key():
    assert layer_feature_count(nn.Linear(3, 2)) == 3
    assert layer_feature_count(nn.Conv2d(4, 2, 3)) == 4
    assert layer_feature_count(nn.ReLU()) is None
    assert INPUT_KEY == "input"
