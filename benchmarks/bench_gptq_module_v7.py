#!/usr/bin/env python3
"""Benchmark: what the Fair-GPTQ term costs one module on GPTQModel 7.7.0, stock GPTQ against fair_gptq_v7's
FairGPTQ, in one process (the 7.7.0 twin of bench_gptq_module.py; run it with .venv-gptqmodel7's python).

Each calibration batch goes in as FairGPTQProcessor feeds it: the whole batch to fair_add_batch (Fair only),
then one add_batch per sentence. Inputs are bench_gptq_module's synthetic modules (--shapes) or the captured
SmolLM2 modules (padding rows kept as tokens, alike in both configurations); ABBA blocks, as there.

    .venv-gptqmodel7/bin/python benchmarks/bench_gptq_module_v7.py --shapes 576x576,1536x576 --seq 16 --repeats 10
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_gptq_module import add_input_arguments, load_inputs, summarise_modules  # noqa: E402
from benchmarks.bench_quantize import abba_order  # noqa: E402

CONFIGS = {"stock": None, "fair": dict(alpha=0.1, sum_hessians=1),  # stock: 7.7.0's GPTQ and GPTQConfig
           "fair-sd": dict(alpha=0.1, sum_hessians=1, fair_accumulate="sum-difference")}


def time_one(config: str, name: str, weight, batches: list, group_size: int) -> dict:
    """Seconds of feeding every batch, of quantize(), and of the shift inside it (0 for stock)."""
    import torch
    from gptqmodel.looper.named_module import NamedModule
    from gptqmodel.quantization.config import GPTQConfig
    from gptqmodel.quantization.gptq import GPTQ

    from fair_gptq_v7.config import FairGPTQConfig
    from fair_gptq_v7.task import FairGPTQ

    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device)
    linear.weight.data.copy_(weight)
    module = NamedModule(linear, name=name.split(".", 1)[-1], full_name=f"model.layers.0.{name}", layer_index=0)
    settings = CONFIGS[config]
    common = dict(bits=4, group_size=group_size, desc_act=False, act_group_aware=False)
    task = GPTQ(module, GPTQConfig(**common)) if settings is None else FairGPTQ(module, FairGPTQConfig(**common, **settings))
    task.quantizer.configure(perchannel=True)
    shift_seconds = [0.0]
    if settings is not None:
        shift = task._fair_shift_weights

        def timed_shift():
            started = time.perf_counter()
            try:
                return shift()
            finally:
                shift_seconds[0] += time.perf_counter() - started
        task._fair_shift_weights = timed_shift
    started = time.perf_counter()
    for index, batch in enumerate(batches):
        if settings is not None:
            task.fair_add_batch(batch, torch.ones(batch.shape[:2], dtype=torch.bool, device=batch.device), index)
        for row in range(batch.shape[0]):
            task.add_batch(batch[row:row + 1], None, batch_index=index)
    accumulate = time.perf_counter() - started
    started = time.perf_counter()
    task.quantize()
    quantize = time.perf_counter() - started
    task.free()
    return {"config": config, "module": name, "accumulate_s": accumulate, "quantize_s": quantize,
            "shift_s": shift_seconds[0], "seconds": accumulate + quantize, "peak_extra_mib": None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_input_arguments(p)
    args = p.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    data, n_pairs, source = load_inputs(args, "cpu")
    configs = list(CONFIGS)
    rows = {name: [] for name in data["inputs"]}
    with torch.inference_mode():
        for name in rows:
            for config in configs:  # warm-up: each configuration's one-time costs paid here
                time_one(config, name, data["weights"][name], data["inputs"][name], args.group_size)
            for _ in range(args.repeats):
                rows[name].append([time_one(c, name, data["weights"][name], data["inputs"][name], args.group_size)
                                   for c in abba_order(configs)])
            print(f"  {name}: {args.repeats} blocks done", flush=True)
    summary = summarise_modules(rows, configs)
    print(f"\nGPTQModel 7.7.0, {source} pairs={n_pairs} threads={torch.get_num_threads()} blocks={args.repeats}: "
          f"median seconds per module (ratio: per ABBA block, median [min, max])")
    print(f"{'module':<22} {'config':<8} {'accumulate':>10} {'quantize':>9} {'(shift)':>8} {'total':>7} {'x stock':>22}")
    for name in rows:
        for config in configs:
            s = summary[name][config]
            print(f"{name:<22} {config:<8} {s['accumulate_s']['median']:>10.4f} {s['quantize_s']['median']:>9.4f} "
                  f"{s['shift_s']['median']:>8.4f} {s['seconds']['median']:>7.4f} "
                  f"{s['ratio']['median']:>8.3f} [{s['ratio']['min']:.3f}, {s['ratio']['max']:.3f}]")
    if args.json:
        import gptqmodel
        import transformers

        from fair_gptq.machine import machine_record
        from fair_gptq.paths import portable_record

        record = {"args": vars(args), "date": time.strftime("%Y-%m-%d"), "machine": machine_record(),
                  "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                               "gptqmodel": gptqmodel.__version__},
                  "configs": CONFIGS, "summary": summary, "blocks": rows}
        Path(args.json).write_text(json.dumps(portable_record(record), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
