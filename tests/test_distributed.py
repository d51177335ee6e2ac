"""nfm.distributed: the checked all-reduce, exact shards, wrapped models, two gloo processes.

The 2-process test spawns two CPU ranks once per module (``distributed_worker.launch``, gloo,
file store, 60 s collective timeout, 120 s deadline) and compares every scenario with the
single-process AGOP of the whole data set, which itself is checked against a hand-split
``torch.func.jacrev`` reference, to 1e-10 in float64.
"""

from __future__ import annotations

import datetime
import itertools
import warnings

import numpy as np
import pytest
import torch
from distributed_worker import N_SAMPLES, launch, make_data, make_model
from hypothesis import given, settings
from hypothesis import strategies as st
from mixed_mode import mixed_mode_model, modes_and_flags
from reference_agop import split_reference_agop

import nfm
from nfm.distributed import (
    ShardSampler,
    reduce_accumulator,
    reduced_sizes,
    resolve_process_group,
    shard_range,
    shard_rows,
)
from nfm.distributed.reduce import KeyMeta, RankMeta, local_metadata, pack, plan_reduce, unpack_into
from nfm.exceptions import NFMInputError

dist = torch.distributed
needs_gloo = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo"
)
TOL = 1e-10


def assert_close64(got, want, tol: float = TOL) -> None:
    """Entry-wise |got - want| <= tol * max(1, max |want|), in float64."""
    got = torch.as_tensor(np.asarray(got) if isinstance(got, np.ndarray) else got).double()
    want = torch.as_tensor(np.asarray(want) if isinstance(want, np.ndarray) else want).double()
    assert got.shape == want.shape
    scale = max(1.0, float(want.abs().max()))
    assert float((got - want).abs().max()) <= tol * scale


# --------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------


def jacrev_reference(model: torch.nn.Sequential, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """AGOPs of input, layer 0 and layer 2 of Linear -> tanh -> Linear, written by hand."""
    w1, b1 = model[0].weight.detach().double(), model[0].bias.detach().double()
    w2, b2 = model[2].weight.detach().double(), model[2].bias.detach().double()

    def from_first(xi, h):  # the output with the first layer's input replaced by h
        return w2 @ torch.tanh(w1 @ h + b1) + b2

    splits = {
        "input": (lambda xi: xi, from_first),
        "0": (lambda xi: xi, from_first),
        "2": (lambda xi: torch.tanh(w1 @ xi + b1), lambda xi, h: w2 @ h + b2),
    }
    return split_reference_agop(splits, x)


@pytest.fixture(scope="module")
def whole() -> dict[str, torch.Tensor]:
    """Single-process AGOP of the whole data set (checked against jacrev below)."""
    return nfm.compute_agop(make_model(), make_data(), dtype=torch.float64)


def test_single_process_reference_matches_jacrev(whole):
    reference = jacrev_reference(make_model(), make_data())
    assert list(whole) == ["input", "0", "2"]
    for key, value in reference.items():
        assert_close64(whole[key], value)


# --------------------------------------------------------------------------------------------
# Two gloo processes
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    out = tmp_path_factory.mktemp("two_ranks")
    outcomes = launch(out, world=2, deadline_s=240.0)
    for outcome in outcomes:
        assert "__crash__" not in outcome, outcome.get("__crash__")
    outcomes[0]["__out__"] = out
    return outcomes


def both(ranks: list[dict], name: str) -> list[dict]:
    return [r[name] for r in ranks]


@pytest.mark.parametrize(
    "scenario",
    [
        "sharded",
        "sharded_numpy",
        "empty_tensor_shard",
        "empty_loader_shard",
        "shard_sampler_loader",
        "fsdp1_replica",
        "fsdp2_replica",
    ],
)
def test_two_ranks_equal_the_whole_data_set(ranks, whole, scenario):
    for outcome in both(ranks, scenario):
        assert outcome["ok"], outcome
        value = outcome["value"]
        assert list(value) == list(whole)
        for key in whole:
            assert_close64(value[key], whole[key])
            if scenario == "sharded_numpy":
                assert isinstance(value[key], np.ndarray)
            else:
                assert value[key].dtype == torch.float64


def test_two_ranks_centered(ranks):
    want = nfm.compute_agop(make_model(), make_data(), dtype=torch.float64, centered=True)
    for outcome in both(ranks, "sharded_centered"):
        assert outcome["ok"], outcome
        for key in want:
            assert_close64(outcome["value"][key], want[key])


def test_no_process_group_means_no_reduction(ranks):
    x, model = make_data(), make_model()
    for rank, outcome in enumerate(both(ranks, "no_group")):
        rows = shard_range(N_SAMPLES, rank, 2)
        want = nfm.compute_agop(model, x[rows.start : rows.stop], dtype=torch.float64)
        for key in want:
            assert_close64(outcome["value"][key], want[key])


def test_ddp_model_gives_the_unwrapped_result_under_its_own_names(ranks, whole):
    for outcome in both(ranks, "ddp_model"):
        assert outcome["ok"], outcome
        assert list(outcome["value"]) == ["input", "module.0", "module.2"]
        for key in whole:
            name = key if key == "input" else f"module.{key}"
            assert_close64(outcome["value"][name], whole[key])


def test_fsdp_model_is_refused_with_the_way_out(ranks):
    for outcome in both(ranks, "fsdp2_direct"):
        assert not outcome["ok"] and outcome["type"] == "NFMInputError"
        assert "full_replica" in outcome["message"]


def test_nfa_report_over_shards_equals_single_process(ranks):
    want = nfm.nfa_report(make_model(), make_data(), dtype=torch.float64)
    for outcome in both(ranks, "report"):
        assert outcome["ok"], outcome
        rows, agops = outcome["value"]["rows"], outcome["value"]["agop"]
        for key, value in want.agop.items():  # what the reduce guarantees: the AGOPs
            assert_close64(agops[key], value)
        assert [row["layer"] for row in rows] == [row["layer"] for row in want.rows]
        for got_row, want_row in zip(rows, want.rows, strict=True):
            assert got_row["by_construction"] == want_row["by_construction"]
            for column, value in want_row.items():
                if column.endswith("_a1") or column.endswith("_a1_offdiag") or "trace" in column:
                    # linear in the AGOP: as close as the AGOPs
                    assert got_row[column] == pytest.approx(value, rel=1e-9, abs=1e-12)
                elif column == "best_alpha":  # an optimiser's answer, to its tolerance
                    assert got_row[column] == pytest.approx(value, abs=1e-4)
                elif isinstance(value, float):
                    # AGOP^0.5: layer 2's AGOP is W2^T W2 of rank 3 < 6, whose zero eigenvalues
                    # are rounding-sized (1e-16) and their square roots 1e-8
                    assert got_row[column] == pytest.approx(value, abs=1e-6)


def test_tracker_writes_from_rank_zero_only(ranks):
    out = ranks[0]["__out__"]
    first, second = both(ranks, "tracker")
    assert first["ok"] and second["ok"], (first, second)
    assert first["value"]["wrote"] and (out / "history_from_rank0.json").exists()
    assert not second["value"]["wrote"] and not (out / "history_from_rank1.json").exists()
    tracker = nfm.NFATracker(make_model(), make_data(), dtype=torch.float64)
    want = tracker.record(0, loss=1.0)
    for outcome in (first, second):
        for got_row, want_row in zip(outcome["value"]["rows"], want, strict=True):
            assert got_row["layer"] == want_row["layer"]
            assert got_row["agop_trace"] == pytest.approx(want_row["agop_trace"], rel=1e-10)
            assert got_row["pearson_a0.5"] == pytest.approx(want_row["pearson_a0.5"], rel=1e-9)


def test_low_level_reduce_with_an_empty_rank(ranks):
    gen = torch.Generator().manual_seed(5)
    want = nfm.AGOPAccumulator()
    want.update("a", torch.randn(9, 2, 5, generator=gen, dtype=torch.float64))
    want.update("b", torch.randn(9, 3, 2, 4, generator=gen, dtype=torch.float64))
    for outcome in both(ranks, "low_level_reduce"):
        assert outcome["ok"], outcome
        assert list(outcome["value"]) == ["a", "b"]
        for key, fields in want.state_dict().items():
            for field, tensor in fields.items():
                assert_close64(outcome["value"][key][field], tensor, tol=1e-12)


@pytest.mark.parametrize(
    ("scenario", "fragments"),
    [
        ("mismatched_keys", ["rank 1 holds ['input', '0']", "missing on rank 1: ['2']"]),
        ("mismatched_shapes", ["key '2'", "rank 1 holds sum_jtj (7, 7)", "(6, 6)"]),
        ("mismatched_dtype", ["compute dtype", "rank 1 has 'torch.float32'"]),
        ("empty_rank_wrong_keys", ["rank 1 expects (it has no samples) ['input', '0']"]),
        ("all_empty", ["empty on all 2 ranks"]),
        ("padding_sampler", ["repeats 1 sample(s)", "37 samples", "ShardSampler"]),
    ],
)
def test_mismatches_raise_the_same_clear_error_on_every_rank(ranks, scenario, fragments):
    for outcome in both(ranks, scenario):
        assert not outcome["ok"] and outcome["type"] == "NFMInputError", outcome
        for fragment in fragments:
            assert fragment in outcome["message"]


def test_a_failing_rank_is_reported_to_the_others(ranks):
    first, second = both(ranks, "failing_rank")
    assert second["type"] == "NFMInputError" and "NaN" in second["message"]
    assert first["type"] == "RemoteRankError"
    assert "rank 1: NFMInputError" in first["message"] and "NaN" in first["message"]


def test_ranks_are_still_in_step_after_every_error(ranks):
    assert [o["value"] for o in both(ranks, "still_in_step")] == [3.0, 3.0]


# --------------------------------------------------------------------------------------------
# The reduce without processes: the layout, the checks (pure functions)
# --------------------------------------------------------------------------------------------


def simulate_all_reduce(accumulators: list[nfm.AGOPAccumulator], expected=None) -> None:
    """What reduce_checked does on W ranks, in one process: metadata, plan, SUM of buffers."""
    metas = [
        local_metadata(acc, rank, expected_keys=expected if not len(acc) else None)
        for rank, acc in enumerate(accumulators)
    ]
    slots = plan_reduce(metas)
    total = sum(pack(acc, slots, torch.device("cpu")) for acc in accumulators)
    for acc in accumulators:
        unpack_into(acc, slots, total)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 30),
    world=st.integers(1, 4),
    cuts=st.lists(st.floats(0, 1), min_size=3, max_size=3),
    seed=st.integers(0, 2**16),
)
def test_reduce_of_any_partition_equals_the_merged_whole(n, world, cuts, seed):
    gen = torch.Generator().manual_seed(seed)
    jac_a = torch.randn(n, 3, 5, generator=gen, dtype=torch.float64)
    jac_b = torch.randn(n, 2, 2, 4, generator=gen, dtype=torch.float64)
    bounds = [0, *sorted(int(c * n) for c in cuts[: world - 1]), n]
    accumulators = []
    for lo, hi in itertools.pairwise(bounds):
        acc = nfm.AGOPAccumulator()
        if hi > lo:
            acc.update("a", jac_a[lo:hi]).update("b", jac_b[lo:hi])
        accumulators.append(acc)
    whole = nfm.AGOPAccumulator().update("a", jac_a).update("b", jac_b)
    simulate_all_reduce(accumulators, expected=["a", "b"])
    for acc in accumulators:
        assert acc.keys() == ["a", "b"]
        for key in ("a", "b"):
            assert acc.n_samples(key) == n
            got, want = acc.state_dict()[key], whole.state_dict()[key]
            for field in ("sum_jtj", "sum_j"):
                assert_close64(got[field], want[field], tol=1e-12)
            assert_close64(acc.result()[key], whole.result()[key], tol=1e-12)


def test_an_asymmetric_sum_travels_whole():
    sums = {"k": {"counts": [2.0, 2.0], "sum_jtj": [[1.0, 2.0], [3.0, 4.0]], "sum_j": [[1.0, 1.0]]}}
    ranks = [nfm.AGOPAccumulator.from_state_dict(sums), nfm.AGOPAccumulator()]
    slots = plan_reduce([local_metadata(acc, r) for r, acc in enumerate(ranks)])
    assert not slots[0].triangle and slots[0].size == 2 + 4 + 2
    simulate_all_reduce(ranks)
    assert ranks[1].state_dict()["k"]["sum_jtj"].tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_every_public_name_of_the_subpackage_resolves():
    import nfm.distributed as package

    for name in package.__all__:
        assert getattr(package, name) is not None
    with pytest.raises(AttributeError):
        package.no_such_name  # noqa: B018


def test_reduced_sizes_are_counts_triangle_and_mean():
    acc = nfm.AGOPAccumulator().update("a", torch.randn(4, 3, 5, dtype=torch.float64))
    assert reduced_sizes(acc) == {"a": 2 + 5 * 6 // 2 + 3 * 5}


def meta(rank, **shapes) -> RankMeta:
    acc = nfm.AGOPAccumulator()
    for key, (k, d) in shapes.items():
        acc.update(key, torch.ones(1, k, d, dtype=torch.float64))
    return local_metadata(acc, rank)


def test_plan_reduce_names_the_mismatch():
    with pytest.raises(NFMInputError, match=r"key 'a': rank 2 holds sum_jtj \(4, 4\)"):
        plan_reduce([meta(0, a=(1, 3)), meta(1, a=(1, 3)), meta(2, a=(1, 4))])
    with pytest.raises(NFMInputError, match=r"rank 1 holds \['b'\] but rank 0 holds \['a'\]"):
        plan_reduce([meta(0, a=(1, 3)), meta(1, b=(1, 3))])
    with pytest.raises(NFMInputError, match=r"sum_j \(2, 3\)"):
        plan_reduce([meta(0, a=(1, 3)), meta(1, a=(2, 3))])
    with pytest.raises(NFMInputError, match="empty on all 2 ranks"):
        plan_reduce([meta(0), meta(1)])
    negative = KeyMeta(
        key="a",
        jtj_shape=(3, 3),
        j_shape=(1, 3),
        dtypes=("torch.float64",) * 3,
        n_samples=-1.0,
        n_rows=1.0,
        symmetric=True,
    )
    with pytest.raises(NFMInputError, match=r"rank 1 holds n_samples=-1\.0"):
        plan_reduce([meta(0, a=(1, 3)), RankMeta(rank=1, keys=(negative,))])


# --------------------------------------------------------------------------------------------
# Groups, shards, one-process gloo group
# --------------------------------------------------------------------------------------------


@settings(deadline=None)
@given(n=st.integers(0, 200), world=st.integers(1, 9))
def test_shard_ranges_partition_the_rows(n, world):
    ranges = [shard_range(n, r, world) for r in range(world)]
    assert [i for r in ranges for i in r] == list(range(n))
    assert max(len(r) for r in ranges) - min(len(r) for r in ranges) <= 1


def test_shard_helpers_check_their_arguments():
    with pytest.raises(NFMInputError, match="rank must be < world_size=2"):
        shard_range(5, 2, 2)
    assert list(ShardSampler(5, num_replicas=2, rank=1)) == [2, 3, 4]
    x = torch.arange(10)
    assert shard_rows(x, rank=0, world_size=3).tolist() == [0, 1, 2]
    with pytest.raises(NFMInputError, match="ShardSampler"):
        shard_rows([1, 2, 3], rank=0, world_size=2)


def test_process_group_must_be_explicit_and_valid():
    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is initialised in this test process")
    with pytest.raises(NFMInputError, match="not initialised"):
        resolve_process_group("default")
    with pytest.raises(NFMInputError, match="not initialised"):
        nfm.compute_agop(make_model(), make_data(), process_group="default")
    with pytest.raises(NFMInputError, match="got the string 'world'"):
        resolve_process_group("world")
    with pytest.raises(NFMInputError, match="got int"):
        resolve_process_group(3)


@pytest.fixture
def one_rank(tmp_path):
    if not (dist.is_available() and dist.is_gloo_available()) or dist.is_initialized():
        pytest.skip("needs gloo and no process group already initialised")
    dist.init_process_group(
        "gloo",
        init_method=f"file://{tmp_path / 'store'}",
        rank=0,
        world_size=1,
        timeout=datetime.timedelta(seconds=30),
    )
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


@needs_gloo
def test_one_rank_group_object_and_model_unchanged_on_error(one_rank, whole):
    got = nfm.compute_agop(make_model(), make_data(), process_group=one_rank, dtype=torch.float64)
    for key in whole:
        assert_close64(got[key], whole[key])
    model = mixed_mode_model()
    before = modes_and_flags(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # batch norm in training mode
        with pytest.raises(NFMInputError, match="empty on all 1 ranks"):
            nfm.compute_agop(model, torch.zeros(0, 6), process_group="default")
    assert modes_and_flags(model) == before
    acc = nfm.AGOPAccumulator().update("a", torch.randn(3, 2, 4, dtype=torch.float64))
    want = acc.result()["a"].clone()
    assert reduce_accumulator(acc) is acc
    assert_close64(acc.result()["a"], want, tol=1e-15)
