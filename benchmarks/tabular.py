"""Tabular benchmark: nfm's RFM against xrfm, gradient boosting, forests, SVMs, kernel ridge, MLP.

Thin wrapper around ``nfm tabular`` (:mod:`nfm.cli.tabular`); every option is the same.

    python benchmarks/tabular.py --quick --output /tmp/tabular-quick
    python benchmarks/tabular.py --seeds 0 1 2 --budget 4 --max-train 2000 --jobs 16

Results go to ``benchmarks/results/tabular/`` by default: ``results.csv`` (dataset x seed x
method), ``tuning.csv`` (every configuration's validation score), ``run.json`` (protocol and
machine), ``summary.md``, ``ranks.png`` and ``score_vs_time.png``. The protocol is documented in
``docs/tabular-benchmark.md`` and :mod:`nfm.tabular.protocol`.
"""

from __future__ import annotations

import argparse
import logging
import sys

from nfm.cli import tabular


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    tabular.configure_parser(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return tabular.run(args)


if __name__ == "__main__":
    sys.exit(main())
