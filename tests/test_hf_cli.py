"""``nfm analyze --hf PATH`` end to end on tiny saved transformers, and its bad inputs."""

from __future__ import annotations

import argparse
import json
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from nfm.cli import analyze  # noqa: E402
from nfm.hf.corpus import stdlib_docstring_text  # noqa: E402
from nfm.hf.loaders import load_pretrained  # noqa: E402


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    analyze.configure_parser(parser)
    return parser.parse_args(argv)


def _word_tokenizer(special: bool):
    from collections import Counter

    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    text = stdlib_docstring_text(("json", "textwrap"))
    words = [w for w, _ in Counter(text.split()).most_common(200)]
    vocab = {w: i for i, w in enumerate(["[UNK]", "[CLS]", "[SEP]", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if special:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)]
        )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    gpt2_config = transformers.GPT2Config(
        n_layer=2, n_head=2, n_embd=32, vocab_size=203, n_positions=16, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    gpt2 = transformers.GPT2LMHeadModel(gpt2_config)
    gpt2.save_pretrained(folder / "gpt2")
    _word_tokenizer(special=False).save_pretrained(folder / "gpt2")
    bert_config = transformers.BertConfig(
        num_hidden_layers=2, num_attention_heads=2, hidden_size=16, intermediate_size=32,
        vocab_size=203, max_position_embeddings=16,
    )  # fmt: skip
    bert = transformers.BertModel(bert_config)
    bert.save_pretrained(folder / "bert")
    _word_tokenizer(special=True).save_pretrained(folder / "bert")
    return folder


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_loader_reads_saved_folders_offline(saved):
    causal = load_pretrained(str(saved / "gpt2"))
    assert causal.kind == "causal-lm" and not causal.model.training
    encoder = load_pretrained(str(saved / "bert"))
    assert encoder.kind == "encoder"
    assert type(encoder.model).__name__ == "BertModel"


@pytest.mark.parametrize(
    ("name", "rows", "null"), [("gpt2", 4, ("shuffled", "reinit")), ("bert", 10, ("reinit",))]
)
def test_analyze_hf_writes_the_report(saved, tmp_path, capsys, name, rows, null):
    out = tmp_path / "report"
    args = _parse(["--hf", str(saved / name), "--hf-windows", "3", "--hf-length", "8",
                   "--hf-probes", "4", "--hf-null", "both" if len(null) == 2 else null[0],
                   "--dpi", "30", "--output-dir", str(out)])  # fmt: skip
    assert analyze.run(args) == 0, capsys.readouterr().err
    payload = json.loads((out / "metrics.json").read_text())
    table = payload["nfa"]
    # gpt2: fused c_attn and c_fc, 2 rows per block; bert: + q, k, v on their own
    assert len(table) == rows
    assert {r["role"] for r in table} >= {"attention", "mlp"}
    for row in table:
        for column in ("pearson_a0.5", *(f"null_{kind}_pearson_a0.5" for kind in null)):
            assert -1.0 <= row[column] <= 1.0
        for kind in null:
            assert row[f"lift_{kind}"] == pytest.approx(
                row["pearson_a0.5"] - row[f"null_{kind}_pearson_a0.5"]
            )
    blocks = json.loads((out / "blocks.json").read_text())
    assert [r["layer"] for r in blocks] == [r["layer"] for r in table]
    for stem in ("block_nfa", "block_spectra", "block_traces", "feature_matrices_middle_block"):
        assert (out / f"{stem}.png").is_file()
    html = (out / "report.html").read_text()
    assert f"null_{null[-1]}_pearson_a0.5" in html and "Gaussian sketch with 4 probes" in html
    printed = capsys.readouterr().out
    assert "nfm analyze --hf" in printed and f"null {null[-1]}" in printed


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--hf", "gpt2", "model.pt"], "give no MODEL or DATA"),
        ([], "needs a MODEL file and a DATA file"),
        (["--hf", "/no/such/folder"], "is neither one of"),
        (["--hf", "gpt2", "--hf-windows", "-1"], "--hf-windows must be >= 1"),
        (["--hf", "gpt2", "--hf-blocks", "5"], "--hf-blocks [5] not in the model"),
    ],
)
def test_analyze_hf_bad_input(saved, tmp_path, capsys, argv, message):
    argv = [str(saved / "gpt2") if a == "gpt2" else a for a in argv]
    args = _parse([*argv, "--output-dir", str(tmp_path)])
    assert analyze.run(args) == 2
    assert message in capsys.readouterr().err


def test_missing_transformers_is_a_clear_error(monkeypatch, saved):
    from nfm.exceptions import NFMInputError

    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now fails
    with pytest.raises(NFMInputError, match=r"pip install 'nfm\[hf\]'"):
        load_pretrained(str(saved / "gpt2"))
