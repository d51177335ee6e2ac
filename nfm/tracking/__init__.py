"""Tracking the Neural Feature Ansatz through training: the tracker and its tidy history."""

from nfm.tracking.history import TrackingHistory, as_history, is_nfa_column, parse_nfa_column
from nfm.tracking.tracker import NFATracker

__all__ = ["NFATracker", "TrackingHistory", "as_history", "is_nfa_column", "parse_nfa_column"]
