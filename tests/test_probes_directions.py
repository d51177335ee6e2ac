"""Concept directions from an RFM probe's AGOP, against an autograd reference.

The reference differentiates the probe's predictor written out in the test,
f_c(h) = sum_i a_ic exp(-||S^-1 (h - mu) - z_i||_M^2 / (2 L^2)) (Gaussian kernel, smooth at
the training points), with torch.func.jacrev with respect to the hidden state h itself.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nfm.exceptions import NFMInputError
from nfm.probes import concept_directions, fit_probe, probe_agop

GAUSSIAN = [{"kernel": "gaussian", "bandwidth_factor": 1.0, "n_iter": 2, "dtype": "float64"}]


def synthetic(n: int = 90, d: int = 6, seed: int = 0):
    """Hidden states with unequal scales; the label is the sign of coordinate 3."""
    rng = np.random.default_rng(seed)
    scales = np.array([5.0, 0.2, 1.0, 0.5, 3.0, 1.5])[:d]
    X = rng.standard_normal((n, d)) * scales + 10.0
    y = (X[:, 3] > 10.0).astype(int)
    return X, y


def reference_agop(probe) -> np.ndarray:
    rfm = probe.estimator
    Z = torch.as_tensor(np.asarray(rfm.X_fit_), dtype=torch.float64)
    M = torch.as_tensor(np.asarray(rfm.M_), dtype=torch.float64)
    A = torch.as_tensor(np.asarray(rfm.dual_coef_), dtype=torch.float64)
    mu = torch.as_tensor(probe.standardizer.mean)
    s = torch.as_tensor(probe.standardizer.scale)
    L = rfm.bandwidth_

    def f(h):
        z = (h - mu) / s
        diff = z[None, :] - Z
        sq = ((diff @ M) * diff).sum(dim=1)
        return torch.exp(-sq / (2 * L**2)) @ A

    H = mu + s * Z  # the training rows in hidden-state coordinates
    total = torch.zeros((H.shape[1], H.shape[1]), dtype=torch.float64)
    for h in H:
        J = torch.func.jacrev(f)(h)  # (c, d)
        total += J.T @ J
    return (total / H.shape[0]).numpy()


def test_probe_agop_matches_autograd_in_hidden_coordinates():
    X, y = synthetic()
    probe = fit_probe(X, y, method="rfm", grid=GAUSSIAN)
    np.testing.assert_allclose(probe_agop(probe), reference_agop(probe), rtol=1e-8, atol=1e-12)


def test_top_direction_is_the_label_coordinate_oriented_to_the_positive_class():
    X, y = synthetic(n=120)
    probe = fit_probe(X, y, method="rfm", grid=GAUSSIAN)
    found = concept_directions(probe, X, y, positive=1, negative=0, k=2)
    assert found.directions.shape == (2, 6)
    np.testing.assert_allclose(np.linalg.norm(found.directions, axis=1), 1.0)
    assert found.directions[0, 3] > 0.9
    assert found.eigenvalues[0] >= found.eigenvalues[1]
    flipped = concept_directions(probe, X, y, positive=0, negative=1, k=1)
    np.testing.assert_allclose(flipped.directions[0], -found.directions[0])
    assert 0 < found.explained[0] <= 1


def test_bad_inputs_are_refused():
    X, y = synthetic()
    linear = fit_probe(X, y, method="linear")
    with pytest.raises(NFMInputError, match="method='rfm'"):
        probe_agop(linear)
    probe = fit_probe(X, y, method="rfm", grid=GAUSSIAN)
    with pytest.raises(NFMInputError, match="k must be"):
        concept_directions(probe, X, y, positive=1, negative=0, k=0)
    with pytest.raises(NFMInputError, match="not a label"):
        concept_directions(probe, X, y, positive=2, negative=0)
    with pytest.raises(NFMInputError, match="orientation"):
        concept_directions(probe, X[:, :3], y, positive=1, negative=0)
