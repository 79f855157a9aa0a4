"""The scoring engine: log-likelihoods of sentences and perplexity windows for a causal LM.

Sentence scoring follows lm-evaluation-harness's ``loglikelihood`` with an empty context (how
``crows_pairs_english`` scores each choice): the model sees one prefix token (the tokenizer's BOS id
if it has one, else its EOS id, see :func:`prefix_token_id`) followed by the sentence tokenized
*without* special tokens, and LL(sentence) = sum over every sentence token of log p(x_t | prefix,
x_<t). No length normalisation happens here; StereoSet's geometric mean is exp(LL / n_tokens)
(:func:`evaluation.metrics.stereoset_sentence_scores`).

Engine properties:

* batched and padding-aware: sequences are sorted by length (longest first), right-padded and
  masked, so a sentence scores the same alone or in a batch (within float tolerance);
* deterministic: no sampling, results come back in input order; duplicate texts are scored once;
* efficient: runs under ``torch.inference_mode()`` on the model's own device; only the real
  (non-pad) positions are normalised, with a float32 ``logsumexp`` over the vocabulary, and only the
  target token's logit is gathered (no full-vocabulary float64 log-softmax), see
  :func:`target_logprobs`. lm-eval takes the log-softmax in the model's dtype; taking it in float32
  differs from that only by rounding;
* memory-bounded: for the families in :data:`CHUNKED_HEAD_MODEL_TYPES` the decoder runs once and the
  output head makes logits for :data:`LOGIT_CHUNK_ELEMENTS` values at a time (:func:`sequence_logprobs`):
  one 2,048-token window of Gemma 3's 262,144-token vocabulary would otherwise be 2 GiB of logits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm


@dataclass(frozen=True)
class SequenceScore:
    """Sum of natural-log probabilities of the scored tokens, and how many were scored."""

    loglik: float
    n_tokens: int


# ----------------------------------------------------------------------------- model helpers


def model_device(model: torch.nn.Module) -> torch.device:
    """Device of the model's first parameter (or buffer: GPTQ kernels keep weights in buffers)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def model_max_length(model: torch.nn.Module) -> int | None:
    """The longest input the model's position embeddings allow, if its config says."""
    return config_max_length(getattr(model, "config", None))


def config_max_length(config) -> int | None:
    """Maximum positions from a transformers config (``None`` when it does not say)."""
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def prefix_token_id(tokenizer) -> int:
    """lm-eval's ``prefix_token_id``: BOS if the tokenizer has one, else EOS."""
    if tokenizer.bos_token_id is not None:
        return int(tokenizer.bos_token_id)
    if tokenizer.eos_token_id is not None:
        return int(tokenizer.eos_token_id)
    raise ValueError("the tokenizer has neither a BOS nor an EOS token to use as the scoring prefix")


def encode_sentences(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text without special tokens (lm-eval's ``tok_encode`` for causal LMs)."""
    if not texts:
        return []
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    for text, ids in zip(texts, encoded):
        if not ids:
            raise ValueError(f"text tokenizes to nothing: {text!r}")
    return [list(ids) for ids in encoded]


# ----------------------------------------------------------------------------- sentences


def _pad_id(tokenizer, fallback: int) -> int:
    # Which id fills padded slots does not matter (they are masked and never scored).
    pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
    return int(pad) if pad is not None else fallback


def target_logprobs(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """log p(target) at the ``valid`` positions of (batch, time, vocab) logits, in float32.

    Only the target logit is gathered and the normaliser is a float32 ``logsumexp`` over the
    vocabulary of the real (non-pad) positions. On CPU the rows go through ``logsumexp`` 32 at a
    time: cache-sized chunks make this step about 3x faster than one pass over all rows (measured
    with SmolLM2's 49,152-token vocabulary), which keeps the engine close to a bare forward pass.
    """
    flat = logits.reshape(-1, logits.shape[-1])
    rows = valid.reshape(-1).nonzero().squeeze(1)
    picked = flat.gather(1, targets.reshape(-1, 1)).squeeze(1)[rows].float()
    chunk = 32 if flat.device.type == "cpu" else max(1, rows.numel())
    norm = torch.empty(rows.numel(), dtype=torch.float32, device=flat.device)
    for start in range(0, rows.numel(), chunk):
        norm[start:start + chunk] = torch.logsumexp(flat.index_select(0, rows[start:start + chunk]).float(), dim=-1)
    return picked - norm


# Causal LMs whose logits are exactly head(decoder(ids)[0]), then Gemma's optional final softcapping
# (transformers 4.51 `*ForCausalLM.forward`); tested against the full forward for each kind of model.
CHUNKED_HEAD_MODEL_TYPES = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "opt"})
LOGIT_CHUNK_ELEMENTS = 1 << 25  # logits made at once: 128 MiB in float32 (~128 positions of Gemma 3)


def sequence_logprobs(model, input_ids, targets, valid, attention_mask=None) -> torch.Tensor:
    """log p(target) at the ``valid`` positions, as :func:`target_logprobs` of the model's logits.

    For :data:`CHUNKED_HEAD_MODEL_TYPES` the full (batch, time, vocab) logits never exist: the decoder's
    hidden states go through the output head a chunk of positions at a time. Other models get one
    ordinary forward pass.
    """
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in CHUNKED_HEAD_MODEL_TYPES:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        return target_logprobs(logits, targets, valid)
    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)[0]
    head, cap = model.get_output_embeddings(), getattr(config, "final_logit_softcapping", None)
    flat = hidden.reshape(-1, hidden.shape[-1])
    rows = valid.reshape(-1).nonzero().squeeze(1)
    flat_targets = targets.reshape(-1)
    step = max(1, LOGIT_CHUNK_ELEMENTS // head.out_features)
    out = torch.empty(rows.numel(), dtype=torch.float32, device=flat.device)
    for start in range(0, rows.numel(), step):
        chunk = rows[start:start + step]
        logits = head(flat.index_select(0, chunk))
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        out[start:start + step] = target_logprobs(logits, flat_targets[chunk], torch.ones_like(chunk, dtype=torch.bool))
    return out


def score_token_sequences(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    prefix_id: int,
    batch_size: int = 16,
    pad_id: int | None = None,
    desc: str = "scoring",
    progress: bool = True,
) -> list[SequenceScore]:
    """Log-likelihood of each token sequence after ``prefix_id``; results in input order.

    Sequences longer than the model's maximum length are cut on the left as lm-eval does (the
    tokens that no longer fit are neither context nor scored); ``n_tokens`` says how many were.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    device = model_device(model)
    max_len = model_max_length(model)
    pad_id = prefix_id if pad_id is None else pad_id
    full = []
    for seq in sequences:
        tokens = [prefix_id, *seq]
        if max_len is not None and len(tokens) - 1 > max_len:
            tokens = tokens[-(max_len + 1):]
        full.append(tokens)
    order = sorted(range(len(full)), key=lambda i: (-len(full[i]), i))
    results: list[SequenceScore | None] = [None] * len(full)
    n_tokens_total = sum(len(t) - 1 for t in full)
    bar = tqdm(total=n_tokens_total, desc=desc, unit="tok", disable=not progress, leave=False)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                batch = order[start:start + batch_size]
                lengths = [len(full[i]) - 1 for i in batch]
                width = max(lengths)
                input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                targets = torch.zeros((len(batch), width), dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, (i, length) in enumerate(zip(batch, lengths)):
                    tokens = torch.tensor(full[i], dtype=torch.long)
                    input_ids[row, :length] = tokens[:-1]
                    targets[row, :length] = tokens[1:]
                    mask[row, :length] = 1
                input_ids, targets, mask = input_ids.to(device), targets.to(device), mask.to(device)
                valid = mask.bool()
                token_logprobs = sequence_logprobs(model, input_ids, targets, valid, attention_mask=mask)
                rows = torch.arange(len(batch), device=device).unsqueeze(1).expand_as(valid)[valid]
                sums = torch.zeros(len(batch), dtype=torch.float64, device=device)
                sums.index_add_(0, rows, token_logprobs.double())
                for row, (i, length) in enumerate(zip(batch, lengths)):
                    results[i] = SequenceScore(float(sums[row]), length)
                bar.update(sum(lengths))
    finally:
        bar.close()
        model.train(was_training)
    return results  # type: ignore[return-value]


def score_sentences(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    batch_size: int = 16,
    desc: str = "scoring",
    progress: bool = True,
) -> list[SequenceScore]:
    """LL of each text as lm-eval scores a choice with an empty context (see module docstring).

    Identical texts are scored once; the result list matches ``texts`` one to one.
    """
    unique = list(dict.fromkeys(texts))
    sequences = encode_sentences(tokenizer, unique)
    prefix = prefix_token_id(tokenizer)
    scores = score_token_sequences(
        model, sequences, prefix, batch_size=batch_size, pad_id=_pad_id(tokenizer, prefix), desc=desc,
        progress=progress,
    )
    by_text = dict(zip(unique, scores))
    return [by_text[t] for t in texts]


# ----------------------------------------------------------------------------- perplexity


def effective_seqlen(model: torch.nn.Module, seqlen: int) -> int:
    """``seqlen`` capped at the model's maximum number of positions."""
    max_len = model_max_length(model)
    return min(seqlen, max_len) if max_len else seqlen


def encode_document(tokenizer, text: str) -> torch.Tensor:
    """Tokenize a whole document once, with the tokenizer's default special tokens (as GPTQ does)."""
    saved = tokenizer.model_max_length
    tokenizer.model_max_length = int(1e30)  # silence the "longer than the maximum" warning
    try:
        ids = tokenizer(text, return_tensors="pt").input_ids[0]
    finally:
        tokenizer.model_max_length = saved
    return ids


def window_perplexity(
    model: torch.nn.Module,
    token_ids: torch.Tensor,
    seqlen: int,
    max_windows: int | None = None,
    desc: str = "perplexity",
    progress: bool = True,
) -> dict:
    """GPTQ-convention perplexity: non-overlapping ``seqlen`` windows, exp(mean token NLL).

    Each window is scored on its own (no context carried over); its first token is context only,
    so a window contributes ``seqlen - 1`` token NLLs. A trailing partial window is dropped, as in
    GPTQ's ``nsamples = numel // seqlen``. Returns the NLL sum, token count, per-window NLL sums and
    the perplexity.
    """
    n_windows = token_ids.numel() // seqlen
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)
    if n_windows < 1:
        raise ValueError(f"the text has {token_ids.numel()} tokens, fewer than one window of {seqlen}")
    device = model_device(model)
    window_nll = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for i in tqdm(range(n_windows), desc=desc, unit="win", disable=not progress, leave=False):
                window = token_ids[i * seqlen:(i + 1) * seqlen].unsqueeze(0).to(device)
                targets = torch.roll(window, -1, dims=1)  # the wrapped-around last position is not scored
                valid = torch.arange(seqlen, device=device).unsqueeze(0) < seqlen - 1
                nll = -sequence_logprobs(model, window, targets, valid).double().sum()
                window_nll.append(float(nll))
    finally:
        model.train(was_training)
    n_tokens = n_windows * (seqlen - 1)
    nll_sum = math.fsum(window_nll)
    return {
        "ppl": math.exp(nll_sum / n_tokens),
        "nll_sum": nll_sum,
        "n_tokens": n_tokens,
        "n_windows": n_windows,
        "seqlen": seqlen,
        "window_nll": window_nll,
    }


def paper_perplexity(
    model: torch.nn.Module,
    tokenizer,
    text: str,
    n_ctx: int = 1024,
    max_windows: int | None = None,
    desc: str = "perplexity (paper)",
    progress: bool = True,
) -> dict:
    """The Fair-GPTQ paper's ``ppl-eval.py`` protocol (llama.cpp style), for comparison only.

    ``text`` is the paper's corpus (see :func:`evaluation.data.paper_wikitext_text`). Windows of
    ``n_ctx`` tokens, the first token of each replaced by BOS (when the tokenizer has one); only
    positions ``min(512, n_ctx // 2) .. n_ctx - 2`` are scored (each predicting the next token); a
    probability of exactly 0 counts as 1e-8. After every window the running perplexity
    exp(NLL so far / tokens so far) is recorded and the reported figure, ``ppl``, is the *mean of
    these running perplexities*, as the paper's script prints. ``ppl_final`` is the last running
    value (the plain exp(mean NLL) over every scored token). Not comparable with the GPTQ convention.
    """
    token_ids = encode_document(tokenizer, text)
    n_windows = token_ids.numel() // n_ctx
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)
    if n_windows < 1:
        raise ValueError(f"the text has {token_ids.numel()} tokens, fewer than one window of {n_ctx}")
    first = min(512, n_ctx // 2)
    floor = math.log(1e-8)
    device = model_device(model)
    bos = tokenizer.bos_token_id
    nll_sum, count, running, window_nll = 0.0, 0, [], []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for i in tqdm(range(n_windows), desc=desc, unit="win", disable=not progress, leave=False):
                window = token_ids[i * n_ctx:(i + 1) * n_ctx].clone()
                if bos is not None:
                    window[0] = bos  # never a target: the first scored position is >= 1
                window = window.unsqueeze(0).to(device)
                positions = torch.arange(n_ctx, device=device).unsqueeze(0)
                scored = (positions >= first) & (positions < n_ctx - 1)
                logprobs = sequence_logprobs(model, window, torch.roll(window, -1, dims=1), scored)
                logprobs = torch.where(logprobs.exp() > 0, logprobs, torch.full_like(logprobs, floor))
                window_nll.append(float(-logprobs.double().sum()))
                nll_sum += window_nll[-1]
                count += int(scored.sum())
                running.append(math.exp(nll_sum / count))
    finally:
        model.train(was_training)
    return {
        "ppl": sum(running) / len(running),
        "ppl_final": running[-1],
        "nll_sum": nll_sum,
        "n_tokens": count,
        "n_windows": n_windows,
        "seqlen": n_ctx,
        "scored_positions": [first, n_ctx - 2],
        "window_nll": window_nll,
    }
