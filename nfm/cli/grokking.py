"""``nfm grokking``: grokking of modular arithmetic by an RFM (and by a neural network).

Runs the published kernel setup (Gaussian kernel, bandwidth 2.5, ridge 0, metric = centred
AGOP^(1/2)) through :class:`nfm.rfm.RFMRegressor` for each operation, with the controls
(plain kernel, random circulant metric), and with ``--neural`` the two-layer quadratic network
tracked with :class:`nfm.tracking.NFATracker`. Writes per-iteration histories (CSV), summary
tables (JSON, Markdown) and figures (PNG) to the output folder and prints a short summary.
"""

from __future__ import annotations

import argparse
import logging
import time

OPERATIONS = ("add", "sub", "mul", "div")  # as nfm.grokking.data.OPERATIONS (kept light)

logger = logging.getLogger(__name__)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``nfm grokking``."""
    parser.add_argument(
        "--ops",
        nargs="+",
        default=["add"],
        choices=OPERATIONS,
        metavar="OP",
        help=f"operations, any of {', '.join(OPERATIONS)} (default: add)",
    )
    parser.add_argument("--p", type=int, default=61, help="modulus (prime for mul/div; 61)")
    parser.add_argument(
        "--fraction", type=float, default=0.5, help="training fraction of all pairs (0.5)"
    )
    parser.add_argument(
        "--iterations", type=int, default=30, help="maximum RFM iterations (30; paper: 50)"
    )
    parser.add_argument(
        "--stop-at",
        type=float,
        default=None,
        metavar="ACC",
        help="stop an RFM run once its test accuracy reaches ACC (default: run all iterations)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and network (0)")
    parser.add_argument(
        "--output-dir", "-o", default="grokking-results", help="output folder (grokking-results)"
    )
    parser.add_argument(
        "--neural", action="store_true", help="also train the 2-layer network on the first op"
    )
    parser.add_argument(
        "--neural-only", action="store_true", help="only the network (skip the RFM runs)"
    )
    parser.add_argument("--epochs", type=int, default=60, help="network epochs (60)")
    parser.add_argument(
        "--no-controls", action="store_true", help="skip the random-circulant control"
    )
    parser.add_argument("--no-figures", action="store_true", help="write no PNG figures")


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def run(args: argparse.Namespace) -> int:
    """Run the experiments; returns 0 on success, 2 on bad input."""
    from nfm.exceptions import NFMInputError
    from nfm.grokking.runner import run_kernel_suite, run_neural_experiment

    verbose = not getattr(args, "quiet", False)
    start = time.perf_counter()
    try:
        if not args.neural_only:
            rows = run_kernel_suite(
                args.ops,
                p=args.p,
                train_fraction=args.fraction,
                n_iter=args.iterations,
                seed=args.seed,
                stop_at_test_accuracy=args.stop_at,
                controls=not args.no_controls,
                output_dir=args.output_dir,
                figures=not args.no_figures,
                verbose=verbose,
            )
            print(f"RFM grokking, p={args.p}, fraction={args.fraction}:")
            print("  op   iter>=50% iter>=90% iter>=99%  final acc  seconds  structure")
            for row in rows:
                print(
                    f"  {row['op']:<4} {_fmt(row['iter_50']):>9} {_fmt(row['iter_90']):>9} "
                    f"{_fmt(row['iter_99']):>9} {row['final_test_accuracy']:>10.4f} "
                    f"{row['seconds']:>8.1f}  {row['structure']} "
                    f"({_fmt(row['structure_deviation'])})"
                )
                if "random_circulant_test_accuracy" in row:
                    print(
                        f"       controls: plain kernel {row['plain_kernel_test_accuracy']:.3f}, "
                        f"random circulant metric {row['random_circulant_test_accuracy']:.3f}"
                    )
        if args.neural or args.neural_only:
            row = run_neural_experiment(
                args.ops[0],
                p=args.p,
                train_fraction=args.fraction,
                epochs=args.epochs,
                seed=args.seed,
                stop_at_test_accuracy=None,
                output_dir=args.output_dir,
                figures=not args.no_figures,
                verbose=verbose,
            )
            print(
                f"Network, {row['op']} mod {row['p']}: 99% test accuracy at epoch "
                f"{_fmt(row['epoch_test_99'])} ({_fmt(row['cpu_seconds_to_99'])} CPU s); "
                f"final test accuracy {row['final_test_accuracy']:.3f}; first-layer NFA "
                f"correlation (Pearson, alpha=1/2) {row['nfa_pearson_a0.5']:.3f}; NFM block "
                f"{row['structure']} (circulant dev {row['circulant_deviation']:.3f}, Hankel dev "
                f"{row['hankel_deviation']:.3f})"
            )
    except NFMInputError as exc:
        print(f"nfm grokking: error: {exc}")
        return 2
    print(f"Results in {args.output_dir}/ ({time.perf_counter() - start:.1f} s)")
    return 0
