"""The paired differences of one calibration batch: rows 2i and 2i+1 are a (stereotype, anti-stereotype) pair.

GPTQModel 7.7.0 pads a batch to its longest sentence (left or right, as the tokenizer pads) and hands the
processor a keep-mask [batch, seq] with the real tokens. Each sentence is taken without its padding and the
two sentences of a pair are compared position by position over their common length (the first
min(len_s, len_a) real tokens). The 2.2.0 overlay compared the padded rows instead, so there a real token of
the longer sentence met a pad token; here that tail adds nothing. Inputs flattened to [batch*seq, hidden]
(OPT's fc1/fc2) are unflattened with the keep-mask's shape, which is the batch's own.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch


def batch_rows(inp: torch.Tensor, keep_mask: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(sequences [batch, seq, hidden], keep [batch, seq] bool) of a 3-D or flattened 2-D module input."""
    if inp.dim() == 3:
        batch, seq = inp.shape[:2]
        if keep_mask is None:
            return inp, torch.ones((batch, seq), dtype=torch.bool, device=inp.device)
        if tuple(keep_mask.shape) != (batch, seq):
            raise ValueError(f"the keep-mask shape {tuple(keep_mask.shape)} does not match the input's "
                             f"(batch, seq) = {(batch, seq)}")
        return inp, keep_mask.to(device=inp.device, dtype=torch.bool)
    if inp.dim() == 2:
        if keep_mask is None or keep_mask.dim() != 2 or keep_mask.numel() != inp.shape[0]:
            raise ValueError(f"a flattened input of shape {tuple(inp.shape)} cannot be split into sequences: it "
                             f"needs the batch's keep-mask with {inp.shape[0]} positions, got "
                             f"{None if keep_mask is None else tuple(keep_mask.shape)}")
        batch, seq = keep_mask.shape
        return inp.reshape(batch, seq, inp.shape[-1]), keep_mask.to(device=inp.device, dtype=torch.bool)
    raise ValueError(f"the paired term needs a (batch, seq, hidden) or (batch*seq, hidden) input, got shape "
                     f"{tuple(inp.shape)}")


def aligned_masks(keep: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """[pairs, seq] masks of each pair's aligned positions: the first min(len_s, len_a) real tokens of the
    stereotype (row 2i) and of the anti-stereotype (row 2i+1). Both select the same number of positions per pair,
    in order, so x[0::2][stereo] and x[1::2][anti] line up row for row, pair after pair."""
    rank = keep.cumsum(dim=1) - 1  # the index of each real token among its sentence's real tokens
    common = torch.minimum(keep[0::2].sum(dim=1), keep[1::2].sum(dim=1)).unsqueeze(1)
    return keep[0::2] & (rank[0::2] < common), keep[1::2] & (rank[1::2] < common)


def pair_differences(inp: torch.Tensor, keep_mask: Optional[torch.Tensor]) -> Tuple[torch.Tensor, int]:
    """(the differences d = x_stereo - x_anti of every pair over its common positions, stacked as float32
    [positions, hidden]; number of pairs). The caller adds D^T D to its pair sum in one GEMM: a Gram per pair,
    or per batch, added to the sum afterwards would cost one more pass over a hidden x hidden matrix per batch,
    which for a small batch costs more than the GEMM itself (docs/benchmarks.md). Vectorised over the batch: a
    Python loop over pairs cost more than the GEMM at SmolLM2's sizes."""
    sequences, keep = paired_rows(inp, keep_mask)
    stereo, anti = aligned_masks(keep)
    return sequences[0::2][stereo].float() - sequences[1::2][anti].float(), sequences.shape[0] // 2


def pair_sums_and_differences(inp: torch.Tensor, keep_mask: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, int, int]:
    """fair_accumulate="sum-difference": (V, D, pairs, rows) of one batch, float32, such that

        V^T V + D^T D = 2 sum x x^T   over the rows 7.7.0 accumulates H from,
        D^T D         = S01           (pair_differences' sum, the same rows in the same order),

    rows being their number. For a pair's aligned positions x_s x_s^T + x_a x_a^T = (u u^T + d d^T) / 2 with
    u = x_s + x_a, d = x_s - x_a; every other row H counts (the longer sentence's tail; for a flattened 2-D input,
    which 7.7.0's hook passes whole, the pad rows too) enters V as sqrt(2) x. So H and S01 together cost the
    GEMM rows of H alone."""
    sequences, keep = paired_rows(inp, keep_mask)
    stereo, anti = aligned_masks(keep)
    counted = keep if inp.dim() == 3 else torch.ones_like(keep)  # the rows 7.7.0's hook gives add_batch
    first, second = sequences[0::2][stereo].float(), sequences[1::2][anti].float()
    rest = counted.clone()
    rest[0::2] &= ~stereo
    rest[1::2] &= ~anti
    tail = sequences[rest]
    V = torch.empty((first.shape[0] + tail.shape[0], sequences.shape[-1]), dtype=torch.float32, device=first.device)
    torch.add(first, second, out=V[:first.shape[0]])
    torch.mul(tail.float(), 2 ** 0.5, out=V[first.shape[0]:])
    return V, first.sub_(second), sequences.shape[0] // 2, int(counted.sum().item())


def paired_rows(inp: torch.Tensor, keep_mask: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """batch_rows, refusing a batch that is not whole pairs."""
    sequences, keep = batch_rows(inp, keep_mask)
    if sequences.shape[0] % 2 != 0:
        raise ValueError(f"a batch of {sequences.shape[0]} sequences (input shape {tuple(inp.shape)}); rows 2i and "
                         f"2i+1 are a (stereotype, anti-stereotype) pair, so the calibration batch size must be even")
    return sequences, keep
