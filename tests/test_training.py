"""nfm.training: accuracy and train_classifier hand the model back exactly as it came.

The model used here is in training mode with one batch norm and one dropout frozen (eval mode)
and one weight with ``requires_grad=False`` -- the usual fine-tuning set-up. Restoring only the
root (``model.train(was_training)``) would switch the frozen modules back to training.
"""

from __future__ import annotations

import copy

import pytest
import torch
from mixed_mode import mixed_mode_model, modes_and_flags
from torch import nn

from nfm.training import accuracy, make_mlp, train_classifier


def data(n: int = 48, d: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    X = torch.randn(n, d, generator=generator)
    return X, (X[:, 0] > 0).long() + (X[:, 1] > 0).long()


def test_mixed_mode_fixture_is_mixed():
    modes, flags = modes_and_flags(mixed_mode_model())
    assert True in modes and False in modes
    assert True in flags and False in flags


def test_accuracy_restores_every_module_mode():
    model = mixed_mode_model()
    reference = copy.deepcopy(model).eval()
    before = modes_and_flags(model)
    X, y = data()
    value = accuracy(model, X, y, batch_size=16)
    assert modes_and_flags(model) == before
    # an independent computation, whole model in eval mode
    with torch.no_grad():
        expected = int((reference(X).argmax(dim=1) == y).sum()) / X.shape[0]
    assert value == pytest.approx(expected, abs=1e-12)


def test_accuracy_restores_every_module_mode_on_error():
    model = mixed_mode_model()
    before = modes_and_flags(model)
    X, y = data(d=5)  # the model expects 6 features
    with pytest.raises(RuntimeError):
        accuracy(model, X, y)
    assert modes_and_flags(model) == before


def test_train_classifier_restores_every_module_mode():
    model = mixed_mode_model()
    before = modes_and_flags(model)
    X, y = data()
    train_classifier(model, X, y, epochs=2, batch_size=16, lr=1e-2)
    assert modes_and_flags(model) == before


class _FailingTracker:
    def __init__(self, fail_at: int) -> None:
        self.fail_at = fail_at
        self.steps: list[int] = []

    def record(self, step: int, **metrics: float) -> None:
        self.steps.append(step)
        if step >= self.fail_at:
            raise RuntimeError(f"tracker failed at step {step}")


def test_train_classifier_restores_every_module_mode_on_error():
    model = mixed_mode_model()
    before = modes_and_flags(model)
    X, y = data()
    tracker = _FailingTracker(fail_at=2)
    with pytest.raises(RuntimeError, match="tracker failed at step 2"):
        train_classifier(model, X, y, epochs=3, batch_size=16, tracker=tracker, track_every=2)
    assert tracker.steps == [0, 2]
    assert modes_and_flags(model) == before


def _modes_during_gradient_steps(model: nn.Module, names: list[str]) -> tuple[dict, list]:
    """Forward pre-hooks that log ``module.training`` in every forward with gradients on."""
    seen: dict[str, set[bool]] = {name: set() for name in names}
    modules = dict(model.named_modules())
    handles = []
    for name in names:

        def hook(module, args, name=name):
            if torch.is_grad_enabled():
                seen[name].add(module.training)

        handles.append(modules[name].register_forward_pre_hook(hook))
    return seen, handles


def test_frozen_modules_stay_frozen_during_training():
    model = mixed_mode_model()
    frozen_stats = model[1].running_mean.clone(), model[1].running_var.clone()
    trained_stats = model[5].running_mean.clone()
    frozen_weight = model[4].weight.detach().clone()
    trained_weight = model[7].weight.detach().clone()
    X, y = data()
    seen, handles = _modes_during_gradient_steps(model, ["1", "3", "5", "6"])
    try:
        result = train_classifier(model, X, y, epochs=2, batch_size=16, lr=1e-2)
    finally:
        for handle in handles:
            handle.remove()
    assert result.steps == 6
    # the frozen batch norm and dropout never trained, the others always did
    assert seen == {"1": {False}, "3": {False}, "5": {True}, "6": {True}}
    torch.testing.assert_close(model[1].running_mean, frozen_stats[0], rtol=0, atol=0)
    torch.testing.assert_close(model[1].running_var, frozen_stats[1], rtol=0, atol=0)
    assert not torch.equal(model[5].running_mean, trained_stats)
    torch.testing.assert_close(model[4].weight.detach(), frozen_weight, rtol=0, atol=0)
    assert not torch.equal(model[7].weight.detach(), trained_weight)
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_model_in_eval_mode_is_trained_in_train_mode_and_returned_in_eval_mode():
    model = mixed_mode_model().eval()
    X, y = data()
    seen, handles = _modes_during_gradient_steps(model, ["1", "3", "5", "6"])
    try:
        train_classifier(model, X, y, epochs=1, batch_size=16)
    finally:
        for handle in handles:
            handle.remove()
    assert seen == {"1": {True}, "3": {True}, "5": {True}, "6": {True}}
    assert not any(m.training for m in model.modules())


def test_training_is_reproducible_and_leaves_the_global_generator_alone():
    X, y = data()
    state = torch.random.get_rng_state()
    results = []
    for _ in range(2):
        model = make_mlp(6, [5], 3, seed=4)
        results.append(train_classifier(model, X, y, epochs=2, batch_size=16, seed=7))
        results[-1] = (results[-1].loss_curve, [p.detach().clone() for p in model.parameters()])
    assert torch.equal(torch.random.get_rng_state(), state)
    assert results[0][0] == results[1][0]
    for a, b in zip(results[0][1], results[1][1], strict=True):
        assert torch.equal(a, b)
