r"""A small convolutional classifier and a training loop that reports to a tracker.

:func:`make_cnn` builds ``conv -> ReLU -> 2x2 max-pool`` blocks and a linear head, initialised
from a private generator. :func:`train_cnn` trains it with Adam on cross-entropy and calls
``tracker.record(step, loss=..., train_accuracy=..., test_accuracy=...)`` every few steps;
unlike :func:`nfm.training.train_classifier` it measures the accuracies of the records on fixed
subsets of the training and test images, so that a record on a 60,000-image set costs a few
seconds rather than a pass over both sets.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from nfm._utils.arrays import to_tensor
from nfm.exceptions import NFMInputError
from nfm.models.state import ModelState
from nfm.training.loop import TrainResult, accuracy

__all__ = ["conv_layer_names", "make_cnn", "train_cnn"]

logger = logging.getLogger(__name__)


class _Recorder(Protocol):
    def record(self, step: int, **metrics: Any) -> Any: ...


def _uniform_init(module: nn.Module, fan_in: int, generator: torch.Generator | None) -> None:
    """Weights and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's default bounds)."""
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        module.weight.uniform_(-bound, bound, generator=generator)
        if module.bias is not None:
            module.bias.uniform_(-bound, bound, generator=generator)


def make_cnn(
    image_shape: Sequence[int] = (28, 28),
    n_classes: int = 10,
    *,
    in_channels: int = 1,
    channels: Sequence[int] = (16, 32),
    kernel_sizes: Sequence[int] | int = (5, 3),
    seed: int | None = 0,
) -> nn.Sequential:
    r"""Build ``[conv -> ReLU -> MaxPool2d(2)] x len(channels) -> flatten -> linear``.

    Block :math:`i` is ``nn.Conv2d(c_{i-1}, c_i, k_i, padding=k_i // 2)`` (odd ``k_i`` keep the
    map size), a ReLU and a 2x2 max-pool that halves the map (rounding down); the head is an
    ``nn.Linear`` from the flattened last map to ``n_classes``. Modules are named ``conv1,
    act1, pool1, conv2, ..., flatten, out``. Every weight and bias is drawn from
    :math:`U(-1/\sqrt{\mathrm{fan\_in}}, 1/\sqrt{\mathrm{fan\_in}})`, with
    :math:`\mathrm{fan\_in} = c_{i-1} k_i^2` for a convolution (PyTorch's default bounds), from a
    private ``torch.Generator`` seeded with ``seed`` (``None``: the global generator).

    Parameters
    ----------
    image_shape : (height, width)
        Size of the input images; inputs are ``(batch, in_channels, height, width)``.
    n_classes : int
    in_channels : int
    channels : sequence of int
        Output channels of each convolution (at least one).
    kernel_sizes : int or sequence of int
        Odd kernel size of each convolution (one number: all of them).
    seed : int or None

    Returns
    -------
    torch.nn.Sequential

    Raises
    ------
    NFMInputError
        Non-positive sizes, even kernels, a ``kernel_sizes`` list of the wrong length, or an
        image too small for the pooling (a map would shrink to zero).
    """
    channels = [int(c) for c in channels]
    if isinstance(kernel_sizes, int):
        kernel_sizes = [kernel_sizes] * len(channels)
    kernels = [int(k) for k in kernel_sizes]
    shape = [int(s) for s in image_shape]
    if not channels or any(c < 1 for c in channels) or in_channels < 1 or n_classes < 1:
        raise NFMInputError(
            f"channels (at least one), in_channels and n_classes must be positive; got "
            f"channels={channels}, in_channels={in_channels}, n_classes={n_classes}"
        )
    if len(kernels) != len(channels) or any(k < 1 or k % 2 == 0 for k in kernels):
        raise NFMInputError(
            f"kernel_sizes must be one odd positive size per convolution ({len(channels)}); "
            f"got {list(kernel_sizes)}"
        )
    if len(shape) != 2 or min(shape) < 2 ** len(channels):
        raise NFMInputError(
            f"image_shape must be (height, width) with both at least 2**{len(channels)} = "
            f"{2 ** len(channels)} for {len(channels)} pooling steps; got {list(image_shape)}"
        )
    generator = None if seed is None else torch.Generator().manual_seed(int(seed))
    modules: OrderedDict[str, nn.Module] = OrderedDict()
    previous = int(in_channels)
    height, width = shape
    for index, (out_channels, k) in enumerate(zip(channels, kernels, strict=True), start=1):
        conv = nn.utils.skip_init(nn.Conv2d, previous, out_channels, k, padding=k // 2)
        _uniform_init(conv, previous * k * k, generator)
        modules[f"conv{index}"] = conv
        modules[f"act{index}"] = nn.ReLU()
        modules[f"pool{index}"] = nn.MaxPool2d(2)
        previous = out_channels
        height, width = height // 2, width // 2
    head_in = previous * height * width
    head = nn.utils.skip_init(nn.Linear, head_in, int(n_classes))
    _uniform_init(head, head_in, generator)
    modules["flatten"] = nn.Flatten()
    modules["out"] = head
    return nn.Sequential(modules)


def _mean_loss(model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> float:
    """Mean cross-entropy over ``(X, y)`` in eval mode, without gradients, in batches."""
    total = 0.0
    with ModelState(model, mode="eval"), torch.no_grad():
        for start in range(0, X.shape[0], batch_size):
            logits = model(X[start : start + batch_size])
            target = y[start : start + batch_size]
            total += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
    return total / max(int(X.shape[0]), 1)


def conv_layer_names(model: nn.Module) -> list[str]:
    """Names of the ``nn.Conv2d`` modules of ``model``, in registration order."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def train_cnn(
    model: nn.Module,
    X_train: Any,
    y_train: Any,
    *,
    X_test: Any = None,
    y_test: Any = None,
    epochs: int = 3,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    tracker: _Recorder | None = None,
    track_every: int = 100,
    eval_samples: int | None = 2000,
    verbose: bool = False,
) -> TrainResult:
    r"""Train an image classifier with minibatch Adam on cross-entropy, reporting to a tracker.

    Each epoch shuffles the training images with a ``torch.Generator`` seeded by ``seed`` and
    takes ``ceil(n / batch_size)`` steps on
    :math:`-\frac1B\sum_i \log \mathrm{softmax}(f(x_i))_{y_i}`. When ``tracker`` is given,
    ``tracker.record(step, loss=..., train_accuracy=..., test_accuracy=...)`` is called at step
    0 (before training, ``loss`` on the training subset), every ``track_every`` steps (``loss``:
    the mean batch loss since the previous record) and after the last step. At the records
    ``train_accuracy`` and ``test_accuracy`` are measured on the first ``eval_samples`` images
    of the training and of the test set (all when ``None``); the returned test accuracy is on
    the whole test set. All evaluations run in eval mode.

    The model is trained in place; every module's mode and every ``requires_grad`` flag are
    restored on return and on error (:class:`nfm.models.state.ModelState`). A model that
    comes in eval mode as a whole trains with ``model.train()``; otherwise its own modes are
    kept (frozen submodules stay frozen).

    Parameters
    ----------
    model : torch.nn.Module
        Maps ``(B, *image)`` inputs to ``(B, n_classes)`` scores.
    X_train, y_train : arrays
        Images ``(n, C, H, W)`` (any shape the model takes) and integer labels ``(n,)``.
    X_test, y_test : arrays, optional
    epochs, batch_size : int
    lr : float
        Adam learning rate.
    seed : int
        Seeds the shuffling generator.
    tracker : object with ``record(step, **metrics)``, optional
    track_every : int
    eval_samples : int or None
    verbose : bool
        Show a tqdm progress bar.

    Returns
    -------
    TrainResult
        ``train_accuracy`` is on the training subset, ``test_accuracy`` on the whole test set
        (``nan`` without one).
    """
    for label, value in (("epochs", epochs), ("batch_size", batch_size)):
        if int(value) < 1:
            raise NFMInputError(f"{label} must be >= 1; got {value!r}")
    if int(track_every) < 1:
        raise NFMInputError(f"track_every must be >= 1; got {track_every!r}")
    if eval_samples is not None and int(eval_samples) < 1:
        raise NFMInputError(f"eval_samples must be >= 1 or None; got {eval_samples!r}")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    X = to_tensor(X_train, "X_train", dtype=torch.float32, device=device)
    y = to_tensor(y_train, "y_train", dtype=torch.int64, device=device)
    if X.ndim < 2 or y.ndim != 1 or X.shape[0] != y.shape[0] or X.shape[0] == 0:
        raise NFMInputError(
            f"X_train must be (n, ...) and y_train (n,) with the same n >= 1; got "
            f"{tuple(X.shape)} and {tuple(y.shape)}"
        )
    has_test = X_test is not None and y_test is not None
    if has_test:
        Xt = to_tensor(X_test, "X_test", dtype=torch.float32, device=device)
        yt = to_tensor(y_test, "y_test", dtype=torch.int64, device=device)
    n = int(X.shape[0])
    limit = None if eval_samples is None else int(eval_samples)

    def evaluate(mean_loss: float, *, full_test: bool = False) -> dict[str, float]:
        metrics = {"loss": mean_loss, "train_accuracy": accuracy(model, X[:limit], y[:limit])}
        if has_test:
            test_limit = None if full_test else limit
            metrics["test_accuracy"] = accuracy(model, Xt[:test_limit], yt[:test_limit])
        else:
            metrics["test_accuracy"] = float("nan")
        return metrics

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(int(seed))
    total_steps = int(epochs) * math.ceil(n / batch_size)
    start_time = time.perf_counter()
    with ModelState(model, mode=None):  # every mode and flag restored on return and on error
        if not model.training:
            model.train()
        if tracker is not None:
            tracker.record(0, **evaluate(_mean_loss(model, X[:limit], y[:limit])))
        step, last_recorded = 0, 0
        running_sum, running_count = 0.0, 0
        loss_curve: list[float] = []
        bar = tqdm(
            total=total_steps, desc="training", unit="step", disable=not verbose, leave=False
        )
        try:
            for _epoch in range(int(epochs)):
                order = torch.randperm(n, generator=generator).to(device)
                epoch_sum = 0.0
                for start in range(0, n, batch_size):
                    batch = order[start : start + batch_size]
                    optimizer.zero_grad(set_to_none=True)
                    loss = nn.functional.cross_entropy(model(X[batch]), y[batch])
                    loss.backward()
                    optimizer.step()
                    step += 1
                    value = float(loss.detach())
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
                logger.info("epoch %d: mean training loss %.4f", _epoch + 1, loss_curve[-1])
            last_loss = running_sum / running_count if running_count else loss_curve[-1]
            if tracker is not None and last_recorded != step:
                tracker.record(step, **evaluate(last_loss))
            final = evaluate(last_loss, full_test=True)
        finally:
            bar.close()
    seconds = time.perf_counter() - start_time
    return TrainResult(
        steps=step,
        epochs=int(epochs),
        final_loss=float(loss_curve[-1]),
        train_accuracy=float(final["train_accuracy"]),
        test_accuracy=float(final["test_accuracy"]),
        loss_curve=loss_curve,
        seconds=seconds,
    )
