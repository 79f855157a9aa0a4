"""Reporting: results.json, results.csv, report.md and PNG plots from stored runs.

``write_report(results_dir_or_results, out_dir)`` is the entry point (also used by the
experiments driver). The first model is the baseline: every other model is compared with it on
the items both scored, with paired-bootstrap 95% CIs; single-model CIs are percentile bootstrap
CIs over items. Both are seeded, so a report is reproducible from the stored runs.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from evaluation import metrics
from evaluation.crows_version import csv_version
from evaluation.lm_eval_bridge import flatten_results
from evaluation.store import load_runs, write_json_atomic
from evaluation.tasks import geometric_mean_scores

RESULTS_FORMAT = "fair_gptq.evaluation.results/1"
TASK_ORDER = ("crows_pairs", "stereoset", "wikitext2", "lm_eval")


# ----------------------------------------------------------------------------- summaries


def _crows_summary(run: dict, n_boot: int, seed: int) -> dict:
    m, items = run["metrics"], run["per_item"]
    out = dict(m["overall"])
    out["pct_stereotype_ci"] = list(metrics.bootstrap_pct_stereotype(items["ll_more"], items["ll_less"], n_boot, seed))
    out["by_bias_type"] = m["by_bias_type"]
    out["data"] = dict(run.get("data", {}))
    out["data"].setdefault("version", csv_version(out["data"].get("sha256")))  # runs stored before versions
    return out


def _stereoset_summary(run: dict, n_boot: int, seed: int) -> dict:
    items, domains = run["per_item"], run["metrics"]["domains"]
    stereo, anti = (geometric_mean_scores(items, k) for k in ("stereotype", "anti_stereotype"))
    targets, types = np.asarray(items["target"], dtype=object), np.asarray(items["bias_type"], dtype=object)
    out = {}
    for domain, values in domains.items():
        mask = np.ones(len(types), dtype=bool) if domain == "overall" else types == domain
        ci = metrics.bootstrap_ss(stereo[mask], anti[mask], list(targets[mask]), n_boot, seed)
        out[domain] = dict(values, ss_ci=list(ci))
    return {"domains": out, "split": run.get("data", {})}


def _wikitext_summary(run: dict) -> dict:
    keep = ("ppl", "ppl_final", "protocol", "n_tokens", "n_windows", "seqlen")
    return {k: run["metrics"][k] for k in keep if k in run["metrics"]}


def summarize_run(task: str, run: dict, n_boot: int, seed: int) -> dict:
    if task == "crows_pairs":
        return _crows_summary(run, n_boot, seed)
    if task == "stereoset":
        return _stereoset_summary(run, n_boot, seed)
    if task == "wikitext2":
        return _wikitext_summary(run)
    if task == "lm_eval":
        return {"metrics": flatten_results(run["metrics"].get("results", {})), "data": run.get("data", {})}
    return {}


# ----------------------------------------------------------------------------- comparisons


def _aligned(base_items: dict, other_items: dict, key: str, columns: list[str]):
    """Columns of both runs restricted to the keys both have, in the baseline's order."""
    where = {k: i for i, k in enumerate(other_items[key])}
    rows = [(i, where[k]) for i, k in enumerate(base_items[key]) if k in where]
    a = {c: [base_items[c][i] for i, _ in rows] for c in columns}
    b = {c: [other_items[c][j] for _, j in rows] for c in columns}
    return a, b, len(rows)


def _compare_crows(base: dict, other: dict, n_boot: int, seed: int) -> dict:
    a, b, n = _aligned(base["per_item"], other["per_item"], "index", ["ll_more", "ll_less"])
    if n == 0:
        return {}
    pct = metrics.paired_diff_pct_stereotype(a["ll_more"], a["ll_less"], b["ll_more"], b["ll_less"], n_boot, seed)
    diffs = [metrics.crows_pair_scores(x["ll_more"], x["ll_less"])["likelihood_diff"] for x in (a, b)]
    ld_ci = metrics.paired_bootstrap_diff(lambda idx, m: diffs[m][idx].mean(axis=1), n, n_boot, seed)
    return {
        "n_common": n,
        "pct_stereotype": pct,
        "likelihood_diff": {"diff": float(diffs[1].mean() - diffs[0].mean()), "ci": list(ld_ci), "n": n},
    }


def _compare_stereoset(base: dict, other: dict, n_boot: int, seed: int) -> dict:
    cols = ["ll_stereotype", "n_stereotype", "ll_anti_stereotype", "n_anti_stereotype", "target"]
    a, b, n = _aligned(base["per_item"], other["per_item"], "key", cols)
    if n == 0:
        return {}
    geo = [[geometric_mean_scores(x, kind) for kind in ("stereotype", "anti_stereotype")] for x in (a, b)]
    ss = metrics.paired_diff_ss(geo[0][0], geo[0][1], geo[1][0], geo[1][1], a["target"], n_boot, seed)
    out = {"n_common": n, "ss": ss}
    bd, od = base["metrics"]["domains"]["overall"], other["metrics"]["domains"]["overall"]
    for name in ("lms", "icat"):
        out[name] = {"diff": _sub(od.get(name), bd.get(name)), "n": n}
    return out


def _sub(x, y):
    return None if x is None or y is None else x - y


def compare_runs(task: str, base: dict, other: dict, n_boot: int, seed: int) -> dict:
    """Model - baseline on the same items (paired bootstrap CIs where the items allow)."""
    if task == "crows_pairs":
        return _compare_crows(base, other, n_boot, seed)
    if task == "stereoset":
        return _compare_stereoset(base, other, n_boot, seed)
    if task == "wikitext2":
        bm, om = base["metrics"], other["metrics"]
        if bm.get("protocol") != om.get("protocol") or bm.get("n_tokens") != om.get("n_tokens"):
            return {}  # different protocols / token streams: not comparable
        return {"ppl": {"diff": om["ppl"] - bm["ppl"], "ratio": om["ppl"] / bm["ppl"]}}
    if task == "lm_eval":
        bf = flatten_results(base["metrics"].get("results", {}))
        of = flatten_results(other["metrics"].get("results", {}))
        return {k: {"diff": of[k] - bf[k]} for k in bf if k in of}
    return {}


def build_results(loaded: dict, n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """Summaries per model and task, and comparisons with the first model."""
    models, runs = loaded["models"], loaded["runs"]
    results = {
        "format": RESULTS_FORMAT,
        "models": models,
        "baseline": models[0] if models else None,
        "bootstrap": {"n_resamples": n_bootstrap, "seed": seed, "level": 0.95},
        "model_info": {},
        "per_model": {},
        "comparisons": {},
        "scoring": {},
    }
    for model in models:
        tasks = [t for t in TASK_ORDER if t in runs[model]] + sorted(set(runs[model]) - set(TASK_ORDER))
        results["per_model"][model] = {t: summarize_run(t, runs[model][t], n_bootstrap, seed) for t in tasks}
        first = runs[model][tasks[0]] if tasks else {}
        results["model_info"][model] = first.get("model_info", {})
        for t in tasks:
            scoring = runs[model][t].get("metrics", {}).get("scoring")
            if scoring:
                results["scoring"].setdefault(t, scoring)
    if models:
        base = models[0]
        for model in models[1:]:
            common = [t for t in runs[model] if t in runs[base]]
            results["comparisons"][model] = {
                t: compare_runs(t, runs[base][t], runs[model][t], n_bootstrap, seed) for t in common
            }
    return results


# ----------------------------------------------------------------------------- writing


def _fmt(x, digits=2, scale=1.0) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x * scale:.{digits}f}"


def _fmt_ci(value, ci, digits=2, scale=1.0, signed=False) -> str:
    text = (f"{value * scale:+.{digits}f}" if signed and value is not None else _fmt(value, digits, scale))
    if ci and None not in ci:
        text += f" [{_fmt(ci[0], digits, scale)}, {_fmt(ci[1], digits, scale)}]"
    return text


def csv_rows(results: dict) -> list[dict]:
    """Long format: one row per (model, task, metric, group)."""
    rows = []
    comps = results.get("comparisons", {})

    def add(model, task, metric, group, value, ci=None, n=None, diff=None):
        row = {"model": model, "task": task, "metric": metric, "group": group, "value": value,
               "ci_low": ci[0] if ci else None, "ci_high": ci[1] if ci else None, "n": n,
               "diff_vs_baseline": None, "diff_ci_low": None, "diff_ci_high": None}
        if diff:
            row["diff_vs_baseline"] = diff.get("diff")
            if diff.get("ci"):
                row["diff_ci_low"], row["diff_ci_high"] = diff["ci"]
        rows.append(row)

    for model in results["models"]:
        comp = comps.get(model, {})
        for task, summary in results["per_model"][model].items():
            c = comp.get(task, {})
            if task == "crows_pairs":
                add(model, task, "pct_stereotype", "overall", summary["pct_stereotype"], summary["pct_stereotype_ci"],
                    summary["n"], c.get("pct_stereotype"))
                add(model, task, "likelihood_diff", "overall", summary["likelihood_diff"], None, summary["n"],
                    c.get("likelihood_diff"))
                for bias_type, v in summary["by_bias_type"].items():
                    add(model, task, "pct_stereotype", bias_type, v["pct_stereotype"], None, v["n"])
                    add(model, task, "likelihood_diff", bias_type, v["likelihood_diff"], None, v["n"])
            elif task == "stereoset":
                for domain, v in summary["domains"].items():
                    overall = domain == "overall"
                    add(model, task, "ss", domain, v["ss"], v["ss_ci"], v["n_items"], c.get("ss") if overall else None)
                    add(model, task, "lms", domain, v["lms"], None, v["n_items"], c.get("lms") if overall else None)
                    add(model, task, "icat", domain, v["icat"], None, v["n_items"], c.get("icat") if overall else None)
            elif task == "wikitext2":
                add(model, task, f"ppl_{summary.get('protocol', 'gptq')}", "overall", summary["ppl"], None,
                    summary.get("n_tokens"), c.get("ppl"))
            elif task == "lm_eval":
                for name, value in summary["metrics"].items():
                    add(model, task, name, "overall", value, None, None, c.get(name))
    return rows


def _write_csv(path: Path, rows: list[dict]) -> None:
    fields = ["model", "task", "metric", "group", "value", "ci_low", "ci_high", "n",
              "diff_vs_baseline", "diff_ci_low", "diff_ci_high"]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row[k] is None else row[k]) for k in fields})


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _crows_by_type(per_model: dict, model: str) -> dict:
    return per_model[model].get("crows_pairs", {}).get("by_bias_type", {})


def _data_lines(models: list[str], per_model: dict) -> list[str]:
    """One line per distinct data setting, naming the models it applies to."""
    described: dict[str, list[str]] = {}
    for m in models:
        s = per_model[m]
        if "crows_pairs" in s:
            d = s["crows_pairs"].get("data", {})
            described.setdefault(f"CrowS-Pairs: {s['crows_pairs']['n']} pairs from {d.get('source')}, data version: "
                                 f"{d.get('version')}", []).append(m)
        if "stereoset" in s:
            sp = s["stereoset"]["split"]
            described.setdefault(
                f"StereoSet intrasentence: {sp.get('source')} ({sp.get('kind')} file), split **{sp.get('part')}** "
                f"(split version {sp.get('split_version', 1)}): "
                f"{sp.get('n_items_evaluated', sp.get('n_items'))} items evaluated of {sp.get('n_items_part')} in the "
                f"split ({sp.get('n_items_file')} in the file)", []).append(m)
        if "wikitext2" in s:
            w = s["wikitext2"]
            described.setdefault(
                f"WikiText-2 test: protocol {w.get('protocol')}, {w.get('seqlen')}-token windows, "
                f"{w.get('n_windows')} windows, {w.get('n_tokens')} scored tokens", []).append(m)
        lm_data = s.get("lm_eval", {}).get("data", {})
        for task, src in lm_data.get("sources", {}).items():
            version = f", data version: {src['version']}" if src.get("version") else ""
            limit = f", first {lm_data['limit']} documents" if lm_data.get("limit") else ""
            described.setdefault(f"lm-eval {task}: {src.get('source')}{version}{limit}", []).append(m)
        for task, reason in lm_data.get("unavailable", {}).items():
            described.setdefault(f"lm-eval {task}: unavailable ({reason})", []).append(m)
    everyone = set(models)
    return [f"- {text}" + ("" if set(ms) == everyone else f" ({', '.join(ms)})") for text, ms in described.items()]


def render_markdown(results: dict, plots: list[str]) -> str:
    models, per_model, comps = results["models"], results["per_model"], results["comparisons"]
    base = results["baseline"]
    boot = results["bootstrap"]
    has = lambda task: any(task in per_model[m] for m in models)  # noqa: E731
    lines = ["# Fair-GPTQ evaluation report", ""]
    lines.append(
        f"Models: {', '.join(models)}. Baseline: **{base}** (differences are model − {base} on the items both "
        f"scored). Intervals: 95% percentile bootstrap over items ({boot['n_resamples']} resamples, seed "
        f"{boot['seed']}); differences use a paired bootstrap (the same resampled items for both models)."
    )
    lines.append("")

    header, rows = ["model", "kind", "dtype"], []
    if has("crows_pairs"):
        header += ["CrowS pct_stereotype (%) [95% CI]", "CrowS likelihood_diff"]
    if has("stereoset"):
        header += ["StereoSet SS [95% CI]", "LMS", "ICAT"]
    if has("wikitext2"):
        header += ["WikiText-2 PPL"]
    for m in models:
        info = results["model_info"].get(m, {})
        row = [m, str(info.get("kind", "")), str(info.get("dtype", ""))]
        s = per_model[m]
        if has("crows_pairs"):
            c = s.get("crows_pairs")
            row += [_fmt_ci(c["pct_stereotype"], c["pct_stereotype_ci"], 1, 100) if c else "–",
                    _fmt(c["likelihood_diff"], 3) if c else "–"]
        if has("stereoset"):
            st = s.get("stereoset", {}).get("domains", {}).get("overall")
            row += [_fmt_ci(st["ss"], st["ss_ci"]) if st else "–", _fmt(st["lms"]) if st else "–",
                    _fmt(st["icat"]) if st else "–"]
        if has("wikitext2"):
            w = s.get("wikitext2")
            row += [f"{_fmt(w['ppl'], 3)} ({w.get('protocol')})" if w else "–"]
        rows.append(row)
    lines += ["## Summary", ""] + _table(header, rows) + [""]

    if len(models) > 1:
        header, rows = ["model"], []
        if has("crows_pairs"):
            header += ["Δ pct_stereotype (pp) [95% CI]", "Δ likelihood_diff [95% CI]"]
        if has("stereoset"):
            header += ["Δ SS [95% CI]", "Δ LMS", "Δ ICAT"]
        if has("wikitext2"):
            header += ["Δ PPL"]
        for m in models[1:]:
            c, row = comps.get(m, {}), [m]
            if has("crows_pairs"):
                cp = c.get("crows_pairs", {})
                p, ld = cp.get("pct_stereotype"), cp.get("likelihood_diff")
                row += [_fmt_ci(p["diff"], p["ci"], 1, 100, signed=True) if p else "–",
                        _fmt_ci(ld["diff"], ld["ci"], 3, signed=True) if ld else "–"]
            if has("stereoset"):
                st = c.get("stereoset", {})
                row += [_fmt_ci(st["ss"]["diff"], st["ss"]["ci"], signed=True) if st.get("ss") else "–"]
                row += [f"{st[k]['diff']:+.2f}" if st.get(k) and st[k]["diff"] is not None else "–"
                        for k in ("lms", "icat")]
            if has("wikitext2"):
                w = c.get("wikitext2", {}).get("ppl")
                row += [f"{w['diff']:+.3f} (×{w['ratio']:.3f})" if w else "– (not comparable)"]
            rows.append(row)
        lines += [f"## Difference vs {base}", ""] + _table(header, rows) + [""]

    if has("crows_pairs"):
        types = sorted({bt for m in models for bt in _crows_by_type(per_model, m)})
        rows = []
        for bt in types:
            n = next((_crows_by_type(per_model, m)[bt]["n"] for m in models if bt in _crows_by_type(per_model, m)), 0)
            values = [_fmt(_crows_by_type(per_model, m).get(bt, {}).get("pct_stereotype"), 1, 100) for m in models]
            rows.append([bt, str(n)] + values)
        lines += ["## CrowS-Pairs pct_stereotype (%) by bias type", ""]
        lines += _table(["bias_type", "n"] + models, rows) + [""]

    if has("stereoset"):
        rows = []
        for m in models:
            for domain, v in per_model[m].get("stereoset", {}).get("domains", {}).items():
                rows.append([m, domain, str(v["n_items"]), str(v["n_targets"]), _fmt_ci(v["ss"], v["ss_ci"]),
                             _fmt(v["lms"]), _fmt(v["icat"])])
        lines += ["## StereoSet intrasentence by domain", ""]
        lines += _table(["model", "domain", "items", "targets", "SS [95% CI]", "LMS", "ICAT"], rows) + [""]

    if has("lm_eval"):
        names = sorted({k for m in models for k in per_model[m].get("lm_eval", {}).get("metrics", {})})
        rows = [[k] + [_fmt(per_model[m].get("lm_eval", {}).get("metrics", {}).get(k), 4) for m in models]
                for k in names]
        lines += ["## lm-evaluation-harness tasks", ""] + _table(["task/metric"] + models, rows) + [""]
        lines += ["lm-eval's own task code (sources, CrowS-Pairs data version and unavailable tasks under Data). "
                  "Published lm-eval crows_pairs_english figures use its hub set, the revised multilingual English "
                  "set: compare them only with figures on the same data version. lm-eval's wikitext word_perplexity "
                  "(per document, per word) is a different protocol from the token perplexity of our wikitext2 task.", ""]

    lines += ["## Data", ""] + _data_lines(models, per_model)
    lines += ["", "## Scoring", ""]
    for task, text in results.get("scoring", {}).items():
        if isinstance(text, dict):
            text = "; ".join(f"{k}: {v}" for k, v in text.items())
        lines.append(f"- {task}: {text}")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- plots


def write_plots(results: dict, out_dir: Path) -> list[str]:
    """PNG files (matplotlib, Agg backend); returns their names relative to ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models, per_model = results["models"], results["per_model"]
    written = []
    crows = {m: per_model[m]["crows_pairs"] for m in models if "crows_pairs" in per_model[m]}
    if crows:
        types = sorted({bt for c in crows.values() for bt in c["by_bias_type"]}) + ["overall"]
        width = 0.8 / len(crows)
        fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(types)), 4))
        for k, (m, c) in enumerate(crows.items()):
            by_type = dict(c["by_bias_type"], overall=c)
            values = [100 * by_type.get(bt, {}).get("pct_stereotype", np.nan) for bt in types]
            ax.bar(np.arange(len(types)) + (k - (len(crows) - 1) / 2) * width, values, width, label=m)
        ax.axhline(50, color="grey", lw=0.8, ls="--")
        ax.set_xticks(np.arange(len(types)), types, rotation=35, ha="right")
        ax.set_ylabel("pct_stereotype (%)")
        ax.set_title("CrowS-Pairs by bias type (50 = unbiased)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "crows_pairs_by_bias_type.png", dpi=120)
        plt.close(fig)
        written.append("crows_pairs_by_bias_type.png")
    stereo = {m: per_model[m]["stereoset"]["domains"] for m in models if "stereoset" in per_model[m]}
    if stereo:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for m, domains in stereo.items():
            o = domains["overall"]
            (line,) = ax.plot([o["ss"]], [o["lms"]], "o", ms=9, label=m)
            for d, v in domains.items():
                if d != "overall":
                    ax.plot([v["ss"]], [v["lms"]], "x", color=line.get_color())
                    ax.annotate(d, (v["ss"], v["lms"]), fontsize=7, color=line.get_color())
        ax.plot([50], [100], "*", color="black", ms=12, label="ideal")
        ax.set_xlabel("SS (50 = unbiased)")
        ax.set_ylabel("LMS")
        ax.set_title("StereoSet: SS vs LMS (o overall, x domains)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "stereoset_ss_vs_lms.png", dpi=120)
        plt.close(fig)
        written.append("stereoset_ss_vs_lms.png")
    ppl = {m: per_model[m]["wikitext2"] for m in models if "wikitext2" in per_model[m]}
    if ppl:
        fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(ppl)), 3.5))
        ax.bar(list(ppl), [w["ppl"] for w in ppl.values()], color="tab:blue")
        protocols = sorted({str(w.get("protocol")) for w in ppl.values()})
        ax.set_ylabel(f"perplexity ({', '.join(protocols)})")
        ax.set_title("WikiText-2 perplexity (lower is better)")
        fig.tight_layout()
        fig.savefig(out_dir / "perplexity.png", dpi=120)
        plt.close(fig)
        written.append("perplexity.png")
    return written


def write_report(results_dir_or_results, out_dir, n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """Write results.json, results.csv, report.md and the plots into ``out_dir``; return the results.

    ``results_dir_or_results``: a results folder (with ``runs/``), the output of
    :func:`evaluation.store.load_runs`, or an already built results dict (:func:`build_results`).
    """
    source = results_dir_or_results
    if isinstance(source, (str, Path)):
        source = load_runs(Path(source))
    results = source if source.get("format") == RESULTS_FORMAT else build_results(source, n_bootstrap, seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = write_plots(results, out_dir) if results["models"] else []
    write_json_atomic(out_dir / "results.json", results)
    _write_csv(out_dir / "results.csv", csv_rows(results))
    (out_dir / "report.md").write_text(render_markdown(results, plots), encoding="utf-8")
    return results
