"""The small exception and warning family of nfm.

Every error nfm raises on bad user input is an :class:`NFMInputError`, which is also a
:class:`ValueError` so that generic ``except ValueError`` code (and scikit-learn's estimator
checks) keep working. Messages name the argument, what was received (shape, dtype or value) and
what was expected.
"""

from __future__ import annotations

__all__ = [
    "LayerSelectionError",
    "NFMError",
    "NFMInputError",
    "NumericalWarning",
]


class NFMError(Exception):
    """Base class of every exception raised by nfm."""


class NFMInputError(NFMError, ValueError):
    """An argument has the wrong type, shape, dtype or value."""


class LayerSelectionError(NFMInputError):
    """A layer selector matched nothing, or a selected layer was never reached."""


class NumericalWarning(UserWarning):
    """A numerical safeguard was used (jitter added, eigenvalues clamped, ...)."""
