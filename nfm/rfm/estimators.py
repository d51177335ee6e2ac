r"""Recursive Feature Machines as scikit-learn estimators: RFMRegressor and RFMClassifier.

An RFM alternates two steps (Radhakrishnan, Beaglehole, Pandit, Belkin, Science 2024):

1. fit kernel ridge regression in the metric :math:`M_t`:
   :math:`f(x) = \sum_i a_i k_{M_t}(x, x_i)`, :math:`A = (K_{M_t} + \lambda I)^{-1} Y`;
2. compute the AGOP of the predictor over a random sample of ``m`` training points,
   :math:`G = \frac1m \sum_x \sum_c \nabla f_c(x) \nabla f_c(x)^T` (optionally centred, optionally
   only its diagonal) and set :math:`M_{t+1} = \mathrm{normalise}(G^{p})` with
   ``p = metric_power``.

Iteration 0 is the plain kernel machine in the starting metric (the identity, or
``initial_metric``). The iteration (and ``reg``, when a grid is given) is selected without a
user validation set: ``selection="loo"`` uses closed-form leave-one-out residuals
:math:`r_i = a_i / [(K + \lambda I)^{-1}]_{ii}` from the same Cholesky factorisation,
``"holdout"`` an internal split (then refits on all rows), ``"last"`` keeps the final iteration.

The estimators are thin: they check the parameters and the data, run the pure loop
:func:`nfm.rfm.fit.fit_path`, and record the result. ``fit`` is atomic: every fitted attribute
is assigned at its very end, so a failing ``fit`` leaves a previously fitted estimator exactly
as it was. The fitted state lives on the CPU (numpy arrays, or CPU tensors when fitted on
tensors), so an estimator fitted on a GPU unpickles anywhere; ``predict`` moves it to
``device`` for each call and evaluates the predictor in float64, so that a row's prediction
does not depend on the other rows of the batch (float32 matrix products round differently for
different batch shapes).

Published conventions:

* Science code / xRFM: ``metric_power=1, metric_normalization="max"``, Laplace kernel,
  bandwidth 10, one ``reg``;
* grokking code: ``kernel="gaussian", bandwidth=2.5, reg=0, metric_power=0.5,
  metric_normalization="none", centered=True, agop_sample_size=None, selection="last",
  dtype="float64"``.

Defaults (Laplace kernel, bandwidth 10, 5 iterations, ``metric_power=0.5`` with
``metric_normalization="max"``, ``reg`` chosen from :data:`DEFAULT_REG_GRID` by the selection
rule, float32) were chosen on the validation parts of the tabular benchmark: among 14 candidate
defaults they had the best mean validation rank on both the classification and the regression
suite (``benchmarks/results/tabular/defaults/study_summary.csv``; docs/tabular-benchmark.md).
That study selected by leave-one-out up to 6,000 rows; now ``solver="auto"`` switches to
conjugate gradients (the whole reg grid in one block run) and holdout selection above
:data:`nfm.solvers.AUTO_CHOLESKY_MAX_N` = 1,000 rows (docs/rfm.md, "Why these defaults").
"""

from __future__ import annotations

import copy
import logging
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils import TransformerTags
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d

from nfm._utils.arrays import ArrayKind, array_kind, check_finite
from nfm.exceptions import NFMInputError, NumericalWarning
from nfm.kernels import make_kernel
from nfm.rfm.bandwidth import median_bandwidth
from nfm.rfm.calibration import fit_temperature
from nfm.rfm.fit import (
    FitPath,
    FitSettings,
    IterationRecord,
    fit_path,
    leave_one_out_values,
    refit,
)
from nfm.rfm.large_n import choose_leaf_size
from nfm.rfm.metric import MetricUpdate, initial_metric, metric_root
from nfm.rfm.params import DEFAULT_REG_GRID, CheckedParams, check_hyperparameters, resolve_device
from nfm.rfm.partition import partitioned_state
from nfm.rfm.scoring import Scores, classification_scores, regression_scores
from nfm.rfm.selection import (
    SELECTION_CG_TOL,
    Holdout,
    LastIteration,
    LeaveOneOut,
    SelectionRule,
    holdout_split,
    stratified_sample,
)
from nfm.rfm.validation import FitData, numpy_to_tensor, validate_fit_data, validate_predict_X
from nfm.solvers import resolve_solver

__all__ = ["DEFAULT_REG_GRID", "RFMClassifier", "RFMRegressor"]

logger = logging.getLogger(__name__)

#: the dtype in which predictions are evaluated from the fitted state (see the module docstring)
PREDICT_DTYPE = torch.float64


def _output_like(out: torch.Tensor, X: Any) -> Any:
    """``out`` as the kind of array ``X`` is (on ``X``'s device), in ``X``'s float dtype.

    The working dtype is internal: float64 data gets float64 predictions even when the
    estimator computes in float32, as scikit-learn users expect; other dtypes get float64.
    """
    dtype = getattr(X, "dtype", None)
    if isinstance(X, torch.Tensor):
        target = dtype if dtype in (torch.float32, torch.float64) else torch.float64
        return out.detach().to(device=X.device, dtype=target)
    target = torch.float32 if dtype == np.float32 else torch.float64
    return out.detach().to(target).cpu().numpy()


def _stored(t: torch.Tensor, kind: ArrayKind) -> Any:
    """A CPU copy of ``t`` that owns its memory: numpy, or a CPU tensor for ``kind="torch"``."""
    t = t.detach().to("cpu", copy=True)
    return t if kind == "torch" else t.numpy()


@dataclass(frozen=True)
class _Targets:
    """Encoded targets: the regression matrix, class indices (classifier) and fitted facts."""

    Y: torch.Tensor
    labels: np.ndarray | None
    attributes: dict[str, Any]


@dataclass(frozen=True)
class _Split:
    """What the loop fits on: rows, targets, selection rule, AGOP sample rows."""

    X: torch.Tensor
    Y: torch.Tensor
    rule: SelectionRule
    train_rows: torch.Tensor | None  # rows of the holdout training part (None: all rows)
    agop_rows: np.ndarray


class _BaseRFM(BaseEstimator, ABC):
    """Parameters, validation, the call of the fit loop and prediction; see RFMRegressor."""

    _is_classifier = False
    #: private fitted attributes (removed with the public ones before a new fitted state)
    _fitted_private: tuple[str, ...] = ()

    def __init__(
        self,
        kernel: str = "laplace",
        bandwidth: float | str = 10.0,
        exponent: float = 1.0,
        kernel_power: float = 1.0,
        reg: float | Sequence[float] = DEFAULT_REG_GRID,
        n_iter: int = 5,
        metric_power: float = 0.5,
        metric_normalization: str = "max",
        diag: bool = False,
        centered: bool = False,
        agop_sample_size: int | None = 20000,
        solver: str = "auto",
        selection: str = "loo",
        validation_fraction: float = 0.2,
        initial_metric: Any = None,
        callback: Callable[[Any, int], bool | None] | None = None,
        random_state: int | np.random.Generator | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        block_size: int | None = None,
        verbose: bool = False,
        leaf_size: int | str | None = "auto",
        memory_limit: float | str | None = "auto",
    ) -> None:
        self.kernel = kernel
        self.bandwidth = bandwidth
        self.exponent = exponent
        self.kernel_power = kernel_power
        self.reg = reg
        self.n_iter = n_iter
        self.metric_power = metric_power
        self.metric_normalization = metric_normalization
        self.diag = diag
        self.centered = centered
        self.agop_sample_size = agop_sample_size
        self.solver = solver
        self.selection = selection
        self.validation_fraction = validation_fraction
        self.initial_metric = initial_metric
        self.callback = callback
        self.random_state = random_state
        self.device = device
        self.dtype = dtype
        self.block_size = block_size
        self.verbose = verbose
        self.leaf_size = leaf_size
        self.memory_limit = memory_limit

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        # transform(X) = X M^(1/2) makes the estimators usable as a Pipeline step
        tags.transformer_tags = TransformerTags(preserves_dtype=["float64"])
        return tags

    # ------------------------------------------------------------------ task-specific parts
    @abstractmethod
    def _encode_targets(self, y: np.ndarray, params: CheckedParams) -> _Targets:
        """Targets as the float matrix the ridge systems solve for, and their decoding."""

    def _scorer(self) -> Callable[[torch.Tensor, torch.Tensor], Scores]:
        return classification_scores if self._is_classifier else regression_scores

    def _temperature(
        self, path: FitPath, X: torch.Tensor, Y: torch.Tensor, settings: FitSettings
    ) -> dict[str, float]:
        return {}

    # ------------------------------------------------------------------ fitted state
    def _fitted_attribute_names(self) -> list[str]:
        return [
            k
            for k in vars(self)
            if (k.endswith("_") and not k.startswith("__")) or k in self._fitted_private
        ]

    def _assign_fitted(self, state: dict[str, Any]) -> None:
        """Replace the whole fitted state by ``state`` (plain attribute stores, cannot fail)."""
        for key in self._fitted_attribute_names():
            delattr(self, key)
        for key, value in state.items():
            setattr(self, key, value)

    def _state(
        self,
        *,
        data: FitData,
        targets: _Targets,
        X_fit: torch.Tensor,
        M: torch.Tensor,
        coef: torch.Tensor,
        records: list[IterationRecord],
        prefix: str | None,
        extra: dict[str, Any],
    ) -> dict[str, Any]:
        """The fitted attributes of a predictor (CPU copies, the kind of array ``X`` was)."""
        kind = data.kind
        diag = torch.diagonal(M).detach().to("cpu", torch.float64).clamp(min=0)
        total = float(diag.sum())
        importances = diag / total if total > 0 else torch.full_like(diag, 1.0 / diag.numel())
        state = {
            "M_": _stored(M, kind),
            "dual_coef_": _stored(coef, kind),
            "X_fit_": _stored(X_fit, kind),
            "history_": [r.history_row(prefix) for r in records],
            "feature_importances_": importances.numpy(),
            "n_features_in_": data.n_features_in,
            **targets.attributes,
            **extra,
        }
        if data.feature_names_in is not None:
            state["feature_names_in_"] = data.feature_names_in
        return state

    # ------------------------------------------------------------------ fit
    def fit(self, X: Any, y: Any) -> _BaseRFM:
        """Fit the RFM (atomically: on an error the estimator is left as it was).

        Parameters
        ----------
        X : (n_samples, n_features) array-like or torch.Tensor
        y : (n_samples,) or (n_samples, n_outputs) array-like or tensor
            Targets (class labels for the classifier).

        Returns
        -------
        self

        Raises
        ------
        NFMInputError
            For bad parameters or data (before any computation).
        """
        name = type(self).__name__
        params = check_hyperparameters(self)
        data = validate_fit_data(
            self,
            X,
            y,
            dtype=params.dtype,
            device=params.device,
            y_numeric=not self._is_classifier,
        )
        targets = self._encode_targets(data.y, params)
        leaf_size = choose_leaf_size(
            self, *data.X.shape, targets.Y.shape[1], dtype=params.dtype, device=params.device
        )
        if leaf_size is not None:  # the AGOP-split tree (nfm.rfm.partition)
            self._assign_fitted(partitioned_state(self, data, targets, leaf_size))
            return self
        M0 = initial_metric(
            self.initial_metric,
            data.X.shape[1],
            dtype=params.dtype,
            device=params.device,
            owner=name,
        )
        callback = self.callback  # read once

        rng = np.random.default_rng(self.random_state)
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        if isinstance(self.bandwidth, str):
            p = self.exponent if self.kernel in ("generalized_laplace", "product_laplace") else 2
            bandwidth = median_bandwidth(data.X, M0, rng, p=float(p))
        else:
            bandwidth = float(self.bandwidth)
        split = self._split(data.X, targets, rng)
        settings = self._settings(params, bandwidth, split)
        common = {
            "bandwidth_": bandwidth,
            "kernel_": settings.kernel,
            "solver_": settings.solver,
            "selection_": settings.selection.name,
        }
        records: list[IterationRecord] = []

        def on_iteration(record: IterationRecord, coef: torch.Tensor) -> bool:
            records.append(record)
            if self.verbose:
                row = record.history_row(settings.selection.history_prefix)
                row.pop("scores_by_reg", None)
                logger.info("%s iteration %d: %s", name, record.iteration, row)
            if callback is None:
                return False
            snapshot = self._snapshot(
                data,
                targets,
                split.X,
                record,
                coef,
                records,
                common,
                settings.selection.history_prefix,
            )
            return bool(callback(snapshot, record.iteration))

        path = fit_path(
            split.X,
            split.Y,
            M0,
            settings,
            agop_rows=split.agop_rows,
            generator=generator,
            on_iteration=on_iteration,
        )
        if path.stop_reason == "zero_agop":
            warnings.warn(
                f"{name}: the AGOP is zero at iteration {path.records[-1].iteration} (the "
                "predictor is constant); stopping the iterations with the current metric",
                NumericalWarning,
                stacklevel=2,
            )
        best = path.best
        coef = best.coef
        if split.train_rows is not None:  # refit the selected (metric, reg) on all rows
            # conjugate gradient starts from the holdout solution (0 on the held-out rows)
            initial = torch.zeros_like(targets.Y)
            initial[split.train_rows] = coef.to(targets.Y.dtype)
            solution = refit(
                data.X, targets.Y, best.M, best.reg, settings, initial=initial, generator=generator
            )
            coef = solution.coef
        extra = {
            **common,
            "n_iter_": path.n_updates,
            "best_iter_": best.iteration,
            "reg_": best.reg,
            **self._temperature(path, data.X, targets.Y, settings),
        }
        state = self._state(
            data=data,
            targets=targets,
            X_fit=data.X,
            M=best.M,
            coef=coef,
            records=path.records,
            prefix=settings.selection.history_prefix,
            extra=extra,
        )
        self._assign_fitted(state)  # the only place fit changes the estimator
        return self

    def _split(self, X: torch.Tensor, targets: _Targets, rng: np.random.Generator) -> _Split:
        """The rows the loop fits on, its selection rule and its AGOP sample rows."""
        n = X.shape[0]
        Y, labels = targets.Y, targets.labels
        selection = self.selection
        if selection == "loo" and resolve_solver(self.solver, n) == "cg":
            logger.info(
                "%s: leave-one-out needs the Cholesky factorisation; the iterative solver is "
                "used (n=%d), so the iteration is selected on an internal holdout split",
                type(self).__name__,
                n,
            )
            selection = "holdout"
        train_rows = None
        if selection == "holdout":
            train_idx, val_idx = holdout_split(
                n, self.validation_fraction, labels, rng, type(self).__name__
            )
            train_rows = torch.as_tensor(train_idx, device=X.device)
            val_rows = torch.as_tensor(val_idx, device=X.device)
            rule: SelectionRule = Holdout(X[val_rows], Y[val_rows])
            X, Y = X[train_rows], Y[train_rows]
            labels = labels[train_idx] if labels is not None else None
        else:
            rule = LeaveOneOut() if selection == "loo" else LastIteration()
        size = X.shape[0] if self.agop_sample_size is None else self.agop_sample_size
        agop_rows = stratified_sample(labels, X.shape[0], size, rng)
        return _Split(X=X, Y=Y, rule=rule, train_rows=train_rows, agop_rows=agop_rows)

    def _settings(self, params: CheckedParams, bandwidth: float, split: _Split) -> FitSettings:
        # the holdout iterations only feed scores and AGOPs: a looser CG tolerance
        holdout = isinstance(split.rule, Holdout)
        cg_tol = SELECTION_CG_TOL[split.X.dtype == torch.float64] if holdout else None
        return FitSettings(
            kernel=make_kernel(
                self.kernel, bandwidth, exponent=self.exponent, kernel_power=self.kernel_power
            ),
            regs=params.regs,
            n_iter=int(self.n_iter),
            metric_update=MetricUpdate(
                power=float(self.metric_power),
                normalization=self.metric_normalization,
                diag=bool(self.diag),
            ),
            selection=split.rule,
            scorer=self._scorer(),
            solver=resolve_solver(self.solver, split.X.shape[0]),
            centered=bool(self.centered),
            block_size=self.block_size,
            cg_tol=cg_tol,
        )

    def _snapshot(
        self,
        data: FitData,
        targets: _Targets,
        X_fit: torch.Tensor,
        record: IterationRecord,
        coef: torch.Tensor,
        records: list[IterationRecord],
        common: dict[str, Any],
        prefix: str | None,
    ) -> _BaseRFM:
        """A shallow copy of the estimator holding one iteration's predictor (for callbacks)."""
        snapshot = copy.copy(self)
        extra = {
            **common,
            "n_iter_": record.iteration,
            "best_iter_": record.iteration,
            "reg_": record.reg,
            **({"temperature_": 1.0} if self._is_classifier else {}),
        }
        snapshot._assign_fitted(
            self._state(
                data=data,
                targets=targets,
                X_fit=X_fit,
                M=record.M,
                coef=coef,
                records=records,
                prefix=prefix,
                extra=extra,
            )
        )
        return snapshot

    # ------------------------------------------------------------------ prediction
    def _predict_inputs(self, X: Any) -> tuple[torch.Tensor, torch.device]:
        check_is_fitted(self, "n_features_in_")
        device = resolve_device(self.device)
        return validate_predict_X(self, X, dtype=PREDICT_DTYPE, device=device), device

    @staticmethod
    def _fitted_tensor(value: Any, device: torch.device) -> torch.Tensor:
        """A fitted CPU array on ``device`` in :data:`PREDICT_DTYPE` (moved for this call only)."""
        return torch.as_tensor(value).to(device=device, dtype=PREDICT_DTYPE)

    def _decision_values(self, X: Any) -> torch.Tensor:
        """Kernel predictor values ``(n, c)`` in float64 on ``device``."""
        Xt, device = self._predict_inputs(X)
        if getattr(self, "partition_", None) is not None:
            return self.partition_.decision_values(Xt)
        return self.kernel_.predictor_values(
            Xt,
            self._fitted_tensor(self.X_fit_, device),
            self._fitted_tensor(self.M_, device),
            self._fitted_tensor(self.dual_coef_, device),
            block_size=self.block_size,
        )

    def fit_transform(self, X: Any, y: Any) -> Any:
        """``fit(X, y)`` then ``transform(X)``."""
        return self.fit(X, y).transform(X)

    def transform(self, X: Any) -> Any:
        r"""Learned features :math:`x \mapsto x M^{1/2}` (rows of ``X`` times ``M_^(1/2)``).

        The Euclidean distance between transformed points is the Mahalanobis distance
        :math:`\lVert x - z\rVert_M` that the kernel uses.
        """
        Xt, device = self._predict_inputs(X)
        return _output_like(Xt @ metric_root(self._fitted_tensor(self.M_, device)), X)


class RFMRegressor(RegressorMixin, _BaseRFM):
    r"""Recursive Feature Machine regressor (kernel ridge regression in a learned metric).

    Parameters
    ----------
    kernel : {"laplace", "gaussian", "generalized_laplace", "product_laplace"}
        See :mod:`nfm.kernels`.
    bandwidth : float or "median"
        :math:`L`; ``"median"``: the median pairwise distance (in the starting metric) over up
        to 1,000 random training rows, stored in ``bandwidth_``.
    exponent : float
        ``p`` of the generalised / product Laplace kernel.
    kernel_power : float
        ``q`` of the generalised Laplace kernel.
    reg : float or sequence of floats
        Ridge :math:`\lambda \ge 0` (0 = interpolation); a sequence is a grid searched by the
        selection rule at every iteration. Default :data:`DEFAULT_REG_GRID`.
    n_iter : int
        Number of metric updates (iterations 0..n_iter are fitted; 0 = plain kernel).
    metric_power : float
        :math:`M = \mathrm{normalise}(G^{p})`: 1 (Science/xRFM), 0.5 (grokking code; the
        default, chosen on the tabular benchmark's validation parts).
    metric_normalization : {"max", "none", "trace"}
        Divide by the largest entry ("max", Science code and xRFM), leave as is ("none",
        grokking code), or scale to trace ``d`` ("trace").
    diag : bool
        Keep only the diagonal of the AGOP.
    centered : bool
        Subtract the mean gradient before the outer products (centred AGOP).
    agop_sample_size : int or None
        Number of random training rows (stratified by class for the classifier) over which the
        AGOP is averaged; ``None`` = all rows.
    solver : {"auto", "cholesky", "cg"}
        ``"auto"``: Cholesky up to :data:`nfm.solvers.AUTO_CHOLESKY_MAX_N` rows, preconditioned
        conjugate gradient above.
    selection : {"loo", "holdout", "last"}
        How the iteration (and reg) is chosen: closed-form leave-one-out (needs the Cholesky
        solver; with the iterative solver, i.e. by default above 1,000 rows, it falls back to
        "holdout", where the whole reg grid is solved in one block CG run), an internal split of
        ``validation_fraction`` (the chosen metric and reg are then refitted on all rows), or
        the last iteration.
    validation_fraction : float
        Size of the internal holdout split.
    initial_metric : (d, d) or (d,) array, optional
        Starting metric (default identity). With ``n_iter=0`` the estimator is a fixed-metric
        kernel machine.
    callback : callable, optional
        ``callback(snapshot, iteration)`` after each predictor fit, where ``snapshot`` is a
        copy of the estimator holding that iteration's predictor (``M_``, ``dual_coef_``,
        ``X_fit_``, ``history_`` so far; ``predict`` works). The estimator being fitted only
        changes when ``fit`` returns. Return ``True`` to stop.
    random_state : int, numpy Generator or None
        Seeds the AGOP sample, the holdout split and the preconditioner's columns.
    device : str
        ``"cpu"`` or ``"cuda"``: where ``fit`` and each ``predict`` compute.
    dtype : {"float64", "float32"}
        Working dtype of ``fit`` (default float32: it halves memory and roughly doubles speed;
        use float64 for interpolation, ``reg=0``, or ill-conditioned Gram matrices).
        Predictions are evaluated in float64 from the fitted state.
    block_size : int, optional
        Rows per block for Gram / gradient blocks (default: about 4M entries per block).
    verbose : bool
        Log per-iteration metrics at INFO level.

    Attributes
    ----------
    M_ : (d, d) array
        The selected metric.
    dual_coef_ : (n, c) array
        Coefficients :math:`A` of the selected predictor.
    X_fit_ : (n, d) array
        Training points.
    n_iter_ : int
        Metric updates performed (may be less than ``n_iter`` when the callback stops).
    best_iter_ : int
        Selected iteration (0 = plain kernel).
    reg_ : float
        Selected ridge.
    history_ : list of dict
        Per iteration: ``iteration``, ``reg``, ``train_mse``, ``train_score``, ``loo_mse`` /
        ``loo_score`` or ``val_mse`` / ``val_score`` (when selecting), ``scores_by_reg``,
        ``jitter``, ``cg_passes``, ``near_duplicate_pairs`` (training pairs ``i < j`` closer
        than the rounding threshold in :math:`M_t`, whose gradient terms are dropped; see
        :mod:`nfm.kernels.distances`), ``seconds``, ``agop_seconds``.
    feature_importances_ : (d,) array
        :math:`\mathrm{diag}(M) / \mathrm{trace}(M)`.
    bandwidth_ : float
    kernel_ : nfm.kernels.Kernel
    solver_, selection_ : str
        The solver and selection rule actually used.
    n_outputs_ : int
        Number of target columns.

    The array attributes are numpy arrays, or CPU tensors when ``fit`` was given a tensor.
    """

    _is_classifier = False
    _fitted_private = ("_y_ndim",)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags

    def _encode_targets(self, y: np.ndarray, params: CheckedParams) -> _Targets:
        y = np.asarray(y, dtype=np.float64)
        check_finite(torch.from_numpy(np.array(y)), "y")
        Y = y.reshape(y.shape[0], -1)
        return _Targets(
            Y=numpy_to_tensor(Y, params.dtype, params.device),
            labels=None,
            attributes={"n_outputs_": Y.shape[1], "_y_ndim": y.ndim},
        )

    def predict(self, X: Any) -> Any:
        """Predicted targets, shape ``(n,)`` or ``(n, n_outputs)`` like the ``y`` given to fit."""
        out = self._decision_values(X)
        if self._y_ndim == 1:
            out = out[:, 0]
        return _output_like(out, X)


class RFMClassifier(ClassifierMixin, _BaseRFM):
    r"""Recursive Feature Machine classifier (kernel ridge on one-hot targets, learned metric).

    Parameters are those of :class:`RFMRegressor`. The labels (numbers or strings, binary or
    multiclass) are one-hot encoded (one column per class, also for two classes). Selection
    maximises the leave-one-out / holdout accuracy (ties: lower mean squared error).

    Probabilities: :math:`p(x) = \mathrm{softmax}(f(x) / T)` with one temperature ``T``
    (``temperature_``) fitted by minimising the log loss of out-of-sample decision values: the
    leave-one-out values of the selected predictor (Cholesky solver) or the internal holdout
    values. When neither exists (iterative solver with ``selection="last"``, as in the leaves
    of the large-n tree above 1,000 rows) the training decision values are used and the
    probabilities are over-confident; the tree has no single ``temperature_`` (``None``).

    Attributes
    ----------
    classes_ : (k,) array
        Class labels.
    temperature_ : float
        The fitted softmax temperature.
    (others as in :class:`RFMRegressor`)
    """

    _is_classifier = True

    def _encode_targets(self, y: np.ndarray, params: CheckedParams) -> _Targets:
        name = type(self).__name__
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if y.ndim != 1:
            raise NFMInputError(f"{name} expects a 1-D array of labels; got y of shape {y.shape}")
        try:
            check_classification_targets(y)
        except ValueError as exc:
            raise NFMInputError(str(exc)) from None
        classes, idx = np.unique(y, return_inverse=True)
        if classes.size < 2:
            raise NFMInputError(
                f"{name} needs at least 2 classes in y to fit; "
                f"got 1 class ({classes.tolist()[0]!r})"
            )
        Y = np.zeros((y.shape[0], classes.size), dtype=np.float64)
        Y[np.arange(y.shape[0]), idx] = 1.0
        return _Targets(
            Y=numpy_to_tensor(Y, params.dtype, params.device),
            labels=idx,
            attributes={"classes_": classes},
        )

    def _temperature(
        self, path: FitPath, X: torch.Tensor, Y: torch.Tensor, settings: FitSettings
    ) -> dict[str, float]:
        best = path.best
        values, targets = best.heldout_values, best.heldout_targets
        if values is None and settings.solver == "cholesky":
            # selection="last": one more factorisation for the leave-one-out values
            values, targets = leave_one_out_values(X, Y, best.M, best.reg, settings), Y
        if values is None:  # iterative solver with selection="last": training values
            values, targets = best.train_values, Y
        return {"temperature_": fit_temperature(values, targets)}

    def decision_function(self, X: Any) -> Any:
        """Kernel predictor values: ``(n, k)`` for ``k > 2`` classes, ``f_1 - f_0`` for two."""
        out = self._decision_values(X)
        if out.shape[1] == 2:
            out = out[:, 1] - out[:, 0]
        return _output_like(out, X)

    def predict_proba(self, X: Any) -> Any:
        """Class probabilities :math:`\\mathrm{softmax}(f(x) / T)`, rows sum to 1."""
        if getattr(self, "partition_", None) is not None:
            return _output_like(self.partition_.probabilities(self._predict_inputs(X)[0]), X)
        out = torch.softmax(self._decision_values(X) / self.temperature_, dim=1)
        return _output_like(out, X)

    def predict(self, X: Any) -> Any:
        """Predicted labels (``classes_[argmax f(x)]``)."""
        if getattr(self, "partition_", None) is not None:  # a leaf's unseen classes: p = 0
            scores = self.partition_.probabilities(self._predict_inputs(X)[0])
        else:
            scores = self._decision_values(X)
        idx = scores.argmax(dim=1).cpu().numpy()
        labels = self.classes_[idx]
        if array_kind(X) == "torch" and np.issubdtype(labels.dtype, np.number):
            return torch.as_tensor(labels, device=X.device)
        return labels
