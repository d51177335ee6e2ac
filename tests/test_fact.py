"""Tests of nfm.ansatz.fact: the FACT matrix against per-sample float64 references, the identity
at a stationary point of the weight-decayed objective, chunking, errors and model state."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from mixed_mode import mixed_mode_model, modes_and_flags
from torch import nn

from nfm.ansatz import compute_fact, fact_report
from nfm.ansatz.fact import accumulate_fact, fact_column
from nfm.exceptions import LayerSelectionError, NFMInputError


def _seeded(seed, build):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()


def mlp(seed=0):
    return _seeded(
        seed,
        lambda: nn.Sequential(
            nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 4), nn.ReLU(), nn.Linear(4, 3)
        ).double(),
    )


def classification_data(n=23, d=5, c=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(
        0, c, (n,), generator=g
    )


def sym(a):
    return 0.5 * (a + a.T)


# --------------------------------------------------------------------------- references
def reference_mlp_fact(model, x, y, weight_decay):
    """Per-sample loops: the input of each linear layer is a leaf; the rest of the network is
    run by hand from it; grad of that sample's loss with respect to the leaf."""
    linears = [m for m in model if isinstance(m, nn.Linear)]
    acts = [torch.tanh, torch.relu, lambda t: t]
    out = {}
    for index, layer in enumerate(linears):
        cross = torch.zeros(layer.in_features, layer.in_features, dtype=torch.float64)
        for i in range(x.shape[0]):
            h = x[i]
            for j in range(index):  # the layers before: plain values
                h = acts[j](linears[j].weight.detach() @ h + linears[j].bias.detach())
            h = h.detach().requires_grad_(True)
            z = h
            for j in range(index, len(linears)):
                z = acts[j](linears[j].weight.detach() @ z + linears[j].bias.detach())
            loss = -torch.log_softmax(z, dim=0)[y[i]]
            (grad,) = torch.autograd.grad(loss, h)
            cross += torch.outer(grad, h.detach())
        out[index] = -cross / (x.shape[0] * weight_decay)
    return out


class TokenMixer(nn.Module):
    """(batch, T, d) -> (batch, T, c); the tokens interact through a mean over positions."""

    def __init__(self, d=4, k=6, c=3):
        super().__init__()
        self.inp = nn.Linear(d, k)
        self.out = nn.Linear(k, c)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        h = h + h.mean(dim=1, keepdim=True)
        return self.out(h)


def reference_token_fact(model, x, y, weight_decay):
    """Per sample: the (T, d) input of each layer is a leaf, the token losses are summed."""
    w1, b1 = model.inp.weight.detach(), model.inp.bias.detach()
    w2, b2 = model.out.weight.detach(), model.out.bias.detach()
    n_entries = y.numel()
    cross_in = torch.zeros(w1.shape[1], w1.shape[1], dtype=torch.float64)
    cross_out = torch.zeros(w2.shape[1], w2.shape[1], dtype=torch.float64)
    for i in range(x.shape[0]):
        # layer "inp": its input x_i
        h = x[i].detach().clone().requires_grad_(True)
        a = torch.tanh(h @ w1.T + b1)
        a = a + a.mean(dim=0, keepdim=True)
        logits = a @ w2.T + b2
        loss = sum(-torch.log_softmax(logits[t], dim=0)[y[i, t]] for t in range(y.shape[1]))
        (grad,) = torch.autograd.grad(loss, h)
        for t in range(h.shape[0]):
            cross_in += torch.outer(grad[t], h[t].detach())
        # layer "out": its input is the mixed hidden state
        a = torch.tanh(x[i] @ w1.T + b1)
        a = (a + a.mean(dim=0, keepdim=True)).detach().requires_grad_(True)
        logits = a @ w2.T + b2
        loss = sum(-torch.log_softmax(logits[t], dim=0)[y[i, t]] for t in range(y.shape[1]))
        (grad,) = torch.autograd.grad(loss, a)
        for t in range(a.shape[0]):
            cross_out += torch.outer(grad[t], a[t].detach())
    scale = n_entries * weight_decay
    return {"inp": -cross_in / scale, "out": -cross_out / scale}


class ConvNet(nn.Module):
    def __init__(self, conv, flat_features, classes=3):
        super().__init__()
        self.conv = conv
        self.head = nn.Linear(flat_features, classes)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).flatten(1))


def manual_patches_2d(xpad, kernel, stride, dilation):
    """Patches of a padded (C, H, W) image by explicit slicing, channel major; (positions, C k)."""
    _, hp, wp = xpad.shape
    kh, kw = kernel
    span_h, span_w = dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1
    rows = []
    out_h = (hp - span_h) // stride[0] + 1
    out_w = (wp - span_w) // stride[1] + 1
    for i in range(out_h):
        for j in range(out_w):
            top, left = i * stride[0], j * stride[1]
            block = xpad[:, top : top + span_h : dilation[0], left : left + span_w : dilation[1]]
            rows.append(block.reshape(-1))
    return torch.stack(rows), (out_h, out_w)


def reference_conv_fact(model, x, y, weight_decay, pad, pad_mode):
    """Per sample and group: patches (explicit slicing) are leaves, the conv is W_g @ p_g + b."""
    conv = model.conv
    groups = conv.groups
    c_in, c_out = conv.in_channels, conv.out_channels
    two_d = isinstance(conv, nn.Conv2d)
    kernel = conv.kernel_size if two_d else (1, conv.kernel_size[0])
    stride = conv.stride if two_d else (1, conv.stride[0])
    dilation = conv.dilation if two_d else (1, conv.dilation[0])
    w = conv.weight.detach().reshape(c_out, -1)
    b = conv.bias.detach()
    k = math.prod(kernel)
    cin_g, cout_g = c_in // groups, c_out // groups
    d = c_in * k
    cross = torch.zeros(d, d, dtype=torch.float64)
    for i in range(x.shape[0]):
        xpad = F.pad(x[i].unsqueeze(0), pad, mode=pad_mode).squeeze(0)
        if not two_d:
            xpad = xpad.unsqueeze(1)  # (C, 1, L)
        patches, (oh, ow) = manual_patches_2d(xpad, kernel, stride, dilation)
        leaves = [
            patches[:, g * cin_g * k : (g + 1) * cin_g * k].clone().requires_grad_(True)
            for g in range(groups)
        ]
        outs = [
            leaves[g] @ w[g * cout_g : (g + 1) * cout_g].T + b[g * cout_g : (g + 1) * cout_g]
            for g in range(groups)
        ]
        z = torch.cat(outs, dim=1).T  # (C_out, positions)
        z = z.reshape(c_out, oh, ow) if two_d else z.reshape(c_out, ow)
        logits = model.head.weight.detach() @ torch.relu(z).reshape(-1) + model.head.bias.detach()
        loss = -torch.log_softmax(logits, dim=0)[y[i]]
        grads = torch.autograd.grad(loss, leaves)
        for g in range(groups):
            block = slice(g * cin_g * k, (g + 1) * cin_g * k)
            cross[block, block] += grads[g].T @ leaves[g].detach()
    return -cross / (x.shape[0] * weight_decay)


# --------------------------------------------------------------------------- against references
def test_mlp_matches_per_sample_reference():
    model = mlp()
    x, y = classification_data()
    got = compute_fact(model, x, y, layers=["0", "2", "4"], weight_decay=0.3, symmetric=False)
    ref = reference_mlp_fact(model, x, y, 0.3)
    for index, name in enumerate(["0", "2", "4"]):
        torch.testing.assert_close(got[name], ref[index], rtol=1e-11, atol=1e-14)
    sym_got = compute_fact(model, x, y, layers=["0", "2", "4"], weight_decay=0.3)
    for index, name in enumerate(["0", "2", "4"]):
        torch.testing.assert_close(sym_got[name], sym(ref[index]), rtol=1e-11, atol=1e-14)


def test_tokens_are_summed_over_positions_and_interacting_tokens_are_exact():
    model = _seeded(2, lambda: TokenMixer().double())
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 6, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (5, 6), generator=g)
    got = compute_fact(model, x, y, layers=["inp", "out"], weight_decay=0.05, symmetric=False)
    ref = reference_token_fact(model, x, y, 0.05)
    for name in ("inp", "out"):
        torch.testing.assert_close(got[name], ref[name], rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize(
    ("conv", "x_shape", "pad_mode"),
    [
        (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), (3, 4, 7, 6), "constant"),
        (
            lambda: nn.Conv2d(
                2, 3, (2, 3), dilation=(2, 1), padding=(1, 2), padding_mode="reflect"
            ),
            (3, 2, 6, 7),
            "reflect",
        ),
        (lambda: nn.Conv1d(3, 4, 3, stride=2, dilation=2, padding=2), (4, 3, 11), "constant"),
        (
            lambda: nn.Conv1d(2, 2, 4, padding="same", padding_mode="circular"),
            (3, 2, 9),
            "circular",
        ),
    ],
)
def test_convolutions_match_a_patch_space_reference(conv, x_shape, pad_mode):
    layer = _seeded(4, conv).double()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(*x_shape, generator=g, dtype=torch.float64)
    with torch.no_grad():
        flat = layer(x).flatten(1).shape[1]
    model = _seeded(6, lambda: ConvNet(layer, flat).double())
    y = torch.randint(0, 3, (x_shape[0],), generator=g)
    pad = list(layer._reversed_padding_repeated_twice)
    got = compute_fact(model, x, y, layers="conv", weight_decay=0.2, symmetric=False)["conv"]
    ref = reference_conv_fact(model, x, y, 0.2, pad, pad_mode)
    torch.testing.assert_close(got, ref, rtol=1e-11, atol=1e-14)


def test_hugging_face_conv1d_reads_its_weight_transposed():
    pytorch_utils = pytest.importorskip("transformers.pytorch_utils")

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = pytorch_utils.Conv1D(4, 5)  # nf=4 outputs, nx=5 inputs
            self.out = nn.Linear(4, 3)

        def forward(self, x):
            return self.out(torch.tanh(self.proj(x)))

    model = _seeded(7, lambda: Head().double())
    g = torch.Generator().manual_seed(8)
    x = torch.randn(9, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (9,), generator=g)
    got = compute_fact(model, x, y, layers="proj", symmetric=False)["proj"]
    # the same network with an nn.Linear whose weight is Conv1D.weight.T
    twin = mlp_like = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    with torch.no_grad():
        twin[0].weight.copy_(model.proj.weight.T)
        twin[0].bias.copy_(model.proj.bias)
        twin[2].load_state_dict(model.out.state_dict())
    ref = reference_mlp_like(mlp_like, x, y)
    torch.testing.assert_close(got, ref, rtol=1e-11, atol=1e-14)


def reference_mlp_like(model, x, y):
    w1, b1 = model[0].weight.detach(), model[0].bias.detach()
    w2, b2 = model[2].weight.detach(), model[2].bias.detach()
    cross = torch.zeros(w1.shape[1], w1.shape[1], dtype=torch.float64)
    for i in range(x.shape[0]):
        h = x[i].clone().requires_grad_(True)
        loss = -torch.log_softmax(w2 @ torch.tanh(w1 @ h + b1) + b2, dim=0)[y[i]]
        (grad,) = torch.autograd.grad(loss, h)
        cross += torch.outer(grad, h.detach())
    return -cross / x.shape[0]


def test_callable_loss_and_mse_agree_with_their_definitions():
    model = mlp()
    x, _ = classification_data()
    target = torch.randn(x.shape[0], 3, generator=torch.Generator().manual_seed(9)).double()
    mse = compute_fact(model, x, target, loss="mse", symmetric=False)
    # mean over entries: the same objective as a callable returning (batch, 3) entries
    same = compute_fact(model, x, target, loss=lambda f, t: (f - t) ** 2, symmetric=False)
    for name in mse:
        torch.testing.assert_close(mse[name], same[name], rtol=1e-12, atol=0)
    # per-sample sums: 3 entries folded into one, so the mean over samples is 3 times larger
    summed = compute_fact(
        model, x, target, loss=lambda f, t: ((f - t) ** 2).sum(dim=1), symmetric=False
    )
    for name in mse:
        torch.testing.assert_close(summed[name], 3 * mse[name], rtol=1e-12, atol=1e-15)


@settings(max_examples=15, deadline=None)
@given(chunk=st.integers(1, 30), lam=st.floats(1e-3, 10.0))
def test_chunking_and_weight_decay_scale(chunk, lam):
    model = mlp()
    x, y = classification_data()
    whole = compute_fact(model, x, y, chunk_size=64)
    chunked = compute_fact(model, x, y, chunk_size=chunk, weight_decay=lam)
    for name in whole:
        torch.testing.assert_close(chunked[name] * lam, whole[name], rtol=1e-10, atol=1e-15)


def test_dataloader_of_pairs_equals_tensors():
    model = mlp()
    x, y = classification_data()
    batches = [(x[i : i + 7], y[i : i + 7]) for i in range(0, x.shape[0], 7)]
    a = compute_fact(model, x, y)
    b = compute_fact(model, batches, chunk_size=4)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-12, atol=1e-16)


def test_float32_model_float64_dtype_is_the_float64_result():
    model64 = mlp()
    model32 = mlp().float()
    x, y = classification_data()
    a = compute_fact(model64, x, y)
    b = compute_fact(model32, x.float(), y, dtype=torch.float64)
    c = compute_fact(model32, x.float(), y)
    for name in a:
        # float32 weights and data differ from the float64 ones by float32 rounding only
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(c[name], a[name], rtol=1e-3, atol=1e-5)
        assert c[name].dtype == torch.float64
    assert model32[0].weight.dtype == torch.float32


# --------------------------------------------------------------------------- the identity
def train_to_stationarity(model, x, y, lam, loss_fn):
    """Minimise mean loss + lam/2 * (sum of squared parameters) in float64; return grad_W.

    A few LBFGS steps, then Newton steps (exact Hessian of the ~80 parameters, shifted until
    positive definite, with backtracking), until the largest gradient entry is below 1e-13.
    Every parameter is decayed, so the Hessian is not singular along the shift of all output
    biases that the softmax ignores. Returns the gradient of the objective at the end, for
    each weight matrix (the FACT identity needs only their stationarity).
    """
    named = list(model.named_parameters())
    names = [n for n, _ in named]
    shapes = [p.shape for _, p in named]
    sizes = [p.numel() for _, p in named]

    def unflat(v):
        return {n: t.reshape(s) for n, t, s in zip(names, v.split(sizes), shapes, strict=True)}

    def objective(v):
        params = unflat(v)
        reg = sum((t**2).sum() for t in params.values())
        return loss_fn(torch.func.functional_call(model, params, (x,)), y) + 0.5 * lam * reg

    v = torch.cat([p.detach().reshape(-1) for _, p in named]).requires_grad_(True)
    opt = torch.optim.LBFGS(
        [v], lr=1.0, max_iter=30, tolerance_change=0.0, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        value = objective(v)
        value.backward()
        return value

    opt.step(closure)
    v = v.detach()
    eye = torch.eye(v.numel(), dtype=v.dtype)
    for _ in range(60):
        g = torch.func.grad(objective)(v)
        if float(g.abs().max()) < 1e-13:
            break
        h = torch.func.hessian(objective)(v)
        shift = 0.0
        while True:
            factor, info = torch.linalg.cholesky_ex(h + shift * eye)
            if int(info) == 0:
                break
            shift = max(2 * shift, 1e-6)
        step = torch.cholesky_solve(g[:, None], factor)[:, 0]
        t, f0 = 1.0, float(objective(v))
        while float(objective(v - t * step)) > f0 + 1e-14 * abs(f0) and t > 1e-4:
            t /= 2
        v = v - t * step
    with torch.no_grad():
        for (_, p), t in zip(named, v.split(sizes), strict=True):
            p.copy_(t.reshape(p.shape))
    grads = unflat(torch.func.grad(objective)(v))
    return {n: grads[n] for n in names if n.endswith("weight")}


@pytest.mark.parametrize("case", ["mlp_cross_entropy", "tokens_mse"])
def test_fact_equals_wtw_at_a_stationary_point(case):
    lam = 0.01
    if case == "mlp_cross_entropy":
        # smooth activations: LBFGS stalls at the kinks of a ReLU network
        model = _seeded(
            11,
            lambda: nn.Sequential(
                nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4), nn.Softplus(), nn.Linear(4, 3)
            ).double(),
        )
        g = torch.Generator().manual_seed(12)
        x = torch.randn(40, 5, generator=g, dtype=torch.float64)
        noise = 0.5 * torch.randn(40, 3, generator=g, dtype=torch.float64)
        y = (x[:, :3] + noise).argmax(dim=1)  # learnable labels: the weights do not collapse
        names, loss, torch_loss = ["0", "2", "4"], "cross_entropy", F.cross_entropy
    else:
        model = _seeded(13, lambda: TokenMixer(d=3, k=5, c=2).double())
        g = torch.Generator().manual_seed(14)
        x = torch.randn(12, 4, 3, generator=g, dtype=torch.float64)
        y = torch.randn(12, 4, 2, generator=g, dtype=torch.float64)
        names, loss, torch_loss = ["inp", "out"], "mse", F.mse_loss
    before = compute_fact(model, x, y, layers=names, loss=loss, weight_decay=lam)
    residuals = train_to_stationarity(model, x, y, lam, torch_loss)
    raw = compute_fact(model, x, y, layers=names, loss=loss, weight_decay=lam, symmetric=False)
    symmetric = compute_fact(model, x, y, layers=names, loss=loss, weight_decay=lam)
    modules = dict(model.named_modules())
    for name in names:
        w = modules[name].weight.detach()
        wtw = w.T @ w
        r = residuals[f"{name}.weight"]
        assert float(r.norm()) < 1e-10, "the fit did not reach a stationary point"
        assert float(wtw.norm()) > 0.5, "the weights collapsed to the trivial stationary point"
        # F - W^T W = -(1/lam) W^T r exactly, so its norm is at most ||W||_2 ||r||_F / lam
        bound = float(torch.linalg.matrix_norm(w, ord=2)) * float(r.norm()) / lam
        slack = 1e-12 * float(wtw.norm())
        assert float((raw[name] - wtw).norm()) <= bound + slack
        assert float((symmetric[name] - wtw).norm()) <= bound + slack
        assert float((symmetric[name] - wtw).norm()) < 1e-8 * float(wtw.norm())
        # and away from the stationary point it does not hold: the test can fail
        assert float((before[name] - wtw).norm()) > 0.05 * float(wtw.norm())
    report = fact_report(model, x, y, layers=names, loss=loss, weight_decay=lam)
    for row in report.rows:
        assert row["fact_pearson"] > 1 - 1e-12
        assert row["relative_error"] < 1e-8
        assert row["asymmetry"] < 1e-8


# --------------------------------------------------------------------------- report
def test_report_rows_correlations_and_null():
    model = mlp()
    x, y = classification_data()
    report = fact_report(model, x, y, weight_decay=0.1, null="shuffled", null_seed=3)
    facts = compute_fact(model, x, y, weight_decay=0.1)
    assert [r["layer"] for r in report.rows] == ["0", "2", "4"]
    assert report.headline_column == "fact_pearson"
    for row in report.rows:
        w = dict(model.named_modules())[row["layer"]].weight.detach()
        wtw = w.T @ w
        u = wtw.reshape(-1) - wtw.mean()
        v = facts[row["layer"]].reshape(-1) - facts[row["layer"]].mean()
        assert row["fact_pearson"] == pytest.approx(float(u @ v / (u.norm() * v.norm())), abs=1e-12)
        assert row["null"] == "shuffled"
        assert row["lift"] == pytest.approx(row["fact_pearson"] - row["null_correlation"])
    # the null is the same statistic for the shuffled copy
    from nfm.ansatz import shuffled_copy

    copy = shuffled_copy(model, ["0", "2", "4"], seed=3)
    again = fact_report(copy, x, y, weight_decay=0.1)
    for row, null_row in zip(report.rows, again.rows, strict=True):
        assert row["null_correlation"] == pytest.approx(null_row["fact_pearson"], abs=1e-12)
    assert fact_column("cosine", True) in report.columns
    assert "fact_pearson" in str(report)


def test_model_comes_back_unchanged_also_on_error():
    model = mixed_mode_model()
    model.double()
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    before_flags = modes_and_flags(model)
    x = torch.randn(10, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (10,))
    with pytest.warns(UserWarning, match="training mode"):
        compute_fact(model, x, y)
    with pytest.warns(UserWarning), pytest.raises(NFMInputError, match="per-sample"):
        compute_fact(model, x, y, loss=lambda f, t: F.cross_entropy(f, t))
    assert modes_and_flags(model) == before_flags
    for key, value in model.state_dict().items():
        assert torch.equal(value, before_state[key]), key
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
    assert all(p.grad is None for p in model.parameters())


def test_bad_input_is_named():
    model = mlp()
    x, y = classification_data()
    with pytest.raises(NFMInputError, match="same number of samples"):
        compute_fact(model, x, y[:-1])
    with pytest.raises(NFMInputError, match="integer class labels"):
        compute_fact(model, x, y.double())
    with pytest.raises(NFMInputError, match=r"needs targets of shape \(23,\)"):
        compute_fact(model, x, y[:, None])
    with pytest.raises(NFMInputError, match="weight_decay"):
        compute_fact(model, x, y, weight_decay=0.0)
    with pytest.raises(NFMInputError, match="loss must be"):
        compute_fact(model, x, y, loss="hinge")
    with pytest.raises(NFMInputError, match="iterable of"):
        compute_fact(model, x)
    with pytest.raises(NFMInputError, match="chunk_size"):
        compute_fact(model, x, y, chunk_size=0)
    with pytest.raises(NFMInputError, match="NaN"):
        compute_fact(model, torch.full_like(x, float("nan")), y)
    with pytest.raises(NFMInputError, match="null must be"):
        fact_report(model, x, y, null="permuted")


def test_unsupported_layers_raise_layer_selection_errors():
    x, y = classification_data()
    with pytest.raises(LayerSelectionError, match="Tanh"):
        compute_fact(mlp(), x, y, layers="1")
    conv3 = nn.Sequential(nn.Conv3d(1, 2, 2), nn.Flatten(), nn.LazyLinear(3))
    with pytest.raises(LayerSelectionError, match="Conv1d and Conv2d only"):
        compute_fact(conv3, torch.randn(2, 1, 3, 3, 3), torch.tensor([0, 1]), layers="0")

    class Skips(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(5, 3)
            self.unused = nn.Linear(5, 3)

        def forward(self, x):
            return self.used(x)

    with pytest.raises(LayerSelectionError, match="never called"):
        compute_fact(Skips().double(), x, y)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x):
            return self.lin(self.lin(x[:, :3]))

    with pytest.raises(LayerSelectionError, match="more than once"):
        compute_fact(Twice().double(), x, y)


def test_numpy_inputs_and_hf_style_outputs():
    class WithLogits(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = mlp()

        def forward(self, x):
            return {"logits": self.net(x)}

    x, y = classification_data()
    a = compute_fact(WithLogits(), x.numpy(), y.numpy())
    b = compute_fact(mlp(), x, y)
    for name in b:
        torch.testing.assert_close(a[f"net.{name}"], b[name], rtol=0, atol=0)
    assert isinstance(a["net.0"], torch.Tensor)
    assert np.isfinite(a["net.0"].numpy()).all()


def test_partial_sums_merge():
    model = mlp()
    x, y = classification_data()
    whole = accumulate_fact(model, x, y)
    first = accumulate_fact(model, x[:10], y[:10])
    merged = first.merge(accumulate_fact(model, x[10:], y[10:]))
    assert merged.count == whole.count == x.shape[0]
    a, b = merged.matrices(), whole.matrices()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-12, atol=1e-16)
