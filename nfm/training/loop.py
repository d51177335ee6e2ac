r"""A plain training loop for classifiers that reports to a tracker, and held-out accuracy.

:func:`train_classifier` runs minibatch Adam or SGD on cross-entropy or squared loss, shuffling
with its own generator, and calls ``tracker.record(step, loss=..., train_accuracy=...,
test_accuracy=...)`` every ``track_every`` optimisation steps (and at step 0 and at the end).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from nfm._utils.arrays import to_tensor
from nfm.exceptions import NFMInputError
from nfm.models.state import ModelState

__all__ = ["TrainResult", "accuracy", "train_classifier"]


logger = logging.getLogger(__name__)


class _Recorder(Protocol):
    def record(self, step: int, **metrics: Any) -> Any: ...


def accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> float:
    r"""Fraction of rows whose arg-max output equals the label, :math:`\frac1n\sum_i
    [\arg\max_c f(x_i)_c = y_i]`.

    The model runs in eval mode without gradients; every module's mode (and every
    ``requires_grad`` flag) is restored afterwards, also on error
    (:class:`nfm.models.state.ModelState`), so a frozen submodule stays frozen.
    """
    correct = 0
    with ModelState(model, mode="eval"), torch.no_grad():
        for start in range(0, X.shape[0], batch_size):
            logits = model(X[start : start + batch_size])
            correct += int((logits.argmax(dim=1) == y[start : start + batch_size]).sum())
    return correct / max(int(X.shape[0]), 1)


@dataclass
class TrainResult:
    """What :func:`train_classifier` returns.

    Attributes
    ----------
    steps : int
        Number of optimisation steps taken.
    epochs : int
    final_loss : float
        Mean training loss over the last epoch.
    train_accuracy, test_accuracy : float
        Accuracy at the end (``nan`` for the test set when none was given).
    loss_curve : list of float
        Mean training loss of each epoch.
    seconds : float
        Wall-clock time of the loop, tracking included.
    """

    steps: int
    epochs: int
    final_loss: float
    train_accuracy: float
    test_accuracy: float
    loss_curve: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _loss_value(
    loss: str, logits: torch.Tensor, targets: torch.Tensor, n_classes: int
) -> torch.Tensor:
    if loss == "cross_entropy":
        return nn.functional.cross_entropy(logits, targets)
    one_hot = nn.functional.one_hot(targets, n_classes).to(logits.dtype)
    return ((logits - one_hot) ** 2).sum(dim=1).mean()


def train_classifier(
    model: nn.Module,
    X_train: Any,
    y_train: Any,
    *,
    X_test: Any = None,
    y_test: Any = None,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    optimizer: Literal["adam", "sgd"] = "adam",
    loss: Literal["cross_entropy", "mse"] = "cross_entropy",
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    seed: int = 0,
    tracker: _Recorder | None = None,
    track_every: int = 50,
    verbose: bool = False,
) -> TrainResult:
    r"""Train a classifier with minibatch Adam or SGD, reporting to a tracker.

    Each epoch shuffles the training rows with a ``torch.Generator`` seeded by ``seed`` and
    takes ``ceil(n / batch_size)`` steps on

    * ``"cross_entropy"``: :math:`-\frac1B\sum_i \log \mathrm{softmax}(f(x_i))_{y_i}`, or
    * ``"mse"``: :math:`\frac1B\sum_i \lVert f(x_i) - e_{y_i}\rVert^2` (one-hot targets).

    When ``tracker`` is given, ``tracker.record(step, loss=..., train_accuracy=...,
    test_accuracy=...)`` is called at step 0 (before training), every ``track_every`` steps and
    after the last step; ``loss`` is the mean training loss since the previous record (the
    initial record uses the loss of the untrained model on the training set).

    The model is trained in place. Modes during training: a model that comes in training mode
    trains with the modes it has, so submodules the caller put in eval mode stay in eval mode
    (the usual way to freeze a batch norm's statistics or a dropout: ``model.train();
    model.bn.eval()``); a model that comes in eval mode as a whole (root module in eval mode,
    as after an evaluation) is put in training mode with ``model.train()``. Parameters with
    ``requires_grad=False`` are not optimised. The evaluations (initial loss, accuracies,
    tracker records) run in eval mode. On return, and also when an error is raised, every
    module's mode and every parameter's ``requires_grad`` flag are as they were before the
    call (:class:`nfm.models.state.ModelState`).

    Parameters
    ----------
    model : torch.nn.Module
        Maps ``(B, d)`` inputs to ``(B, n_classes)`` scores.
    X_train, y_train : arrays
        Inputs ``(n, d)`` and integer labels ``(n,)``.
    X_test, y_test : arrays, optional
        Held-out data for ``test_accuracy``.
    epochs, batch_size, lr, weight_decay, momentum : training settings
        (``momentum`` is used by SGD only.)
    optimizer : {"adam", "sgd"}
    loss : {"cross_entropy", "mse"}
    seed : int
        Seeds the shuffling generator.
    tracker : object with ``record(step, **metrics)``, optional
        Usually an :class:`nfm.tracking.NFATracker`.
    track_every : int
        Steps between tracker records.
    verbose : bool
        Show a tqdm progress bar.

    Returns
    -------
    TrainResult
    """
    if optimizer not in ("adam", "sgd"):
        raise NFMInputError(f"optimizer must be 'adam' or 'sgd'; got {optimizer!r}")
    if loss not in ("cross_entropy", "mse"):
        raise NFMInputError(f"loss must be 'cross_entropy' or 'mse'; got {loss!r}")
    if epochs < 1 or batch_size < 1 or track_every < 1:
        raise NFMInputError(
            f"epochs, batch_size and track_every must be >= 1; got {epochs}, {batch_size}, "
            f"{track_every}"
        )
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    X = to_tensor(X_train, "X_train", dtype=torch.float32, device=device)
    y = to_tensor(y_train, "y_train", dtype=torch.int64, device=device)
    if X.shape[0] != y.shape[0]:
        raise NFMInputError(
            f"X_train and y_train must have the same number of rows; got {tuple(X.shape)} "
            f"and {tuple(y.shape)}"
        )
    has_test = X_test is not None and y_test is not None
    if has_test:
        Xt = to_tensor(X_test, "X_test", dtype=torch.float32, device=device)
        yt = to_tensor(y_test, "y_test", dtype=torch.int64, device=device)
    n = int(X.shape[0])
    # eval mode: one sample through a batch norm in training mode would fail (and move its
    # running statistics)
    with ModelState(model, mode="eval"), torch.no_grad():
        n_classes = int(model(X[:1]).shape[1])
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(int(seed))
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = epochs * steps_per_epoch

    def evaluate(mean_loss: float) -> dict[str, float]:
        metrics = {"loss": mean_loss, "train_accuracy": accuracy(model, X, y)}
        metrics["test_accuracy"] = accuracy(model, Xt, yt) if has_test else float("nan")
        return metrics

    start_time = time.perf_counter()
    with ModelState(model, mode=None):  # every mode and flag restored on return and on error
        if not model.training:
            model.train()
        if tracker is not None:
            with ModelState(model, mode="eval"), torch.no_grad():
                initial_loss = float(_loss_value(loss, model(X), y, n_classes))
            tracker.record(0, **evaluate(initial_loss))
        step = 0
        loss_curve: list[float] = []
        running_sum, running_count = 0.0, 0
        last_recorded = 0
        bar = tqdm(
            total=total_steps, desc="training", unit="step", disable=not verbose, leave=False
        )
        try:
            for _epoch in range(epochs):
                order = torch.randperm(n, generator=generator).to(device)
                epoch_sum = 0.0
                for start in range(0, n, batch_size):
                    batch = order[start : start + batch_size]
                    opt.zero_grad(set_to_none=True)
                    batch_loss = _loss_value(loss, model(X[batch]), y[batch], n_classes)
                    batch_loss.backward()
                    opt.step()
                    step += 1
                    value = float(batch_loss.detach())
                    epoch_sum += value * batch.numel()
                    running_sum += value
                    running_count += 1
                    bar.update(1)
                    if tracker is not None and step % track_every == 0:
                        tracker.record(step, **evaluate(running_sum / running_count))
                        running_sum, running_count = 0.0, 0
                        last_recorded = step
                loss_curve.append(epoch_sum / n)
                bar.set_postfix(loss=f"{loss_curve[-1]:.4f}")
            final = evaluate(running_sum / running_count if running_count else loss_curve[-1])
            if tracker is not None and last_recorded != step:
                tracker.record(step, **final)
        finally:
            bar.close()
    seconds = time.perf_counter() - start_time
    logger.debug("trained %d steps in %.1f s", step, seconds)
    return TrainResult(
        steps=step,
        epochs=epochs,
        final_loss=float(loss_curve[-1]),
        train_accuracy=float(final["train_accuracy"]),
        test_accuracy=float(final["test_accuracy"]),
        loss_curve=loss_curve,
        seconds=seconds,
    )
