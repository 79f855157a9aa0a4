"""Chunked log-probabilities (evaluation.scoring.sequence_logprobs): Gemma 3's 262,144-token vocabulary
makes one 2,048-token window's logits 2 GiB, so the output head runs a chunk of positions at a time.

Checked against the model's own full forward pass for every kind of model the chunked path serves,
with chunks forced small, and at the real vocabulary size against an independent cross-entropy.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import gemma3_helpers as helpers
from model_init import initialised_weights
from evaluation import scoring


def full_forward_logprobs(model, input_ids, targets, valid, attention_mask=None):
    """The reference: the model's own logits (softcapping included), then target_logprobs."""
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return scoring.target_logprobs(logits, targets, valid)


def padded_batch(vocab_size: int, lengths=(11, 7, 3), seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(4, vocab_size, (len(lengths), width), generator=generator)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    targets = torch.randint(4, vocab_size, ids.shape, generator=generator)
    return ids, targets, mask


def load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()


def models_to_check(tiny_opt_dir, tiny_mistral_dir, shared_data_dir):
    from transformers import OPTConfig, OPTForCausalLM

    yield "tiny OPT", load(tiny_opt_dir)
    torch.manual_seed(0)  # OPT whose decoder projects 32 -> 16 before the head
    with initialised_weights():
        opt_project_out = OPTForCausalLM(OPTConfig(
            vocab_size=300, hidden_size=32, word_embed_proj_dim=16, ffn_dim=64, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=64)).eval()
    yield "OPT with project_out", opt_project_out
    yield "tiny Mistral", load(tiny_mistral_dir)
    stories = shared_data_dir / "models" / "stories260K-hf"
    if stories.is_dir():
        yield "stories260K (llama)", load(stories)
    yield "Gemma 3", helpers.tiny_gemma3(vocab_size=300, block_count=7)
    yield "Gemma 3 with final logit softcapping", helpers.tiny_gemma3(
        vocab_size=300, block_count=2, final_logit_softcapping=0.5)


def test_chunked_equals_the_full_forward(tiny_opt_dir, tiny_mistral_dir, shared_data_dir, monkeypatch):
    checked = []
    for name, model in models_to_check(tiny_opt_dir, tiny_mistral_dir, shared_data_dir):
        assert model.config.model_type in scoring.CHUNKED_HEAD_MODEL_TYPES, name
        vocab = model.get_output_embeddings().out_features
        monkeypatch.setattr(scoring, "LOGIT_CHUNK_ELEMENTS", 3 * vocab)  # 3 positions per chunk
        ids, targets, mask = padded_batch(min(vocab, model.config.vocab_size))
        valid = mask.bool()
        with torch.no_grad():
            chunked = scoring.sequence_logprobs(model, ids, targets, valid, attention_mask=mask)
        reference = full_forward_logprobs(model, ids, targets, valid, attention_mask=mask)
        assert chunked.shape == (int(valid.sum()),), name
        torch.testing.assert_close(chunked, reference, rtol=0, atol=1e-5, msg=name)
        checked.append(name)
    assert "Gemma 3 with final logit softcapping" in checked


def test_softcapping_is_applied():
    """Without the cap the numbers differ: the chunked path must apply it, as the model does."""
    capped = helpers.tiny_gemma3(vocab_size=300, block_count=2, final_logit_softcapping=0.5)
    ids, targets, mask = padded_batch(300)
    valid = mask.bool()
    with torch.no_grad():
        ours = scoring.sequence_logprobs(capped, ids, targets, valid, attention_mask=mask)
        capped.config.final_logit_softcapping = None
        uncapped = full_forward_logprobs(capped, ids, targets, valid, attention_mask=mask)
    assert not torch.allclose(ours, uncapped, atol=1e-3)


def test_other_models_take_one_full_forward():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_positions=32, n_embd=16, n_layer=1, n_head=2)).eval()
    assert model.config.model_type not in scoring.CHUNKED_HEAD_MODEL_TYPES
    ids, targets, mask = padded_batch(100)
    with torch.no_grad():
        ours = scoring.sequence_logprobs(model, ids, targets, mask.bool(), attention_mask=mask)
    torch.testing.assert_close(ours, full_forward_logprobs(model, ids, targets, mask.bool(), attention_mask=mask))


def test_real_vocabulary_size_window_is_scored_in_bounded_chunks():
    """262,144 logits per position: the head never sees more than LOGIT_CHUNK_ELEMENTS of them at once,
    and the window perplexity equals cross-entropy over the model's full logits."""
    model = helpers.tiny_gemma3(vocab_size=262_144, block_count=2)
    seqlen = 300
    tokens = torch.randint(4, 262_144, (2 * seqlen,), generator=torch.Generator().manual_seed(1))
    rows_seen = []
    hook = model.get_output_embeddings().register_forward_hook(
        lambda module, args, out: rows_seen.append(out.numel() // out.shape[-1]))
    try:
        result = scoring.window_perplexity(model, tokens, seqlen, progress=False)
    finally:
        hook.remove()
    limit = scoring.LOGIT_CHUNK_ELEMENTS // 262_144
    assert limit == 128 and max(rows_seen) <= limit
    assert sum(rows_seen) == 2 * (seqlen - 1)  # only the scored positions went through the head

    nll = 0.0
    with torch.no_grad():
        for i in range(2):
            window = tokens[i * seqlen:(i + 1) * seqlen].unsqueeze(0)
            logits = model(input_ids=window).logits[0, :-1]
            nll += float(F.cross_entropy(logits.double(), window[0, 1:], reduction="sum"))
    assert result["n_tokens"] == 2 * (seqlen - 1)
    assert math.isclose(result["ppl"], math.exp(nll / result["n_tokens"]), rel_tol=1e-5)


def test_paper_protocol_on_the_chunked_path(monkeypatch):
    """The paper's protocol scores positions first..n_ctx-2 after putting BOS first: same numbers chunked."""
    model = helpers.tiny_gemma3(vocab_size=300, block_count=2)

    class Tokenizer:  # what paper_perplexity uses of a tokenizer
        bos_token_id = 2
        model_max_length = 10**6

        def __call__(self, text, return_tensors=None):
            ids = torch.tensor([[2] + [4 + (ord(c) % 290) for c in text]])
            return type("Encoded", (), {"input_ids": ids})()

    text = "The nurse helped the patient; the engineer fixed the bridge. " * 8
    chunked = scoring.paper_perplexity(model, Tokenizer(), text, n_ctx=64, progress=False)
    monkeypatch.setattr(scoring, "CHUNKED_HEAD_MODEL_TYPES", frozenset())  # force the full forward
    full = scoring.paper_perplexity(model, Tokenizer(), text, n_ctx=64, progress=False)
    assert chunked["n_tokens"] == full["n_tokens"] == chunked["n_windows"] * (64 - 1 - 32)
    assert math.isclose(chunked["ppl"], full["ppl"], rel_tol=1e-6)
