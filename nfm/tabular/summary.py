"""Summaries of a results table: mean scores, ranks, wins, geometric-mean times, RFM vs xrfm.

Definitions (per task, over the datasets where every compared method finished):

- a dataset's score for a method is the mean over the seeds on which *all* methods finished
  (accuracy for classification; RMSE and R^2 for regression);
- **rank** on a dataset: 1 = best score (highest accuracy, lowest RMSE); ties share the average
  rank; **mean rank** averages the ranks over datasets;
- **wins**: datasets where the method's rank is the best rank on that dataset (ties all win);
- **geometric-mean time**: exp(mean(log t)) over the (dataset, seed) rows, t = fit + predict
  seconds of the configuration the tuning kept;
- **time ratio** xrfm / rfm: per (dataset, seed), t_xrfm / t_rfm; reported as its geometric mean.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


def geometric_mean(values: Sequence[float] | np.ndarray) -> float:
    """exp(mean(log v)) over the finite positive values; NaN if there are none."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    return float(np.exp(np.mean(np.log(v)))) if len(v) else float("nan")


def rank_scores(scores: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Ranks of the entries of ``scores`` (1 = best), ties sharing their average rank."""
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=float)
    return rankdata(-s if higher_is_better else s, method="average")


def _primary(task: str) -> tuple[str, bool]:
    return ("accuracy", True) if task == "classification" else ("rmse", False)


def complete_table(results: pd.DataFrame, task: str, methods: Sequence[str]) -> pd.DataFrame:
    """Rows of ``task`` restricted to (dataset, seed) pairs where every method has status ok."""
    ok = results[(results["task"] == task) & (results["status"] == "ok")]
    ok = ok[ok["method"].isin(methods)]
    counts = ok.groupby(["dataset", "seed"])["method"].nunique()
    full = counts[counts == len(methods)].index
    keyed = ok.set_index(["dataset", "seed"])
    return keyed.loc[keyed.index.isin(full)].reset_index()


def dataset_scores(table: pd.DataFrame, task: str) -> pd.DataFrame:
    """Dataset x method matrix of the primary score, averaged over seeds."""
    metric, _ = _primary(task)
    return table.pivot_table(index="dataset", columns="method", values=metric, aggfunc="mean")


def method_summary(results: pd.DataFrame, task: str, methods: Sequence[str]) -> pd.DataFrame:
    """Per-method summary for one task (rows sorted by mean rank).

    Columns: datasets, mean_accuracy (or mean_rmse, mean_r2), mean_rank, wins,
    gmean_time_s, mean_peak_mib.
    """
    import pandas as pd

    table = complete_table(results, task, methods)
    if table.empty:
        return pd.DataFrame(columns=["method", "datasets", "mean_rank", "wins"])
    _metric, higher = _primary(task)
    scores = dataset_scores(table, task)[list(methods)]
    ranks = scores.rank(axis=1, method="average", ascending=not higher)
    per_method = table.groupby("method")
    summary = pd.DataFrame({"datasets": scores.notna().sum()})
    if task == "classification":
        summary["mean_accuracy"] = scores.mean()
    else:
        summary["mean_rmse"] = scores.mean()
        summary["mean_r2"] = (
            table.groupby(["method", "dataset"])["r2"].mean().groupby("method").mean()
        )
    summary["mean_rank"] = ranks.mean()
    summary["wins"] = ranks.eq(ranks.min(axis=1), axis=0).sum()
    summary["gmean_time_s"] = per_method["time_seconds"].agg(geometric_mean)
    summary["mean_peak_mib"] = per_method["peak_mib"].mean()
    summary = summary.reindex(list(methods)).rename_axis("method").reset_index()
    return summary.sort_values("mean_rank", kind="stable").reset_index(drop=True)


def pairwise(results: pd.DataFrame, task: str, first: str, second: str) -> dict[str, float]:
    """Compare ``first`` (e.g. "rfm") with ``second`` (e.g. "xrfm") on their common rows.

    Returns the number of datasets and (dataset, seed) pairs compared, the geometric mean of
    t_second / t_first, the mean score of each, and dataset wins/ties/losses of ``first``
    (scores averaged over seeds; tie = equal to 1e-12).
    """
    table = complete_table(results, task, [first, second])
    metric, higher = _primary(task)
    if table.empty:
        return {"datasets": 0, "pairs": 0}
    wide = table.pivot_table(
        index=["dataset", "seed"], columns="method", values=["time_seconds", metric]
    )
    ratio = wide["time_seconds"][second] / wide["time_seconds"][first]
    per_dataset = table.pivot_table(index="dataset", columns="method", values=metric)
    diff = per_dataset[first] - per_dataset[second]
    if not higher:
        diff = -diff
    extra = {}
    if task == "regression":
        r2_table = table.pivot_table(index="dataset", columns="method", values="r2")
        extra = {
            f"mean_r2_{first}": float(r2_table[first].mean()),
            f"mean_r2_{second}": float(r2_table[second].mean()),
        }
    return {
        "datasets": len(per_dataset),
        "pairs": len(wide),
        "gmean_time_ratio": geometric_mean(ratio.to_numpy()),
        f"mean_{metric}_{first}": float(per_dataset[first].mean()),
        f"mean_{metric}_{second}": float(per_dataset[second].mean()),
        "wins": int((diff > 1e-12).sum()),
        "ties": int((diff.abs() <= 1e-12).sum()),
        "losses": int((diff < -1e-12).sum()),
        **extra,
    }


def time_by_size(
    results: pd.DataFrame, methods: Sequence[str], edges: Sequence[int] = (0, 500, 1300, 10**9)
) -> pd.DataFrame:
    """Geometric-mean fit + predict seconds per method, by training-size bin (n_fit).

    Only (dataset, seed) units where every listed method finished; ``units`` = their number.
    """
    import pandas as pd

    ok = results[(results["status"] == "ok") & results["method"].isin(methods)]
    wide = ok.pivot_table(
        index=["dataset", "seed"], columns="method", values="time_seconds"
    ).dropna()
    n_fit = ok.groupby(["dataset", "seed"])["n_fit"].first().reindex(wide.index)
    labels = [
        f"{low} <= n_fit < {high}" if high < 10**9 else f"n_fit >= {low}"
        for low, high in itertools.pairwise(edges)
    ]
    size_bin = pd.cut(n_fit, bins=list(edges), right=False, labels=labels)
    grouped = wide.groupby(size_bin, observed=False)
    table = grouped.agg(geometric_mean).reindex(index=labels, columns=list(methods))
    table.insert(0, "units", grouped.size().reindex(labels).astype(int))
    return table.rename_axis(index="n_fit", columns=None).reset_index()


def candidate_summary(tuning: pd.DataFrame, method: str = "rfm-defaults-study") -> pd.DataFrame:
    """Compare the configurations of one method on the **validation** parts (tuning.csv rows).

    Per task and configuration: the mean validation score (accuracy; minus the MSE of the
    standardised target for regression) over datasets (seeds averaged), the mean rank of the
    configuration among all configurations (ranked per (dataset, seed), then averaged per
    dataset, then over datasets), and the geometric-mean fit seconds.
    """
    import pandas as pd

    rows = tuning[(tuning["method"] == method) & (tuning["status"] == "ok")]
    frames = []
    for task in ("classification", "regression"):
        part = rows[rows["task"] == task]
        if part.empty:
            continue
        wide = part.pivot_table(
            index=["dataset", "seed"], columns="config_index", values="val_score"
        ).dropna()
        ranks = wide.rank(axis=1, method="average", ascending=False).groupby(level="dataset").mean()
        frame = pd.DataFrame(
            {
                "task": task,
                "config": part.groupby("config_index")["config"].first(),
                "mean_val_score": wide.groupby(level="dataset").mean().mean(),
                "mean_val_rank": ranks.mean(),
                "gmean_fit_s": part.groupby("config_index")["fit_seconds"].apply(geometric_mean),
            }
        )
        frames.append(frame.reset_index())
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def coverage(results: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    """Per dataset: seeds run per method and whether the dataset entered the ranking."""
    table = results[results["method"].isin(methods)]
    ok = table[table["status"] == "ok"]
    counts = ok.pivot_table(index="dataset", columns="method", values="seed", aggfunc="nunique")
    return counts.reindex(columns=list(methods)).fillna(0).astype(int)


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    columns = list(frame.columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in frame.iterrows():
        cells = []
        for c in columns:
            v = row[c]
            if isinstance(v, float | np.floating):
                cells.append("nan" if not np.isfinite(v) else f"{v:.{digits}f}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goal_check(results: pd.DataFrame, methods: Sequence[str], rfm: str = "rfm") -> list[str]:
    """The issue's goals, checked on the results, one Markdown bullet per goal.

    Goals: ``rfm`` has the best mean rank on each task; and it is at least 3x faster than xrfm
    (geometric mean of t_xrfm / t_rfm) at equal or better accuracy (mean accuracy, or mean R^2
    for regression, over the common datasets no worse than xrfm's).
    """
    lines = []
    for task in ("classification", "regression"):
        present = [
            m for m in methods if ((results["task"] == task) & (results["method"] == m)).any()
        ]
        if rfm not in present:
            continue
        table = method_summary(results, task, present).set_index("method")
        best = table["mean_rank"].idxmin()
        reached = best == rfm
        lines.append(
            f"- {task}, best mean rank: {'reached' if reached else 'NOT reached'} "
            f"({rfm} {table.loc[rfm, 'mean_rank']:.2f}; best {best} "
            f"{table.loc[best, 'mean_rank']:.2f})"
        )
        if "xrfm" in present:
            cmp = pairwise(results, task, rfm, "xrfm")
            # accuracy, or R^2 for regression (scale-free across datasets); higher is better
            metric = "accuracy" if task == "classification" else "r2"
            ours, theirs = cmp[f"mean_{metric}_{rfm}"], cmp[f"mean_{metric}_xrfm"]
            as_good = ours >= theirs
            fast = cmp["gmean_time_ratio"] >= 3.0
            lines.append(
                f"- {task}, >= 3x faster than xrfm at equal or better accuracy: "
                f"{'reached' if fast and as_good else 'NOT reached'} (time ratio xrfm/{rfm} "
                f"{cmp['gmean_time_ratio']:.2f}x; mean {metric} {ours:.4f} vs {theirs:.4f})"
            )
    return lines


def summary_markdown(
    results: pd.DataFrame,
    methods: Sequence[str],
    *,
    machine: dict[str, Any] | None = None,
    notes: Sequence[str] = (),
) -> str:
    """The summary as Markdown: per-task tables, RFM vs xrfm, coverage, machine and date."""
    parts = ["# Tabular benchmark summary", ""]
    if machine:
        parts += [
            f"- machine: {machine.get('cpu')} ({machine.get('cores')} cores); "
            f"`{machine.get('uname')}`",
            f"- date: {machine.get('date_utc')}",
            "",
        ]
    parts += list(notes) + ([""] if notes else [])
    goals = goal_check(results, methods)
    if goals:
        parts += ["## Goals", "", *goals, ""]
    for task in ("classification", "regression"):
        present = [
            m for m in methods if ((results["task"] == task) & (results["method"] == m)).any()
        ]
        if not present:
            continue
        table = method_summary(results, task, present)
        n = int(complete_table(results, task, present)["dataset"].nunique())
        parts += [
            f"## {task.capitalize()} ({n} datasets where all {len(present)} methods ran)",
            "",
            markdown_table(table),
            "",
        ]
        for first in ("rfm", "rfm-default", "rfm-recommended"):
            if first in present and "xrfm" in present:
                cmp = pairwise(results, task, first, "xrfm")
                parts.append(
                    f"- {first} vs xrfm: "
                    + ", ".join(
                        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in cmp.items()
                    )
                )
        parts.append("")
    kernel_methods = [
        m for m in ("rfm", "rfm-default", "rfm-recommended", "xrfm") if m in set(results["method"])
    ]
    if kernel_methods:
        parts += [
            "## Time per fit by training size (geometric-mean seconds, both tasks)",
            "",
            markdown_table(time_by_size(results, kernel_methods)),
            "",
        ]
    return "\n".join(parts)


# ------------------------------------------------------------- ranks with uncertainty


def rank_table(
    results: pd.DataFrame,
    task: str,
    methods: Sequence[str],
    *,
    n_boot: int = 10_000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Mean ranks with bootstrap intervals, Friedman test and Nemenyi CD for one task.

    Uses the (dataset, seed) pairs where every method in ``methods`` finished
    (:func:`complete_table`), scores averaged over seeds per dataset, ranks per dataset
    (:func:`nfm.tabular.stats.rank_matrix`). Returns a dict with ``table`` (one row per method,
    sorted by mean rank: mean score, mean rank, its ``rank_low``/``rank_high`` bootstrap bounds,
    wins, geometric-mean total seconds), ``friedman``, ``cd``, ``cliques`` (method names),
    ``n_datasets``, ``seeds`` and ``datasets`` (the names).
    """
    import pandas as pd

    from nfm.tabular import stats

    table = complete_table(results, task, methods)
    if table.empty or len(methods) < 2:
        return {"table": pd.DataFrame(), "n_datasets": 0}
    metric, higher = _primary(task)
    scores = dataset_scores(table, task)[list(methods)]
    ranks = stats.rank_matrix(scores.to_numpy(), higher_is_better=higher)
    intervals = stats.bootstrap_mean_ranks(ranks, n_boot=n_boot, seed=seed, level=1 - alpha)
    best = ranks.min(axis=1, keepdims=True)
    # total = every fit of the selection + refit + predict (refit runs); else fit + predict
    has_total = "total_seconds" in table and table["total_seconds"].notna().all()
    time_column = "total_seconds" if has_total else "time_seconds"
    times = table.groupby("method")[time_column].agg(geometric_mean)
    # regression: mean R^2 only (a mean RMSE over datasets would mix the targets' scales)
    frame = pd.DataFrame(
        {
            "method": list(methods),
            f"mean_{metric}": scores.mean().to_numpy(),
            "mean_rank": [i.mean for i in intervals],
            "rank_low": [i.low for i in intervals],
            "rank_high": [i.high for i in intervals],
            "wins": (ranks == best).sum(axis=0),
            "gmean_total_s" if has_total else "gmean_time_s": times.reindex(
                list(methods)
            ).to_numpy(),
        }
    )
    if task == "regression":
        r2 = table.pivot_table(index="dataset", columns="method", values="r2", aggfunc="mean")
        frame.insert(1, "mean_r2", r2[list(methods)].mean().to_numpy())
        frame = frame.drop(columns=f"mean_{metric}")
    frame = frame.sort_values("mean_rank", kind="stable").reset_index(drop=True)
    n = ranks.shape[0]
    cd = stats.nemenyi_cd(len(methods), n, alpha)
    cliques = stats.cd_cliques([i.mean for i in intervals], cd)
    out: dict[str, Any] = {
        "table": frame,
        "friedman": stats.friedman_test(ranks) if n > 1 else None,
        "cd": cd,
        "cliques": [[methods[i] for i in group] for group in cliques],
        "n_datasets": n,
        "seeds": sorted(int(s) for s in table["seed"].unique()),
        "datasets": list(scores.index),
        "mean_ranks": {m: i.mean for m, i in zip(methods, intervals, strict=True)},
    }
    if "rfm" in methods:
        j = list(methods).index("rfm")
        # the best peer: the best method that is not one of nfm's RFM variants
        peers = [
            (m, i.mean) for m, i in zip(methods, intervals, strict=True) if not m.startswith("rfm")
        ]
        if not peers:
            return out
        rival = min(peers, key=lambda pair: pair[1])[0]
        diff = stats.bootstrap_difference(
            ranks, j, list(methods).index(rival), n_boot=n_boot, seed=seed, level=1 - alpha
        )
        out["rfm_vs_best_other"] = {"other": rival, "diff": diff}
    return out


def rank_section(report: dict[str, Any], title: str) -> str:
    """Markdown for one :func:`rank_table` result: table, Friedman, CD, groups, rfm's margin."""
    if not report.get("n_datasets"):
        return f"### {title}\n\nno dataset where every method finished\n"
    lines = [
        f"### {title}",
        "",
        f"{report['n_datasets']} datasets, seeds {report['seeds']} (scores averaged over the "
        "seeds a dataset finished on every method). Rank interval: 95% percentile bootstrap "
        "over datasets (10,000 resamples, seed 0)."
        + (
            " **Fewer than 5 datasets: the intervals and tests mean little.**"
            if report["n_datasets"] < 5
            else ""
        ),
        "",
        markdown_table(report["table"]),
        "",
    ]
    fr = report.get("friedman")
    if fr is not None:
        lines.append(
            f"- Friedman: chi2 = {fr.chi2:.2f} (p = {fr.p_chi2:.3g}); Iman-Davenport F = "
            f"{fr.f_stat:.2f} (p = {fr.p_f:.3g}); k = {fr.n_methods}, N = {fr.n_datasets}"
        )
    lines.append(
        f"- Nemenyi critical difference (alpha = 0.05): CD = {report['cd']:.2f}; groups whose "
        "mean ranks differ by less than CD: "
        + ("; ".join("{" + ", ".join(g) + "}" for g in report["cliques"]) or "none")
    )
    vs = report.get("rfm_vs_best_other")
    if vs is not None:
        d = vs["diff"]
        verdict = (
            "rfm ranks better (interval below 0)"
            if d.high < 0
            else "rfm ranks worse (interval above 0)"
            if d.low > 0
            else "the interval contains 0: no established difference"
        )
        lines.append(
            f"- rfm minus the best peer ({vs['other']}; best non-nfm method), mean rank "
            "difference: "
            f"{d.mean:+.2f} [{d.low:+.2f}, {d.high:+.2f}]; {verdict}"
        )
    return "\n".join(lines) + "\n"
