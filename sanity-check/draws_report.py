"""The key comparison over calibration draws: method minus control at one alpha, per draw and pooled with the draw
in the interval (study/draws.py says how).

Each draw is a study folder whose first-stage jobs of both variants ran with its own `--seed` (the seed draws the
256 calibration pairs and any seeded shuffling of them; the split and the evaluation items do not change), e.g.
for seed 1:

    .venv/bin/python sanity-check/reproduce.py --out results/smollm2/draws/seed1 --seed 1 \\
        --models-dir outputs/study-models/smollm2-135m-seed1 --only stereo-anti-a1
    (the same with --only unrelated-a1)

and then this report over the study (seed 0) and the extra draws:

    .venv/bin/python sanity-check/draws_report.py --draw results/smollm2/study \\
        --draw results/smollm2/draws/seed1 --draw results/smollm2/draws/seed2 --out results/smollm2/draws

Writes draws.json, draws.csv and draws.md into --out.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_DIR), str(Path(__file__).resolve().parent)]

from evaluation.store import load_run, run_path, write_json_atomic  # noqa: E402
from fair_gptq.cache import write_bytes_atomically  # noqa: E402
from study import draws  # noqa: E402

TASKS = ("crows_pairs", "stereoset", "wikitext2")
# the pooled table's row labels (Markdown: the bars of |x − 50| escaped)
LABELS = {"crows": "CrowS-Pairs % stereotype", "crows_distance": "CrowS-Pairs \\|% − 50\\|", "ss": "StereoSet SS",
          "ss_distance": "StereoSet \\|SS − 50\\|", "lms": "StereoSet LMS"}


class UsageError(ValueError):
    pass


def _stored(folder: Path, variant: str, name: str) -> dict:
    path = folder / "runs" / variant / name
    if not path.is_file():
        raise UsageError(f"{path}: missing; {variant} needs a quantized first-stage job in this draw "
                         f"(reproduce.py --only {variant})")
    return json.loads(path.read_text(encoding="utf-8"))


def load_draw(folder: Path, method: str, control: str) -> dict:
    """One draw: both variants' stored runs, their jobs' settings and their calibration pairs' sha256."""
    draw = {"folder": folder, "runs": {}, "jobs": {}, "pairs_sha256": {}}
    for variant in (method, control):
        job = _stored(folder, variant, "job.json")
        if "seed" not in job.get("settings", {}) or "variant" not in job:
            raise UsageError(f"{folder}/runs/{variant}/job.json records no seed or variant: not a study job")
        # only these two variants' runs: a study folder holds dozens of others
        runs = {task: load_run(run_path(folder, variant, task)) for task in TASKS}
        missing = [task for task, run in runs.items() if run is None]
        if missing:
            raise UsageError(f"{folder}/runs/{variant}: missing {', '.join(missing)}")
        quantization = _stored(folder, variant, "quantization.json")
        draw["runs"][variant] = runs
        draw["jobs"][variant] = job
        draw["pairs_sha256"][variant] = quantization.get("calibration", {}).get("sha256")
    return draw


def check_draws(loaded: list[dict], method: str) -> list[int]:
    """The draws differ in their seed only: each variant has the same settings (model, pairs count, windows,
    items) and the same variant record (mode, alpha, bits, ...) in every draw, both variants of a draw share its
    seed, no seed comes twice, and the seed did change the calibration pairs."""
    seeds, reference = [], {}
    for draw in loaded:
        seeds.append(draw["jobs"][method]["settings"]["seed"])
        for variant, job in draw["jobs"].items():
            settings = {k: v for k, v in job["settings"].items() if k != "seed"}
            if job["settings"]["seed"] != seeds[-1]:
                raise UsageError(f"{draw['folder']}: {variant} ran with another seed than {method}")
            first = reference.setdefault(variant, (settings, job["variant"]))
            if (settings, job["variant"]) != first:
                raise UsageError(f"{draw['folder']}: {variant}'s settings or variant record differ from the first "
                                 f"draw's beyond the seed ({settings}, {job['variant']} against {first[0]}, {first[1]})")
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"two draws share a seed ({seeds}): they are one draw, not two")
    for variant in loaded[0]["pairs_sha256"]:
        shas = [draw["pairs_sha256"][variant] for draw in loaded]
        if len(set(shas)) != len(shas):
            raise UsageError(f"{variant}: two draws calibrated on the same pairs (sha256 {shas}): the seed did not "
                             "draw other pairs")
    return seeds


def _fmt(entry: dict, digits: int = 2) -> str:
    lo, hi = entry["ci"]
    return f"{entry['diff']:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def render_markdown(report: dict, header: list[str]) -> str:
    method, control = report["method"], report["control"]
    lines = [*header, "", f"## Per draw: {method} and {control}", "",
             "| seed | calibration pairs sha256 (method; control) | CrowS % method / control | difference | "
             "SS method / control | difference | LMS difference | PPL method / control |", "|---|---|---|---|---|---|---|---|"]
    for row, shas in zip(report["per_draw"], report["pairs_sha256"]):
        lines.append(f"| {row['seed']} | {str(shas[method])[:12]}; {str(shas[control])[:12]} | "
                     f"{row['method_crows']:.2f} / {row['control_crows']:.2f} | {_fmt(row['diff_crows'])} | "
                     f"{row['method_ss']:.2f} / {row['control_ss']:.2f} | {_fmt(row['diff_ss'])} | "
                     f"{_fmt(row['diff_lms'])} | {row['method_ppl']:.2f} / {row['control_ppl']:.2f} |")
    lines += ["", "Per-draw intervals resample the evaluation items only (paired bootstrap; distance from 50 in the "
              "pooled table below).", "",
              f"## Pooled over {report['k']} draws: {method} − {control}, the draw included", "",
              "| metric | mean difference [95 % interval] | per draw | SD between draws | SE items | SE draws | df |",
              "|---|---|---|---|---|---|---|"]
    for metric, label in LABELS.items():
        e = report["pooled"][metric]
        sd = "–" if e["sd_between_draws"] is None else f"{e['sd_between_draws']:.2f}"
        lines.append(f"| {label} | {_fmt(e)} | {', '.join(f'{v:+.2f}' for v in e['per_draw'])} | {sd} | "
                     f"{e['se_items']:.2f} | {e['se_draws']:.2f} | {e['df']:.1f} |")
    ratio = report["pooled"]["ppl_ratio"]
    log = ratio["log_scale"]
    log_sd = "–" if log["sd_between_draws"] is None else f"{log['sd_between_draws']:.4f}"
    lines += [f"| WikiText-2 perplexity, method / control (SD and SEs of the log ratio) | {ratio['ratio']:.3f} "
              f"[{ratio['ci'][0]:.3f}, {ratio['ci'][1]:.3f}] | {', '.join(f'{v:.3f}' for v in ratio['per_draw'])} | "
              f"{log_sd} | {log['se_items']:.4f} | {log['se_draws']:.4f} | {ratio['df']:.1f} |",
              "", "Interval: mean ± t·√(SE items² + SE draws²), Welch–Satterthwaite df (sanity-check/study/draws.py). "
              "A distance difference below 0 means the method is closer to 50 (the ideal) than its control.", ""]
    return "\n".join(lines)


def csv_text(report: dict) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["metric", "diff", "ci_low", "ci_high", "k", "per_draw", "sd_between_draws", "se_items",
                     "se_draws", "df"])
    for metric in LABELS:
        e = report["pooled"][metric]
        writer.writerow([metric, e["diff"], *e["ci"], e["k"], json.dumps(e["per_draw"]), e["sd_between_draws"],
                         e["se_items"], e["se_draws"], e["df"]])
    ratio = report["pooled"]["ppl_ratio"]
    log = ratio["log_scale"]  # the spread columns on the log scale, where the ratio is pooled
    writer.writerow(["ppl_ratio", ratio["ratio"], *ratio["ci"], ratio["k"], json.dumps(ratio["per_draw"]),
                     log["sd_between_draws"], log["se_items"], log["se_draws"], ratio["df"]])
    return buffer.getvalue()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--draw", action="append", required=True, metavar="FOLDER",
                   help="a study folder of one draw (repeat; at least two; with two the draws' part has 1 df, "
                        "t = 12.7)")
    p.add_argument("--method", default="stereo-anti-a1")
    p.add_argument("--control", default="unrelated-a1")
    p.add_argument("--out", required=True)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if len(args.draw) < 2:
            raise UsageError("give at least two --draw folders: one draw has no draw-to-draw spread")
        if args.bootstrap < 100:
            raise UsageError(f"--bootstrap {args.bootstrap}: at least 100 resamples for an item variance")
        loaded = [load_draw(Path(folder), args.method, args.control) for folder in args.draw]
        seeds = check_draws(loaded, args.method)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    pairs = [(d["runs"][args.method], d["runs"][args.control]) for d in loaded]
    report = {"format": "fair_gptq.study.draws/1", "method": args.method, "control": args.control, "k": len(pairs),
              "seeds": seeds, "draw_folders": [str(Path(f)) for f in args.draw],
              "pairs_sha256": [d["pairs_sha256"] for d in loaded],
              "settings": {k: v for k, v in loaded[0]["jobs"][args.method]["settings"].items() if k != "seed"},
              "per_draw": draws.per_draw_rows(pairs, seeds, args.bootstrap, args.seed),
              "pooled": draws.compare_over_draws(pairs, args.bootstrap, args.seed),
              "bootstrap": {"resamples": args.bootstrap, "seed": args.seed}}
    header = [f"# Calibration draws: {args.method} against {args.control}", "",
              f"Command: `python sanity-check/draws_report.py {' '.join(argv if argv is not None else sys.argv[1:])}`  ",
              f"Report written: {time.strftime('%Y-%m-%d')}; draws (seeds {', '.join(map(str, seeds))}) from "
              f"{', '.join(report['draw_folders'])}; each job's command, versions and date in its "
              "`runs/<variant>/job.json`."]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "draws.json", report)
    write_bytes_atomically(out / "draws.csv", csv_text(report).encode("utf-8"))
    from study.plots import write_draws_plot

    plot = write_draws_plot(report, out)
    write_bytes_atomically(out / "draws.md", (render_markdown(report, header) + f"\n![{plot}]({plot})\n").encode("utf-8"))
    print(render_markdown(report, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
