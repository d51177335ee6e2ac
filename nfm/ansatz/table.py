"""Per-layer result tables: rows of dicts, shown as text or as a pandas DataFrame."""

from __future__ import annotations

from typing import Any

__all__ = ["RowTable"]


class RowTable:
    """Mixin for reports holding ``rows`` (one dict per layer) and an ordered ``columns`` list."""

    rows: list[dict[str, Any]]
    columns: list[str]

    def to_frame(self) -> Any:
        """The rows as a pandas DataFrame (or the list of dicts when pandas is missing)."""
        try:
            import pandas as pd
        except ImportError:  # pragma: no cover - pandas is optional
            return self.rows
        return pd.DataFrame(self.rows, columns=self.columns or None)

    def __str__(self) -> str:
        cols = self.columns or (list(self.rows[0]) if self.rows else [])
        lines = ["  ".join(cols)]
        for row in self.rows:
            cells = [f"{v:.4f}" if isinstance(v, float) else str(v) for v in (row[c] for c in cols)]
            lines.append("  ".join(cells))
        return "\n".join(lines)
