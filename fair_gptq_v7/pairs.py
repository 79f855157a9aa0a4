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


def pair_differences(inp: torch.Tensor, keep_mask: Optional[torch.Tensor]) -> Tuple[torch.Tensor, int]:
    """(the differences d = x_stereo - x_anti of every pair over its common positions, stacked as float32
    [positions, hidden]; number of pairs). The caller adds D^T D to its pair sum in one GEMM: a Gram per pair,
    or per batch, added to the sum afterwards would cost one more pass over a hidden x hidden matrix per batch,
    which for a small batch costs more than the GEMM itself (docs/benchmarks.md)."""
    sequences, keep = batch_rows(inp, keep_mask)
    batch = sequences.shape[0]
    if batch % 2 != 0:
        raise ValueError(f"a batch of {batch} sequences (input shape {tuple(inp.shape)}); rows 2i and 2i+1 are a "
                         f"(stereotype, anti-stereotype) pair, so the calibration batch size must be even")
    firsts, seconds = [], []
    for pair in range(batch // 2):
        stereo = sequences[2 * pair][keep[2 * pair]]
        anti = sequences[2 * pair + 1][keep[2 * pair + 1]]
        common = min(stereo.shape[0], anti.shape[0])
        firsts.append(stereo[:common])
        seconds.append(anti[:common])
    # written into one preallocated float32 matrix: no per-pair temporaries and no second copy by concatenation
    deltas = torch.empty((sum(f.shape[0] for f in firsts), sequences.shape[-1]), dtype=torch.float32,
                         device=sequences.device)
    offset = 0
    for stereo, anti in zip(firsts, seconds):
        torch.sub(stereo.float(), anti.float(), out=deltas[offset:offset + stereo.shape[0]])
        offset += stereo.shape[0]
    return deltas, batch // 2
