"""Benchmark of nfm.compute_agop: FLOP rate against the machine's matmul rate, speed-up over a
per-sample autograd loop (MLPs) or a vmap(jacrev) implementation (a CNN, a transformer), and
peak memory as the number of samples grows.

Usage::

    python benchmarks/bench_agop.py                 # CPU, writes benchmarks/results/agop_cpu.*
    python benchmarks/bench_agop.py --device cuda   # GPU, writes benchmarks/results/agop_cuda.*
    python benchmarks/bench_agop.py --cases conv transformer   # -> agop_cpu_conv-transformer.*

What it measures, in one run:

1. The float32 matrix-multiply rate of the machine (square ``n x n`` products, best of several,
   measured before and after the AGOP timings; the higher is used, so the fraction is
   conservative).
2. The AGOP of all layers (every ``nn.Linear`` and the model input) of an MLP 784-1024-1024-10 on
   4,000 samples and of an MLP 64-128-128-10 on 2,000 samples, float32. FLOPs needed are
   counted as

   * forward: ``2 n sum_l k_l d_l``,
   * ``c`` vector-Jacobian products with respect to the layer inputs: ``2 n c sum_l k_l d_l``,
   * outer products as symmetric rank-k updates: ``n c d (d + 1)`` per distinct Jacobian
     (``n c d (d + 1) / 2`` multiply-adds; the model input and the first layer's input have the
     same Jacobian, computed once),

   and the achieved rate is that count over the wall time.
3. The same AGOP by a per-sample autograd loop (one forward and ``c`` backward passes per sample,
   ``J^T J`` per sample); on the large model the loop runs on a subset and is extrapolated
   linearly (it is linear in the number of samples).
4. Peak memory of ``compute_agop`` at 4,000 and 40,000 samples with the same chunk size, each in
   a fresh subprocess (CPU: peak resident set size above the level before the call, from
   ``/proc/self/status`` after resetting the peak; CUDA: ``torch.cuda.max_memory_allocated`` above
   the level before the call).

5. The patch AGOP of the two convolutions of a small CNN on 28x28 images (conv 5x5, 16 filters
   -> pool -> conv 3x3, 32 filters -> pool -> linear, :func:`nfm.training.cnn.make_cnn`) and the
   AGOP of every ``nn.Linear`` of a two-block transformer classifier (32 tokens of width 64,
   4-head attention written with matmuls, MLP 256, mean-pooled head), each against a
   ``torch.func.vmap(torch.func.jacrev(...))`` implementation written from the definition (the
   convolutions as unfold + matmul, zero deltas on the unfolded patches or layer inputs), in
   the same run and with the same chunk size; FLOPs needed are counted per case (see
   :func:`conv_flops`, :func:`transformer_flops`); peak memory at ``n`` and ``10 n`` samples
   for nfm and at ``n`` for the vmap(jacrev) implementation.

The machine the committed CPU numbers come from is shared: timings are noisy.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nfm._utils.env import machine_info as shared_machine_info
from nfm.features import compute_agop

RESULTS = Path(__file__).resolve().parent / "results"
LARGE = (784, 1024, 1024, 10)
SMALL = (64, 128, 128, 10)


def make_mlp(widths: tuple[int, ...], device: str, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        linear = nn.Linear(widths[i], widths[i + 1])
        with torch.no_grad():
            linear.weight.copy_(
                torch.randn(linear.weight.shape, generator=generator) / widths[i] ** 0.5
            )
            linear.bias.zero_()
        layers.append(linear)
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).to(device)


def make_data(n: int, d: int, device: str, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)).to(device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_rate(device: str, repeats: int = 5) -> float:
    """Best float32 FLOP/s of an n x n matrix product."""
    n = 8192 if device.startswith("cuda") else 2048
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(device)
    b = torch.randn(n, n, generator=generator).to(device)
    a @ b
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def flops_needed(widths: tuple[int, ...], n: int) -> dict[str, float]:
    c = widths[-1]
    sum_kd = sum(widths[i] * widths[i + 1] for i in range(len(widths) - 1))
    # distinct Jacobians: the input (= first layer's input) and each hidden layer's input
    dims = list(widths[:-1])
    forward = 2.0 * n * sum_kd
    vjps = 2.0 * n * c * sum_kd
    outer = float(sum(n * c * d * (d + 1) for d in dims))
    return {"forward": forward, "vjps": vjps, "outer": outer, "total": forward + vjps + outer}


def per_sample_loop(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The AGOP by one forward and c backward passes per sample (the baseline)."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    modules = dict(model.named_modules())
    deltas: dict[str, torch.Tensor] = {}

    def make_hook(name: str):
        def hook(module, args):
            delta = torch.zeros_like(args[0], requires_grad=True)
            deltas[name] = delta
            return (args[0] + delta,)

        return hook

    handles = [modules[name].register_forward_pre_hook(make_hook(name)) for name in names]
    sums: dict[str, torch.Tensor] = {}
    try:
        for i in range(x.shape[0]):
            xi = x[i : i + 1].clone().requires_grad_(True)
            out = model(xi).reshape(-1)
            keys = ["input", *names]
            tensors = [xi] + [deltas[name] for name in names]
            rows: list[list[torch.Tensor]] = [[] for _ in keys]
            for j in range(out.shape[0]):
                grads = torch.autograd.grad(out[j], tensors, retain_graph=True)
                for r, g in zip(rows, grads, strict=True):
                    r.append(g.reshape(-1))
            for key, r in zip(keys, rows, strict=True):
                jac = torch.stack(r)
                if key not in sums:
                    sums[key] = torch.zeros(jac.shape[1], jac.shape[1], device=x.device)
                sums[key] += jac.T @ jac
    finally:
        for handle in handles:
            handle.remove()
    return {key: value / x.shape[0] for key, value in sums.items()}


def time_agop(
    model: nn.Module,
    x: torch.Tensor,
    chunk_size: int,
    device: str,
    repeats: int,
    **agop_kwargs: Any,
) -> float:
    """Best wall time of ``repeats`` calls, after a warm-up call on one chunk."""
    compute_agop(model, x[: min(len(x), chunk_size)], chunk_size=chunk_size, **agop_kwargs)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        compute_agop(model, x, chunk_size=chunk_size, **agop_kwargs)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def time_loop(model: nn.Module, x: torch.Tensor, device: str) -> float:
    per_sample_loop(model, x[:2])
    sync(device)
    start = time.perf_counter()
    per_sample_loop(model, x)
    sync(device)
    return time.perf_counter() - start


def check_agreement(model: nn.Module, x: torch.Tensor) -> float:
    fast = compute_agop(model, x)
    slow = per_sample_loop(model, x)
    return max(float((fast[k] - slow[k]).norm() / slow[k].norm()) for k in slow)


# ---------------------------------------------------------------------------------------------
# Convolution and transformer cases, each against a vmap(jacrev) implementation
# ---------------------------------------------------------------------------------------------

#: A small CNN on 28x28 images (nfm.training.cnn.make_cnn): conv 5x5 (16) -> pool -> conv 3x3 (32)
#: -> pool -> linear (10). Patch spaces of 25 and 144 features, 784 and 196 positions.
CONV_CASE = {"image": (28, 28), "channels": (16, 32), "kernels": (5, 3), "classes": 10}
#: A pre-norm transformer classifier on 32 tokens of width 64: 2 blocks of 4-head attention
#: written with matmuls (q, k, v, o as nn.Linear) and a 256-wide MLP, mean-pooled linear head.
TRANSFORMER_CASE = {"tokens": 32, "width": 64, "heads": 4, "mlp": 256, "blocks": 2, "classes": 10}


def make_conv_model(device: str, seed: int = 0) -> nn.Module:
    from nfm.training.cnn import make_cnn

    case = CONV_CASE
    return make_cnn(
        case["image"],
        case["classes"],
        channels=case["channels"],
        kernel_sizes=case["kernels"],
        seed=seed,
    ).to(device)


def make_image_data(n: int, device: str, seed: int = 1) -> torch.Tensor:
    shape = (n, 1, *CONV_CASE["image"])
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device)


class TinyTransformer(nn.Module):
    """Pre-norm transformer blocks from nn.Linear and matmul attention, mean-pooled head.

    ``forward(x, deltas)`` adds ``deltas[name]`` (when given) to the input of the linear layer
    ``name``: the vmap(jacrev) reference differentiates with respect to these, at zero.
    """

    def __init__(
        self, width: int, heads: int, mlp: int, blocks: int, classes: int, seed: int = 0
    ) -> None:
        super().__init__()
        self.heads = heads
        self.blocks = nn.ModuleList()
        for _ in range(blocks):
            block = nn.Module()
            block.norm1 = nn.LayerNorm(width)
            block.q, block.k, block.v, block.o = (nn.Linear(width, width) for _ in range(4))
            block.norm2 = nn.LayerNorm(width)
            block.fc1 = nn.Linear(width, mlp)
            block.fc2 = nn.Linear(mlp, width)
            self.blocks.append(block)
        self.head = nn.Linear(width, classes)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    module.weight.copy_(
                        torch.randn(module.weight.shape, generator=generator)
                        / module.in_features**0.5
                    )
                    module.bias.zero_()

    def forward(
        self, x: torch.Tensor, deltas: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        def linear(name: str, module: nn.Linear, h: torch.Tensor) -> torch.Tensor:
            if deltas is not None:
                h = h + deltas[name]
            return module(h)

        b, t, width = x.shape
        heads, dh = self.heads, width // self.heads
        for index, block in enumerate(self.blocks):
            prefix = f"blocks.{index}."
            h = block.norm1(x)
            q, k, v = (
                linear(prefix + key, getattr(block, key), h)
                .reshape(b, t, heads, dh)
                .transpose(1, 2)
                for key in ("q", "k", "v")
            )
            attention = torch.softmax(q @ k.transpose(-1, -2) / dh**0.5, dim=-1)
            mixed = (attention @ v).transpose(1, 2).reshape(b, t, width)
            x = x + linear(prefix + "o", block.o, mixed)
            h = torch.relu(linear(prefix + "fc1", block.fc1, block.norm2(x)))
            x = x + linear(prefix + "fc2", block.fc2, h)
        return linear("head", self.head, x.mean(dim=1))


def make_transformer_model(device: str, seed: int = 0) -> TinyTransformer:
    case = TRANSFORMER_CASE
    return TinyTransformer(
        case["width"], case["heads"], case["mlp"], case["blocks"], case["classes"], seed
    ).to(device)


def make_token_data(n: int, device: str, seed: int = 1) -> torch.Tensor:
    shape = (n, TRANSFORMER_CASE["tokens"], TRANSFORMER_CASE["width"])
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device)


def _detached_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach() for name, p in model.named_parameters()}


def conv_patch_agop_vmap(model: nn.Module, x: torch.Tensor, chunk_size: int) -> dict:
    """Patch AGOP of every nn.Conv2d of a Sequential CNN by vmap(jacrev), chunk by chunk.

    Each convolution is rewritten as ``unfold`` followed by a matrix product with the weight
    read as ``(C_out, C_in k_h k_w)``, a zero ``delta`` is added to the unfolded patches, and
    ``torch.func.jacrev`` gives the Jacobian of the logits with respect to every patch of one
    sample (``vmap`` over the samples of a chunk); the AGOP is the sum of ``J_l^T J_l`` over
    samples and patch positions ``l``, divided by their number.
    """
    from torch.func import functional_call, jacrev, vmap

    children = list(model.named_children())
    convs = [name for name, m in children if isinstance(m, nn.Conv2d)]
    params = _detached_parameters(model)
    # per conv: patch shape (features, positions) and output map size, from one probe sample
    shapes: dict[str, tuple[int, int]] = {}
    maps: dict[str, tuple[int, int]] = {}
    with torch.no_grad():
        h = x[:1]
        for name, module in children:
            if isinstance(module, nn.Conv2d):
                patches = nn.functional.unfold(
                    h, module.kernel_size, module.dilation, module.padding, module.stride
                )
                shapes[name] = (patches.shape[1], patches.shape[2])
            h = module(h)
            if isinstance(module, nn.Conv2d):
                maps[name] = (h.shape[2], h.shape[3])

    def tail(sample: torch.Tensor, deltas: dict[str, torch.Tensor]) -> torch.Tensor:
        h = sample[None]
        for name, module in children:
            if isinstance(module, nn.Conv2d):
                weight, bias = params[f"{name}.weight"], params[f"{name}.bias"]
                patches = nn.functional.unfold(
                    h, module.kernel_size, module.dilation, module.padding, module.stride
                )[0]
                out = weight.reshape(weight.shape[0], -1) @ (patches + deltas[name])
                h = (out + bias[:, None]).reshape(1, weight.shape[0], *maps[name])
            else:
                own = {
                    key.split(".", 1)[1]: value
                    for key, value in params.items()
                    if key.startswith(name + ".")
                }
                h = functional_call(module, own, (h,))
        return h[0]

    sums = {name: x.new_zeros(shapes[name][0], shapes[name][0]) for name in convs}
    jacobian = vmap(jacrev(tail, argnums=1), in_dims=(0, None))
    zeros = {name: x.new_zeros(shapes[name]) for name in convs}
    for start in range(0, x.shape[0], chunk_size):
        jac = jacobian(x[start : start + chunk_size], zeros)  # name -> (b, c, features, L)
        for name in convs:
            sums[name] += torch.einsum("bcdl,bcel->de", jac[name], jac[name])
        del jac
    return {name: sums[name] / (x.shape[0] * shapes[name][1]) for name in convs}


def transformer_agop_vmap(model: TinyTransformer, x: torch.Tensor, chunk_size: int) -> dict:
    """AGOP of every nn.Linear of the TinyTransformer by vmap(jacrev), chunk by chunk.

    The forward adds a zero ``delta`` to the input of each linear layer; ``jacrev`` gives the
    Jacobians of the logits of one sample with respect to all of them, ``vmap`` runs over the
    samples; each AGOP averages ``J_t^T J_t`` over samples and tokens ``t`` (the head's input
    is one pooled vector per sample).
    """
    from torch.func import functional_call, jacrev, vmap

    params = _detached_parameters(model)
    t, width = x.shape[1], x.shape[2]
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    modules = dict(model.named_modules())
    zeros = {
        name: x.new_zeros(width) if name == "head" else x.new_zeros(t, modules[name].in_features)
        for name in names
    }

    def logits(sample: torch.Tensor, deltas: dict[str, torch.Tensor]) -> torch.Tensor:
        batched = {name: delta[None] for name, delta in deltas.items()}
        return functional_call(model, params, (sample[None], batched))[0]

    jacobian = vmap(jacrev(logits, argnums=1), in_dims=(0, None))
    sums = {name: x.new_zeros(zeros[name].shape[-1], zeros[name].shape[-1]) for name in names}
    for start in range(0, x.shape[0], chunk_size):
        jac = jacobian(x[start : start + chunk_size], zeros)
        for name in names:
            g = jac[name].reshape(-1, zeros[name].shape[-1])  # rows over (b, c, tokens)
            sums[name] += g.T @ g
        del jac
    return {name: sums[name] / (x.shape[0] * (1 if name == "head" else t)) for name in names}


def conv_flops(model: nn.Module, n: int, c: int) -> dict[str, float]:
    """FLOPs of the patch AGOP of every conv layer of a Sequential CNN, as the engine does it.

    Per convolution with ``L`` output positions, ``C_out`` filters and ``d = C_in k_h k_w``:
    forward ``2 n L C_out d`` (linear head ``2 n k d``); the ``c`` VJPs run back to the first
    convolution's output, ``2 n c`` times the forward FLOPs of every layer after it (an input
    gradient costs what the forward product does); the outer products of the output gradients
    ``g_l = df/dy_l`` as symmetric rank-k updates ``n c L C_out (C_out + 1)`` (the engine sums
    ``g^T g`` in the ``C_out`` output space and forms ``W^T (sum g^T g) W`` once per flush,
    ``2 C_out d^2`` per flush, not counted). Pooling and activations are not counted.
    """
    per_sample: list[tuple[str, float, int, int, int]] = []  # (kind, fwd flops, L, C_out, d)
    h = torch.zeros(1, 1, *CONV_CASE["image"])
    with torch.no_grad():
        for module in model.children():
            out = module(h)
            if isinstance(module, nn.Conv2d):
                positions = out.shape[2] * out.shape[3]
                d = module.in_channels * math.prod(module.kernel_size)
                per_sample.append(
                    (
                        "conv",
                        2.0 * positions * module.out_channels * d,
                        positions,
                        module.out_channels,
                        d,
                    )
                )
            elif isinstance(module, nn.Linear):
                per_sample.append(
                    ("linear", 2.0 * module.in_features * module.out_features, 1, 0, 0)
                )
            h = out
    forward = n * sum(f for _, f, *_ in per_sample)
    vjps = n * c * sum(f for _, f, *_ in per_sample[1:])  # back to the first conv's output
    rows = 0.0  # no patch Jacobians are formed
    outer = sum(float(n * c * L * k * (k + 1)) for kind, _, L, k, _ in per_sample if kind == "conv")
    return {
        "forward": forward,
        "vjps": vjps,
        "rows": rows,
        "outer": outer,
        "total": forward + vjps + rows + outer,
    }


def transformer_flops(n: int) -> dict[str, float]:
    """FLOPs of the AGOP of every nn.Linear of the TinyTransformer.

    Per block on ``T`` tokens of width ``d`` with an ``m``-wide MLP: linear products
    ``2 T (4 d^2 + 2 d m)``, attention products (scores and mixing) ``4 T^2 d``; the ``c`` VJPs
    cost the linear products once and the attention products twice (gradients with respect to
    both factors); outer products ``n c T d_in (d_in + 1)`` per linear layer (``n c d (d + 1)``
    for the head on the pooled vector). Norms, softmax and activations are not counted.
    """
    case = TRANSFORMER_CASE
    t, d, m, c = case["tokens"], case["width"], case["mlp"], case["classes"]
    blocks = case["blocks"]
    linear = blocks * 2.0 * t * (4 * d * d + 2 * d * m) + 2.0 * d * c
    attention = blocks * 4.0 * t * t * d
    forward = n * (linear + attention)
    vjps = n * c * (linear + 2 * attention)
    outer = blocks * n * c * t * (5 * d * (d + 1) + m * (m + 1)) + float(n * c * d * (d + 1))
    return {
        "forward": forward,
        "vjps": vjps,
        "rows": 0.0,
        "outer": float(outer),
        "total": forward + vjps + outer,
    }


ARCHITECTURES = {
    "conv": {
        "label": "CNN 28x28: conv5x5(16)-pool-conv3x3(32)-pool-linear(10), patch AGOP",
        "make_model": make_conv_model,
        "make_data": make_image_data,
        "agop_kwargs": {"layers": nn.Conv2d, "include_input": False},
        "reference": conv_patch_agop_vmap,
    },
    "transformer": {
        "label": "transformer 2 blocks, 32 tokens x 64, 4 heads, MLP 256, all nn.Linear",
        "make_model": make_transformer_model,
        "make_data": make_token_data,
        "agop_kwargs": {"layers": nn.Linear, "include_input": False},
        "reference": transformer_agop_vmap,
    },
}


def architecture_flops(case: str, model: nn.Module, n: int) -> dict[str, float]:
    if case == "conv":
        return conv_flops(model, n, CONV_CASE["classes"])
    return transformer_flops(n)


def benchmark_architecture(
    case: str, n: int, chunk_size: int, device: str, repeats: int
) -> dict[str, Any]:
    """nfm's AGOP of one architecture case against its vmap(jacrev) implementation."""
    spec = ARCHITECTURES[case]
    model = spec["make_model"](device)
    x = spec["make_data"](n, device)
    kwargs = spec["agop_kwargs"]
    reference = spec["reference"]
    few = x[: min(16, n)]
    fast = compute_agop(model, few, chunk_size=chunk_size, **kwargs)
    slow = reference(model, few, chunk_size)
    agreement = max(float((fast[k] - slow[k]).norm() / slow[k].norm()) for k in slow)
    agop_s = time_agop(model, x, chunk_size, device, repeats, **kwargs)
    reference(model, x[: min(n, chunk_size)], chunk_size)  # warm-up
    sync(device)
    start = time.perf_counter()
    reference(model, x, chunk_size)
    sync(device)
    vmap_s = time.perf_counter() - start
    flops = architecture_flops(case, model, n)
    return {
        "model": case,
        "widths": spec["label"],
        "samples": n,
        "chunk_size": chunk_size,
        "agop_repeats": repeats,
        "agop_seconds": agop_s,
        "vmap_jacrev_seconds": vmap_s,
        "speedup_over_vmap_jacrev": vmap_s / agop_s,
        "flops_forward": flops["forward"],
        "flops_vjps": flops["vjps"],
        "flops_jacobian_rows": flops["rows"],
        "flops_outer": flops["outer"],
        "flops_needed": flops["total"],
        "achieved_flops_per_s": flops["total"] / agop_s,
        "vmap_jacrev_flops_per_s": flops["total"] / vmap_s,
        "max_rel_diff_vs_vmap_jacrev": agreement,
    }


# ---------------------------------------------------------------------------------------------
# Memory probe (run in a subprocess so that peaks do not mix)
# ---------------------------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_probe(
    case: str, n: int, chunk_size: int, device: str, implementation: str = "nfm"
) -> float:
    """Peak extra memory (MiB) of one AGOP computation, in this process.

    ``case`` is ``"conv"``, ``"transformer"`` or the comma-separated widths of an MLP;
    ``implementation`` is ``"nfm"`` (``compute_agop``) or ``"vmap"`` (the case's
    vmap(jacrev) reference, architecture cases only).
    """
    if case in ARCHITECTURES:
        spec = ARCHITECTURES[case]
        model = spec["make_model"](device)
        x = spec["make_data"](n, device)
        kwargs = spec["agop_kwargs"]
    else:
        widths = tuple(int(w) for w in case.split(","))
        model = make_mlp(widths, device)
        x = make_data(n, widths[0], device)
        kwargs = {}
    if implementation == "vmap":
        reference = ARCHITECTURES[case]["reference"]

        def compute(data: torch.Tensor) -> Any:
            return reference(model, data, chunk_size)
    else:

        def compute(data: torch.Tensor) -> Any:
            return compute_agop(model, data, chunk_size=chunk_size, **kwargs)

    compute(x[:chunk_size])  # allocator and library warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        compute(x)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    with open("/proc/self/clear_refs", "w") as handle:  # reset the peak RSS (VmHWM)
        handle.write("5")
    before = _status_kib("VmRSS")
    compute(x)
    return (_status_kib("VmHWM") - before) / 1024


# glibc's dynamic mmap threshold keeps freed chunk-sized buffers in the heap, so the peak RSS
# of a CPU run grows with heap fragmentation (with the number of chunks), not with live memory.
# A fixed threshold returns freed large blocks to the system, so RSS tracks live allocations.
FIXED_MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def run_memory_probe(
    case: str | tuple[int, ...],
    n: int,
    chunk_size: int,
    device: str,
    env: dict[str, str] | None = None,
    implementation: str = "nfm",
) -> float:
    """:func:`memory_probe` in a fresh subprocess (an MLP case may be given as its widths)."""
    name = case if isinstance(case, str) else ",".join(map(str, case))
    command = [
        sys.executable,
        __file__,
        "--probe",
        name,
        str(n),
        str(chunk_size),
        "--probe-implementation",
        implementation,
        "--device",
        device,
        "--threads",
        str(torch.get_num_threads()),
    ]
    output = subprocess.run(
        command, check=True, capture_output=True, text=True, env={**os.environ, **(env or {})}
    ).stdout
    return float(output.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def machine_info(device: str) -> dict:
    """nfm's shared machine description plus the device this run measured."""
    info = shared_machine_info()
    info["device"] = device
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def benchmark_model(
    name: str,
    widths: tuple[int, ...],
    n: int,
    loop_n: int,
    chunk_size: int,
    device: str,
    repeats: int,
) -> dict[str, float | int | str]:
    model = make_mlp(widths, device)
    x = make_data(n, widths[0], device)
    agreement = check_agreement(model, x[: min(16, n)])
    agop_s = time_agop(model, x, chunk_size, device, repeats)
    loop_s = time_loop(model, x[:loop_n], device) * n / loop_n
    flops = flops_needed(widths, n)
    return {
        "model": name,
        "widths": "-".join(map(str, widths)),
        "samples": n,
        "chunk_size": chunk_size,
        "loop_samples_timed": loop_n,
        "agop_repeats": repeats,
        "agop_seconds": agop_s,
        "loop_seconds": loop_s,
        "speedup_over_loop": loop_s / agop_s,
        "flops_forward": flops["forward"],
        "flops_vjps": flops["vjps"],
        "flops_outer": flops["outer"],
        "flops_needed": flops["total"],
        "achieved_flops_per_s": flops["total"] / agop_s,
        "max_rel_diff_vs_loop": agreement,
    }


def _mlp_lines(payload: dict) -> list[str]:
    rate = payload["matmul_flops_per_s"]
    lines = [
        "## MLPs against a per-sample autograd loop",
        "",
        "AGOP time: best of the repeats; per-sample loop: one run.",
        "",
        "| model | samples | chunk | FLOPs needed | AGOP time (s) | achieved GFLOP/s | "
        "fraction of matmul rate | per-sample loop (s) | speed-up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["models"]:
        loop_note = (
            ""
            if r["loop_samples_timed"] == r["samples"]
            else (f" (timed on {r['loop_samples_timed']}, extrapolated)")
        )
        lines.append(
            f"| {r['widths']} | {r['samples']} | {r['chunk_size']} | {r['flops_needed']:.3g} | "
            f"{r['agop_seconds']:.3f} | {r['achieved_flops_per_s'] / 1e9:.1f} | "
            f"{r['achieved_flops_per_s'] / rate:.3g} | {r['loop_seconds']:.2f}{loop_note} | "
            f"{r['speedup_over_loop']:.1f}x |"
        )
    mem = payload["memory"]
    lines += [
        "",
        f"Peak extra memory of `compute_agop` ({mem['widths']}, chunk {mem['chunk_size']}): "
        f"{mem['peak_mib_small_n']:.1f} MiB at {mem['small_n']} samples, "
        f"{mem['peak_mib_large_n']:.1f} MiB at {mem['large_n']} samples "
        f"(ratio {mem['ratio']:.2f}; {mem['method']})."
        + (
            f" With glibc's default malloc settings: {mem['default_malloc_peak_mib_small_n']:.1f}"
            f" and {mem['default_malloc_peak_mib_large_n']:.1f} MiB (heap fragmentation "
            "included)."
            if "default_malloc_peak_mib_small_n" in mem
            else ""
        ),
        "",
        "Targets: fraction of matmul rate >= 0.5 on 784-1024-1024-10; speed-up >= 20x on "
        "64-128-128-10; memory ratio <= 1.2.",
        "",
        "FLOPs needed = forward 2n sum k_l d_l + c VJPs 2nc sum k_l d_l + symmetric rank-k "
        "updates n c d(d+1) per distinct Jacobian (the model input and the first layer's input "
        "share one).",
        "",
    ]
    return lines


def _architecture_lines(payload: dict) -> list[str]:
    rate = payload["matmul_flops_per_s"]
    lines = [
        "## A CNN and a transformer against vmap(jacrev)",
        "",
        "nfm: `compute_agop` (best of the repeats); vmap(jacrev): `torch.func.vmap` over the "
        "samples of a chunk of `torch.func.jacrev` of the logits with respect to zero deltas on "
        "every layer input (the convolutions rewritten as unfold + matmul, so the deltas sit on "
        "the unfolded patches), then the sum of J^T J; one run, same chunk size.",
        "",
        "| case | samples | chunk | FLOPs needed | nfm (s) | achieved GFLOP/s | "
        "fraction of matmul rate | vmap(jacrev) (s) | vmap fraction | speed-up | max rel. diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["architectures"]:
        lines.append(
            f"| {r['widths']} | {r['samples']} | {r['chunk_size']} | {r['flops_needed']:.3g} | "
            f"{r['agop_seconds']:.3f} | {r['achieved_flops_per_s'] / 1e9:.1f} | "
            f"{r['achieved_flops_per_s'] / rate:.3g} | {r['vmap_jacrev_seconds']:.3f} | "
            f"{r['vmap_jacrev_flops_per_s'] / rate:.3g} | "
            f"{r['speedup_over_vmap_jacrev']:.2f}x | {r['max_rel_diff_vs_vmap_jacrev']:.1e} |"
        )
    method = payload["architecture_memory"][0]["method"] if payload["architecture_memory"] else ""
    lines += ["", f"Peak extra memory ({method}):", ""]
    lines += [
        "| case | chunk | nfm at n | nfm at 10 n | ratio | vmap(jacrev) at n |",
        "|---|---|---|---|---|---|",
    ]
    for m in payload["architecture_memory"]:
        lines.append(
            f"| {m['case']} | {m['chunk_size']} | {m['peak_mib_small_n']:.1f} MiB "
            f"(n={m['small_n']}) | {m['peak_mib_large_n']:.1f} MiB (n={m['large_n']}) | "
            f"{m['ratio']:.2f} | {m['vmap_peak_mib_small_n']:.1f} MiB |"
        )
    lines += [
        "",
        "FLOPs needed. CNN: forward 2 n L C_out d per convolution (L output positions, "
        "d = C_in k_h k_w; linear head 2 n k d), c VJPs back to the first convolution's output "
        "(2 n c times the forward FLOPs of every later layer) and the symmetric rank-k updates "
        "of the output gradients g_l = df/dy_l, n c L C_out(C_out+1) (nfm sums g^T g and forms "
        "W^T (sum g^T g) W once per flush, which is not counted; vmap(jacrev) does more work: "
        "it forms the patch Jacobians g W and their d x d outer products). "
        "Transformer: linear products 2 T (4 d^2 + 2 d m) and attention products 4 T^2 d per "
        "block, c VJPs costing the linear products once and the attention products twice, "
        "rank-k updates n c T d_in(d_in+1) per linear layer (head: n c d(d+1)). Norms, "
        "softmax, activations and pooling are not counted.",
        "",
    ]
    return lines


def write_results(payload: dict, device: str, cases: list[str]) -> tuple[Path, Path]:
    """Write the JSON and the Markdown table; a subset of the cases gets its own file names."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "cuda" if device.startswith("cuda") else "cpu"
    if sorted(cases) != sorted(CASES):
        stem += "_" + "-".join(cases)
    json_path = RESULTS / f"agop_{stem}.json"
    md_path = RESULTS / f"agop_{stem}.md"
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    m = payload["machine"]
    rate = payload["matmul_flops_per_s"]
    lines = [
        f"# AGOP benchmark ({stem})",
        "",
        f"Produced by `{payload['command']}` on {m['date_utc']}.",
        f"Machine: {m['cpu']}, {m['cores']} cores "
        f"({m['torch_threads']} torch threads){', GPU ' + m['gpu'] if 'gpu' in m else ''}; "
        f"torch {m['versions']['torch']}; `{m['uname']}`.",
        "",
        f"float32 matmul rate measured in the same run: {rate / 1e9:.1f} GFLOP/s.",
        "",
    ]
    if "models" in payload:
        lines += _mlp_lines(payload)
    if "architectures" in payload:
        lines += _architecture_lines(payload)
    if payload["note"]:
        lines += [payload["note"], ""]
    md_path.write_text("\n".join(lines))
    return json_path, md_path


CASES = ("mlp", "conv", "transformer")


def run_mlp_cases(args: argparse.Namespace, device: str, chunk: int, repeats: int) -> list[dict]:
    cuda = device.startswith("cuda")
    large_loop = args.large_loop_samples or (4000 if cuda else 400)
    rows = []
    for name, widths, n, loop_n in (
        ("large", LARGE, 4000, min(large_loop, 4000)),
        ("small", SMALL, 2000, 2000),
    ):
        row = benchmark_model(name, widths, n, loop_n, chunk, device, repeats)
        rows.append(row)
        print(
            f"{row['widths']:>16} n={n}: AGOP {row['agop_seconds']:.3f} s, "
            f"{row['flops_needed'] / 1e9:.1f} GFLOP needed, "
            f"{row['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s; per-sample loop "
            f"{row['loop_seconds']:.2f} s -> speed-up {row['speedup_over_loop']:.1f}x "
            f"(max rel. diff vs loop {row['max_rel_diff_vs_loop']:.1e})"
        )
    return rows


def run_mlp_memory(args: argparse.Namespace, device: str, chunk: int) -> dict:
    cuda = device.startswith("cuda")
    memory_model = args.memory_model or ("large" if cuda else "small")
    widths = LARGE if memory_model == "large" else SMALL
    env = None if cuda else FIXED_MMAP_ENV
    small_mem = run_memory_probe(widths, 4000, chunk, device, env)
    large_mem = run_memory_probe(widths, 40000, chunk, device, env)
    memory = {
        "widths": "-".join(map(str, widths)),
        "chunk_size": chunk,
        "small_n": 4000,
        "large_n": 40000,
        "peak_mib_small_n": small_mem,
        "peak_mib_large_n": large_mem,
        "ratio": large_mem / small_mem if small_mem > 0 else float("nan"),
        "method": MEMORY_METHOD_CUDA if cuda else MEMORY_METHOD_CPU,
    }
    if not cuda:  # the same with glibc's default (dynamic) threshold, for the record
        default_small = run_memory_probe(widths, 4000, chunk, device)
        default_large = run_memory_probe(widths, 40000, chunk, device)
        memory["default_malloc_peak_mib_small_n"] = default_small
        memory["default_malloc_peak_mib_large_n"] = default_large
        print(
            f"(default glibc malloc: {default_small:.1f} MiB at 4000, {default_large:.1f} MiB "
            "at 40000: heap fragmentation included)"
        )
    print(
        f"peak extra memory ({memory['widths']}, chunk {chunk}): {small_mem:.1f} MiB at 4000 "
        f"samples, {large_mem:.1f} MiB at 40000 (ratio {memory['ratio']:.2f})"
    )
    return memory


MEMORY_METHOD_CUDA = "torch.cuda.max_memory_allocated above the level before the call"
MEMORY_METHOD_CPU = (
    "peak RSS (VmHWM) above VmRSS before the call, fresh subprocess each, glibc mmap threshold "
    "fixed at 128 KiB so that RSS follows live memory"
)


def run_architecture_memory(case: str, n: int, chunk: int, device: str) -> dict:
    env = None if device.startswith("cuda") else FIXED_MMAP_ENV
    small = run_memory_probe(case, n, chunk, device, env)
    large = run_memory_probe(case, 10 * n, chunk, device, env)
    vmap_small = run_memory_probe(case, n, chunk, device, env, implementation="vmap")
    memory = {
        "case": case,
        "chunk_size": chunk,
        "small_n": n,
        "large_n": 10 * n,
        "peak_mib_small_n": small,
        "peak_mib_large_n": large,
        "ratio": large / small if small > 0 else float("nan"),
        "vmap_peak_mib_small_n": vmap_small,
        "method": MEMORY_METHOD_CUDA if device.startswith("cuda") else MEMORY_METHOD_CPU,
    }
    print(
        f"{case}: peak extra memory (chunk {chunk}) {small:.1f} MiB at {n} samples, "
        f"{large:.1f} MiB at {10 * n} (ratio {memory['ratio']:.2f}); vmap(jacrev) "
        f"{vmap_small:.1f} MiB at {n}"
    )
    return memory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--cases",
        nargs="+",
        choices=CASES,
        default=list(CASES),
        help="which cases to run (default all); a subset writes agop_<device>_<cases>.*",
    )
    parser.add_argument("--chunk-size", type=int, default=None, help="samples per chunk (MLPs)")
    parser.add_argument(
        "--arch-samples",
        type=int,
        default=None,
        help="samples of the CNN and transformer cases (cpu 512, cuda 8192)",
    )
    parser.add_argument(
        "--arch-chunk-size",
        type=int,
        default=None,
        help="samples per chunk of the CNN and transformer cases, for nfm and vmap(jacrev) "
        "alike (cpu 128, cuda 1024)",
    )
    parser.add_argument(
        "--large-loop-samples",
        type=int,
        default=None,
        help="samples the per-sample loop is timed on for the large model",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="AGOP timings, best taken (cpu 2, cuda 5)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice); on a shared, oversubscribed machine "
        "1 thread avoids OpenMP threads waiting for each other",
    )
    parser.add_argument(
        "--memory-model",
        choices=["small", "large"],
        default=None,
        help="model of the MLP memory probe (default: large on cuda, small on cpu)",
    )
    parser.add_argument("--probe", nargs=3, metavar=("CASE", "N", "CHUNK"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--probe-implementation", choices=["nfm", "vmap"], default="nfm", help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)  # a benchmark script, not library code
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    if args.probe:
        print(
            memory_probe(
                args.probe[0],
                int(args.probe[1]),
                int(args.probe[2]),
                device,
                args.probe_implementation,
            )
        )
        return 0

    cuda = device.startswith("cuda")
    cases = [case for case in CASES if case in args.cases]
    chunk = args.chunk_size or (4096 if cuda else 256)
    arch_n = args.arch_samples or (8192 if cuda else 512)
    arch_chunk = args.arch_chunk_size or (1024 if cuda else 128)
    repeats = args.repeats or (5 if cuda else 2)
    rate_before = matmul_rate(device)
    print(f"float32 matmul rate: {rate_before / 1e9:.1f} GFLOP/s")
    rows = run_mlp_cases(args, device, chunk, repeats) if "mlp" in cases else []
    arch_rows = []
    for case in (c for c in cases if c != "mlp"):
        row = benchmark_architecture(case, arch_n, arch_chunk, device, repeats)
        arch_rows.append(row)
        print(
            f"{case} n={arch_n}: nfm {row['agop_seconds']:.3f} s, "
            f"{row['flops_needed'] / 1e9:.1f} GFLOP needed, "
            f"{row['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s; vmap(jacrev) "
            f"{row['vmap_jacrev_seconds']:.3f} s -> speed-up "
            f"{row['speedup_over_vmap_jacrev']:.2f}x (max rel. diff "
            f"{row['max_rel_diff_vs_vmap_jacrev']:.1e})"
        )
    rate_after = matmul_rate(device)
    rate = max(rate_before, rate_after)
    print(f"float32 matmul rate (after): {rate_after / 1e9:.1f} GFLOP/s; using {rate / 1e9:.1f}")
    for row in rows + arch_rows:
        row["fraction_of_matmul_rate"] = row["achieved_flops_per_s"] / rate
        print(f"{row['model']:>12}: {row['fraction_of_matmul_rate']:.3g} of the matmul rate")
    for row in arch_rows:
        row["vmap_jacrev_fraction_of_matmul_rate"] = row["vmap_jacrev_flops_per_s"] / rate

    payload: dict[str, Any] = {
        "command": " ".join(["python benchmarks/bench_agop.py", *sys.argv[1:]]),
        "machine": machine_info(device),
        "matmul_flops_per_s": rate,
        "matmul_flops_per_s_before": rate_before,
        "matmul_flops_per_s_after": rate_after,
        "note": "The CPU machine is shared with other jobs, so timings are noisy."
        if not cuda
        else "",
    }
    if rows:
        payload["models"] = rows
        payload["memory"] = run_mlp_memory(args, device, chunk)
    if arch_rows:
        payload["architectures"] = arch_rows
        payload["architecture_memory"] = [
            run_architecture_memory(row["model"], arch_n, arch_chunk, device) for row in arch_rows
        ]
    json_path, md_path = write_results(payload, device, cases)
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
