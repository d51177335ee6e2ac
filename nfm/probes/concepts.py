"""A labelled concept built offline: positive versus negative short reviews from templates.

Every sentence is a template filled with a noun and an adjective from word lists written for
this module (no corpus, no download), for example ``"I thought the soup was wonderful."``. Each
sentence carries three labels: its **sentiment** (the polarity of the adjective: ``1`` positive,
``0`` negative), its **topic** (the noun's list: food, film, hotel, gadget) and the template.

The split holds out whole surface forms, so a probe cannot pass the test by remembering words
or phrasings: the test sentences use only the :data:`TEST_TEMPLATES` and the test adjectives
(the last :data:`TEST_ADJECTIVES_PER_POLARITY` of each polarity's list), the training sentences
only the other templates and adjectives. Nouns (the topic) are shared by both parts: the topic
is not the concept. Within each part, sentences are drawn without replacement from all
(template, adjective, noun) combinations by a seeded generator, balanced over sentiment.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nfm.exceptions import NFMInputError

__all__ = [
    "ADJECTIVES",
    "NOUNS",
    "TEMPLATES",
    "TEST_ADJECTIVES_PER_POLARITY",
    "TEST_TEMPLATES",
    "ConceptData",
    "sentiment_reviews",
]

#: Sentence templates; ``{noun}`` and ``{adj}`` are filled in.
TEMPLATES: tuple[str, ...] = (
    "The {noun} was {adj}.",
    "I thought the {noun} was {adj}.",
    "Honestly, the {noun} felt {adj}.",
    "My friends agreed that the {noun} was {adj}.",
    "The {noun} turned out to be {adj}, to be honest.",
    "Everyone said the {noun} was {adj} this time.",
    "In my opinion the {noun} is {adj}.",
    "We all found the {noun} {adj}.",
    "Overall, the {noun} seemed {adj} to me.",
    "I have to say the {noun} was {adj}.",
    "After a week, the {noun} still looks {adj}.",
    "Frankly, I found the {noun} {adj} from start to finish.",
)
#: Indices of the templates used only by the test part.
TEST_TEMPLATES: tuple[int, ...] = (8, 9, 10, 11)

#: Adjectives by polarity (1 positive, 0 negative); the last few of each are test-only.
ADJECTIVES: dict[int, tuple[str, ...]] = {
    1: (
        "wonderful", "excellent", "delightful", "fantastic", "superb", "lovely", "great",
        "pleasant", "brilliant", "charming", "impressive", "enjoyable", "marvellous",
        "terrific", "outstanding",
    ),
    0: (
        "awful", "terrible", "dreadful", "horrible", "disappointing", "poor", "unpleasant",
        "boring", "mediocre", "disgusting", "annoying", "miserable", "pathetic", "lousy",
        "atrocious",
    ),
}  # fmt: skip
#: How many adjectives of each polarity (the last ones of its list) only the test part uses.
TEST_ADJECTIVES_PER_POLARITY = 5

#: Nouns by topic.
NOUNS: dict[str, tuple[str, ...]] = {
    "food": ("soup", "pasta", "dessert", "meal", "coffee"),
    "film": ("movie", "plot", "acting", "soundtrack", "ending"),
    "hotel": ("room", "staff", "breakfast", "pool", "view"),
    "gadget": ("phone", "battery", "screen", "laptop", "camera"),
}


@dataclass(frozen=True)
class ConceptData:
    """Labelled sentences with their split (see the module docstring).

    Attributes
    ----------
    texts : list of str
    sentiment : (n,) int array
        1 positive, 0 negative.
    topic : (n,) int array
        Index into ``topics``.
    topics : tuple of str
    template : (n,) int array
        Index into :data:`TEMPLATES`.
    adjective : list of str
    split : (n,) array of str
        ``"train"`` or ``"test"``.
    """

    texts: list[str]
    sentiment: np.ndarray
    topic: np.ndarray
    topics: tuple[str, ...]
    template: np.ndarray
    adjective: list[str]
    split: np.ndarray

    @property
    def train(self) -> np.ndarray:
        """Row indices of the training part."""
        return np.flatnonzero(self.split == "train")

    @property
    def test(self) -> np.ndarray:
        """Row indices of the test part."""
        return np.flatnonzero(self.split == "test")


def _part(
    templates: list[int], adjectives: dict[int, tuple[str, ...]], per_class: int, rng
) -> list[tuple[int, int, str, str, int]]:
    topics = list(NOUNS)
    rows = []
    for polarity in (1, 0):
        combos = [
            (t, polarity, adj, noun, topics.index(topic))
            for t in templates
            for adj in adjectives[polarity]
            for topic in topics
            for noun in NOUNS[topic]
        ]
        if per_class > len(combos):
            raise NFMInputError(
                f"asked for {per_class} sentences per class; this part has {len(combos)}"
            )
        chosen = rng.choice(len(combos), per_class, replace=False)
        rows.extend(combos[i] for i in sorted(chosen))
    return rows


def sentiment_reviews(
    n_train_per_class: int = 160, n_test_per_class: int = 80, *, seed: int = 0
) -> ConceptData:
    """Templated positive and negative review sentences with a held-out test part.

    Parameters
    ----------
    n_train_per_class, n_test_per_class : int
        Sentences per sentiment in each part (at most 8 * 10 * 20 = 1,600 for training and
        4 * 5 * 20 = 400 for the test part).
    seed : int
        Seeds the draw of combinations.
    """
    sizes = {"n_train_per_class": n_train_per_class, "n_test_per_class": n_test_per_class}
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise NFMInputError(f"{name} must be a positive int; got {value!r}")
    rng = np.random.default_rng(seed)
    k = TEST_ADJECTIVES_PER_POLARITY
    train_templates = [i for i in range(len(TEMPLATES)) if i not in TEST_TEMPLATES]
    train_adjectives = {p: words[:-k] for p, words in ADJECTIVES.items()}
    test_adjectives = {p: words[-k:] for p, words in ADJECTIVES.items()}
    parts = [
        ("train", _part(train_templates, train_adjectives, n_train_per_class, rng)),
        ("test", _part(list(TEST_TEMPLATES), test_adjectives, n_test_per_class, rng)),
    ]
    texts, sentiment, topic, template, adjective, split = [], [], [], [], [], []
    for name, rows in parts:
        for t, polarity, adj, noun, topic_index in rows:
            texts.append(TEMPLATES[t].format(noun=noun, adj=adj))
            sentiment.append(polarity)
            topic.append(topic_index)
            template.append(t)
            adjective.append(adj)
            split.append(name)
    return ConceptData(
        texts=texts,
        sentiment=np.array(sentiment),
        topic=np.array(topic),
        topics=tuple(NOUNS),
        template=np.array(template),
        adjective=adjective,
        split=np.array(split),
    )
