"""write_report: one self-contained HTML file, metrics JSON, PNGs, history file."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
import torch
from matplotlib import pyplot as plt

import nfm
from nfm.exceptions import NFMInputError
from nfm.tracking import NFATracker, TrackingHistory
from nfm.training import make_mlp
from nfm.viz.report import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def figures():
    first, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    second, ax = plt.subplots()
    ax.imshow([[0, 1], [1, 0]])
    yield {"line": first, "image": second}
    plt.close(first)
    plt.close(second)


def _rows():
    return [
        {"layer": "fc1", "d": 64, "by_construction": False, "pearson_a0.5": 0.91},
        {"layer": "out", "d": 32, "by_construction": True, "pearson_a0.5": float("nan")},
    ]


def test_html_is_self_contained_and_json_has_the_metrics(tmp_path, figures):
    model = make_mlp(3, [2], 2, seed=0)
    tracker = NFATracker(model, torch.randn(8, 3, generator=torch.Generator().manual_seed(0)))
    tracker.record(0, loss=1.0)
    files = write_report(
        tmp_path / "out",
        figures=figures,
        nfa_rows=_rows(),
        metrics={"test_accuracy": 0.875, "odd": float("inf")},
        settings={"epochs": 3, "hidden_sizes": [2]},
        title="A <title> & more",
        captions={"line": "a line"},
        history=tracker,
    )
    html = files.html.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    # no external resources of any kind
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:)""", html)
    assert "<link" not in html and "<script" not in html
    sources = re.findall(r'<img[^>]*src="([^"]+)"', html)
    assert len(sources) == 2
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1]).startswith(PNG_MAGIC)
    assert "A &lt;title&gt; &amp; more" in html
    assert "0.8750" in html and "fc1" in html and "by construction" in html
    assert nfm.__version__ in html
    for name in ("line", "image"):
        assert files.figures[name].read_bytes().startswith(PNG_MAGIC)
    payload = json.loads(files.metrics_json.read_text())
    assert payload["metrics"] == {"test_accuracy": 0.875, "odd": None}
    assert payload["nfa"][0]["pearson_a0.5"] == 0.91
    assert payload["nfa"][1]["pearson_a0.5"] is None
    assert payload["settings"]["hidden_sizes"] == [2]
    assert payload["environment"]["nfm_version"] == nfm.__version__
    assert payload["figures"] == {"line": "line.png", "image": "image.png"}
    assert TrackingHistory.load(files.history).layers == ["fc1", "out"]


def test_json_files_are_strict_json_with_plain_values(tmp_path):
    def reject(token):
        raise AssertionError(f"non-standard JSON token {token}")

    files = write_report(
        tmp_path,
        figures={},
        nfa_rows=[{"layer": "fc1", "pearson_a0.5": np.float32(0.25)}],
        metrics={"curve": np.array([0.5, np.nan]), "best": torch.tensor(0.75)},
        settings={"data": tmp_path / "x.npz", "alphas": (0.5, 1.0)},
    )
    payload = json.loads(files.metrics_json.read_text(), parse_constant=reject)
    assert payload["metrics"] == {"curve": [0.5, None], "best": 0.75}
    assert payload["nfa"][0]["pearson_a0.5"] == 0.25
    assert payload["settings"] == {"data": str(tmp_path / "x.npz"), "alphas": [0.5, 1.0]}
    environment = payload["environment"]
    assert environment["versions"]["torch"] == torch.__version__
    assert environment["cores"] >= 1 and isinstance(environment["cpu"], str)


def test_report_without_history(tmp_path, figures):
    files = write_report(tmp_path, figures={}, nfa_rows=[], metrics={}, settings={})
    assert files.history is None
    assert "Training history" not in files.html.read_text()
    assert json.loads(files.metrics_json.read_text())["history_file"] is None


def test_bad_arguments(tmp_path, figures):
    with pytest.raises(NFMInputError, match="file stems"):
        write_report(
            tmp_path, figures={"a/b": figures["line"]}, nfa_rows=[], metrics={}, settings={}
        )
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(NFMInputError, match="not a folder"):
        write_report(blocker, figures={}, nfa_rows=[], metrics={}, settings={})
