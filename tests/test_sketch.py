"""The random Gaussian sketch of the AGOP: unbiased, with the stated mean squared error.

Exact per-sample AGOPs come from the independent per-sample autograd reference; the sketch's
mean over many seeds must approach the exact AGOP, and its empirical mean squared error must
match ``sketch_mean_squared_error`` (the formula for Gaussian probes) within a sampling margin.
"""

from __future__ import annotations

import pytest
import torch
from reference_agop import reference_agop
from torch import nn

from nfm.exceptions import NFMInputError
from nfm.features.agop import compute_agop
from nfm.features.outputs import GaussianSketch, sketch_mean_squared_error


def model_and_data(c=20, n=6, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, c)).double().eval()
    x = torch.randn(n, 5, dtype=torch.float64)
    return model, x


def test_sketch_is_unbiased_and_its_error_is_the_stated_one():
    model, x = model_and_data()
    k, seeds = 4, 300
    exact = compute_agop(model, x, include_input=False)["0"]
    reference = reference_agop(model, x, ["0"], include_input=False)["0"]
    assert float((exact - reference).norm() / reference.norm()) <= 1e-12
    per_sample = [
        reference_agop(model, x[i : i + 1], ["0"], include_input=False)["0"] for i in range(len(x))
    ]
    sketches = torch.stack(
        [
            compute_agop(model, x, include_input=False, outputs=GaussianSketch(k, seed))["0"]
            for seed in range(seeds)
        ]
    )
    errors = ((sketches - exact) ** 2).sum(dim=(1, 2))
    mse, stated = float(errors.mean()), sketch_mean_squared_error(per_sample, k)
    # the squared error is a sum of a few chi-square-like terms: its mean over 300 seeds is
    # within 25% of its expectation with overwhelming probability (relative sd ~ 0.1)
    assert 0.75 * stated <= mse <= 1.25 * stated
    # unbiased: the mean of the sketches is within 5 standard errors of the exact AGOP
    mean_error = float(((sketches.mean(0) - exact) ** 2).sum())
    assert mean_error <= 25 * stated / seeds


def test_sketch_probes_do_not_depend_on_chunking_and_more_probes_help():
    model, x = model_and_data(c=30, n=8, seed=1)
    a = compute_agop(model, x, outputs=GaussianSketch(3, 7), chunk_size=8)
    b = compute_agop(model, x, outputs=GaussianSketch(3, 7), chunk_size=3, output_chunk_size=2)
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-12, atol=1e-14)
    exact = compute_agop(model, x)["input"]
    err = {}
    for k in (2, 64):
        runs = [compute_agop(model, x, outputs=GaussianSketch(k, s))["input"] for s in range(20)]
        err[k] = sum(float((r - exact).norm() ** 2) for r in runs) / 20
    assert err[64] < err[2] / 8  # the error falls as 1/k (expected ratio 32)


def test_sketch_on_token_outputs_is_unbiased():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 9)).double().eval()
    x = torch.randn(3, 5, 4, dtype=torch.float64)  # 5 tokens: outputs (3, 5, 9) -> 45 per sample
    exact = compute_agop(model, x, include_input=False)
    runs = [
        compute_agop(model, x, include_input=False, outputs=GaussianSketch(8, s))
        for s in range(200)
    ]
    for key in exact:
        mean = torch.stack([r[key] for r in runs]).mean(0)
        assert float((mean - exact[key]).norm() / exact[key].norm()) <= 0.1


def test_bad_sketches_are_refused():
    model, x = model_and_data()
    with pytest.raises(NFMInputError, match="k must be a positive int"):
        GaussianSketch(0)
    with pytest.raises(NFMInputError, match="seed must be an int"):
        GaussianSketch(2, seed=1.5)
    with pytest.raises(NFMInputError, match="centered=True cannot be combined"):
        compute_agop(model, x, outputs=GaussianSketch(2), centered=True)


def test_model_output_logits_are_read():
    class WithLogits(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return {"logits": self.fc(x), "hidden": x}

    model = WithLogits().double()
    x = torch.randn(4, 3, dtype=torch.float64)
    got = compute_agop(model, x, include_input=False)["fc"]
    w = model.fc.weight.detach()
    assert torch.allclose(got, w.T @ w, rtol=1e-12, atol=0)

    class NoLogits(WithLogits):
        def forward(self, x):
            return {"hidden": self.fc(x)}

    with pytest.raises(NFMInputError, match=r"fields: \['hidden'\].*'logits'"):
        compute_agop(NoLogits().double(), x)
