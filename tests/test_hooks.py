"""Hook hygiene (captum style): compute_agop leaves no hook behind and hands every module's mode
and every parameter's requires_grad flag back as it found them -- after a normal run, after a bad
argument, after a selected layer misused inside the forward, and after a forward that raises."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.modules import module as module_globals

from nfm.exceptions import LayerSelectionError, NFMInputError
from nfm.features import compute_agop
from nfm.models.hooks import LayerInputPerturbation


class Interrupt(BaseException):
    """Not an Exception: what a Ctrl-C in the middle of the forward looks like."""


class Mixed(nn.Module):
    """A model in training mode with frozen parts; ``fail`` makes its forward raise."""

    def __init__(self, fail: type[BaseException] | None = None, reuse: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(5, 6)
        self.bn = nn.BatchNorm1d(6)
        self.drop = nn.Dropout(0.3)
        self.fc2 = nn.Linear(6, 6)
        self.head = nn.Linear(6, 2)
        self.fail = fail
        self.reuse = reuse

    def forward(self, x):
        h = self.drop(torch.relu(self.bn(self.fc1(x))))
        h = self.fc2(h)
        if self.reuse:  # calls a selected layer twice: the engine's own pre-hook raises
            h = self.fc2(h)
        if self.fail is not None:
            raise self.fail("forward failed")
        return self.head(h)


def mixed(**kwargs) -> Mixed:
    model = Mixed(**kwargs).double()
    model.train()
    model.bn.eval()  # frozen batch-norm inside a model in training mode
    model.drop.eval()  # frozen dropout
    model.fc1.weight.requires_grad_(False)
    model.bn.weight.requires_grad_(False)
    model.bn.bias.requires_grad_(False)
    with torch.no_grad():  # non-trivial running statistics
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    return model


def hook_dicts(module: nn.Module) -> dict[str, list[int]]:
    """Every hook registry of a module (forward, backward, state-dict, ...): name -> keys."""
    return {
        name: list(value)
        for name, value in vars(module).items()
        if "hooks" in name and isinstance(value, dict)
    }


def global_hooks() -> dict[str, list[int]]:
    return {
        name: list(value)
        for name, value in vars(module_globals).items()
        if name.startswith("_global") and "hooks" in name and isinstance(value, dict)
    }


def state(model: nn.Module) -> dict:
    return {
        "modes": {name: m.training for name, m in model.named_modules()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "hooks": {name: hook_dicts(m) for name, m in model.named_modules()},
        "global_hooks": global_hooks(),
        "tensors": {k: v.clone() for k, v in model.state_dict().items()},
        "grads": {name: p.grad for name, p in model.named_parameters()},
    }


def assert_same_state(model: nn.Module, before: dict) -> None:
    after = state(model)
    assert after["modes"] == before["modes"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["hooks"] == before["hooks"]
    assert after["global_hooks"] == before["global_hooks"]
    assert all(g is None for g in after["grads"].values())
    for key, value in before["tensors"].items():  # parameters and running statistics
        assert torch.equal(after["tensors"][key], value), key


def test_the_state_probe_sees_hooks_and_flags():
    # the probe itself must notice what the tests below claim is absent
    model = mixed()
    before = state(model)
    handle = model.fc2.register_forward_pre_hook(lambda m, a: None)
    with pytest.raises(AssertionError):
        assert_same_state(model, before)
    handle.remove()
    model.bn.train()
    with pytest.raises(AssertionError):
        assert_same_state(model, before)
    model.bn.eval()
    model.fc1.weight.requires_grad_(True)
    with pytest.raises(AssertionError):
        assert_same_state(model, before)
    model.fc1.weight.requires_grad_(False)
    assert_same_state(model, before)


def test_normal_run_leaves_nothing_behind():
    model = mixed()
    before = state(model)
    x = torch.randn(7, 5, dtype=torch.float64)
    result = compute_agop(model, x, layers=["fc2", "head"], chunk_size=3)
    assert list(result) == ["input", "fc2", "head"]
    assert_same_state(model, before)
    assert not x.requires_grad and x.grad is None


@pytest.mark.parametrize(
    ("make", "x", "error", "match"),
    [
        (mixed, torch.randn(4, 7, dtype=torch.float64), NFMInputError, r"shape \(4, 7\)"),
        (mixed, torch.randn(4), NFMInputError, "shape|batch"),
        (lambda: mixed(reuse=True), torch.randn(4, 5), LayerSelectionError, "more than once"),
        (lambda: mixed(fail=ZeroDivisionError), torch.randn(4, 5), ZeroDivisionError, "failed"),
        (lambda: mixed(fail=Interrupt), torch.randn(4, 5), Interrupt, "failed"),
    ],
    ids=["wrong-feature-count", "no-batch-axis", "layer-reused", "forward-raises", "interrupt"],
)
def test_errors_leave_nothing_behind(make, x, error, match):
    model = make()
    before = state(model)
    with pytest.raises(error, match=match):
        compute_agop(model, x.double(), layers=["fc1", "fc2", "head"])
    assert_same_state(model, before)


def test_users_own_hooks_survive_and_still_run():
    model = mixed()
    seen = []
    handle = model.fc2.register_forward_hook(lambda m, a, out: seen.append(out.shape[0]))
    before = state(model)
    compute_agop(model, torch.randn(5, 5, dtype=torch.float64), layers=["fc2"])
    assert seen  # the user's hook ran during the pass ...
    assert_same_state(model, before)  # ... and is still registered, the engine's are gone
    handle.remove()


def test_perturbation_context_removes_its_hooks_on_error():
    model = mixed()
    before = state(model)
    with pytest.raises(RuntimeError, match="inside"):
        with LayerInputPerturbation(model, {"fc2": model.fc2}) as hooks:
            assert hook_dicts(model.fc2)["_forward_pre_hooks"]  # registered while inside
            hooks.active = True
            model(torch.randn(3, 5, dtype=torch.float64))
            assert "fc2" in hooks.deltas
            raise RuntimeError("inside")
    assert_same_state(model, before)
    assert not hooks.deltas and not hooks.outputs
