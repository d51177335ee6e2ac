"""Scenarios of the 2-process distributed AGOP test, run by every rank (see test_distributed.py).

:func:`launch` spawns ``world_size`` CPU processes with a gloo group (file store: no port to
pick, hence no port race), each runs :func:`run_rank`, which plays every scenario in the same
order on every rank and saves what it got (tensors, rows, or the exception's type and
message) to ``<out>/rank<r>.pt``; the parent process compares them with single-process
results. A per-collective timeout and a wall-clock deadline in :func:`launch` keep a broken
collective from hanging the test run.
"""

from __future__ import annotations

import datetime
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

N_SAMPLES = 37  # not a multiple of 2: uneven shards, and DistributedSampler would pad
N_FEATURES = 4


def make_model(width: int = 6, seed: int = 0) -> nn.Sequential:
    """The float64 MLP of every scenario: Linear(4, width) -> tanh -> Linear(width, 3)."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(N_FEATURES, width), nn.Tanh(), nn.Linear(width, 3)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return model


def make_data(n: int = N_SAMPLES, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, N_FEATURES, generator=torch.Generator().manual_seed(seed)).double()


def _outcome(fn: Callable[[], Any]) -> dict[str, Any]:
    try:
        return {"ok": True, "value": fn()}
    except Exception as exc:
        return {"ok": False, "type": type(exc).__name__, "message": str(exc)}


def _scenarios(rank: int, world: int, tmp: Path) -> dict[str, Callable[[], Any]]:
    import torch.distributed as dist
    from torch.utils.data import DataLoader, TensorDataset
    from torch.utils.data.distributed import DistributedSampler

    import nfm
    from nfm.distributed import ShardSampler, full_replica, reduce_accumulator, shard_rows

    model = make_model()
    x = make_data()
    mine = shard_rows(x)
    f64 = torch.float64

    def sharded() -> Any:
        return nfm.compute_agop(model, mine, process_group="default", dtype=f64)

    def no_group() -> Any:  # process_group=None never communicates, even with a group set up
        return nfm.compute_agop(model, mine, dtype=f64)

    def sharded_centered() -> Any:
        return nfm.compute_agop(model, mine, centered=True, process_group="default", dtype=f64)

    def sharded_numpy() -> Any:
        return nfm.compute_agop(model, mine.numpy(), process_group="default", dtype=f64)

    def empty_tensor_shard() -> Any:  # rank 0 holds everything, the others nothing
        data = x if rank == 0 else x[:0]
        return nfm.compute_agop(model, data, process_group="default", dtype=f64)

    def empty_loader_shard() -> Any:  # an iterable that yields no batch on the last rank
        data = [x[: N_SAMPLES // 2], x[N_SAMPLES // 2 :]] if rank == 0 else []
        return nfm.compute_agop(model, data, process_group="default", dtype=f64)

    def shard_sampler_loader() -> Any:
        dataset = TensorDataset(x, torch.zeros(N_SAMPLES))
        loader = DataLoader(dataset, batch_size=5, sampler=ShardSampler(dataset))
        return nfm.compute_agop(model, loader, process_group="default", dtype=f64)

    def ddp_model() -> Any:
        wrapped = nn.parallel.DistributedDataParallel(make_model())
        return nfm.compute_agop(wrapped, mine, process_group="default", dtype=f64)

    def fsdp1_replica() -> Any:
        from torch.distributed.fsdp import FullyShardedDataParallel

        sharded_model = FullyShardedDataParallel(make_model(), device_id=torch.device("cpu"))
        replica = full_replica(sharded_model, make_model(seed=99))
        return nfm.compute_agop(replica, mine, process_group="default", dtype=f64)

    def fsdp2_replica() -> Any:
        from torch.distributed.fsdp import fully_shard

        sharded_model = make_model()
        fully_shard(sharded_model[0])
        fully_shard(sharded_model)
        replica = full_replica(sharded_model, make_model(seed=99))
        return nfm.compute_agop(replica, mine, process_group="default", dtype=f64)

    def fsdp2_direct() -> Any:  # refused on every rank, before any collective
        from torch.distributed.fsdp import fully_shard

        sharded_model = make_model()
        fully_shard(sharded_model)
        return nfm.compute_agop(sharded_model, mine, process_group="default", dtype=f64)

    def report() -> Any:
        result = nfm.nfa_report(model, mine, process_group="default", dtype=f64)
        return {"rows": result.rows, "agop": result.agop}

    def tracker() -> Any:
        tracked = nfm.NFATracker(model, mine, process_group="default", dtype=f64)
        tracked.record(0, loss=1.0)
        path = tracked.save(tmp / f"history_from_rank{rank}.json")
        return {"rows": tracked.history, "path": str(path), "wrote": path.exists()}

    def low_level_reduce() -> Any:  # accumulators built from random Jacobians, rank 1 empty
        acc = nfm.AGOPAccumulator()
        if rank == 0:
            gen = torch.Generator().manual_seed(5)
            acc.update("a", torch.randn(9, 2, 5, generator=gen, dtype=f64))
            acc.update("b", torch.randn(9, 3, 2, 4, generator=gen, dtype=f64))
        reduce_accumulator(acc, expected_keys=None if rank == 0 else ["a", "b"])
        return acc.state_dict()

    def mismatched_keys() -> Any:
        layers = None if rank == 0 else ["0"]
        return nfm.compute_agop(model, mine, layers=layers, process_group="default")

    def mismatched_shapes() -> Any:
        net = model if rank == 0 else make_model(width=7)
        return nfm.compute_agop(net, mine, process_group="default")

    def mismatched_dtype() -> Any:
        dtype = f64 if rank == 0 else torch.float32
        return nfm.compute_agop(model, mine, process_group="default", dtype=dtype)

    def empty_rank_wrong_keys() -> Any:
        data, layers = (x, None) if rank == 0 else (x[:0], ["0"])
        return nfm.compute_agop(model, data, layers=layers, process_group="default")

    def all_empty() -> Any:
        return nfm.compute_agop(model, x[:0], process_group="default")

    def failing_rank() -> Any:  # NaN data on the last rank: a local error, reported to the others
        data = mine.clone()
        if rank == world - 1:
            data[0, 0] = float("nan")
        return nfm.compute_agop(model, data, process_group="default")

    def padding_sampler() -> Any:
        dataset = TensorDataset(x)
        loader = DataLoader(dataset, batch_size=8, sampler=DistributedSampler(dataset))
        return nfm.compute_agop(model, loader, process_group="default")

    def still_in_step() -> Any:  # after all the errors, the ranks still pair their collectives
        value = torch.tensor([float(rank + 1)])
        dist.all_reduce(value)
        return float(value)

    return {
        "sharded": sharded,
        "no_group": no_group,
        "sharded_centered": sharded_centered,
        "sharded_numpy": sharded_numpy,
        "empty_tensor_shard": empty_tensor_shard,
        "empty_loader_shard": empty_loader_shard,
        "shard_sampler_loader": shard_sampler_loader,
        "ddp_model": ddp_model,
        "fsdp1_replica": fsdp1_replica,
        "fsdp2_replica": fsdp2_replica,
        "fsdp2_direct": fsdp2_direct,
        "report": report,
        "tracker": tracker,
        "low_level_reduce": low_level_reduce,
        "mismatched_keys": mismatched_keys,
        "mismatched_shapes": mismatched_shapes,
        "mismatched_dtype": mismatched_dtype,
        "empty_rank_wrong_keys": empty_rank_wrong_keys,
        "all_empty": all_empty,
        "failing_rank": failing_rank,
        "padding_sampler": padding_sampler,
        "still_in_step": still_in_step,
    }


def run_rank(rank: int, world: int, out: str, store: str) -> None:
    """One rank: join the gloo group, play every scenario, save the outcomes."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    out_dir = Path(out)
    results: dict[str, Any] = {}
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        for name, scenario in _scenarios(rank, world, out_dir).items():
            started = time.perf_counter()
            results[name] = _outcome(scenario)
            results[name]["seconds"] = time.perf_counter() - started
    except Exception:  # pragma: no cover - reported through the file
        results["__crash__"] = {"ok": False, "type": "crash", "message": traceback.format_exc()}
    finally:
        torch.save(results, out_dir / f"rank{rank}.pt")
        dist.destroy_process_group()


def launch(out: Path, world: int = 2, deadline_s: float = 120.0) -> list[dict[str, Any]]:
    """Spawn ``world`` ranks of :func:`run_rank`; return each rank's outcomes.

    Raises RuntimeError when a rank fails to finish by ``deadline_s`` (every rank is killed) or
    exits with an error.
    """
    import torch.multiprocessing as mp

    out.mkdir(parents=True, exist_ok=True)
    store = out / "store"
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    context = mp.start_processes(
        run_rank,
        args=(world, str(out), str(store)),
        nprocs=world,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + deadline_s
    try:
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                raise RuntimeError(f"distributed test ranks did not finish in {deadline_s} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]


if __name__ == "__main__":  # python tests/distributed_worker.py: run the scenarios by hand
    import sys
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        outcomes = launch(Path(tmp))
        for r, outcome in enumerate(outcomes):
            for name, result in outcome.items():
                shown = "ok" if result["ok"] else f"{result['type']}: {result['message'][:150]}"
                print(f"rank {r} {name:22s} {result.get('seconds', 0):6.2f}s {shown}")
        print(f"total {time.perf_counter() - began:.1f} s")
