"""The templated sentiment data: held-out templates and adjectives, balance, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from nfm.exceptions import NFMInputError
from nfm.probes import sentiment_reviews
from nfm.probes.concepts import ADJECTIVES, TEMPLATES, TEST_TEMPLATES


def test_test_part_shares_no_template_and_no_adjective_with_training():
    data = sentiment_reviews(100, 50, seed=3)
    train, test = data.train, data.test
    assert train.size == 200 and test.size == 100
    assert set(data.template[test]) == set(TEST_TEMPLATES)
    assert not set(data.template[train]) & set(TEST_TEMPLATES)
    train_adj = {data.adjective[i] for i in train}
    test_adj = {data.adjective[i] for i in test}
    assert not train_adj & test_adj
    for i in range(len(data.texts)):
        assert data.adjective[i] in ADJECTIVES[int(data.sentiment[i])]
        assert data.adjective[i] in data.texts[i]
        prefix = TEMPLATES[data.template[i]].split("{")[0]
        assert data.texts[i].startswith(prefix)
    for part in (train, test):
        assert np.bincount(data.sentiment[part]).tolist() == [part.size // 2] * 2
    assert len(set(data.texts)) == len(data.texts)


def test_the_seed_fixes_the_sentences():
    assert sentiment_reviews(20, 10, seed=1).texts == sentiment_reviews(20, 10, seed=1).texts
    assert sentiment_reviews(20, 10, seed=1).texts != sentiment_reviews(20, 10, seed=2).texts


def test_bad_sizes_are_refused():
    with pytest.raises(NFMInputError, match="n_train_per_class"):
        sentiment_reviews(0, 10)
    with pytest.raises(NFMInputError, match="asked for"):
        sentiment_reviews(10, 401)
