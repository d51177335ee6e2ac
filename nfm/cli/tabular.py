"""``nfm tabular``: run the tabular benchmark and write results, summary and figures.

Examples
--------
``nfm tabular --quick --output /tmp/tab``   (3 small datasets, 4 methods, under 2 minutes)
``nfm tabular --datasets 'keel/*' --methods rfm xrfm xgboost --seeds 0 1 2``
``nfm tabular --summarize-only --output benchmarks/results/tabular``
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_OUTPUT = "benchmarks/results/tabular"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``nfm tabular`` options to ``parser``."""
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="results folder")
    parser.add_argument(
        "--datasets",
        nargs="*",
        default=None,
        help="names (keel/magic, reg/concrete, magic), prefixes (keel/*, reg/*) or 'all'",
    )
    parser.add_argument("--methods", nargs="*", default=None, help="method names (default: all)")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2], help="split seeds")
    parser.add_argument("--budget", type=int, default=4, help="configurations tried per method")
    parser.add_argument("--max-train", type=int, default=2000, help="cap on training rows")
    parser.add_argument("--max-test", type=int, default=5000, help="cap on test rows")
    parser.add_argument("--threads", type=int, default=1, help="threads per fit (every method)")
    parser.add_argument("--jobs", type=int, default=1, help="(dataset, seed) units in parallel")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="seconds after which no new unit is started (running ones finish)",
    )
    parser.add_argument("--no-summary", action="store_true", help="skip summary and figures")
    parser.add_argument("--cache-dir", default=None, help="dataset cache folder (csv.gz + json)")
    parser.add_argument(
        "--export-cache",
        action="store_true",
        help="only write the selected datasets to --cache-dir and exit",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="3 small datasets, rfm + 3 sklearn methods, 1 seed, budget 2",
    )
    parser.add_argument(
        "--summarize-only",
        action="store_true",
        help="only rebuild summary.md and figures from results.csv",
    )
    parser.add_argument("--list", action="store_true", help="list datasets and methods, exit")
    parser.add_argument(
        "--protocol",
        choices=("validation", "refit"),
        default="validation",
        help="validation: the kept configuration predicts as fitted on the fit part; refit: "
        "refitted on fit + validation rows with what it chose (nfm.tabular.runner.PROTOCOLS)",
    )
    parser.add_argument(
        "--suite",
        choices=("development", "held-out"),
        default=None,
        help="only the datasets of this suite (nfm.tabular.registration)",
    )
    parser.add_argument(
        "--unit-order",
        choices=("dataset", "seed"),
        default=None,
        help="dataset: all seeds of a dataset before the next (default); seed: every dataset on "
        "the first seed before the next seed (default with --heldout: a partial run covers "
        "more datasets)",
    )
    parser.add_argument(
        "--heldout",
        action="store_true",
        help="the pre-registered held-out run: held-out suite, seeds 3 4 5, the held-out "
        "methods, protocol refit (--datasets/--methods/--seeds narrow it further)",
    )


def _order_by_size(names: list[str], cache_dir: str | None) -> list[str]:
    """Smallest datasets first (rows x encoded width), so partial runs cover many datasets."""
    from nfm.tabular import datasets as ds

    sizes = {}
    for name in names:
        try:
            data = ds.load_dataset(name, cache_dir=cache_dir)
            sizes[name] = min(data.n_samples, 2000) * max(data.n_features, 1)
        except Exception as error:  # reported; the dataset is left out
            logger.warning("dataset %s does not load: %s", name, error)
    return sorted(sizes, key=lambda n: (sizes[n], n))


def write_summary(output: Path) -> Path:
    """Rebuild ``summary.md``, ``ranks.png`` and ``score_vs_time.png`` from ``results.csv``."""
    import pandas as pd

    from nfm.tabular import methods as mt
    from nfm.tabular.plots import plot_ranks, plot_score_vs_time
    from nfm.tabular.summary import coverage, markdown_table, summary_markdown

    results = pd.read_csv(output / "results.csv")
    meta = json.loads((output / "run.json").read_text()) if (output / "run.json").exists() else {}
    order = [m for m in mt.METHODS if m in set(results["method"])]
    cov = coverage(results, order)
    notes = [f"- result rows: {len(results)}; datasets with any result: {cov.shape[0]}"]
    config = meta.get("config", {})
    if config:
        notes.append(
            f"- protocol: seeds {config.get('seeds')}, budget {config.get('budget')} "
            f"configurations, max_train {config.get('max_train')}, threads {config.get('threads')}"
            f", parallel units {config.get('jobs')}"
        )
    text = summary_markdown(results, order, machine=meta.get("machine"), notes=notes)
    text += "\n## Seeds finished per dataset and method\n\n"
    text += markdown_table(cov.reset_index()) + "\n"
    tuning_path = output / "tuning.csv"
    if tuning_path.exists():
        from nfm.tabular.summary import candidate_summary

        study = candidate_summary(pd.read_csv(tuning_path))
        if not study.empty:
            study.to_csv(output / "study_summary.csv", index=False)
            text += (
                "\n## Defaults study: candidates on the validation parts\n\n"
                + markdown_table(study)
                + "\n"
            )
    (output / "summary.md").write_text(text)
    plot_ranks(results, order).savefig(output / "ranks.png", dpi=120)
    plot_score_vs_time(results, order).savefig(output / "score_vs_time.png", dpi=120)
    return output / "summary.md"


NETWORKS = ("realmlp", "tabm")
"""The methods the held-out run fits on seed 3 only (their CPU cost)."""


def merge_parts(output: Path) -> Path:
    """Concatenate ``output/*/results.csv`` (the parts of a held-out run) into one file."""
    import pandas as pd

    parts = sorted(output.glob("*/results.csv"))
    if not parts:
        raise FileNotFoundError(f"no results.csv in {output} or its subfolders")
    merged = pd.concat([pd.read_csv(p) for p in parts], ignore_index=True)
    merged.to_csv(output / "results.csv", index=False)
    return output / "results.csv"


def _save(fig, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=130)


def _kernel_comparison(results, task: str, present: list[str]) -> list[str]:
    """RFM variants against xrfm: dataset wins/ties/losses and the total-time ratio."""
    from nfm.tabular.summary import complete_table, geometric_mean, pairwise

    lines = []
    for first in ("rfm", "rfm-default"):
        if first not in present or "xrfm" not in present:
            continue
        cmp = pairwise(results, task, first, "xrfm")
        if not cmp.get("datasets"):
            continue
        table = complete_table(results, task, [first, "xrfm"])
        wide = table.pivot_table(
            index=["dataset", "seed"], columns="method", values="total_seconds"
        )
        ratio = geometric_mean((wide["xrfm"] / wide[first]).to_numpy())
        metric = "accuracy" if task == "classification" else "r2"
        lines.append(
            f"- {first} vs xrfm ({cmp['datasets']} datasets, {cmp['pairs']} splits): "
            f"{cmp['wins']} wins / {cmp['ties']} ties / {cmp['losses']} losses for {first}; "
            f"mean {metric} {cmp[f'mean_{metric}_{first}']:.4f} vs "
            f"{cmp[f'mean_{metric}_xrfm']:.4f}; geometric mean of t_xrfm / t_{first} "
            f"(total: selection + refit + predict) = {ratio:.2f}"
        )
    return [*lines, ""] if lines else []


def write_heldout_summary(output: Path, development: Path | None = None) -> Path:
    """Summary of a held-out run: ranks with bootstrap intervals, Friedman, CD figures.

    Reads ``output/results.csv`` (merged from ``output/core`` and ``output/nn`` when absent)
    and, when ``development`` names a results.csv of the development suite, adds the same
    statistics for it, labelled as the part the earlier choices were made on. Writes
    ``summary.md``, ``cd_<task>_<variant>.png`` and ``dataset_scores_<task>.csv``.
    """
    import pandas as pd

    from nfm.tabular import methods as mt
    from nfm.tabular import registration as rg
    from nfm.tabular.plots import plot_critical_difference
    from nfm.tabular.summary import (
        complete_table,
        coverage,
        dataset_scores,
        markdown_table,
        rank_section,
        rank_table,
    )

    results_path = output / "results.csv"
    if not results_path.exists() or any(output.glob("*/results.csv")):
        merge_parts(output)
    results = pd.read_csv(results_path)
    results = results[results["dataset"].map(rg.suite_of) == "held-out"]
    order = [m for m in mt.METHODS if m in set(results["method"])]
    info = output / "run_info.txt"
    parts = [
        "# Tabular benchmark: held-out part",
        "",
        f"Pre-registered on {rg.REGISTERED_AT} (`nfm/tabular/registration.py`), before any "
        "result of this run: the held-out datasets (never used for a choice), the seeds "
        f"{list(rg.HELDOUT_SEEDS)}, the methods, and the tuned RFM's search space (the built-in "
        "space as it stood, chosen earlier on the development part). Protocol `refit`: every "
        "method chooses on the same validation part (20% of the training part) and is refitted "
        "on all training rows with its choice (configuration, boosting rounds, xrfm's "
        "iteration); RealMLP refits itself (pytabkit `n_refit=1`); TabM is not refitted "
        "(pytabkit has no refit for it). Timings on a loaded 2-core machine, 1 thread per fit.",
        "",
        "```",
        info.read_text().strip() if info.exists() else "(run_info.txt missing)",
        "```",
        "",
    ]
    figures = []
    for task in ("classification", "regression"):
        present = [m for m in order if ((results["task"] == task) & (results["method"] == m)).any()]
        if len(present) < 2:
            continue
        core = [m for m in present if m not in NETWORKS]
        parts += [f"## {task.capitalize()}, held-out", ""]
        if core != present:
            variants = [
                ("all", present, "all methods (the networks ran on seed 3 only)"),
                ("core", core, "without the two networks"),
            ]
        else:
            variants = [("core", core, "without the two networks (none finished)")]
        for variant, methods, label in variants:
            report = rank_table(results, task, methods)
            parts.append(rank_section(report, f"{task}, {label}"))
            if report.get("n_datasets", 0) >= 2:
                fig = plot_critical_difference(
                    report["mean_ranks"],
                    report["cd"],
                    n_datasets=report["n_datasets"],
                    title=f"held-out {task}, {label}: {report['n_datasets']} datasets, "
                    f"CD = {report['cd']:.2f} (Nemenyi, 0.05)",
                )
                name = f"cd_{task}_{variant}.png"
                _save(fig, output / name)
                figures.append(name)
        full = complete_table(results, task, core)
        if not full.empty:
            dataset_scores(full, task).to_csv(output / f"dataset_scores_{task}.csv")
        parts += _kernel_comparison(results, task, present)
    cov = coverage(results, order)
    parts += [
        "## Seeds finished per held-out dataset and method",
        "",
        markdown_table(cov.reset_index()),
        "",
        "Figures: " + ", ".join(f"`{f}`" for f in figures),
        "",
    ]
    if development is not None and development.exists():
        dev = pd.read_csv(development)
        dev = dev[dev["dataset"].map(rg.suite_of) == "development"]
        dev_order = [m for m in mt.METHODS if m in set(dev["method"])]
        parts += [
            "## Development part (the committed suite run: seeds 0-2, protocol `validation`)",
            "",
            "The RFM defaults and the tuned RFM's search space were chosen on these datasets "
            "and seeds, so these ranks are optimistic for nfm; they are shown with the same "
            "statistics for comparison only.",
            "",
        ]
        for task in ("classification", "regression"):
            present = [m for m in dev_order if ((dev["task"] == task) & (dev["method"] == m)).any()]
            if len(present) >= 2:
                report = rank_table(dev, task, present)
                parts.append(rank_section(report, f"development {task}"))
                if report.get("n_datasets", 0) >= 2:
                    fig = plot_critical_difference(
                        report["mean_ranks"],
                        report["cd"],
                        n_datasets=report["n_datasets"],
                        title=f"development {task} (choices made here): "
                        f"{report['n_datasets']} datasets, CD = {report['cd']:.2f}",
                    )
                    _save(fig, output / f"cd_development_{task}.png")
    (output / "summary.md").write_text("\n".join(parts))
    return output / "summary.md"


def run(args: argparse.Namespace) -> int:
    """Run the benchmark (or the quick mode), then write the summary and figures."""
    from nfm.tabular import datasets as ds
    from nfm.tabular import methods as mt
    from nfm.tabular.runner import BenchmarkConfig, run_benchmark

    output = Path(args.output)
    if args.summarize_only:
        if args.heldout or (output / "run_info.txt").exists():
            development = output.parent / "results.csv"
            print(write_heldout_summary(output, development).read_text())
        else:
            print(write_summary(output).read_text())
        return 0
    available = ds.available_names(args.cache_dir)
    if args.list:
        print("datasets:", " ".join(available))
        print("methods:", " ".join(mt.METHODS))
        return 0
    if args.quick:
        names = [n for n in ds.QUICK_DATASETS if n in available]
        methods = args.methods or list(mt.QUICK_METHODS)
        seeds, budget = args.seeds[:1], min(args.budget, 2)
    else:
        names = ds.resolve_names(args.datasets, available)
        methods, seeds, budget = args.methods, args.seeds, args.budget
    protocol = args.protocol
    unit_order = args.unit_order or ("seed" if args.heldout else "dataset")
    if args.heldout:
        from nfm.tabular import registration as rg

        heldout = [n for n in rg.HELDOUT if n in available]
        names = [n for n in names if n in heldout] if args.datasets else heldout
        methods = args.methods or list(mt.HELDOUT_METHODS)
        if args.seeds == [0, 1, 2]:  # the parser's default: use the registered seeds
            seeds = list(rg.HELDOUT_SEEDS)
        protocol = "refit"
    if args.suite is not None:
        from nfm.tabular import registration as rg

        names = [n for n in names if rg.suite_of(n) == args.suite]
    if args.export_cache:
        if not args.cache_dir:
            print("--export-cache needs --cache-dir")
            return 2
        for name in names:
            ds.save_to_cache(ds.load_dataset(name), args.cache_dir)
        print(f"wrote {len(names)} datasets to {args.cache_dir}")
        return 0
    names = _order_by_size(names, args.cache_dir)
    config = BenchmarkConfig(
        datasets=names,
        methods=[m.name for m in mt.available_methods(methods)],
        seeds=list(seeds),
        budget=budget,
        max_train=args.max_train,
        max_test=args.max_test,
        threads=args.threads,
        jobs=args.jobs,
        cache_dir=args.cache_dir,
        time_limit=args.time_limit,
        protocol=protocol,
        unit_order=unit_order,
    )
    logger.info(
        "running %d datasets x %d seeds x %d methods into %s",
        len(names),
        len(seeds),
        len(config.methods),
        output,
    )
    run_benchmark(config, output)
    if not args.no_summary:
        print(write_summary(output).read_text())
    return 0
