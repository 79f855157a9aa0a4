"""The scoring engine (evaluation/scoring.py) against independent computations on tiny models."""

from __future__ import annotations

import math
import types

import pytest
import torch

from evaluation import scoring

SENTENCES = [
    "The nurse helped the patient.",
    "He couldn't figure out the issue with the rope, but he tried not to get too down on himself.",
    "Cats have sharp claws.",
    "Many people live in Ethiopia.",
    "The engineer fixed the bridge while the teacher graded papers in the evening.",
    "A",
    "Once upon a time there was a little girl who liked to play in the park with her dog.",
    "Numbers like 1, 2, 3, 42 and 2024 appear in text too.",
    "She said that he would come back tomorrow.",
    "The poor are really ignorant about how to handle the money they do have.",
    "Language models assign probabilities to sentences.",
    "My professor is a hispanic man.",
    "The chess player was hispanic.",
    "The quick brown fox jumps over the lazy dog.",
    "Some sentences are stereotypes, some are anti-stereotypes, and some are unrelated.",
    "We compare the likelihood of paired sentences.",
]


def _load(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module", params=["tiny_opt_dir", "tiny_mistral_dir"])
def tiny(request):
    return _load(request.getfixturevalue(request.param))


def _reference_loglik(model, tokenizer, text: str) -> tuple[float, int]:
    """lm-eval's empty-context loglikelihood, written out: one forward, float64 log-softmax."""
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    ids = [prefix] + tokenizer.encode(text, add_special_tokens=False)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    total = sum(float(logprobs[t, ids[t + 1]]) for t in range(len(ids) - 1))
    return total, len(ids) - 1


def test_loglik_matches_direct_forward(tiny):
    model, tokenizer = tiny
    scores = scoring.score_sentences(model, tokenizer, SENTENCES[:6], batch_size=4, progress=False)
    for text, score in zip(SENTENCES[:6], scores):
        ll, n = _reference_loglik(model, tokenizer, text)
        assert score.n_tokens == n
        assert score.loglik == pytest.approx(ll, abs=1e-4)


def test_alone_equals_batch_of_16(tiny):
    model, tokenizer = tiny
    batched = scoring.score_sentences(model, tokenizer, SENTENCES, batch_size=16, progress=False)
    for text, in_batch in zip(SENTENCES, batched):
        alone = scoring.score_sentences(model, tokenizer, [text], batch_size=1, progress=False)[0]
        assert alone.n_tokens == in_batch.n_tokens
        assert alone.loglik == pytest.approx(in_batch.loglik, abs=1e-4)


def test_order_duplicates_and_determinism(tiny_opt_dir):
    model, tokenizer = _load(tiny_opt_dir)
    texts = [SENTENCES[2], SENTENCES[1], SENTENCES[2], SENTENCES[0]]
    first = scoring.score_sentences(model, tokenizer, texts, batch_size=3, progress=False)
    again = scoring.score_sentences(model, tokenizer, texts, batch_size=2, progress=False)
    assert first[0] == first[2]  # the duplicate is scored once and returned twice
    assert [s.loglik for s in first] == pytest.approx([s.loglik for s in again], abs=1e-5)
    assert first[3].loglik == pytest.approx(_reference_loglik(model, tokenizer, texts[3])[0], abs=1e-4)


def test_prefix_token_is_bos_else_eos():
    assert scoring.prefix_token_id(types.SimpleNamespace(bos_token_id=5, eos_token_id=7)) == 5
    assert scoring.prefix_token_id(types.SimpleNamespace(bos_token_id=None, eos_token_id=7)) == 7
    with pytest.raises(ValueError):
        scoring.prefix_token_id(types.SimpleNamespace(bos_token_id=None, eos_token_id=None))


def test_stories260k_sentencepiece_llama(stories260k_dir):
    """A real (trained) Llama with a SentencePiece tokenizer: BOS prefix, no special tokens in the sentence."""
    model, tokenizer = _load(stories260k_dir)
    texts = ["Once upon a time there was a little girl.", "The dog ran to the park."]
    scores = scoring.score_sentences(model, tokenizer, texts, batch_size=2, progress=False)
    for text, score in zip(texts, scores):
        assert score.loglik == pytest.approx(_reference_loglik(model, tokenizer, text)[0], abs=1e-4)
    # a trained model finds a story sentence likelier per token than noise
    noise = scoring.score_sentences(model, tokenizer, ["zq xv kj wq pz"], progress=False)[0]
    assert scores[0].loglik / scores[0].n_tokens > noise.loglik / noise.n_tokens


def _document_ids(tokenizer, repeats: int = 12):
    text = "\n\n".join(SENTENCES * repeats)
    return scoring.encode_document(tokenizer, text)


def test_window_perplexity_matches_independent_computation(tiny_mistral_dir):
    model, tokenizer = _load(tiny_mistral_dir)
    ids = _document_ids(tokenizer)
    seqlen = 64
    out = scoring.window_perplexity(model, ids, seqlen, max_windows=5, progress=False)
    # GPTQ's own loop: HF's mean loss per window (seqlen - 1 predictions), exp of the mean
    losses = []
    with torch.no_grad():
        for i in range(5):
            window = ids[i * seqlen:(i + 1) * seqlen].unsqueeze(0)
            losses.append(float(model(window, labels=window).loss))
    assert out["n_windows"] == 5 and out["n_tokens"] == 5 * (seqlen - 1)
    assert out["ppl"] == pytest.approx(math.exp(sum(losses) / len(losses)), rel=1e-5)
    assert len(out["window_nll"]) == 5
    # every full window is used when max_windows is None; a partial one is dropped
    assert scoring.window_perplexity(model, ids, seqlen, progress=False)["n_windows"] == ids.numel() // seqlen


def test_paper_perplexity_matches_the_papers_loop(tiny_opt_dir):
    model, tokenizer = _load(tiny_opt_dir)
    text = "".join(SENTENCES * 10)
    n_ctx = 64
    out = scoring.paper_perplexity(model, tokenizer, text, n_ctx=n_ctx, max_windows=3, progress=False)
    # The paper's ppl-eval.py, written out: BOS first, positions min(512, n_ctx//2) .. n_ctx-2,
    # softmax per position, running perplexity after each window, mean of the running values.
    tokens = tokenizer(text, return_tensors="pt").input_ids
    nll, count, running = 0.0, 0, []
    for i in range(3):
        start = i * n_ctx
        window = tokens[:, start:start + n_ctx].clone()
        window[0, 0] = tokenizer.bos_token_id
        with torch.no_grad():
            logits = model(window).logits[0].double()
        for j in range(min(512, n_ctx // 2), n_ctx - 1):
            prob = torch.softmax(logits[j], dim=-1)[tokens[0, start + j + 1]]
            nll += -math.log(float(prob))
            count += 1
        running.append(math.exp(nll / count))
    assert out["n_tokens"] == count
    assert out["ppl"] == pytest.approx(sum(running) / len(running), rel=1e-5)
    assert out["ppl_final"] == pytest.approx(running[-1], rel=1e-5)


def test_effective_seqlen_caps_at_model_positions(tiny_opt_dir):
    model, _ = _load(tiny_opt_dir)
    assert scoring.effective_seqlen(model, 2048) == model.config.max_position_embeddings
    assert scoring.effective_seqlen(model, 64) == 64
