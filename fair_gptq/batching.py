"""Token sequences of different lengths as one right-padded batch (the layout every causal LM here is fed)."""

from __future__ import annotations


def right_padded(sequences: list[list[int]], pad_id: int):
    """(input_ids, attention_mask), both (len(sequences), longest) long tensors: each sequence from the left, then
    `pad_id` with mask 0. Right padding keeps every real token at its position, so causal scores do not move."""
    import torch

    width = max(len(seq) for seq in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, :len(seq)] = 1
    return input_ids, mask
