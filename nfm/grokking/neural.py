r"""Neural grokking: a two-layer network learning modular arithmetic, with its feature matrices.

The network (the published setup of Mallinar et al. 2024) is

.. math:: f(x) = W_2\, \sigma(W_1 x), \qquad \sigma(z) = z^2, \qquad
          W_1 \in \mathbb{R}^{h \times 2p},\; W_2 \in \mathbb{R}^{p \times h},

without biases, width :math:`h = 256`, trained with AdamW (learning rate :math:`10^{-3}`,
betas (0.9, 0.98), weight decay 1.0) on the mean squared error against one-hot targets
(``torch.nn.MSELoss``, averaged over samples and outputs), batches of 32.

Every ``record_every`` steps :func:`run_neural_grokking` records train/test accuracy and loss,
the NFA correlation of the first layer through :class:`nfm.tracking.NFATracker`
(:math:`\rho(W_1^T W_1, \mathrm{AGOP}_1^{\alpha})`, Pearson, :math:`\alpha \in \{1/2, 1\}`, with
and without the diagonal; AGOP over the training inputs), and the circulant and Hankel
deviation of the off-diagonal block of :math:`W_1^T W_1`
(:func:`nfm.grokking.measures.feature_block`). Randomness (initialisation, batch order) comes
only from ``torch.Generator`` objects seeded by ``seed``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from nfm.exceptions import NFMInputError
from nfm.features import compute_nfm
from nfm.grokking.data import ModularArithmeticDataset
from nfm.grokking.history import HistoryQueries
from nfm.grokking.measures import feature_block, structure_deviation
from nfm.tracking import NFATracker

logger = logging.getLogger(__name__)

__all__ = [
    "NeuralGrokkingResult",
    "QuadraticActivation",
    "grokking_network",
    "run_neural_grokking",
]

FIRST_LAYER = "0"


class QuadraticActivation(nn.Module):
    r"""Elementwise :math:`\sigma(z) = z^2`."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * z


def grokking_network(
    p: int,
    width: int = 256,
    *,
    generator: torch.Generator | None = None,
    init_scale: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> nn.Sequential:
    r"""The two-layer network :math:`x \mapsto W_2 (W_1 x)^{2}` without biases.

    Layers are named ``"0"`` (:math:`W_1`, :math:`h \times 2p`), ``"1"`` (the activation) and
    ``"2"`` (:math:`W_2`, :math:`p \times h`). Weights are drawn as PyTorch's default for
    ``nn.Linear`` (uniform on :math:`\pm 1/\sqrt{\text{fan-in}}`) from ``generator``, times
    ``init_scale``.
    """
    if int(p) < 3 or int(width) < 1:
        raise NFMInputError(f"p must be >= 3 and width >= 1; got p={p}, width={width}")
    model = nn.Sequential(
        nn.Linear(2 * p, width, bias=False, dtype=dtype),
        QuadraticActivation(),
        nn.Linear(width, p, bias=False, dtype=dtype),
    )
    with torch.no_grad():
        for layer in (model[0], model[2]):
            bound = init_scale / layer.in_features**0.5
            layer.weight.copy_(
                (torch.rand(layer.weight.shape, generator=generator, dtype=dtype) * 2 - 1) * bound
            )
    return model


@dataclass
class NeuralGrokkingResult(HistoryQueries):
    """Outcome of :func:`run_neural_grokking`.

    Attributes
    ----------
    op, p : str, int
    history : list of dict
        One row per record: ``step``, ``epoch`` (fractional), ``train_accuracy``,
        ``test_accuracy``, ``train_loss``, ``test_loss``, the first layer's NFA columns from the
        tracker (``pearson_a0.5``, ``pearson_a0.5_offdiag``, ``pearson_a1``,
        ``pearson_a1_offdiag``), ``nfm_relative_change``, ``circulant_deviation``,
        ``hankel_deviation``, ``structure``, ``structure_deviation``, ``wall_seconds``,
        ``cpu_seconds``.
    nfms : list of (2p, 2p) ndarray
        :math:`W_1^T W_1` at every record (empty when ``keep_nfms=False``).
    model : nn.Sequential
        The trained network.
    tracker : NFATracker
    wall_seconds, cpu_seconds : float
        Totals for the whole run (``time.process_time``: CPU time of this process, all threads).
    """

    op: str
    p: int
    history: list[dict[str, Any]]
    nfms: list[np.ndarray] = field(repr=False)
    model: nn.Module = field(repr=False)
    tracker: NFATracker = field(repr=False)
    wall_seconds: float
    cpu_seconds: float

    def first_epoch_above(self, threshold: float, column: str = "test_accuracy") -> float | None:
        """First recorded epoch whose ``column`` is at least ``threshold`` (``None`` if never)."""
        row = self.first_row_above(threshold, column)
        return None if row is None else float(row["epoch"])

    @property
    def final_test_accuracy(self) -> float:
        """Test accuracy at the last record."""
        return float(self.history[-1]["test_accuracy"])

    def to_frame(self):
        """The history as a pandas DataFrame (requires pandas)."""
        import pandas as pd

        return pd.DataFrame(self.history)


def _evaluate(model: nn.Module, X: torch.Tensor, y: torch.Tensor, Y: torch.Tensor):
    with torch.no_grad():
        out = model(X)
        accuracy = float((out.argmax(dim=1) == y).to(torch.float64).mean())
        loss = float(nn.functional.mse_loss(out, Y))
    return accuracy, loss


def run_neural_grokking(
    data: ModularArithmeticDataset,
    *,
    width: int = 256,
    epochs: int = 100,
    batch_size: int = 32,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.98),
    weight_decay: float = 1.0,
    init_scale: float = 1.0,
    record_every: int | None = None,
    stop_at_test_accuracy: float | None = None,
    extra_epochs: int = 0,
    keep_nfms: bool = True,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    verbose: bool = False,
) -> NeuralGrokkingResult:
    r"""Train :func:`grokking_network` on a modular arithmetic task and track its features.

    Parameters
    ----------
    data : ModularArithmeticDataset
    width : int
        Hidden width :math:`h`.
    epochs : int
        Maximum number of passes over the training set.
    batch_size, lr, betas, weight_decay : optimiser settings (AdamW, MSE loss).
    init_scale : float
        Multiplier of the default initialisation.
    record_every : int, optional
        Record every this many optimiser steps (default: once per epoch); a record is also
        taken before training (step 0).
    stop_at_test_accuracy : float, optional
        Stop ``extra_epochs`` epochs after the first record with at least this test accuracy.
    extra_epochs : int
        Epochs to keep training after the stopping accuracy was reached (to measure the
        features after grokking).
    keep_nfms : bool
        Keep :math:`W_1^T W_1` of every record (for heat maps).
    seed : int
        Seeds two ``torch.Generator`` objects: initialisation and batch order.
    dtype : torch.dtype
        Parameter dtype (float32 by default).
    verbose : bool
        Show a progress bar and log a line per record.
    """
    if not isinstance(data, ModularArithmeticDataset):
        raise NFMInputError(f"data must be a ModularArithmeticDataset; got {type(data).__name__}")
    if int(epochs) < 1 or int(batch_size) < 1:
        raise NFMInputError(f"epochs and batch_size must be >= 1; got {epochs}, {batch_size}")
    init_gen = torch.Generator().manual_seed(int(seed))
    order_gen = torch.Generator().manual_seed(int(seed) + 1)
    X_train = torch.as_tensor(data.X_train, dtype=dtype)
    X_test = torch.as_tensor(data.X_test, dtype=dtype)
    Y_train = torch.as_tensor(data.Y_train, dtype=dtype)
    Y_test = torch.as_tensor(data.Y_test, dtype=dtype)
    y_train = torch.as_tensor(data.y_train)
    y_test = torch.as_tensor(data.y_test)
    n_train = X_train.shape[0]
    steps_per_epoch = -(-n_train // int(batch_size))
    record_every = steps_per_epoch if record_every is None else int(record_every)
    if record_every < 1:
        raise NFMInputError(f"record_every must be >= 1; got {record_every}")

    model = grokking_network(data.p, width, generator=init_gen, init_scale=init_scale, dtype=dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)
    loss_fn = nn.MSELoss()
    tracker = NFATracker(
        model,
        X_train,
        layers=[FIRST_LAYER],
        alphas=(0.5, 1.0),
        kinds=("pearson",),
        exclude_diagonal=(False, True),
        every=record_every,
    )
    history: list[dict[str, Any]] = []
    nfms: list[np.ndarray] = []
    wall_start, cpu_start = time.perf_counter(), time.process_time()

    def record(step: int) -> dict[str, Any]:
        model.eval()
        train_accuracy, train_loss = _evaluate(model, X_train, y_train, Y_train)
        test_accuracy, test_loss = _evaluate(model, X_test, y_test, Y_test)
        rows = tracker.record(
            step,
            force=True,
            epoch=step / steps_per_epoch,
            train_accuracy=train_accuracy,
            test_accuracy=test_accuracy,
            train_loss=train_loss,
            test_loss=test_loss,
        )
        model.train()
        row = dict(rows[0])
        row.pop("layer", None)
        nfm = compute_nfm(model, [FIRST_LAYER])[FIRST_LAYER].detach().to(torch.float64).numpy()
        row.update(structure_deviation(feature_block(nfm, data.p, op=data.op)).as_dict())
        row["wall_seconds"] = time.perf_counter() - wall_start
        row["cpu_seconds"] = time.process_time() - cpu_start
        history.append(row)
        if keep_nfms:
            nfms.append(nfm)
        if verbose:
            logger.info(
                "%s p=%d epoch %.1f: train %.3f test %.3f NFA(a=1/2) %.3f %s dev %.3f",
                data.op,
                data.p,
                row["epoch"],
                train_accuracy,
                test_accuracy,
                row["pearson_a0.5"],
                row["structure"],
                row["structure_deviation"],
            )
        return row

    step = 0
    stop_step: int | None = None
    record(0)
    model.train()
    bar = tqdm(total=int(epochs), disable=not verbose, desc=f"{data.op} mod {data.p}")
    try:
        for _ in range(int(epochs)):
            permutation = torch.randperm(n_train, generator=order_gen)
            for start in range(0, n_train, int(batch_size)):
                batch = permutation[start : start + int(batch_size)]
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(X_train[batch]), Y_train[batch])
                loss.backward()
                optimizer.step()
                step += 1
                if step % record_every == 0:
                    row = record(step)
                    if (
                        stop_step is None
                        and stop_at_test_accuracy is not None
                        and row["test_accuracy"] >= stop_at_test_accuracy
                    ):
                        stop_step = step + int(extra_epochs) * steps_per_epoch
                if stop_step is not None and step >= stop_step:
                    break
            bar.update(1)
            if stop_step is not None and step >= stop_step:
                break
    finally:
        bar.close()
        model.eval()
    if history[-1]["step"] != step:
        record(step)
        model.eval()
    return NeuralGrokkingResult(
        op=data.op,
        p=data.p,
        history=history,
        nfms=nfms,
        model=model,
        tracker=tracker,
        wall_seconds=time.perf_counter() - wall_start,
        cpu_seconds=time.process_time() - cpu_start,
    )
