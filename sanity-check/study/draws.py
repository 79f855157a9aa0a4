"""Calibration draws: one comparison (the method minus its control at one alpha) repeated over independent draws of
calibration pairs, with an interval that includes the draw.

Every other interval of the study resamples evaluation items (and WikiText-2 windows) for one quantization of
each variant; it says nothing about another draw of the 256 calibration pairs. Here each draw s (the study's
`--seed`, which draws the pairs and any seeded shuffling of them; the calib/eval split and the evaluation items
are fixed) gives a difference d_s = method_s − control_s on the same items. Their mean over k draws has two
sources of error:

- the evaluation items, shared by every draw: bootstrap the items once per resample, recompute every d_s on that
  resample and take the variance of the mean over draws (var_items);
- the draws themselves: the sample variance of the d_s over draws divided by k (var_draws). The item noise that
  every draw shares moves all d_s alike and cancels from it; the item × draw part (items that flip in one draw
  and not another) stays in it and is in var_items too, so it is counted twice: conservative where it matters.

The interval is mean ± t · sqrt(var_items + var_draws), with Welch–Satterthwaite degrees of freedom
(var_items + var_draws)² (k − 1) / var_draws², i.e. var_items treated as known (thousands of items) and var_draws
estimated from k − 1 degrees of freedom. The coverage is approximate: with three draws t is large (4.3 at 2 df
when draws dominate, 12.7 at 1 df with two draws), and a simulation with k = 3 put it at 95 % when either source
dominates, 96–99 % with a large item × draw part, and about 92 % in the least favourable mix (no item × draw
part, items 5–20 % of the variance), where a small sample variance inflates the estimated df.

Distances from 50 (CrowS-Pairs, SS) are pooled per draw as |method_s − 50| − |control_s − 50|: the expected
distance of one quantization run. |x − 50| is biased away from 0 near 50, which works against whichever variant
is nearer 50 (conservative for "the method is closer").
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from evaluation import metrics
from study import analysis

# the pooled metrics: bias scores signed and by distance from 50, LMS, and the log perplexity ratio
DRAW_METRICS = ("crows", "crows_distance", "ss", "ss_distance", "lms", "log_ppl")


def combine_draws(full: np.ndarray, resampled: np.ndarray, level: float = 0.95) -> dict:
    """Mean over draws of per-draw differences, with its interval (module docstring).

    full: (k,) the differences on the full item set; resampled: (k, B) the same on B shared item resamples."""
    full = np.asarray(full, dtype=np.float64)
    resampled = np.asarray(resampled, dtype=np.float64)
    k = full.shape[0]
    if resampled.ndim != 2 or resampled.shape[0] != k:
        raise ValueError(f"resampled must be (draws, resamples) with {k} draws, got shape {resampled.shape}")
    if k < 1 or resampled.shape[1] < 2:
        raise ValueError(f"need at least one draw and two resamples (got {k} draws, {resampled.shape[1]} resamples)")
    mean = float(full.mean())
    var_items = float(np.var(resampled.mean(axis=0), ddof=1))
    var_draws = float(np.var(full, ddof=1)) / k if k > 1 else 0.0
    total = var_items + var_draws
    if k > 1 and var_draws > 0:
        df = total ** 2 * (k - 1) / var_draws ** 2
    else:
        df = np.inf  # one draw (or identical draws): the item interval only
    half = float(stats.t.ppf(0.5 + level / 2, df)) * total ** 0.5
    return {"diff": mean, "ci": [mean - half, mean + half], "k": k, "per_draw": [float(v) for v in full],
            "sd_between_draws": float(np.std(full, ddof=1)) if k > 1 else None,
            "se_items": var_items ** 0.5, "se_draws": var_draws ** 0.5, "df": float(df)}


def _statistic(runs: dict, metric: str):
    """idx -> values for one variant ({task: stored run}): the bias metric, its distance from 50, or the log
    perplexity over resampled windows."""
    if metric == "log_ppl":
        return lambda idx: np.log(analysis.resampled_ppl(runs["wikitext2"], idx))
    base = metric.removesuffix("_distance")
    statistic = analysis.resampler(runs[analysis.METRIC_TASK[base]], base)
    return analysis.distance_from_50(statistic) if metric.endswith("_distance") else statistic


def _n_items(pairs: list[tuple[dict, dict]], metric: str) -> int:
    """How many items (windows for log_ppl) every run of every draw shares; refused when they differ."""
    runs = [run for pair in pairs for run in pair]
    if metric == "log_ppl":
        sizes = {len(run["wikitext2"]["per_item"]["window_nll"]) for run in runs}
        if len(sizes) != 1:
            raise ValueError("the draws' perplexities were measured on different windows")
        return sizes.pop()
    base = metric.removesuffix("_distance")
    return analysis._check_same_items([run[analysis.METRIC_TASK[base]] for run in runs], base)


def draw_differences(pairs: list[tuple[dict, dict]], metric: str, n_resamples: int, seed: int):
    """(full (k,), resampled (k, B)): method − control per draw, every draw on the same item resamples.

    pairs: one (method runs, control runs) per draw, each {task: stored run}."""
    if not pairs:
        raise ValueError("no draw to compare")
    n = _n_items(pairs, metric)
    idx = metrics.bootstrap_indices(n, n_resamples, seed)
    full_idx = np.arange(n)[None, :]
    full, resampled = [], []
    for method, control in pairs:
        method_stat, control_stat = _statistic(method, metric), _statistic(control, metric)
        full.append(method_stat(full_idx)[0] - control_stat(full_idx)[0])
        resampled.append(method_stat(idx) - control_stat(idx))
    return np.array(full), np.stack(resampled)


def compare_over_draws(pairs: list[tuple[dict, dict]], n_resamples: int = 1000, seed: int = 0) -> dict:
    """{metric: combine_draws(...)} for every metric of DRAW_METRICS; perplexity as a ratio (method / control)."""
    out = {}
    for metric in DRAW_METRICS:
        full, resampled = draw_differences(pairs, metric, n_resamples, seed)
        combined = combine_draws(full, resampled)
        if metric == "log_ppl":  # report the ratio: exp of the mean log ratio and of its interval's ends
            out["ppl_ratio"] = {"ratio": float(np.exp(combined["diff"])),
                                "ci": [float(np.exp(v)) for v in combined["ci"]],
                                "per_draw": [float(np.exp(v)) for v in combined["per_draw"]],
                                "log_scale": combined, "k": combined["k"], "df": combined["df"]}
        else:
            out[metric] = combined
    return out


def per_draw_rows(pairs: list[tuple[dict, dict]], seeds: list[int], n_resamples: int = 1000, seed: int = 0) -> list:
    """One row per draw: each variant's scores and the paired difference with its item-only interval."""
    rows = []
    for draw_seed, (method, control) in zip(seeds, pairs):
        row = {"seed": draw_seed}
        for metric in ("crows", "ss", "lms"):
            task = analysis.METRIC_TASK[metric]
            row[f"method_{metric}"] = analysis.point_value(method[task], metric)
            row[f"control_{metric}"] = analysis.point_value(control[task], metric)
            row[f"diff_{metric}"] = analysis.paired_difference(control[task], method[task], metric, n_resamples, seed)
        row["method_ppl"] = method["wikitext2"]["metrics"]["ppl"]
        row["control_ppl"] = control["wikitext2"]["metrics"]["ppl"]
        rows.append(row)
    return rows
