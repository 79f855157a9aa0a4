#!/usr/bin/env python
"""Fit an INLP or LEACE eraser on a model's final hidden states over the calibration pairs (fair_gptq/erasure).

Example (from the repository root; the study's 256 pairs of the `calib` half, seed 0)::

    python evaluation/fit_eraser.py --model smollm2-135m --method inlp --labels stereo-anti \\
        --out outputs/erasers/smollm2-inlp.pt
    python evaluation/run_eval.py --model fp=smollm2-135m --model fp-inlp=smollm2-135m \\
        --eraser fp-inlp=outputs/erasers/smollm2-inlp.pt --out results/erasure

Writes OUT (the eraser, fair_gptq/erasure/artifact.py) and OUT.json (its metadata, for reading). The model is
loaded as the evaluation loads it (evaluation/models.py: full precision or GPTQ) and fed each sentence as the
scoring engine does, so the eraser is fitted on the states it will be applied to. Bad flags, data or an
existing OUT are refused before the model loads.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import time  # noqa: E402

from fair_gptq.erasure.artifact import ERASER_KINDS  # noqa: E402
from fair_gptq.erasure.fitting_data import LABEL_MODES  # noqa: E402
from fair_gptq.erasure.inlp import DEFAULT_ITERATIONS  # noqa: E402

STUDY_PAIRS, STUDY_SEED = 256, 0  # sanity-check/study_jobs.py: the main job's --max-pairs and --seed


class UsageError(ValueError):
    """Bad input, reported in one line before the model loads."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fit_eraser.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="preset, local folder (FP or GPTQ) or hub id")
    p.add_argument("--method", required=True, choices=ERASER_KINDS, help="inlp or leace")
    p.add_argument("--labels", default="stereo-anti", choices=list(LABEL_MODES),
                   help="stereo-anti (the concept), unrelated or shuffled-labels (controls); default %(default)s")
    p.add_argument("--out", required=True, help="eraser file to write (e.g. outputs/erasers/NAME.pt)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--max-pairs", type=int, default=STUDY_PAIRS, help="calibration pairs (default: %(default)s)")
    p.add_argument("--seed", type=int, default=STUDY_SEED,
                   help="pair sampling seed, and the label order of shuffled-labels (default: %(default)s)")
    p.add_argument("--iterations", type=int, default=None,
                   help=f"INLP classifiers (default {DEFAULT_ITERATIONS}, bias-bench's); not for leace")
    p.add_argument("--stereoset", default=None, metavar="PATH", help="StereoSet dev JSON (default: the shared one)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--gptq-backend", default="auto", help="GPTQModel kernel backend for a GPTQ checkpoint")
    p.add_argument("--batch-size", type=int, default=16, help="sentences per forward pass (default: %(default)s)")
    return p


def check_arguments(args) -> None:
    if args.max_pairs < 1:
        raise UsageError(f"--max-pairs must be >= 1 (got {args.max_pairs})")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1 (got {args.batch_size})")
    if args.iterations is not None and args.method != "inlp":
        raise UsageError(f"--iterations sets INLP's classifier count; method {args.method} has none")
    if args.iterations is not None and args.iterations < 1:
        raise UsageError(f"--iterations must be >= 1 (got {args.iterations})")
    if Path(args.out).exists() and not args.overwrite:
        raise UsageError(f"{args.out} exists (--overwrite replaces it)")


def load_fitting_data(args):
    """The labelled calibration sentences (refused unless from the calib half)."""
    from fair_gptq.erasure.fitting_data import fitting_data
    from fair_gptq.pairs import calibration_pairs

    pair_set = calibration_pairs(args.stereoset, LABEL_MODES[args.labels], part="calib",
                                 max_pairs=args.max_pairs, seed=args.seed)
    return fitting_data(pair_set, args.labels, seed=args.seed)


def prepare(args):
    """Everything that can fail on bad input, before the model loads: (fitting data, resolved model path)."""
    from fair_gptq.models import resolve_model

    check_arguments(args)
    data = load_fitting_data(args)
    return data, resolve_model(args.model)


def fit_and_save(args, data, path: str) -> dict:
    from evaluation.models import load_model, model_fingerprint
    from evaluation.scoring import prefix_token_id
    from evaluation.store import write_json_atomic
    from fair_gptq.erasure.artifact import save_eraser
    from fair_gptq.erasure.fit import fit_eraser
    from fair_gptq.erasure.representations import pooled_representations

    print(f"fitting data: {len(data.sentences)} sentences, labels {args.labels} "
          f"(pairs sha256 {data.pairs['sha256'][:12]}, split {data.pairs['split']['part']})", flush=True)
    lm = load_model(path, name=Path(path).name, device=args.device, dtype=args.dtype, gptq_backend=args.gptq_backend)
    started = time.perf_counter()
    x = pooled_representations(lm.model, lm.tokenizer, data.sentences, prefix_token_id(lm.tokenizer),
                               batch_size=args.batch_size)
    model_info = {"spec": args.model, "path": path, "fingerprint": model_fingerprint(path), **lm.describe()}
    eraser = fit_eraser(x, data, args.method, iterations=args.iterations or DEFAULT_ITERATIONS, model=model_info,
                        extra={"encode_seconds": round(time.perf_counter() - started, 2)})
    sha256 = save_eraser(eraser, args.out)
    write_json_atomic(Path(f"{args.out}.json"), {"file": Path(args.out).name, "sha256": sha256, "kind": eraser.kind,
                                                 **eraser.metadata})
    return {"sha256": sha256, **eraser.metadata}


def summary_lines(args, record: dict) -> list[str]:
    d = record["diagnostics"]

    def pct(value):
        return f"{100 * value:.1f}%"

    return [f"{args.method} ({args.labels}) fitted in {record['fit_seconds']:.1f}s "
            f"(representations {record['encode_seconds']:.1f}s, checks {d['seconds']:.1f}s); "
            f"rank removed {record['method']['rank_removed']}",
            f"probe accuracy (chance {pct(d['chance'])}): fit set {pct(d['fit_set']['before'])} -> "
            f"{pct(d['fit_set']['after'])}; held out ({d['folds']} pair-grouped folds, eraser refitted per fold) "
            f"{pct(d['heldout']['before'])} -> {pct(d['heldout']['after'])}",
            f"wrote {args.out} (sha256 {record['sha256'][:16]}) and {args.out}.json"]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse printed its message
        return int(exc.code or 0)
    try:
        data, path = prepare(args)
    except (ValueError, RuntimeError, OSError) as exc:  # flags, data, pairs from the wrong half, model spec/preset
        print(f"fit_eraser.py: error: {exc}", file=sys.stderr)
        return 2
    record = fit_and_save(args, data, path)
    for line in summary_lines(args, record):
        print(line, flush=True)
    if record["method"].get("convergence_warnings"):
        print(f"note: {record['method']['convergence_warnings']} LinearSVC fits stopped at max_iter "
              "(ConvergenceWarning; counted in the metadata)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
