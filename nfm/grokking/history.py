"""Queries shared by the kernel and neural grokking results: columns and threshold crossings."""

from __future__ import annotations

from typing import Any

import numpy as np


class HistoryQueries:
    """Mixin for a result with a ``history`` list of per-record dicts."""

    history: list[dict[str, Any]]

    def column(self, name: str) -> np.ndarray:
        """One history column as an array."""
        return np.array([row[name] for row in self.history])

    def first_row_above(self, threshold: float, column: str = "test_accuracy") -> dict | None:
        """The first history row whose ``column`` is at least ``threshold`` (``None`` if never)."""
        for row in self.history:
            if row[column] >= threshold:
                return row
        return None
