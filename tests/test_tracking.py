"""NFATracker: per-layer records against a float64 reference, history save/load, no side effects."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from mixed_mode import mixed_mode_model, modes_and_flags
from reference_agop import reference_agop
from torch import nn

from nfm.ansatz import nfa_report
from nfm.exceptions import NFMInputError
from nfm.tracking import NFATracker, TrackingHistory, as_history, parse_nfa_column
from nfm.training import make_mlp, train_classifier


@pytest.fixture
def model() -> nn.Sequential:
    return make_mlp(6, [5, 4], 3, activation="tanh", seed=0)


@pytest.fixture
def probe() -> torch.Tensor:
    return torch.randn(40, 6, generator=torch.Generator().manual_seed(1))


def reference_pearson(nfm: np.ndarray, agop: np.ndarray, alpha: float) -> float:
    """Pearson correlation of vec(NFM) and vec(AGOP^alpha) in float64 with numpy."""
    values, vectors = np.linalg.eigh(0.5 * (agop + agop.T))
    powered = (vectors * np.clip(values, 0, None) ** alpha) @ vectors.T
    u, v = nfm.ravel() - nfm.mean(), powered.ravel() - powered.mean()
    return float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))  # unclamped, unlike corrcoef


def reference_cosine_offdiag(nfm: np.ndarray, agop: np.ndarray, alpha: float) -> float:
    values, vectors = np.linalg.eigh(0.5 * (agop + agop.T))
    powered = (vectors * np.clip(values, 0, None) ** alpha) @ vectors.T
    mask = ~np.eye(nfm.shape[0], dtype=bool)
    u, v = nfm[mask], powered[mask]
    return float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))


def test_record_matches_float64_reference(model, probe):
    tracker = NFATracker(
        model.double(),
        probe.double(),
        alphas=(0.5, 1.0),
        kinds=("pearson", "cosine"),
        exclude_diagonal=(False, True),
    )
    rows = tracker.record(0, loss=1.5)
    names = ["fc1", "fc2", "out"]
    assert [r["layer"] for r in rows] == names
    reference = reference_agop(model, probe, names, include_input=False)
    for row in rows:
        weight = dict(model.named_modules())[row["layer"]].weight.detach().double().numpy()
        nfm = weight.T @ weight
        agop = reference[row["layer"]].numpy()
        for alpha in (0.5, 1.0):
            # AGOPs here are rank-deficient; the square root of eigenvalues that are zero up
            # to rounding (~1e-17) contributes ~1e-9, hence the tolerance
            assert row[f"pearson_a{alpha:g}"] == pytest.approx(
                reference_pearson(nfm, agop, alpha), abs=1e-7
            )
            assert row[f"cosine_a{alpha:g}_offdiag"] == pytest.approx(
                reference_cosine_offdiag(nfm, agop, alpha), abs=1e-7
            )
        assert row["agop_trace"] == pytest.approx(np.trace(agop), rel=1e-10)
        assert row["nfm_trace"] == pytest.approx(np.trace(nfm), rel=1e-10)
        assert row["nfm_relative_change"] == 0.0
        assert row["loss"] == 1.5
        assert row["d"] == weight.shape[1]
    by_construction = {r["layer"]: r["by_construction"] for r in rows}
    assert by_construction == {"fc1": False, "fc2": False, "out": True}
    assert rows[-1]["pearson_a1"] == pytest.approx(1.0, abs=1e-9)


def test_relative_change_is_measured_from_first_record(model, probe):
    tracker = NFATracker(model, probe)
    tracker.record(0)
    with torch.no_grad():
        model.fc1.weight.mul_(2.0)  # NFM scales by 4: relative change 3
    rows = tracker.record(1)
    change = {r["layer"]: r["nfm_relative_change"] for r in rows}
    assert change["fc1"] == pytest.approx(3.0, rel=1e-5)
    assert change["fc2"] == pytest.approx(0.0, abs=1e-7)
    tracker.reset()
    assert tracker.history == []
    assert tracker.record(2)[0]["nfm_relative_change"] == 0.0


def test_every_skips_and_force_records(model, probe):
    tracker = NFATracker(model, probe, every=5)
    assert tracker.record(3) is None
    assert tracker.due(10) and not tracker.due(11)
    assert tracker.record(5) is not None
    assert tracker.record(7, force=True) is not None
    assert sorted({r["step"] for r in tracker.history}) == [5, 7]


def test_model_left_unchanged(model, probe):
    model.train()
    model.fc2.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    tracker = NFATracker(model, probe)
    tracker.record(0)
    tracker.record(1)
    with pytest.raises(NFMInputError):
        NFATracker(model, torch.randn(5, 7)).record(0)  # wrong feature count
    assert model.training and all(m.training for m in model.modules())
    assert {k: p.requires_grad for k, p in model.named_parameters()} == flags
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    for module in model.modules():
        assert not module._forward_pre_hooks and not module._forward_hooks


@pytest.mark.filterwarnings("ignore:module .* is in training mode")
def test_record_restores_every_module_mode(probe):
    model = mixed_mode_model(nn.Tanh)
    before = modes_and_flags(model)
    assert True in before[0] and False in before[0] and False in before[1]
    rows = NFATracker(model, probe).record(0)
    assert [r["layer"] for r in rows] == ["0", "4", "7"]
    assert modes_and_flags(model) == before
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@pytest.mark.filterwarnings("ignore:module .* is in training mode")
def test_record_restores_every_module_mode_on_error():
    model = mixed_mode_model(nn.Tanh)
    before = modes_and_flags(model)
    bad_probe = torch.randn(10, 5)  # the first layer expects 6 features: the model raises
    with pytest.raises(NFMInputError, match="expects in_features=6"):
        NFATracker(model, bad_probe).record(0)
    assert modes_and_flags(model) == before
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_bad_arguments(model, probe):
    with pytest.raises(NFMInputError, match="kinds"):
        NFATracker(model, probe, kinds=("spearman",))
    with pytest.raises(NFMInputError, match="alphas"):
        NFATracker(model, probe, alphas=(-1.0,))
    with pytest.raises(NFMInputError, match="every"):
        NFATracker(model, probe, every=0)
    with pytest.raises(NFMInputError, match="reserved"):
        NFATracker(model, probe).record(0, agop_trace=1.0)
    with pytest.raises(NFMInputError, match=r"unknown keyword argument\(s\) for NFATracker"):
        NFATracker(model, probe, chunksize=8)  # caught when the tracker is made, not later


@pytest.mark.parametrize("centered", [False, True])
def test_record_agrees_with_nfa_report(model, probe, centered):
    rows = NFATracker(
        model, probe, alphas=(0.5, 1.0), kinds=("pearson", "cosine"), centered=centered
    ).record(0)
    report = nfa_report(
        model,
        probe,
        alphas=(0.5, 1.0),
        kinds=("pearson", "cosine"),
        exclude_diagonal=False,
        fit_best_alpha=False,
        centered=centered,
    )
    assert [r["layer"] for r in rows] == [r["layer"] for r in report.rows]
    for row, expected in zip(rows, report.rows, strict=True):
        assert row["by_construction"] == expected["by_construction"]
        for column in ("pearson_a0.5", "pearson_a1", "cosine_a0.5", "cosine_a1", "agop_trace"):
            assert row[column] == pytest.approx(expected[column], abs=1e-12, nan_ok=True)


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, float) or isinstance(b, float):
        return a == pytest.approx(b, rel=1e-12, abs=0)
    return a == b


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_save_load_round_trip(model, probe, tmp_path, suffix):
    tracker = NFATracker(model, probe, exclude_diagonal=(False, True))
    tracker.record(0, loss=2.0, test_accuracy=float("nan"), phase="warmup")
    tracker.record(1, loss=1.0, test_accuracy=0.5, phase="main")
    path = tracker.save(tmp_path / f"history{suffix}")
    loaded = NFATracker.load(path)
    assert isinstance(loaded, TrackingHistory)
    assert len(loaded.rows) == len(tracker.history) == 6
    for original, back in zip(tracker.history, loaded.rows, strict=True):
        assert set(original) == set(back)
        for key, value in original.items():
            assert _same(value, back[key]), (key, value, back[key])
            assert type(value) is type(back[key]), key
    if suffix == ".json":
        assert loaded.settings["alphas"] == [0.5, 1.0]
    assert loaded.layers == ["fc1", "fc2", "out"]
    assert loaded.steps == [0, 1]
    assert loaded.metric_columns == ["loss", "test_accuracy", "phase"]
    assert loaded.nfa_columns == tracker.nfa_columns


def test_json_history_is_strict_json_and_keeps_infinities(tmp_path):
    def reject(token):
        raise AssertionError(f"non-standard JSON token {token}")

    history = TrackingHistory(
        rows=[{"step": np.int64(0), "layer": "a", "x": float("inf"), "y": np.float32(0.5)}],
        settings={"alphas": [0.5, float("nan")], "count": np.int64(2)},
    )
    path = history.save(tmp_path / "history.json")
    saved = json.loads(path.read_text(), parse_constant=reject)
    assert saved["settings"] == {"alphas": [0.5, None], "count": 2}
    assert saved["rows"] == [{"step": 0, "layer": "a", "x": "inf", "y": 0.5}]
    back = TrackingHistory.load(path).rows[0]
    assert back["x"] == float("inf") and back["step"] == 0 and back["y"] == 0.5


def test_load_rejects_other_files(tmp_path):
    with pytest.raises(NFMInputError, match="no tracking history"):
        TrackingHistory.load(tmp_path / "missing.json")
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(NFMInputError, match="not an nfm tracking history"):
        TrackingHistory.load(tmp_path / "other.json")


def test_to_frame_and_views(model, probe):
    pd = pytest.importorskip("pandas")
    tracker = NFATracker(model, probe)
    tracker.record(0, loss=1.0)
    frame = tracker.to_frame()
    assert isinstance(frame, pd.DataFrame)
    assert frame.shape[0] == 3
    assert {"step", "layer", "pearson_a0.5", "pearson_a1", "loss"} <= set(frame.columns)
    assert as_history(frame).layers == ["fc1", "fc2", "out"]
    assert parse_nfa_column("cosine_a0.25_offdiag") == ("cosine", 0.25, True)
    with pytest.raises(NFMInputError):
        parse_nfa_column("loss")


def test_train_loop_records_on_schedule(model):
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(64, 6, generator=generator)
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0).long()
    tracker = NFATracker(model, X[:32])
    result = train_classifier(
        model, X, y, X_test=X, y_test=y, epochs=3, batch_size=16, tracker=tracker, track_every=5
    )
    assert result.steps == 12
    assert as_history(tracker).steps == [0, 5, 10, 12]
    assert {"loss", "train_accuracy", "test_accuracy"} <= set(tracker.history[0])


def test_probe_as_batches_or_numpy_gives_the_same_record(model, probe):
    model, probe = model.double(), probe.double()  # float64: chunking changes only rounding
    labels = torch.zeros(probe.shape[0], dtype=torch.long)
    batches = [(probe[i : i + 16], labels[i : i + 16]) for i in range(0, probe.shape[0], 16)]
    from_tensor = NFATracker(model, probe).record(0)
    from_batches = NFATracker(model, batches).record(0)
    from_numpy = NFATracker(model, probe.numpy()).record(0)
    for a, b, c in zip(from_tensor, from_batches, from_numpy, strict=True):
        assert a["by_construction"] == b["by_construction"] == c["by_construction"]
        for column in ("pearson_a0.5", "pearson_a1", "agop_trace"):
            assert b[column] == pytest.approx(a[column], rel=1e-9)
            assert c[column] == pytest.approx(a[column], rel=1e-9)
