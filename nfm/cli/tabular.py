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


def run(args: argparse.Namespace) -> int:
    """Run the benchmark (or the quick mode), then write the summary and figures."""
    from nfm.tabular import datasets as ds
    from nfm.tabular import methods as mt
    from nfm.tabular.runner import BenchmarkConfig, run_benchmark

    output = Path(args.output)
    if args.summarize_only:
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
