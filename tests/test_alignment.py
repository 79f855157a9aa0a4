"""Token alignment of calibration pairs (--pair-alignment): counts as GPTQModel tokenizes, the filter, the figures."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from fair_gptq import alignment
from fair_gptq import pairs as pr

WORDS = ["<unk>", "<pad>", "<s>", "The", "nurse", "is", "kind", "very", "man", "woman", "."]  # id = index


def _word_tokenizer(add_bos: bool):
    """One token per space-separated word (ids = WORDS.index), optionally with a BOS token in front."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                   model_input_names=["input_ids", "attention_mask"])


@pytest.fixture(scope="module")
def words():
    return _word_tokenizer(add_bos=False)


SAME_LENGTH = ("The man is kind .", "The woman is kind .")  # [3,8,5,6,10] / [3,9,5,6,10]
ONE_MORE = ("The nurse is kind .", "The nurse is very kind .")  # [3,4,5,6,10] / [3,4,5,7,6,10]
SHIFTED = ("The man is very kind .", "The woman is kind .")  # [3,8,5,7,6,10] / [3,9,5,6,10]


def test_token_ids_are_gptqmodels_including_special_tokens():
    plain, with_bos = _word_tokenizer(False), _word_tokenizer(True)
    assert alignment.gptqmodel_token_ids(plain, ["The nurse is kind ."]) == [[3, 4, 5, 6, 10]]
    assert alignment.gptqmodel_token_ids(with_bos, ["The nurse is kind .", "The man ."]) == [
        [2, 3, 4, 5, 6, 10], [2, 3, 8, 10]]


@pytest.mark.parametrize("first, second, expected", [
    ([3, 8, 5, 6, 10], [3, 9, 5, 6, 10], (1, 5)),
    ([3, 4, 5, 6, 10], [3, 4, 5, 7, 6, 10], (3, 6)),  # shifted after the inserted word, last one meets padding
    ([1, 2], [1, 2], (0, 2)),
    ([7], [], (1, 1)),
])
def test_differing_positions(first, second, expected):
    assert alignment.differing_positions(first, second) == expected


def test_differing_positions_match_gptqmodels_padded_batch(words):
    """Rows 2i and 2i+1 of the batch GPTQModel builds differ exactly where `differing_positions` says."""
    from gptqmodel.models.base import BaseGPTQModel

    for pair in (SAME_LENGTH, ONE_MORE, SHIFTED):
        (batch,) = BaseGPTQModel.prepare_dataset(SimpleNamespace(tokenizer=words), list(pair), batch_size=2)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        differ = int(((ids[0] != ids[1]) | (mask[0] != mask[1])).sum())
        first, second = alignment.gptqmodel_token_ids(words, pair)
        assert alignment.differing_positions(first, second) == (differ, ids.shape[1])


def test_alignment_stats_on_hand_counted_pairs(words):
    stats = alignment.alignment_stats(words, [SAME_LENGTH, ONE_MORE, SHIFTED])
    assert stats["n_pairs"] == 3
    assert stats["equal_length"] == {"n_pairs": 1, "share_of_pairs": 1 / 3, "differing_positions": 1,
                                     "compared_positions": 5, "share_of_positions_differing": 0.2}
    # ONE_MORE: 3 of 6 differ; SHIFTED: positions 1, 3, 4, 5 of 6 differ
    assert stats["different_length"] == {"n_pairs": 2, "share_of_pairs": 2 / 3, "differing_positions": 7,
                                         "compared_positions": 12, "share_of_positions_differing": 7 / 12}


def _pairs_file(tmp_path, pairs) -> str:
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps([list(p) for p in pairs]), encoding="utf-8")
    return str(path)


def test_equal_length_filter_keeps_only_pairs_of_equal_token_count(tmp_path, words):
    path = _pairs_file(tmp_path, [SAME_LENGTH, ONE_MORE, SHIFTED])
    kept = pr.build_pairs(None, "file", pairs_file=path, pair_filter=alignment.equal_length_filter(words))
    assert kept.pairs == [SAME_LENGTH]
    assert (kept.n_candidates, kept.n_filtered_out, kept.pair_filter) == (3, 2, "equal-length")
    summary = kept.summary()
    assert (summary["n_kept_by_filter"], summary["n_dropped_by_filter"]) == (1, 2)


def test_max_pairs_is_drawn_after_the_filter(tmp_path, words):
    equal = [(f"The man is {w} .", f"The woman is {w} .") for w in ("kind", "very", "nurse", "man", "woman")]
    unequal = [(f"The man is {w} .", f"The man is very {w} .") for w in ("kind", "nurse", "man", "woman", ".")]
    path = _pairs_file(tmp_path, [p for both in zip(equal, unequal) for p in both])
    sample = pr.build_pairs(None, "file", pairs_file=path, max_pairs=4, seed=1,
                            pair_filter=alignment.equal_length_filter(words))
    assert sample.n_pairs == 4 and set(sample.pairs) <= set(equal)
    assert (sample.n_candidates, sample.n_filtered_out) == (10, 5)
    unfiltered = pr.build_pairs(None, "file", pairs_file=path, max_pairs=4, seed=1)
    assert unfiltered.n_pairs == 4 and unfiltered.n_filtered_out == 0 and unfiltered.pair_filter is None


def test_a_filter_dropping_every_pair_is_a_clear_error(tmp_path, words):
    path = _pairs_file(tmp_path, [ONE_MORE, SHIFTED])
    with pytest.raises(ValueError, match="filter 'equal-length' dropped all 2 candidate pairs"):
        pr.build_pairs(None, "file", pairs_file=path, pair_filter=alignment.equal_length_filter(words))
