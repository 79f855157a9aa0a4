#!/usr/bin/env python3
"""Benchmark: what the Fair-GPTQ term costs one module, stock GPTQ's class against the overlay's, in one process.

bench_quantize.py times what a user waits for, but on a shared 2-core VM its run-to-run spread (about ±10 %)
hides a few percent. Here the inputs of real modules (by default SmolLM2's o_proj and down_proj of one layer, on
the calibration pairs, batch 2) are captured once from the full-precision model; then each configuration
accumulates them (add_batch over every batch) and quantizes (quantize(), the shift included), in ABBA blocks,
many times. The per-step times account for the difference line by line; times 2 modules x layers they predict
the whole-model overhead.

    python benchmarks/bench_gptq_module.py --model smollm2-135m --pairs 128 --layer 15 --repeats 10
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_quantize import abba_order, block_ratios, spread  # noqa: E402

CONFIGS = {
    "stock": None,  # GPTQModel 2.2.0's own gptq.py (gptq.py.upstream)
    "fair": dict(alpha=0.1, sum_hessians=1),
    "fair-sd": dict(alpha=0.1, sum_hessians=1, fair_accumulate="sum-difference"),
}
MODULES = ("self_attn.o_proj", "mlp.down_proj")


def capture_inputs(model_path: str, pairs: list[str], layer: int) -> dict[str, list]:
    """module name -> the (2, seq, columns) float32 input of every calibration batch (one pair, right-padded)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fair_gptq.batching import right_padded

    model = AutoModelForCausalLM.from_pretrained(model_path, torch_dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    captured = {name: [] for name in MODULES}
    handles = [model.get_submodule(f"model.layers.{layer}.{name}").register_forward_pre_hook(
        lambda _m, args, name=name: captured[name].append(args[0].detach().clone())) for name in MODULES]
    with torch.no_grad():
        for start in range(0, len(pairs), 2):
            ids, mask = right_padded([tokenizer(s)["input_ids"] for s in pairs[start:start + 2]], pad_id)
            model(input_ids=ids, attention_mask=mask)
    for handle in handles:
        handle.remove()
    weights = {name: model.get_submodule(f"model.layers.{layer}.{name}").weight.detach().clone() for name in MODULES}
    return {"inputs": captured, "weights": weights}


def time_one(config: str, name: str, layer: int, weight, batches: list, group_size: int, stock_class) -> dict:
    """Seconds of add_batch over every batch, of quantize(), and of the shift inside it (0 for stock)."""
    import torch
    from gptqmodel.looper.named_module import NamedModule
    from gptqmodel.quantization import GPTQ, QuantizeConfig

    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    linear.weight.data.copy_(weight)
    module = NamedModule(linear, name=name, full_name=f"model.layers.{layer}.{name}", layer_index=layer)
    settings = CONFIGS[config]
    qcfg = QuantizeConfig(bits=4, group_size=group_size, desc_act=False, **(settings or {}))
    task = (stock_class if settings is None else GPTQ)(module, qcfg)
    task.quantizer.configure(perchannel=True)
    shift_seconds = [0.0]
    if settings is not None:
        shift = task._fair_shift_weights

        def timed_shift(W):
            started = time.perf_counter()
            try:
                return shift(W)
            finally:
                shift_seconds[0] += time.perf_counter() - started
        task._fair_shift_weights = timed_shift
    started = time.perf_counter()
    for batch in batches:
        task.add_batch(batch, None)
    accumulate = time.perf_counter() - started
    started = time.perf_counter()
    task.quantize()
    quantize = time.perf_counter() - started
    task.free()
    return {"config": config, "module": name, "accumulate_s": accumulate, "quantize_s": quantize,
            "shift_s": shift_seconds[0], "seconds": accumulate + quantize}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--pairs", type=int, default=128)
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=10, help="ABBA blocks")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import torch

    from fair_gptq.models import resolve_model
    from fair_gptq.pairs import calibration_pairs
    from fair_gptq.upstream import load_upstream_module

    if args.threads:
        torch.set_num_threads(args.threads)
    configs = [c.strip() for c in args.configs.split(",")]
    if "stock" not in configs or any(c not in CONFIGS for c in configs):
        p.error(f"--configs must list stock and any of {', '.join(CONFIGS)}")
    stock_class = load_upstream_module("gptq").GPTQ  # GPTQModel 2.2.0's own GPTQ, loaded once
    pairs = calibration_pairs(None, max_pairs=args.pairs, seed=0)
    data = capture_inputs(resolve_model(args.model), pairs.sentences, args.layer)
    rows: dict[str, list[list[dict]]] = {name: [] for name in MODULES}
    with torch.inference_mode():
        for name in MODULES:
            time_one("stock", name, args.layer, data["weights"][name], data["inputs"][name], args.group_size,
                     stock_class)  # warm-up
            for repeat in range(args.repeats):
                rows[name].append([time_one(c, name, args.layer, data["weights"][name], data["inputs"][name],
                                            args.group_size, stock_class) for c in abba_order(configs)])
            print(f"  {name}: {args.repeats} blocks done", flush=True)

    summary = {}
    for name, blocks in rows.items():
        summary[name] = {}
        for config in configs:
            runs = [r for block in blocks for r in block if r["config"] == config]
            summary[name][config] = {key: spread([r[key] for r in runs])
                                     for key in ("accumulate_s", "quantize_s", "shift_s", "seconds")}
            summary[name][config]["ratio"] = spread([block_ratios(b, "seconds")[config] for b in blocks])
    print(f"\nmodel={args.model} layer={args.layer} pairs={pairs.n_pairs} threads={torch.get_num_threads()} "
          f"blocks={args.repeats}: median seconds per module (ratio: per ABBA block, median [min, max])")
    print(f"{'module':<18} {'config':<8} {'accumulate':>10} {'quantize':>9} {'(shift)':>8} {'total':>7} {'x stock':>22}")
    for name in MODULES:
        for config in configs:
            s = summary[name][config]
            ratio = s["ratio"]
            print(f"{name:<18} {config:<8} {s['accumulate_s']['median']:>10.3f} {s['quantize_s']['median']:>9.3f} "
                  f"{s['shift_s']['median']:>8.3f} {s['seconds']['median']:>7.3f} "
                  f"{ratio['median']:>8.3f} [{ratio['min']:.3f}, {ratio['max']:.3f}]")
    if args.json:
        import gptqmodel
        import transformers

        from fair_gptq.machine import machine_record

        record = {"args": vars(args), "date": time.strftime("%Y-%m-%d"), "machine": machine_record(),
                  "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                               "gptqmodel": gptqmodel.__version__},
                  "n_batches": len(data["inputs"][MODULES[0]]), "summary": summary, "blocks": rows}
        Path(args.json).write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
