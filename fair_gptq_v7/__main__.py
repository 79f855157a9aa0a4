"""The main job on GPTQModel 7.7.0: `.venv-gptqmodel7/bin/python -m fair_gptq_v7 --model smollm2-135m --out DIR`.

The same calibration pairs, layer strategies and per-family ignore_bias defaults as example_fair_gptq.py (the
2.2.0 job), from the same helpers in fair_gptq/; quantizes with fair_gptq_v7, saves atomically (a temporary
folder beside --out, renamed when complete), reloads the checkpoint and generates from --prompt.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# GPTQModel 7.7.0's CPU kernel torch.compile()s its dequantize step; on this 2-core machine that made the first
# generated tokens take minutes (measured), so compile is off unless the caller sets the variable
os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")

from fair_gptq import layers as fair_layers  # noqa: E402
from fair_gptq.models import resolve_model  # noqa: E402
from fair_gptq.pairs import calibration_pairs  # noqa: E402

from . import gating  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fair_gptq_v7", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="preset name, local folder or hub id")
    p.add_argument("--out", required=True, help="folder for the quantized model")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--strategy", default="all", choices=fair_layers.STRATEGIES)
    p.add_argument("--select-layer", default="", help="layer indices, e.g. 0,1,30-31 (overrides --strategy)")
    p.add_argument("--ignore-bias", default=None, help="modules without the term (default: by model family)")
    p.add_argument("--sum-hessians", type=int, default=1, choices=[0, 1])
    p.add_argument("--fair-accumulate", default="direct", choices=["direct", "sum-difference"],
                   help="sum-difference: modules with the term build H and H01 from pair sums and differences "
                        "(H differs from stock by float rounding; fewer flops)")
    p.add_argument("--log-delta-w", action="store_true", help="log ||dW|| per module to <out>/fair_logs")
    p.add_argument("--bits", type=int, default=4, choices=[2, 3, 4, 8])
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--damp-percent", type=float, default=0.01,
                   help="2.2.0's default; GPTQModel 7.7.0's own default is 0.05")
    p.add_argument("--act-group-aware", action="store_true",
                   help="7.7.0's column ordering by activation groups (its default; off here to match 2.2.0)")
    p.add_argument("--batch-size", type=int, default=2, help="even: rows 2i, 2i+1 are a pair")
    p.add_argument("--stereoset", default=None, help="StereoSet dev.json (default: the shared data folder)")
    p.add_argument("--pairs-file", default=None,
                   help="JSON list of [stereotype, anti-stereotype] pairs instead of StereoSet's")
    p.add_argument("--max-pairs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt", default="The nurse said that")
    p.add_argument("--max-new-tokens", type=int, default=12)
    p.add_argument("--no-generate", action="store_true", help="skip reload and generation")
    return p


def plan(args):
    """Everything that can fail on bad input, before a weight is loaded: (model path, ignore_bias, layers, pairs)."""
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise SystemExit(f"error: --out {out} exists; pass --overwrite to replace it")
    if args.batch_size < 2 or args.batch_size % 2:
        raise SystemExit(f"error: --batch-size {args.batch_size} must be even (rows 2i, 2i+1 are a pair)")
    mode = "file" if args.pairs_file else "stereo-anti"
    pairs = calibration_pairs(args.stereoset, mode, max_pairs=args.max_pairs, seed=args.seed, pairs_file=args.pairs_file)
    from transformers import AutoConfig
    model_path = resolve_model(args.model)
    config = AutoConfig.from_pretrained(model_path)
    num_layers = fair_layers.num_decoder_layers(config)
    explicit = [int(i) for i in gating.parse_select_layer(args.select_layer)]
    layers = fair_layers.resolve_fair_layers(args.strategy, num_layers, explicit or None)
    ignore = args.ignore_bias if args.ignore_bias is not None else fair_layers.default_ignore_bias(config.model_type)
    modules = fair_layers.decoder_linear_names(config)
    unknown = [e for e in gating.parse_ignore_bias(ignore) if not any(gating.ignore_bias_matches(e, m) for m in modules)]
    if unknown:
        raise SystemExit(f"error: --ignore-bias {unknown} match no linear module of a decoder layer "
                         f"({', '.join(sorted({m.rsplit('.', 1)[-1] for m in modules}))})")
    return model_path, ",".join(gating.parse_ignore_bias(ignore)), layers, pairs


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    model_path, ignore, layers, pairs = plan(args)
    import torch
    from gptqmodel import BACKEND, GPTQModel

    import fair_gptq_v7

    out = Path(args.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    qcfg = fair_gptq_v7.FairGPTQConfig(
        bits=args.bits, group_size=args.group_size, damp_percent=args.damp_percent, device="cpu",
        desc_act=False, act_group_aware=args.act_group_aware,
        alpha=args.alpha, ignore_bias=ignore, select_layer=",".join(map(str, layers)),
        sum_hessians=args.sum_hessians, fair_accumulate=args.fair_accumulate, log_delta_w=int(args.log_delta_w), log_dir=str(tmp / "fair_logs"))
    print(f"Fair-GPTQ on GPTQModel 7.7.0: {pairs.n_pairs} pairs, alpha={args.alpha}, layers {qcfg.select_layer}, "
          f"ignore_bias '{ignore}'", flush=True)
    start = time.time()
    model = GPTQModel.load(model_path, qcfg, dtype=torch.float32)
    fair_gptq_v7.quantize(model, pairs.sentences, batch_size=args.batch_size, backend=BACKEND.TORCH)
    quantize_s = time.time() - start
    model.save(str(tmp))
    record = {"args": vars(args), "model_path": str(model_path), "n_pairs": pairs.n_pairs,
              "calibration_sha256": pairs.sha256, "quantize_s": round(quantize_s, 1),
              "gptqmodel": "7.7.0", "torch": torch.__version__, "run_id": qcfg.log_run_id}
    (tmp / "fair_gptq_run.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    print(f"saved {out} (quantize {quantize_s:.0f} s)", flush=True)
    if args.no_generate:
        return 0
    reloaded = GPTQModel.load(str(out), device="cpu", backend=BACKEND.TORCH)
    ids = reloaded.tokenizer(args.prompt, return_tensors="pt")
    generated = reloaded.model.generate(**ids, max_new_tokens=args.max_new_tokens, do_sample=False)
    print(reloaded.tokenizer.decode(generated[0], skip_special_tokens=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
