"""The offline text corpus (standard-library docstrings), its token windows, the shuffled null."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from nfm.ansatz.null import null_model  # noqa: E402
from nfm.exceptions import NFMInputError  # noqa: E402
from nfm.hf.analysis import null_weight_layers  # noqa: E402
from nfm.hf.corpus import stdlib_docstring_text, text_digest, token_windows  # noqa: E402


def word_tokenizer(text: str, size: int = 300):
    """A word-level fast tokenizer over the ``size`` commonest words, with [CLS] ... [SEP]."""
    from collections import Counter

    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]"]
    words = [w for w, _ in Counter(text.split()).most_common(size)]
    vocab = {w: i for i, w in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
    )


@pytest.fixture(scope="module")
def text():
    return stdlib_docstring_text(("json", "textwrap", "argparse"))


def test_the_corpus_is_the_docstrings_and_is_reproducible(text):
    assert "JSON (JavaScript Object Notation)" in text
    assert len(text.split()) > 2000
    assert text_digest(text) == text_digest(stdlib_docstring_text(("json", "textwrap", "argparse")))
    assert all(len(p.split()) >= 4 for p in text.split("\n\n"))


def test_the_corpus_rejects_what_it_cannot_read():
    with pytest.raises(NFMInputError, match="at least one"):
        stdlib_docstring_text(())
    with pytest.raises(NFMInputError, match="top-level"):
        stdlib_docstring_text(("os.path",))
    with pytest.raises(NFMInputError, match="no Python source"):
        stdlib_docstring_text(("sys",))  # built into the interpreter: no .py file


def test_windows_have_fixed_length_real_tokens_and_special_tokens(text):
    tok = word_tokenizer(text)
    windows = token_windows(tok, text, n_windows=5, length=12)
    assert windows.shape == (5, 12) and windows.dtype == torch.int64
    assert torch.all(windows[:, 0] == tok.cls_token_id)
    assert torch.all(windows[:, -1] == tok.sep_token_id)
    assert not torch.any(windows == tok.pad_token_id)
    body = windows[:, 1:-1]
    assert not torch.any((body == tok.cls_token_id) | (body == tok.sep_token_id))
    assert len({tuple(w.tolist()) for w in windows}) == 5  # distinct, spread over the text
    assert torch.equal(windows, token_windows(tok, text, n_windows=5, length=12))
    plain = token_windows(tok, text, n_windows=5, length=10, special_tokens=False)
    assert torch.equal(plain, body)


def test_windows_reject_impossible_requests(text):
    tok = word_tokenizer(text)
    with pytest.raises(NFMInputError, match="n_windows must be a positive int"):
        token_windows(tok, text, n_windows=0, length=8)
    with pytest.raises(NFMInputError, match="leaves no room"):
        token_windows(tok, text, n_windows=2, length=2)
    with pytest.raises(NFMInputError, match="fewer than n_windows"):
        token_windows(tok, "one two three four five", n_windows=3, length=4)
    with pytest.raises(NFMInputError, match="pass fewer windows or a smaller length"):
        token_windows(tok, text, n_windows=40, length=10**5)


@pytest.fixture
def gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=1, n_head=2, n_embd=16, vocab_size=30, n_positions=8, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config).eval()


def test_the_shuffled_null_permutes_every_weight_matrix_and_keeps_the_rest(gpt2):
    original = {k: v.clone() for k, v in gpt2.state_dict().items()}
    shuffled = null_model(gpt2, "shuffled", layers=null_weight_layers, seed=3)
    assert shuffled.lm_head.weight is shuffled.transformer.wte.weight  # still tied
    for name, param in gpt2.named_parameters():
        other = dict(shuffled.named_parameters())[name]
        if param.ndim >= 2:  # embeddings, Conv1D projections
            assert not torch.equal(other, param), name
            assert torch.equal(other.flatten().sort().values, param.flatten().sort().values)
        else:  # layer-norm gains, biases
            assert torch.equal(other, param), name
    assert all(torch.equal(v, gpt2.state_dict()[k]) for k, v in original.items())
