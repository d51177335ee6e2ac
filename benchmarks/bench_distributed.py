"""Benchmark of the distributed AGOP: 1 and 2 CPU processes (gloo), and the bytes one reduce moves.

Usage::

    python benchmarks/bench_distributed.py     # writes benchmarks/results/distributed_cpu.*

What it measures, in one run, for a fixed data set (an MLP 256-512-512-10, float32, 4,096
samples, the AGOP of the model input and of the three ``nn.Linear`` layers):

1. For W = 1 and W = 2 processes (spawned, a gloo group over a file store, one thread each,
   so that W processes use W cores), each rank takes its exact shard
   (:func:`nfm.distributed.shard_rows`) and times, after a warm-up call and a barrier,

   * the local pass (:func:`nfm.features.accumulate_agop` on the shard, no communication),
   * the reduce (:func:`nfm.distributed.reduce_accumulator`: the metadata exchange and the
     one all-reduce),
   * the whole ``compute_agop(..., process_group="default")`` call.

   The time of a step is that of the slowest rank; the speed-up is W = 1's time over W = 2's.
2. The reduce buffer: float64 numbers per key, :math:`2 + d(d+1)/2 + k d` (counts, the upper
   triangle of :math:`\\sum J^T J`, :math:`\\sum J`), their total in bytes, and the pickled
   metadata each rank sends. Neither depends on the number of samples.
3. That the 2-process AGOP equals the 1-process one (max entry-wise difference).

What it means for N nodes is computed, not measured: a ring all-reduce of B bytes sends and
receives :math:`2 (N-1)/N \\cdot B` per rank, so the communication per reduce stays below 2 B
per rank whatever N, while the local pass shrinks as 1/N.

The machine the committed numbers come from is shared with other jobs (its load average is
recorded): the timings are noisy.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

RESULTS = Path(__file__).resolve().parent / "results"
WIDTHS = (256, 512, 512, 10)
N_SAMPLES = 4096
CHUNK = 512


def make_model(seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(itertools.pairwise(WIDTHS)):
        linear = nn.Linear(d_in, d_out)
        with torch.no_grad():
            linear.weight.copy_(torch.randn(d_out, d_in, generator=gen) / d_in**0.5)
            linear.bias.zero_()
        layers.append(linear)
        if i < len(WIDTHS) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def make_data(n: int = N_SAMPLES, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, WIDTHS[0], generator=torch.Generator().manual_seed(seed))


def run_rank(rank: int, world: int, out: str, store: str, repeats: int) -> None:
    import torch.distributed as dist

    import nfm
    from nfm.distributed import reduce_accumulator, reduced_sizes, shard_rows
    from nfm.distributed.reduce import local_metadata

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=300),
    )
    model, x = make_model(), make_data()
    shard = shard_rows(x)
    nfm.compute_agop(model, shard[:64], process_group="default", chunk_size=CHUNK)  # warm-up
    timings: dict[str, list[float]] = {"local": [], "reduce": [], "compute_agop": []}
    for _ in range(repeats):
        dist.barrier()
        t0 = time.perf_counter()
        acc = nfm.accumulate_agop(model, shard, chunk_size=CHUNK)
        t1 = time.perf_counter()
        reduce_accumulator(acc)
        t2 = time.perf_counter()
        timings["local"].append(t1 - t0)
        timings["reduce"].append(t2 - t1)
        dist.barrier()
        t3 = time.perf_counter()
        result = nfm.compute_agop(model, shard, process_group="default", chunk_size=CHUNK)
        timings["compute_agop"].append(time.perf_counter() - t3)
    sizes = reduced_sizes(acc)
    meta_bytes = len(pickle.dumps(local_metadata(acc, rank)))
    torch.save(
        {
            "rows": len(shard),
            "timings": timings,
            "sizes": sizes,
            "meta_bytes": meta_bytes,
            "result": {k: v.double() for k, v in result.items()},
        },
        Path(out) / f"w{world}_rank{rank}.pt",
    )
    dist.destroy_process_group()


def launch(world: int, out: Path, repeats: int) -> list[dict[str, Any]]:
    import torch.multiprocessing as mp

    store = out / f"store{world}"
    context = mp.start_processes(
        run_rank,
        args=(world, str(out), str(store), repeats),
        nprocs=world,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + 900
    try:
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {world}-process run did not finish in 900 s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    return [torch.load(out / f"w{world}_rank{r}.pt", weights_only=False) for r in range(world)]


def slowest(ranks: list[dict[str, Any]], step: str) -> float:
    """Best over repeats of the slowest rank's time (the wall time of the step)."""
    repeats = len(ranks[0]["timings"][step])
    return min(max(r["timings"][step][i] for r in ranks) for i in range(repeats))


def main(argv: list[str] | None = None) -> int:
    from nfm._utils.env import machine_info

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    load_before = os.getloadavg()
    runs: dict[int, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for world in (1, 2):
            runs[world] = launch(world, Path(tmp), args.repeats)
    load_after = os.getloadavg()
    sizes = runs[1][0]["sizes"]
    buffer_bytes = 8 * sum(sizes.values())
    gap = max(
        float((runs[2][r]["result"][k] - runs[1][0]["result"][k]).abs().max())
        for r in range(2)
        for k in sizes
    )
    steps = ("local", "reduce", "compute_agop")
    table = {w: {s: slowest(runs[w], s) for s in steps} for w in runs}
    payload = {
        "machine": machine_info(),
        "load_average_before_after": [list(load_before), list(load_after)],
        "model": list(WIDTHS),
        "n_samples": N_SAMPLES,
        "chunk_size": CHUNK,
        "dtype": "float32",
        "repeats": args.repeats,
        "rows_per_rank": {w: [r["rows"] for r in runs[w]] for w in runs},
        "seconds_slowest_rank_best_of_repeats": table,
        "speedup_2_over_1": {s: table[1][s] / table[2][s] for s in steps},
        "reduce_numbers_per_key": sizes,
        "reduce_bytes": buffer_bytes,
        "metadata_bytes_per_rank": runs[1][0]["meta_bytes"],
        "max_abs_difference_2_vs_1_process": gap,
        "ring_bytes_per_rank": {n: 2 * (n - 1) / n * buffer_bytes for n in (2, 4, 8, 64, 512)},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "distributed_cpu.json").write_text(json.dumps(payload, indent=2) + "\n")
    machine = payload["machine"]
    lines = [
        "# Distributed AGOP, CPU gloo: 1 vs 2 processes",
        "",
        f"`python benchmarks/bench_distributed.py`, {machine['date_utc']}, {machine['cpu']}, "
        f"{machine['cores_available']} cores available, torch {machine['versions']['torch']}. "
        f"Load average (1, 5, 15 min) before {tuple(round(v, 2) for v in load_before)}, after "
        f"{tuple(round(v, 2) for v in load_after)}: the machine is shared, timings are noisy.",
        "",
        f"MLP {'-'.join(map(str, WIDTHS))}, float32, {N_SAMPLES} samples, chunk {CHUNK}, one "
        f"thread per process; seconds of the slowest rank, best of {args.repeats}.",
        "",
        "| step | 1 process | 2 processes | speed-up |",
        "|---|---|---|---|",
    ]
    for step in steps:
        lines.append(
            f"| {step} | {table[1][step]:.3f} | {table[2][step]:.3f} | "
            f"{table[1][step] / table[2][step]:.2f} |"
        )
    lines += [
        "",
        f"Max |AGOP(2 processes) - AGOP(1 process)| = {gap:.1e} (float32 compute, float64 sums).",
        "",
        "Reduce buffer per key (float64 numbers, 2 + d(d+1)/2 + k d):",
        "",
        "| key | numbers | bytes |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {v} | {8 * v} |" for k, v in sizes.items()]
    lines += [
        f"| all | {sum(sizes.values())} | {buffer_bytes} |",
        "",
        f"Metadata per rank (pickled, one all_gather_object): {payload['metadata_bytes_per_rank']}"
        " bytes.",
        "",
        "N nodes (computed, not measured): a ring all-reduce sends and receives "
        "2 (N-1)/N x B bytes per rank: "
        + ", ".join(f"N={n}: {v / 1e6:.2f} MB" for n, v in payload["ring_bytes_per_rank"].items())
        + "; independent of the number of samples, while the local pass shrinks as 1/N.",
        "",
    ]
    (args.out / "distributed_cpu.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
