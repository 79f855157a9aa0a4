"""lm-eval's own tasks on the local data agree with our scorer and with an independent forward pass.

stories260K (a real 260K-parameter Llama) on the full CrowS-Pairs CSV: lm-eval's
``crows_pairs_english`` must give our scorer's pct_stereotype exactly and its likelihood_diff within
1e-6 relative. lm-eval's ``wikitext`` on the local rows must give the word/byte perplexity of a
rolling loglikelihood computed here with a plain float64 forward pass.
"""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from evaluation import data, lm_eval_bridge, lm_eval_tasks, models, tasks

pytestmark = pytest.mark.slow
pytest.importorskip("lm_eval")


@pytest.fixture(scope="module")
def stories(stories260k_dir):
    return models.load_model(str(stories260k_dir), name="stories260K", device="cpu")


@pytest.fixture(scope="module")
def local(crows_pairs_path, wikitext2_dir):
    return lm_eval_tasks.resolve_local_data(["crows_pairs_english", "wikitext"], str(crows_pairs_path),
                                            str(wikitext2_dir))


@pytest.fixture(scope="module")
def ours(stories, crows_pairs_path):
    """Our scorer (evaluation/scoring.py via tasks.run_crows_pairs) on every pair."""
    return tasks.run_crows_pairs(stories, data.load_crows_pairs(str(crows_pairs_path)), None, 32, progress=False)


def test_crows_pairs_english_equals_our_scorer(stories, local, ours):
    record = lm_eval_bridge.run_lm_eval(stories, ["crows_pairs_english"], batch_size=32, local=local)
    got = record["metrics"]["results"]["crows_pairs_english"]
    want = ours["metrics"]["overall"]
    assert record["metrics"]["n_samples"]["crows_pairs_english"]["effective"] == want["n"] == 1508
    assert got["pct_stereotype,none"] == want["pct_stereotype"]
    assert got["likelihood_diff,none"] == pytest.approx(want["likelihood_diff"], rel=1e-6, abs=0)
    source = record["data"]["sources"]["crows_pairs_english"]
    assert source["version"].startswith("original 1,508-pair release") and source["sha256"] == ours["data"]["sha256"]


def _rolling_loglik(model, ids: list[int], bos: int, max_len: int) -> float:
    """lm-eval's rolling windows, computed directly: BOS, then disjoint blocks of max_len predicted tokens; a
    full block sees one token before it, the last (partial) block sees up to max_len tokens before its end."""
    seq = [bos, *ids]  # seq[p + 1] is predicted at input position p
    total = 0.0
    with torch.inference_mode():
        for start in range(0, len(ids), max_len):
            end = min(start + max_len, len(ids))
            first = max(0, end - max_len)
            logits = model(torch.tensor([seq[first:end]])).logits[0].double()
            logp = torch.log_softmax(logits, dim=-1)
            positions = torch.arange(start - first, end - first)
            total += float(logp[positions, torch.tensor(seq[start + 1:end + 1])].sum())
    return total


def test_bias_type_subtasks_and_wikitext(stories, local, ours, wikitext2_dir):
    from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer

    limit = 2
    subtasks = [f"crows_pairs_english_{t}" for t in lm_eval_tasks.CROWS_BIAS_TYPES]
    record = lm_eval_bridge.run_lm_eval(stories, [*subtasks, "wikitext"], batch_size=32, limit=limit, local=local)
    results = record["metrics"]["results"]

    # each subtask: the first `limit` pairs of its bias type, scored by us
    items = ours["per_item"]
    for bias_type, task in zip(lm_eval_tasks.CROWS_BIAS_TYPES, subtasks):
        rows = [i for i, bt in enumerate(items["bias_type"]) if bt == bias_type.replace("_", "-")][:limit]
        diffs = [items["ll_more"][i] - items["ll_less"][i] for i in rows]
        assert results[task]["pct_stereotype,none"] == sum(d > 0 for d in diffs) / len(rows), task
        # lm-eval sums float32 log-probs (LL of a sentence ~ -50: float32 steps ~ 4e-6), we sum in float64; over
        # two pairs that rounding does not average out as it does over the full set above.
        assert results[task]["likelihood_diff,none"] == pytest.approx(sum(map(abs, diffs)) / len(rows), abs=1e-4)

    # wikitext: the first `limit` pages, one BOS (add_bos_token=False), windows of the model's 512 positions
    rows_file = wikitext2_dir / "wikitext-2-raw-v1_test_rows.jsonl"
    rows = [json.loads(line)["text"] for line in rows_file.read_text(encoding="utf-8").splitlines()]
    pages = lm_eval_tasks.pages_from_rows(rows)[:limit]
    tok = stories.tokenizer
    loglik = sum(_rolling_loglik(stories.model, tok(wikitext_detokenizer({"page": p}), add_special_tokens=False)
                                 ["input_ids"], tok.bos_token_id, 512) for p in pages)
    words = sum(len(re.split(r"\s+", p)) for p in pages)
    n_bytes = sum(len(p.encode("utf-8")) for p in pages)
    wiki = results["wikitext"]
    assert wiki["word_perplexity,none"] == pytest.approx(math.exp(-loglik / words), rel=1e-5)
    assert wiki["byte_perplexity,none"] == pytest.approx(math.exp(-loglik / n_bytes), rel=1e-5)
    assert wiki["bits_per_byte,none"] == pytest.approx(-loglik / n_bytes / math.log(2), rel=1e-5)
    assert "word_perplexity" in record["metrics"]["scoring"]["wikitext"]  # the protocol is named


def test_add_bos_token_false_keeps_one_bos_and_leaves_crows_unchanged(stories, local, monkeypatch):
    text = "Once upon a time there was a little girl."
    tok = stories.tokenizer
    # stories260K's tokenizer adds BOS by default: lm-eval's rolling windows, which start with BOS
    # themselves, would then score after two.
    assert tok(text)["input_ids"][:1] == [tok.bos_token_id]
    assert lm_eval_bridge.wrap_model(stories, 1).tok_encode(text) == tok(text, add_special_tokens=False)["input_ids"]

    args = dict(tasks=["crows_pairs_english"], batch_size=16, limit=20, local=local)
    with_setting = lm_eval_bridge.run_lm_eval(stories, **args)["metrics"]["results"]
    monkeypatch.setattr(lm_eval_bridge, "ADD_BOS_TOKEN", None)  # lm-eval's default
    assert lm_eval_bridge.wrap_model(stories, 1).tok_encode(text)[:1] == [tok.bos_token_id]
    assert lm_eval_bridge.run_lm_eval(stories, **args)["metrics"]["results"] == with_setting
