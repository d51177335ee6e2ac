"""Grokking benchmark: the RFM on all four operations mod 61, and the network on addition.

Usage (from the repository root)::

    python benchmarks/grokking.py                 # kernel part, then neural part
    python benchmarks/grokking.py --part kernel   # or --part neural

Writes to ``benchmarks/results/grokking/``: per-run histories (CSV), ``kernel_summary.{json,md}``,
``neural_summary.{json,md}``, figures (PNG) and ``benchmark.json`` with the machine, the date
and the same-run baseline: the seconds of one float64 n x n matrix product (n = number of
training pairs), so that per-iteration times can be read against the machine's speed.
Targets (issue 5, 2 CPU cores): >= 99% test accuracy on add mod 61 within 25 iterations and
under 30 s; all four operations grok; the network groks within 10 minutes of CPU time.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from nfm.grokking.runner import machine_info, run_kernel_suite, run_neural_experiment

RESULTS = Path(__file__).resolve().parent / "results" / "grokking"


def matmul_seconds(n: int, repeats: int = 3) -> float:
    """Median seconds of one (n x n) @ (n x n) float64 product on this machine, now."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, dtype=torch.float64, generator=gen)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ a
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["kernel", "neural", "all"], default="all")
    parser.add_argument("--p", type=int, default=61)
    parser.add_argument("--fraction", type=float, default=0.5)
    parser.add_argument("--iterations", type=int, default=25)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default=str(RESULTS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_train = round(args.fraction * args.p * args.p)
    baseline = matmul_seconds(n_train)
    record = {
        "machine": machine_info(),
        "matmul_seconds": baseline,
        "matmul_n": n_train,
        "note": "machine shared with other jobs while this ran; times are inflated",
    }
    print(f"baseline: one {n_train}x{n_train} float64 matmul takes {baseline:.3f} s")
    if args.part in ("kernel", "all"):
        rows = run_kernel_suite(
            ["add", "sub", "mul", "div"],
            p=args.p,
            train_fraction=args.fraction,
            n_iter=args.iterations,
            seed=args.seed,
            output_dir=out,
        )
        print("op   it50 it90 it99 final_acc seconds cpu_s s/iter  s/iter per matmul  controls")
        for row in rows:
            per_iter = row["seconds"] / (row["iterations_run"] + 1)
            print(
                f"{row['op']:<4} {row['iter_50']!s:>4} {row['iter_90']!s:>4} "
                f"{row['iter_99']!s:>4} {row['final_test_accuracy']:9.4f} {row['seconds']:7.1f} "
                f"{row['cpu_seconds']:5.0f} "
                f"{per_iter:6.2f} {per_iter / baseline:10.1f}x  plain "
                f"{row['plain_kernel_test_accuracy']:.3f} / random circulant "
                f"{row['random_circulant_test_accuracy']:.3f}"
            )
        add = next(r for r in rows if r["op"] == "add")
        target_met = (
            add["iter_99"] is not None
            and add["iter_99"] <= 25
            and add["seconds_to_99"] is not None
            and add["seconds_to_99"] < 30
        )
        verdict = "met" if target_met else "NOT met"
        print(
            f"target (add: 99% within 25 iterations and 30 s): {verdict} "
            f"(iteration {add['iter_99']}, {add['seconds_to_99']} s)"
        )
        record["kernel"] = rows
    if args.part in ("neural", "all"):
        row = run_neural_experiment(
            "add",
            p=args.p,
            train_fraction=args.fraction,
            epochs=args.epochs,
            seed=args.seed,
            stop_at_test_accuracy=None,
            output_dir=out,
        )
        print(
            f"network, add mod {args.p}: 99% test at epoch {row['epoch_test_99']}, "
            f"CPU {row['cpu_seconds_to_99']} s to 99% ({row['cpu_seconds']:.0f} s in all, "
            f"{row['epochs_run']:.0f} epochs); NFA Pearson alpha=1/2 {row['nfa_pearson_a0.5']:.4f} "
            f"(at 99%: {row['nfa_pearson_a0.5_at_99']}); structure {row['structure']}"
        )
        record["neural"] = row
    name = f"benchmark_{args.part}.json"
    (out / name).write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")


if __name__ == "__main__":
    main()
