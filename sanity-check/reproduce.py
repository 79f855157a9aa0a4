#!/usr/bin/env python3
"""Quantize one model several ways and evaluate all of them: the controlled study, the paper's comparison and
its controls.

`--suite study` (the default) is the controlled study: does Fair-GPTQ lower bias beyond what any degradation of
the model does? One curve per calibration mode (stereo-anti = the method; shuffled and unrelated pairs; stereo-anti
on token-aligned pairs only) over alpha in {0.1, 0.3, 1, 3}, plus full precision, plain GPTQ and two degradation
references without any pair term (3 bits; 4 bits without groups); full CrowS-Pairs, the whole held-out StereoSet
half, 16 WikiText-2 windows, and the mechanism ‖QD‖/‖WD‖ on held-out pairs. Each variant is an independent job
(sanity-check/study_jobs.py) whose small result files are committed as they finish; a rerun skips finished jobs.

    python sanity-check/reproduce.py --out results/smollm2/study                # every job, then the report
    python sanity-check/reproduce.py --out results/smollm2/study --list-jobs    # one command per job
    python sanity-check/reproduce.py --out results/smollm2/study --only gptq    # one job (e.g. a Slurm array task)
    python sanity-check/reproduce.py --out results/smollm2/study --report       # collect what is finished

The earlier suites (`paper`, `controls`, `all`: 32 pairs, 500 items, alpha 0.1 controls) remain for comparison.
Variants (all share bits, group size, pair count and seeds; only what the name says differs):
  fp                         the full-precision model
  gptq                       plain GPTQ (alpha=0) through the same pipeline
  fair-{all,lower,upper,lower-upper}   Fair-GPTQ at --alpha with each layer strategy
  fair-all-a<alpha>          the alpha sweep of strategy `all`
  ctrl-unrelated             stereotype paired with its item's unrelated sentence (same alpha, all layers)
  ctrl-shuffled              stereotype paired with another item's anti-stereotype (seeded)
  ctrl-file                  pairs from --pairs-file (e.g. generated paraphrases), when given

Calibration uses the `calib` half of StereoSet dev and evaluation its `eval` half (see fair_gptq.stereoset),
so no StereoSet score is measured on sentences a model was calibrated on. Finished quantizations
(`fair_gptq_run.json` present) and finished evaluations are reused on a rerun.

    python sanity-check/reproduce.py --suite all --out results/smollm2          # the full run (~60 min, 2 cores)
    python sanity-check/reproduce.py --suite all --quick --out outputs/quick    # within ~10 minutes
    python sanity-check/reproduce.py --suite controls --out outputs/controls
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "sanity-check"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

SWEEP = (0.01, 0.03, 0.1, 0.3, 1.0)
QUICK_SWEEP = ()  # quick: gptq (alpha 0) and fair-all (alpha 0.1) are the two points of the sweep plot
STRATEGIES = ("all", "lower", "upper", "lower-upper")


def variant_table(suite: str, alpha: float, sweep, pairs_file: str | None, quick: bool) -> dict[str, list[str]]:
    """name -> extra arguments of example_fair_gptq.py (None for the full-precision model)."""
    variants: dict[str, list[str] | None] = {"fp": None, "gptq": ["--alpha", "0"]}
    fair_all = ["--alpha", str(alpha), "--strategy", "all"]
    if suite in ("paper", "all"):
        strategies = ("all",) if quick else STRATEGIES
        for strategy in strategies:
            variants[f"fair-{strategy}"] = ["--alpha", str(alpha), "--strategy", strategy]
        for a in sweep:
            if a != alpha:
                variants[f"fair-all-a{a:g}"] = ["--alpha", str(a), "--strategy", "all"]
    if suite in ("controls", "all"):
        variants.setdefault("fair-all", fair_all)
        variants["ctrl-unrelated"] = fair_all + ["--pairs", "unrelated"]
        variants["ctrl-shuffled"] = fair_all + ["--pairs", "shuffled"]
        if pairs_file:
            variants["ctrl-file"] = fair_all + ["--pairs", "file", "--pairs-file", pairs_file]
    return variants


def quantize_variant(name: str, extra: list[str], args, models_dir: Path) -> Path:
    """Run the main job in a subprocess (fresh memory each time); reuse a finished model."""
    from study_jobs import run_main_job

    return run_main_job(name, models_dir / name, ["--group-size", str(args.group_size), *extra], args, args.force)


def evaluate(variants: dict, paths: dict[str, str], args, eval_dir: Path) -> int:
    from evaluation import run_eval

    argv = ["--out", str(eval_dir), "--tasks", args.tasks, "--device", args.device, "--seed", str(args.seed),
            "--bootstrap", str(args.bootstrap)]
    for name in variants:
        argv += ["--model", f"{name}={paths[name]}"]
    for flag, value in (("--max-items", args.max_items), ("--max-windows", args.max_windows),
                        ("--seqlen", args.seqlen), ("--stereoset", args.stereoset)):
        if value is not None:
            argv += [flag, str(value)]
    return run_eval.main(argv)


def headline(results: dict, model: str) -> dict:
    """The few figures of one model that the summary table and the sweep plot need."""
    per = results["per_model"].get(model, {})
    crows = per.get("crows_pairs", {})
    stereo = per.get("stereoset", {}).get("domains", {}).get("overall", {})
    wiki = per.get("wikitext2", {})
    return {"crows_pct_stereotype": crows.get("pct_stereotype"), "crows_ci": crows.get("pct_stereotype_ci"),
            "stereoset_ss": stereo.get("ss"), "stereoset_ss_ci": stereo.get("ss_ci"),
            "stereoset_lms": stereo.get("lms"), "stereoset_icat": stereo.get("icat"), "ppl": wiki.get("ppl")}


def _fmt(value, ci=None, scale=1.0):
    if value is None:
        return "–"
    text = f"{value * scale:.2f}"
    if ci:
        text += f" [{ci[0] * scale:.2f}, {ci[1] * scale:.2f}]"
    return text


def summary_table(results: dict, names: list[str], run_records: dict) -> str:
    rows = ["| variant | pairs | alpha | CrowS % stereo [95% CI] | StereoSet SS [95% CI] | LMS | ICAT | WikiText-2 PPL |",
            "|---|---|---|---|---|---|---|---|"]
    for name in names:
        h = headline(results, name)
        record = run_records.get(name, {})
        pairs = record.get("calibration", {}).get("mode", "–")
        alpha = record.get("arguments", {}).get("alpha", "–")
        rows.append(f"| {name} | {pairs} | {alpha} | {_fmt(h['crows_pct_stereotype'], h['crows_ci'], 100)} | "
                    f"{_fmt(h['stereoset_ss'], h['stereoset_ss_ci'])} | {_fmt(h['stereoset_lms'])} | "
                    f"{_fmt(h['stereoset_icat'])} | {_fmt(h['ppl'])} |")
    return "\n".join(rows)


def sweep_plot(results: dict, sweep_names: dict[float, str], out: Path) -> str | None:
    """Bias (CrowS % stereotype, StereoSet SS) against perplexity over the alpha sweep."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(a, headline(results, n)) for a, n in sorted(sweep_names.items())]
    points = [(a, h) for a, h in points if h["ppl"] is not None]
    if len(points) < 2:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label, scale in ((axes[0], "crows_pct_stereotype", "CrowS-Pairs % stereotype", 100),
                                  (axes[1], "stereoset_ss", "StereoSet SS", 1)):
        xs = [h["ppl"] for _, h in points if h[key] is not None]
        ys = [h[key] * scale for _, h in points if h[key] is not None]
        ax.plot(xs, ys, "o-")
        for (a, h) in points:
            if h[key] is not None:
                ax.annotate(f"α={a:g}", (h["ppl"], h[key] * scale), textcoords="offset points", xytext=(4, 4))
        ax.axhline(50, color="grey", lw=0.8, ls=":")  # unbiased: 50 % for both scores
        ax.set_xlabel("WikiText-2 perplexity")
        ax.set_ylabel(label)
    fig.suptitle("Fair-GPTQ alpha sweep (strategy all); α=0 is plain GPTQ")
    fig.tight_layout()
    path = out / "alpha_sweep.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path.name


def write_summary(variants, results, args, out: Path, models_dir: Path) -> None:
    records = {}
    for name in variants:
        run_file = models_dir / name / "fair_gptq_run.json"
        if run_file.is_file():
            records[name] = json.loads(run_file.read_text())
    sweep_names = {0.0: "gptq"}
    for name, extra in variants.items():
        if extra and name.startswith("fair-all") and "--pairs" not in extra:
            sweep_names[float(extra[extra.index("--alpha") + 1])] = name
    plot = sweep_plot(results, sweep_names, out)
    controls = [n for n in ("fp", "gptq", "fair-all", "ctrl-unrelated", "ctrl-shuffled", "ctrl-file") if n in variants]
    lines = [
        f"# Fair-GPTQ experiments: {args.model}",
        "",
        f"Command: `{' '.join([Path(sys.executable).name] + sys.argv)}`  ",
        f"Date: {time.strftime('%Y-%m-%d')}  ",
        f"Versions: {json.dumps(next(iter(records.values()), {}).get('versions', {}))}",
        "",
        f"Calibration: {args.pairs} pairs from the `calib` half of StereoSet dev; StereoSet scores on the "
        f"held-out `eval` half. CrowS % stereotype: ideal 50; SS: ideal 50; LMS and ICAT: ideal 100.",
        "",
        "## All variants",
        "",
        summary_table(results, list(variants), records),
        "",
        "## Controls",
        "",
        "Only the calibration pairs differ. If `stereo-anti` helps because of the bias direction its pairs carry, "
        "it should move the bias scores more than `unrelated` and `shuffled`, at similar perplexity.",
        "",
        summary_table(results, controls, records),
        "",
    ]
    if plot:
        lines += ["## Alpha sweep", "", f"![bias vs perplexity]({plot})", ""]
    lines += ["Per-task details with paired-bootstrap differences against `fp`: [eval/report.md](eval/report.md); "
              "against plain GPTQ: [eval-vs-gptq/report.md](eval-vs-gptq/report.md).", ""]
    (out / "summary.md").write_text("\n".join(lines), encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(
        {"variants": {n: {"arguments": variants[n], **headline(results, n)} for n in variants}}, indent=2))


def write_vs_gptq_report(out: Path, args) -> None:
    """The same stored runs with plain GPTQ as the baseline: paired differences of every variant against it."""
    from evaluation.report import write_report
    from evaluation.store import load_runs

    loaded = load_runs(out / "eval")
    if "gptq" not in loaded["models"]:
        return
    loaded["models"] = ["gptq"] + [m for m in loaded["models"] if m != "gptq"]
    write_report(loaded, out / "eval-vs-gptq", n_bootstrap=args.bootstrap, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--suite", default="study", choices=["study", "paper", "controls", "all"])
    p.add_argument("--list-jobs", action="store_true", help="study: print one command per variant and stop")
    p.add_argument("--only", default=None, metavar="NAME", help="study: run this variant's job only")
    p.add_argument("--report", action="store_true", help="study: only collect the finished jobs into the report")
    p.add_argument("--stage", default="study", choices=["study", "checkpoint", "pilot", "suite"],
                   help="study: 'study' = the first-stage jobs (quantize, CrowS, StereoSet, WikiText-2, mechanism); "
                        "'checkpoint' = put each variant's checkpoint into --models-dir and check that it is the "
                        "model its committed results were measured on (sanity-check/suite_jobs.py); 'suite' = the offline "
                        "lm-eval tasks (stand-ins for the paper's) on seeded subsets on that checkpoint "
                        "(runs/<variant>/lm_eval.json); 'pilot' = "
                        "quantize into --models-dir and print the perplexity on 4 windows (nothing committed)")
    p.add_argument("--models-dir", default=None,
                   help="study: where quantized models go (default outputs/study-models/<model>; never committed)")
    p.add_argument("--alphas", default=None, help="study: comma-separated alpha grid (default 0.1,0.3,1,3; gemma3-270m "
                                                         "0.3,1,3; quick 1)")
    p.add_argument("--modes", default=None,
                   help="study: calibration modes (default stereo-anti,shuffled,unrelated,stereo-anti-eq; "
                        "gemma3-270m without stereo-anti-eq; also "
                        "direction,direction-random,direction-sign-shuffled,direction-unrelated: the direction term "
                        "and its controls)")
    p.add_argument("--references", default=None,
                   help="study: plain-GPTQ references (default gptq,gptq-3bit,gptq-g-1; gemma3-270m "
                        "gptq,gptq-g-1,gptq-3bit; '' = none)")
    p.add_argument("--erasers", default=None,
                   help="study: debiasing baselines to add (inlp,leace): each fitted on the calib pairs of the "
                        "study's draw and applied to --eraser-bases, with its controls (fitted on unrelated pairs, "
                        "on shuffled labels)")
    p.add_argument("--eraser-bases", default="fp,gptq", help="study: models the erasers go on (default %(default)s)")
    p.add_argument("--mechanism-pairs", type=int, default=0,
                   help="study: held-out pairs for the mechanism measurement (0 = every eval-half pair)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--out", required=True)
    p.add_argument("--quick", action="store_true",
                   help="16 pairs, 100 items, 4 short windows, strategy all only, no extra sweep points (~10 min CPU)")
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--pairs", type=int, default=None, help="calibration pairs (study: 256; paper/controls suites: 32; quick 16)")
    p.add_argument("--pairs-file", default=None, help="pairs for the ctrl-file variant")
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--tasks", default="crows_pairs,stereoset,wikitext2")
    # Scoring every CrowS pair and StereoSet item takes ~15 min per model on 2 CPU cores: the defaults keep the
    # full suite (12 models) within about an hour there; 0 = everything, for a GPU or a longer run.
    p.add_argument("--max-items", type=int, default=None,
                   help="CrowS pairs / StereoSet items per model (study: every item; paper/controls suites: 500; "
                        "quick 100; 0 = all)")
    p.add_argument("--max-windows", type=int, default=None,
                   help="perplexity windows (study: 16; paper/controls suites: 4; quick 4; 0 = all)")
    p.add_argument("--seqlen", type=int, default=None, help="perplexity window (default 2048, quick 512)")
    p.add_argument("--stereoset", default=None)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--force", action="store_true", help="re-quantize models that are already there")
    return p


def study_main(args, argv: list[str]) -> int:
    """The controlled study: list, run one or all jobs, and write the report from whatever is finished."""
    import study_jobs
    from study.report import controls_of, write_study_report
    from study.suite import summary_fields, write_suite_report

    if args.quick:
        args.pairs, args.max_items = args.pairs or 16, args.max_items or 100
        args.max_windows, args.seqlen = args.max_windows or 4, args.seqlen or 512
    args.pairs = args.pairs or 256
    args.max_items = args.max_items or None  # the study's default: every item
    args.max_windows = args.max_windows or 16
    def listed(text):
        return None if text is None else [part.strip() for part in text.split(",") if part.strip()]

    for option, value in ({} if args.quick else study_jobs.MODEL_GRIDS.get(args.model, {})).items():
        if getattr(args, option) is None:
            setattr(args, option, value)
    try:
        variants = study_jobs.study_variants(args.quick, alphas=[float(a) for a in listed(args.alphas) or []],
                                             modes=listed(args.modes), references=listed(args.references))
        if args.erasers:
            variants += study_jobs.eraser_variants(listed(args.erasers), listed(args.eraser_bases))
    except ValueError as exc:
        print(f"reproduce.py: error: {exc}", file=sys.stderr)
        return 2
    names = [v.name for v in variants]
    if args.only and args.only not in names:
        print(f"reproduce.py: error: --only {args.only!r} is not a study variant ({', '.join(names)})", file=sys.stderr)
        return 2
    out = Path(args.out)
    if args.list_jobs:
        for variant in variants:
            stage = [] if args.stage == "study" else ["--stage", args.stage]
            print(study_jobs.job_command(variant, study_jobs.study_arguments(argv) + stage))
        return 0
    models_dir = Path(args.models_dir or ROOT / "outputs" / "study-models" / Path(args.model).name)
    args.grid_argv = study_jobs.study_arguments(argv)  # recorded in each job.json: the command that reruns it
    if not args.report:
        for variant in variants:
            if args.only not in (None, variant.name):
                continue
            if args.stage in ("checkpoint", "pilot", "suite"):
                import suite_jobs

                if variant.kind == "eraser" and args.stage != "suite":  # no checkpoint of its own: its base's
                    message = (f"--stage {args.stage} has nothing to do for eraser variant {variant.name}: its "
                               f"model is its base's (run the stage for {study_jobs.eraser_base(variant).name}) "
                               f"plus an eraser")
                    if args.only == variant.name:
                        print(f"reproduce.py: error: {message}", file=sys.stderr)
                        return 2
                    print(f"[{variant.name}] skipped: {message}", flush=True)
                    continue
                if args.stage == "pilot":
                    suite_jobs.pilot_stage(variant, args, models_dir)
                elif args.stage == "checkpoint":
                    suite_jobs.checkpoint_stage(variant, args, out, models_dir)
                else:
                    suite_jobs.suite_stage(variant, args, out, models_dir)
            else:
                study_jobs.run_job(variant, args, out, models_dir)
        if args.stage != "study":
            return 0  # checkpoints and pilots add nothing to the report; --report rebuilds it
    header = [f"# Fair-GPTQ controlled study: {args.model}", "",
              f"Command (every job, then this report): `python sanity-check/reproduce.py "
              f"{' '.join(study_jobs.study_arguments(argv))}`; add `--report` to rebuild the report alone, "
              f"`--only NAME` to run one variant's job.  ",
              f"Report written: {time.strftime('%Y-%m-%d')}; per-variant dates and versions are in "
              f"`runs/<variant>/job.json` and the per-task files.  ",
              f"Calibration: {args.pairs} pairs per mode from the `calib` half of StereoSet dev (batch size 2, "
              f"strategy all, sum_hessians=1, the family's default modules); evaluation: "
              f"{'every' if not args.max_items else args.max_items} CrowS-Pairs pair(s) and held-out StereoSet item(s), "
              f"{args.max_windows} WikiText-2 window(s) of {args.seqlen or 2048} tokens."]
    others = study_jobs.stored_variants(out, variants)  # finished jobs of other grids in the same folder
    if others:
        header[2] = header[2].replace("Command (every job, then this report)", "Command (this grid's jobs, then "
                                      "this report)")
        header.insert(3, f"Also reported, finished by other grids in this folder (each job's command is in "
                         f"`runs/<variant>/job.json`): {', '.join(v.name for v in others)}.  ")
    variants = variants + others
    keys = {v.name: study_jobs.job_key(v, study_jobs.study_settings(args)) for v in variants}
    current = [v.name for v in variants  # the suite report, like the study's, leaves out stale jobs
               if study_jobs.recorded_job(out / "runs" / v.name).get("key") == keys[v.name]]
    controls = {v.name: [c.name for c in controls_of(v, variants)] for v in variants}
    suite = write_suite_report(out, current, suite_header(args), n_boot=args.bootstrap, seed=args.seed,
                               controls=controls)
    if suite:
        print(f"suite report: {out / 'suite.md'}", flush=True)
    summary = write_study_report(out, variants, header, n_boot=args.bootstrap, seed=args.seed, keys=keys,
                                 model=args.model, variant_fields=summary_fields(suite) if suite else None)
    print(f"study report: {out / 'summary.md'} ({len(summary['variants'])} of {len(variants)} variants finished)",
          flush=True)
    return 0


def suite_header(args) -> list[str]:
    """The head of suite.md: the command, the date, the subsets and what BBQ covers."""
    import suite_jobs

    subsets = ", ".join(f"{task} {size or 'all'}" for task, size in suite_jobs.SUITE_SUBSETS.items())
    return [f"# Fair-GPTQ study, evaluation suite: {args.model}", "",
            f"Command per variant: `python sanity-check/reproduce.py {' '.join(args.grid_argv)} --stage suite "
            f"--only NAME` (needs the variant's first-stage job; its checkpoint comes from the local cache or is "
            f"quantized again and checked); add `--report` to rebuild this report alone.  ",
            f"Report written: {time.strftime('%Y-%m-%d')}; per-variant dates, versions and the checkpoint check are in "
            f"`runs/<variant>/suite_job.json`, `runs/<variant>/checkpoint.json` and `runs/<variant>/lm_eval.json`.  ",
            f"lm-eval 0.4.13 tasks on fixed subsets drawn with seed {args.seed} ({subsets}), zero-shot (TruthfulQA with "
            f"lm-eval's fixed QA primer), scored by the shared-context scorer. BBQ is the shared folder's PARTIAL "
            f"file (6 of 11 categories): its figures cover those categories only. These offline tasks stand in for "
            f"the paper's set (ARC, HellaSwag, XStoryCloze-en are not available offline)."]


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.suite == "study":
        return study_main(args, argv)
    if args.list_jobs or args.only or args.report:
        print("reproduce.py: error: --list-jobs, --only and --report belong to --suite study", file=sys.stderr)
        return 2
    if args.quick:
        args.pairs = args.pairs or 16
        args.max_items = args.max_items or 100
        args.max_windows = args.max_windows or 4
        args.seqlen = args.seqlen or 512
    args.pairs = args.pairs or 32
    args.max_items = 500 if args.max_items is None else (args.max_items or None)
    args.max_windows = 4 if args.max_windows is None else (args.max_windows or None)
    sweep = QUICK_SWEEP if args.quick else SWEEP
    variants = variant_table(args.suite, args.alpha, sweep, args.pairs_file, args.quick)

    from fair_gptq.models import resolve_model
    out = Path(args.out)
    models_dir = out / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    # the main job checks every input first; a dry run of the first quantized variant catches typos at once
    check = subprocess.run([sys.executable, str(ROOT / "example_fair_gptq.py"), "--model", args.model, "--dry-run",
                            "--max-pairs", str(args.pairs)] + (["--stereoset", args.stereoset] if args.stereoset else []),
                           cwd=ROOT, capture_output=True, text=True)
    if check.returncode != 0:
        sys.stderr.write(check.stderr)
        return 2
    paths = {"fp": resolve_model(args.model)}
    for name, extra in variants.items():
        if extra is not None:
            paths[name] = str(quantize_variant(name, extra, args, models_dir))
    code = evaluate(variants, paths, args, out / "eval")
    if code != 0:
        return code
    results = json.loads((out / "eval" / "results.json").read_text())
    write_vs_gptq_report(out, args)
    write_summary(variants, results, args, out, models_dir)
    print(f"summary: {out / 'summary.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
