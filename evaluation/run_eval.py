#!/usr/bin/env python
"""Evaluate full-precision, GPTQ and Fair-GPTQ checkpoints on bias and perplexity benchmarks.

Example (from the repository root)::

    python evaluation/run_eval.py --model fp=smollm2-135m --model gptq=out/gptq --model fair=out/fair \\
        --tasks crows_pairs,stereoset,wikitext2 --out results/smollm2

Tasks: ``crows_pairs`` (lm-eval ``crows_pairs_english`` scoring), ``stereoset`` (bias-bench
intrasentence SS/LMS/ICAT; by default the "eval" half of a dev file, whose "calib" half
calibrates Fair-GPTQ, or all of a test file), ``wikitext2`` (GPTQ-convention perplexity, or the
paper's protocol with ``--protocol paper``) and ``lm_eval`` (the paper's lm-evaluation-harness
tasks through lm-eval itself, ``requirements-eval.txt``: crows_pairs_english, wikitext and the shared folder's
offline tasks on the local files, the others from the hub when it can be reached; ``--lm-eval-tasks`` chooses
tasks and groups: ``paper``, ``zeroshot-offline``, ``bias-offline``; ``--lm-eval-scorer`` how they are scored)::

    python evaluation/run_eval.py --model fp=smollm2-135m --tasks lm_eval \
        --lm-eval-tasks zeroshot-offline,bias-offline --out results/suite

``--eraser NAME=FILE`` evaluates model NAME with an INLP/LEACE eraser (``evaluation/fit_eraser.py``) applied to
its final hidden states; the eraser (file name, sha256, kind, labels) is part of that model's settings, so a
stored run made without it (or with another) is never reused for it::

    python evaluation/run_eval.py --model fp=smollm2-135m --model fp-inlp=smollm2-135m \\
        --eraser fp-inlp=outputs/erasers/smollm2-inlp.pt --out results/erasure

Every (model, task) result is written as soon as it is done to ``OUT/runs/<model>/<task>.json``
(atomically), with the settings that produced it and the per-item scores; a rerun reuses it
when the settings match (``--force`` recomputes). Inputs are validated before any model is
loaded. At the end ``OUT/results.json``, ``results.csv``, ``report.md`` and PNG plots are written;
the first ``--model`` is the baseline of every comparison.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import gc  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from datetime import datetime, timezone  # noqa: E402

from evaluation.subsets import parse_subset_spec  # noqa: E402

TASKS = ("crows_pairs", "stereoset", "wikitext2", "lm_eval")
SCORING_VERSION = 1  # bump when the engine or a metric changes: stored runs are then recomputed
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class UsageError(ValueError):
    """A bad command line or input; reported as one line before any model is loaded."""


class ModelLoadError(RuntimeError):
    """A checkpoint that passed validation but cannot be loaded (reported as one line)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_eval.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                   help="model to evaluate (repeatable; the first is the baseline). PATH: a preset "
                        "(smollm2-135m), a local folder (full precision or GPTQ) or a hub id")
    p.add_argument("--eraser", action="append", default=[], metavar="NAME=FILE",
                   help="apply an eraser file (evaluation/fit_eraser.py) to model NAME's final hidden states "
                        "(repeatable, one per model)")
    p.add_argument("--tasks", default="crows_pairs,stereoset,wikitext2",
                   help=f"comma-separated, from {', '.join(TASKS)} (default: %(default)s)")
    p.add_argument("--out", required=True, help="results folder")
    p.add_argument("--force", action="store_true", help="recompute runs that are already stored")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: %(default)s)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="model dtype for every model (auto: float32 on CPU, bfloat16/float16 on CUDA)")
    p.add_argument("--gptq-backend", default="auto",
                   help="GPTQModel kernel backend for GPTQ checkpoints "
                        "(auto: torch on CPU, GPTQModel's choice on CUDA)")
    p.add_argument("--batch-size", type=int, default=16, help="sentences per forward pass (default: %(default)s)")
    p.add_argument("--seqlen", type=int, default=None,
                   help="perplexity window in tokens (default 2048 for --protocol gptq, 1024 for paper; "
                        "capped at the model's maximum positions)")
    p.add_argument("--max-windows", type=int, default=None, help="score at most N perplexity windows (quick runs)")
    p.add_argument("--max-items", type=int, default=None,
                   help="score at most N CrowS pairs / StereoSet items / lm-eval docs per task (quick runs)")
    p.add_argument("--crows-pairs", default=None, metavar="PATH|URL", help="CrowS-Pairs CSV")
    p.add_argument("--stereoset", default=None, metavar="PATH", help="StereoSet JSON (dev or test layout)")
    p.add_argument("--stereoset-split", default=None, choices=["calib", "eval", "all"],
                   help="which StereoSet items to evaluate (default: eval for a dev/unknown file, all for test)")
    p.add_argument("--stereoset-split-seed", type=int, default=0,
                   help="seed of the calib/eval split; must match the one used for calibration (default: 0)")
    p.add_argument("--wikitext2", default=None, metavar="PATH",
                   help="WikiText-2 test: joined .txt, rows .jsonl or a folder with either")
    p.add_argument("--protocol", default="gptq", choices=["gptq", "paper"], help="perplexity protocol")
    p.add_argument("--lm-eval-tasks", default=None,
                   help="comma-separated lm-eval tasks and groups: paper (the default), zeroshot-offline "
                        "(piqa, openbookqa, boolq, social_iqa, truthfulqa_mc2), bias-offline (bbq, winogender_*, "
                        "crows_pairs_english)")
    p.add_argument("--lm-eval-scorer", default="shared-context", choices=["shared-context", "hflm"],
                   help="lm-eval loglikelihood scorer: shared-context computes each context once for all its "
                        "choices (same numbers to float rounding); hflm is lm-eval's HFLM (default: %(default)s)")
    p.add_argument("--lm-eval-subset", default=None, metavar="TASK=N,...",
                   help="score a fixed, seeded subset of these lm-eval tasks (N items, or 'all'; drawn with --seed, "
                        "the same items for every model, recorded by sha256); other lm-eval tasks run whole. "
                        "Not together with --max-items (which takes each task's first items)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap and lm-eval seed (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


# ----------------------------------------------------------------------------- validation


def parse_tasks(text: str) -> list[str]:
    tasks = list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not tasks:
        raise UsageError("--tasks is empty")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise UsageError(f"unknown task {unknown[0]!r} (choose from {', '.join(TASKS)})")
    return tasks


def parse_models(specs: list[str]) -> list[tuple[str, str]]:
    """["fp=PATH", ...] -> [(name, resolved path)]; names must be unique and folder-safe."""
    if not specs:
        raise UsageError("give at least one --model NAME=PATH")
    from fair_gptq.models import resolve_model

    parsed, seen = [], set()
    for spec in specs:
        name, sep, path = spec.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise UsageError(f"bad --model {spec!r}: expected NAME=PATH, e.g. fp=smollm2-135m")
        if not _NAME.match(name):
            raise UsageError(f"bad model name {name!r}: use letters, digits, '_', '-', '.'")
        if name in seen:
            raise UsageError(f"duplicate model name {name!r}")
        seen.add(name)
        try:
            resolved = resolve_model(path)
        except (ValueError, RuntimeError, OSError) as exc:
            raise UsageError(f"--model {name}: {exc}") from exc
        parsed.append((name, resolved))
    return parsed


def parse_erasers(specs: list[str], model_names: list[str]) -> dict[str, str]:
    """["NAME=FILE", ...] -> {model name: eraser file}; each file is read (and refused) here, before any model."""
    from fair_gptq.erasure.artifact import EraserFileError, load_eraser

    erasers: dict[str, str] = {}
    for spec in specs:
        name, sep, file = (part.strip() for part in spec.partition("="))
        if not sep or not name or not file:
            raise UsageError(f"bad --eraser {spec!r}: expected NAME=FILE, e.g. fp-inlp=outputs/erasers/inlp.pt")
        if name not in model_names:
            raise UsageError(f"--eraser {name}: no --model of that name (models: {', '.join(model_names)})")
        if name in erasers:
            raise UsageError(f"--eraser {name}: given twice")
        try:
            load_eraser(file)
        except EraserFileError as exc:
            raise UsageError(f"--eraser {name}: {exc}") from exc
        erasers[name] = file
    return erasers


def _check_positive(args) -> None:
    for flag, value, low in (("--batch-size", args.batch_size, 1), ("--seqlen", args.seqlen, 2),
                             ("--max-windows", args.max_windows, 1), ("--max-items", args.max_items, 1),
                             ("--bootstrap", args.bootstrap, 1)):
        if value is not None and value < low:
            raise UsageError(f"{flag} must be >= {low} (got {value})")


def load_task_data(args, tasks: list[str], lm_eval_tasks=()) -> dict:
    """Read every data set the tasks need (errors become one line, before any model loads)."""
    from evaluation import data

    loaded = {}
    try:
        if "crows_pairs" in tasks:
            loaded["crows_pairs"] = data.load_crows_pairs(args.crows_pairs)
        if "stereoset" in tasks:
            loaded["stereoset"] = data.load_stereoset(args.stereoset, args.stereoset_split, args.stereoset_split_seed)
            if not loaded["stereoset"].items:
                raise UsageError("StereoSet: the chosen split holds no complete items")
        if "wikitext2" in tasks:
            source = data.resolve_wikitext2_source(args.wikitext2, need_rows=args.protocol == "paper")
            if args.protocol == "paper":
                text = data.paper_wikitext_text(data.load_wikitext2_rows(source))
            else:
                text = data.load_wikitext2_text(source)
            loaded["wikitext2"] = {"text": text, "source": source.describe(),
                                   "fingerprint": data.source_fingerprint(source)}
        if "lm_eval" in tasks:  # local files for lm-eval's own tasks (CrowS-Pairs, WikiText-2, the shared folder's)
            from evaluation.lm_eval_tasks import resolve_local_data

            loaded["lm_eval"] = resolve_local_data(list(lm_eval_tasks), args.crows_pairs, args.wikitext2)
    except data.DataError as exc:
        raise UsageError(str(exc)) from exc
    except (OSError, ValueError, ImportError) as exc:
        raise UsageError(f"could not load the evaluation data: {exc}") from exc
    return loaded


# ----------------------------------------------------------------------------- settings


def _config_max_positions(path: str) -> int | None:
    from transformers import AutoConfig

    from evaluation.scoring import config_max_length

    return config_max_length(AutoConfig.from_pretrained(path))


def task_settings(task: str, args, path: str, data: dict, device: str, dtype: str, lm_eval_tasks,
                  eraser: str | None = None) -> dict:
    """Everything that changes a (model, task) result; a stored run is reused only on equality."""
    from evaluation.models import model_fingerprint

    from fair_gptq.paths import portable_path

    settings = {"task": task, "scoring_version": SCORING_VERSION, "model_path": portable_path(path),
                "model_fingerprint": model_fingerprint(path), "device": device.split(":")[0], "dtype": dtype,
                "gptq_backend": args.gptq_backend}
    if eraser is not None:  # only then: runs stored before erasers existed keep their settings (and stay reusable)
        from fair_gptq.erasure.artifact import describe_eraser, load_eraser

        settings["eraser"] = describe_eraser(load_eraser(eraser), eraser)
    if task == "crows_pairs":
        settings.update(data_sha256=data["crows_pairs"].sha256, max_items=args.max_items)
    elif task == "stereoset":
        split = data["stereoset"].split
        settings.update(data_sha256=split["sha256"], split=split["part"], split_seed=args.stereoset_split_seed,
                        split_version=split["split_version"], max_items=args.max_items)
    elif task == "wikitext2":
        seqlen = args.seqlen or (1024 if args.protocol == "paper" else 2048)
        max_pos = _config_max_positions(path)
        settings.update(protocol=args.protocol, seqlen=min(seqlen, max_pos) if max_pos else seqlen,
                        max_windows=args.max_windows, data=data["wikitext2"]["fingerprint"])
    elif task == "lm_eval":
        from evaluation.lm_eval_bridge import run_settings

        settings.update(lm_eval_tasks=list(lm_eval_tasks), limit=args.max_items, seed=args.seed,
                        **run_settings(list(lm_eval_tasks), data["lm_eval"], args.lm_eval_scorer))
        if args.lm_eval_subset:  # only when set: runs stored before subsets existed keep their settings
            settings["subsets"] = parse_subset_spec(args.lm_eval_subset)
    return settings


def _versions() -> dict:
    import torch
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    try:
        from importlib.metadata import version

        versions["gptqmodel"] = version("gptqmodel")
    except Exception:  # noqa: BLE001 - optional
        pass
    return versions


# ----------------------------------------------------------------------------- running


def run_task(task: str, lm, args, data: dict, settings: dict, lm_eval_tasks) -> dict:
    from evaluation import tasks as task_runners

    progress = not args.no_progress
    if task == "crows_pairs":
        from evaluation.crows_version import csv_version

        crows = data["crows_pairs"]
        record = task_runners.run_crows_pairs(lm, crows, args.max_items, args.batch_size, progress)
        record["data"]["version"] = csv_version(crows.sha256, len(crows.pairs))
        return record
    if task == "stereoset":
        return task_runners.run_stereoset(lm, data["stereoset"], args.max_items, args.batch_size, progress)
    if task == "wikitext2":
        wt = data["wikitext2"]
        return task_runners.run_wikitext2(lm, wt["text"], args.protocol, settings["seqlen"], args.max_windows,
                                          wt["source"], progress)
    from evaluation.lm_eval_bridge import run_lm_eval

    return run_lm_eval(lm, lm_eval_tasks, args.batch_size, args.max_items, args.seed, data["lm_eval"],
                       args.lm_eval_scorer, settings.get("subsets"))


def summary_line(task: str, record: dict) -> str:
    m = record["metrics"]
    if task == "crows_pairs":
        o = m["overall"]
        return f"pct_stereotype={o['pct_stereotype']:.4f} likelihood_diff={o['likelihood_diff']:.4f} (n={o['n']})"
    if task == "stereoset":
        o = m["domains"]["overall"]
        return (f"SS={o['ss']:.2f} LMS={o['lms']:.2f} ICAT={o['icat']:.2f} "
                f"(split {record['data'].get('part')}, {o['n_items']} items)")
    if task == "wikitext2":
        return f"ppl={m['ppl']:.4f} ({m['protocol']}, {m['n_windows']} windows of {m['seqlen']})"
    return f"lm-eval tasks {', '.join(record['data'].get('tasks', []))}"


def _release_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class Plan:
    """Everything validated before any model is loaded."""

    tasks: list[str]
    models: list[tuple[str, str]]  # (name, resolved path)
    device: str
    dtype: str
    lm_eval_tasks: list[str]
    data: dict
    settings: dict  # name -> task -> settings
    erasers: dict = field(default_factory=dict)  # name -> eraser file (--eraser)


def _warn_if_calibrated_on_evaluated_items(models, split: dict) -> None:
    import json

    from fair_gptq.split import overlap_warning

    for name, path in models:
        run_file = Path(path) / "fair_gptq_run.json"  # written by example_fair_gptq.py beside the checkpoint
        if run_file.is_file():
            calibration = json.loads(run_file.read_text()).get("calibration", {}).get("split")
            if (warning := overlap_warning(calibration, split)) is not None:
                print(f"warning: {name}: {warning}", flush=True)


def _warn_if_erasers_saw_evaluated_items(erasers: dict[str, str], split: dict) -> None:
    from fair_gptq.erasure.artifact import load_eraser
    from fair_gptq.split import overlap_warning

    for name, file in erasers.items():
        fitted_on = load_eraser(file).metadata.get("fitting", {}).get("pairs", {}).get("split")
        if (warning := overlap_warning(fitted_on, split)) is not None:
            print(f"warning: {name}: its eraser was {warning.replace('calibrated', 'fitted', 1)}", flush=True)


def check_subset(args, lm_eval_tasks: list[str]) -> None:
    """--lm-eval-subset must name lm-eval tasks of this run and cannot share the choice of items with --max-items."""
    try:
        sizes = parse_subset_spec(args.lm_eval_subset)
    except ValueError as exc:
        raise UsageError(f"--lm-eval-subset: {exc}") from exc
    if args.max_items:
        raise UsageError("--lm-eval-subset and --max-items both choose lm-eval items (a seeded subset, the first N): "
                         "use one")
    stray = [task for task in sizes if task not in lm_eval_tasks]
    if stray:
        raise UsageError(f"--lm-eval-subset names {', '.join(stray)}, not among --lm-eval-tasks "
                         f"({', '.join(lm_eval_tasks)})")


def make_plan(args) -> Plan:
    """Validate the command line and read the data; raises UsageError / ValueError / OSError."""
    from evaluation.lm_eval_bridge import skipped_offline, unavailable_reason
    from evaluation.lm_eval_groups import expand_tasks
    from evaluation.models import dtype_name, resolve_device, resolve_dtype

    tasks = parse_tasks(args.tasks)
    _check_positive(args)
    models = parse_models(args.model)
    erasers = parse_erasers(args.eraser, [name for name, _ in models])
    device = resolve_device(args.device)
    dtype = dtype_name(resolve_dtype(args.dtype, device))
    lm_eval_tasks = expand_tasks(args.lm_eval_tasks)
    if args.lm_eval_subset and "lm_eval" in tasks:
        check_subset(args, lm_eval_tasks)
    if "lm_eval" in tasks and (reason := unavailable_reason()):
        print(f"lm_eval: {reason}", flush=True)
        tasks.remove("lm_eval")
    data = load_task_data(args, tasks, lm_eval_tasks)
    skipped = skipped_offline(lm_eval_tasks, data["lm_eval"]) if "lm_eval" in tasks else {}
    if "lm_eval" in tasks and set(skipped) == set(lm_eval_tasks):  # nothing to run: say so now, load no model
        for task, why in skipped.items():
            print(f"lm_eval: {task} unavailable ({why})", flush=True)
        tasks.remove("lm_eval")
    if "stereoset" in data:
        _warn_if_calibrated_on_evaluated_items(models, data["stereoset"].split)
        _warn_if_erasers_saw_evaluated_items(erasers, data["stereoset"].split)
    settings = {name: {t: task_settings(t, args, path, data, device, dtype, lm_eval_tasks, erasers.get(name))
                       for t in tasks}
                for name, path in models}
    return Plan(tasks, models, device, dtype, lm_eval_tasks, data, settings, erasers)


def evaluate_model(name: str, path: str, plan: Plan, args, out: Path) -> dict:
    """Run (or reuse) every task of one model; each result is stored as soon as it is done."""
    from evaluation.lm_eval_bridge import LmEvalUnavailable, unavailable_lines
    from evaluation.models import load_model
    from evaluation.store import RUN_FORMAT, reusable_run, run_path, write_json_atomic
    from fair_gptq.paths import portable_record

    runs, pending = {}, []
    for task in plan.tasks:
        stored = None if args.force else reusable_run(out, name, task, plan.settings[name][task])
        if stored is None:
            pending.append(task)
        else:
            runs[task] = stored
            print(f"{name} {task}: stored result reused ({run_path(out, name, task)})", flush=True)
            for line in unavailable_lines(stored.get("data", {}).get("unavailable", {})):  # lm_eval runs only
                print(f"{name} {task}: {line} when stored (--force retries)", flush=True)
    if not pending:
        return runs
    print(f"{name}: loading {path}", flush=True)
    try:
        lm = load_model(path, name=name, device=plan.device, dtype=args.dtype, gptq_backend=args.gptq_backend,
                        eraser=plan.erasers.get(name))
    except Exception as exc:  # noqa: BLE001 - reported in one line by main(); stored runs stay
        raise ModelLoadError(f"could not load model {name} from {path}: {type(exc).__name__}: {exc}") from exc
    for task in pending:
        started = time.perf_counter()
        try:
            record = run_task(task, lm, args, plan.data, plan.settings[name][task], plan.lm_eval_tasks)
        except LmEvalUnavailable as exc:
            for line in [*unavailable_lines(exc.unavailable), str(exc)]:
                print(f"{name} lm_eval: {line}", flush=True)
            continue
        for line in unavailable_lines(record["data"].get("unavailable", {})):  # lm_eval runs only
            print(f"{name} {task}: {line}", flush=True)
        record.update(
            format=RUN_FORMAT, model=name, task=task, settings=plan.settings[name][task], model_info=lm.describe(),
            seconds=round(time.perf_counter() - started, 2), versions=_versions(),
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        record = portable_record(record)  # data files and model folders by name, never this machine's path
        write_json_atomic(run_path(out, name, task), record)
        runs[task] = record
        print(f"{name} {task}: {summary_line(task, record)} [{record['seconds']:.1f}s]", flush=True)
    del lm
    _release_memory()
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed its message
        return int(exc.code or 0)
    try:
        plan = make_plan(args)
    except (UsageError, ValueError, OSError) as exc:  # bad flags, devices, data, configs: one line
        print(f"run_eval.py: error: {exc}", file=sys.stderr)
        return 2
    if not plan.tasks:
        print("run_eval.py: nothing to run", file=sys.stderr)
        return 1

    from evaluation.report import write_report
    from evaluation.store import write_manifest

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out, [n for n, _ in plan.models], plan.tasks)
    if "stereoset" in plan.data:
        split = plan.data["stereoset"].split
        print(f"StereoSet: split {split['part']} (version {split['split_version']}) of {split['source']} "
              f"({split['kind']} file): "
              f"{split['n_items']} items", flush=True)
    runs = {}
    for name, path in plan.models:
        try:
            runs[name] = evaluate_model(name, path, plan, args, out)
        except ModelLoadError as exc:
            print(f"run_eval.py: error: {exc}", file=sys.stderr)
            return 1
    names = [n for n, _ in plan.models if runs[n]]
    if names:
        write_report({"models": names, "runs": runs}, out, n_bootstrap=args.bootstrap, seed=args.seed)
        print(f"report: {out / 'report.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
