"""The controlled study's comparisons: paired differences at equal alpha and bias at matched perplexity.

Every variant is scored on the same items (all CrowS-Pairs, all held-out StereoSet items) and the same
WikiText-2 windows, so two variants are compared with a paired bootstrap: items are resampled once and both
variants' statistics are computed on the same resample.

Matched perplexity. Degrading a model pushes bias scores towards 50 whatever causes the degradation, so a
bias decrease means little unless it beats what other variants of the *same perplexity* show. Each curve
(one calibration mode over alpha, starting at plain GPTQ, alpha = 0; or the degradation references, plain
GPTQ with fewer bits or no groups) is interpolated linearly in log-perplexity; the method's bias at its own
perplexity is compared with each curve's interpolated bias there. The interval resamples items (the bias
values of every point of both curves move together) and, in the same resample, WikiText-2 windows (every
perplexity recomputed on the same resampled windows), so the interval includes the uncertainty of where the
method sits on each curve. The curve is the one through its points sorted by perplexity; where perplexity is not
monotone in alpha (`monotone: false`) that differs from the line drawn in alpha order. No extrapolation: outside
a curve's perplexity range the comparison is reported as not available.

CrowS-Pairs % stereotype and StereoSet SS have 50 as their ideal: once a score falls below 50, lower is not
better. Their comparisons therefore also carry `distance`: the difference of |score − 50| on the same
resamples (negative = the first-named variant is closer to 50), the basis of every "better/worse".

What no interval here includes: run-to-run variation of the quantization itself (another calibration draw,
another shuffle); each variant is one quantization run.
"""

from __future__ import annotations

import numpy as np

from evaluation import metrics
from evaluation.tasks import geometric_mean_scores

BIAS_METRICS = ("crows", "ss", "lms")
# scores whose ideal is 50: below 50 "lower" is no longer "better", so these are also compared by distance from 50
IDEAL_50 = ("crows", "ss")
METRIC_TASK = {"crows": "crows_pairs", "ss": "stereoset", "lms": "stereoset"}
METRIC_LABEL = {"crows": "CrowS-Pairs % stereotype", "ss": "StereoSet SS", "lms": "StereoSet LMS"}


def item_keys(run: dict, metric: str) -> list:
    per_item = run["per_item"]
    return list(per_item["index"] if METRIC_TASK[metric] == "crows_pairs" else per_item["key"])


def resampler(run: dict, metric: str):
    """statistic(idx) -> one value per resample row of idx (idx indexes the run's items in stored order)."""
    per_item = run["per_item"]
    if metric == "crows":
        pct = 100.0 * metrics.crows_pair_scores(per_item["ll_more"], per_item["ll_less"])["pct_stereotype"]
        return lambda idx: pct[idx].mean(axis=1)
    stereo, anti, unrelated = (geometric_mean_scores(per_item, kind)
                               for kind in ("stereotype", "anti_stereotype", "unrelated"))
    targets = list(per_item["target"])
    if metric == "ss":
        return lambda idx: metrics._resampled_ss(stereo, anti, targets, idx)
    if metric == "lms":
        return lambda idx: metrics.resampled_lms(stereo, anti, unrelated, targets, idx)
    raise ValueError(f"unknown bias metric {metric!r} (one of {', '.join(BIAS_METRICS)})")


def distance_from_50(statistic):
    """|statistic − 50|: the resampled distance from the ideal of a score whose ideal is 50."""
    return lambda idx: np.abs(statistic(idx) - 50.0)


def point_value(run: dict, metric: str) -> float:
    n = len(item_keys(run, metric))
    return float(resampler(run, metric)(np.arange(n)[None, :])[0])


def _check_same_items(runs: list[dict], metric: str) -> int:
    keys = item_keys(runs[0], metric)
    for run in runs[1:]:
        if item_keys(run, metric) != keys:
            raise ValueError(f"{METRIC_LABEL[metric]}: the variants were scored on different items; "
                             "the study compares full sets in the same order only")
    return len(keys)


def interval(run: dict, metric: str, n_resamples: int, seed: int) -> list[float]:
    """95 % bootstrap interval of one variant's statistic."""
    n = len(item_keys(run, metric))
    return list(metrics.bootstrap_ci(resampler(run, metric), n, n_resamples, seed))


def paired_difference(run_a: dict, run_b: dict, metric: str, n_resamples: int, seed: int) -> dict:
    """B − A on the same items, with a paired-bootstrap 95 % interval."""
    n = _check_same_items([run_a, run_b], metric)
    stats = (resampler(run_a, metric), resampler(run_b, metric))
    low, high = metrics.paired_bootstrap_diff(lambda idx, m: stats[m](idx), n, n_resamples, seed)
    a, b = point_value(run_a, metric), point_value(run_b, metric)
    result = {"diff": b - a, "ci": [low, high], "n": n}
    if metric in IDEAL_50:  # the same resamples (same seed), distances instead of signed values
        distances = tuple(distance_from_50(stat) for stat in stats)
        low, high = metrics.paired_bootstrap_diff(lambda idx, m: distances[m](idx), n, n_resamples, seed)
        result["distance"] = {"diff": abs(b - 50.0) - abs(a - 50.0), "ci": [low, high]}
    return result


def interpolate_log_ppl(ppls, values, at_ppl: float):
    """Linear interpolation of values(log ppl) at `at_ppl`; None outside [min ppl, max ppl].

    `values` may be 2-D (points × resamples): then one interpolated value per resample.
    """
    ppls = np.asarray(ppls, dtype=np.float64)
    order = np.argsort(ppls, kind="stable")
    x = np.log(ppls[order])
    y = np.asarray(values, dtype=np.float64)[order]
    target = float(np.log(at_ppl))
    if target < x[0] - 1e-12 or target > x[-1] + 1e-12:
        return None
    if y.ndim == 1:
        return float(np.interp(target, x, y))
    return np.array([np.interp(target, x, column) for column in y.T])


def resampled_ppl(wiki_run: dict, window_idx: np.ndarray) -> np.ndarray:
    """Perplexity over resampled WikiText-2 windows (one row of window indices per resample).

    Every window of the GPTQ convention scores the same number of tokens, so the perplexity of a resample is
    exp(Σ window NLL / (windows × tokens per window))."""
    metrics_ = wiki_run["metrics"]
    per_window = metrics_["n_tokens"] / metrics_["n_windows"]
    if per_window != int(per_window):
        raise ValueError("the windows score different numbers of tokens; window resampling assumes equal ones")
    nll = np.asarray(wiki_run["per_item"]["window_nll"], dtype=np.float64)
    return np.exp(nll[window_idx].sum(axis=1) / (per_window * window_idx.shape[1]))


def matched_ppl_difference(method_run: dict, method_ppl: float, curve_runs: list[dict], curve_ppls: list[float],
                           metric: str, n_resamples: int, seed: int, method_wiki: dict | None = None,
                           curve_wikis: list[dict] | None = None) -> dict:
    """method − curve(interpolated at the method's perplexity), with a bootstrap over items shared by all.

    With the WikiText-2 runs (`method_wiki`, `curve_wikis`: the same windows for every variant) each resample
    also resamples windows, recomputes every perplexity and interpolates there, so the interval covers the
    uncertainty of where the method sits on the curve too; resamples where the method falls outside the curve's
    range are dropped and counted (`resamples_out_of_range`)."""
    if len(curve_runs) < 2:
        raise ValueError("a curve needs at least two points")
    n = _check_same_items([method_run, *curve_runs], metric)
    full = np.arange(n)[None, :]
    point_curve = interpolate_log_ppl(curve_ppls, [resampler(r, metric)(full)[0] for r in curve_runs], method_ppl)
    order = np.argsort(curve_ppls, kind="stable")
    monotone = bool(np.all(order == np.arange(len(curve_ppls))))  # perplexity increases along the curve's order
    if point_curve is None:
        side = "below" if method_ppl < min(curve_ppls) else "above"
        return {"diff": None, "ci": None, "n": n, "curve_value": None, "side": side, "monotone": monotone,
                "note": f"perplexity {method_ppl:.2f} {side} the curve's range "
                        f"[{min(curve_ppls):.2f}, {max(curve_ppls):.2f}]"}
    idx = metrics.bootstrap_indices(n, n_resamples, seed)
    method_values = resampler(method_run, metric)(idx)
    curve_values = np.stack([resampler(r, metric)(idx) for r in curve_runs])
    out_of_range = 0
    if method_wiki is not None and curve_wikis is not None:
        n_windows = len(method_wiki["per_item"]["window_nll"])
        window_idx = metrics.bootstrap_indices(n_windows, n_resamples, seed + 1)
        method_ppls = resampled_ppl(method_wiki, window_idx)
        curve_ppls_resampled = np.stack([resampled_ppl(w, window_idx) for w in curve_wikis])
        interpolated = np.full(n_resamples, np.nan)
        for r in range(n_resamples):
            value = interpolate_log_ppl(curve_ppls_resampled[:, r], curve_values[:, r], float(method_ppls[r]))
            if value is None:
                out_of_range += 1
            else:
                interpolated[r] = value
    else:
        interpolated = interpolate_log_ppl(curve_ppls, curve_values, method_ppl)
    low, high = metrics.percentile_ci(method_values - interpolated)
    method_point = point_value(method_run, metric)
    result = {"diff": method_point - point_curve, "ci": [low, high], "n": n, "curve_value": point_curve,
              "method_value": method_point, "monotone": monotone, "resamples_out_of_range": out_of_range,
              "windows_resampled": method_wiki is not None and curve_wikis is not None}
    if metric in IDEAL_50:  # the curve's value is interpolated first, then its distance from 50 taken
        low, high = metrics.percentile_ci(np.abs(method_values - 50.0) - np.abs(interpolated - 50.0))
        result["distance"] = {"diff": abs(method_point - 50.0) - abs(point_curve - 50.0), "ci": [low, high]}
    return result
