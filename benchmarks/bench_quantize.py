#!/usr/bin/env python3
"""Benchmark: stock GPTQ against Fair-GPTQ configurations on the same model and the same pairs.

Every run is its own subprocess (its peak resident memory is its own, and nothing a previous quantization left
in the process can slow it). Runs go in ABBA blocks: the configurations in order, then in reverse, so that a
machine drifting linearly in time hits every configuration alike; each block gives one ratio per configuration,
(its two runs) / (stock's two runs). "stock" runs the pristine upstream gptq.py that install_overlay.sh keeps as
gptq.py.upstream; with --gptqmodel7 the runs use .venv-gptqmodel7, "stock" is GPTQModel 7.7.0 itself and the
others fair_gptq_v7. Reports wall and CPU time of `quantize()` and peak RSS, each with its spread.

    python benchmarks/bench_quantize.py --model smollm2-135m --pairs 128 --repeats 1 --json out.json
    python benchmarks/bench_quantize.py --configs stock,fair --profile-dir prof/   # cProfile each run
    python benchmarks/bench_quantize.py --gptqmodel7 --configs stock,fair,fair-sd  # GPTQModel 7.7.0 (fair_gptq_v7)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# "paper" modules: the family's default ignore_bias (the term on o_proj and down_proj); "all": every module
CONFIGS = {
    "stock": dict(alpha=0.0),
    "fair": dict(alpha=0.1, sum_hessians=1, modules="paper"),
    "fair-sd": dict(alpha=0.1, sum_hessians=1, modules="paper", fair_accumulate="sum-difference"),
    "fair-all": dict(alpha=0.1, sum_hessians=1, modules="all"),
    "fair-all-sd": dict(alpha=0.1, sum_hessians=1, modules="all", fair_accumulate="sum-difference"),
    "fair-sum0": dict(alpha=0.1, sum_hessians=0, modules="paper"),
}
DEFAULT_CONFIGS = "stock,fair,fair-sd,fair-all,fair-all-sd"


def use_upstream_gptq() -> None:
    """Point GPTQModel's processor at the upstream GPTQ class kept beside the overlay."""
    import gptqmodel.looper.gptq_processor as processor

    from fair_gptq.upstream import load_upstream_module

    try:
        processor.GPTQ = load_upstream_module("gptq").GPTQ
    except FileNotFoundError as error:
        raise SystemExit(str(error)) from None


def fair_fields(config: str, model_type: str) -> dict:
    """A configuration's Fair-GPTQ fields, the same on both stacks: its CONFIGS entry with `modules` turned into
    ignore_bias ("paper": the family's default, the term on o_proj and down_proj; "all": none ignored)."""
    from fair_gptq.layers import default_ignore_bias

    settings = dict(CONFIGS[config])
    modules = settings.pop("modules", "paper")
    return {"ignore_bias": default_ignore_bias(model_type) if modules == "paper" else "", **settings}


def quantize_config(config: str, model_type: str, group_size: int, device: str):
    from gptqmodel import QuantizeConfig

    return QuantizeConfig(bits=4, group_size=group_size, desc_act=False, device=device,
                          **fair_fields(config, model_type))


def prepare_v220(args, device: str):
    """The quantize(sentences) call on GPTQModel 2.2.0 with the overlay; "stock" runs upstream's gptq.py."""
    import torch
    from gptqmodel import BACKEND, GPTQModel
    from transformers import AutoConfig

    from fair_gptq.models import resolve_model

    if args.config == "stock":
        use_upstream_gptq()
    model_path = resolve_model(args.model)
    model_type = AutoConfig.from_pretrained(model_path).model_type
    qcfg = quantize_config(args.config, model_type, args.group_size, device)
    # float32 on CPU: GPTQModel's default there is bfloat16, several times slower on CPUs without bf16 units
    model = GPTQModel.load(model_path, qcfg, torch_dtype=torch.float32 if device == "cpu" else "auto")

    def quantize(sentences):
        model.quantize(sentences, batch_size=2, backend=BACKEND.TORCH if device == "cpu" else BACKEND.AUTO,
                       auto_gc=device != "cpu")  # the same for every config; on CPU the GC only costs time
    return quantize


def prepare_v770(args, device: str):
    """The quantize(sentences) call on GPTQModel 7.7.0 (.venv-gptqmodel7): "stock" is the package's own GPTQ, the others
    fair_gptq_v7; both with the pair layout's calibration settings (no sorting or concatenation) and the 2.2.0
    column order and damping, as the 7.7.0 main job (python -m fair_gptq_v7) quantizes."""
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")  # 7.7.0's loader stops on a 2-core machine otherwise
    import torch
    from gptqmodel import BACKEND, GPTQModel, QuantizeConfig
    from transformers import AutoConfig

    import fair_gptq_v7
    from fair_gptq.models import resolve_model
    from fair_gptq_v7.run import PAIR_LAYOUT

    model_path = resolve_model(args.model)
    common = dict(bits=4, group_size=args.group_size, damp_percent=0.01, device=device, desc_act=False,
                  act_group_aware=False)
    if args.config == "stock":
        qcfg = QuantizeConfig(**common)
    else:
        model_type = AutoConfig.from_pretrained(model_path).model_type
        qcfg = fair_gptq_v7.FairGPTQConfig(**common, **fair_fields(args.config, model_type))
    model = GPTQModel.load(model_path, qcfg, dtype=torch.float32 if device == "cpu" else "auto")
    backend = BACKEND.TORCH if device == "cpu" else BACKEND.AUTO

    def quantize(sentences):
        if args.config == "stock":
            model.quantize(sentences, batch_size=2, backend=backend, **PAIR_LAYOUT)
        else:
            fair_gptq_v7.quantize(model, sentences, batch_size=2, backend=backend)
    return quantize


def run_one(args) -> dict:
    """Child process: quantize once and report wall time, CPU time and peak memory as JSON."""
    import torch

    from fair_gptq.pairs import calibration_pairs

    torch.set_num_threads(args.threads or torch.get_num_threads())
    pairs = calibration_pairs(args.stereoset, max_pairs=args.pairs, seed=0)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    quantize = (prepare_v770 if args.gptqmodel7 else prepare_v220)(args, device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    profiler = None
    if args.profile_dir:
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
    start, cpu_start = time.perf_counter(), time.process_time()
    quantize(pairs.sentences)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    if profiler is not None:
        profiler.disable()
        Path(args.profile_dir).mkdir(parents=True, exist_ok=True)
        profiler.dump_stats(str(Path(args.profile_dir) / f"{args.config}-{args.run_index}.pstats"))
    import platform

    import gptqmodel
    import transformers

    result = {"config": args.config, "seconds": seconds, "cpu_seconds": cpu_seconds, "n_pairs": pairs.n_pairs,
              "device": device, "threads": torch.get_num_threads(),
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                           "gptqmodel": gptqmodel.__version__, "python": platform.python_version()}}
    if device == "cuda":
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def abba_order(configs: list[str]) -> list[str]:
    """One block: the configurations in order, then in reverse (every configuration's two positions have the same
    mean, so a linear drift of the machine adds the same time to each)."""
    return configs + configs[::-1]


def block_ratios(block: list[dict], key: str) -> dict[str, float]:
    """Per configuration: the sum of its runs in the block over the sum of stock's runs in the block."""
    totals: dict[str, float] = {}
    for run in block:
        totals[run["config"]] = totals.get(run["config"], 0.0) + run[key]
    return {config: total / totals["stock"] for config, total in totals.items()}


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarise(blocks: list[list[dict]], configs: list[str]) -> dict:
    """Per configuration: wall/CPU seconds and peak RSS over all runs, and the per-block ratios to stock."""
    summary = {}
    for config in configs:
        runs = [run for block in blocks for run in block if run["config"] == config]
        summary[config] = {
            "wall_s": spread([r["seconds"] for r in runs]),
            "cpu_s": spread([r["cpu_seconds"] for r in runs]),
            "peak_rss_mib": spread([r["peak_rss_mib"] for r in runs]),
            "wall_ratio": spread([block_ratios(b, "seconds")[config] for b in blocks]),
            "cpu_ratio": spread([block_ratios(b, "cpu_seconds")[config] for b in blocks]),
            "rss_ratio": spread([block_ratios(b, "peak_rss_mib")[config] for b in blocks]),
        }
    return summary


def child_python(gptqmodel7: bool) -> str:
    """This interpreter, or the 7.7.0 environment's (VENV7, default .venv-gptqmodel7) for --gptqmodel7."""
    if not gptqmodel7:
        return sys.executable
    venv = Path(os.environ.get("VENV7", Path(__file__).resolve().parents[1] / ".venv-gptqmodel7"))
    python = venv / "bin" / "python"
    if not python.is_file():
        raise SystemExit(f"--gptqmodel7 needs the 7.7.0 environment: {python} is missing "
                         "(bash install_overlay.sh --gptqmodel7)")
    return str(python)


def child_command(args, config: str, run_index: int) -> list[str]:
    command = [child_python(args.gptqmodel7), os.path.abspath(__file__), "--config", config, "--run-index",
               str(run_index), "--model", args.model, "--pairs", str(args.pairs), "--group-size", str(args.group_size),
               "--device", args.device, "--threads", str(args.threads)]
    if args.gptqmodel7:
        command.append("--gptqmodel7")
    if args.stereoset:
        command += ["--stereoset", args.stereoset]
    if args.profile_dir:
        command += ["--profile-dir", args.profile_dir]
    return command


def print_table(summary: dict, configs: list[str]) -> None:
    def cell(s, fmt):
        return f"{fmt.format(s['median'])} [{fmt.format(s['min'])}, {fmt.format(s['max'])}]"

    print(f"{'config':<12} {'wall s':>22} {'CPU s':>22} {'CPU x stock':>24} {'wall x stock':>24} {'RSS x stock':>8}")
    for config in configs:
        s = summary[config]
        print(f"{config:<12} {cell(s['wall_s'], '{:.1f}'):>22} {cell(s['cpu_s'], '{:.1f}'):>22} "
              f"{cell(s['cpu_ratio'], '{:.3f}'):>24} {cell(s['wall_ratio'], '{:.3f}'):>24} "
              f"{s['rss_ratio']['median']:>8.3f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--pairs", type=int, default=128)
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--stereoset", default=None)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--repeats", type=int, default=1, help="ABBA blocks (each runs every configuration twice)")
    p.add_argument("--configs", default=DEFAULT_CONFIGS, help="stock and any of " + ",".join(CONFIGS))
    p.add_argument("--json", default=None, help="also write every run and the summary to this JSON file")
    p.add_argument("--profile-dir", default=None, help="cProfile each quantize() into DIR/<config>-<run>.pstats")
    p.add_argument("--gptqmodel7", action="store_true",
                   help="GPTQModel 7.7.0: stock 7.7.0 against fair_gptq_v7, each run in .venv-gptqmodel7")
    p.add_argument("--config", help=argparse.SUPPRESS)  # child mode
    p.add_argument("--run-index", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.config:
        print("BENCH_RESULT " + json.dumps(run_one(args)), flush=True)
        return 0

    configs = [c.strip() for c in args.configs.split(",")]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown or "stock" not in configs or len(set(configs)) != len(configs):
        p.error(f"--configs must list stock and, once each, any of {', '.join(CONFIGS)} (got {args.configs})")
    blocks: list[list[dict]] = []
    order = abba_order(configs)
    for repeat in range(args.repeats):
        block = []
        for position, config in enumerate(order):
            run_index = repeat * len(order) + position
            done = subprocess.run(child_command(args, config, run_index), capture_output=True, text=True,
                                  env=os.environ)
            line = next((l for l in done.stdout.splitlines() if l.startswith("BENCH_RESULT ")), None)
            if done.returncode != 0 or line is None:
                sys.stderr.write(done.stderr[-4000:])
                raise SystemExit(f"benchmark run {config} failed (exit {done.returncode})")
            run = json.loads(line.removeprefix("BENCH_RESULT "))
            block.append(run)
            print(f"  block {repeat + 1}/{args.repeats} run {position + 1}/{len(order)} {config}: "
                  f"{run['seconds']:.1f} s wall, {run['cpu_seconds']:.1f} s CPU", flush=True)
        blocks.append(block)

    summary = summarise(blocks, configs)
    first = blocks[0][0]
    print(f"\nmodel={args.model} pairs={first['n_pairs']} device={first['device']} threads={first['threads']} "
          f"blocks={args.repeats} (median [min, max] over runs; ratios per ABBA block)")
    print_table(summary, configs)
    if args.json:
        from fair_gptq.machine import machine_record
        from fair_gptq.paths import portable_record

        record = {"args": vars(args), "date": time.strftime("%Y-%m-%d"), "order": order,
                  # the children's stack (7.7.0 with --gptqmodel7), not this process's
                  "versions": first["versions"],
                  "machine": {**machine_record(), "torch_threads": first["threads"]},
                  "configs": {c: CONFIGS[c] for c in configs}, "blocks": blocks, "summary": summary}
        Path(args.json).write_text(json.dumps(portable_record(record), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
