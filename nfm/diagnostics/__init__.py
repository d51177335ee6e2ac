"""Why doesn't my model learn? Per-layer diagnostics from the feature matrices.

:func:`diagnose` measures, on probe samples and optionally over a few training steps on a copy
of the model, per layer:

* the AGOP trace and spectrum through depth, relative to the output layer (vanishing or
  exploding signal) and the forward variation of each layer's input
  (:mod:`~nfm.diagnostics.signal`);
* effective and stable rank of the AGOP and the NFM (:mod:`~nfm.diagnostics.rank`);
* dead and saturated units of every activation module (:mod:`~nfm.diagnostics.units`);
* the loss gradient reaching each layer, the NFM movement per step and the NFA correlation
  before and after the steps (:mod:`~nfm.diagnostics.dynamics`);

and gives a verdict in plain words per layer and one cause with a suggested fix
(:mod:`~nfm.diagnostics.verdict`). Figures: :mod:`~nfm.diagnostics.plots`; an HTML report
section: :mod:`~nfm.diagnostics.html`.
"""

from nfm.diagnostics.diagnosis import Diagnosis, diagnose
from nfm.diagnostics.dynamics import TrainingDynamics, gradient_signal, training_dynamics
from nfm.diagnostics.rank import effective_rank, psd_spectrum, rank_summary, stable_rank
from nfm.diagnostics.signal import agop_through_depth, input_statistics
from nfm.diagnostics.units import unit_activity
from nfm.diagnostics.verdict import Finding, ModelVerdict, Thresholds, UnitVerdict, judge

__all__ = [
    "Diagnosis",
    "Finding",
    "ModelVerdict",
    "Thresholds",
    "TrainingDynamics",
    "UnitVerdict",
    "agop_through_depth",
    "diagnose",
    "effective_rank",
    "gradient_signal",
    "input_statistics",
    "judge",
    "psd_spectrum",
    "rank_summary",
    "stable_rank",
    "training_dynamics",
    "unit_activity",
]
