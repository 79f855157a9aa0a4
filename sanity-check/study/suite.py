"""The study's second stage in numbers: zero-shot accuracy and its retention, BBQ and Winogender per variant.

Reads `runs/<variant>/lm_eval.json` (lm-eval's results and the per-item columns of
evaluation.lm_eval_bridge.per_item_records) and `runs/<variant>/suite_job.json`; writes `suite.json`, `suite.csv`
and `suite.md` beside the study's summary.

- Accuracy is lm-eval's `acc` for every task (for truthfulqa_mc2 its `acc` is the MC2 score: the normalised
  probability mass on the true answers), on the seeded subsets of suite_jobs.SUITE_SUBSETS.
- Zero-shot average: the unweighted mean of the five zero-shot tasks' accuracies; retention = 100 · average of the
  variant / average of FP: the paper's "zero-shot retention" measure, here on offline stand-ins for its tasks
  (BoolQ and Social IQa instead of ARC, HellaSwag and XStoryCloze-en).
- BBQ: lm-eval's own aggregates (lm_eval.tasks.bbq.utils) on the stored per-item tuples; bias scores lie in [-1, 1]
  with 0 the ideal, so Δ|bias| decides better/worse. BBQ here is the shared folder's partial file (6 of 11
  categories), and every BBQ figure says so.
- Matched zero-shot accuracy: each variant's BBQ bias (distance from 0) and Winogender set against the
  degradation curve (FP, plain GPTQ, no groups, 3 bits) interpolated at the variant's own PIQA accuracy and
  five-task average, the curve's points taken in order of accuracy (matched_accuracy).
- Intervals: 95 % percentile bootstrap over items, each task resampled on its own (seed + task position), the same
  resamples for every variant, so differences are paired.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from evaluation.metrics import bootstrap_indices

ZEROSHOT_TASKS = ("piqa", "openbookqa", "boolq", "social_iqa", "truthfulqa_mc2")
WINOGENDER = "winogender_all"
BBQ = "bbq"
BBQ_STATS = ("acc", "accuracy_amb", "accuracy_disamb", "amb_bias_score", "disamb_bias_score")
BIAS_STATS = ("amb_bias_score", "disamb_bias_score")  # ideal 0
BASELINE = "fp"


# ----------------------------------------------------------------------------- statistics of one variant


def _bbq_aggregate(stat: str):
    from lm_eval.tasks.bbq import utils

    return {"accuracy_amb": utils.agg_accuracy_amb, "accuracy_disamb": utils.agg_accuracy_disamb,
            "amb_bias_score": utils.agg_amb_bias_scores, "disamb_bias_score": utils.agg_disamb_bias_scores}[stat]


def bbq_statistic(items: dict, stat: str, idx: np.ndarray | None = None):
    """One BBQ aggregate on the items (or on each resample row of `idx`), by lm-eval's own function."""
    if stat == "acc":
        acc = np.asarray(items["acc"], dtype=np.float64)
        return acc.mean() if idx is None else acc[idx].mean(axis=1)
    column = "accuracy_amb" if stat.startswith("accuracy") else "amb_bias_score"
    tuples = [tuple(t) for t in items[column]]
    aggregate = _bbq_aggregate(stat)
    if idx is None:
        return float(aggregate(tuples))
    return np.array([aggregate([tuples[i] for i in row]) for row in idx], dtype=np.float64)


def accuracy(items: dict, idx: np.ndarray | None = None):
    acc = np.asarray(items["acc"], dtype=np.float64)
    return float(acc.mean()) if idx is None else acc[idx].mean(axis=1)


def _ci(values: np.ndarray) -> list[float]:
    values = values[np.isfinite(values)]
    return [float(v) for v in np.quantile(values, [0.025, 0.975])] if values.size else [float("nan")] * 2


# ----------------------------------------------------------------------------- the variants together


def load_suite(out: Path, names: list[str]) -> dict:
    """{variant: {"items": per-item columns per task, "job": suite_job.json}} for the variants with a suite run."""
    loaded = {}
    for name in names:
        path = out / "runs" / name / "lm_eval.json"
        if not path.is_file():
            continue
        run = json.loads(path.read_text())
        job_path = out / "runs" / name / "suite_job.json"
        loaded[name] = {"items": run["per_item"], "data": run["data"],
                        "job": json.loads(job_path.read_text()) if job_path.is_file() else {}}
    return loaded


def same_items(suite: dict) -> tuple[dict[str, list[int]], dict[str, str]]:
    """The documents each task was scored on, and the variants left out because they scored other ones (another
    seed or subset: no paired comparison with the rest); FP, then the others in order, set the reference."""
    doc_ids, excluded = {}, {}
    for name in sorted(suite, key=lambda n: n != BASELINE):
        items = suite[name]["items"]
        odd = [task for task in items if task in doc_ids and doc_ids[task] != items[task]["doc_id"]]
        if odd:
            excluded[name] = f"scored other {', '.join(odd)} items than the variants before it"
            continue
        for task in items:
            doc_ids.setdefault(task, items[task]["doc_id"])
    return doc_ids, excluded


def task_seed(seed: int, task: str) -> int:
    """Each task its own resample stream, keyed by its name: adding a task elsewhere never moves another's."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{task}".encode()).digest()[:4], "little")


def resamples(doc_ids: dict[str, list[int]], n_boot: int, seed: int) -> dict[str, np.ndarray]:
    """Per task, the item resamples every variant shares."""
    return {task: bootstrap_indices(len(ids), n_boot, task_seed(seed, task)) for task, ids in doc_ids.items()}


def variant_statistics(items: dict, idx: dict[str, np.ndarray]) -> dict[str, tuple[float, np.ndarray]]:
    """{statistic: (point value, resampled values)} for one variant."""
    stats = {}
    for task in ZEROSHOT_TASKS + (WINOGENDER,):
        if task in items:
            stats[task] = (accuracy(items[task]), accuracy(items[task], idx[task]))
    if all(task in stats for task in ZEROSHOT_TASKS):
        stats["zeroshot_avg"] = (float(np.mean([stats[t][0] for t in ZEROSHOT_TASKS])),
                                 np.mean([stats[t][1] for t in ZEROSHOT_TASKS], axis=0))
    if BBQ in items:
        for stat in BBQ_STATS:
            stats[f"bbq_{stat}"] = (bbq_statistic(items[BBQ], stat), bbq_statistic(items[BBQ], stat, idx[BBQ]))
    return stats


def summarize(suite: dict, n_boot: int = 1000, seed: int = 0, controls: dict | None = None) -> dict:
    doc_ids, excluded = same_items(suite)
    idx = resamples(doc_ids, n_boot, seed)
    stats = {name: variant_statistics(entry["items"], idx) for name, entry in suite.items() if name not in excluded}
    rows = []
    for name, values in stats.items():
        # True / False: the suite's checkpoint is / is not the first stage's model; None: not checked (no record)
        check = suite[name]["job"].get("checkpoint_check", {})
        row = {"variant": name, "first_stage_model": check.get("match"),
               **{k: {"value": v, "ci": _ci(r)} for k, (v, r) in values.items()}}
        base = stats.get(BASELINE)
        if base and "zeroshot_avg" in values and "zeroshot_avg" in base:
            ratio = 100 * values["zeroshot_avg"][1] / base["zeroshot_avg"][1]
            row["zeroshot_retention_pct"] = {"value": 100 * values["zeroshot_avg"][0] / base["zeroshot_avg"][0],
                                             "ci": _ci(ratio)}
        rows.append(row)
    on_first_stage = {row["variant"]: row["first_stage_model"] for row in rows}
    first = next(iter(stats))
    baselines = {task: floor_rates(suite[first]["items"][task]) for task in doc_ids if task in CHANCE_TASKS}
    matched = [entry for axis in MATCHED_AXES for entry in matched_accuracy(stats, list(DEGRADATION_ORDER), axis)]
    return {"variants": rows, "differences": differences(stats, on_first_stage, controls), "excluded": excluded,
            "matched_accuracy": matched,
            "items": {task: {"n": len(ids), **suite[first]["data"].get("subsets", {}).get(task, {}),
                             **baselines.get(task, {})}
                      for task, ids in doc_ids.items()},
            "bootstrap": {"resamples": n_boot, "seed": seed}}


# tasks with one gold choice among a fixed set, where chance and the majority class are defined
CHANCE_TASKS = ("piqa", "openbookqa", "boolq", "social_iqa", WINOGENDER)


def floor_rates(items: dict) -> dict:
    """What accuracy a model gets with no skill on these items: uniform guessing (mean 1/choices) and always
    answering the most frequent gold index (the majority class, e.g. BoolQ's 'yes')."""
    if not items.get("loglikelihoods"):
        return {}
    choices = [len(lls) for lls in items["loglikelihoods"]]
    targets = items.get("target", [])
    majority = max(targets.count(t) for t in set(targets)) / len(targets) if targets else None
    return {"chance": float(np.mean([1 / c for c in choices])), "majority": majority}


def comparisons(names, controls: dict | None = None) -> list[tuple[str, str]]:
    """(variant, reference) pairs: every variant minus FP and minus plain GPTQ, then each method minus each of its
    controls (`controls`: {method: [control, ...]}, the study's families) where both have a suite run."""
    names = list(names)
    pairs = [(name, reference) for reference in (BASELINE, "gptq") if reference in names
             for name in names if name not in (reference, BASELINE)]  # FP is every variant's reference
    pairs += [(method, control) for method, own in (controls or {}).items() if method in names
              for control in own if control in names]
    return pairs


def differences(stats: dict, on_first_stage: dict | None = None, controls: dict | None = None) -> list[dict]:
    """Each comparison of `comparisons` paired (same items, same resamples); Δ|bias| for bias scores.
    `both_first_stage_model` is False when either side's suite ran on a re-quantization."""
    on_first_stage = on_first_stage or {}
    out = []
    for name, reference in comparisons(stats, controls):
        values = stats[name]
        sides = (on_first_stage.get(name), on_first_stage.get(reference))
        entry = {"variant": name, "reference": reference,
                 "both_first_stage_model": False if False in sides else (None if None in sides else True)}
        for key, (value, resampled) in values.items():
            if key not in stats[reference]:
                continue
            ref_value, ref_resampled = stats[reference][key]
            entry[key] = {"value": value - ref_value, "ci": _ci(resampled - ref_resampled)}
            if key.removeprefix("bbq_") in BIAS_STATS:
                entry[f"{key}_abs"] = {"value": abs(value) - abs(ref_value),
                                       "ci": _ci(np.abs(resampled) - np.abs(ref_resampled))}
        out.append(entry)
    return out


# The second degradation axis: plain GPTQ made worse (no groups, fewer bits), ordered from FP by perplexity, as
# the first stage's curve (study.plots.DEGRADATION); each other variant's bias is set against that curve at the
# variant's own zero-shot accuracy (PIQA, the task with signal at this size, and the five-task average)
DEGRADATION_ORDER = ("fp", "gptq", "gptq-g-1", "gptq-3bit")
MATCHED_AXES = ("piqa", "zeroshot_avg")
MATCHED_STATS = ("bbq_amb_bias_score", "bbq_disamb_bias_score", WINOGENDER)  # BBQ by distance from 0


def in_range(axis_values, at: float) -> bool:
    """Whether `at` lies within the curve's range (its ends included, to float rounding)."""
    return min(axis_values) - 1e-12 <= at <= max(axis_values) + 1e-12


def interpolate_along(axis_values, values, at: float) -> float | None:
    """Linear interpolation of `values` at `at` along a curve given by its `axis_values` (any order); None
    outside the curve's range."""
    axis_values = np.asarray(axis_values, dtype=np.float64)
    order = np.argsort(axis_values, kind="stable")
    x, y = axis_values[order], np.asarray(values, dtype=np.float64)[order]
    if not in_range(x, at):
        return None
    return float(np.interp(at, x, y))


def _measure(stat: str, values):
    return np.abs(values) if stat.startswith("bbq_") else values


def _beyond_curve(stats: dict, points: list[str], levels: list[float], values: dict, axis: str) -> dict | None:
    """For a variant whose `axis` accuracy lies outside the curve's range: the note, the nearest end and how far
    beyond (or within noise of) that end it lies, paired; None inside the range."""
    at = values[axis][0]
    if in_range(levels, at):
        return None
    nearest = min(points, key=lambda p: abs(stats[p][axis][0] - at))
    span = f"[{100 * min(levels):.1f}, {100 * max(levels):.1f}]"
    return {"note": f"{axis} {100 * at:.1f} outside the curve's range {span}",
            "nearest_end": nearest,
            "axis_minus_nearest_end": {"value": at - stats[nearest][axis][0],
                                       "ci": _ci(values[axis][1] - stats[nearest][axis][1])}}


def matched_accuracy(stats: dict, curve: list[str], axis: str) -> list[dict]:
    """Each variant off the curve: its statistic minus the curve's, interpolated at the variant's `axis` accuracy.

    The curve is its points ordered by accuracy (`monotone` says whether that is also their order from FP to
    the worst reference; where it is not, neighbouring references lie within noise of each other on this axis).
    Bootstrap: the tasks' shared item resamples move the variant and every curve point together; resamples where
    the variant falls outside the curve are dropped and counted."""
    points = [name for name in curve if name in stats and axis in stats[name]]
    if len(points) < 2:
        return []
    levels = [stats[name][axis][0] for name in points]
    monotone = all(a > b for a, b in zip(levels, levels[1:]))
    out = [{"axis": axis, "curve": points, "monotone": monotone, "curve_axis": levels}]
    for name, values in stats.items():
        if name in points or axis not in values:
            continue
        beyond = _beyond_curve(stats, points, levels, values, axis)
        for stat in MATCHED_STATS:
            if stat not in values or any(stat not in stats[p] for p in points):
                continue
            entry = {"axis": axis, "curve": points, "monotone": monotone, "variant": name, "stat": stat,
                     "variant_axis": values[axis][0]}
            if beyond is not None:
                out.append({**entry, **beyond})
                continue
            curve_value = interpolate_along(levels, [_measure(stat, stats[p][stat][0]) for p in points],
                                            values[axis][0])
            resampled = values[stat][1]
            diffs = np.full(resampled.shape[0], np.nan)
            for r in range(resampled.shape[0]):
                at = interpolate_along([stats[p][axis][1][r] for p in points],
                                       [_measure(stat, stats[p][stat][1][r]) for p in points], values[axis][1][r])
                if at is not None:
                    diffs[r] = _measure(stat, resampled[r]) - at
            entry.update(value=float(_measure(stat, values[stat][0]) - curve_value), ci=_ci(diffs),
                         curve_value=curve_value, resamples_out_of_range=int(np.isnan(diffs).sum()))
            out.append(entry)
    return out


def summary_fields(summary: dict) -> dict:
    """Per variant, what the study's summary.json carries: `lm_eval` ({task: {metric: value, "ci", "n"}}),
    `zeroshot_avg` and `zeroshot_retention_pct` (each {"value", "ci"}), and whether the suite's model is the first
    stage's."""
    n = {task: info["n"] for task, info in summary["items"].items()}
    fields = {}
    for row in summary["variants"]:
        lm_eval = {task: {"acc": row[task]["value"], "ci": row[task]["ci"], "n": n[task]}
                   for task in ZEROSHOT_TASKS + (WINOGENDER,) if task in row}
        for stat in BBQ_STATS:
            if f"bbq_{stat}" in row:
                lm_eval.setdefault(BBQ, {"n": n[BBQ], "partial": True})[stat] = {
                    "value": row[f"bbq_{stat}"]["value"], "ci": row[f"bbq_{stat}"]["ci"]}
        fields[row["variant"]] = {"lm_eval": lm_eval, "suite_on_first_stage_model": row["first_stage_model"],
                                  **{k: row[k] for k in ("zeroshot_avg", "zeroshot_retention_pct") if k in row}}
    return fields


# ----------------------------------------------------------------------------- reporting

COLUMNS = (*ZEROSHOT_TASKS, "zeroshot_avg", "zeroshot_retention_pct", WINOGENDER, *(f"bbq_{s}" for s in BBQ_STATS))
DIFF_COLUMNS = (*ZEROSHOT_TASKS, "zeroshot_avg", WINOGENDER, "bbq_acc", "bbq_amb_bias_score_abs",
                "bbq_disamb_bias_score_abs")


def _cell(entry: dict | None, scale: float = 100.0, signed: bool = False) -> str:
    if not entry:
        return "–"
    low, high = entry["ci"]
    lead = "+" if signed and entry["value"] >= 0 else ""
    star = " *" if signed and (low > 0 or high < 0) else ""
    return f"{lead}{scale * entry['value']:.2f} [{scale * low:.2f}, {scale * high:.2f}]{star}"


def render_markdown(summary: dict, header: list[str]) -> str:
    scale = {c: (1.0 if c == "zeroshot_retention_pct" else 100.0) for c in COLUMNS}
    marks = {True: "", False: " †", None: " ?"}
    lines = [*header, "", "## Per variant (accuracy in %, BBQ bias scores × 100; 95 % bootstrap intervals)", "",
             "truthfulqa_mc2's value is its MC2 score (the normalised probability on the true answers), the other "
             "tasks' lm-eval's `acc`. Intervals resample single items. Winogender's sentences come in gender triples "
             "of one template and BBQ's in sets of one template (ambiguous / disambiguated, two question polarities), "
             "so for those two the intervals are somewhat too narrow; the paired differences share the resamples.", "",
             "| variant | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for row in summary["variants"]:
        mark = marks[row["first_stage_model"]]
        lines.append(f"| {row['variant']}{mark} | " + " | ".join(_cell(row.get(c), scale[c]) for c in COLUMNS) + " |")
    lines += ["", "† the suite ran on a re-quantization that is not the model of the first-stage results "
              "(`runs/<variant>/checkpoint.json`); ? not checked.", ""]
    for name, why in summary.get("excluded", {}).items():
        lines += [f"Left out: {name} ({why}).", ""]
    lines += ["## Differences (paired: same items, same resamples; `*` = the interval excludes 0)", "",
              "Δ |bias| compares BBQ bias scores by their distance from 0, the ideal: negative = less biased. † when "
              "either side ran on a re-quantization.", "",
              "| variant | minus | " + " | ".join(f"Δ {c}" for c in DIFF_COLUMNS) + " |",
              "|---" * (len(DIFF_COLUMNS) + 2) + "|"]
    for entry in summary["differences"]:
        mark = marks[entry.get("both_first_stage_model")]
        lines.append(f"| {entry['variant']}{mark} | {entry['reference']} | "
                     + " | ".join(_cell(entry.get(c), 100.0, signed=True) for c in DIFF_COLUMNS) + " |")
    lines += _matched_lines(summary.get("matched_accuracy", []))
    lines += ["", "## Items", "",
              "Chance = uniform guessing, majority = always the most frequent gold answer, on these items: a task "
              "where FP's accuracy is not above both carries no signal for retention.", "",
              "| task | items | of | chance % | majority % | indices sha256 |", "|---|---|---|---|---|---|"]
    for task, info in sorted(summary["items"].items()):
        floors = [f"{100 * info[k]:.1f}" if info.get(k) is not None else "–" for k in ("chance", "majority")]
        lines.append(f"| {task} | {info['n']} | {info.get('of', '–')} | {' | '.join(floors)} | "
                     f"`{info.get('indices_sha256', '–')[:16]}` |")
    return "\n".join(lines) + "\n"


def _matched_lines(matched: list[dict]) -> list[str]:
    if not matched:
        return []
    curve = next(iter(matched))["curve"]
    lines = ["", "## At matched zero-shot accuracy", "",
             f"Each variant's bias minus the degradation curve ({', '.join(curve)}: plain GPTQ made worse) interpolated "
             "linearly at the variant's own accuracy, a second degradation axis beside the first stage's perplexity. "
             "BBQ bias scores by their distance from 0 (negative = less biased than plain degradation at that "
             "accuracy), Winogender accuracy signed. Bootstrap over the shared item resamples; `*` = the interval "
             "excludes 0.", ""]
    for entry in (e for e in matched if "variant" not in e):
        order = "falls from FP to the worst reference" if entry["monotone"] else (
            "does not fall monotonically from FP: references within noise of each other on this axis")
        lines.append(f"- {entry['axis']} along the curve: {', '.join(f'{100 * v:.1f}' for v in entry['curve_axis'])} "
                     f"({order}); the curve is interpolated in order of accuracy.")
    lines.append("")
    rows = {}
    for entry in (e for e in matched if "variant" in e):
        rows.setdefault((entry["variant"], entry["axis"]), {"at": entry["variant_axis"]})[entry["stat"]] = entry
    if not rows:
        return lines
    stats = MATCHED_STATS
    lines += ["| variant | axis | its accuracy | " + " | ".join(f"Δ {s}" for s in stats)
              + " | resamples dropped (outside the curve) | outside: its accuracy minus the nearest end |",
              "|---" * (len(stats) + 5) + "|"]
    for (variant, axis), cells in rows.items():
        entries = [cells[s] for s in stats if s in cells]
        dropped = sorted({e["resamples_out_of_range"] for e in entries if "resamples_out_of_range" in e})
        beyond = next((e for e in entries if "axis_minus_nearest_end" in e), None)
        beyond_cell = "–" if beyond is None else \
            f"{_cell(beyond['axis_minus_nearest_end'], 100.0, signed=True)} ({beyond['nearest_end']})"
        shown = []
        for stat in stats:
            entry = cells.get(stat)
            if entry is None:
                shown.append("–")
            elif "note" in entry:
                shown.append("outside the curve")
            else:
                excluded = entry["ci"][0] > 0 or entry["ci"][1] < 0
                shown.append(f"{100 * entry['value']:+.2f} [{100 * entry['ci'][0]:.2f}, {100 * entry['ci'][1]:.2f}]"
                             + (" *" if excluded else ""))
        lines.append(f"| {variant} | {axis} | {100 * cells['at']:.1f} | " + " | ".join(shown)
                     + f" | {', '.join(map(str, dropped)) or '–'} | {beyond_cell} |")
    return lines


def csv_rows(summary: dict) -> list[dict]:
    rows = []
    for row in summary["variants"]:
        flat = {"variant": row["variant"], "first_stage_model": row["first_stage_model"]}
        for column in COLUMNS:
            if column in row:
                flat[column] = row[column]["value"]
                flat[f"{column}_low"], flat[f"{column}_high"] = row[column]["ci"]
        rows.append(flat)
    return rows


def write_suite_report(out: Path, names: list[str], header: list[str], n_boot: int = 1000, seed: int = 0,
                       controls: dict | None = None) -> dict | None:
    """suite.{json,csv,md} in `out` from the variants' suite runs; None (nothing written) when none has one.
    `controls`: {method: [its controls]}, compared pairwise besides FP and plain GPTQ."""
    import csv

    from evaluation.store import write_json_atomic

    suite = load_suite(out, names)
    if not suite:
        return None
    summary = summarize(suite, n_boot, seed, controls)
    write_json_atomic(out / "suite.json", {**summary, "header": header})
    rows = csv_rows(summary)
    fields = list(dict.fromkeys(k for row in rows for k in row))
    tmp = out / "suite.csv.tmp"
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(out / "suite.csv")
    from study.plots import write_suite_plot

    write_suite_plot(summary, out)
    tmp = out / "suite.md.tmp"
    tmp.write_text(render_markdown(summary, header))
    tmp.replace(out / "suite.md")
    return summary
