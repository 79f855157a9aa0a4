"""Collect the study's stored jobs into summary.json / summary.csv / summary.md and the plots.

Reads `<out>/runs/<variant>/` (see sanity-check/study_jobs.py); computes nothing from models, so it runs on a
fresh clone from the committed files alone. Variants whose job is not finished are listed as missing.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from evaluation.crows_version import csv_version
from evaluation.store import load_runs, write_json_atomic
from study import analysis, mechanism
from study.plots import DEGRADATION, write_plots

METHOD = "stereo-anti"
CONTROLS = ("shuffled", "unrelated", "stereo-anti-eq")
# each method mode and its controls (the same term without the stereotype direction, or with a random one)
FAMILIES = {METHOD: CONTROLS,
            "direction": ("direction-random", "direction-sign-shuffled", "direction-unrelated")}
# further curves a method is compared with at matched perplexity: the direction term against the paper's term on
# unrelated pairs as well, the cheapest way the study found to move bias scores
MATCHED_EXTRA = {"direction": ("unrelated",)}
ALL_CONTROLS = tuple(c for controls in FAMILIES.values() for c in controls)
# the debiasing baselines (kind "eraser"): each against its controls on the same base model and against that base;
# no alpha, so at matched perplexity they are set against the degradation curve and the paper's term's curves
ERASER_FAMILIES = {m: (f"{m}-unrelated", f"{m}-shuffled-labels") for m in ("inlp", "leace")}
ERASER_MATCHED = ("stereo-anti", "unrelated")


def mean_direction_fields(record: dict | None) -> dict:
    """The variant row's mean-direction fields from a job's stored record (None where the job predates it)."""
    if not record:
        return {"mechanism_mean_direction": None, "mechanism_mean_direction_ci": None,
                "mechanism_mean_direction_plugin": None}
    reported = mechanism.mean_direction_summary(record)
    return {"mechanism_mean_direction": reported["ratio"], "mechanism_mean_direction_ci": reported["ci"],
            "mechanism_mean_direction_plugin": reported["plugin"]}


def controls_of(method, variants) -> list:
    """A method's controls among `variants`: the same term without the stereotype direction at the same alpha;
    for an eraser, the same eraser fitted on other labels, on the same base model. [] for a control itself."""
    if method.kind == "eraser" and method.mode in ERASER_FAMILIES:
        return [c for c in variants if c.kind == "eraser" and c.base == method.base
                and c.mode in ERASER_FAMILIES[method.mode]]
    if method.mode in FAMILIES:
        return [c for c in variants if c.mode in FAMILIES[method.mode] and c.alpha == method.alpha]
    return []


def _partners(method, state: dict) -> list:
    """What a method is compared with on the same items: its controls (same alpha; for an eraser, the same base
    model) and the model it started from (plain GPTQ; for an eraser, its base: FP or GPTQ)."""
    by_name = _by_name(state)
    start = method.base if method.kind == "eraser" else "gptq"
    return controls_of(method, state["variants"]) + ([by_name[start]] if start in by_name else [])


def _read(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def load_study(out: Path, variants, keys: dict | None = None) -> dict:
    """{"variants": [Variant...], "runs": {name: {task: run}}, "extra": {name: {job, mechanism, quantization}}}.

    `keys` (variant -> job key of the current settings): a stored job with another key is stale, reported as
    such and left out, so that runs of other settings never share a table or a perplexity axis."""
    loaded = load_runs(out)
    done, missing, stale, extra = [], [], [], {}
    for variant in variants:
        run_dir = out / "runs" / variant.name
        job = _read(run_dir / "job.json")
        if job is None:
            missing.append(variant.name)
            continue
        if keys is not None and job.get("key") != keys.get(variant.name):
            stale.append(variant.name)
            continue
        done.append(variant)
        extra[variant.name] = {"job": job, "mechanism": _read(run_dir / "mechanism.json"),
                               "quantization": _read(run_dir / "quantization.json"),
                               "eraser": _read(run_dir / "eraser.json")}
    windows = {(loaded["runs"][v.name]["wikitext2"]["metrics"].get("n_windows"),
                loaded["runs"][v.name]["wikitext2"]["metrics"].get("n_tokens")) for v in done}
    if len(windows) > 1:
        raise ValueError(f"the variants' perplexities were measured on different windows/tokens {sorted(windows)}; "
                         "they cannot share one perplexity axis (rerun the odd ones with the study's settings)")
    return {"variants": done, "missing": missing, "stale": stale, "runs": loaded["runs"], "extra": extra}


def variant_row(variant, runs: dict, extra: dict, n_boot: int, seed: int) -> dict:
    crows, stereo, wiki = runs["crows_pairs"], runs["stereoset"], runs["wikitext2"]
    calibration = (extra.get("quantization") or {}).get("calibration", {})
    split = calibration.get("split") or stereo.get("data", {})
    mech = extra.get("mechanism") or {}
    quantized = variant.kind in ("reference", "curve") or variant.kind == "eraser" and variant.base != "fp"
    paired = variant.kind == "curve"
    row = {
        "name": variant.name, "kind": variant.kind, "mode": variant.mode,
        # the pair term's target as the quantization recorded it (jobs from before the field: the paper's "pairs")
        "fair_target": ((extra.get("quantization") or {}).get("arguments", {}).get("fair_target", "pairs")
                        if paired else None),
        "pair_alignment": variant.pair_alignment if paired else None,  # no pair term: no alignment
        "alpha": variant.alpha if quantized else None, "bits": variant.bits if quantized else None,
        "group_size": variant.group_size if quantized else None,
        "n_pairs": calibration.get("n_pairs"), "pairs_sha256": calibration.get("sha256"),
        "split_version": split.get("split_version", 1),
        "crows_n": len(analysis.item_keys(crows, "crows")),
        # named by version (from the checksum) and sha256, never by the path of the machine that ran the job
        "crows_data": crows.get("data", {}).get("version") or csv_version(crows.get("data", {}).get("sha256")),
        "crows_sha256": crows.get("data", {}).get("sha256"),
        "crows_pct_stereotype": analysis.point_value(crows, "crows"),
        "crows_ci": analysis.interval(crows, "crows", n_boot, seed),
        "stereoset_n": len(analysis.item_keys(stereo, "ss")),
        "stereoset_ss": analysis.point_value(stereo, "ss"), "stereoset_ss_ci": analysis.interval(stereo, "ss", n_boot, seed),
        "stereoset_lms": analysis.point_value(stereo, "lms"),
        "stereoset_lms_ci": analysis.interval(stereo, "lms", n_boot, seed),
        "ppl": wiki["metrics"]["ppl"], "ppl_tokens": wiki["metrics"].get("n_tokens"),
        "ppl_windows": wiki["metrics"].get("n_windows"),
        "mechanism_ratio": mech.get("overall", {}).get("ratio_all"),
        "mechanism_ratio_equal_length": mech.get("overall", {}).get("ratio_equal"),
        # ‖Q μ‖ / ‖W μ‖ along the held-out mean difference, bias-corrected (jobs from before it was measured: None)
        **mean_direction_fields(mech.get("mean_direction")),
    }
    if variant.kind == "eraser":  # which eraser on which model, fitted on which sentences, and what it removed
        fitted = extra.get("eraser") or {}
        diagnostics = fitted.get("diagnostics", {})
        row.update(eraser=variant.eraser, eraser_labels=variant.eraser_labels, base=variant.base,
                   n_pairs=fitted.get("fitting", {}).get("pairs", {}).get("n_pairs"),
                   pairs_sha256=fitted.get("fitting", {}).get("sentences_sha256"),
                   eraser_sha256=fitted.get("sha256"), eraser_rank_removed=fitted.get("method", {}).get("rank_removed"),
                   eraser_probe_heldout=diagnostics.get("heldout"),
                   # False: the gptq base was re-quantized and is not the model of runs/gptq/ (None: fp base)
                   base_is_first_stage_model=(extra.get("job") or {}).get("base_check", {}).get("match"))
    return row


def _by_name(state: dict) -> dict:
    return {v.name: v for v in state["variants"]}


def curve(state: dict, mode: str) -> list[str]:
    """Plain GPTQ (alpha 0) followed by the mode's variants in increasing alpha."""
    members = sorted((v for v in state["variants"] if v.mode == mode), key=lambda v: v.alpha)
    names = [v.name for v in members]
    return (["gptq"] + names) if "gptq" in _by_name(state) and names else names


def comparisons(state: dict, rows: dict, n_boot: int, seed: int) -> list[dict]:
    """Each method minus each of its controls at the same alpha (and minus plain GPTQ), on the same items."""
    out = []
    for method in (v for v in state["variants"] if v.mode in FAMILIES or v.mode in ERASER_FAMILIES):
        for control in _partners(method, state):
            entry = {"alpha": method.alpha, "method": method.name, "mode": method.mode, "control": control.name,
                     "ppl_ratio": rows[method.name]["ppl"] / rows[control.name]["ppl"]}
            for metric in analysis.BIAS_METRICS:
                task = analysis.METRIC_TASK[metric]
                entry[metric] = analysis.paired_difference(state["runs"][control.name][task],
                                                        state["runs"][method.name][task], metric, n_boot, seed)
            stored = [state["extra"][n].get("mechanism") or {} for n in (control.name, method.name)]
            mechs = [m.get("per_pair") for m in stored]
            same_pairs = stored[0].get("pairs_sha256") == stored[1].get("pairs_sha256")
            if all(mechs) and same_pairs:
                entry["mechanism_ratio"] = mechanism.paired_ratio_difference(
                    mechs[0]["w"], mechs[0]["q"], mechs[1]["q"], n_boot, seed)
                means = [m.get("mean_direction") for m in stored]
                if all(means):
                    entry["mechanism_mean_direction"] = mechanism.paired_mean_direction_difference(*means)
            on_same_base = same_base(state["extra"][control.name], state["extra"][method.name])
            if on_same_base is not None:
                entry["same_base"] = on_same_base
            out.append(entry)
    return out


OTHER_BASE_NOTE = ("‡ the control ran on another quantization of the gptq base than the method (the sha256 of each "
                   "job's base is in `runs/<variant>/job.json`): their difference includes a re-quantization.")


def same_base(control_extra: dict, method_extra: dict) -> bool | None:
    """Were two erasers on a gptq base evaluated on the very same base weights? A base quantized again on
    another machine gives other weights, and a method-minus-control difference across two bases includes that
    re-quantization. None when either job records no base checkpoint (fp base, or not an eraser)."""
    digests = [(extra.get("job") or {}).get("base_checkpoint_sha256") for extra in (control_extra, method_extra)]
    return None if None in digests else digests[0] == digests[1]


def matched(state: dict, rows: dict, n_boot: int, seed: int) -> list[dict]:
    """The method's bias minus each curve's bias interpolated (log-perplexity) at the method's perplexity."""
    by_name = _by_name(state)
    degradation = [n for n in DEGRADATION if n in by_name]
    out = []
    # each method against its controls' curves and the degradation curve; each control against the degradation
    # curve too, so "below pure degradation" can be told apart for a method and for the same term on other pairs
    erasers = [v for v in state["variants"] if v.kind == "eraser"]
    for method in [v for v in state["variants"] if v.mode in FAMILIES or v.mode in ALL_CONTROLS] + erasers:
        if method.kind == "eraser":
            modes = ERASER_MATCHED
        else:
            modes = FAMILIES[method.mode] + MATCHED_EXTRA.get(method.mode, ()) if method.mode in FAMILIES else ()
        curves = {**{mode: curve(state, mode) for mode in modes}, "degradation": degradation}
        for label, names in curves.items():
            if len(names) < 2:
                continue
            entry = {"alpha": method.alpha, "method": method.name, "mode": method.mode, "curve": label,
                     "curve_variants": names, "method_ppl": rows[method.name]["ppl"]}
            for metric in analysis.BIAS_METRICS:
                task = analysis.METRIC_TASK[metric]
                entry[metric] = analysis.matched_ppl_difference(
                    state["runs"][method.name][task], rows[method.name]["ppl"],
                    [state["runs"][n][task] for n in names], [rows[n]["ppl"] for n in names], metric, n_boot, seed,
                    method_wiki=state["runs"][method.name]["wikitext2"],
                    curve_wikis=[state["runs"][n]["wikitext2"] for n in names])
            out.append(entry)
    return out


BASES = ("fp", "gptq")  # what a method starts from: compared with, but not a control


def verdict(comps: list[dict]) -> dict:
    """Does a method beat its controls? Against every control (not its base) it must be closer to 50 on CrowS or
    SS by a 95 % interval that excludes 0 (`wins`), and farther on neither (`losses`)."""
    controls = sorted({c["control"] for c in comps if c["control"] not in BASES})
    wins, losses = [], []
    for c in comps:
        if c["control"] in BASES:
            continue
        for metric in analysis.IDEAL_50:
            distance = c[metric].get("distance") or {}
            low, high = distance.get("ci") or (None, None)
            if high is not None and high < 0:
                wins.append((c["control"], metric))
            if low is not None and low > 0:
                losses.append((c["control"], metric))
    beats = bool(controls) and not losses and all(any(w[0] == control for w in wins) for control in controls)
    other_base = sorted({c["control"] for c in comps if c.get("same_base") is False and c["control"] not in BASES})
    return {"controls": controls, "beats_controls": beats, "closer_to_50_than": wins, "farther_from_50_than": losses,
            "controls_on_another_base": other_base}


def methods_at_a_glance(summary: dict) -> list[dict]:
    """One row per method (every variant compared with controls) and per base (FP, plain GPTQ): its bias scores and
    their distance from 50, LMS, perplexity, zero-shot average where the suite ran, and the verdict."""
    by_method: dict[str, list] = {}
    for c in summary["comparisons"]:
        by_method.setdefault(c["method"], []).append(c)
    rows = []
    for r in summary["variants"]:
        if r["name"] not in BASES and r["name"] not in by_method:
            continue
        crows, ss = r["crows_pct_stereotype"], r["stereoset_ss"]
        row = {"name": r["name"], "crows": crows, "crows_distance": abs(crows - 50), "ss": ss,
               "ss_distance": abs(ss - 50), "lms": r["stereoset_lms"], "ppl": r["ppl"],
               "zeroshot_avg": (r.get("zeroshot_avg") or {}).get("value")}
        if r["name"] in by_method:
            row.update(verdict(by_method[r["name"]]))
        rows.append(row)
    return rows


def _verdict_cell(row: dict) -> str:
    if "controls" not in row:
        return "(base)"
    if not row["controls"]:
        return "no control run"
    def pairs(items):
        return ", ".join(f"{control} ({'CrowS' if metric == 'crows' else 'SS'})" for control, metric in items)
    text = "yes" if row["beats_controls"] else "no"
    details = [f"closer to 50 than {pairs(row['closer_to_50_than'])}"] if row["closer_to_50_than"] else []
    details += [f"farther from 50 than {pairs(row['farther_from_50_than'])}"] if row["farther_from_50_than"] else []
    text += f": {'; '.join(details)}" if details else f" (against {', '.join(row['controls'])})"
    if row.get("controls_on_another_base"):
        text += f" ‡ {', '.join(row['controls_on_another_base'])} on another quantization of the base"
    return text


def mechanism_modules(state: dict) -> dict:
    """variant -> module -> ratio over all held-out pairs."""
    return {name: {m: r["ratio_all"] for m, r in (extra.get("mechanism") or {}).get("modules", {}).items()}
            for name, extra in state["extra"].items() if extra.get("mechanism")}


# ----------------------------------------------------------------------------- rendering


def _f(value, digits=2):
    return "–" if value is None else f"{value:.{digits}f}"


def _ci(d: dict | None, digits=2, signed=True) -> str:
    if not d or d.get("diff") is None:
        return "n/a" if not d else f"PPL {d.get('side', 'outside')} range"
    sign = "+" if signed else ""
    return f"{d['diff']:{sign}.{digits}f} [{d['ci'][0]:.{digits}f}, {d['ci'][1]:.{digits}f}]"


def _excludes_zero(d: dict | None) -> bool:
    return bool(d and d.get("ci") and (d["ci"][0] > 0 or d["ci"][1] < 0))


def _cells(entry: dict) -> list[str]:
    """Signed differences of every bias metric, then the distance-from-50 differences of CrowS and SS."""
    signed = [_ci(entry[m]) + (" *" if _excludes_zero(entry[m]) else "") for m in analysis.BIAS_METRICS]
    distance = [_ci(entry[m].get("distance")) + (" *" if _excludes_zero(entry[m].get("distance")) else "")
                for m in analysis.IDEAL_50]
    return signed + distance


def _is_eraser(entry: dict) -> bool:
    return (entry.get("mode") or "").split("-")[0] in ERASER_FAMILIES


def _who(entry: dict) -> tuple[str, str]:
    """(method label, alpha cell) of a comparison: an eraser by its variant name (base included), no alpha."""
    if _is_eraser(entry):
        return entry["method"], "–"
    return entry.get("mode", METHOD), format(entry["alpha"], "g")


def render_markdown(summary: dict, header: list[str]) -> str:
    lines = header + ["", "## Variants", "",
                      "| variant | mode | alignment | α | bits | group | pairs | CrowS % stereo [95% CI] | "
                      "SS [95% CI] | LMS [95% CI] | PPL | ‖QD‖/‖WD‖ |",
                      "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary["variants"]:
        mark = " †" if r.get("base_is_first_stage_model") is False else ""
        lines.append(
            f"| {r['name']}{mark} | {r['mode'] or '–'} | {r['pair_alignment'] or '–'} | "
            f"{'–' if r['alpha'] is None else format(r['alpha'], 'g')} | {r['bits'] or '–'} | "
            f"{r['group_size'] or '–'} | {r['n_pairs'] or '–'} | "
            f"{_f(r['crows_pct_stereotype'])} [{_f(r['crows_ci'][0])}, {_f(r['crows_ci'][1])}] | "
            f"{_f(r['stereoset_ss'])} [{_f(r['stereoset_ss_ci'][0])}, {_f(r['stereoset_ss_ci'][1])}] | "
            f"{_f(r['stereoset_lms'])} [{_f(r['stereoset_lms_ci'][0])}, {_f(r['stereoset_lms_ci'][1])}] | "
            f"{_f(r['ppl'])} | {_f(r['mechanism_ratio'], 4)} |")
    if any(r.get("base_is_first_stage_model") is False for r in summary["variants"]):
        lines += ["", "† an eraser on a gptq base that was quantized again and is not the model of `runs/gptq/` "
                  "(the check is in `runs/<variant>/job.json`): its differences to `gptq` include a re-quantization."]
    glance = summary.get("methods") or []
    if glance:
        lines += ["", "## Methods at a glance", "",
                  "Each method (the paper's term per α, the direction term, the erasers per base) beside FP and plain "
                  "GPTQ. |x − 50|: distance from 50, the ideal of CrowS-Pairs % and SS. Beats its controls: closer to "
                  "50 than every one of its controls on CrowS or SS (paired 95 % interval of the distance difference "
                  "below 0) and farther than none; the comparisons are in the next section. Zero-shot: the "
                  "five-task average of the lm-eval suite (suite.md), where it ran.", "",
                  "| method | CrowS % | \\|CrowS − 50\\| | SS | \\|SS − 50\\| | LMS | PPL | zero-shot avg % | "
                  "beats its controls? |", "|---|---|---|---|---|---|---|---|---|"]
        for g in glance:
            zero = "–" if g["zeroshot_avg"] is None else f"{100 * g['zeroshot_avg']:.1f}"
            lines.append(f"| {g['name']} | {g['crows']:.2f} | {g['crows_distance']:.2f} | {g['ss']:.2f} | "
                         f"{g['ss_distance']:.2f} | {g['lms']:.2f} | {g['ppl']:.2f} | {zero} | {_verdict_cell(g)} |")
        if any(g.get("controls_on_another_base") for g in glance):
            lines += ["", OTHER_BASE_NOTE]
    if summary["missing"]:
        lines += ["", f"Not finished yet (no results): {', '.join(summary['missing'])}."]
    if summary.get("stale"):
        lines += ["", f"Left out, stored with other settings (stale): {', '.join(summary['stale'])}."]
    any_mean = any(c.get("mechanism_mean_direction") for c in summary["comparisons"])
    lines += ["", "## Same alpha: each method minus each of its controls (paired bootstrap, same items)", "",
              "Negative CrowS / SS differences mean the method leaves *less* stereotype preference than the control; "
              "`*` marks a 95 % interval that excludes 0. Intervals resample items (CrowS pairs, StereoSet items, "
              "held-out pairs for ‖QD‖/‖WD‖); each variant is a single quantization run, so run-to-run variation "
              "(another calibration draw, another shuffle) is not in them. PPL ratio = method / control.", "",
              "Δ |CrowS − 50| and Δ |SS − 50| compare the distances from 50, the ideal of both scores: negative = the "
              "method is closer to 50 than the control. They decide \"better/worse\"; the signed differences do "
              "not once a score falls below 50.", "",
              "| method | α | control | Δ CrowS | Δ SS | Δ LMS | Δ \\|CrowS − 50\\| | Δ \\|SS − 50\\| | PPL ratio | "
              "Δ ‖QD‖/‖WD‖ |" + (" Δ mean direction |" if any_mean else ""),
              "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if any_mean else "")]
    for c in summary["comparisons"]:
        cells = _cells(c)
        who, alpha = _who(c)
        mechs = [c.get("mechanism_ratio")] + ([c.get("mechanism_mean_direction")] if any_mean else [])
        control = c["control"] + (" ‡" if c.get("same_base") is False else "")
        lines.append(f"| {who} | {alpha} | {control} | {' | '.join(cells)} | {c['ppl_ratio']:.3f} | "
                     + " | ".join(_ci(m, 4) + (" *" if _excludes_zero(m) else "") if m else "–" for m in mechs)
                     + " |")
    if any(c.get("same_base") is False for c in summary["comparisons"]):
        lines += ["", OTHER_BASE_NOTE]
    lines += ["", "## Matched perplexity: each method minus each curve at the method's perplexity", "",
              "Each curve is interpolated linearly in log-perplexity between its points sorted by perplexity (plain "
              "GPTQ at α = 0 and the mode's α values; the degradation curve: FP, plain GPTQ 4-bit g128, 4-bit "
              "without groups, 3-bit g128, none with a pair term). Intervals resample items and, in the same "
              "resample, WikiText-2 windows (every perplexity recomputed), so they include where the method sits on "
              "the curve; resamples that leave the curve's range are dropped (counted in summary.json). 'PPL below "
              "range': the method's perplexity is lower than every point of the curve; 'above': higher; no "
              "extrapolation. † marks a curve whose perplexity is not monotone in α (interpolated along the "
              "perplexity-sorted points, not the α order drawn in the plots).", "",
              "| method | α | method PPL | curve | Δ CrowS | Δ SS | Δ LMS | Δ \\|CrowS − 50\\| | Δ \\|SS − 50\\| |",
              "|---|---|---|---|---|---|---|---|---|"]
    for m in summary["matched"]:
        if m.get("mode", METHOD) in FAMILIES or _is_eraser(m):  # erasers' controls too: each with its curves
            dagger = "" if m["crows"].get("monotone", True) else " †"
            who, alpha = _who(m)
            lines.append(f"| {who} | {alpha} | {m['method_ppl']:.2f} | {m['curve']}{dagger} | "
                         f"{' | '.join(_cells(m))} |")
    controls = [m for m in summary["matched"] if m.get("mode", METHOD) not in FAMILIES and not _is_eraser(m)]
    if controls:
        lines += ["", "## Matched perplexity: each control minus the degradation curve", "",
                  "The same comparison for the controls, so that a method below pure degradation can be set against "
                  "the same term on other pairs.", "",
                  "| control | α | PPL | Δ CrowS | Δ SS | Δ LMS | Δ \\|CrowS − 50\\| | Δ \\|SS − 50\\| |",
                  "|---|---|---|---|---|---|---|---|"]
        for m in controls:
            lines.append(f"| {m['mode']} | {m['alpha']:g} | {m['method_ppl']:.2f} | {' | '.join(_cells(m))} |")
    lines += ["", "## Mechanism: ‖Q D‖ / ‖W D‖ on held-out pairs", "",
              "D = X_s − X_a: full-precision module inputs on stereotype/anti-stereotype pairs of the `eval` half "
              "(never calibrated on); W: full-precision weights; Q: the variant's dequantized weights; over the modules "
              "that get the term. Overall = sqrt(Σ‖QD‖² / Σ‖WD‖²) over modules and pairs: energy-weighted, so modules "
              "with large ‖WD‖ weigh more. Per module: `mechanism_per_module.csv`. Mean direction: "
              "sqrt(Σ‖Qμ‖² / Σ‖Wμ‖²) over modules, μ the held-out pairs' mean signed difference (the direction "
              "term's target), bootstrap bias-corrected with the basic bootstrap interval over the pairs (μ's "
              "sampling noise biases the plug-in ratio towards the noise's; plug-in value after the interval); — "
              "where the job predates it.", "",
              "| variant | all pairs | equal-length pairs | mean direction |", "|---|---|---|---|"]
    for r in summary["variants"]:
        if r["mechanism_ratio"] is not None:
            mean = r.get("mechanism_mean_direction")
            low_high = r["mechanism_mean_direction_ci"]
            mean_cell = "—" if mean is None else (f"{mean:.4f} [{low_high[0]:.4f}, {low_high[1]:.4f}] "
                                                  f"(plug-in {r['mechanism_mean_direction_plugin']:.4f})")
            lines.append(f"| {r['name']} | {r['mechanism_ratio']:.4f} | {_f(r['mechanism_ratio_equal_length'], 4)} "
                         f"| {mean_cell} |")
    for plot in summary["plots"]:
        lines += ["", f"![{plot}]({plot})"]
    return "\n".join(lines) + "\n"


def _csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    if rows:
        # every column any row has (eraser and suite columns exist for some variants only), in first-seen order
        writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for row in rows for k in row)),
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


def write_study_report(out: Path, variants, header: list[str], n_boot: int = 1000, seed: int = 0,
                       keys: dict | None = None, model: str = "", variant_fields: dict | None = None) -> dict:
    """`variant_fields` ({variant: {field: value}}) adds the second stage's figures (study.suite) to each variant."""
    state = load_study(out, variants, keys)
    rows = {v.name: {**variant_row(v, state["runs"][v.name], state["extra"][v.name], n_boot, seed),
                     **(variant_fields or {}).get(v.name, {})}
            for v in state["variants"]}
    summary = {"variants": list(rows.values()), "missing": state["missing"], "stale": state["stale"],
               "curves": {mode: points for mode in (*FAMILIES, *ALL_CONTROLS) if (points := curve(state, mode))},
               "comparisons": comparisons(state, rows, n_boot, seed), "matched": matched(state, rows, n_boot, seed),
               "mechanism_per_module": mechanism_modules(state), "bootstrap": {"resamples": n_boot, "seed": seed},
               "header": header}
    summary["methods"] = methods_at_a_glance(summary)
    summary["plots"] = write_plots(summary, out, title_prefix=f"{model}: " if model else "") if rows else []
    write_json_atomic(out / "summary.json", summary)
    flat = [{k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in r.items()}
            for r in summary["variants"]]
    (out / "summary.csv").write_text(_csv_text(flat), encoding="utf-8")
    per_module = summary["mechanism_per_module"]
    modules = sorted({m for ratios in per_module.values() for m in ratios})
    (out / "mechanism_per_module.csv").write_text(
        _csv_text([{"module": m, **{n: per_module[n].get(m) for n in per_module}} for m in modules]), encoding="utf-8")
    (out / "summary.md").write_text(render_markdown(summary, header), encoding="utf-8")
    return summary
