"""RFM at large n: fit time, peak memory and test accuracy against n (10k .. 1M), nfm and xrfm.

Task: binary labels ``1[x0 x1 + sin(2 x2) + 0.1 e > 0]`` on ``x ~ N(0, I_20)``, ``e ~ N(0, 1)``
(the synthetic task of ``bench_rfm_xrfm.py``; the label depends on 3 of the 20 coordinates, so
feature learning helps, and the noise-free boundary is curved, so more rows keep helping; the
noise caps the accuracy: the noise-free rule scores ``bayes_accuracy``, 0.9724 on the test
rows). The
training sets are nested: the size-``n`` set is the first ``n`` rows of one 1M-row stream, so the
20k row of the table is the same method on a 20k subsample of the 1M set. Every fit is scored on
the same 20,000 test rows drawn separately.

Methods, each with its defaults:

* ``nfm``: ``RFMClassifier(random_state=seed)`` -- exact up to 20k rows, above that the
  AGOP-split tree of ``nfm.rfm.partition`` (``leaf_size="auto"``: the root is the exact fit on a
  20k subsample, leaves of at most 16,000 rows solved by conjugate gradients in its metric);
* ``xrfm``: ``xRFM(tuning_metric="accuracy", device="cpu")`` 0.4.5 with its defaults; its API
  needs a validation set, so it trains on 80% of the same rows and validates on the other 20%.

Each fit runs in its own subprocess with a wall-clock timeout and an address-space cap
(``RLIMIT_AS``, default 8 GiB) so that one method cannot exhaust the shared machine; a fit that
exceeds either is reported as such. ``peak_rss_mb`` is the subprocess's peak resident set
(``ru_maxrss``, data included); ``data_rss_mb`` its resident set after loading the data.

Usage::

    python benchmarks/bench_rfm_large_n.py                     # nfm and xrfm, 10k .. 1M
    python benchmarks/bench_rfm_large_n.py --sizes 10000 20000 --methods nfm
    /tmp/benchvenv/bin/python benchmarks/bench_rfm_large_n.py  # where xrfm is installed

Writes ``benchmarks/results/large_n/large_n.{csv,json,md,png}`` (``--out`` to change), with the
machine, the date and the load average before and after each fit.
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
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "large_n"
N_TEST = 20000
D = 20


def stream(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` rows of the task's stream for ``seed`` (float32 features, int labels)."""
    rng = np.random.default_rng(seed)
    X = np.empty((n, D), dtype=np.float32)
    y = np.empty(n, dtype=np.int64)
    chunk = 100_000
    for start in range(0, n, chunk):  # chunked so that a prefix is the same rows for every n
        m = min(chunk, n - start)
        Xc = rng.standard_normal((chunk, D))[:m]
        e = rng.standard_normal(chunk)[:m]
        X[start : start + m] = Xc
        y[start : start + m] = (Xc[:, 0] * Xc[:, 1] + np.sin(2.0 * Xc[:, 2]) + 0.1 * e > 0).astype(
            np.int64
        )
    return X, y


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker(spec: dict) -> dict:
    """Fit one method on ``n`` rows in this (fresh) process and report."""
    cap = spec["memory_cap_gb"]
    if cap:
        limit = int(cap * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import torch

    X, y = stream(spec["n"], spec["seed"])
    Xt, yt = stream(N_TEST, spec["seed"] + 1000)
    data_rss = _rss_mb()
    extra: dict = {}
    if spec["method"] == "nfm":
        from nfm.rfm import RFMClassifier

        model = RFMClassifier(random_state=spec["seed"])
        fit = lambda: model.fit(X, y)  # noqa: E731
    else:
        from xrfm import xRFM

        perm = np.random.default_rng(spec["seed"]).permutation(len(y))
        n_val = round(0.2 * len(y))
        val, tr = perm[:n_val], perm[n_val:]
        model = xRFM(
            tuning_metric="accuracy", device=torch.device("cpu"), random_state=spec["seed"]
        )
        model.verbose = False
        fit = lambda: model.fit(X[tr], y[tr], X[val], y[val])  # noqa: E731
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    fit()
    fit_seconds, fit_cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    start = time.perf_counter()
    pred = np.asarray(model.predict(Xt)).reshape(-1)
    predict_seconds = time.perf_counter() - start
    if spec["method"] == "nfm":
        partition = getattr(model, "partition_", None)
        extra["n_leaves"] = 1 if partition is None else partition.n_leaves
        extra["max_leaf_rows"] = len(y) if partition is None else int(partition.leaf_sizes.max())
    return {
        **spec,
        **extra,
        "fit_seconds": round(fit_seconds, 2),
        "fit_cpu_seconds": round(fit_cpu, 1),
        "predict_seconds": round(predict_seconds, 2),
        "accuracy": float(np.mean(pred.astype(np.int64) == yt)),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "data_rss_mb": round(data_rss, 1),
    }


def _read_run(path: Path) -> dict:
    """A run's ``large_n.json``, or the rows a run printed (one JSON object per line)."""
    text = path.read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        rows = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        return {"machine": {"date": f"rows printed to {path.name}"}, "rows": rows}


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def run_one(spec: dict, timeout: float) -> dict:
    """Run :func:`worker` for ``spec`` in a subprocess; failures become an ``error`` entry."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    before = load_average()
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        out = {**spec, "error": f"timeout: no result within {timeout:.0f} s"}
    else:
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode == 0 and lines:
            out = json.loads(lines[-1][len("RESULT ") :])
        else:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
            memory = "MemoryError" in proc.stderr or "alloc" in proc.stderr.lower()
            kind = f"out of memory under the {spec['memory_cap_gb']} GiB cap" if memory else "error"
            out = {**spec, "error": f"{kind}: {tail[0][:300]}"}
    out["wall_seconds"] = round(time.perf_counter() - start, 1)
    out["finished"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out["load_before"], out["load_after"] = before, load_average()
    return out


def machine() -> dict:
    import torch

    from nfm._utils.env import machine_info

    info = machine_info()
    out = {key: info[key] for key in ("uname", "cpu", "cores") if key in info}
    out["torch_threads"] = torch.get_num_threads()
    return out


def bayes_accuracy(seed: int) -> float:
    """Test accuracy of the noise-free rule ``1[x0 x1 + sin(2 x2) > 0]`` (the noise's ceiling)."""
    rng = np.random.default_rng(seed + 1000)  # the test stream of :func:`stream`
    X = rng.standard_normal((100_000, D))[:N_TEST]
    _, yt = stream(N_TEST, seed + 1000)
    return float(np.mean((X[:, 0] * X[:, 1] + np.sin(2.0 * X[:, 2]) > 0) == yt))


def plot(rows: list[dict], path: Path, meta: dict) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for method, marker in (("nfm", "o"), ("xrfm", "s")):
        ok = sorted((r for r in rows if r["method"] == method and "error" not in r), key=_n)
        bad = [r for r in rows if r["method"] == method and "error" in r]
        if ok:
            n = [r["n"] for r in ok]
            axes[0].plot(n, [r["fit_seconds"] for r in ok], marker=marker, label=method)
            axes[1].plot(n, [r["peak_rss_mb"] / 1024 for r in ok], marker=marker, label=method)
            axes[2].plot(n, [r["accuracy"] for r in ok], marker=marker, label=method)
        for r in bad:
            reason = "timeout" if r["error"].startswith("timeout") else "failed"
            axes[0].annotate(f"{method} {reason}", (r["n"], r["timeout_s"]), fontsize=8)
            axes[0].plot([r["n"]], [r["timeout_s"]], marker="x", color="red")
    axes[0].axhline(900, color="grey", ls=":", lw=1)
    axes[1].axhline(8, color="grey", ls=":", lw=1)
    for ax, label in zip(axes, ("fit seconds", "peak RSS (GiB)", "test accuracy"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("training rows n")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].legend()
    title = f"RFM vs n, 20 features ({meta.get('cpu', '?')}, {meta['date']}, shared machine)"
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(rows: list[dict], meta: dict) -> str:
    """The results as a markdown table (one row per fit), with the machine and the date."""
    lines = [
        f"Machine: {meta.get('cpu', '?')}, {meta.get('cores', '?')} cores, shared with other "
        f"jobs (load average per fit below); run {meta['date']}"
        + (
            f", merged with runs of {', '.join(meta['earlier_runs'])}"
            if "earlier_runs" in meta
            else ""
        )
        + f". Task: {meta['task']}; {meta['n_test']:,} test rows"
        + (
            f" (the noise-free rule scores {meta['bayes_accuracy']:.4f})"
            if "bayes_accuracy" in meta
            else ""
        )
        + ".",
        "",
        "| method | n | leaves | rows/leaf | fit s | fit CPU s | predict s | peak RSS GiB "
        "| accuracy | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["method"], r["n"])):
        load = f"{r.get('load_before', '?')} -> {r.get('load_after', '?')}"
        if "error" in r:
            lines.append(f"| {r['method']} | {r['n']:,} | | | {r['error']} | | | | | {load} |")
            continue
        lines.append(
            f"| {r['method']} | {r['n']:,} | {r.get('n_leaves', '')} | "
            f"{r.get('max_leaf_rows', '')} | {r['fit_seconds']:.0f} | "
            f"{r.get('fit_cpu_seconds', float('nan')):.0f} | {r['predict_seconds']:.1f} | "
            f"{r['peak_rss_mb'] / 1024:.2f} | {r['accuracy']:.4f} | {load} |"
        )
    return "\n".join(lines) + "\n"


def _n(row: dict) -> int:
    return row["n"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument(
        "--sizes", type=int, nargs="*", default=[10_000, 20_000, 100_000, 1_000_000]
    )
    parser.add_argument("--methods", nargs="+", default=["nfm", "xrfm"], choices=["nfm", "xrfm"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per fit")
    parser.add_argument("--memory-cap-gb", type=float, default=8.0, help="RLIMIT_AS per fit")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--append", action="store_true", help="keep the rows of other (method, n) in --out"
    )
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="*",
        default=[],
        help="large_n.json files (or the printed rows) of other runs to add",
    )
    args = parser.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0
    meta = {
        **machine(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": sys.executable,
        "task": "1[x0 x1 + sin(2 x2) + 0.1 e > 0], x ~ N(0, I_20); nested training sets",
        "n_test": N_TEST,
        "bayes_accuracy": bayes_accuracy(args.seed),
    }
    rows = []
    for n in args.sizes:
        for method in args.methods:
            spec = {
                "method": method,
                "n": n,
                "seed": args.seed,
                "timeout_s": args.timeout,
                "memory_cap_gb": args.memory_cap_gb,
            }
            row = run_one(spec, args.timeout)
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    previous = args.out / "large_n.json"
    sources = ([previous] if args.append and previous.exists() else []) + list(args.merge)
    for source in sources:  # rows of this run win over those of earlier runs
        done = {(r["method"], r["n"], r["seed"]) for r in rows}
        old = _read_run(source)
        kept = [r for r in old["rows"] if (r["method"], r["n"], r["seed"]) not in done]
        rows = sorted(kept + rows, key=lambda r: (r["method"], r["n"]))
        earlier = old["machine"].get("earlier_runs", [])
        meta["earlier_runs"] = [*meta.get("earlier_runs", []), *earlier, old["machine"]["date"]]
    keys = sorted({key for row in rows for key in row})
    with (args.out / "large_n.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    (args.out / "large_n.json").write_text(json.dumps({"machine": meta, "rows": rows}, indent=1))
    plot(rows, args.out / "large_n.png", meta)
    (args.out / "large_n.md").write_text(markdown(rows, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
