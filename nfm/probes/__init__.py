"""Probes and concept vectors on the hidden states of a transformer's blocks.

* :mod:`nfm.probes.hidden` -- the blocks of a transformer, and one pooled hidden state per text
  and block (last token or mean over tokens) read by forward hooks that are removed afterwards;
* :mod:`nfm.probes.probe` -- an RFM probe (:class:`nfm.RFMClassifier`) and a logistic-regression
  baseline per block, hyperparameters chosen on a validation split of the training part only;
* :mod:`nfm.probes.directions` -- concept directions: top eigenvectors of an RFM probe's AGOP in
  hidden-state coordinates;
* :mod:`nfm.probes.steering` -- add ``alpha * direction`` to a block's output during a forward
  pass or ``generate``;
* :mod:`nfm.probes.collapse` -- neural collapse measures NC1 and NC2 of each layer's features;
* :mod:`nfm.probes.concepts` -- an offline labelled concept: templated positive and negative
  review sentences with held-out templates and adjectives.

``docs/probes.md`` shows them on SmolLM2-135M (``benchmarks/probe_smollm2.py``).
"""

from __future__ import annotations

from nfm.probes.collapse import NeuralCollapse, neural_collapse, neural_collapse_by_layer
from nfm.probes.concepts import ConceptData, sentiment_reviews
from nfm.probes.directions import ConceptDirections, concept_directions, probe_agop
from nfm.probes.hidden import POOLINGS, block_hidden_states, encode_texts, transformer_blocks
from nfm.probes.probe import (
    PROBE_METHODS,
    FittedProbe,
    ProbeScore,
    fit_probe,
    probe_blocks,
    validation_split,
)
from nfm.probes.steering import steered_generations, steering

__all__ = [
    "POOLINGS",
    "PROBE_METHODS",
    "ConceptData",
    "ConceptDirections",
    "FittedProbe",
    "NeuralCollapse",
    "ProbeScore",
    "block_hidden_states",
    "concept_directions",
    "encode_texts",
    "fit_probe",
    "neural_collapse",
    "neural_collapse_by_layer",
    "probe_agop",
    "probe_blocks",
    "sentiment_reviews",
    "steered_generations",
    "steering",
    "transformer_blocks",
    "validation_split",
]
