"""Pruning and feature selection guided by the feature matrices.

* :mod:`nfm.pruning.importance` -- scores of the input units and single weights of
  ``nn.Linear`` layers from the AGOP (diagonal, top eigenvectors, diagonal times the mean squared
  unit) and the NFM (column norms),
  with magnitude and random baselines;
* :mod:`nfm.pruning.masks` -- unit pruning (columns of the reading layer) and weight pruning
  as ``torch.nn.utils.prune`` masks on a copy of the model, :func:`make_permanent`,
  :func:`pruning_summary`;
* :mod:`nfm.pruning.selection` -- the fewest input features covering a share of an AGOP
  diagonal, and the AGOP diagonal of a fitted Recursive Feature Machine.

``docs/pruning.md`` shows the benchmark of these scores against magnitude and random pruning.
"""

from __future__ import annotations

from nfm.pruning.importance import (
    UNIT_METHODS,
    WEIGHT_METHODS,
    diagonal_importance,
    eigen_energy_importance,
    input_second_moments,
    unit_importance,
    weight_importance,
)
from nfm.pruning.masks import (
    lowest_score_mask,
    make_permanent,
    prune_units,
    prune_weights,
    pruning_summary,
)
from nfm.pruning.selection import FeatureSelection, rfm_agop_diagonal, select_by_coverage

__all__ = [
    "UNIT_METHODS",
    "WEIGHT_METHODS",
    "FeatureSelection",
    "diagonal_importance",
    "eigen_energy_importance",
    "input_second_moments",
    "lowest_score_mask",
    "make_permanent",
    "prune_units",
    "prune_weights",
    "pruning_summary",
    "rfm_agop_diagonal",
    "select_by_coverage",
    "unit_importance",
    "weight_importance",
]
