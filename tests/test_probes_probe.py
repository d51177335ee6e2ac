"""RFM and linear probes on hidden states of a tiny random GPT-2 with a synthetic concept.

The concept: the last token of a random sequence is one of the tokens {1, 2} (class 1) or
{3, 4} (class 0); every other position holds random tokens 5..39. A probe on the last-token
state must read it; with labels drawn independently of the sequences it must not.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from tiny_transformers import one_thread  # noqa: E402, F401

from nfm.exceptions import NFMInputError  # noqa: E402
from nfm.probes import block_hidden_states, fit_probe, probe_blocks, validation_split  # noqa: E402


def concept_states(n: int = 120, seed: int = 0):
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2, n_head=2, n_embd=64, vocab_size=40, n_positions=16, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    model = transformers.GPT2LMHeadModel(config).double().eval()
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 40, (n, 6), generator=g)
    y = torch.arange(n) % 2
    last = torch.randint(0, 2, (n,), generator=g) + torch.where(y == 1, 1, 3)
    ids[:, -1] = last
    features = block_hidden_states(model, ids, pooling="last")
    return features, y.numpy(), last.numpy()


FEATURES, Y, LAST_TOKEN = concept_states()
TRAIN, TEST = np.arange(80), np.arange(80, 120)
# small grids keep the test quick; the defaults are exercised by fit_probe below
GRIDS = {
    "rfm": [{"bandwidth_factor": 1.0, "n_iter": 2}, {"bandwidth_factor": 2.0, "n_iter": 2}],
    "linear": [{"C": 0.01}, {"C": 1.0}],
}


def test_both_probes_read_the_concept_on_held_out_rows():
    scores, probes = probe_blocks(FEATURES, Y, TRAIN, TEST, grids=GRIDS)
    assert [(s.block, s.method) for s in scores] == [
        ("transformer.h.0", "rfm"),
        ("transformer.h.0", "linear"),
        ("transformer.h.1", "rfm"),
        ("transformer.h.1", "linear"),
    ]
    for s in scores:
        assert s.test_accuracy >= 0.95, s
    assert set(probes) == {(s.block, s.method) for s in scores}


def test_labels_independent_of_the_inputs_give_chance_accuracy():
    rng = np.random.default_rng(1)
    shuffled = rng.permutation(Y)
    scores, _ = probe_blocks(FEATURES, shuffled, TRAIN, TEST, grids=GRIDS)
    for s in scores:  # 40 test rows: chance is 0.5 +- 0.08
        assert s.test_accuracy < 0.8, s


def test_the_test_rows_never_influence_the_fit():
    scores, probes = probe_blocks(FEATURES, Y, TRAIN, TEST, grids=GRIDS)
    rng = np.random.default_rng(2)
    altered = {}
    for name, X in FEATURES.items():
        X = X.copy()
        X[TEST] = rng.standard_normal(X[TEST].shape) * 100
        altered[name] = X
    altered_y = Y.copy()
    altered_y[TEST] = 1 - altered_y[TEST]
    scores2, probes2 = probe_blocks(altered, altered_y, TRAIN, TEST, grids=GRIDS)
    for a, b in zip(scores, scores2, strict=True):
        assert a.params == b.params
        assert a.validation_accuracy == b.validation_accuracy
        assert a.train_accuracy == b.train_accuracy
    for key, probe in probes.items():
        np.testing.assert_array_equal(
            probe.predict(FEATURES[key[0]][TRAIN]), probes2[key].predict(FEATURES[key[0]][TRAIN])
        )


def test_chosen_point_is_the_best_validation_score_and_the_refit_uses_all_training_rows():
    X = FEATURES["transformer.h.1"][TRAIN]
    for method in ("rfm", "linear"):
        probe = fit_probe(X, Y[TRAIN], method=method, random_state=3)
        values = [s for _, s in probe.validation_scores]
        assert probe.validation_accuracy == max(values)
        assert probe.train_rows.shape == X.shape
        np.testing.assert_allclose(probe.standardizer.mean, X.mean(axis=0))
    linear = fit_probe(X, Y[TRAIN], method="linear", grid=[{"C": 0.5}, {"C": 2.0}])
    assert linear.params["C"] in (0.5, 2.0) and len(linear.validation_scores) == 2


def test_grouped_validation_split_holds_out_whole_groups():
    y = np.repeat([0, 1], 30)
    groups = np.repeat(np.arange(12), 5)  # groups 0-5 are class 0, 6-11 class 1
    fit, val = validation_split(y, groups, 0.25, np.random.default_rng(0))
    assert not set(groups[fit]) & set(groups[val])
    assert set(y[val]) == set(y[fit]) == {0, 1}
    assert len(set(groups[val])) == 4  # ceil(0.25 * 6) groups of each class
    assert np.union1d(fit, val).size == 60


def test_stratified_validation_split_without_groups():
    y = np.array([0] * 8 + [1] * 12)
    fit, val = validation_split(y, None, 0.25, np.random.default_rng(0))
    assert (y[val] == 0).sum() == 2 and (y[val] == 1).sum() == 3
    assert np.intersect1d(fit, val).size == 0


def test_bad_inputs_are_refused():
    X = FEATURES["transformer.h.0"]
    with pytest.raises(NFMInputError, match="method"):
        fit_probe(X, Y, method="svm")
    with pytest.raises(NFMInputError, match="2 classes"):
        fit_probe(X, np.zeros(len(Y)))
    with pytest.raises(NFMInputError, match="groups"):
        fit_probe(X, Y, groups=np.arange(3))
    with pytest.raises(NFMInputError, match="validation_fraction"):
        fit_probe(X, Y, validation_fraction=1.5)
    with pytest.raises(NFMInputError, match="one to fit"):
        fit_probe(X, Y, groups=Y)  # one group per class
    with pytest.raises(NFMInputError, match="overlap"):
        probe_blocks(FEATURES, Y, TRAIN, np.arange(70, 120))
    with pytest.raises(NFMInputError, match="NaN"):
        bad = X.copy()
        bad[0, 0] = np.nan
        fit_probe(bad, Y)
