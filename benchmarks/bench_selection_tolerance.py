"""How loose may the conjugate-gradient tolerance of the RFM selection iterations be?

The holdout iterations of ``RFMClassifier`` / ``RFMRegressor`` solve
``(K + reg I) A = Y`` for the whole ridge grid only to score the grid on the validation rows
and to compute the AGOP, so they stop at ``SELECTION_CG_TOL`` (relative residual). This
script measures, for several tolerances, on the training-part Gram matrices of the synthetic
task of ``bench_rfm_xrfm.py`` (n rows, 80% training part, Laplace kernel, bandwidth 10,
float32; once in the identity metric and once in the metric of a 2-iteration RFM fit):

* the products with ``K`` and the wall time of the grid solve;
* how far the validation predictions ``K_val A`` move from an exact float64 solve
  (``||P_cg - P_exact|| / ||P_exact||`` per ridge);
* the validation mean squared error per ridge, and the regret of the ridge the holdout rule
  would pick from these solutions (lowest validation MSE): its exact-solve validation MSE minus
  the lowest exact-solve one (0 when the pick is the exact solve's, or tied with it).

Usage::

    python benchmarks/bench_selection_tolerance.py            # n = 8000
    python benchmarks/bench_selection_tolerance.py --n 4000 --tols 1e-3 1e-2

Writes ``benchmarks/results/selection_tolerance.md``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from bench_rfm_xrfm import synthetic

from nfm._utils.env import machine_info
from nfm.kernels import make_kernel
from nfm.rfm import RFMClassifier
from nfm.solvers import conjugate_gradient_solve_regs

RESULTS = Path(__file__).resolve().parent / "results"
REGS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8000)
    parser.add_argument("--tols", type=float, nargs="+", default=[1e-3, 1e-2, 3e-2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "selection_tolerance.md")
    args = parser.parse_args(argv)

    X, y, _, _ = synthetic(args.n, 10, 20, args.seed)
    X = (X - X.mean(0)) / X.std(0)
    n_train = int(0.8 * args.n)
    learned = RFMClassifier(random_state=args.seed, n_iter=2).fit(X[:2000], y[:2000])
    X_train = torch.tensor(X[:n_train], dtype=torch.float32)
    X_val = torch.tensor(X[n_train:], dtype=torch.float32)
    Y = torch.nn.functional.one_hot(torch.tensor(y[:n_train])).float()
    Y_val = torch.nn.functional.one_hot(torch.tensor(y[n_train:])).double()
    kernel = make_kernel("laplace", 10.0)
    metrics = {
        "identity": torch.eye(X.shape[1]),
        "learned (2 RFM iterations)": torch.as_tensor(learned.M_, dtype=torch.float32),
    }

    def scores(P: torch.Tensor) -> tuple[float, float]:
        mse = float(((P - Y_val) ** 2).mean())
        accuracy = float((P.argmax(1) == Y_val.argmax(1)).double().mean())
        return mse, accuracy

    info = machine_info()
    lines = [
        "# Conjugate-gradient tolerance of the RFM selection iterations",
        "",
        f"- date: {info['date_utc']}; machine: {info.get('cpu', '')}, "
        f"{info.get('cores', '')} cores",
        f"- command: `python benchmarks/bench_selection_tolerance.py --n {args.n} --tols "
        f"{' '.join(f'{t:g}' for t in args.tols)} --seed {args.seed}`",
        f"- synthetic task of bench_rfm_xrfm.py, {n_train} training rows, "
        f"{args.n - n_train} validation rows, Laplace bandwidth 10, float32 Gram matrix, "
        f"ridge grid {REGS}",
        "- `pred err`: max over ridges of ||P_cg - P_exact|| / ||P_exact|| on the validation "
        "rows; `max abs dMSE`: max over ridges of the change in validation MSE; `regret`: "
        "exact validation MSE of the ridge picked from these solutions minus the best exact one",
        "",
        "| metric | tol | products | seconds | pred err | max abs dMSE | val MSE per ridge "
        "| regret |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, M in metrics.items():
        K = kernel.gram(X_train, X_train, M)
        K_val = kernel.gram(X_val, X_train, M).double()
        K64 = K.double()
        eye = torch.eye(n_train, dtype=torch.float64)
        exact = [K_val @ torch.linalg.solve(K64 + reg * eye, Y.double()) for reg in REGS]
        exact_mse = [scores(P)[0] for P in exact]
        lines.append(
            f"| {label} | exact (float64) | | | | | {', '.join(f'{m:.5f}' for m in exact_mse)} | |"
        )
        for tol in args.tols:
            generator = torch.Generator().manual_seed(args.seed)
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                results = conjugate_gradient_solve_regs(
                    K, Y, list(REGS), tol=tol, generator=generator
                )
            seconds = time.perf_counter() - start
            preds = [K_val @ r.coef.double() for r in results]
            err = max(float((P - E).norm() / E.norm()) for P, E in zip(preds, exact, strict=True))
            mse = [scores(P)[0] for P in preds]
            dmse = max(abs(a - b) for a, b in zip(mse, exact_mse, strict=True))
            lines.append(
                f"| {label} | {tol:g} | {results[0].n_products} | {seconds:.2f} | {err:.4f} | "
                f"{dmse:.1e} | {', '.join(f'{m:.5f}' for m in mse)} | "
                f"{exact_mse[int(np.argmin(mse))] - min(exact_mse):.1e} |"
            )
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
