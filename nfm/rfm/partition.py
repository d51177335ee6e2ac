r"""Large-n RFM: an AGOP-split tree whose leaves are exact RFM fits of at most ``leaf_size`` rows.

The approach of xRFM (Beaglehole, Holzmueller, Radhakrishnan, Belkin, 2025), with the metric
learned once:

1. **Root metric.** The estimator (a clone, same parameters, exact path) is fitted on a random
   (stratified for classifiers) subsample of ``root_size`` rows, by default
   :math:`\min(n, \max(\text{leaf\_size}, 20000))` (:func:`nfm.rfm.large_n.root_size`): the
   fit the exact path would make on a 20,000-row subsample. Its metric :math:`M`, ridge
   :math:`\lambda` and bandwidth are those of the whole tree.
2. **Splits.** A node with more than ``leaf_size`` rows takes up to :data:`SPLIT_SAMPLE_SIZE` of
   them, solves :math:`(K_M + \lambda I) A = Y` on those rows and computes the AGOP
   :math:`G` of that local predictor over them. Its rows are split at the median of their
   projection :math:`v^T x` on the top eigenvector :math:`v` of :math:`G` (the direction in
   which the local predictor varies most); ``v^T x <= t`` goes left. Both children get half the
   rows, so the tree is balanced with :math:`L = \lceil \log_2(n / \text{leaf\_size}) \rceil`
   levels and :math:`2^L` leaves of about :math:`n / 2^L \in (\text{leaf\_size}/2,
   \text{leaf\_size}]` rows.
3. **Leaves.** Each leaf is the estimator fitted exactly on its rows in the root's metric
   :math:`M` (``initial_metric``, :data:`LEAF_N_ITER` = 0 further iterations) with the root's
   ridge and bandwidth (``selection="last"``): one kernel ridge solve
   :math:`(K_M + \lambda I) A = Y` on the leaf's rows, by the estimator's ``solver`` (with
   ``"auto"``, conjugate gradients above 1,000 rows, Cholesky below; a classifier's softmax
   temperature from the leave-one-out values with Cholesky, from the training values with
   conjugate gradients). A classifier leaf that holds one class predicts that class.

Learning :math:`M` and :math:`\lambda` once keeps the cost of a leaf at one solve; each leaf is
then a local kernel machine with as many rows as the root's subsample model, in
:math:`1 / 2^L` of the space.

Prediction routes each row down the tree (one projection per level) and evaluates its leaf:
time and memory per row are those of one ``leaf_size``-row kernel machine, whatever ``n``.
The leaves are fitted one after the other, so the fit's peak memory is the data (and its copy
in the fitted leaves) plus the larger of the root fit and one leaf fit
(:func:`nfm.rfm.memory.tree_fit_bytes`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.base import clone
from tqdm.auto import tqdm

from nfm.exceptions import NFMInputError
from nfm.rfm.large_n import root_size as default_root_size
from nfm.rfm.selection import stratified_sample
from nfm.solvers import cholesky_solve

__all__ = [
    "LEAF_N_ITER",
    "SPLIT_SAMPLE_SIZE",
    "Leaf",
    "PartitionedPredictor",
    "fit_partition",
    "partitioned_state",
]

logger = logging.getLogger(__name__)

#: rows of a node over which its local predictor and AGOP (hence its split) are computed
SPLIT_SAMPLE_SIZE = 500
#: metric iterations of each leaf, starting from the root metric
LEAF_N_ITER = 0


@dataclass
class Leaf:
    """A leaf: a fitted exact estimator, or one class (classifier leaf with a single class).

    Attributes
    ----------
    estimator : fitted RFMRegressor / RFMClassifier or None
    columns : (k,) int array
        For a classifier leaf, the index in the tree's ``classes_`` of each of its classes.
    constant : int or None
        The one class index of a single-class classifier leaf.
    n_samples : int
    """

    estimator: Any
    columns: np.ndarray | None
    constant: int | None
    n_samples: int


@dataclass
class PartitionedPredictor:
    """The fitted tree (the estimators' ``partition_``): splits and leaves.

    Node ``i`` is internal when ``children[i, 0] >= 0``: rows with
    ``x @ directions[i] <= thresholds[i]`` go to ``children[i, 0]``, the others to
    ``children[i, 1]``; otherwise it is leaf ``leaf_of_node[i]``. Node 0 is the root.

    Attributes
    ----------
    directions : (n_nodes, d) float64 array
    thresholds : (n_nodes,) float64 array
    children : (n_nodes, 2) int array
    leaf_of_node : (n_nodes,) int array
    leaves : list of Leaf
    n_outputs : int
        Columns of the decision values (classes for a classifier).
    is_classifier : bool
    """

    directions: np.ndarray
    thresholds: np.ndarray
    children: np.ndarray
    leaf_of_node: np.ndarray
    leaves: list[Leaf] = field(default_factory=list)
    n_outputs: int = 1
    is_classifier: bool = False

    @property
    def n_leaves(self) -> int:
        """Number of leaves."""
        return len(self.leaves)

    @property
    def leaf_sizes(self) -> np.ndarray:
        """Training rows of each leaf."""
        return np.array([leaf.n_samples for leaf in self.leaves], dtype=np.int64)

    def apply(self, X: torch.Tensor | np.ndarray) -> np.ndarray:
        """The leaf index of every row of ``X`` (n, d)."""
        Xn = X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else np.asarray(X)
        Xn = Xn.astype(np.float64, copy=False)
        out = np.empty(Xn.shape[0], dtype=np.int64)
        stack = [(0, np.arange(Xn.shape[0]))]
        while stack:
            node, rows = stack.pop()
            if self.children[node, 0] < 0:
                out[rows] = self.leaf_of_node[node]
                continue
            left = Xn[rows] @ self.directions[node] <= self.thresholds[node]
            stack.append((int(self.children[node, 0]), rows[left]))
            stack.append((int(self.children[node, 1]), rows[~left]))
        return out

    def _per_leaf(self, X: torch.Tensor, evaluate) -> torch.Tensor:
        out = torch.zeros((X.shape[0], self.n_outputs), dtype=torch.float64, device=X.device)
        which = self.apply(X)
        for index in np.unique(which):
            rows = torch.as_tensor(np.flatnonzero(which == index), device=X.device)
            out[rows] = evaluate(self.leaves[int(index)], X[rows])
        return out

    def decision_values(self, X: torch.Tensor) -> torch.Tensor:
        r"""Kernel predictor values ``(n, c)`` (float64) of each row's leaf.

        A classifier leaf's columns are placed at its classes; a class the leaf never saw has
        value 0 (what kernel ridge fits to an all-zero one-hot column); a single-class leaf
        gives 1 for its class.
        """

        return self._per_leaf(X, lambda leaf, Xb: self._in_tree_columns(leaf, Xb, "decision"))

    def probabilities(self, X: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(n, k)`` of each row's leaf (0 for classes the leaf never saw)."""

        return self._per_leaf(X, lambda leaf, Xb: self._in_tree_columns(leaf, Xb, "proba"))

    def _in_tree_columns(self, leaf: Leaf, Xb: torch.Tensor, kind: str) -> torch.Tensor:
        """A leaf's decision values (``kind="decision"``) or probabilities (``"proba"``) on
        ``Xb``, placed at the tree's output columns (0 elsewhere; 1 for a single-class leaf)."""
        values = torch.zeros((Xb.shape[0], self.n_outputs), dtype=torch.float64, device=Xb.device)
        if leaf.constant is not None:
            values[:, leaf.constant] = 1.0
            return values
        if kind == "decision":
            raw = leaf.estimator._decision_values(Xb)
        else:
            raw = leaf.estimator.predict_proba(Xb)
        raw = raw.to(torch.float64)
        if leaf.columns is None:  # a regression leaf: its columns are the tree's
            return raw
        values[:, torch.as_tensor(leaf.columns, device=Xb.device)] = raw
        return values


def _exact_clone(estimator: Any, rng: np.random.Generator, **params: Any) -> Any:
    """An unfitted copy of ``estimator`` on the exact path, seeded from ``rng``.

    Its memory was checked when the tree was chosen (``memory_limit=None`` skips a second check).
    """
    return clone(estimator).set_params(
        leaf_size=None,
        memory_limit=None,
        callback=None,
        verbose=False,
        random_state=int(rng.integers(2**31)),
        **params,
    )


def _leaf_params(estimator: Any, root: Any, M_root: torch.Tensor) -> dict[str, Any]:
    """The leaves' parameters that differ from the estimator's: the root's metric, ridge, bandwidth.

    The solver is the estimator's (``"auto"``: conjugate gradients above 1,000 rows).
    """
    return {
        "initial_metric": M_root.numpy(),
        "n_iter": LEAF_N_ITER,
        "reg": float(root.reg_),
        "bandwidth": float(root.bandwidth_),
        "selection": "last",
        "solver": estimator.solver,
    }


def _split_direction(
    X: torch.Tensor, Y: torch.Tensor, root: Any, rng: np.random.Generator, labels
) -> torch.Tensor:
    """Top eigenvector of the AGOP of a kernel ridge fit (root metric) on a sample of the node."""
    n = X.shape[0]
    sample = stratified_sample(labels, n, min(n, SPLIT_SAMPLE_SIZE), rng)
    rows = torch.as_tensor(sample, device=X.device)
    Xs, Ys = X[rows], Y[rows]
    kernel, M = root.kernel_, torch.as_tensor(root.M_).to(X.device, X.dtype)
    K = kernel.gram(Xs, Xs, M)
    coef = cholesky_solve(K, Ys, float(root.reg_), overwrite=True).coef.to(X.dtype)
    G = kernel.agop(Xs, Xs, M, coef).to(torch.float64)
    if not bool(torch.isfinite(G).all()) or float(G.abs().max()) == 0.0:
        G = M.to(torch.float64)  # constant local predictor: the root metric's top direction
    _, vectors = torch.linalg.eigh(0.5 * (G + G.T))
    return vectors[:, -1]


def _median_split(projection: np.ndarray) -> tuple[float, np.ndarray]:
    """Threshold and left mask of a median split: ``projection <= threshold`` goes left.

    The cut lies between two consecutive distinct values, the one whose left side is closest
    to half the rows (with ties, an exact half may not exist); the threshold is their midpoint.
    If every value is equal the rows are split by rank (at prediction all of them go left).
    """
    ordered = np.sort(projection)
    distinct = np.unique(ordered)
    half = projection.shape[0] // 2
    if distinct.size == 1:
        left = np.zeros(projection.shape[0], dtype=bool)
        left[np.argsort(projection, kind="stable")[:half]] = True
        return float(distinct[0]), left
    counts = np.searchsorted(ordered, distinct[:-1], side="right")  # rows <= each cut value
    k = int(np.argmin(np.abs(counts - projection.shape[0] / 2)))
    threshold = 0.5 * (distinct[k] + distinct[k + 1])
    if not distinct[k] <= threshold < distinct[k + 1]:  # adjacent floats
        threshold = distinct[k]
    return float(threshold), projection <= threshold


def fit_partition(
    estimator: Any,
    X: torch.Tensor,
    y: np.ndarray,
    Y: torch.Tensor,
    labels: np.ndarray | None,
    classes: np.ndarray | None,
    leaf_size: int,
    rng: np.random.Generator,
    root_size: int | None = None,
) -> tuple[PartitionedPredictor, Any]:
    """Fit the tree of the module docstring on ``(X, y)``; ``estimator`` is not modified.

    Parameters
    ----------
    estimator : RFMRegressor or RFMClassifier
        Its parameters are used for the root fit and the leaves.
    X : (n, d) tensor
        Checked training rows (working dtype and device).
    y : (n,) or (n, c) array
        The targets as given (labels for a classifier).
    Y : (n, c) tensor
        Encoded targets (one-hot for a classifier).
    labels : (n,) int array or None
        Class index of each row (classifier).
    classes : (k,) array or None
        The classifier's classes (sorted).
    leaf_size : int
    rng : numpy Generator
    root_size : int or None
        Rows of the root fit (``None``: ``leaf_size``).

    Returns
    -------
    (PartitionedPredictor, the fitted root estimator)
    """
    n, d = X.shape
    is_classifier = classes is not None
    name = type(estimator).__name__
    verbose = bool(getattr(estimator, "verbose", False))
    root_rows = stratified_sample(labels, n, min(n, root_size or leaf_size), rng)
    root_index = torch.as_tensor(root_rows, device=X.device)
    start = time.perf_counter()
    root = _exact_clone(estimator, rng).fit(X[root_index], y[root_rows])
    logger.info(
        "%s: root fit on %d of %d rows in %.1f s (reg %g, bandwidth %g)",
        name,
        root_rows.shape[0],
        n,
        time.perf_counter() - start,
        float(root.reg_),
        float(root.bandwidth_),
    )
    M_root = torch.as_tensor(root.M_).detach().to("cpu", torch.float64)

    directions: list[np.ndarray] = []
    thresholds: list[float] = []
    children: list[list[int]] = []
    leaf_rows: list[np.ndarray] = []
    leaf_of_node: list[int] = []

    def new_node() -> int:
        directions.append(np.zeros(d))
        thresholds.append(0.0)
        children.append([-1, -1])
        leaf_of_node.append(-1)
        return len(children) - 1

    pending = [(new_node(), np.arange(n))]
    while pending:
        node, rows = pending.pop(0)
        if rows.shape[0] <= leaf_size:
            leaf_of_node[node] = len(leaf_rows)
            leaf_rows.append(rows)
            continue
        index = torch.as_tensor(rows, device=X.device)
        node_labels = labels[rows] if labels is not None else None
        v = _split_direction(X[index], Y[index], root, rng, node_labels)
        projection = (X[index].to(torch.float64) @ v.to(X.device)).cpu().numpy()
        threshold, left = _median_split(projection)
        directions[node] = v.cpu().numpy()
        thresholds[node] = threshold
        left_node, right_node = new_node(), new_node()
        children[node] = [left_node, right_node]
        pending.append((left_node, rows[left]))
        pending.append((right_node, rows[~left]))

    leaves: list[Leaf] = []
    start = time.perf_counter()
    for rows in tqdm(leaf_rows, desc=f"{name} leaves", disable=not verbose):
        index = torch.as_tensor(rows, device=X.device)
        if is_classifier and np.unique(labels[rows]).size < 2:
            leaves.append(Leaf(None, None, int(labels[rows[0]]), int(rows.shape[0])))
            continue
        leaf = _exact_clone(estimator, rng, **_leaf_params(estimator, root, M_root))
        leaf.fit(X[index], y[rows])
        columns = np.searchsorted(classes, leaf.classes_) if is_classifier else None
        leaves.append(Leaf(leaf, columns, None, int(rows.shape[0])))
    predictor = PartitionedPredictor(
        directions=np.array(directions, dtype=np.float64).reshape(-1, d),
        thresholds=np.array(thresholds, dtype=np.float64),
        children=np.array(children, dtype=np.int64).reshape(-1, 2),
        leaf_of_node=np.array(leaf_of_node, dtype=np.int64),
        leaves=leaves,
        n_outputs=int(classes.size) if is_classifier else int(Y.shape[1]),
        is_classifier=is_classifier,
    )
    logger.info(
        "%s: %d rows in %d leaves (sizes %d..%d), leaves fitted in %.1f s",
        name,
        n,
        predictor.n_leaves,
        int(predictor.leaf_sizes.min()),
        int(predictor.leaf_sizes.max()),
        time.perf_counter() - start,
    )
    return predictor, root


def _stored(value: Any, kind: str) -> Any:
    """A CPU copy owning its memory: numpy, or a CPU tensor for ``kind="torch"``."""
    t = torch.as_tensor(value).detach().to("cpu", copy=True)
    return t if kind == "torch" else t.numpy()


def partitioned_state(estimator: Any, data: Any, targets: Any, leaf_size: int) -> dict[str, Any]:
    r"""The fitted attributes of ``estimator`` fitted through the tree (nothing is assigned).

    ``partition_`` holds the tree; ``M_`` is the leaves' metrics averaged with weights their
    row counts (with ``LEAF_N_ITER = 0`` every leaf keeps the root metric, so ``M_`` is it);
    ``feature_importances_`` is :math:`\mathrm{diag}(M) / \mathrm{tr}(M)`; ``history_``,
    ``reg_``, ``bandwidth_``, ``n_iter_`` and ``best_iter_`` are the root fit's.

    Raises
    ------
    NFMInputError
        When a ``callback`` is set (it follows the iterations of one exact fit).
    """
    name = type(estimator).__name__
    if estimator.callback is not None:
        raise NFMInputError(
            f"{name}: callback follows the iterations of one exact fit and is not supported "
            f"when the fit is partitioned into leaves (n = {data.X.shape[0]:,} > leaf_size = "
            f"{leaf_size:,}); set leaf_size=None for the exact fit, or remove the callback"
        )
    classes = targets.attributes.get("classes_")
    rng = np.random.default_rng(estimator.random_state)
    n, d = data.X.shape
    root_rows = default_root_size(
        estimator,
        n,
        d,
        int(targets.Y.shape[1]),
        leaf_size,
        dtype=data.X.dtype,
        device=data.X.device,
    )
    predictor, root = fit_partition(
        estimator,
        data.X,
        data.y,
        targets.Y,
        targets.labels,
        classes,
        leaf_size,
        rng,
        root_size=root_rows,
    )
    fitted = [leaf for leaf in predictor.leaves if leaf.estimator is not None]
    weights = np.array([leaf.n_samples for leaf in fitted], dtype=np.float64)
    if fitted:
        metrics = [torch.as_tensor(leaf.estimator.M_).to("cpu", torch.float64) for leaf in fitted]
        M = sum(w * m for w, m in zip(weights / weights.sum(), metrics, strict=True))
    else:
        M = torch.as_tensor(root.M_).to("cpu", torch.float64)
    diag = torch.diagonal(M).clamp(min=0)
    total = float(diag.sum())
    importances = diag / total if total > 0 else torch.full_like(diag, 1.0 / diag.numel())
    state = {
        "partition_": predictor,
        "M_": _stored(M.to(data.X.dtype), data.kind),
        "feature_importances_": importances.numpy(),
        "history_": list(root.history_),
        "n_iter_": root.n_iter_,
        "best_iter_": root.best_iter_,
        "reg_": root.reg_,
        "bandwidth_": root.bandwidth_,
        "kernel_": root.kernel_,
        "solver_": root.solver_,
        "selection_": root.selection_,
        "n_features_in_": data.n_features_in,
        **targets.attributes,
    }
    if data.feature_names_in is not None:
        state["feature_names_in_"] = data.feature_names_in
    return state
