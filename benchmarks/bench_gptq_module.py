#!/usr/bin/env python3
"""Benchmark: what the Fair-GPTQ term costs one module, stock GPTQ's class against the overlay's, in one process.

bench_quantize.py times what a user waits for, but on a shared 2-core VM its run-to-run spread (about ±10 %)
hides a few percent. Here the inputs of real modules (by default SmolLM2's o_proj and down_proj of one layer, on
the calibration pairs, batch 2) are captured once from the full-precision model; then each configuration
accumulates them (add_batch over every batch) and quantizes (quantize(), the shift included), in ABBA blocks,
many times. The per-step times account for the difference line by line; times 2 modules x layers they predict
the whole-model overhead.

    python benchmarks/bench_gptq_module.py --model smollm2-135m --pairs 128 --layer 15 --repeats 10

--shapes replaces the captured modules by synthetic ones of a larger model's shapes (seeded Gaussian weights;
each pair's second row is its first plus noise, so the pair difference is a small, full-rank signal), which needs
no model and runs on --device cuda: what the term costs a 7B model's modules on a GPU (the shapes of Llama-2-7B's
o_proj and down_proj, columns x rows):

    python benchmarks/bench_gptq_module.py --shapes 4096x4096,11008x4096 --device cuda --repeats 5
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
MODULES = ("self_attn.o_proj", "mlp.down_proj")  # captured from the model (without --shapes)


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


def synthetic_inputs(shapes: list[tuple[int, int]], pairs: int, seq: int, device: str, seed: int = 0) -> dict:
    """Modules of the given (columns, rows) shapes with Gaussian weights, and `pairs` batches of one pair each:
    (2, seq, columns), the second row the first plus 0.3x independent noise (aligned tokens, as a real pair's)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    inputs, weights = {}, {}
    for columns, rows in shapes:
        name = f"synthetic.{columns}x{rows}"
        weights[name] = (torch.randn(rows, columns, generator=generator) / columns ** 0.5).to(device)
        batches = []
        for _ in range(pairs):
            first = torch.randn(seq, columns, generator=generator)
            batches.append(torch.stack([first, first + 0.3 * torch.randn(seq, columns, generator=generator)]).to(device))
        inputs[name] = batches
    return {"inputs": inputs, "weights": weights}


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """"4096x4096,11008x4096" -> [(4096, 4096), (11008, 4096)] (columns = input features, rows = output features)."""
    try:
        return [tuple(int(n) for n in item.lower().split("x", 1)) for item in text.split(",") if item.strip()]
    except ValueError:
        raise SystemExit(f"--shapes: expected COLUMNSxROWS[,COLUMNSxROWS...], got {text!r}")


def add_input_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments both module benchmarks (this one and bench_gptq_module_v7.py) share."""
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--pairs", type=int, default=128)
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--shapes", default=None,
                   help="synthetic modules COLUMNSxROWS[,...] instead of the model's captured ones")
    p.add_argument("--seq", type=int, default=64, help="--shapes: tokens per calibration sentence")
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=10, help="ABBA blocks")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--json", default=None)


def load_inputs(args, device: str) -> tuple[dict, int, str]:
    """(modules' inputs and weights, number of pairs, a one-line description): synthetic with --shapes, else
    captured from the model's layer on the calibration pairs."""
    if args.shapes:
        data = synthetic_inputs(parse_shapes(args.shapes), args.pairs, args.seq, device)
        return data, args.pairs, f"synthetic {args.shapes}, seq {args.seq}"
    from fair_gptq.models import resolve_model
    from fair_gptq.pairs import calibration_pairs

    pairs = calibration_pairs(None, max_pairs=args.pairs, seed=0)
    data = capture_inputs(resolve_model(args.model), pairs.sentences, args.layer)
    return data, pairs.n_pairs, f"model={args.model} layer={args.layer}"


def time_one(config: str, name: str, layer: int, weight, batches: list, group_size: int, stock_class) -> dict:
    """Seconds of add_batch over every batch, of quantize(), and of the shift inside it (0 for stock); on CUDA also
    the peak memory the task allocated beyond what was resident before it (the inputs, the weight)."""
    import torch

    cuda = weight.is_cuda
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        sync()
        resident = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    from gptqmodel.looper.named_module import NamedModule
    from gptqmodel.quantization import GPTQ, QuantizeConfig

    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device)
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
            sync()
            started = time.perf_counter()
            try:
                return shift(W)
            finally:
                sync()
                shift_seconds[0] += time.perf_counter() - started
        task._fair_shift_weights = timed_shift
    sync()
    started = time.perf_counter()
    for batch in batches:
        task.add_batch(batch, None)
    sync()
    accumulate = time.perf_counter() - started
    started = time.perf_counter()
    task.quantize()
    sync()
    quantize = time.perf_counter() - started
    peak_mib = (torch.cuda.max_memory_allocated() - resident) / 2 ** 20 if cuda else None
    task.free()
    return {"config": config, "module": name, "accumulate_s": accumulate, "quantize_s": quantize,
            "shift_s": shift_seconds[0], "seconds": accumulate + quantize, "peak_extra_mib": peak_mib}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_input_arguments(p)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the modules and inputs live (cuda needs --shapes)")
    p.add_argument("--configs", default=",".join(CONFIGS))
    args = p.parse_args(argv)

    import torch

    from fair_gptq.upstream import load_upstream_module

    configs = [c.strip() for c in args.configs.split(",")]
    if "stock" not in configs or any(c not in CONFIGS for c in configs):
        p.error(f"--configs must list stock and any of {', '.join(CONFIGS)}")
    if args.device == "cuda" and not args.shapes:
        p.error("--device cuda needs --shapes (the captured inputs come from a CPU forward pass)")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    stock_class = load_upstream_module("gptq").GPTQ  # GPTQModel 2.2.0's own GPTQ, loaded once
    data, n_pairs, source = load_inputs(args, args.device)
    modules = list(data["inputs"])
    rows: dict[str, list[list[dict]]] = {name: [] for name in modules}
    with torch.inference_mode():
        for name in modules:
            for config in configs:  # warm-up: each configuration's one-time costs (CUDA kernels, caches) paid here
                time_one(config, name, args.layer, data["weights"][name], data["inputs"][name], args.group_size,
                         stock_class)
            for repeat in range(args.repeats):
                rows[name].append([time_one(c, name, args.layer, data["weights"][name], data["inputs"][name],
                                            args.group_size, stock_class) for c in abba_order(configs)])
            print(f"  {name}: {args.repeats} blocks done", flush=True)

    summary = summarise_modules(rows, configs)
    print(f"\n{source} device={args.device} pairs={n_pairs} threads={torch.get_num_threads()} "
          f"blocks={args.repeats}: median seconds per module (ratio: per ABBA block, median [min, max])")
    print(f"{'module':<22} {'config':<8} {'accumulate':>10} {'quantize':>9} {'(shift)':>8} {'total':>7} "
          f"{'x stock':>22}{'  peak MiB x stock' if args.device == 'cuda' else ''}")
    for name in modules:
        for config in configs:
            s = summary[name][config]
            ratio = s["ratio"]
            memory = f"  {s['peak_ratio']['median']:.3f}" if "peak_ratio" in s else ""
            print(f"{name:<22} {config:<8} {s['accumulate_s']['median']:>10.4f} {s['quantize_s']['median']:>9.4f} "
                  f"{s['shift_s']['median']:>8.4f} {s['seconds']['median']:>7.4f} "
                  f"{ratio['median']:>8.3f} [{ratio['min']:.3f}, {ratio['max']:.3f}]{memory}")
    if args.json:
        import gptqmodel
        import transformers

        from fair_gptq.machine import machine_record
        from fair_gptq.paths import portable_record

        machine = machine_record()
        if args.device == "cuda":
            machine["gpu"] = torch.cuda.get_device_name()
            machine["cuda"] = torch.version.cuda
        record = {"args": vars(args), "date": time.strftime("%Y-%m-%d"), "machine": machine,
                  "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                               "gptqmodel": gptqmodel.__version__},
                  "n_batches": len(data["inputs"][modules[0]]), "summary": summary, "blocks": rows}
        Path(args.json).write_text(json.dumps(portable_record(record), indent=2))
    return 0


def summarise_modules(rows: dict[str, list[list[dict]]], configs: list[str]) -> dict:
    """Per module and configuration: the spread of each step's seconds and of the per-block ratios to stock (and,
    where the runs measured it, of the peak extra memory and its per-block ratio)."""
    summary = {}
    for name, blocks in rows.items():
        summary[name] = {}
        for config in configs:
            runs = [r for block in blocks for r in block if r["config"] == config]
            entry = {key: spread([r[key] for r in runs]) for key in ("accumulate_s", "quantize_s", "shift_s", "seconds")}
            entry["ratio"] = spread([block_ratios(b, "seconds")[config] for b in blocks])
            if runs[0].get("peak_extra_mib") is not None:
                entry["peak_extra_mib"] = spread([r["peak_extra_mib"] for r in runs])
                entry["peak_ratio"] = spread([peak_ratio(b, config) for b in blocks])
            summary[name][config] = entry
    return summary


def peak_ratio(block: list[dict], config: str) -> float:
    """The largest peak of a configuration's runs in the block over stock's largest (peaks do not add up)."""
    peak = max(r["peak_extra_mib"] for r in block if r["config"] == config)
    return peak / max(r["peak_extra_mib"] for r in block if r["config"] == "stock")


if __name__ == "__main__":
    sys.exit(main())
