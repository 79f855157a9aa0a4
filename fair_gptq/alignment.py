"""Token alignment of calibration pairs: which pairs H01 compares token for token.

H01 takes the difference of the two sentences of a pair position by position, in the batch GPTQModel builds:
each sentence tokenized on its own, then right-padded to the longest row. When the two sentences have
different token counts, everything after the swapped word is shifted and compared with the wrong token.
`--pair-alignment equal-length` keeps only pairs whose sentences have the same number of tokens.

Token ids come from GPTQModel 2.2.0's own `prepare_dataset` (the tokenizer called on each string, special
tokens such as BOS included), so the counts are the ones quantization will see. Measure a model's pairs with

    python -m fair_gptq.alignment --model smollm2-135m      # the `calib` pairs of the shared StereoSet dev file
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from types import SimpleNamespace

from fair_gptq.pairs import PAIR_MODES, Pair, PairFilter

ALIGNMENTS = ("position", "equal-length")


def gptqmodel_token_ids(tokenizer, sentences: Sequence[str]) -> list[list[int]]:
    """Each sentence's token ids exactly as `GPTQModel.quantize()` prepares a list of strings (batch size 1: no pad)."""
    from gptqmodel.models.base import BaseGPTQModel

    # prepare_dataset only reads `self.tokenizer`; calling it on a stand-in runs GPTQModel's own code path.
    batches = BaseGPTQModel.prepare_dataset(SimpleNamespace(tokenizer=tokenizer),
                                            calibration_dataset=list(sentences), batch_size=1)
    return [batch["input_ids"][0].tolist() for batch in batches]


def token_counts(tokenizer, pairs: Sequence[Pair]) -> list[tuple[int, int]]:
    ids = gptqmodel_token_ids(tokenizer, [sentence for pair in pairs for sentence in pair])
    return [(len(ids[2 * i]), len(ids[2 * i + 1])) for i in range(len(pairs))]


def equal_length_filter(tokenizer) -> PairFilter:
    """Keeps the pairs whose two sentences have the same number of tokens under `tokenizer`."""
    def keep(pairs: Sequence[Pair]) -> list[bool]:
        return [n_s == n_a for n_s, n_a in token_counts(tokenizer, pairs)]

    return PairFilter(name="equal-length", keep=keep)


def differing_positions(first: Sequence[int], second: Sequence[int]) -> tuple[int, int]:
    """(positions that differ, positions compared) of two rows right-padded to the longer one.

    A position differs when the tokens differ or only one row has a token there (the other holds padding).
    """
    compared = max(len(first), len(second))
    same = sum(a == b for a, b in zip(first, second))
    return compared - same, compared


def alignment_stats(tokenizer, pairs: Sequence[Pair]) -> dict:
    """How well the pairs line up token for token, separately for pairs of equal and of different length."""
    ids = gptqmodel_token_ids(tokenizer, [sentence for pair in pairs for sentence in pair])
    groups = {"equal_length": [0, 0, 0], "different_length": [0, 0, 0]}  # pairs, differing, compared positions
    for i in range(len(pairs)):
        first, second = ids[2 * i], ids[2 * i + 1]
        group = groups["equal_length" if len(first) == len(second) else "different_length"]
        differing, compared = differing_positions(first, second)
        group[0] += 1
        group[1] += differing
        group[2] += compared
    stats = {"n_pairs": len(pairs)}
    for name, (n_pairs, differing, compared) in groups.items():
        stats[name] = {"n_pairs": n_pairs, "share_of_pairs": n_pairs / len(pairs) if pairs else None,
                       "differing_positions": differing, "compared_positions": compared,
                       "share_of_positions_differing": differing / compared if compared else None}
    return stats


def _tokenizer_for(model: str):
    from transformers import AutoTokenizer

    from fair_gptq.models import resolve_model

    # as GPTQModel.load() loads it for quantization (gptqmodel/models/loader.py)
    return AutoTokenizer.from_pretrained(resolve_model(model))


def main(argv=None) -> int:
    from fair_gptq.pairs import calibration_pairs

    p = argparse.ArgumentParser(description="Measure how calibration pairs align token for token under a "
                                            "model's tokenizer, as GPTQModel 2.2.0 tokenizes them.")
    p.add_argument("--model", default="smollm2-135m", help="hub id, local folder or preset (as the main job)")
    p.add_argument("--stereoset", default=None, help="StereoSet dev.json (default: the shared data file)")
    p.add_argument("--pairs", default="stereo-anti", choices=[m for m in PAIR_MODES if m != "file"])
    p.add_argument("--split", default="calib", choices=["calib", "eval", "all"])
    args = p.parse_args(argv)
    pair_set = calibration_pairs(args.stereoset, args.pairs, part=args.split)
    stats = alignment_stats(_tokenizer_for(args.model), pair_set.pairs)
    stats.update(model=args.model, pairs=args.pairs, split=args.split, split_version=pair_set.split["split_version"])
    print(json.dumps(stats, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
