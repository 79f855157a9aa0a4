#!/usr/bin/env python3
"""Benchmark: stock GPTQ vs Fair-GPTQ (sum_hessians 0 and 1) on the same model and the same pairs.

Each configuration runs in its own subprocess, so its peak resident memory (ru_maxrss) is its own; "stock" runs
the pristine upstream gptq.py that install_overlay.sh keeps as gptq.py.upstream. Prints wall time of
`quantize()` and peak memory, with ratios against stock measured in the same run.

    python benchmarks/bench_quantize.py --model smollm2-135m --pairs 128
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONFIGS = {
    "stock": dict(alpha=0.0),
    "fair-sum1": dict(alpha=0.1, sum_hessians=1),
    "fair-sum0": dict(alpha=0.1, sum_hessians=0),
}


def use_upstream_gptq() -> None:
    """Point GPTQModel's processor at the upstream GPTQ class kept beside the overlay."""
    import gptqmodel.looper.gptq_processor as processor

    from fair_gptq.upstream import load_upstream_module

    try:
        processor.GPTQ = load_upstream_module("gptq").GPTQ
    except FileNotFoundError as error:
        raise SystemExit(str(error)) from None


def run_one(args) -> dict:
    """Child process: quantize once and report time and peak memory as JSON."""
    import torch
    from gptqmodel import BACKEND, GPTQModel, QuantizeConfig

    from fair_gptq.layers import default_ignore_bias
    from fair_gptq.models import resolve_model
    from fair_gptq.pairs import calibration_pairs

    torch.set_num_threads(args.threads or torch.get_num_threads())
    settings = CONFIGS[args.config]
    if args.config == "stock":
        use_upstream_gptq()
    model_path = resolve_model(args.model)
    pairs = calibration_pairs(args.stereoset, max_pairs=args.pairs, seed=0)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    from transformers import AutoConfig
    model_type = AutoConfig.from_pretrained(model_path).model_type
    qcfg = QuantizeConfig(bits=4, group_size=args.group_size, desc_act=False, device=device,
                          ignore_bias=default_ignore_bias(model_type), **settings)
    # float32 on CPU: GPTQModel's default there is bfloat16, several times slower on CPUs without bf16 units
    model = GPTQModel.load(model_path, qcfg, torch_dtype=torch.float32 if device == "cpu" else "auto")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    model.quantize(pairs.sentences, batch_size=2, backend=BACKEND.TORCH if device == "cpu" else BACKEND.AUTO,
                   auto_gc=device != "cpu")  # the same for every config; on CPU the GC only costs time
    seconds = time.perf_counter() - start
    result = {"config": args.config, "seconds": seconds, "n_pairs": pairs.n_pairs, "device": device,
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device == "cuda":
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--pairs", type=int, default=128)
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--stereoset", default=None)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--repeats", type=int, default=1, help="runs per config; the fastest counts")
    p.add_argument("--configs", default=",".join(CONFIGS), help="subset of " + ",".join(CONFIGS))
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.add_argument("--config", help=argparse.SUPPRESS)  # child mode
    args = p.parse_args(argv)

    if args.config:
        print("BENCH_RESULT " + json.dumps(run_one(args)), flush=True)
        return 0

    configs = [c.strip() for c in args.configs.split(",")]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown or "stock" not in configs:
        p.error(f"--configs must include stock and only {', '.join(CONFIGS)} (got {args.configs})")
    results: dict = {c: [] for c in configs}
    for repeat in range(args.repeats):
        for config in configs:  # interleaved, so slow drift of the machine hits every config alike
            command = [sys.executable, __file__, "--config", config, "--model", args.model, "--pairs",
                       str(args.pairs), "--group-size", str(args.group_size), "--device", args.device,
                       "--threads", str(args.threads)] + (["--stereoset", args.stereoset] if args.stereoset else [])
            done = subprocess.run(command, capture_output=True, text=True, env=os.environ)
            line = next((l for l in done.stdout.splitlines() if l.startswith("BENCH_RESULT ")), None)
            if done.returncode != 0 or line is None:
                sys.stderr.write(done.stderr[-4000:])
                raise SystemExit(f"benchmark run {config} failed (exit {done.returncode})")
            results[config].append(json.loads(line.removeprefix("BENCH_RESULT ")))
            print(f"  run {repeat + 1}/{args.repeats} {config}: {results[config][-1]['seconds']:.1f} s", flush=True)

    best = {c: min(runs, key=lambda r: r["seconds"]) for c, runs in results.items()}
    peak = {c: max(r["peak_rss_mib"] for r in runs) for c, runs in results.items()}
    stock = best["stock"]
    print(f"\nmodel={args.model} pairs={stock['n_pairs']} device={stock['device']} repeats={args.repeats}")
    print(f"{'config':<10} {'quantize s':>11} {'x stock':>8} {'peak RSS MiB':>13} {'x stock':>8}")
    for config in configs:
        print(f"{config:<10} {best[config]['seconds']:>11.1f} {best[config]['seconds'] / stock['seconds']:>8.3f} "
              f"{peak[config]:>13.0f} {peak[config] / peak['stock']:>8.3f}")
    if args.json:
        from fair_gptq.paths import portable_record

        Path(args.json).write_text(json.dumps(portable_record({"args": vars(args), "runs": results}), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
