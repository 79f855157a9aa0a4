"""The controlled study: its variants, one job per variant, and resuming from committed results.

A job quantizes one variant with the main job (a subprocess: fresh memory), evaluates it on every task, measures
the mechanism (study/mechanism.py) and writes, under `<out>/runs/<variant>/`:
    crows_pairs.json  stereoset.json  wikitext2.json   per-task results with per-item scores (evaluation.store)
    mechanism.json                                       ‖QD‖/‖WD‖ on held-out pairs (not for fp)
    quantization.json                                    the main job's fair_gptq_run.json (not for fp)
    job.json                                             written last: the job's settings key, the commit it
                                                         started from, the checkpoint's sha256; "done" marker
A variant whose job.json matches the current settings is skipped entirely: neither quantized nor evaluated,
so a fresh clone resumes from the committed files without any model folder. Models go to `--models-dir`
(never committed).
"""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STUDY_ALPHAS = (0.1, 0.3, 1.0, 3.0)
QUICK_ALPHAS = (1.0,)
# mode name -> (main-job --pairs, --pair-alignment, further main-job arguments)
STUDY_MODES = {
    "stereo-anti": ("stereo-anti", "position", ()),
    "shuffled": ("shuffled", "position", ()),
    "unrelated": ("unrelated", "position", ()),
    "stereo-anti-eq": ("stereo-anti", "equal-length", ()),
    # the direction term (fair_target="direction", rank 1) and its three controls: a random direction of the same
    # weight, pairs whose order is flipped for half of them (the mean cancels), unrelated pairs
    "direction": ("stereo-anti", "position", ("--fair-target", "direction")),
    "direction-random": ("stereo-anti", "position", ("--fair-target", "random-direction")),
    "direction-sign-shuffled": ("sign-shuffled", "position", ("--fair-target", "direction")),
    "direction-unrelated": ("unrelated", "position", ("--fair-target", "direction")),
}
DEFAULT_MODES = ("stereo-anti", "shuffled", "unrelated", "stereo-anti-eq")
# a model's own default grid where its jobs cost more than SmolLM2's (Gemma 3 270M: 32-42 min a job on 2 cores):
# the modes, alphas and references its committed study ran; options given on the command line win
MODEL_GRIDS = {"gemma3-270m": {"modes": "stereo-anti,shuffled,unrelated", "alphas": "0.3,1,3",
                               "references": "gptq,gptq-g-1,gptq-3bit"}}
JOB_FORMAT = "fair_gptq.study.job/1"
TASKS = ("crows_pairs", "stereoset", "wikitext2")


# the debiasing baselines (issue 22): a linear eraser fitted on the calib pairs' final hidden states, applied at the
# lm_head input of FP or plain GPTQ; its controls are the same eraser fitted on unrelated pairs or shuffled labels
ERASER_METHODS = ("inlp", "leace")
ERASER_LABELS = ("stereo-anti", "unrelated", "shuffled-labels")
ERASER_BASES = ("fp", "gptq")


@dataclass(frozen=True)
class Variant:
    name: str
    kind: str  # "fp", "reference" (no pair term), "curve" (a calibration mode at some alpha) or "eraser"
    mode: str | None = None
    pairs: str = "stereo-anti"
    pair_alignment: str = "position"
    alpha: float = 0.0
    bits: int = 4
    group_size: int = 128
    extra: tuple[str, ...] = field(default=())
    # eraser variants only (left out of a variant's record at these defaults: earlier jobs keep their keys)
    eraser: str | None = None  # inlp | leace
    eraser_labels: str = "stereo-anti"
    base: str = "fp"  # the model the eraser is fitted on and applied to: fp or gptq

    def quantize_arguments(self) -> list[str]:
        return ["--alpha", f"{self.alpha:g}", "--bits", str(self.bits), "--group-size", str(self.group_size),
                "--pairs", self.pairs, "--pair-alignment", self.pair_alignment, "--strategy", "all",
                "--sum-hessians", "1", *self.extra]


REFERENCES = {"gptq": {}, "gptq-3bit": {"bits": 3}, "gptq-g-1": {"group_size": -1}}


def study_variants(quick: bool = False, alphas=None, modes=None, references=None) -> list[Variant]:
    """In the order the jobs run: references first, then the curves interleaved by alpha (alpha 1 first, then
    from the largest down), so that a partial run already answers the question at the alphas it reached.

    `alphas`, `modes` and `references` select a reduced grid (e.g. a replication on another model)."""
    alphas = tuple(alphas) if alphas else (QUICK_ALPHAS if quick else STUDY_ALPHAS)
    modes = tuple(modes) if modes else DEFAULT_MODES
    references = tuple(references) if references is not None else tuple(REFERENCES)
    unknown = [m for m in modes if m not in STUDY_MODES] + [r for r in references if r not in REFERENCES]
    if unknown:
        raise ValueError(f"unknown study mode/reference {', '.join(unknown)} (modes: {', '.join(STUDY_MODES)}; "
                         f"references: {', '.join(REFERENCES)})")
    variants = [Variant("fp", "fp")] + [Variant(name, "reference", **REFERENCES[name]) for name in references]
    for alpha in sorted(alphas, key=lambda a: (a != 1.0, -a)):
        for mode in modes:
            pairs, alignment, extra = STUDY_MODES[mode]
            variants.append(Variant(f"{mode}-a{alpha:g}", "curve", mode=mode, pairs=pairs, pair_alignment=alignment,
                                    alpha=alpha, extra=extra))
    return variants


_ERASER_DEFAULTS = {"eraser": None, "eraser_labels": "stereo-anti", "base": "fp"}


def variant_record(variant: Variant) -> dict:
    """The variant as job.json records it and job_key hashes it; the eraser fields only where they are set."""
    record = asdict(variant)
    return {k: v for k, v in record.items() if k not in _ERASER_DEFAULTS or v != _ERASER_DEFAULTS[k]}


def eraser_variants(methods=ERASER_METHODS, bases=ERASER_BASES, labels=ERASER_LABELS) -> list[Variant]:
    """`inlp-fp`, `leace-gptq`, ...; the controls add their labels: `inlp-fp-unrelated`, `leace-fp-shuffled-labels`.

    The mode is the method for the stereotype labels and method-labels for a control, so the report can put each
    method beside its controls."""
    unknown = [m for m in methods if m not in ERASER_METHODS] + [b for b in bases if b not in ERASER_BASES]
    if unknown:
        raise ValueError(f"unknown eraser method/base {', '.join(unknown)} (methods: {', '.join(ERASER_METHODS)}; "
                         f"bases: {', '.join(ERASER_BASES)})")
    variants = []
    for base in bases:
        for method in methods:
            for label in labels:
                suffix = "" if label == "stereo-anti" else f"-{label}"
                variants.append(Variant(f"{method}-{base}{suffix}", "eraser", mode=f"{method}{suffix}", eraser=method,
                                        eraser_labels=label, base=base))
    return variants


def stored_variants(out: Path, known: list[Variant]) -> list[Variant]:
    """The variants of finished jobs under `out/runs/` that `known` does not list (e.g. another grid's, run with
    other --modes/--alphas into the same folder), rebuilt from their job.json, so one report covers them all."""
    names, found = {v.name for v in known}, []
    for job_file in sorted((out / "runs").glob("*/job.json")):
        if job_file.parent.name in names:
            continue
        stored = recorded_job(job_file.parent).get("variant")
        if stored:
            found.append(Variant(**{**stored, "extra": tuple(stored.get("extra", ()))}))
    return found


def job_key(variant: Variant, settings: dict) -> str:
    """Everything that changes a variant's results; a stored job is reused only when its key is the same."""
    payload = json.dumps({"variant": variant_record(variant), "settings": settings}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def study_settings(args) -> dict:
    return {"model": args.model, "pairs": args.pairs, "seed": args.seed, "batch_size": 2,
            "max_windows": args.max_windows, "seqlen": args.seqlen, "max_items": args.max_items,
            "mechanism_pairs": args.mechanism_pairs, "stereoset": args.stereoset, "tasks": list(TASKS)}


def expected_files(variant: Variant) -> list[str]:
    files = [f"{task}.json" for task in TASKS]
    if variant.kind == "eraser":
        return files + ["eraser.json"]
    return files if variant.kind == "fp" else files + ["mechanism.json", "quantization.json"]


def job_done(run_dir: Path, variant: Variant, key: str) -> bool:
    marker = run_dir / "job.json"
    try:
        job = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return job.get("key") == key and all((run_dir / f).is_file() for f in expected_files(variant))


def study_arguments(argv: list[str]) -> list[str]:
    """`argv` without the options that pick what to do (--only NAME, --stage NAME, --list-jobs, --report): the
    arguments that define the study, so a report can name the command that reproduces all of it."""
    kept, skip_next = [], False
    for word in argv:
        if skip_next:
            skip_next = False
        elif word in ("--only", "--stage"):
            skip_next = True
        elif word not in ("--list-jobs", "--report") and not word.startswith(("--only=", "--stage=")):
            kept.append(word)
    return kept


def job_command(variant: Variant, argv_passthrough: list[str]) -> str:
    """A shell command for one job, runnable from the repository root by the same interpreter."""
    words = [sys.executable, "sanity-check/reproduce.py", *argv_passthrough, "--only", variant.name]
    return " ".join(shlex.quote(w) for w in words)


def study_command(variant: Variant, grid_argv: list[str] | None) -> str | None:
    """The interpreter-independent command that reruns one variant's job (for job.json and the report)."""
    if grid_argv is None:
        return None
    return " ".join(shlex.quote(w) for w in ["python", "sanity-check/reproduce.py", *grid_argv, "--only",
                                              variant.name])


# ----------------------------------------------------------------------------- one job


# main-job arguments that do not change the model
_OUTPUT_ONLY = {"out", "overwrite", "verbose", "dry_run", "prompt", "max_new_tokens", "no_generate", "push_to_hub"}


def _main_job_module():
    """example_fair_gptq, imported from the repository root (this file lives in sanity-check/)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import example_fair_gptq

    return example_fair_gptq


def stale_model_arguments(out: Path, job_args: list[str]) -> list[str]:
    """The main-job arguments whose recorded value in `out/fair_gptq_run.json` differs from `job_args`'s.

    An argument the record lacks was added to the main job later; it counts at its default, which keeps the
    earlier behaviour (new options default off)."""
    parser = _main_job_module().build_parser()
    wanted, defaults = vars(parser.parse_args(job_args)), vars(parser.parse_args(["--model", "x"]))
    recorded = json.loads((out / "fair_gptq_run.json").read_text()).get("arguments", {})
    recorded = {k: recorded.get(k, defaults.get(k)) for k in wanted}
    return [f"{k}: {recorded[k]!r} -> {v!r}" for k, v in sorted(wanted.items())
            if k not in _OUTPUT_ONLY and recorded[k] != v]


def run_main_job(name: str, out: Path, extra: list[str], args, force: bool = False) -> Path:
    """The main job in a subprocess (fresh memory each time); a finished model folder is reused unless `force`.

    The main job keeps its own logs (GPTQModel's gptq_log_*.log included) in `<out>.logs/`."""
    job_args = ["--model", args.model, "--out", str(out), "--overwrite", "--no-generate", "--max-pairs",
                str(args.pairs), "--batch-size", "2", "--seed", str(args.seed), "--device", args.device,
                "--log-delta-w", *extra]
    if args.stereoset:
        job_args += ["--stereoset", args.stereoset]
    if (out / "fair_gptq_run.json").is_file() and not force:
        stale = stale_model_arguments(out, job_args)
        if not stale:
            print(f"[{name}] reusing {out}", flush=True)
            return out
        print(f"[{name}] {out} was quantized with other settings ({', '.join(stale)}): quantizing again", flush=True)
    command = [sys.executable, str(ROOT / "example_fair_gptq.py"), *job_args]
    print(f"[{name}] quantizing: {' '.join(extra)}", flush=True)
    started = time.time()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
        raise SystemExit(f"[{name}] quantization failed (exit {done.returncode})")
    print(f"[{name}] quantized in {time.time() - started:.0f} s", flush=True)
    return out


def evaluate(variant: Variant, model_path: str, args, out: Path, eraser: Path | None = None) -> None:
    """Every task of one model through evaluation.run_eval (stored per task, reused when settings match)."""
    from evaluation import run_eval

    argv = ["--out", str(out), "--model", f"{variant.name}={model_path}", "--tasks", ",".join(TASKS),
            "--device", args.device, "--seed", str(args.seed), "--no-progress"]
    if eraser is not None:
        argv += ["--eraser", f"{variant.name}={eraser}"]
    for flag, value in (("--max-items", args.max_items), ("--max-windows", args.max_windows),
                        ("--seqlen", args.seqlen), ("--stereoset", args.stereoset)):
        if value is not None:
            argv += [flag, str(value)]
    eval_args = run_eval.build_parser().parse_args(argv)
    plan = run_eval.make_plan(eval_args)
    name, path = plan.models[0]
    run_eval.evaluate_model(name, path, plan, eval_args, out)


def eraser_base(variant: Variant) -> Variant:
    """The variant whose model an eraser variant is fitted on and applied to: `fp` or the `gptq` reference."""
    return Variant("fp", "fp") if variant.base == "fp" else Variant("gptq", "reference", **REFERENCES["gptq"])


def base_model(variant: Variant, args, models_dir: Path) -> str:
    """The folder of the model an eraser variant is fitted on and applied to: FP, or the cached plain GPTQ
    checkpoint (the `gptq` reference's, quantized when missing)."""
    import suite_jobs

    return suite_jobs.ensure_checkpoint(eraser_base(variant), args, models_dir)


def fit_variant_eraser(variant: Variant, model_path: str, args, models_dir: Path) -> Path:
    """Fit (or reuse) the variant's eraser on the calib pairs of the study's draw (--pairs, --seed): the same
    sentences the quantizer calibrates on, never an evaluated item. Reused only for the very same model files."""
    from evaluation import fit_eraser
    from evaluation.models import model_fingerprint

    path = models_dir / "erasers" / f"{variant.name}.pt"
    try:
        stored = json.loads(Path(f"{path}.json").read_text())
    except (OSError, ValueError):
        stored = {}
    fitting = stored.get("fitting", {})
    if path.is_file() and stored.get("model", {}).get("fingerprint") == model_fingerprint(model_path) and \
            stored.get("kind") == variant.eraser and fitting.get("label_mode") == variant.eraser_labels \
            and fitting.get("pairs", {}).get("n_pairs") == args.pairs and fitting.get("pairs", {}).get("seed") == \
            args.seed and fitting.get("pairs", {}).get("split", {}).get("part") == "calib":
        print(f"[{variant.name}] reusing eraser {path}", flush=True)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    argv = ["--model", model_path, "--method", variant.eraser, "--labels", variant.eraser_labels, "--out", str(path),
            "--overwrite", "--max-pairs", str(args.pairs), "--seed", str(args.seed), "--device", args.device]
    if args.stereoset:
        argv += ["--stereoset", args.stereoset]
    print(f"[{variant.name}] fitting {variant.eraser} ({variant.eraser_labels}) on {Path(model_path).name}", flush=True)
    if fit_eraser.main(argv) != 0:
        raise SystemExit(f"[{variant.name}] fitting the eraser failed")
    return path


def heldout_pairs(args) -> list[tuple[str, str]]:
    """Stereotype/anti-stereotype pairs of the `eval` half: never calibrated on by any variant."""
    from fair_gptq.pairs import calibration_pairs

    pairs = calibration_pairs(args.stereoset, "stereo-anti", part="eval", max_pairs=args.mechanism_pairs or None,
                              seed=args.seed)
    return pairs.pairs


def mechanism_current(path: Path, key: str, fingerprint: str) -> bool:
    """A stored mechanism.json is reused only for the same job settings and the very same model files."""
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return stored.get("job_key") == key and stored.get("model_fingerprint") == fingerprint


def measure_mechanism(variant: Variant, model_path: Path, fp_path: str, modules: list[str], args) -> dict:
    from study import mechanism
    from evaluation.models import load_model

    fp = load_model(fp_path, name="fp", device=args.device)
    quantized = load_model(str(model_path), name=variant.name, device=args.device)
    pairs = heldout_pairs(args)
    started = time.time()
    result = mechanism.measure(fp.model, fp.tokenizer, quantized.model, modules, pairs, progress=False)
    from fair_gptq.pairs import sentences_sha256

    result["pairs_sha256"] = sentences_sha256([s for pair in pairs for s in pair])
    result["seconds"] = round(time.time() - started, 1)
    return result


def planned_term_modules(args) -> list[str]:
    """The module list of a fair run with the study's settings, from the main job's --dry-run plan logic."""
    example_fair_gptq = _main_job_module()
    parser = example_fair_gptq.build_parser()
    argv = ["--model", args.model, "--dry-run", "--alpha", "1", "--max-pairs", "2"]
    if args.stereoset:
        argv += ["--stereoset", args.stereoset]
    plan = example_fair_gptq.plan_run(parser.parse_args(argv))
    return [m["module"] for m in plan.modules if m["fair_term"]]


def code_revision() -> str | None:
    """The git commit the job starts from (provenance of committed results), "+dirty" when tracked files differ."""
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0 or not done.stdout.strip():
        return None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return done.stdout.strip() + ("+dirty" if dirty else "")


def checkpoint_sha256(model_path: Path) -> str:
    """sha256 of a checkpoint's weights (its *.safetensors files, by name and content, in name order).

    The other files carry run ids and timings that differ between two identical quantizations."""
    digest = hashlib.sha256()
    files = sorted(Path(model_path).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_path} holds no *.safetensors weights")
    for file in files:
        digest.update(file.name.encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()


def recorded_job(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "job.json").read_text())
    except (OSError, ValueError):
        return {}


def checkpoint_record(run_dir: Path, model_path: Path) -> dict:
    """The checkpoint's digest, and whether it differs from the one an earlier job of this variant recorded."""
    digest = checkpoint_sha256(model_path)
    previous = recorded_job(run_dir).get("checkpoint_sha256")
    record = {"checkpoint_sha256": digest}
    if previous and previous != digest:
        print(f"[{run_dir.name}] WARNING: this checkpoint (sha256 {digest[:12]}) differs from the one the earlier "
              f"results of this variant were measured on ({previous[:12]}): a re-quantization gave other weights",
              flush=True)
        record["previous_checkpoint_sha256"] = previous
    return record


def run_job(variant: Variant, args, out: Path, models_dir: Path) -> bool:
    """Run one variant's job unless its committed results are complete; True when it ran."""
    from evaluation.models import model_fingerprint
    from evaluation.store import write_json_atomic
    from fair_gptq import machine
    from fair_gptq.models import resolve_model
    from fair_gptq.paths import portable_record

    run_dir = out / "runs" / variant.name
    key = job_key(variant, study_settings(args))
    if job_done(run_dir, variant, key):
        print(f"[{variant.name}] complete ({run_dir}); skipped", flush=True)
        return False
    started, revision, checkpoint = time.time(), code_revision(), {}
    fp_path = resolve_model(args.model)
    if variant.kind == "fp":
        evaluate(variant, fp_path, args, out)
    elif variant.kind == "eraser":
        model_path = base_model(variant, args, models_dir)
        if variant.base != "fp":  # is the cached base the model the base's committed results were measured on?
            import suite_jobs

            base = suite_jobs.checkpoint_stage(eraser_base(variant), args, out, models_dir)
            checkpoint = {"base_checkpoint_sha256": checkpoint_sha256(Path(model_path)), "base_check": base["check"]}
            if not base["check"]["match"]:
                print(f"[{variant.name}] WARNING: the cached gptq base is a re-quantization that is not the model of "
                      f"runs/gptq/: the report marks this variant", flush=True)
        eraser = fit_variant_eraser(variant, model_path, args, models_dir)
        evaluate(variant, model_path, args, out, eraser=eraser)
        write_json_atomic(run_dir / "eraser.json", portable_record(json.loads(Path(f"{eraser}.json").read_text())))
    else:
        model_path = run_main_job(variant.name, models_dir / variant.name, variant.quantize_arguments(), args,
                                  force=args.force)
        checkpoint = checkpoint_record(run_dir, model_path)
        evaluate(variant, str(model_path), args, out)
        fingerprint = model_fingerprint(str(model_path))
        if not mechanism_current(run_dir / "mechanism.json", key, fingerprint) or args.force:
            result = measure_mechanism(variant, model_path, fp_path, planned_term_modules(args), args)
            result.update(job_key=key, model_fingerprint=fingerprint)
            write_json_atomic(run_dir / "mechanism.json", result)
            print(f"[{variant.name}] mechanism: ‖QD‖/‖WD‖ = {result['overall']['ratio_all']:.4f} "
                  f"(equal-length pairs {result['overall']['ratio_equal']:.4f})", flush=True)
        record = json.loads((model_path / "fair_gptq_run.json").read_text())
        write_json_atomic(run_dir / "quantization.json", portable_record(record))
    write_json_atomic(run_dir / "job.json", portable_record(
        {"format": JOB_FORMAT, "key": key, "variant": variant_record(variant), "settings": study_settings(args),
         "command": study_command(variant, getattr(args, "grid_argv", None)), "machine": machine.machine_record(),
         "code_revision": revision, **checkpoint, "seconds": round(time.time() - started),
         "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
    print(f"[{variant.name}] job done in {time.time() - started:.0f} s", flush=True)
    return True
