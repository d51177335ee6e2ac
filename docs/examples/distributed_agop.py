"""The AGOP of a data set sharded over processes: run with

    torchrun --nproc_per_node=2 docs/examples/distributed_agop.py

Every rank computes the partial sums of its own shard; one all-reduce gives every rank the AGOP
of the whole data set. Rank 0 compares it with the single-process AGOP and writes the tracker's
history.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import nfm
from nfm.distributed import ShardSampler, shard_rows


def main() -> None:
    dist.init_process_group("gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR, ...
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same model and data on every rank
    model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 3)).double()
    x = torch.randn(1001, 10, dtype=torch.float64)  # 1001: not a multiple of the world size

    # a tensor: this rank's rows; the result is the AGOP of all 1001 rows, on every rank
    agops = nfm.compute_agop(model, shard_rows(x), process_group="default")
    # a DataLoader: ShardSampler partitions the data set exactly (DistributedSampler would pad)
    dataset = TensorDataset(x, torch.zeros(len(x)))
    loader = DataLoader(dataset, batch_size=100, sampler=ShardSampler(dataset))
    from_loader = nfm.compute_agop(model, loader, process_group="default")

    # a DDP model works as it is; its layer names carry the "module." prefix
    ddp = nn.parallel.DistributedDataParallel(model)
    from_ddp = nfm.compute_agop(ddp, shard_rows(x), process_group="default")

    # the tracker: every rank records (one reduce per record), rank 0 writes
    tracker = nfm.NFATracker(model, shard_rows(x), process_group="default")
    tracker.record(0)
    out = Path(tempfile.gettempdir()) / "nfm_distributed_history.json"
    tracker.save(out)

    shard_sizes: list[int | None] = [None] * world
    dist.all_gather_object(shard_sizes, len(shard_rows(x)))
    if rank == 0:
        print(f"{world} ranks, rows per shard {shard_sizes}, {len(x)} rows in all")
        single = nfm.compute_agop(model, x)  # one process, all the data
        for key, value in agops.items():
            ddp_key = key if key == "input" else f"module.{key}"
            gap = max(
                float((result - single[key]).abs().max())
                for result in (value, from_loader[key], from_ddp[ddp_key])
            )
            print(f"{key:>5}: AGOP {tuple(value.shape)}, max |distributed - single| = {gap:.1e}")
        print(f"tracker rows: {len(tracker.history)}, history written by rank 0 to {out}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
