"""The study's second stage: lm-eval tasks on every variant's own checkpoint (offline stand-ins for the paper's suite).

A variant's first-stage job (study_jobs.py) measured CrowS-Pairs, StereoSet, WikiText-2 and the mechanism on one
checkpoint. This stage adds lm-evaluation-harness tasks to the same variant, on the same checkpoint where the cache
still holds it (a missing one is quantized again and checked, below). The tasks are the shared folder's offline
ones: PIQA, OpenBookQA, TruthfulQA mc2 from the paper's list, BoolQ and Social IQa in place of the ARC, HellaSwag
and XStoryCloze-en that cannot be had offline, and the bias tasks Winogender and BBQ (partial):

1. the checkpoint comes from the local cache (`--models-dir`); when it is missing it is quantized again with the
   variant's arguments, and then it must be shown to be the same model: by its weights' sha256 where the first
   stage recorded one, else by re-scoring WikiText-2 window 0 and comparing with the committed window NLL.
   An eraser variant's eraser, refitted when the cache lost it, must pass too: by its file's sha256, else (a
   refit stores its time of fitting, so its sha256 always differs) by window 0 scored with it applied.
   A checkpoint that differs is reported in the run's `suite_job.json` and in the report, never used silently;
2. each task is scored on a fixed item subset (seeded; the same items for every variant; sizes below, sha256 of
   the index list recorded) through evaluation/run_eval.py, and stored as `runs/<variant>/lm_eval.json`.

Subset sizes, chosen by precision: an accuracy near 0.5 on n items has a 95 % interval of about ±1.96·√(0.25/n),
±3.1 points at n = 1,000 and ±4.4 at n = 500; paired differences between variants on the same items are tighter.
Tasks smaller than their size run whole.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import study_jobs
from study.suite import ZEROSHOT_TASKS  # noqa: F401 - the suite's zero-shot tasks, for callers


# task -> items scored per variant (the minimum; None = every item)
SUITE_SUBSETS = {"piqa": 1000, "openbookqa": 500, "social_iqa": 1000, "boolq": 500, "truthfulqa_mc2": None,
                 "winogender_all": None, "bbq": 2000}
SUITE_TASKS = tuple(SUITE_SUBSETS)
SUITE_FORMAT = "fair_gptq.study.suite_job/1"
SUITE_BATCH_SIZE = 16  # lm-eval requests per forward batch (the shared-context scorer packs choices of one context)
WINDOW_NLL_RTOL = 1e-5  # the same code on the same weights reproduces a window's NLL to float32 rounding


def first_windows(model_path: str, name: str, args, windows: int, seqlen: int | None = None,
                  eraser: Path | None = None) -> dict:
    """The WikiText-2 run on the first `windows` windows (of `seqlen` tokens, default the study's), scored by the
    evaluation instrument itself into a scratch folder (nothing is stored); with `eraser` applied when given."""
    from evaluation import run_eval

    seqlen = seqlen or args.seqlen
    with tempfile.TemporaryDirectory(prefix="fair_gptq_windows_") as scratch:
        argv = ["--out", scratch, "--model", f"{name}={model_path}", "--tasks", "wikitext2", "--max-windows",
                str(windows), "--device", args.device, "--seed", str(args.seed), "--no-progress"]
        if seqlen:
            argv += ["--seqlen", str(seqlen)]
        if eraser is not None:
            argv += ["--eraser", f"{name}={eraser}"]
        eval_args = run_eval.build_parser().parse_args(argv)
        plan = run_eval.make_plan(eval_args)
        return run_eval.evaluate_model(name, plan.models[0][1], plan, eval_args, Path(scratch))["wikitext2"]


def window0_nll(model_path: str, name: str, args, seqlen: int | None = None, eraser: Path | None = None) -> float:
    return float(first_windows(model_path, name, args, 1, seqlen, eraser)["per_item"]["window_nll"][0])


def committed_window0(run_dir: Path) -> tuple[float, int | None]:
    """The committed first-stage run's WikiText-2 window-0 NLL and the window length it used (whatever this
    invocation's flags say: --quick would differ)."""
    committed_run = json.loads((run_dir / "wikitext2.json").read_text())
    return committed_run["per_item"]["window_nll"][0], committed_run.get("settings", {}).get("seqlen")


def same_window_nll(now: float, committed: float) -> bool:
    return abs(now - committed) <= WINDOW_NLL_RTOL * abs(committed)


def pilot_stage(variant, args, models_dir: Path, windows: int = 4) -> float:
    """Quantize into the cache (reused by the variant's study job) and print the perplexity on the first
    `windows` WikiText-2 windows: a cheap look at where an alpha sits before its full job is run."""
    model_path = ensure_checkpoint(variant, args, models_dir)
    ppl = float(first_windows(model_path, variant.name, args, windows)["metrics"]["ppl"])
    print(f"[{variant.name}] pilot: perplexity {ppl:.2f} on the first {windows} WikiText-2 windows", flush=True)
    return ppl


def verify_checkpoint(variant, model_path: str, args, run_dir: Path) -> dict:
    """Is `model_path` the model the committed first-stage results of `variant` were measured on?"""
    job = study_jobs.recorded_job(run_dir)
    if variant.kind != "fp" and job.get("checkpoint_sha256"):
        digest = study_jobs.checkpoint_sha256(Path(model_path))
        return {"method": "weights sha256", "recorded": job["checkpoint_sha256"], "now": digest,
                "match": digest == job["checkpoint_sha256"]}
    committed, seqlen = committed_window0(run_dir)
    now = window0_nll(model_path, variant.name, args, seqlen)
    return {"method": "WikiText-2 window 0 NLL", "recorded": committed, "now": now,
            "match": same_window_nll(now, committed)}


def ensure_checkpoint(variant, args, models_dir: Path) -> str:
    """The variant's model folder: the preset for fp, else the cached quantization (quantized when missing)."""
    from fair_gptq.models import resolve_model

    if variant.kind == "fp":
        return resolve_model(args.model)
    return str(study_jobs.run_main_job(variant.name, models_dir / variant.name, variant.quantize_arguments(), args))


def run_checkpoint_job(variant, model_path: str, args, out: Path) -> dict:
    """Check that the cached checkpoint is the committed results' model; returns the check."""
    run_dir = out / "runs" / variant.name
    if not (run_dir / "job.json").is_file():
        raise SystemExit(f"[{variant.name}] no first-stage job in {run_dir}: run the study job first")
    check = verify_checkpoint(variant, model_path, args, run_dir)
    verdict = "the committed results' model" if check["match"] else "NOT the committed results' model"
    print(f"[{variant.name}] checkpoint check ({check['method']}): {check['recorded']} vs {check['now']}: {verdict}",
          flush=True)
    return {"model_path": model_path, "check": check}


def checkpoint_stage(variant, args, out: Path, models_dir: Path) -> dict:
    """Run (or reuse) the checkpoint check; stored as `runs/<variant>/checkpoint.json`."""
    from evaluation.models import model_fingerprint
    from evaluation.store import write_json_atomic
    from fair_gptq import machine
    from fair_gptq.paths import portable_record

    stored_path = out / "runs" / variant.name / "checkpoint.json"
    try:
        stored = json.loads(stored_path.read_text())
    except (OSError, ValueError):
        stored = {}
    started, revision = time.time(), study_jobs.code_revision()
    # the cached folder (quantized only when missing); the stored check holds while its files are unchanged
    model_path = ensure_checkpoint(variant, args, models_dir)
    fingerprint = model_fingerprint(model_path)
    if stored.get("model_fingerprint") == fingerprint:
        return {**stored, "model_path": model_path}
    done = run_checkpoint_job(variant, model_path, args, out)
    record = {"format": SUITE_FORMAT, "variant": variant.name, "code_revision": revision,
              "model_path": done["model_path"], "model_fingerprint": fingerprint,
              "check": done["check"], "machine": machine.machine_record(), "seconds": round(time.time() - started),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if variant.kind != "fp":
        record["checkpoint_sha256"] = study_jobs.checkpoint_sha256(Path(done["model_path"]))
    write_json_atomic(stored_path, portable_record(record))
    return record  # model_path absolute here; portable on disk


def eraser_check(variant, eraser_sha256: str, base_check: dict, out: Path, window0_with_eraser=None,
                 base_sha256: str | None = None) -> dict:
    """An eraser variant's model check: is base + eraser the model its first-stage results were measured on?
    The base: the variant's own job recorded its base's weights sha256 (a gptq base may have been quantized
    again before that job, so `runs/gptq/` is not the reference), compared with `base_sha256`; jobs without it
    fall back to the base's own check. The eraser: its file's sha256. A refit writes its time of fitting into
    the file, so even an identical projection gives another sha256; then, given `window0_with_eraser` (seqlen ->
    window-0 NLL of the base with the refit applied), base and refit pass together when they reproduce the
    committed variant's window-0 NLL, as a re-quantized checkpoint does."""
    run_dir = out / "runs" / variant.name
    try:
        recorded = json.loads((run_dir / "crows_pairs.json").read_text())["settings"]["eraser"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        raise SystemExit(f"[{variant.name}] {run_dir / 'crows_pairs.json'} records no eraser: run the variant's "
                         "study job first")
    job_base = study_jobs.recorded_job(run_dir).get("base_checkpoint_sha256")
    if job_base and base_sha256:
        base = {"method": "base weights sha256 (the eraser job's)", "recorded": job_base, "now": base_sha256,
                "match": base_sha256 == job_base}
    else:
        base = base_check
    if eraser_sha256 == recorded or window0_with_eraser is None:
        return {"method": f"{base['method']}; eraser sha256",
                "recorded": [base["recorded"], recorded], "now": [base["now"], eraser_sha256],
                "match": bool(base["match"]) and eraser_sha256 == recorded}
    committed, seqlen = committed_window0(run_dir)
    now = window0_with_eraser(seqlen)
    return {"method": "refitted eraser (other sha256) on the base: WikiText-2 window 0 NLL with it applied",
            "recorded": committed, "now": now, "base_check": base,
            "eraser_sha256": {"recorded": recorded, "now": eraser_sha256},
            "match": same_window_nll(now, committed)}


def subset_spec() -> str:
    """SUITE_SUBSETS as run_eval's --lm-eval-subset."""
    return ",".join(f"{task}={size or 'all'}" for task, size in SUITE_SUBSETS.items())


def suite_stage(variant, args, out: Path, models_dir: Path) -> dict:
    """The variant's lm-eval suite on its checkpoint: `runs/<variant>/lm_eval.json` (per-item records included)
    and `runs/<variant>/suite_job.json` (which checkpoint, whether it is the first stage's model, time, command)."""
    from evaluation import run_eval
    from evaluation.data import sha256_file
    from evaluation.store import write_json_atomic
    from fair_gptq import machine
    from fair_gptq.paths import portable_record

    started, revision = time.time(), study_jobs.code_revision()
    eraser = eraser_sha256 = None
    if variant.kind == "eraser":  # the base's checkpoint, checked like any other, plus the variant's eraser
        checkpoint = checkpoint_stage(study_jobs.eraser_base(variant), args, out, models_dir)
        eraser = study_jobs.fit_variant_eraser(variant, checkpoint["model_path"], args, models_dir)
        eraser_sha256 = sha256_file(eraser)
        base_path = checkpoint["model_path"]

        def window0_with_eraser(seqlen):
            return window0_nll(base_path, variant.name, args, seqlen, eraser)
        checkpoint = {**checkpoint, "check": eraser_check(variant, eraser_sha256, checkpoint["check"], out,
                                                          window0_with_eraser, checkpoint.get("checkpoint_sha256"))}
    else:
        checkpoint = checkpoint_stage(variant, args, out, models_dir)
    if not checkpoint["check"]["match"]:
        print(f"[{variant.name}] WARNING: the suite runs on a model that is not the first stage's "
              f"({checkpoint['check']['method']}: {checkpoint['check']['recorded']} vs {checkpoint['check']['now']}); "
              f"the report marks this variant", flush=True)
    model_path = checkpoint["model_path"]
    argv = ["--out", str(out), "--model", f"{variant.name}={model_path}", "--tasks", "lm_eval", "--lm-eval-tasks",
            ",".join(SUITE_TASKS), "--lm-eval-subset", subset_spec(), "--device", args.device, "--seed",
            str(args.seed), "--batch-size", str(SUITE_BATCH_SIZE)]
    if eraser is not None:
        argv += ["--eraser", f"{variant.name}={eraser}"]
    eval_args = run_eval.build_parser().parse_args(argv)
    plan = run_eval.make_plan(eval_args)
    name, path = plan.models[0]
    run_eval.evaluate_model(name, path, plan, eval_args, out)
    record = {"format": SUITE_FORMAT, "variant": variant.name, "code_revision": revision,
              "command": (study_jobs.study_command(variant, getattr(args, "grid_argv", None)) or "")
              + " --stage suite",
              "tasks": list(SUITE_TASKS), "subsets": dict(SUITE_SUBSETS), "model_path": model_path,
              **({"eraser": {"file": eraser.name, "sha256": eraser_sha256}} if eraser is not None else {}),
              "checkpoint_check": checkpoint["check"], "machine": machine.machine_record(),
              "seconds": round(time.time() - started),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_json_atomic(out / "runs" / variant.name / "suite_job.json", portable_record(record))
    print(f"[{variant.name}] suite done in {time.time() - started:.0f} s", flush=True)
    return record
