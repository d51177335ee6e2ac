"""Figures: returned figures, panels, colour-scale symmetry, the data drawn, bad input."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

from nfm.exceptions import NFMInputError
from nfm.linalg import matrix_correlation, symmetric_matrix_power
from nfm.tracking import NFATracker
from nfm.training import make_mlp
from nfm.viz import plotting


@pytest.fixture(autouse=True)
def _close_figures():
    backend = matplotlib.get_backend()
    yield
    plt.close("all")
    assert matplotlib.get_backend() == backend


@pytest.fixture(autouse=True)
def _no_show(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("plotting must never call show()")

    monkeypatch.setattr(plt, "show", fail)


def _images(fig: Figure):
    return [im for ax in fig.axes for im in ax.get_images()]


def _rng_matrix(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, cols))


def test_neuron_weights_one_panel_per_neuron_shared_symmetric_scale():
    weights = _rng_matrix(6, 12)
    weights[2, 3] = 7.5  # the largest magnitude sets the shared scale
    fig = plotting.plot_neuron_weights(weights, (3, 4))
    assert isinstance(fig, Figure)
    images = _images(fig)
    assert len(images) == 6
    for index, image in enumerate(images):
        assert image.get_clim() == pytest.approx((-7.5, 7.5))
        assert image.get_cmap().name == "RdBu"
        np.testing.assert_allclose(image.get_array(), weights[index].reshape(3, 4))
    # blue for positive, red for negative
    top, bottom = images[0].get_cmap()(1.0), images[0].get_cmap()(0.0)
    assert top[2] > top[0] and bottom[0] > bottom[2]


def test_neuron_weights_accepts_layer_and_truncates():
    layer = torch.nn.Linear(16, 10)
    fig = plotting.plot_neuron_weights(layer, (4, 4), max_neurons=4)
    assert len(_images(fig)) == 4
    assert "first 4 of 10" in fig._suptitle.get_text()
    vmax = float(layer.weight.detach().abs()[:4].max())
    assert _images(fig)[0].get_clim() == pytest.approx((-vmax, vmax))


def test_output_weights_draws_into_given_axis():
    fig, ax = plt.subplots()
    weights = _rng_matrix(3, 5)
    returned = plotting.plot_output_weights(weights, ax=ax, class_names=["a", "b", "c"])
    assert returned is fig
    (image,) = ax.get_images()
    vmax = np.abs(weights).max()
    assert image.get_clim() == pytest.approx((-vmax, vmax))
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "c"]


def test_feature_matrices_title_gives_the_correlation():
    w = _rng_matrix(5, 8)
    nfm = w.T @ w
    agop = nfm @ nfm + 0.1 * np.eye(8)
    fig = plotting.plot_feature_matrices(nfm, agop, alpha=0.5, layer="fc1")
    expected = matrix_correlation(nfm, symmetric_matrix_power(agop, 0.5))
    assert f"{expected:.3f}" in fig._suptitle.get_text()
    assert "fc1" in fig._suptitle.get_text()
    left, right = _images(fig)
    np.testing.assert_allclose(right.get_array(), symmetric_matrix_power(agop, 0.5), atol=1e-12)
    for image in (left, right):
        low, high = image.get_clim()
        assert low == pytest.approx(-high)


def test_top_eigenvectors_draws_the_leading_eigenvectors():
    a = _rng_matrix(9, 9)
    matrix = a @ a.T
    fig = plotting.plot_top_eigenvectors({"M": matrix}, k=2, image_shape=(3, 3))
    images = _images(fig)
    assert len(images) == 2
    _values, vectors = np.linalg.eigh(matrix)
    for panel, column in zip(images, (-1, -2), strict=True):
        drawn = np.asarray(panel.get_array()).ravel()
        reference = vectors[:, column]
        assert min(np.abs(drawn - reference).max(), np.abs(drawn + reference).max()) < 1e-10
        assert np.abs(drawn).max() == pytest.approx(drawn.max())  # sign convention
        low, high = panel.get_clim()
        assert low == pytest.approx(-high)


def test_top_eigenvectors_without_image_shape_uses_bars():
    fig = plotting.plot_top_eigenvectors(np.diag([3.0, 2.0, 1.0]), k=3, image_shape=None)
    assert len(fig.axes) == 3
    assert all(len(ax.patches) == 3 for ax in fig.axes)


def test_agop_diagonal_image_and_bars():
    matrix = np.diag(np.arange(1.0, 7.0))
    fig = plotting.plot_agop_diagonal(matrix, (2, 3))
    (image,) = _images(fig)
    np.testing.assert_allclose(image.get_array(), np.arange(1.0, 7.0).reshape(2, 3))
    fig = plotting.plot_agop_diagonal(matrix, feature_names=list("abcdef"))
    assert len(fig.axes[0].patches) == 6


def _history():
    model = make_mlp(4, [3], 2, seed=0)
    probe = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    tracker = NFATracker(model, probe)
    for step in range(3):
        with torch.no_grad():
            model.fc1.weight.mul_(1.1)
        tracker.record(step, loss=1.0 / (step + 1), test_accuracy=0.5 + 0.1 * step)
    return tracker


def test_nfa_history_lines_per_layer_and_metric_panel():
    tracker = _history()
    fig = plotting.plot_nfa_history(tracker)
    top, bottom = fig.axes[0], fig.axes[1]
    labels = [line.get_label() for line in top.get_lines() if not line.get_label().startswith("_")]
    assert labels[0] == "fc1" and "by construction" in labels[1]
    assert list(top.get_lines()[0].get_xdata()) == [0, 1, 2]
    assert any(line.get_label() == "test accuracy" for line in bottom.get_lines())
    assert len(fig.axes) == 3  # the loss lives on a twin axis
    rows_fig = plotting.plot_nfa_history(tracker.history, columns=["pearson_a0.5", "pearson_a1"])
    assert len([ln for ln in rows_fig.axes[0].get_lines() if ln.get_label()[0] != "_"]) == 4


def test_feature_change_and_history_from_file(tmp_path):
    tracker = _history()
    path = tracker.save(tmp_path / "h.json")
    fig = plotting.plot_feature_change(path)
    left = fig.axes[0]
    steps, change = left.get_lines()[0].get_data()
    assert list(steps) == [0, 1, 2] and change[0] == 0.0 and change[2] > change[1] > 0


def test_bad_input_is_named():
    with pytest.raises(NFMInputError, match="image_shape"):
        plotting.plot_neuron_weights(_rng_matrix(2, 10), (3, 3))
    with pytest.raises(NFMInputError, match="2-d"):
        plotting.plot_output_weights(np.zeros(3))
    with pytest.raises(NFMInputError, match="same shape"):
        plotting.plot_feature_matrices(np.eye(3), np.eye(4))
    with pytest.raises(NFMInputError, match="empty"):
        plotting.plot_nfa_history([])
    with pytest.raises(NFMInputError, match="not in the history"):
        plotting.plot_nfa_history(_history(), columns="cosine_a0.5")
    with pytest.raises(NFMInputError, match="NaN"):
        plotting.plot_agop_diagonal(np.full((2, 2), np.nan))


def test_feature_matrices_judge_a_float32_agop_at_float32_precision():
    """A real float32 AGOP is PSD up to float32 rounding: no NumericalWarning when plotted."""
    import warnings

    from nfm.exceptions import NumericalWarning
    from nfm.features import compute_agop, compute_nfm

    model = make_mlp(30, [40], 5, seed=0)
    x = torch.randn(400, 30, generator=torch.Generator().manual_seed(0))
    name = next(iter(compute_nfm(model)))
    agop = compute_agop(model, x, layers=[name])[name]
    assert agop.dtype == torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error", NumericalWarning)
        fig = plotting.plot_feature_matrices(compute_nfm(model)[name], agop, alpha=0.5)
    plt.close(fig)
