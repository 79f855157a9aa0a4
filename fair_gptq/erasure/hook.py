"""Applying an eraser at inference: a forward pre-hook on the LM head replaces its input h by the erased h.

This is bias-bench's `INLPGPT2LMHeadModel` for any causal LM: every position's final hidden state is
erased before the head sees it, whether the head runs inside `model(...)`, in `generate`, or is called
directly on decoder states (the scoring engine's chunked head, evaluation/scoring.py). Nothing else in the
model changes; the erased tensor is a new one (the decoder's own output is left as it was).
"""

from __future__ import annotations

import torch
from torch.utils.hooks import RemovableHandle

from fair_gptq.erasure.artifact import Eraser
from fair_gptq.erasure.representations import head_input_size, output_head


def attach_eraser(model: torch.nn.Module, eraser: Eraser) -> RemovableHandle:
    """Erase the LM head's input of `model` from now on; `handle.remove()` undoes it."""
    width = head_input_size(model)
    if width != eraser.hidden_size:
        raise ValueError(f"the eraser is for hidden states of width {eraser.hidden_size}, but this model's LM head "
                         f"takes {width}: it was fitted on another model")
    # one copy per device and dtype instead of one per forward pass
    prepared: dict[tuple, Eraser] = {}

    def erase_head_input(module, args, kwargs):
        if not args or not isinstance(args[0], torch.Tensor):
            raise RuntimeError("the LM head was called without a positional hidden-state tensor: cannot erase it")
        hidden = args[0]
        key = (hidden.device, torch.promote_types(hidden.dtype, torch.float32))
        if key not in prepared:
            prepared[key] = Eraser(eraser.kind, eraser.projection.to(*key),
                                   None if eraser.bias is None else eraser.bias.to(*key), eraser.metadata)
        return (prepared[key].apply(hidden), *args[1:]), kwargs

    return output_head(model).register_forward_pre_hook(erase_head_input, with_kwargs=True)
