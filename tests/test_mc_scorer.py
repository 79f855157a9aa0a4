"""The shared-context scorer (evaluation/lm_eval_scorer.py) against lm-eval's own HFLM, the independent reference.

On the same requests both must give the same log-likelihood (float rounding), the same is_greedy and, through the
task's own process_results, the same acc: on hand-made requests that exercise every path (shared contexts,
continuations with a common start, empty and lone contexts, requests HFLM truncates) and on real PIQA, BBQ and BoolQ
items from the shared files; on the tiny Mistral (Llama-style), the tiny OPT and its GPTQ checkpoint.
"""

from __future__ import annotations

import pytest
import torch
from test_eval_models import no_torch_compile, tiny_opt_gptq_dir  # noqa: F401 (fixtures: a 4-bit tiny OPT)

from evaluation import lm_eval_bridge, lm_eval_scorer, lm_eval_tasks, models

pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402

from evaluation.lm_eval_scorer import (  # noqa: E402
    Block, Row, attention_mask, batch_rows, cluster_groups, pack_rows, plan_sharing, shared_length)

LL_TOLERANCE = dict(rel=1e-5, abs=1e-4)  # float32 sums of a few dozen log-probs, computed in different shapes


# ----------------------------------------------------------------------------- the planning, by hand


def _request(context: str, ctx: list[int], cont: list[int]):
    return ((context, "x"), ctx, cont)


def test_plan_groups_shared_contexts_and_sends_the_rest_to_hflm():
    requests = [_request("a", [1, 2], [3]), _request("a", [1, 2], [4, 5]),  # shared context
                _request("", [0], [3]), _request("", [0], [4]),  # empty context: the prefix token only
                _request("b", [7], [8]),  # a context nobody shares
                _request("c", [1, 9], [3]), _request("c", [1, 9], [4] * 8),  # the second is longer than 8 + 1 tokens
                (None, [1, 2], [3])]  # a rolling window (no strings)
    plan = plan_sharing(requests, max_length=8)
    assert plan.groups == [[0, 1]]
    assert plan.fallback == [2, 3, 4, 5, 6, 7]


def test_shared_length_leaves_every_sequence_a_target():
    assert shared_length([[1, 2, 3, 4], [1, 2, 3, 5]]) == 3
    assert shared_length([[1, 2, 3], [1, 2, 3, 4]]) == 2  # the shorter one keeps its last token to predict
    assert shared_length([[1, 2], [3, 2]]) == 0


def test_pack_rows_positions_segments_and_splitting():
    requests = [_request("c", [5, 6], [7, 8, 9]), _request("c", [5, 6], [7, 8, 4, 4]), _request("c", [5, 6], [7, 3])]
    (row,) = pack_rows(requests, [[0, 1, 2]], max_tokens=100)
    # shared start: 5 6 7 (the context and the common first continuation token); tails are sequence[3:-1]
    assert row.tokens == [5, 6, 7, 8, 8, 4]
    assert row.positions == [0, 1, 2, 3, 3, 4]
    assert row.block == [1] * 6
    assert row.segment == [0, 0, 0, 1, 2, 2]
    assert row.blocks == [Block(2, 3, [(0, 3, 1), (1, 4, 2), (2, 6, 0)])]  # the third request is all shared start
    rows = pack_rows(requests, [[0, 1, 2]], max_tokens=5)
    assert [r.tokens for r in rows] == [[5, 6, 7, 8], [5, 6, 7, 8, 4]]  # a new row repeats the shared start
    assert [r.blocks for r in rows] == [[Block(2, 3, [(0, 3, 1)])], [Block(2, 3, [(1, 3, 2), (2, 5, 0)])]]


def test_pack_rows_shares_a_common_prefix_between_groups():
    # two contexts starting with the same three tokens (a few-shot preamble), two endings each
    requests = [_request("p", [1, 2, 3, 4], [5, 6]), _request("p", [1, 2, 3, 4], [7]),
                _request("q", [1, 2, 3, 8, 9], [5]), _request("q", [1, 2, 3, 8, 9], [6, 6])]
    (row,) = pack_rows(requests, [[0, 1], [2, 3]], max_tokens=100, prefix=3)
    # prefix 1 2 3 | block 1: 4, tail 5 | block 2: 8 9, tail 6
    assert row.tokens == [1, 2, 3, 4, 5, 8, 9, 6]
    assert row.positions == [0, 1, 2, 3, 4, 3, 4, 5]
    assert row.block == [0, 0, 0, 1, 1, 2, 2, 2]
    assert row.segment == [0, 0, 0, 0, 1, 0, 0, 2]  # block 2: its first tail is empty
    assert row.blocks == [Block(4, 4, [(0, 4, 1), (1, 5, 0)]), Block(7, 7, [(2, 7, 0), (3, 7, 1)])]
    rows = pack_rows(requests, [[0, 1], [2, 3]], max_tokens=6, prefix=3)
    assert [r.tokens for r in rows] == [[1, 2, 3, 4, 5], [1, 2, 3, 8, 9, 6]]  # a new row repeats the prefix
    assert rows[1].blocks == [Block(5, 5, [(2, 5, 0), (3, 5, 1)])]


def test_cluster_groups_joins_contexts_with_a_long_common_start():
    preamble = list(range(10, 50))  # 40 tokens
    requests = [_request("a", preamble + [1], [2]), _request("a", preamble + [1], [3]),
                _request("b", [7, 7], [2]), _request("b", [7, 7], [3]),
                _request("c", preamble + [4, 5], [2]), _request("c", preamble + [4, 5], [3])]
    clusters = cluster_groups(requests, [[0, 1], [2, 3], [4, 5]], min_prefix=32)
    assert sorted(clusters) == [(0, [[2, 3]]), (40, [[0, 1], [4, 5]])]
    assert cluster_groups(requests, [[0, 1], [2, 3], [4, 5]], min_prefix=41) == [(0, [[2, 3]]), (0, [[0, 1]]),
                                                                                 (0, [[4, 5]])]
    # a third context that shares less of the start: the cluster's prefix shrinks to what all three share
    shrinking = [_request("a", preamble + [1, 2], [2]), _request("a", preamble + [1, 2], [3]),
                 _request("b", preamble + [1, 3], [2]), _request("b", preamble + [1, 3], [3]),
                 _request("c", preamble + [4], [2]), _request("c", preamble + [4], [3])]
    assert cluster_groups(shrinking, [[4, 5], [0, 1], [2, 3]], min_prefix=32) == [(40, [[0, 1], [2, 3], [4, 5]])]
    # a context that is the other's start: the prefix leaves it one token of its own
    requests += [_request("d", preamble, [2]), _request("d", preamble, [3])]
    assert (39, [[6, 7], [0, 1], [4, 5]]) in cluster_groups(requests, [[0, 1], [4, 5], [6, 7]], min_prefix=32)


# one block: the shared start (segment 0) and tails 1-3; the last column/row is padding and sees only itself
_ONE_BLOCK = (Row([5, 6, 7, 8, 9, 4], [0, 1, 2, 2, 2, 3], [1] * 6, [0, 0, 1, 2, 2, 3], []),
              [[1, 0, 0, 0, 0, 0, 0],
               [1, 1, 0, 0, 0, 0, 0],
               [1, 1, 1, 0, 0, 0, 0],
               [1, 1, 0, 1, 0, 0, 0],
               [1, 1, 0, 1, 1, 0, 0],
               [1, 1, 0, 0, 0, 1, 0],
               [0, 0, 0, 0, 0, 0, 1]])
# a common prefix of 2 tokens | block 1: start, tail | block 2: start, start, tail
_TWO_BLOCKS = (Row([1, 2, 3, 4, 5, 6, 7], [0, 1, 2, 3, 2, 3, 4], [0, 0, 1, 1, 2, 2, 2], [0, 0, 0, 1, 0, 0, 1], []),
               [[1, 0, 0, 0, 0, 0, 0],
                [1, 1, 0, 0, 0, 0, 0],
                [1, 1, 1, 0, 0, 0, 0],
                [1, 1, 1, 1, 0, 0, 0],
                [1, 1, 0, 0, 1, 0, 0],
                [1, 1, 0, 0, 1, 1, 0],
                [1, 1, 0, 0, 1, 1, 1]])


@pytest.mark.parametrize("row, want", [_ONE_BLOCK, _TWO_BLOCKS], ids=["one block", "prefix and two blocks"])
def test_attention_mask_by_hand(row, want):
    allowed = attention_mask([row], 7, torch.float32, "cpu")[0, 0] == 0
    assert torch.equal(allowed, torch.tensor(want, dtype=torch.bool))


def test_batches_cap_rows_padding_and_kept_logits():
    rows = [Row([0] * n, [], [], [], [Block(1, 1, [])]) for n in (40, 30, 21, 19, 18, 5)]
    assert [[len(r.tokens) for r in b] for b in batch_rows(rows, 3)] == [[40, 30, 21], [19, 18], [5]]
    # every row keeps logits from its index 0 on: a batch of widths 40 keeps 40 positions per row
    assert [[len(r.tokens) for r in b] for b in batch_rows(rows, 3, max_logits=80)] == [[40, 30], [21, 19, 18],
                                                                                        [5]]
    # a cap below one row's kept positions: each row alone, none dropped
    assert [[len(r.tokens) for r in b] for b in batch_rows(rows, 3, max_logits=10)] == [[n] for n in
                                                                                        (40, 30, 21, 19, 18, 5)]


# ----------------------------------------------------------------------------- agreement with HFLM


@pytest.fixture(scope="module")
def mistral(tiny_mistral_dir):
    return models.load_model(str(tiny_mistral_dir), name="mistral", device="cpu")


def _instances(pairs):
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]


def _greedy_text(lm, context: str, n: int) -> str:
    """What the model itself would write after ``context``: continuations that HFLM calls greedy."""
    ids = lm.tokenizer(context, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = lm.model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
    return lm.tokenizer.decode(out[0, ids.shape[1]:])


def _hand_made(lm) -> list[tuple[str, str]]:
    contexts = ["The nurse said that", "Question: Where do fish live?\nAnswer:", "She went to the park and "]
    endings = [" she would come back", " he would come back tomorrow", " they", " in the sea", " in the sea."]
    pairs = [(c, e) for c in contexts for e in endings]
    pairs += [(c, _greedy_text(lm, c, 3)) for c in contexts]  # greedy continuations, shared contexts
    pairs += [("", " The nurse helped the patient."), ("", " The engineer fixed the bridge.")]  # empty context
    pairs += [("A context nobody else has", " and an ending")]
    pairs += [("Long " * 150, " one"), ("Long " * 150, " two")]  # past 256 positions: HFLM truncates them
    return pairs


def _score(lm, instances, scorer: str, batch_size: int = 4):
    wrapper = lm_eval_bridge.wrap_model(lm, batch_size, scorer)
    return wrapper.loglikelihood(instances, disable_tqdm=True), wrapper


def _assert_agree(reference, got):
    assert len(reference) == len(got)
    for i, (want, have) in enumerate(zip(reference, got)):
        assert have[0] == pytest.approx(want[0], **LL_TOLERANCE), i
        assert have[1] == want[1], i


@pytest.mark.slow
def test_hand_made_requests_agree_with_hflm(mistral):
    instances = _instances(_hand_made(mistral))
    reference, _ = _score(mistral, instances, "hflm")
    got, scorer = _score(mistral, instances, "shared-context")
    _assert_agree(reference, got)
    assert any(greedy for _, greedy in reference)  # the is_greedy comparison is not all-False
    # 3 contexts x 6 endings shared; the empty, lone and truncated requests went to HFLM
    assert (scorer.stats["requests_shared"], scorer.stats["requests_hflm"], scorer.stats["contexts"]) == (18, 5, 3)
    for batch_size in (1, 64):  # batching changes shapes, not results
        _assert_agree(reference, _score(mistral, instances, "shared-context", batch_size)[0])


def _with_preamble(lm) -> list[tuple[str, str]]:
    """Questions behind a common few-shot preamble (as TruthfulQA's), several endings each."""
    preamble = "Q: Where do fish live?\nA: In the sea.\n\nQ: What do nurses do?\nA: They care for patients.\n\n"
    questions = ["Q: Who fixed the bridge?\nA:", "Q: What did the engineer say?\nA:", "Q: Why?\nA:"]
    endings = [" The engineer did.", " she", " He said nothing at all.", _greedy_text(lm, preamble + questions[0], 3)]
    return [(preamble + q, e) for q in questions for e in endings]


@pytest.mark.slow
def test_contexts_with_a_common_preamble_share_it_and_agree_with_hflm(mistral, monkeypatch):
    monkeypatch.setattr(lm_eval_scorer, "MIN_SHARED_PREFIX", 16)  # the tiny preamble is shorter than TruthfulQA's
    instances = _instances(_with_preamble(mistral))
    reference, _ = _score(mistral, instances, "hflm")
    got, scorer = _score(mistral, instances, "shared-context")
    _assert_agree(reference, got)
    assert scorer.stats["contexts"] == 3 and scorer.stats["rows"] == 1  # three questions in one row
    for batch_size in (1, 64):
        _assert_agree(reference, _score(mistral, instances, "shared-context", batch_size)[0])


@pytest.mark.slow
def test_gptq_and_opt_agree_with_hflm(tiny_opt_dir, tiny_opt_gptq_dir):  # noqa: F811
    pairs = [(c, e) for c in ("The nurse said that", "Fish live") for e in (" she", " he would", " in the sea")]
    for path in (tiny_opt_dir, tiny_opt_gptq_dir):
        lm = models.load_model(str(path), device="cpu")
        instances = _instances(pairs)
        _assert_agree(_score(lm, instances, "hflm")[0], _score(lm, instances, "shared-context")[0])


@pytest.mark.slow
def test_requests_past_a_sliding_window_go_to_hflm(mistral, monkeypatch):
    # the 4-D mask replaces the model's own, sliding window included: only requests within the window are shared
    monkeypatch.setattr(mistral.model.config, "sliding_window", 12)
    instances = _instances([("Fish", " live"), ("Fish", " swim"), ("Fish live in the sea and", " swim all day long"),
                            ("Fish live in the sea and", " sleep")])
    reference, _ = _score(mistral, instances, "hflm")
    got, scorer = _score(mistral, instances, "shared-context")
    _assert_agree(reference, got)
    assert (scorer.stats["requests_shared"], scorer.stats["requests_hflm"]) == (2, 2)


@pytest.fixture(scope="module")
def gemma3(tiny_gemma3_dir):
    return models.load_model(str(tiny_gemma3_dir), name="gemma3", device="cpu")


@pytest.mark.slow
def test_rows_stay_within_gemma3s_sliding_window(gemma3):
    # Gemma 3 masks by distance within the input row, on top of the 4-D mask: a packed row longer than the window
    # would hide the context from its later tails (the start-up probe's rows alone already did, with rows of 1,024)
    endings = (" said", " went home", " is", " was", " came back", " left", " ran", " went to the shop",
               " came back home later")
    instances = _instances([("The nurse", ending) for ending in endings])
    reference, _ = _score(gemma3, instances, "hflm")
    got, scorer = _score(gemma3, instances, "shared-context")
    _assert_agree(reference, got)
    assert scorer.stats["requests_shared"] == len(endings) and scorer.stats["rows"] > 1  # shared, in several rows


@pytest.mark.slow
def test_a_shared_prefix_stays_within_gemma3s_sliding_window(gemma3, monkeypatch):
    contexts = ("The nurse said", "The nurse went", "The nurse is")  # a common start of two tokens or more
    instances = _instances([(c, e) for c in contexts for e in (" home", " well", " here")])
    reference, _ = _score(gemma3, instances, "hflm")
    rows = {}
    for min_prefix in (100, 2):  # each context alone; then the three sharing their start
        monkeypatch.setattr(lm_eval_scorer, "MIN_SHARED_PREFIX", min_prefix)
        got, scorer = _score(gemma3, instances, "shared-context")
        _assert_agree(reference, got)
        rows[min_prefix] = scorer.stats["rows"]
    assert rows[2] < rows[100], rows


@pytest.mark.slow
@pytest.mark.parametrize("ignored", ["position_ids", "attention_mask"])
def test_a_model_that_ignores_positions_or_masks_is_refused(mistral, monkeypatch, ignored):
    forward = mistral.model.forward

    def without(*args, **kwargs):
        kwargs.pop(ignored, None)
        return forward(*args, **kwargs)

    monkeypatch.setattr(mistral.model, "forward", without)
    with pytest.raises(ValueError, match="does not reproduce HFLM.*--lm-eval-scorer hflm"):
        lm_eval_bridge.wrap_model(mistral, 4, "shared-context")


def test_unknown_scorer_is_refused(mistral):
    with pytest.raises(ValueError, match="unknown lm-eval scorer"):
        lm_eval_bridge.wrap_model(mistral, 4, "fast")


@pytest.fixture(scope="module")
def real_tasks(tmp_path_factory):
    local = lm_eval_tasks.resolve_local_data(["piqa", "bbq", "boolq"])
    missing = {"piqa", "bbq", "boolq"} - set(local.offline)
    if missing:
        pytest.skip(f"shared lm_eval data missing for {sorted(missing)}")
    folder = tmp_path_factory.mktemp("mc_tasks")
    manager = lm_eval_bridge.build_task_manager(folder, ["piqa", "bbq", "boolq"], local)
    return {name: manager.load([name])["tasks"][name] for name in ("piqa", "bbq", "boolq")}


def _acc(task, instances, answers) -> list[float]:
    """lm-eval's own per-document acc (the task's process_results) from the per-request answers."""
    by_doc: dict[int, list] = {}
    for instance, answer in zip(instances, answers):
        by_doc.setdefault(instance.doc_id, []).append((instance.idx, instance.doc, answer))
    return [task.process_results(rows[0][1], [a for _, _, a in sorted(rows, key=lambda r: r[0])])["acc"]
            for rows in (by_doc[d] for d in sorted(by_doc))]


@pytest.mark.slow
@pytest.mark.parametrize("name, docs", [("piqa", [0, 1, 2, 3, 4, 5]), ("bbq", [0, 1, 3700, 5300]),
                                        ("boolq", [0, 1, 2, 3])])
def test_real_items_agree_with_hflm(mistral, real_tasks, name, docs):
    task = real_tasks[name]
    task.build_all_requests(samples=docs)
    instances = list(task.instances)
    reference, _ = _score(mistral, instances, "hflm")
    got, scorer = _score(mistral, instances, "shared-context")
    _assert_agree(reference, got)
    assert _acc(task, instances, got) == _acc(task, instances, reference)
    assert scorer.stats["requests_shared"] > 0  # not everything fell back to HFLM
