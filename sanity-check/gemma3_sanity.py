#!/usr/bin/env python3
"""Sanity check of a converted model preset (default: gemma3-270m) before using it in the study.

Prints the greedy continuation of a prompt with the top-5 next tokens, and WikiText-2 perplexity on
the first N windows of 2,048 tokens twice: GPTQ convention (the document tokenized once, cut into
windows; only the first window starts with the tokenizer's BOS) and with the first token of every
window replaced by BOS (the same 2,047 targets per window). Peak RSS at the end.

    .venv/bin/python sanity-check/gemma3_sanity.py --model gemma3-270m --windows 3
"""
from __future__ import annotations

import argparse
import math
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation.scoring import encode_document, window_perplexity  # noqa: E402
from fair_gptq import paths  # noqa: E402
from fair_gptq.models import resolve_model  # noqa: E402

SEQLEN = 2048


def with_bos_at_window_starts(token_ids, bos_id: int, seqlen: int):
    """Window i's first token (context only, never a target) becomes BOS."""
    out = token_ids.clone()
    out[::seqlen] = bos_id
    return out


def report(name: str, result: dict) -> None:
    per_window = [round(math.exp(nll / (SEQLEN - 1)), 2) for nll in result["window_nll"]]
    print(f"WikiText-2 {name}: ppl {result['ppl']:.2f} over {result['n_windows']} windows of {SEQLEN} "
          f"(per window {per_window})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--prompt", default="The capital of France is")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()

    prompt = tokenizer(args.prompt, return_tensors="pt")
    with torch.inference_mode():
        top5 = model(**prompt).logits[0, -1].topk(5).indices.tolist()
        greedy = model.generate(**prompt, max_new_tokens=20, do_sample=False)[0, prompt.input_ids.shape[1]:]
    print(f"{args.prompt!r} -> {tokenizer.decode(greedy)!r}; top-5 next: {tokenizer.convert_ids_to_tokens(top5)}")

    text = (paths.shared_data_dir() / paths.WIKITEXT2_DIR / "wikitext2_test_joined.txt").read_text(encoding="utf-8")
    ids = encode_document(tokenizer, text)
    report("GPTQ convention", window_perplexity(model, ids, SEQLEN, args.windows, progress=False))
    if tokenizer.bos_token_id is not None:
        bos_ids = with_bos_at_window_starts(ids, tokenizer.bos_token_id, SEQLEN)
        report("BOS first in every window", window_perplexity(model, bos_ids, SEQLEN, args.windows, progress=False))
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
