"""Input checks of the RFM estimators: ``X`` and ``y`` to tensors, nothing stored on the estimator.

Fitting must be atomic, so :func:`validate_fit_data` returns the facts that ``fit`` records
(``n_features_in_``, ``feature_names_in_``) instead of setting them: scikit-learn's
``validate_data(reset=True)`` runs on a shallow copy of the estimator.

Every refusal is an :class:`~nfm.exceptions.NFMInputError` (a ``ValueError``) whose message
starts with the estimator and the argument (``"RFMRegressor.fit: X ..."``): NaN or infinite
values, no rows or no features, sparse matrices (scipy or torch; the kernels are dense),
strings (text or categorical features must be encoded as numbers first), complex numbers, a
wrong number of features at prediction, lengths of ``X`` and ``y`` that differ. The messages of
scikit-learn's own checks are kept after that prefix.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.utils.validation import validate_data

from nfm._utils.arrays import ArrayKind, array_kind, check_finite
from nfm.exceptions import NFMInputError

__all__ = [
    "FitData",
    "InputTypeError",
    "numpy_to_tensor",
    "validate_fit_data",
    "validate_predict_X",
]


class InputTypeError(NFMInputError, TypeError):
    """Data of a type that cannot become numbers (e.g. a dict in an object array).

    Also a ``TypeError``, which is what scikit-learn's estimator checks expect for it.
    """


@dataclass(frozen=True)
class FitData:
    """Checked training data.

    Attributes
    ----------
    X : (n, d) tensor
        In the working dtype, on the working device.
    y : ndarray
        The targets as given (numpy, on the CPU).
    kind : {"numpy", "torch"}
        What ``X`` was, so that fitted arrays and predictions come back as the same kind.
    n_features_in : int
    feature_names_in : ndarray of str or None
    """

    X: torch.Tensor
    y: np.ndarray
    kind: ArrayKind
    n_features_in: int
    feature_names_in: np.ndarray | None


def numpy_to_tensor(arr: np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A tensor of ``arr`` (copied when read-only or not C-contiguous, e.g. a memmap)."""
    arr = np.asarray(arr)
    if not arr.flags.writeable or not arr.flags.c_contiguous:
        arr = np.array(arr, order="C")
    return torch.from_numpy(arr).to(device=device, dtype=dtype)


def _refuse_unsupported(value: Any, where: str, argument: str) -> None:
    """Refuse sparse, string and complex data with a message that says what to do."""
    if isinstance(value, torch.Tensor):
        if value.layout != torch.strided:
            raise NFMInputError(
                f"{where}: {argument} is a sparse torch tensor ({value.layout}, shape "
                f"{tuple(value.shape)}); RFM kernels need dense data: pass "
                f"{argument}.to_dense()"
            )
        if value.is_complex():
            raise NFMInputError(
                f"{where}: {argument} is a complex tensor ({value.dtype}); real numbers expected"
            )
        return
    if sp.issparse(value):
        raise NFMInputError(
            f"{where}: {argument} is a sparse matrix ({type(value).__name__}, shape "
            f"{value.shape}); RFM kernels need dense data: pass {argument}.toarray()"
        )
    dtype = getattr(value, "dtype", None)
    if dtype is None and isinstance(value, (list, tuple)):
        try:
            dtype = np.asarray(value).dtype
        except ValueError:  # ragged: scikit-learn's check reports it
            return
    kinds = [getattr(dtype, "kind", None)]
    column_dtypes = getattr(value, "dtypes", None)  # a DataFrame: one dtype per column
    if column_dtypes is not None and not hasattr(column_dtypes, "kind"):  # (a Series: one)
        kinds = [getattr(t, "kind", None) for t in column_dtypes]
    if any(kind in ("U", "S") for kind in kinds):
        advice = (
            "regression targets must be numbers"
            if argument == "y"
            else "encode text or categorical features as numbers first (e.g. "
            "sklearn.preprocessing.OneHotEncoder / OrdinalEncoder)"
        )
        raise NFMInputError(
            f"{where}: {argument} holds strings (dtype {dtype if dtype is not None else 'str'}); "
            + advice
        )


def _wrapped(exc: Exception, where: str, argument: str) -> NFMInputError:
    """sklearn's message behind ``where`` and the argument (strings get the encoding advice)."""
    message = str(exc)
    if "could not convert string" in message or "dtype='numeric' is not compatible" in message:
        advice = (
            "regression targets must be numbers"
            if argument == "y"
            else "encode text or categorical features as numbers first (e.g. "
            "sklearn.preprocessing.OneHotEncoder)"
        )
        return NFMInputError(f"{where}: {argument} holds strings ({message}); {advice}")
    if "inconsistent numbers of samples" in message:
        argument = "X and y"
    kind = InputTypeError if isinstance(exc, TypeError) else NFMInputError
    return kind(f"{where}: invalid {argument}: {message}")


def _check_tensor_X(X: torch.Tensor, name: str, n_features: int | None) -> None:
    if X.ndim != 2:
        raise NFMInputError(
            f"{name}: invalid X: Expected 2D array, got a tensor of shape {tuple(X.shape)}. "
            "Reshape your data: X.reshape(-1, 1) for one feature, X.reshape(1, -1) for "
            "one sample."
        )
    if n_features is not None and X.shape[1] != n_features:
        raise NFMInputError(
            f"{name}: X has {X.shape[1]} features, but {name} is expecting {n_features} features "
            "as input."
        )
    if X.shape[0] == 0:
        raise NFMInputError(
            f"{name}: invalid X: Found array with 0 sample(s) (shape={tuple(X.shape)}) "
            f"while a minimum of 1 is required by {name}."
        )


def validate_fit_data(
    estimator: Any, X: Any, y: Any, *, dtype: torch.dtype, device: torch.device, y_numeric: bool
) -> FitData:
    """Check ``X`` (n, d) and ``y`` (n,) or (n, c) for ``fit``; ``estimator`` is not modified.

    Raises
    ------
    NFMInputError
        For ``y=None``, mismatched lengths, NaN / inf, empty data or fewer than 2 samples.
    """
    name = type(estimator).__name__
    where = f"{name}.fit"
    if y is None:
        raise NFMInputError(
            f"This {name} estimator requires y to be passed, but the target y is None."
        )
    _refuse_unsupported(X, where, "X")
    if y_numeric:  # class labels may be strings
        _refuse_unsupported(y, where, "y")
    if isinstance(X, torch.Tensor):
        _check_tensor_X(X, name, None)
        Xt = X.detach().to(device=device, dtype=dtype)
        check_finite(Xt, "X")
        y_arr = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
        if y_arr.ndim == 0 or y_arr.shape[0] != Xt.shape[0]:
            raise NFMInputError(
                f"X has {Xt.shape[0]} samples but y has shape {y_arr.shape}; the lengths must match"
            )
        n_features, names = X.shape[1], None
    else:
        if isinstance(y, torch.Tensor):
            y = y.detach().cpu().numpy()
        probe = copy.copy(estimator)  # validate_data(reset=True) records on its argument
        try:  # X alone first, so that a refusal names the right argument
            X_arr = validate_data(probe, X, dtype=(np.float64, np.float32))
        except (ValueError, TypeError) as exc:
            raise _wrapped(exc, where, "X") from None
        n_features, names = probe.n_features_in_, getattr(probe, "feature_names_in_", None)
        try:  # X_arr is already checked and converted: this pass checks y and the lengths
            X_arr, y_arr = validate_data(
                copy.copy(estimator),
                X_arr,
                y,
                dtype=(np.float64, np.float32),
                multi_output=True,
                y_numeric=y_numeric,
            )
        except (ValueError, TypeError) as exc:
            raise _wrapped(exc, where, "y") from None
        Xt = numpy_to_tensor(X_arr, dtype, device)
    n = Xt.shape[0]
    if n < 2:
        raise NFMInputError(
            f"{name} needs at least 2 samples to fit; got X with {n} sample (n_samples = 1)"
        )
    return FitData(
        X=Xt,
        y=np.asarray(y_arr),
        kind=array_kind(X),
        n_features_in=int(n_features),
        feature_names_in=names,
    )


def validate_predict_X(
    estimator: Any, X: Any, *, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Check ``X`` against the fitted estimator (feature count and names); return a tensor."""
    name = type(estimator).__name__
    _refuse_unsupported(X, f"{name}.predict", "X")
    if isinstance(X, torch.Tensor):
        _check_tensor_X(X, name, estimator.n_features_in_)
        Xt = X.detach().to(device=device, dtype=dtype)
        check_finite(Xt, "X")
        return Xt
    try:
        arr = validate_data(estimator, X, reset=False, dtype=(np.float64, np.float32))
    except (ValueError, TypeError) as exc:
        raise _wrapped(exc, f"{name}.predict", "X") from None
    return numpy_to_tensor(arr, dtype, device)
