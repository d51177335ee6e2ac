"""Run the benchmark: datasets x splits x methods, tuned by one protocol, written as CSV.

The unit of work is one (dataset, seed, method); the split and the preprocessing depend only on
(dataset, seed), so every method gets the same arrays. Result rows are appended to
``results.csv`` as soon as a unit finishes (partial runs survive), and a rerun skips every
(dataset, seed, method) already in the file (resumable). The validation score of every
configuration tried goes to
``tuning.csv``; it is what the RFM defaults are chosen from.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import logging
import math
import time
import traceback
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nfm._utils.env import machine_info as shared_machine_info
from nfm._utils.io import json_ready
from nfm.tabular import datasets as ds
from nfm.tabular import methods as mt
from nfm.tabular import protocol as pr

logger = logging.getLogger(__name__)

RESULT_COLUMNS = [
    "dataset",
    "task",
    "seed",
    "method",
    "status",
    "n_fit",
    "n_val",
    "n_test",
    "n_features",
    "n_classes",
    "n_configs",
    "config_index",
    "config",
    "val_score",
    "accuracy",
    "rmse",
    "r2",
    "fit_seconds",
    "predict_seconds",
    "time_seconds",
    "peak_mib",
    "tune_seconds",
    "threads",
    "error",
    "protocol",
    "refit_seconds",
    "total_seconds",
]
TUNING_COLUMNS = [
    "dataset",
    "task",
    "seed",
    "method",
    "config_index",
    "config",
    "status",
    "val_score",
    "fit_seconds",
    "peak_mib",
]


@dataclass
class BenchmarkConfig:
    """Everything that defines a run (written to ``run.json`` beside the results)."""

    datasets: list[str]
    methods: list[str]
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    budget: int = 4
    max_train: int | None = 2000
    max_test: int | None = 5000
    test_fraction: float = 0.25
    validation_fraction: float = 0.2
    threads: int = 1
    jobs: int = 1
    cache_dir: str | None = None
    time_limit: float | None = None
    protocol: str = "validation"
    unit_order: str = "dataset"


def machine_info() -> dict[str, Any]:
    """The shared machine description plus the benchmarked libraries and the nfm source hashes.

    See :func:`nfm._utils.env.machine_info`; ``nfm_sources_sha256`` hashes the nfm files the
    results depend on.
    """
    sources = {}
    root = Path(__file__).resolve().parent.parent
    for package in ("rfm", "solvers", "kernels", "tabular"):
        digest = hashlib.sha256()
        for path in sorted((root / package).glob("*.py")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
        sources[f"nfm/{package}"] = digest.hexdigest()[:16]
    info = shared_machine_info(
        packages=["sklearn", "xrfm", "xgboost", "lightgbm", "catboost", "pytabkit"]
    )
    return {"nfm_sources_sha256": sources, **info}


@functools.lru_cache(maxsize=4)
def _load(name: str, cache_dir: str | None) -> ds.TabularDataset:
    return ds.load_dataset(name, cache_dir=cache_dir)


def _predict(model: Any, X: np.ndarray, threads: int) -> tuple[np.ndarray, float]:
    with mt.thread_limit(threads), pr.measure(track_memory=False) as meter:
        out = model.predict(X)
    return out, meter.seconds


PROTOCOLS = ("validation", "refit")
"""``validation``: the configuration kept on the validation part predicts the test part as it
was fitted (on the fit part). ``refit``: it is refitted on all training rows (fit + validation)
with what it chose there (configuration, boosting rounds, xrfm's iteration), the same for every
method; methods with their own selection (``internal_selection``) get the fit and validation
parts once and do it themselves; fixed single configurations fit on all training rows at once.
"""


def _score_test(task: str, data: pr.PreparedSplit, test_pred: np.ndarray) -> dict[str, float]:
    if task == "classification":
        return {"accuracy": pr.accuracy(data.y_test, test_pred)}
    y_true = data.raw_targets("test")
    y_hat = data.to_target_scale(test_pred)
    return {"rmse": pr.rmse(y_true, y_hat), "r2": pr.r2(y_true, y_hat)}


def _run_single_fit(
    method: mt.Method, data: pr.PreparedSplit, *, seed: int, threads: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Refit protocol for a method with one configuration: one fit, no runner selection.

    A method with ``internal_selection`` gets the fit and validation parts separately (its own
    early stopping / refit); any other fits on all training rows (fit + validation) at once.
    """
    task = data.task
    config = mt.method_configs(method, task, 1)[0]
    result: dict[str, Any] = {
        "method": method.name,
        "n_configs": 1,
        "threads": threads,
        "protocol": "refit",
        "config_index": 0,
        "config": json.dumps(json_ready(config), allow_nan=False),
        "error": "",
    }
    start = time.perf_counter()
    try:
        model = method.build(task, config, seed, threads)
        with mt.thread_limit(threads), pr.measure() as meter:
            if method.internal_selection:
                model.fit(data.X_fit, data.y_fit, data.X_val, data.y_val)
            else:
                X_all = np.concatenate([data.X_fit, data.X_val])
                y_all = np.concatenate([data.y_fit, data.y_val])
                model.fit(X_all, y_all, None, None)
        test_pred, predict_seconds = _predict(model, data.X_test, threads)
    except Exception as error:  # a failing method must not stop the benchmark
        logger.warning("%s failed: %s", method.name, error)
        result.update(status="failed", error=f"{type(error).__name__}: {error}"[:500])
        return result, []
    result.update(
        status="ok",
        val_score=float("nan"),
        fit_seconds=meter.seconds,
        predict_seconds=predict_seconds,
        time_seconds=meter.seconds + predict_seconds,
        peak_mib=meter.peak_mib,
        tune_seconds=0.0,
        refit_seconds=0.0,
        total_seconds=time.perf_counter() - start,
        **_score_test(task, data, test_pred),
    )
    return result, []


def run_method(
    method: mt.Method,
    data: pr.PreparedSplit,
    *,
    seed: int,
    budget: int,
    threads: int,
    protocol: str = "validation",
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Tune one method on one prepared split; return its result row and its tuning rows.

    Each configuration is fitted on the fit part (timed, peak memory measured) and scored on
    the validation part; the best one (ties: the earlier, i.e. the more default configuration)
    predicts the test part (``protocol="validation"``), or is first refitted on fit +
    validation rows with what it chose (``protocol="refit"``, see :data:`PROTOCOLS`).
    ``total_seconds`` is the wall time of everything the method did (all fits and predicts).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol: expected one of {PROTOCOLS}, got {protocol!r}")
    task = data.task
    configs = mt.method_configs(method, task, budget)
    if protocol == "refit" and len(configs) == 1:
        return _run_single_fit(method, data, seed=seed, threads=threads)
    tuning_rows: list[dict[str, Any]] = []
    best: tuple[float, int, Any, pr.Measurement] | None = None
    errors = []
    tune_start = time.perf_counter()
    for index, config in enumerate(configs):
        row = {
            "method": method.name,
            "config_index": index,
            "config": json.dumps(json_ready(config), allow_nan=False),
        }
        try:
            model = method.build(task, config, seed, threads)
            with mt.thread_limit(threads), pr.measure() as meter:
                model.fit(data.X_fit, data.y_fit, data.X_val, data.y_val)
            val_pred, _ = _predict(model, data.X_val, threads)
            score = pr.validation_score(task, data.y_val, val_pred)
            if not math.isfinite(score):
                raise FloatingPointError(f"validation score is {score}")
            row.update(
                status="ok", val_score=score, fit_seconds=meter.seconds, peak_mib=meter.peak_mib
            )
            if best is None or score > best[0]:
                best = (score, index, model, meter)
        except Exception as error:  # a failing configuration must not stop the benchmark
            logger.warning("%s config %d failed: %s", method.name, index, error)
            logger.debug("%s", traceback.format_exc())
            errors.append(f"config {index}: {type(error).__name__}: {error}")
            row.update(
                status="failed",
                val_score=float("nan"),
                fit_seconds=float("nan"),
                peak_mib=float("nan"),
            )
        tuning_rows.append(row)
    tune_seconds = time.perf_counter() - tune_start
    result: dict[str, Any] = {
        "method": method.name,
        "n_configs": len(configs),
        "tune_seconds": tune_seconds,
        "threads": threads,
        "error": "; ".join(errors)[:500],
        "protocol": protocol,
    }
    if best is None:
        result.update(status="failed")
        return result, tuning_rows
    score, index, model, meter = best
    kept = dict(configs[index])
    refit_seconds = 0.0
    try:
        if protocol == "refit" and not method.internal_selection:
            overrides = model.refit_overrides() if hasattr(model, "refit_overrides") else {}
            kept = {**kept, **overrides}
            model = method.build(task, kept, seed, threads)
            X_all = np.concatenate([data.X_fit, data.X_val])
            y_all = np.concatenate([data.y_fit, data.y_val])
            with mt.thread_limit(threads), pr.measure() as meter:
                model.fit(X_all, y_all, None, None)
            refit_seconds = meter.seconds
        test_pred, predict_seconds = _predict(model, data.X_test, threads)
    except Exception as error:
        result.update(
            status="failed", error=f"refit/predict: {type(error).__name__}: {error}"[:500]
        )
        return result, tuning_rows
    result.update(
        status="ok",
        config_index=index,
        config=json.dumps(json_ready(kept), allow_nan=False),
        val_score=score,
        fit_seconds=meter.seconds,
        predict_seconds=predict_seconds,
        time_seconds=meter.seconds + predict_seconds,
        peak_mib=meter.peak_mib,
        refit_seconds=refit_seconds,
        total_seconds=time.perf_counter() - tune_start,
        **_score_test(task, data, test_pred),
    )
    return result, tuning_rows


def run_unit(
    dataset_name: str,
    seed: int,
    method_names: Sequence[str],
    config: BenchmarkConfig,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run the given methods on one (dataset, seed); returns (result rows, tuning rows)."""
    dataset = _load(dataset_name, config.cache_dir)
    split = pr.make_split(
        dataset.target,
        dataset.task,
        seed,
        test_fraction=config.test_fraction,
        validation_fraction=config.validation_fraction,
        max_train=config.max_train,
        max_test=config.max_test,
    )
    data = pr.prepare_split(dataset, split)
    common = {
        "dataset": dataset_name,
        "task": dataset.task,
        "seed": seed,
        "n_fit": len(split.fit),
        "n_val": len(split.validation),
        "n_test": len(split.test),
        "n_features": data.X_fit.shape[1],
        "n_classes": len(data.classes) if data.classes is not None else 0,
    }
    results, tuning = [], []
    for method in mt.available_methods(method_names):
        logger.info("%s seed %d: %s", dataset_name, seed, method.name)
        row, rows = run_method(
            method,
            data,
            seed=seed,
            budget=config.budget,
            threads=config.threads,
            protocol=config.protocol,
        )
        results.append({**common, **row})
        tuning.extend({**{k: common[k] for k in ("dataset", "task", "seed")}, **r} for r in rows)
        logger.info(
            "%s seed %d: %s %s acc=%s rmse=%s time=%.2fs",
            dataset_name,
            seed,
            method.name,
            row["status"],
            row.get("accuracy"),
            row.get("rmse"),
            row.get("time_seconds", float("nan")),
        )
    return results, tuning


def _append(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})


def completed_units(path: Path) -> set[tuple[str, int, str]]:
    """(dataset, seed, method) triples already in a results CSV."""
    if not path.exists():
        return set()
    with path.open() as handle:
        return {(r["dataset"], int(r["seed"]), r["method"]) for r in csv.DictReader(handle)}


def _init_worker() -> None:
    logging.basicConfig(level=logging.WARNING)


def run_benchmark(config: BenchmarkConfig, output_dir: str | Path) -> Path:
    """Run (or resume) the benchmark described by ``config``; results go to ``output_dir``.

    Writes ``results.csv`` (one row per dataset x seed x method), ``tuning.csv`` (one row per
    configuration tried) and ``run.json`` (the config and the machine). Returns the results path.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    results_path = output_dir / "results.csv"
    tuning_path = output_dir / "tuning.csv"
    methods = [m.name for m in mt.available_methods(config.methods)]
    meta = {"config": asdict(config), "machine": machine_info(), "methods_run": methods}
    (output_dir / "run.json").write_text(json.dumps(json_ready(meta), indent=1, allow_nan=False))
    done = completed_units(results_path)
    units = [
        (name, seed, method)
        for name in config.datasets
        for seed in config.seeds
        for method in methods
        if (name, seed, method) not in done
    ]
    if config.unit_order == "seed":  # every dataset on the first seed, then the next seed
        position = {seed: i for i, seed in enumerate(config.seeds)}
        units.sort(key=lambda unit: position[unit[1]])  # stable: dataset order kept per seed
    logger.info("%d units to run (%d already done)", len(units), len(done))
    deadline = None if config.time_limit is None else time.monotonic() + config.time_limit

    def record(result: tuple[list[dict], list[dict]]) -> None:
        rows, tuning_rows = result
        _append(results_path, RESULT_COLUMNS, rows)
        _append(tuning_path, TUNING_COLUMNS, tuning_rows)

    if config.jobs <= 1:
        for name, seed, method in units:
            if deadline is not None and time.monotonic() > deadline:
                logger.warning("time limit reached; %s and later units not started", name)
                break
            try:
                record(run_unit(name, seed, [method], config))
            except Exception:
                logger.exception("unit %s seed %d %s failed", name, seed, method)
        return results_path
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(config.jobs, mp_context=context, initializer=_init_worker)
    pending: dict[Any, tuple[str, int, str]] = {}
    queue = list(units)
    try:
        while queue or pending:
            late = deadline is not None and time.monotonic() > deadline
            while queue and len(pending) < 2 * config.jobs and not late:
                name, seed, method = queue.pop(0)
                future = pool.submit(run_unit, name, seed, [method], config)
                pending[future] = (name, seed, method)
            if late and queue:
                logger.warning("time limit reached; %d units not started", len(queue))
                queue.clear()
            finished, _ = wait(list(pending), timeout=5.0, return_when=FIRST_COMPLETED)
            for future in finished:
                name, seed, method = pending.pop(future)
                try:
                    record(future.result())
                except Exception:
                    logger.exception("unit %s seed %d %s failed", name, seed, method)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return results_path
