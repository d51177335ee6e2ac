r"""Recursive Feature Machines as scikit-learn estimators.

:class:`RFMRegressor` and :class:`RFMClassifier`.

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

Published conventions:

* Science code / xRFM: ``metric_power=1, metric_normalization="max"``, Laplace kernel,
  bandwidth 10, one ``reg``;
* grokking code: ``kernel="gaussian", bandwidth=2.5, reg=0, metric_power=0.5,
  metric_normalization="none", centered=True, agop_sample_size=None, selection="last",
  dtype="float64"``.

Defaults (Laplace kernel, bandwidth 10, 5 iterations, ``metric_power=0.5`` with
``metric_normalization="max"``, ``reg`` chosen by leave-one-out from :data:`DEFAULT_REG_GRID`,
float32) were chosen on the validation parts of the tabular benchmark: among 14 candidate
defaults they had the best mean validation rank on both the classification and the regression
suite (``benchmarks/results/tabular/defaults/study_summary.csv``; docs/tabular-benchmark.md).
"""

from __future__ import annotations

import logging
import math
import numbers
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils import TransformerTags
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from nfm._utils.arrays import array_kind, check_finite, restore_kind
from nfm.exceptions import NFMInputError, NumericalWarning
from nfm.kernels import make_kernel
from nfm.linalg import symmetric_matrix_power
from nfm.solvers import cholesky_solve, conjugate_gradient_solve, resolve_solver

__all__ = ["RFMClassifier", "RFMRegressor"]

logger = logging.getLogger(__name__)

_NORMALIZATIONS = ("max", "none", "trace")
_SELECTIONS = ("loo", "holdout", "last")
_DTYPES = {"float64": torch.float64, "float32": torch.float32}


#: Conjugate-gradient tolerance (float32, float64) of the iterations fitted on the internal
#: holdout split: 10x the solver's default (1e-4, 1e-7), since these solutions only feed the
#: holdout scores and the AGOP; the selected predictor is refitted on all rows at the default.
SELECTION_CG_TOL: tuple[float, float] = (1e-3, 1e-6)

#: The default ridge grid, searched by the selection rule at every iteration.
DEFAULT_REG_GRID: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def _output_like(out: torch.Tensor, X: Any) -> Any:
    """``out`` as the kind of array ``X`` is, in ``X``'s float dtype (float64 for any other).

    The working dtype is internal: float64 data gets float64 predictions even when the
    estimator computes in float32, as scikit-learn users expect.
    """
    kind = array_kind(X)
    dtype = getattr(X, "dtype", None)
    if kind == "torch":
        target = dtype if dtype in (torch.float32, torch.float64) else torch.float64
    else:
        target = torch.float32 if dtype == np.float32 else torch.float64
    return restore_kind(out.to(target), kind)


def _resolve_dtype(dtype: Any) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in (torch.float32, torch.float64):
        return dtype
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    if dtype in (np.float64, np.float32):
        return torch.float64 if dtype is np.float64 else torch.float32
    raise NFMInputError(f"dtype must be 'float64' or 'float32'; got {dtype!r}")


def _resolve_device(device: Any) -> torch.device:
    try:
        dev = torch.device(device)
    except (TypeError, RuntimeError):
        raise NFMInputError(f"device must be 'cpu', 'cuda' or 'cuda:<i>'; got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise NFMInputError("device='cuda' was requested but torch.cuda.is_available() is False")
    return dev


def _as_reg_grid(reg: Any) -> tuple[float, ...]:
    values = [reg] if isinstance(reg, numbers.Real) else list(reg) if _is_sequence(reg) else None
    if not values:
        raise NFMInputError(
            f"reg must be a number >= 0 or a non-empty sequence of them; got {reg!r}"
        )
    out = []
    for value in values:
        if not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
            raise NFMInputError(f"reg values must be finite numbers >= 0; got {value!r} in {reg!r}")
        out.append(float(value))
    return tuple(out)


def _is_sequence(value: Any) -> bool:
    return isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, str)


def _stratified_sample(
    labels: np.ndarray | None, n: int, size: int, rng: np.random.Generator
) -> np.ndarray:
    """``size`` distinct random row indices; proportional per class when ``labels`` is given."""
    if size >= n:
        return np.arange(n)
    if labels is None:
        return np.sort(rng.choice(n, size=size, replace=False))
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.floor(counts * size / n).astype(int)
    quota = np.maximum(quota, np.minimum(counts, 1))
    remainder = size - quota.sum()
    if remainder > 0:  # hand out the rest by largest fractional part
        frac = counts * size / n - np.floor(counts * size / n)
        for k in np.argsort(-frac)[:remainder]:
            quota[k] = min(counts[k], quota[k] + 1)
    chosen = []
    for cls, q in zip(classes, quota, strict=True):
        rows = np.flatnonzero(labels == cls)
        chosen.append(rng.choice(rows, size=min(q, rows.size), replace=False))
    return np.sort(np.concatenate(chosen))[:size] if chosen else np.arange(0)


class _BaseRFM(BaseEstimator, ABC):
    """Shared fitting machinery; see :class:`RFMRegressor` for the parameters."""

    _is_classifier = False

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

    # ------------------------------------------------------------------ sklearn plumbing
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        # transform(X) = X M^(1/2) makes the estimators usable as a Pipeline step
        tags.transformer_tags = TransformerTags(preserves_dtype=["float64"])
        return tags

    # ------------------------------------------------------------------ validation
    def _check_hyperparameters(self) -> dict[str, Any]:
        name = type(self).__name__
        if not isinstance(self.n_iter, numbers.Integral) or self.n_iter < 0:
            raise NFMInputError(f"{name}: n_iter must be an integer >= 0; got {self.n_iter!r}")
        if self.metric_normalization not in _NORMALIZATIONS:
            raise NFMInputError(
                f"{name}: metric_normalization must be one of {_NORMALIZATIONS}; "
                f"got {self.metric_normalization!r}"
            )
        if self.selection not in _SELECTIONS:
            raise NFMInputError(
                f"{name}: selection must be one of {_SELECTIONS}; got {self.selection!r}"
            )
        power = self.metric_power
        if not isinstance(power, numbers.Real) or not math.isfinite(power) or power <= 0:
            raise NFMInputError(f"{name}: metric_power must be a number > 0; got {power!r}")
        frac = self.validation_fraction
        if not isinstance(frac, numbers.Real) or not 0 < frac < 1:
            raise NFMInputError(f"{name}: validation_fraction must lie in (0, 1); got {frac!r}")
        size = self.agop_sample_size
        if size is not None and (not isinstance(size, numbers.Integral) or size < 1):
            raise NFMInputError(
                f"{name}: agop_sample_size must be a positive integer or None (all rows); "
                f"got {size!r}"
            )
        if self.block_size is not None and (
            not isinstance(self.block_size, numbers.Integral) or self.block_size < 1
        ):
            raise NFMInputError(f"{name}: block_size must be a positive integer or None")
        if self.callback is not None and not callable(self.callback):
            raise NFMInputError(f"{name}: callback must be callable or None; got {self.callback!r}")
        bw = self.bandwidth
        if isinstance(bw, str):
            if bw != "median":
                raise NFMInputError(
                    f"{name}: bandwidth must be a number > 0 or 'median'; got {bw!r}"
                )
        elif not isinstance(bw, numbers.Real) or not math.isfinite(bw) or bw <= 0:
            raise NFMInputError(f"{name}: bandwidth must be a number > 0 or 'median'; got {bw!r}")
        regs = _as_reg_grid(self.reg)
        if self.selection == "last" and len(regs) > 1:
            raise NFMInputError(
                f"{name}: selection='last' cannot choose among {len(regs)} reg values; pass one "
                "reg or use selection='loo' / 'holdout'"
            )
        make_kernel(self.kernel, 1.0, exponent=self.exponent, kernel_power=self.kernel_power)
        return {
            "regs": regs,
            "dtype": _resolve_dtype(self.dtype),
            "device": _resolve_device(self.device),
        }

    def _validate_X(self, X: Any, *, reset: bool, dtype: torch.dtype, device: torch.device):
        name = type(self).__name__
        if isinstance(X, torch.Tensor):
            if X.ndim != 2:
                raise NFMInputError(
                    f"Expected 2D array, got a tensor of shape {tuple(X.shape)} for X in {name}. "
                    "Reshape your data: X.reshape(-1, 1) for one feature, X.reshape(1, -1) for "
                    "one sample."
                )
            Xt = X.detach().to(device=device, dtype=dtype)
            if reset:
                self.n_features_in_ = X.shape[1]
            elif X.shape[1] != self.n_features_in_:
                raise NFMInputError(
                    f"X has {X.shape[1]} features, but {name} is expecting "
                    f"{self.n_features_in_} features as input."
                )
            if X.shape[0] == 0:
                raise NFMInputError(
                    f"Found array with 0 sample(s) (shape={tuple(X.shape)}) "
                    f"while a minimum of 1 is required by {name}."
                )
            check_finite(Xt, "X")
            return Xt
        try:
            arr = validate_data(self, X, reset=reset, dtype=(np.float64, np.float32))
        except ValueError as exc:
            raise NFMInputError(str(exc)) from None
        return self._to_tensor(arr, dtype, device)

    @staticmethod
    def _to_tensor(arr: np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        arr = np.asarray(arr)
        if not arr.flags.writeable or not arr.flags.c_contiguous:
            arr = np.array(arr, order="C")
        return torch.from_numpy(arr).to(device=device, dtype=dtype)

    def _validate_Xy(self, X: Any, y: Any, settings: dict[str, Any]):
        name = type(self).__name__
        dtype, device = settings["dtype"], settings["device"]
        if y is None:
            raise NFMInputError(
                f"This {name} estimator requires y to be passed, but the target y is None."
            )
        if isinstance(X, torch.Tensor):
            Xt = self._validate_X(X, reset=True, dtype=dtype, device=device)
            y_arr = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
            if y_arr.shape[0] != Xt.shape[0]:
                raise NFMInputError(
                    f"X has {Xt.shape[0]} samples but y has {y_arr.shape[0]}; they must match"
                )
            if hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
        else:
            if isinstance(y, torch.Tensor):
                y = y.detach().cpu().numpy()
            try:
                X_arr, y_arr = validate_data(
                    self,
                    X,
                    y,
                    dtype=(np.float64, np.float32),
                    multi_output=True,
                    y_numeric=not self._is_classifier,
                )
            except ValueError as exc:
                raise NFMInputError(str(exc)) from None
            Xt = self._to_tensor(X_arr, dtype, device)
        n = Xt.shape[0]
        if n < 2:
            raise NFMInputError(
                f"{name} needs at least 2 samples to fit; got {n} sample (n_samples = 1)"
            )
        return Xt, y_arr

    # ------------------------------------------------------------------ core fit
    @abstractmethod
    def _encode_targets(self, y: np.ndarray, settings) -> tuple[torch.Tensor, np.ndarray | None]:
        """Targets as the ``(n, c)`` regression matrix ``Y`` (and the classes, if any)."""

    def fit(self, X: Any, y: Any) -> _BaseRFM:
        """Fit the RFM.

        Parameters
        ----------
        X : (n_samples, n_features) array-like or torch.Tensor
        y : (n_samples,) or (n_samples, n_outputs) array-like or tensor
            Targets (class labels for the classifier).

        Returns
        -------
        self
        """
        settings = self._check_hyperparameters()
        Xt, y_arr = self._validate_Xy(X, y, settings)
        dtype, device = settings["dtype"], settings["device"]
        Y, labels = self._encode_targets(y_arr, settings)
        n, d = Xt.shape
        rng = np.random.default_rng(self.random_state)
        torch_gen = torch.Generator().manual_seed(int(rng.integers(2**62)))

        M0 = self._initial_metric(d, dtype, device)
        bandwidth = self._resolve_bandwidth(Xt, M0, rng)
        self.bandwidth_ = bandwidth
        self.kernel_ = make_kernel(
            self.kernel, bandwidth, exponent=self.exponent, kernel_power=self.kernel_power
        )
        self._fit_kind = array_kind(X)
        selection = self.selection
        solver = resolve_solver(self.solver, n)
        if selection == "loo" and solver == "cg":
            logger.info(
                "%s: leave-one-out needs the Cholesky factorisation; the iterative solver is "
                "used (n=%d), so the iteration is selected on an internal holdout split",
                type(self).__name__,
                n,
            )
            selection = "holdout"
        self.selection_ = selection

        if selection == "holdout":
            train_idx, val_idx = self._holdout_split(n, labels, rng)
        else:
            train_idx, val_idx = np.arange(n), None
        X_tr = Xt[train_idx] if val_idx is not None else Xt
        Y_tr = Y[train_idx] if val_idx is not None else Y
        labels_tr = labels[train_idx] if labels is not None else None
        X_val = Xt[val_idx] if val_idx is not None else None
        Y_val = Y[val_idx] if val_idx is not None else None
        self.solver_ = resolve_solver(self.solver, X_tr.shape[0])
        sample_size = X_tr.shape[0] if self.agop_sample_size is None else self.agop_sample_size
        agop_idx = _stratified_sample(labels_tr, X_tr.shape[0], sample_size, rng)

        best = self._iterate(
            X_tr, Y_tr, X_val, Y_val, M0, settings["regs"], agop_idx, selection, torch_gen
        )
        M, reg, coef, jitter = best["M"], best["reg"], best["coef"], best["jitter"]
        if val_idx is not None:  # refit the selected (metric, reg) on all rows
            rebuild = self._gram_filler(Xt, M)
            K = rebuild(torch.empty((n, n), dtype=Xt.dtype, device=Xt.device))
            # conjugate gradient starts from the holdout solution (0 on the held-out rows)
            initial = torch.zeros_like(Y)
            initial[torch.as_tensor(train_idx, device=Y.device)] = coef.to(Y.dtype)
            coef, jitter, _, _ = self._solve(
                K, Y, reg, initial=initial, want_loo=False, gen=torch_gen, rebuild=rebuild
            )
            del K
        self._set_state(Xt, M, coef, reg, jitter)
        self.best_iter_ = best["iteration"]
        self.reg_ = reg
        if self._is_classifier:
            self._calibrate(best, Xt, Y, torch_gen)
        self._publish(self._fit_kind)
        return self

    def _initial_metric(self, d: int, dtype, device) -> torch.Tensor:
        name = type(self).__name__
        if self.initial_metric is None:
            return torch.eye(d, dtype=dtype, device=device)
        M0 = self.initial_metric
        M0 = (
            M0.detach().to(device=device, dtype=dtype)
            if isinstance(M0, torch.Tensor)
            else torch.as_tensor(np.asarray(M0, dtype=np.float64)).to(device=device, dtype=dtype)
        )
        if M0.ndim == 1:
            M0 = torch.diag(M0)
        if M0.shape != (d, d):
            raise NFMInputError(
                f"{name}: initial_metric must be a ({d}, {d}) matrix (or a length-{d} diagonal) "
                f"for X with {d} features; got shape {tuple(M0.shape)}"
            )
        check_finite(M0, "initial_metric")
        if not torch.allclose(M0, M0.T, rtol=1e-5, atol=1e-8 * float(M0.abs().max() + 1)):
            raise NFMInputError(f"{name}: initial_metric must be symmetric")
        return 0.5 * (M0 + M0.T)

    def _resolve_bandwidth(self, Xt: torch.Tensor, M0: torch.Tensor, rng) -> float:
        if not isinstance(self.bandwidth, str):
            return float(self.bandwidth)
        # "median": median pairwise distance in the starting metric over <= 1000 random rows
        n = Xt.shape[0]
        rows = np.sort(rng.choice(n, size=min(n, 1000), replace=False))
        sub = Xt[torch.as_tensor(rows, device=Xt.device)]
        root = symmetric_matrix_power(M0, 0.5)
        proj = sub @ root
        p = self.exponent if self.kernel in ("generalized_laplace", "product_laplace") else 2.0
        dist = torch.cdist(proj, proj, p=p)
        upper = dist[torch.triu(torch.ones_like(dist, dtype=torch.bool), diagonal=1)]
        upper = upper[upper > 0]
        if upper.numel() == 0:
            return 1.0
        return float(upper.median())

    def _holdout_split(self, n: int, labels, rng) -> tuple[np.ndarray, np.ndarray]:
        n_val = round(self.validation_fraction * n)
        n_val = min(max(n_val, 1), n - 2)
        if n_val < 1:
            raise NFMInputError(
                f"{type(self).__name__}: selection='holdout' needs at least 3 samples; got {n}"
            )
        if labels is not None:
            val = _stratified_sample(labels, n, n_val, rng)
        else:
            val = np.sort(rng.choice(n, size=n_val, replace=False))
        mask = np.ones(n, dtype=bool)
        mask[val] = False
        return np.flatnonzero(mask), val

    def _solve(self, K, Y, reg, *, initial, want_loo, gen, rebuild=None, tol=None):
        """Solve (K + reg I) A = Y (K may be destroyed; ``rebuild(K)`` refills it).

        ``tol``: conjugate-gradient stopping tolerance (``None``: the solver's default).

        Returns (coef, jitter, inverse_diag or None, conjugate-gradient passes or None).
        """
        if self.solver_ == "cholesky":
            res = cholesky_solve(
                K, Y, reg, overwrite=True, inverse_diagonal=want_loo, rebuild=rebuild
            )
            inv = res.inverse_diagonal.to(K.device) if res.inverse_diagonal is not None else None
            return res.coef.to(K.device, K.dtype), res.jitter, inv, None
        res = conjugate_gradient_solve(K, Y, reg, initial=initial, generator=gen, tol=tol)
        return res.coef, 0.0, None, res.n_iter

    def _gram_filler(self, X: torch.Tensor, M: torch.Tensor):
        """A function that (re)fills an ``(n, n)`` buffer with the training Gram matrix."""

        def fill(out: torch.Tensor) -> torch.Tensor:
            return self.kernel_.gram(X, X, M, out=out, block_size=self.block_size)

        return fill

    def _decision(self, Xq: torch.Tensor, X_fit, M, coef) -> torch.Tensor:
        """Kernel predictor values on ``Xq``, computed in row blocks."""
        rows = max(1, (1 << 22) // max(1, X_fit.shape[0]))
        if self.block_size is not None:
            rows = self.block_size
        out = torch.empty((Xq.shape[0], coef.shape[1]), dtype=coef.dtype, device=coef.device)
        for start in range(0, Xq.shape[0], rows):
            Kb = self.kernel_.gram(Xq[start : start + rows], X_fit, M)
            out[start : start + rows] = (coef.T @ Kb.T).T  # fast form for few columns
        return out

    def _iterate(self, X_tr, Y_tr, X_val, Y_val, M0, regs, agop_idx, selection, gen) -> dict:
        name = type(self).__name__
        self.history_ = []
        best: dict | None = None
        M = M0
        previous_coef = None
        n_tr = X_tr.shape[0]
        K = torch.empty((n_tr, n_tr), dtype=X_tr.dtype, device=X_tr.device)
        want_loo = selection == "loo"
        # the holdout iterations only feed the holdout scores and the AGOP (the selected
        # predictor is refitted on all rows at the default tolerance): a looser CG tolerance
        cg_tol = None
        if selection == "holdout":
            cg_tol = SELECTION_CG_TOL[X_tr.dtype == torch.float64]
        self.n_iter_ = 0
        for iteration in range(self.n_iter + 1):
            start = time.perf_counter()
            candidates = []
            gram_built = False
            for reg in regs:
                if not gram_built or self.solver_ == "cholesky":
                    self.kernel_.gram(X_tr, X_tr, M, out=K, block_size=self.block_size)
                    gram_built = True
                coef, jitter, inv_diag, passes = self._solve(
                    K,
                    Y_tr,
                    reg,
                    initial=previous_coef,
                    want_loo=want_loo,
                    gen=gen,
                    rebuild=self._gram_filler(X_tr, M),
                    tol=cg_tol,
                )
                train_pred = Y_tr - (reg + jitter) * coef
                entry = {"reg": reg, "coef": coef, "jitter": jitter, "cg_passes": passes}
                entry["train"] = self._scores(Y_tr, train_pred)
                if want_loo:
                    loo_pred = Y_tr - coef / inv_diag[:, None]
                    entry["heldout_pred"] = loo_pred
                    entry["heldout"] = self._scores(Y_tr, loo_pred)
                elif X_val is not None:
                    val_pred = self._decision(X_val, X_tr, M, coef)
                    entry["heldout_pred"] = val_pred
                    entry["heldout"] = self._scores(Y_val, val_pred)
                candidates.append(entry)
            if selection == "last":
                chosen = candidates[0]
            else:
                chosen = max(candidates, key=lambda e: self._selection_key(e["heldout"]))
            row = {
                "iteration": iteration,
                "reg": chosen["reg"],
                "train_mse": chosen["train"]["mse"],
                "train_score": chosen["train"]["score"],
                "jitter": chosen["jitter"],
                "cg_passes": chosen["cg_passes"],
            }
            kind = "loo" if selection == "loo" else "val"
            if "heldout" in chosen:
                row[f"{kind}_mse"] = chosen["heldout"]["mse"]
                row[f"{kind}_score"] = chosen["heldout"]["score"]
                row["scores_by_reg"] = {e["reg"]: e["heldout"]["score"] for e in candidates}
            previous_coef = chosen["coef"]
            state = {
                "iteration": iteration,
                "M": M,
                "reg": chosen["reg"],
                "coef": chosen["coef"],
                "jitter": chosen["jitter"],
                "heldout_pred": chosen.get("heldout_pred"),
                "heldout_Y": Y_tr if want_loo else Y_val,
                "train_pred": Y_tr - (chosen["reg"] + chosen["jitter"]) * chosen["coef"],
            }
            if (
                best is None
                or selection == "last"
                or self._selection_key(chosen["heldout"]) > self._selection_key(best["heldout"])
            ):
                best = {**state, "heldout": chosen.get("heldout")}
            del candidates
            # expose this iteration's predictor for the callback
            self._set_state(X_tr, M, chosen["coef"], chosen["reg"], chosen["jitter"])
            if self._is_classifier:
                self.temperature_ = 1.0
            self._publish(self._fit_kind)
            row["seconds"] = time.perf_counter() - start
            self.history_.append(row)  # visible to the callback
            stop = False
            if self.callback is not None:
                stop = bool(self.callback(self, iteration))
            if self.verbose:
                logger.info(
                    "%s iteration %d: %s",
                    name,
                    iteration,
                    {k: v for k, v in row.items() if k != "scores_by_reg"},
                )
            if stop or iteration == self.n_iter:
                break
            agop_start = time.perf_counter()
            G = self.kernel_.agop(
                X_tr[torch.as_tensor(agop_idx, device=X_tr.device)],
                X_tr,
                M,
                chosen["coef"],
                centered=self.centered,
                block_size=self.block_size,
            )
            new_M = self._metric_from_agop(G)
            self.history_[-1]["agop_seconds"] = time.perf_counter() - agop_start
            if new_M is None:
                import warnings

                warnings.warn(
                    f"{name}: the AGOP is zero at iteration {iteration} (the predictor is "
                    "constant); stopping the iterations with the current metric",
                    NumericalWarning,
                    stacklevel=3,
                )
                break
            M = new_M
            self.n_iter_ = iteration + 1
        del K
        return best

    def _metric_from_agop(self, G: torch.Tensor) -> torch.Tensor | None:
        if self.diag:
            values = torch.diagonal(G).clamp(min=0).pow(self.metric_power)
            M = torch.diag(values)
        else:
            M = symmetric_matrix_power(G, float(self.metric_power))
        if not bool(torch.isfinite(M).all()):
            return None
        scale = float(M.abs().max())
        if scale == 0.0:
            return None
        if self.metric_normalization == "max":
            M = M / scale
        elif self.metric_normalization == "trace":
            M = M * (M.shape[0] / float(torch.diagonal(M).sum()))
        return M

    def _set_state(self, X_fit, M, coef, reg, jitter) -> None:
        self._X_fit = X_fit
        self._M = M
        self._coef = coef

    def _publish(self, kind: str) -> None:
        self.M_ = restore_kind(self._M, kind)
        self.dual_coef_ = restore_kind(self._coef, kind)
        self.X_fit_ = restore_kind(self._X_fit, kind)
        diag = torch.diagonal(self._M).clamp(min=0)
        total = float(diag.sum())
        importances = diag / total if total > 0 else torch.full_like(diag, 1.0 / diag.numel())
        self.feature_importances_ = importances.detach().cpu().numpy()

    # ------------------------------------------------------------------ scores
    @abstractmethod
    def _scores(self, Y: torch.Tensor, pred: torch.Tensor) -> dict[str, float]:
        """Selection scores of predictions ``pred`` of ``Y``: ``{"score": ..., "mse": ...}``."""

    @staticmethod
    def _selection_key(scores: dict[str, float]) -> tuple[float, float]:
        return (scores["score"], -scores["mse"])

    # ------------------------------------------------------------------ prediction
    def _prepare_predict(self, X: Any) -> torch.Tensor:
        check_is_fitted(self, "_coef")
        return self._validate_X(X, reset=False, dtype=self._coef.dtype, device=self._coef.device)

    def _raw_predict(self, Xt: torch.Tensor) -> torch.Tensor:
        return self._decision(Xt, self._X_fit, self._M, self._coef)

    def fit_transform(self, X: Any, y: Any) -> Any:
        """``fit(X, y)`` then ``transform(X)``."""
        return self.fit(X, y).transform(X)

    def transform(self, X: Any) -> Any:
        r"""Learned features :math:`x \mapsto x M^{1/2}` (rows of ``X`` times ``M_^(1/2)``).

        The Euclidean distance between transformed points is the Mahalanobis distance
        :math:`\lVert x - z\rVert_M` that the kernel uses.
        """
        Xt = self._prepare_predict(X)
        M = self._M
        if bool((M == torch.diag(torch.diagonal(M))).all()):
            root = torch.diag(torch.diagonal(M).clamp(min=0).sqrt())
        else:
            root = symmetric_matrix_power(M, 0.5)
        return _output_like(Xt @ root, X)


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
        solver; with the iterative solver it falls back to "holdout"), an internal split of
        ``validation_fraction`` (the chosen metric and reg are then refitted on all rows), or
        the last iteration.
    validation_fraction : float
        Size of the internal holdout split.
    initial_metric : (d, d) or (d,) array, optional
        Starting metric (default identity). With ``n_iter=0`` the estimator is a fixed-metric
        kernel machine.
    callback : callable, optional
        ``callback(estimator, iteration)`` after each predictor fit; the estimator's ``M_``,
        ``dual_coef_``, ``X_fit_`` reflect that iteration (``predict`` works). Return ``True``
        to stop.
    random_state : int, numpy Generator or None
        Seeds the AGOP sample, the holdout split and the preconditioner's columns.
    device : str
        ``"cpu"`` or ``"cuda"``.
    dtype : {"float64", "float32"}
        Working dtype (default float32: it halves memory and roughly doubles speed; use
        float64 for interpolation, ``reg=0``, or ill-conditioned Gram matrices).
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
        ``jitter``, ``seconds``, ``agop_seconds``.
    feature_importances_ : (d,) array
        :math:`\mathrm{diag}(M) / \mathrm{trace}(M)`.
    bandwidth_ : float
    kernel_ : nfm.kernels.Kernel
    solver_, selection_ : str
        The solver and selection rule actually used.
    """

    _is_classifier = False

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags

    def _encode_targets(self, y, settings):
        y = np.asarray(y, dtype=np.float64)
        check_finite(torch.from_numpy(np.array(y)), "y")
        self._y_ndim = y.ndim
        Y = y.reshape(y.shape[0], -1)
        self.n_outputs_ = Y.shape[1]
        return self._to_tensor(Y, settings["dtype"], settings["device"]), None

    def _scores(self, Y, pred):
        resid = ((Y - pred) ** 2).sum(dim=0)
        total = ((Y - Y.mean(dim=0)) ** 2).sum(dim=0)
        r2 = torch.where(total > 0, 1 - resid / total.clamp(min=1e-300), torch.zeros_like(total))
        return {"mse": float(resid.sum() / Y.numel()), "score": float(r2.mean())}

    def predict(self, X: Any) -> Any:
        """Predicted targets, shape ``(n,)`` or ``(n, n_outputs)`` like the ``y`` given to fit."""
        Xt = self._prepare_predict(X)
        out = self._raw_predict(Xt)
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
    values. When neither exists (iterative solver with ``selection="last"``) the training
    decision values are used and the probabilities are over-confident.

    Attributes
    ----------
    classes_ : (k,) array
        Class labels.
    temperature_ : float
        The fitted softmax temperature.
    (others as in :class:`RFMRegressor`)
    """

    _is_classifier = True

    def _encode_targets(self, y, settings):
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
                f"{name} needs at least 2 classes to fit; got 1 class ({classes[0]!r})"
            )
        self.classes_ = classes
        Y = np.zeros((y.shape[0], classes.size), dtype=np.float64)
        Y[np.arange(y.shape[0]), idx] = 1.0
        return self._to_tensor(Y, settings["dtype"], settings["device"]), idx

    def _scores(self, Y, pred):
        acc = float((pred.argmax(dim=1) == Y.argmax(dim=1)).to(torch.float64).mean())
        return {"mse": float(((Y - pred) ** 2).mean()), "score": acc}

    def _calibrate(self, best: dict, Xt, Y, gen) -> None:
        from scipy.optimize import minimize_scalar

        values, targets = best.get("heldout_pred"), best.get("heldout_Y")
        if values is None and self.solver_ == "cholesky":
            # selection="last": one more factorisation for the leave-one-out values
            rebuild = self._gram_filler(Xt, best["M"])
            n = Xt.shape[0]
            K = rebuild(torch.empty((n, n), dtype=Xt.dtype, device=Xt.device))
            coef, _, inv, _ = self._solve(
                K, Y, best["reg"], initial=None, want_loo=True, gen=gen, rebuild=rebuild
            )
            del K
            values, targets = Y - coef / inv[:, None], Y
        if values is None:
            values, targets = best["train_pred"], Y if self.selection_ == "last" else None
        if targets is None or values is None:
            self.temperature_ = 1.0
            return
        logits = values.detach().to("cpu", torch.float64)
        labels = targets.detach().to("cpu", torch.float64).argmax(dim=1)

        def nll(log_t: float) -> float:
            scaled = logits / math.exp(log_t)
            return float(torch.nn.functional.cross_entropy(scaled, labels))

        result = minimize_scalar(nll, bounds=(math.log(1e-4), math.log(1e3)), method="bounded")
        self.temperature_ = float(math.exp(result.x))

    def decision_function(self, X: Any) -> Any:
        """Kernel predictor values: ``(n, k)`` for ``k > 2`` classes, ``f_1 - f_0`` for two."""
        Xt = self._prepare_predict(X)
        out = self._raw_predict(Xt)
        if out.shape[1] == 2:
            out = out[:, 1] - out[:, 0]
        return _output_like(out, X)

    def predict_proba(self, X: Any) -> Any:
        """Class probabilities :math:`\\mathrm{softmax}(f(x) / T)`, rows sum to 1."""
        Xt = self._prepare_predict(X)
        out = torch.softmax(self._raw_predict(Xt) / self.temperature_, dim=1)
        return _output_like(out, X)

    def predict(self, X: Any) -> Any:
        """Predicted labels (``classes_[argmax f(x)]``)."""
        Xt = self._prepare_predict(X)
        idx = self._raw_predict(Xt).argmax(dim=1).cpu().numpy()
        labels = self.classes_[idx]
        if array_kind(X) == "torch" and np.issubdtype(labels.dtype, np.number):
            return torch.as_tensor(labels, device=Xt.device)
        return labels
