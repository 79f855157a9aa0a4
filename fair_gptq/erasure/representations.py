"""Where an eraser acts, and the sentence representations it is fitted on.

The location is the input of the model's output embeddings (`model.get_output_embeddings()`, the LM head):
the final hidden state after the last norm, whatever the family calls that module. Fitting captures this
tensor with a forward pre-hook on the head, the same kind of hook that applies the eraser (hook.py), so the
two can never disagree about the place.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fair_gptq.batching import right_padded

HIDDEN_STATE_LOCATION = "input of get_output_embeddings() (final hidden state after the last norm)"
POOLING = "mean over the sentence's tokens, after one prefix token (BOS, else EOS)"


def output_head(model: torch.nn.Module) -> torch.nn.Module:
    """The LM head whose input is the erased hidden state."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings (get_output_embeddings() is None): "
                         "an eraser acts on the input of the LM head")
    return head


def head_input_size(model: torch.nn.Module) -> int:
    """Width of the erased hidden state (the head's input features)."""
    head = output_head(model)
    size = getattr(head, "in_features", None)
    if size is None:
        size = head.weight.shape[-1]
    return int(size)


def _model_device(model: torch.nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _encode(tokenizer, sentences: Sequence[str], prefix_id: int) -> list[list[int]]:
    # As the scoring engine (evaluation/scoring.py) feeds a sentence: a prefix token, then the sentence
    # tokenized without special tokens.
    encoded = tokenizer(list(sentences), add_special_tokens=False)["input_ids"]
    for sentence, ids in zip(sentences, encoded):
        if not ids:
            raise ValueError(f"sentence tokenizes to nothing: {sentence!r}")
    return [[prefix_id, *ids] for ids in encoded]


@torch.inference_mode()
def pooled_representations(model: torch.nn.Module, tokenizer, sentences: Sequence[str], prefix_id: int,
                           batch_size: int = 16) -> np.ndarray:
    """(n, d) float64: for each sentence, the head's input averaged over the sentence's token positions.

    Batches are right-padded with an attention mask; a causal model's states at the real positions do
    not depend on the padding after them, and the padded positions are left out of the mean.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sequences = _encode(tokenizer, sentences, prefix_id)
    device, captured = _model_device(model), []
    handle = output_head(model).register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    was_training = model.training
    model.eval()
    pooled = []
    try:
        for start in range(0, len(sequences), batch_size):
            batch = sequences[start:start + batch_size]
            input_ids, mask = right_padded(batch, prefix_id)
            captured.clear()
            model(input_ids=input_ids.to(device), attention_mask=mask.to(device))
            if len(captured) != 1:
                raise RuntimeError(f"the LM head ran {len(captured)} times in one forward pass, expected once")
            hidden = captured[0].double().cpu()  # (batch, width, d)
            sentence_positions = mask.clone()
            sentence_positions[:, 0] = 0  # the prefix token is not part of the sentence
            weights = sentence_positions.double().unsqueeze(-1)
            pooled.append((hidden * weights).sum(dim=1) / weights.sum(dim=1))
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(pooled).numpy()
