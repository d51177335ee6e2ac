"""Benchmark of nfm.compute_agop: FLOP rate against the machine's matmul rate, speed-up over a
per-sample autograd loop, and peak memory as the number of samples grows.

Usage::

    python benchmarks/bench_agop.py                 # CPU, writes benchmarks/results/agop_cpu.*
    python benchmarks/bench_agop.py --device cuda   # GPU, writes benchmarks/results/agop_cuda.*

What it measures, in one run:

1. The float32 matrix-multiply rate of the machine (square ``n x n`` products, best of several,
   measured before and after the AGOP timings; the higher is used, so the fraction is
   conservative).
2. The AGOP of all layers (every ``nn.Linear`` and the model input) of an MLP 784-1024-1024-10 on
   4,000 samples and of an MLP 64-128-128-10 on 2,000 samples, float32. FLOPs needed are
   counted as

   * forward: ``2 n sum_l k_l d_l``,
   * ``c`` vector-Jacobian products with respect to the layer inputs: ``2 n c sum_l k_l d_l``,
   * outer products as symmetric rank-k updates: ``n c d (d + 1)`` per distinct Jacobian
     (``n c d (d + 1) / 2`` multiply-adds; the model input and the first layer's input have the
     same Jacobian, computed once),

   and the achieved rate is that count over the wall time.
3. The same AGOP by a per-sample autograd loop (one forward and ``c`` backward passes per sample,
   ``J^T J`` per sample); on the large model the loop runs on a subset and is extrapolated
   linearly (it is linear in the number of samples).
4. Peak memory of ``compute_agop`` at 4,000 and 40,000 samples with the same chunk size, each in
   a fresh subprocess (CPU: peak resident set size above the level before the call, from
   ``/proc/self/status`` after resetting the peak; CUDA: ``torch.cuda.max_memory_allocated`` above
   the level before the call).

The machine the committed CPU numbers come from is shared: timings are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from nfm._utils.env import machine_info as shared_machine_info
from nfm.features import compute_agop

RESULTS = Path(__file__).resolve().parent / "results"
LARGE = (784, 1024, 1024, 10)
SMALL = (64, 128, 128, 10)


def make_mlp(widths: tuple[int, ...], device: str, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        linear = nn.Linear(widths[i], widths[i + 1])
        with torch.no_grad():
            linear.weight.copy_(
                torch.randn(linear.weight.shape, generator=generator) / widths[i] ** 0.5
            )
            linear.bias.zero_()
        layers.append(linear)
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).to(device)


def make_data(n: int, d: int, device: str, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)).to(device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_rate(device: str, repeats: int = 5) -> float:
    """Best float32 FLOP/s of an n x n matrix product."""
    n = 8192 if device.startswith("cuda") else 2048
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(device)
    b = torch.randn(n, n, generator=generator).to(device)
    a @ b
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def flops_needed(widths: tuple[int, ...], n: int) -> dict[str, float]:
    c = widths[-1]
    sum_kd = sum(widths[i] * widths[i + 1] for i in range(len(widths) - 1))
    # distinct Jacobians: the input (= first layer's input) and each hidden layer's input
    dims = list(widths[:-1])
    forward = 2.0 * n * sum_kd
    vjps = 2.0 * n * c * sum_kd
    outer = float(sum(n * c * d * (d + 1) for d in dims))
    return {"forward": forward, "vjps": vjps, "outer": outer, "total": forward + vjps + outer}


def per_sample_loop(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The AGOP by one forward and c backward passes per sample (the baseline)."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    modules = dict(model.named_modules())
    deltas: dict[str, torch.Tensor] = {}

    def make_hook(name: str):
        def hook(module, args):
            delta = torch.zeros_like(args[0], requires_grad=True)
            deltas[name] = delta
            return (args[0] + delta,)

        return hook

    handles = [modules[name].register_forward_pre_hook(make_hook(name)) for name in names]
    sums: dict[str, torch.Tensor] = {}
    try:
        for i in range(x.shape[0]):
            xi = x[i : i + 1].clone().requires_grad_(True)
            out = model(xi).reshape(-1)
            keys = ["input", *names]
            tensors = [xi] + [deltas[name] for name in names]
            rows: list[list[torch.Tensor]] = [[] for _ in keys]
            for j in range(out.shape[0]):
                grads = torch.autograd.grad(out[j], tensors, retain_graph=True)
                for r, g in zip(rows, grads, strict=True):
                    r.append(g.reshape(-1))
            for key, r in zip(keys, rows, strict=True):
                jac = torch.stack(r)
                if key not in sums:
                    sums[key] = torch.zeros(jac.shape[1], jac.shape[1], device=x.device)
                sums[key] += jac.T @ jac
    finally:
        for handle in handles:
            handle.remove()
    return {key: value / x.shape[0] for key, value in sums.items()}


def time_agop(
    model: nn.Module, x: torch.Tensor, chunk_size: int, device: str, repeats: int
) -> float:
    """Best wall time of ``repeats`` calls, after a warm-up call on one chunk."""
    compute_agop(model, x[: min(len(x), chunk_size)], chunk_size=chunk_size)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        compute_agop(model, x, chunk_size=chunk_size)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def time_loop(model: nn.Module, x: torch.Tensor, device: str) -> float:
    per_sample_loop(model, x[:2])
    sync(device)
    start = time.perf_counter()
    per_sample_loop(model, x)
    sync(device)
    return time.perf_counter() - start


def check_agreement(model: nn.Module, x: torch.Tensor) -> float:
    fast = compute_agop(model, x)
    slow = per_sample_loop(model, x)
    return max(float((fast[k] - slow[k]).norm() / slow[k].norm()) for k in slow)


# ---------------------------------------------------------------------------------------------
# Memory probe (run in a subprocess so that peaks do not mix)
# ---------------------------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_probe(widths: tuple[int, ...], n: int, chunk_size: int, device: str) -> float:
    """Peak extra memory (MiB) of one compute_agop call, in this process."""
    model = make_mlp(widths, device)
    x = make_data(n, widths[0], device)
    compute_agop(model, x[:chunk_size], chunk_size=chunk_size)  # allocator and library warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        compute_agop(model, x, chunk_size=chunk_size)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    with open("/proc/self/clear_refs", "w") as handle:  # reset the peak RSS (VmHWM)
        handle.write("5")
    before = _status_kib("VmRSS")
    compute_agop(model, x, chunk_size=chunk_size)
    return (_status_kib("VmHWM") - before) / 1024


# glibc's dynamic mmap threshold keeps freed chunk-sized buffers in the heap, so the peak RSS
# of a CPU run grows with heap fragmentation (with the number of chunks), not with live memory.
# A fixed threshold returns freed large blocks to the system, so RSS tracks live allocations.
FIXED_MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def run_memory_probe(
    widths: tuple[int, ...], n: int, chunk_size: int, device: str, env: dict[str, str] | None = None
) -> float:
    command = [
        sys.executable,
        __file__,
        "--probe",
        ",".join(map(str, widths)),
        str(n),
        str(chunk_size),
        "--device",
        device,
        "--threads",
        str(torch.get_num_threads()),
    ]
    output = subprocess.run(
        command, check=True, capture_output=True, text=True, env={**os.environ, **(env or {})}
    ).stdout
    return float(output.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def machine_info(device: str) -> dict:
    """nfm's shared machine description plus the device this run measured."""
    info = shared_machine_info()
    info["device"] = device
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def benchmark_model(
    name: str,
    widths: tuple[int, ...],
    n: int,
    loop_n: int,
    chunk_size: int,
    device: str,
    repeats: int,
) -> dict[str, float | int | str]:
    model = make_mlp(widths, device)
    x = make_data(n, widths[0], device)
    agreement = check_agreement(model, x[: min(16, n)])
    agop_s = time_agop(model, x, chunk_size, device, repeats)
    loop_s = time_loop(model, x[:loop_n], device) * n / loop_n
    flops = flops_needed(widths, n)
    return {
        "model": name,
        "widths": "-".join(map(str, widths)),
        "samples": n,
        "chunk_size": chunk_size,
        "loop_samples_timed": loop_n,
        "agop_repeats": repeats,
        "agop_seconds": agop_s,
        "loop_seconds": loop_s,
        "speedup_over_loop": loop_s / agop_s,
        "flops_forward": flops["forward"],
        "flops_vjps": flops["vjps"],
        "flops_outer": flops["outer"],
        "flops_needed": flops["total"],
        "achieved_flops_per_s": flops["total"] / agop_s,
        "max_rel_diff_vs_loop": agreement,
    }


def write_results(payload: dict, device: str) -> tuple[Path, Path]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "cuda" if device.startswith("cuda") else "cpu"
    json_path = RESULTS / f"agop_{stem}.json"
    md_path = RESULTS / f"agop_{stem}.md"
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    m = payload["machine"]
    rate = payload["matmul_flops_per_s"]
    lines = [
        f"# AGOP benchmark ({stem})",
        "",
        f"Produced by `{payload['command']}` on {m['date_utc']}.",
        f"Machine: {m['cpu']}, {m['cores']} cores "
        f"({m['torch_threads']} torch threads){', GPU ' + m['gpu'] if 'gpu' in m else ''}; "
        f"torch {m['versions']['torch']}; `{m['uname']}`.",
        "",
        f"float32 matmul rate measured in the same run: {rate / 1e9:.1f} GFLOP/s.",
        "",
        "AGOP time: best of the repeats; per-sample loop: one run.",
        "",
        "| model | samples | chunk | FLOPs needed | AGOP time (s) | achieved GFLOP/s | "
        "fraction of matmul rate | per-sample loop (s) | speed-up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["models"]:
        loop_note = (
            ""
            if r["loop_samples_timed"] == r["samples"]
            else (f" (timed on {r['loop_samples_timed']}, extrapolated)")
        )
        lines.append(
            f"| {r['widths']} | {r['samples']} | {r['chunk_size']} | {r['flops_needed']:.3g} | "
            f"{r['agop_seconds']:.3f} | {r['achieved_flops_per_s'] / 1e9:.1f} | "
            f"{r['achieved_flops_per_s'] / rate:.3g} | {r['loop_seconds']:.2f}{loop_note} | "
            f"{r['speedup_over_loop']:.1f}x |"
        )
    mem = payload["memory"]
    lines += [
        "",
        f"Peak extra memory of `compute_agop` ({mem['widths']}, chunk {mem['chunk_size']}): "
        f"{mem['peak_mib_small_n']:.1f} MiB at {mem['small_n']} samples, "
        f"{mem['peak_mib_large_n']:.1f} MiB at {mem['large_n']} samples "
        f"(ratio {mem['ratio']:.2f}; {mem['method']})."
        + (
            f" With glibc's default malloc settings: {mem['default_malloc_peak_mib_small_n']:.1f}"
            f" and {mem['default_malloc_peak_mib_large_n']:.1f} MiB (heap fragmentation "
            "included)."
            if "default_malloc_peak_mib_small_n" in mem
            else ""
        ),
        "",
        "Targets: fraction of matmul rate >= 0.5 on 784-1024-1024-10; speed-up >= 20x on "
        "64-128-128-10; memory ratio <= 1.2.",
        "",
        "FLOPs needed = forward 2n sum k_l d_l + c VJPs 2nc sum k_l d_l + symmetric rank-k "
        "updates n c d(d+1) per distinct Jacobian (the model input and the first layer's input "
        "share one). " + payload["note"],
        "",
    ]
    md_path.write_text("\n".join(lines))
    return json_path, md_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--chunk-size", type=int, default=None, help="samples per chunk")
    parser.add_argument(
        "--large-loop-samples",
        type=int,
        default=None,
        help="samples the per-sample loop is timed on for the large model",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="AGOP timings, best taken (cpu 2, cuda 5)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice); on a shared, oversubscribed machine "
        "1 thread avoids OpenMP threads waiting for each other",
    )
    parser.add_argument(
        "--memory-model",
        choices=["small", "large"],
        default=None,
        help="model of the memory probe (default: large on cuda, small on cpu)",
    )
    parser.add_argument(
        "--probe", nargs=3, metavar=("WIDTHS", "N", "CHUNK"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)  # a benchmark script, not library code
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    if args.probe:
        widths = tuple(int(w) for w in args.probe[0].split(","))
        print(memory_probe(widths, int(args.probe[1]), int(args.probe[2]), device))
        return 0

    cuda = device.startswith("cuda")
    chunk = args.chunk_size or (4096 if cuda else 256)
    repeats = args.repeats or (5 if cuda else 2)
    large_loop = args.large_loop_samples or (4000 if cuda else 400)
    rate_before = matmul_rate(device)
    print(f"float32 matmul rate: {rate_before / 1e9:.1f} GFLOP/s")
    rows = []
    for name, widths, n, loop_n in (
        ("large", LARGE, 4000, min(large_loop, 4000)),
        ("small", SMALL, 2000, 2000),
    ):
        row = benchmark_model(name, widths, n, loop_n, chunk, device, repeats)
        rows.append(row)
        print(
            f"{row['widths']:>16} n={n}: AGOP {row['agop_seconds']:.3f} s, "
            f"{row['flops_needed'] / 1e9:.1f} GFLOP needed, "
            f"{row['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s; per-sample loop "
            f"{row['loop_seconds']:.2f} s -> speed-up {row['speedup_over_loop']:.1f}x "
            f"(max rel. diff vs loop {row['max_rel_diff_vs_loop']:.1e})"
        )
    rate_after = matmul_rate(device)
    rate = max(rate_before, rate_after)
    print(f"float32 matmul rate (after): {rate_after / 1e9:.1f} GFLOP/s; using {rate / 1e9:.1f}")
    for row in rows:
        row["fraction_of_matmul_rate"] = row["achieved_flops_per_s"] / rate
        print(f"{row['widths']:>16}: {row['fraction_of_matmul_rate']:.3g} of the matmul rate")

    memory_model = args.memory_model or ("large" if cuda else "small")
    widths = LARGE if memory_model == "large" else SMALL
    env = None if cuda else FIXED_MMAP_ENV
    small_mem = run_memory_probe(widths, 4000, chunk, device, env)
    large_mem = run_memory_probe(widths, 40000, chunk, device, env)
    memory = {
        "widths": "-".join(map(str, widths)),
        "chunk_size": chunk,
        "small_n": 4000,
        "large_n": 40000,
        "peak_mib_small_n": small_mem,
        "peak_mib_large_n": large_mem,
        "ratio": large_mem / small_mem if small_mem > 0 else float("nan"),
        "method": "torch.cuda.max_memory_allocated above the level before the call"
        if cuda
        else "peak RSS (VmHWM) above VmRSS before the call, fresh subprocess each, glibc "
        "mmap threshold fixed at 128 KiB so that RSS follows live memory",
    }
    if not cuda:  # the same with glibc's default (dynamic) threshold, for the record
        default_small = run_memory_probe(widths, 4000, chunk, device)
        default_large = run_memory_probe(widths, 40000, chunk, device)
        memory["default_malloc_peak_mib_small_n"] = default_small
        memory["default_malloc_peak_mib_large_n"] = default_large
        print(
            f"(default glibc malloc: {default_small:.1f} MiB at 4000, {default_large:.1f} MiB "
            "at 40000: heap fragmentation included)"
        )
    print(
        f"peak extra memory ({memory['widths']}, chunk {chunk}): {small_mem:.1f} MiB at 4000 "
        f"samples, {large_mem:.1f} MiB at 40000 (ratio {memory['ratio']:.2f})"
    )
    payload = {
        "command": " ".join(["python benchmarks/bench_agop.py", *sys.argv[1:]]),
        "machine": machine_info(device),
        "matmul_flops_per_s": rate,
        "matmul_flops_per_s_before": rate_before,
        "matmul_flops_per_s_after": rate_after,
        "models": rows,
        "memory": memory,
        "note": "The CPU machine is shared with other jobs, so timings are noisy."
        if not cuda
        else "",
    }
    json_path, md_path = write_results(payload, device)
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
