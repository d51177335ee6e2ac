r"""Kernel grokking: a Recursive Feature Machine learning modular arithmetic.

Everything runs through :class:`nfm.rfm.RFMRegressor` (regression on one-hot targets, the
published setup); the per-iteration measurements are taken by its ``callback``, which sees the
estimator of that iteration. The published setup (Mallinar et al. 2024) is

* Gaussian kernel :math:`k_M(x, z) = \exp(-\lVert x - z\rVert_M^2 / (2 L^2))`, :math:`L = 2.5`;
* ridge :math:`\lambda = 0` (interpolation), float64, Cholesky solver;
* metric :math:`M_{t+1} = G_t^{1/2}` with :math:`G_t` the *centred* AGOP of the predictor over
  all training points, not normalised;
* up to 50 iterations; iteration 0 is the plain kernel (:math:`M_0 = I`).

Per iteration :func:`run_kernel_grokking` records train and test accuracy (argmax of the
predictor), train and test loss (mean squared error against the one-hot targets, averaged over
all entries), the circulant and Hankel deviation of the off-diagonal block of :math:`M_t` (after
the discrete-log reordering for ``mul``/``div``, see :func:`nfm.grokking.measures.feature_block`)
and, once the run is over, the alignment of every :math:`M_t` with the final metric.

Controls: :func:`fixed_metric_scores` fits the same kernel machine with a fixed metric
(``n_iter=0`` with ``initial_metric``): the identity (the plain kernel, which does not
generalise) or :func:`random_circulant_metric` (a random, unlearned metric with the block
structure the RFM learns, which does).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nfm.exceptions import NFMInputError
from nfm.grokking.data import ModularArithmeticDataset, feature_order
from nfm.grokking.history import HistoryQueries
from nfm.grokking.measures import agop_alignment, feature_block, structure_deviation
from nfm.rfm import RFMRegressor

logger = logging.getLogger(__name__)

#: RFMRegressor hyper-parameters of the published kernel grokking setup.
PUBLISHED_RFM_PARAMS: dict[str, Any] = {
    "kernel": "gaussian",
    "bandwidth": 2.5,
    "reg": 0.0,
    "metric_power": 0.5,
    "metric_normalization": "none",
    "centered": True,
    "agop_sample_size": None,
    "selection": "last",
    "solver": "cholesky",
    "dtype": "float64",
}

__all__ = [
    "PUBLISHED_RFM_PARAMS",
    "KernelGrokkingResult",
    "fixed_metric_scores",
    "grokking_rfm",
    "random_circulant_metric",
    "run_kernel_grokking",
]


def grokking_rfm(n_iter: int = 50, **overrides: Any) -> RFMRegressor:
    """An :class:`~nfm.rfm.RFMRegressor` with :data:`PUBLISHED_RFM_PARAMS`.

    Parameters
    ----------
    n_iter : int
        Number of metric updates (iterations 0..n_iter are fitted).
    **overrides
        Any other RFMRegressor parameter (e.g. ``bandwidth``, ``callback``, ``random_state``).
    """
    return RFMRegressor(**{**PUBLISHED_RFM_PARAMS, "n_iter": n_iter, **overrides})


def _scores(estimator: RFMRegressor, X: np.ndarray, y: np.ndarray, Y: np.ndarray):
    prediction = np.asarray(estimator.predict(X), dtype=np.float64)
    accuracy = float(np.mean(np.argmax(prediction, axis=1) == y))
    loss = float(np.mean((prediction - Y) ** 2))
    return accuracy, loss


def _block_row(M: np.ndarray, data: ModularArithmeticDataset) -> dict[str, Any]:
    block = feature_block(M, data.p, op=data.op, block="ab")
    if not np.any(block):
        nan = float("nan")
        return {
            "circulant_deviation": nan,
            "hankel_deviation": nan,
            "structure": "",
            "structure_deviation": nan,
        }
    return structure_deviation(block).as_dict()


@dataclass
class KernelGrokkingResult(HistoryQueries):
    """Outcome of :func:`run_kernel_grokking`.

    Attributes
    ----------
    op, p : str, int
        The task.
    history : list of dict
        One row per iteration: ``iteration``, ``train_accuracy``, ``test_accuracy``,
        ``train_loss``, ``test_loss``, ``circulant_deviation``, ``hankel_deviation``,
        ``structure`` (the smaller one), ``structure_deviation``, ``alignment`` (cosine of
        :math:`M_t` with the final metric), ``seconds`` (wall time since the start of the fit),
        ``cpu_seconds`` (CPU time of this process since then, all threads).
    metrics : list of (2p, 2p) ndarray
        :math:`M_t` for every recorded iteration (empty when ``keep_metrics=False``).
    estimator : RFMRegressor
        The fitted estimator (its ``history_`` has the per-iteration solve and AGOP times).
    seconds, cpu_seconds : float
        Wall and CPU time (``time.process_time``, all threads) of the whole fit, measurements
        included.
    """

    op: str
    p: int
    history: list[dict[str, Any]]
    metrics: list[np.ndarray] = field(repr=False)
    estimator: RFMRegressor = field(repr=False)
    seconds: float
    cpu_seconds: float = float("nan")

    def first_iteration_above(self, threshold: float, column: str = "test_accuracy") -> int | None:
        """First iteration whose ``column`` is at least ``threshold`` (``None`` if never)."""
        row = self.first_row_above(threshold, column)
        return None if row is None else int(row["iteration"])

    def seconds_to(self, threshold: float, column: str = "test_accuracy") -> float | None:
        """Wall time until ``column`` first reached ``threshold`` (``None`` if never)."""
        row = self.first_row_above(threshold, column)
        return None if row is None else float(row["seconds"])

    @property
    def final_test_accuracy(self) -> float:
        """Test accuracy at the last recorded iteration."""
        return float(self.history[-1]["test_accuracy"])

    def to_frame(self):
        """The history as a pandas DataFrame (requires pandas)."""
        import pandas as pd

        return pd.DataFrame(self.history)


def run_kernel_grokking(
    data: ModularArithmeticDataset,
    *,
    n_iter: int = 50,
    stop_at_test_accuracy: float | None = None,
    keep_metrics: bool = True,
    random_state: int | None = 0,
    verbose: bool = False,
    **rfm_params: Any,
) -> KernelGrokkingResult:
    r"""Fit the published grokking RFM and measure every iteration.

    Parameters
    ----------
    data : ModularArithmeticDataset
        From :func:`nfm.grokking.data.modular_arithmetic_dataset`.
    n_iter : int
        Maximum number of metric updates.
    stop_at_test_accuracy : float, optional
        Stop once the test accuracy reaches this value (a convenience for demonstrations;
        the test set is not used by the estimator otherwise). ``None``: run all iterations.
    keep_metrics : bool
        Keep every :math:`M_t` (needed for heat maps; :math:`(2p)^2` floats per iteration).
    random_state : int, optional
        Passed to the estimator (the published setup uses all training points for the AGOP,
        so the run is deterministic anyway).
    verbose : bool
        Log one line per iteration at INFO level.
    **rfm_params
        Overrides of :data:`PUBLISHED_RFM_PARAMS` (e.g. ``bandwidth=3.0``, ``kernel="laplace"``).

    Returns
    -------
    KernelGrokkingResult
    """
    if not isinstance(data, ModularArithmeticDataset):
        raise NFMInputError(f"data must be a ModularArithmeticDataset; got {type(data).__name__}")
    if "callback" in rfm_params:
        raise NFMInputError("run_kernel_grokking sets the callback itself; do not pass one")
    history: list[dict[str, Any]] = []
    metrics: list[np.ndarray] = []
    Y_test = data.Y_test
    Y_train = data.Y_train
    start, cpu_start = time.perf_counter(), time.process_time()

    def record(estimator: RFMRegressor, iteration: int) -> bool:
        M = np.asarray(estimator.M_, dtype=np.float64)
        train_accuracy, train_loss = _scores(estimator, data.X_train, data.y_train, Y_train)
        test_accuracy, test_loss = _scores(estimator, data.X_test, data.y_test, Y_test)
        row = {
            "iteration": iteration,
            "train_accuracy": train_accuracy,
            "test_accuracy": test_accuracy,
            "train_loss": train_loss,
            "test_loss": test_loss,
            **_block_row(M, data),
            "seconds": time.perf_counter() - start,
            "cpu_seconds": time.process_time() - cpu_start,
        }
        history.append(row)
        metrics.append(M.copy())
        if verbose:
            logger.info(
                "%s p=%d iteration %d: train %.3f test %.3f circ %.3f hankel %.3f (%.1f s)",
                data.op,
                data.p,
                iteration,
                train_accuracy,
                test_accuracy,
                row["circulant_deviation"],
                row["hankel_deviation"],
                row["seconds"],
            )
        return stop_at_test_accuracy is not None and test_accuracy >= stop_at_test_accuracy

    estimator = grokking_rfm(
        n_iter=n_iter, callback=record, random_state=random_state, **rfm_params
    )
    estimator.fit(data.X_train, data.Y_train)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    estimator.callback = None  # keep the fitted estimator picklable and free of the closure
    final = metrics[-1]
    for row, M in zip(history, metrics, strict=True):
        row["alignment"] = agop_alignment(M, final)
    return KernelGrokkingResult(
        op=data.op,
        p=data.p,
        history=history,
        metrics=metrics if keep_metrics else [],
        estimator=estimator,
        seconds=seconds,
        cpu_seconds=cpu_seconds,
    )


def random_circulant_metric(
    op: str,
    p: int,
    *,
    seed: int | None = 0,
    structure: str = "auto",
    scale: float = 0.5,
) -> np.ndarray:
    r"""A random (not learned) metric with the block structure a grokking RFM learns.

    In the feature order of ``op`` (:func:`~nfm.grokking.data.feature_order`, size
    :math:`n = p` or :math:`p - 1`)

    .. math:: M = s \begin{pmatrix} P & B \\ B^T & P \end{pmatrix}, \qquad
              P = I_n - \tfrac1n \mathbf{1}\mathbf{1}^T, \qquad
              B_{ij} = c_{(j - i) \bmod n},

    where :math:`c` has a random unit-modulus spectrum, :math:`\hat c_k = e^{i\theta_k}`,
    :math:`\theta_k \sim U[0, 2\pi)` (Hermitian, so :math:`c` is real; :math:`\hat c_0 = 0`).
    Per frequency the :math:`2 \times 2` block :math:`\begin{pmatrix}1 & \hat c_k\\ \bar{\hat
    c}_k & 1\end{pmatrix}` has eigenvalues 0 and 2, so :math:`M` is PSD; this is the spectrum
    the learned metric approaches (diagonal blocks near :math:`P`, off-diagonal spectrum of
    equal modulus). With ``structure="hankel"`` the columns of :math:`B` are reversed
    (:math:`j \to -j \bmod n`). ``"auto"`` picks what the RFM learns: circulant for ``add`` and
    ``mul``, Hankel for ``sub`` and ``div``. For ``mul``/``div`` the residue 0 gets a diagonal
    entry :math:`s` in each diagonal block and no coupling.

    Parameters
    ----------
    op : {"add", "sub", "mul", "div"}
    p : int
        Prime modulus (any p >= 3 for add/sub).
    seed : int, optional
        Seed of ``numpy.random.default_rng`` for the phases.
    structure : {"auto", "circulant", "hankel"}
    scale : float
        :math:`s > 0`, relative to the kernel bandwidth.

    Returns
    -------
    (2p, 2p) float64 ndarray, symmetric PSD.
    """
    if structure not in ("auto", "circulant", "hankel"):
        raise NFMInputError(f"structure must be 'auto', 'circulant' or 'hankel'; got {structure!r}")
    if not np.isfinite(scale) or scale <= 0:
        raise NFMInputError(f"scale must be a positive number; got {scale!r}")
    order = feature_order(op, p)
    p = int(p)
    n = len(order)
    if structure == "auto":
        structure = "hankel" if op in ("sub", "div") else "circulant"
    rng = np.random.default_rng(seed)
    k = np.arange(n)
    spectrum = np.exp(1j * rng.uniform(0.0, 2.0 * np.pi, size=n))
    half = k[(k > 0) & (k < (n + 1) // 2)]
    spectrum[(-half) % n] = np.conj(spectrum[half])
    spectrum[0] = 0.0
    if n % 2 == 0:
        spectrum[n // 2] = 1.0 if rng.uniform() < 0.5 else -1.0
    c = np.real(np.fft.ifft(spectrum))
    coupling = c[(k[None, :] - k[:, None]) % n]
    if structure == "hankel":
        coupling = coupling[:, (-k) % n]
    centering = np.eye(n) - 1.0 / n

    def embed(block: np.ndarray, residue_zero: float) -> np.ndarray:
        out = np.zeros((p, p))
        out[np.ix_(order, order)] = block
        if n < p:
            out[0, 0] = residue_zero
        return out

    diagonal = embed(centering, 1.0)
    off = embed(coupling, 0.0)
    metric = scale * np.block([[diagonal, off], [off.T, diagonal]])
    return 0.5 * (metric + metric.T)


def fixed_metric_scores(
    data: ModularArithmeticDataset,
    metric: np.ndarray | None = None,
    **rfm_params: Any,
) -> dict[str, float]:
    """Train/test accuracy and loss of the kernel machine with a fixed metric (no learning).

    Fits :func:`grokking_rfm` with ``n_iter=0`` and ``initial_metric=metric`` (identity when
    ``None``: the plain Gaussian kernel, i.e. iteration 0 of the RFM).

    Returns
    -------
    dict with ``train_accuracy``, ``test_accuracy``, ``train_loss``, ``test_loss``.
    """
    estimator = grokking_rfm(n_iter=0, initial_metric=metric, **rfm_params)
    estimator.fit(data.X_train, data.Y_train)
    train_accuracy, train_loss = _scores(estimator, data.X_train, data.y_train, data.Y_train)
    test_accuracy, test_loss = _scores(estimator, data.X_test, data.y_test, data.Y_test)
    return {
        "train_accuracy": train_accuracy,
        "test_accuracy": test_accuracy,
        "train_loss": train_loss,
        "test_loss": test_loss,
    }
