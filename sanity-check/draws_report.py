"""The key comparison over calibration draws: method minus control at one alpha, per draw and pooled with the draw
in the interval (study/draws.py says how).

Each draw is a study folder whose first-stage jobs ran with its own `--seed` (the seed draws the 256 calibration
pairs; the split and the evaluation items do not change), e.g. for seed 1:

    .venv/bin/python sanity-check/reproduce.py --out results/smollm2/draws/seed1 --seed 1 \\
        --models-dir outputs/study-models/smollm2-135m-seed1 --only stereo-anti-a1

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

from evaluation.store import load_runs, write_json_atomic  # noqa: E402
from study import draws  # noqa: E402

TASKS = ("crows_pairs", "stereoset", "wikitext2")
LABELS = {"crows": "CrowS-Pairs % stereotype", "crows_distance": "CrowS-Pairs |% − 50|", "ss": "StereoSet SS",
          "ss_distance": "StereoSet |SS − 50|", "lms": "StereoSet LMS"}


class UsageError(ValueError):
    pass


def _job(folder: Path, variant: str) -> dict:
    path = folder / "runs" / variant / "job.json"
    if not path.is_file():
        raise UsageError(f"{path}: no first-stage job for {variant} in this draw (run it with reproduce.py --only)")
    return json.loads(path.read_text(encoding="utf-8"))


def load_draw(folder: Path, method: str, control: str) -> dict:
    """One draw: both variants' stored runs, their jobs' settings and their calibration pairs' sha256."""
    runs = load_runs(folder)["runs"]
    draw = {"folder": folder, "runs": {}, "jobs": {}, "pairs_sha256": {}}
    for variant in (method, control):
        job = _job(folder, variant)
        missing = [t for t in TASKS if t not in runs.get(variant, {})]
        if missing:
            raise UsageError(f"{folder}/runs/{variant}: missing {', '.join(missing)}")
        quantization = json.loads((folder / "runs" / variant / "quantization.json").read_text(encoding="utf-8"))
        draw["runs"][variant] = runs[variant]
        draw["jobs"][variant] = job
        draw["pairs_sha256"][variant] = quantization.get("calibration", {}).get("sha256")
    return draw


def check_draws(loaded: list[dict], method: str) -> list[int]:
    """The draws differ in their seed only (same model, pairs count, windows, items), and no seed twice."""
    seeds, reference = [], None
    for draw in loaded:
        settings = dict(draw["jobs"][method]["settings"])
        seeds.append(settings.pop("seed"))
        for variant, job in draw["jobs"].items():
            other = dict(job["settings"])
            if other.pop("seed") != seeds[-1]:
                raise UsageError(f"{draw['folder']}: {variant} ran with another seed than {method}")
        if reference is None:
            reference = settings
        elif settings != reference:
            raise UsageError(f"{draw['folder']}: settings {settings} differ from the first draw's {reference} "
                             "beyond the seed")
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"two draws share a seed ({seeds}): they are one draw, not two")
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
    lines += [f"| WikiText-2 perplexity, method / control | {ratio['ratio']:.3f} [{ratio['ci'][0]:.3f}, "
              f"{ratio['ci'][1]:.3f}] | {', '.join(f'{v:.3f}' for v in ratio['per_draw'])} | | | | {ratio['df']:.1f} |",
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
    writer.writerow(["ppl_ratio", ratio["ratio"], *ratio["ci"], ratio["k"], json.dumps(ratio["per_draw"]), "", "", "",
                     ratio["df"]])
    return buffer.getvalue()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--draw", action="append", required=True, metavar="FOLDER",
                   help="a study folder of one draw (repeat; at least two)")
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
    (out / "draws.csv").write_text(csv_text(report), encoding="utf-8")
    (out / "draws.md").write_text(render_markdown(report, header), encoding="utf-8")
    print(render_markdown(report, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
