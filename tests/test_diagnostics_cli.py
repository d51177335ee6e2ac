"""``nfm diagnose``, the diagnosis figures and the HTML section."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from nfm import cli
from nfm.diagnostics import diagnose
from nfm.diagnostics.html import diagnosis_section, write_diagnosis_report
from nfm.diagnostics.plots import plot_diagnosis, plot_signal_comparison
from nfm.exceptions import NFMInputError


def _tiny(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(64, 5, generator=g)
    y = torch.randint(0, 3, (64,), generator=g)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    return model, x, y


def test_cli_on_a_built_mlp_writes_the_report(tmp_path, capsys):
    out = tmp_path / "report"
    code = cli.main(
        [
            "-q",
            "diagnose",
            "--dataset",
            "digits",
            "--samples",
            "300",
            "--depth",
            "1",
            "--width",
            "16",
            "--steps",
            "3",
            "--probe-size",
            "64",
            "--output-dir",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "cause:" in printed and "fc1" in printed
    payload = json.loads((out / "diagnosis.json").read_text())
    assert payload["cause"] in ("healthy", "vanishing", "dead_units", "features_still")
    assert payload["dynamics"]["steps"] == 3
    assert (out / "diagnosis.png").read_bytes()[:4] == b"\x89PNG"
    assert "Verdict per layer" in (out / "diagnosis.html").read_text()


def test_cli_on_model_and_data_files(tmp_path, capsys):
    model, x, y = _tiny()
    with torch.no_grad():
        model[0].bias.fill_(-100.0)  # every ReLU dead on inputs in [0, 1)
    torch.save(model, tmp_path / "model.pt")
    np.savez(tmp_path / "data.npz", X=x.numpy(), y=y.numpy())
    code = cli.main(
        [
            "diagnose",
            str(tmp_path / "model.pt"),
            str(tmp_path / "data.npz"),
            "--steps",
            "0",
            "--output-dir",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0
    assert json.loads((tmp_path / "out" / "diagnosis.json").read_text())["cause"] == "dead_units"
    assert "dead units" in capsys.readouterr().out


def test_cli_errors_exit_2(tmp_path, capsys):
    model, x, _ = _tiny()
    torch.save(model, tmp_path / "model.pt")
    np.save(tmp_path / "x.npy", x.numpy())
    assert cli.main(["diagnose", str(tmp_path / "model.pt")]) == 2
    assert "needs a data file" in capsys.readouterr().err
    assert cli.main(["diagnose", str(tmp_path / "model.pt"), str(tmp_path / "x.npy")]) == 2
    assert "no labels" in capsys.readouterr().err
    assert cli.main(["diagnose", "--steps", "-1"]) == 2
    assert "--steps" in capsys.readouterr().err


def test_html_section_escapes_and_holds_the_verdicts():
    model, x, y = _tiny()
    d = diagnose(model, x, y, steps=2)
    html = diagnosis_section(d, figures={"f": b"\x89PNG fake"}, heading="<b>x</b>")
    assert "&lt;b&gt;x&lt;/b&gt;" in html
    assert html.count("<tr") >= len(d.verdict.units)
    assert "data:image/png;base64," in html
    with pytest.raises(NFMInputError, match="Diagnosis"):
        diagnosis_section({"cause": "healthy"})


def test_report_files_and_figures(tmp_path):
    model, x, y = _tiny()
    d = diagnose(model, x, y, steps=2)
    fig = plot_diagnosis(d)
    assert len(fig.axes) >= 4
    comparison = plot_signal_comparison({"a": d, "b": diagnose(model, x)})
    assert len(comparison.axes[0].lines) == 2
    files = write_diagnosis_report(tmp_path, d, figures={"diagnosis": fig}, extra={"k": 1})
    payload = json.loads(files.json.read_text())
    assert payload["k"] == 1 and "machine" in payload
    assert files.figures["diagnosis"].stat().st_size > 0
    with pytest.raises(NFMInputError):
        plot_signal_comparison({})
