"""The small CNN, its training loop, the patch-space NFA it is tracked with, and ``nfm cnn``.

The patch-space reference below is independent of the engine: each convolution is rewritten as
``unfold`` followed by a matrix product with the weight read as ``(C_out, C_in k_h k_w)``, a
zero perturbation is added to the unfolded patches, and ``torch.func.jacrev`` differentiates
the logits of one sample with respect to it, in float64.
"""

from __future__ import annotations

import argparse
import copy
import json

import numpy as np
import pytest
import torch
from mixed_mode import modes_and_flags
from torch import nn

from nfm.ansatz.correlation import correlation_column
from nfm.cli import cnn as cnn_cli
from nfm.exceptions import NFMInputError
from nfm.linalg import matrix_correlation
from nfm.tracking import NFATracker
from nfm.training.cnn import conv_layer_names, make_cnn, train_cnn


def images(n: int = 24, size: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images; class 1 has a bright top-left square, class 0 a bright bottom-right one."""
    generator = torch.Generator().manual_seed(seed)
    X = 0.1 * torch.rand(n, 1, size, size, generator=generator)
    y = torch.arange(n) % 2
    X[y == 1, :, :3, :3] += 1.0
    X[y == 0, :, -3:, -3:] += 1.0
    return X, y


def patch_agop_reference(model: nn.Sequential, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """(1 / (n L)) sum_i sum_l J_il^T J_il, J_il = d logits(x_i) / d patch_l, by jacrev."""
    model = copy.deepcopy(model).requires_grad_(False)
    children = list(model.named_children())
    convs = [name for name, m in children if isinstance(m, nn.Conv2d)]

    def conv_as_matmul(module: nn.Conv2d, h: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        patches = nn.functional.unfold(
            h, module.kernel_size, module.dilation, module.padding, module.stride
        )[0]
        out = module.weight.reshape(module.out_channels, -1) @ (patches + delta)
        out = out + module.bias[:, None]
        size = [
            (h.shape[2 + i] + 2 * module.padding[i] - module.kernel_size[i]) // module.stride[i] + 1
            for i in range(2)
        ]
        return out.reshape(1, module.out_channels, *size)

    def shapes(sample: torch.Tensor) -> dict[str, tuple[int, int]]:
        found, h = {}, sample[None]
        for name, module in children:
            if isinstance(module, nn.Conv2d):
                patches = nn.functional.unfold(h, module.kernel_size, padding=module.padding)
                found[name] = tuple(patches.shape[1:])
            h = module(h)
        return found

    def logits(sample: torch.Tensor, deltas: dict[str, torch.Tensor]) -> torch.Tensor:
        h = sample[None]
        for name, module in children:
            h = conv_as_matmul(module, h, deltas[name]) if name in deltas else module(h)
        return h[0]

    with torch.no_grad():
        patch_shapes = shapes(x[0])
    sums = {name: torch.zeros(patch_shapes[name][0], patch_shapes[name][0]) for name in convs}
    sums = {k: v.double() for k, v in sums.items()}
    for sample in x:
        zeros = {name: torch.zeros(patch_shapes[name], dtype=x.dtype) for name in convs}
        jac = torch.func.jacrev(logits, argnums=1)(sample, zeros)
        for name in convs:
            j = jac[name]  # (c, features, positions)
            sums[name] += torch.einsum("cdl,cel->de", j, j)
    return {name: sums[name] / (x.shape[0] * patch_shapes[name][1]) for name in convs}


def sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


# ---------------------------------------------------------------------------- make_cnn
def test_make_cnn_layout_and_shapes():
    model = make_cnn((28, 28), 10, channels=(4, 6), kernel_sizes=(5, 3), seed=1)
    names = [name for name, _ in model.named_children()]
    assert names == ["conv1", "act1", "pool1", "conv2", "act2", "pool2", "flatten", "out"]
    assert conv_layer_names(model) == ["conv1", "conv2"]
    assert model.out.in_features == 6 * 7 * 7
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    bound = 1 / np.sqrt(1 * 5 * 5)
    assert float(model.conv1.weight.detach().abs().max()) <= bound


def test_make_cnn_is_reproducible_and_leaves_the_global_generator_alone():
    state = torch.random.get_rng_state()
    a = make_cnn((8, 8), 3, channels=(2,), kernel_sizes=3, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = make_cnn((8, 8), 3, channels=(2,), kernel_sizes=3, seed=5)
    c = make_cnn((8, 8), 3, channels=(2,), kernel_sizes=3, seed=6)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"channels": ()}, "channels"),
        ({"channels": (0, 2)}, "channels"),
        ({"kernel_sizes": (4, 3)}, "odd"),
        ({"kernel_sizes": (3,)}, "one odd positive size"),
        ({"image_shape": (3, 8)}, "image_shape"),
    ],
)
def test_make_cnn_refuses_bad_settings(kwargs, match):
    settings = {"image_shape": (8, 8), "n_classes": 2, "channels": (2, 2), "kernel_sizes": 3}
    settings.update(kwargs)
    with pytest.raises(NFMInputError, match=match):
        make_cnn(settings.pop("image_shape"), settings.pop("n_classes"), **settings)


# ---------------------------------------------------------------------------- train_cnn
class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, dict]] = []

    def record(self, step: int, **metrics) -> None:
        self.calls.append((step, metrics))


def test_train_cnn_records_at_start_every_k_steps_and_end():
    X, y = images(24)
    model = make_cnn((8, 8), 2, channels=(2,), kernel_sizes=3, seed=0)
    recorder = Recorder()
    result = train_cnn(
        model, X, y, X_test=X[:10], y_test=y[:10], epochs=2, batch_size=5, lr=1e-2,
        tracker=recorder, track_every=4, eval_samples=6,
    )  # fmt: skip
    steps = [step for step, _ in recorder.calls]
    assert result.steps == 2 * 5 and steps == [0, 4, 8, 10]
    for _, metrics in recorder.calls:
        assert set(metrics) == {"loss", "train_accuracy", "test_accuracy"}
        # accuracies on 6 images are multiples of 1/6
        assert round(metrics["train_accuracy"] * 6, 9) == round(metrics["train_accuracy"] * 6)
    # the returned test accuracy is on all 10 test images, the same model as the last record
    with torch.no_grad():
        expected = float((model.eval()(X[:10]).argmax(1) == y[:10]).double().mean())
    assert result.test_accuracy == pytest.approx(expected, abs=1e-12)
    assert len(result.loss_curve) == 2


def test_train_cnn_is_reproducible_from_its_seed():
    X, y = images(20)
    a = make_cnn((8, 8), 2, channels=(2,), kernel_sizes=3, seed=0)
    b = copy.deepcopy(a)
    train_cnn(a, X, y, epochs=1, batch_size=4, seed=3)
    train_cnn(b, X, y, epochs=1, batch_size=4, seed=3)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_train_cnn_restores_modes_and_flags_and_keeps_frozen_parameters():
    X, y = images(16)
    model = make_cnn((8, 8), 2, channels=(2, 2), kernel_sizes=3, seed=0)
    model.eval()
    model.conv1.weight.requires_grad_(False)
    frozen = model.conv1.weight.detach().clone()
    before = modes_and_flags(model)
    train_cnn(model, X, y, epochs=1, batch_size=4)
    assert modes_and_flags(model) == before
    assert torch.equal(model.conv1.weight, frozen)
    untrained = make_cnn((8, 8), 2, channels=(2, 2), kernel_sizes=3, seed=0)
    assert not torch.equal(model.conv2.weight.detach(), untrained.conv2.weight)


def test_train_cnn_restores_modes_on_error():
    X, y = images(8)
    model = make_cnn((8, 8), 2, channels=(2,), kernel_sizes=3, seed=0)
    before = modes_and_flags(model)
    with pytest.raises(RuntimeError):
        train_cnn(model, X[:, :, :6, :6], y, epochs=1)  # the head expects 8x8 images
    assert modes_and_flags(model) == before


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"track_every": 0}, "track_every"),
        ({"eval_samples": 0}, "eval_samples"),
    ],
)
def test_train_cnn_refuses_bad_settings(kwargs, match):
    X, y = images(8)
    model = make_cnn((8, 8), 2, channels=(2,), kernel_sizes=3)
    with pytest.raises(NFMInputError, match=match):
        train_cnn(model, X, y, **kwargs)
    with pytest.raises(NFMInputError, match="same n"):
        train_cnn(model, X, y[:5])


# ---------------------------------------------------------------------------- patch NFA
def test_tracker_patch_nfa_of_a_cnn_matches_an_unfold_jacrev_reference():
    model = make_cnn((8, 8), 3, channels=(2, 3), kernel_sizes=(3, 3), seed=2).double()
    X, _ = images(6)
    X = X.double()
    tracker = NFATracker(
        model, X, layers=nn.Conv2d, alphas=(0.5, 1.0), exclude_diagonal=(False, True),
        dtype=torch.float64,
    )  # fmt: skip
    rows = {row["layer"]: row for row in tracker.record(0)}
    reference = patch_agop_reference(model, X)
    assert set(rows) == {"conv1", "conv2"}
    for name, agop in reference.items():
        weight = getattr(model, name).weight.detach()
        w = weight.reshape(weight.shape[0], -1)
        nfm_matrix = w.T @ w
        assert rows[name]["d"] == w.shape[1]
        assert rows[name]["agop_trace"] == pytest.approx(float(torch.trace(agop)), rel=1e-10)
        for alpha, power in ((0.5, sqrt_psd(agop)), (1.0, agop)):
            for exclude in (False, True):
                expected = matrix_correlation(nfm_matrix, power, exclude_diagonal=exclude)
                column = correlation_column("pearson", alpha, exclude)
                assert rows[name][column] == pytest.approx(expected, abs=1e-9)


def test_shuffled_weight_null_is_the_statistic_itself_for_constant_weights():
    weight = torch.full((3, 4), 0.7, dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(4, 4, generator=generator, dtype=torch.float64)
    target = a @ a.T
    # every permutation of a constant matrix is itself (Pearson is undefined here: cosine)
    null = cnn_cli.shuffled_weight_null(weight, target, draws=5, kind="cosine")
    expected = matrix_correlation(weight.T @ weight, target, kind="cosine")
    assert null["draws"] == 5
    assert null["mean"] == pytest.approx(expected, abs=1e-12)
    assert null["std"] == pytest.approx(0.0, abs=1e-12)


def test_shuffled_weight_null_permutes_entries_reproducibly():
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    target = torch.eye(6, dtype=torch.float64) + 0.1
    a = cnn_cli.shuffled_weight_null(weight, target, draws=7, seed=3)
    b = cnn_cli.shuffled_weight_null(weight, target, draws=7, seed=3)
    assert a == b
    assert a["min"] <= a["mean"] <= a["max"] and a["std"] > 0
    with pytest.raises(NFMInputError, match="draws"):
        cnn_cli.shuffled_weight_null(weight, target, draws=0)


def test_shuffled_model_null_is_reproducible_and_leaves_the_model_alone():
    model = make_cnn((8, 8), 3, channels=(2, 3), kernel_sizes=3, seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    X, _ = images(6)
    a = cnn_cli.shuffled_model_null(model, X, draws=2, seed=1)
    b = cnn_cli.shuffled_model_null(model, X, draws=2, seed=1)
    assert a == b and set(a) == {"conv1", "conv2"}
    for columns in a.values():
        assert columns["pearson_a0.5"]["draws"] == 2
        assert all(-1.0 <= c["min"] <= c["max"] <= 1.0 for c in columns.values())
    for p, q in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, q)


# ---------------------------------------------------------------------------- nfm cnn
def _fake_fashion(folder, n_train=40, n_test=20):
    from test_datasets_idx import write_idx

    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        pictures = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):  # a class-dependent bright row
            pictures[i, 2 + 2 * label, :] = 255
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", pictures)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)


def _parse(argv):
    parser = argparse.ArgumentParser()
    cnn_cli.configure_parser(parser)
    return parser.parse_args(argv)


def test_nfm_cnn_end_to_end_on_a_tiny_fake_fashion_mnist(tmp_path, monkeypatch, capsys):
    from nfm.datasets import images as image_module

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    _fake_fashion(data_dir)
    monkeypatch.setattr(image_module, "FASHION_MNIST_DIR", data_dir)
    out = tmp_path / "out"
    threads = torch.get_num_threads()
    options = "--channels 2 3 --kernel-sizes 3 3 --epochs 1 --batch-size 10 --probe-size 6"
    options += " --report-samples 8 --eval-samples 8 --null-draws 3 --model-null-draws 2"
    options += " --track-every 2 --no-progress"
    args = _parse([*options.split(), "--output-dir", str(out)])
    assert cnn_cli.run(args) == 0
    assert torch.get_num_threads() == threads
    printed = capsys.readouterr().out
    assert "conv1" in printed and "conv2" in printed
    stems = ["nfa_vs_step", "nfa_vs_step_offdiag", "filters_init", "filters_trained"]
    stems += ["top_eigenvectors_conv1", "feature_matrices_conv1", "feature_matrices_conv2"]
    for stem in stems:
        assert (out / f"{stem}.png").stat().st_size > 1000
    assert (out / "report.html").is_file() and (out / "tracking_history.json").is_file()
    results = json.loads((out / "cnn_results.json").read_text())
    assert results["settings"]["n_train"] == 40 and results["settings"]["n_test"] == 20
    steps = sorted({row["step"] for row in results["history"]})
    assert steps == [0, 2, 4]  # 40 images / batch 10 = 4 steps, a record every 2
    for name in ("conv1", "conv2"):
        layer = results["layers"][name]
        for stage in ("initial", "trained"):
            entry = layer[stage]
            assert -1.0 <= entry["pearson_a0.5"] <= 1.0
            assert entry["filter_null_pearson_a0.5"]["draws"] == 3
            assert entry["model_null_pearson_a0.5"]["draws"] == 2
            assert (
                entry["model_null_pearson_a0.5_offdiag"]["min"]
                <= entry["model_null_pearson_a0.5_offdiag"]["max"]
            )
        # the tracker's first record is the untrained network on the first 6 training images
        first = next(r for r in results["history"] if r["layer"] == name and r["step"] == 0)
        assert first["d"] == layer["trained"]["d"]
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert (
        metrics["nfa_conv1_pearson_a0.5_trained"]
        == results["layers"]["conv1"]["trained"]["pearson_a0.5"]
    )


def test_nfm_cnn_reports_a_missing_dataset(tmp_path, monkeypatch, capsys):
    from nfm.datasets import images as image_module

    monkeypatch.setattr(image_module, "FASHION_MNIST_DIR", tmp_path / "absent")
    args = _parse(["--output-dir", str(tmp_path / "out")])
    assert cnn_cli.run(args) == 2
    assert "dataset-fashion-mnist" in capsys.readouterr().err


def test_nfm_cnn_refuses_bad_options(tmp_path, capsys):
    args = _parse(["--epochs", "0", "--output-dir", str(tmp_path)])
    assert cnn_cli.run(args) == 2
    assert "--epochs" in capsys.readouterr().err


def test_load_cnn_data_subset_is_seeded(tmp_path, monkeypatch):
    from nfm.datasets import images as image_module

    _fake_fashion(tmp_path)
    monkeypatch.setattr(image_module, "FASHION_MNIST_DIR", tmp_path)
    a = cnn_cli.load_cnn_data("fashion-mnist", train_samples=12, seed=4)
    b = cnn_cli.load_cnn_data("fashion-mnist", train_samples=12, seed=4)
    assert a[0].shape == (12, 1, 28, 28) and a[2].shape == (20, 1, 28, 28)
    np.testing.assert_array_equal(a[0], b[0])
    with pytest.raises(NFMInputError, match="train-samples"):
        cnn_cli.load_cnn_data("fashion-mnist", train_samples=0)
    with pytest.raises(NFMInputError, match="data must be"):
        cnn_cli.load_cnn_data("cifar")
