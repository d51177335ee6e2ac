"""The ``nfm`` command line.

``nfm`` with no arguments runs the main job (``nfm train``): it trains an MLP on an embedded
dataset, tracks the Neural Feature Ansatz through training and writes an HTML report. Each
sub-command lives in its own module under :mod:`nfm.cli`, which provides
``configure_parser(parser)`` and ``run(args) -> int``; modules are imported only when their
command is used.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": (
        "nfm.cli.train",
        "train an MLP on an embedded dataset, track the NFA, write an HTML report (default)",
    ),
    "analyze": (
        "nfm.cli.analyze",
        "analyse a saved model on your own data file (or, with --hf, a pretrained "
        "transformer per block on built-in text) and write the same report",
    ),
    "tabular": (
        "nfm.cli.tabular",
        "run the tabular benchmark: RFM against tabular learners and xrfm",
    ),
    "grokking": (
        "nfm.cli.grokking",
        "grokking of modular arithmetic by an RFM and by a neural network",
    ),
    "cnn": (
        "nfm.cli.cnn",
        "train a small CNN on Fashion-MNIST, track its filters' patch-space NFA",
    ),
    "diagnose": (
        "nfm.cli.diagnose",
        "why doesn't a model learn? per-layer signal, ranks, dead units and a verdict",
    ),
}
DEFAULT_COMMAND = "train"


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Build the argument parser.

    Every command gets a sub-parser (so ``nfm --help`` lists them all), but only ``command``'s
    module is imported and asked for its options: start-up stays fast and a problem in one
    command's module cannot break the others.
    """
    parser = argparse.ArgumentParser(
        prog="nfm",
        description="Neural feature matrices, AGOP and Recursive Feature Machines. "
        f"Without a command, runs '{DEFAULT_COMMAND}'.",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(_module=module_name)
        if name == command:
            importlib.import_module(module_name).configure_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nfm`` console script; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Insert the default command after the global options unless a command or help was asked.
    position = 0
    while position < len(argv) and argv[position] in ("-q", "--quiet"):
        position += 1
    rest = argv[position:]
    if not rest or (rest[0] not in COMMANDS and rest[0] not in ("-h", "--help")):
        argv.insert(position, DEFAULT_COMMAND)
    command = argv[position] if argv[position] in COMMANDS else None
    args = build_parser(command).parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(message)s",
    )
    module = importlib.import_module(args._module)
    return int(module.run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
