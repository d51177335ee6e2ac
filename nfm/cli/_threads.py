"""Command-line jobs of ``nfm``; each module provides ``configure_parser`` and ``run``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch

from nfm.exceptions import NFMInputError


def run_with_threads(
    job: str,
    args: argparse.Namespace,
    body: Callable[[argparse.Namespace], int],
    *,
    errors: tuple[type[Exception], ...] = (NFMInputError,),
) -> int:
    """Run ``body(args)`` with ``args.threads`` torch threads, restoring the count afterwards.

    ``args.threads == 0`` keeps torch's own setting. An exception of a type in ``errors`` (bad
    input) is reported on stderr as ``nfm JOB: error: ...`` and gives exit code 2.
    """
    threads = torch.get_num_threads()
    try:
        if args.threads < 0:
            raise NFMInputError(f"--threads must be >= 0; got {args.threads}")
        if args.threads:
            torch.set_num_threads(args.threads)
        return body(args)
    except errors as exc:
        print(f"nfm {job}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)
