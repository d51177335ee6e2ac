"""Private helpers shared across nfm: array conversion, validation, machine facts, JSON."""
