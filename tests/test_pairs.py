"""Calibration pairs: the modes, sampling, the bias-type filter, pairs files and pair filters."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from stereoset_helpers import (  # noqa: F401 (dev_data is a fixture)
    dev_data, item_and_label, load_synthetic, raw_intrasentence, raw_item, sentence_by_label, synthetic_items,
    write_stereoset)

from fair_gptq import pairs as pr
from fair_gptq import split as sp
from fair_gptq import stereoset as st


# --------------------------------------------------------------------------- the shared dev file


def test_shared_file_pair_counts_equal_items_having_both_sentences(stereoset_dev_path, dev_data):
    raw = raw_intrasentence(stereoset_dev_path)
    labels = [set(sentence_by_label(r)) for r in raw]
    with_anti = sum({"stereotype", "anti-stereotype"} <= have for have in labels)
    with_unrelated = sum({"stereotype", "unrelated"} <= have for have in labels)

    stereo_anti = pr.build_pairs(dev_data.items, "stereo-anti")
    unrelated = pr.build_pairs(dev_data.items, "unrelated")
    assert stereo_anti.n_pairs == with_anti
    assert unrelated.n_pairs == with_unrelated
    assert len(stereo_anti.sentences) == 2 * with_anti
    assert sum(stereo_anti.skipped.values()) == len(raw) - with_anti


def test_shared_file_pairs_are_adjacent_and_come_from_one_item(stereoset_dev_path, dev_data):
    raw = raw_intrasentence(stereoset_dev_path)
    true_pairs = Counter((sentence_by_label(r)["stereotype"], sentence_by_label(r)["anti-stereotype"]) for r in raw)
    pairs = pr.build_pairs(dev_data.items, "stereo-anti")
    built = Counter(zip(pairs.sentences[0::2], pairs.sentences[1::2]))
    assert built == true_pairs


def test_shared_file_per_bias_type_filter(stereoset_dev_path, dev_data):
    raw = raw_intrasentence(stereoset_dev_path)
    for bias_type in st.BIAS_TYPES:
        expected = sum(r["bias_type"] == bias_type for r in raw)
        assert pr.build_pairs(dev_data.items, "stereo-anti", bias_types=[bias_type]).n_pairs == expected


# --------------------------------------------------------------------------- pair modes


def test_stereo_anti_ignores_sentence_order_within_items(tmp_path):
    ordered = [raw_item(i) for i in range(6)]
    reordered = [raw_item(i, order=[2, 1, 0] if i % 2 else [1, 2, 0]) for i in range(6)]
    a = st.load_intrasentence(write_stereoset(tmp_path / "a.json", ordered))
    b = st.load_intrasentence(write_stereoset(tmp_path / "b.json", reordered))
    pairs_a = pr.build_pairs(a.items, "stereo-anti")
    pairs_b = pr.build_pairs(b.items, "stereo-anti")
    assert pairs_a.sentences == pairs_b.sentences
    for stereotype, anti in pairs_a.pairs:
        assert item_and_label(stereotype)[1] == "stereotype"
        assert item_and_label(anti) == (item_and_label(stereotype)[0], "anti-stereotype")


def test_unrelated_mode_pairs_stereotype_with_same_items_unrelated(tmp_path):
    data = load_synthetic(tmp_path, {"gender": 3, "race": 4})
    pairs = pr.build_pairs(data.items, "unrelated")
    assert pairs.n_pairs == 7 and len(pairs.sentences) == 14
    for stereotype, other in pairs.pairs:
        index, label = item_and_label(stereotype)
        assert label == "stereotype"
        assert item_and_label(other) == (index, "unrelated")


def test_shuffled_mode_is_a_derangement_within_bias_type(tmp_path):
    data = load_synthetic(tmp_path, {"gender": 5, "race": 7, "religion": 3})
    bias_of = {int(item.id[4:]): item.bias_type for item in data.items}
    shuffled = pr.build_pairs(data.items, "shuffled", seed=1)
    for stereotype, anti in shuffled.pairs:
        s_index, s_label = item_and_label(stereotype)
        a_index, a_label = item_and_label(anti)
        assert (s_label, a_label) == ("stereotype", "anti-stereotype")
        assert s_index != a_index
        assert bias_of[s_index] == bias_of[a_index]
    # Same sentences as stereo-anti, only paired differently; each anti-stereotype used once.
    stereo_anti = pr.build_pairs(data.items, "stereo-anti")
    assert Counter(shuffled.sentences) == Counter(stereo_anti.sentences)


def test_shuffled_mode_seeds(tmp_path):
    data = load_synthetic(tmp_path, {"gender": 20, "race": 20})
    first = pr.build_pairs(data.items, "shuffled", seed=3)
    assert pr.build_pairs(data.items, "shuffled", seed=3).sentences == first.sentences
    other = pr.build_pairs(data.items, "shuffled", seed=4)
    assert set(other.pairs) != set(first.pairs)
    assert other.sha256 != first.sha256


def test_shuffled_mode_does_not_depend_on_file_order(tmp_path):
    data = load_synthetic(tmp_path, {"gender": 9, "race": 11})
    items = list(data.items)
    random.Random(7).shuffle(items)
    assert set(pr.build_pairs(items, "shuffled").pairs) == set(pr.build_pairs(data.items, "shuffled").pairs)


def test_shuffled_mode_pairs_a_lone_bias_type_across_types(tmp_path):
    data = load_synthetic(tmp_path, {"gender": 4, "religion": 1})
    pairs = pr.build_pairs(data.items, "shuffled")
    assert pairs.n_pairs == 5
    assert all(item_and_label(s)[0] != item_and_label(a)[0] for s, a in pairs.pairs)


def test_shuffled_mode_with_a_single_item_has_nothing_to_pair(tmp_path):
    data = load_synthetic(tmp_path, {"gender": 1})
    with pytest.raises(ValueError, match="no calibration pairs.*no other item"):
        pr.build_pairs(data.items, "shuffled")


def test_sign_shuffled_mode_flips_a_seeded_half_of_the_stereo_anti_pairs(tmp_path):
    data = load_synthetic(tmp_path, {"gender": 12, "race": 9})  # 21 pairs: 10 flipped
    stereo_anti = pr.build_pairs(data.items, "stereo-anti", seed=5)
    signed = pr.build_pairs(data.items, "sign-shuffled", seed=5)
    flipped = [item_and_label(first)[1] == "anti-stereotype" for first, _ in signed.pairs]
    assert sum(flipped) == signed.n_order_flipped == 10 and signed.summary()["n_order_flipped"] == 10
    # the very pairs of stereo-anti, in the same places; only the order inside a pair changes
    for (first, second), (stereotype, anti), flip in zip(signed.pairs, stereo_anti.pairs, flipped):
        assert (first, second) == ((anti, stereotype) if flip else (stereotype, anti))
    assert signed.mode == "sign-shuffled" and stereo_anti.n_order_flipped == 0


def test_sign_shuffled_mode_is_seeded_and_independent_of_file_order(tmp_path):
    data = load_synthetic(tmp_path, {"gender": 20, "race": 20})
    first = pr.build_pairs(data.items, "sign-shuffled", seed=3)
    assert pr.build_pairs(data.items, "sign-shuffled", seed=3).sentences == first.sentences
    assert set(pr.build_pairs(data.items, "sign-shuffled", seed=4).pairs) != set(first.pairs)
    items = list(data.items)
    random.Random(7).shuffle(items)
    assert set(pr.build_pairs(items, "sign-shuffled", seed=3).pairs) == set(first.pairs)


def test_sign_shuffled_mode_samples_the_pairs_stereo_anti_samples(tmp_path):
    data = load_synthetic(tmp_path, {"gender": 30, "race": 30})
    kept = pr.build_pairs(data.items, "stereo-anti", max_pairs=15, seed=2)
    signed = pr.build_pairs(data.items, "sign-shuffled", max_pairs=15, seed=2)
    assert [frozenset(pair) for pair in signed.pairs] == [frozenset(pair) for pair in kept.pairs]
    assert signed.n_order_flipped == 7


def test_items_missing_a_needed_sentence_are_skipped_and_counted(tmp_path):
    items = [
        raw_item(0),
        raw_item(1, labels=("stereotype", "unrelated")),  # no anti-stereotype
        raw_item(2, labels=("stereotype", "anti-stereotype")),  # no unrelated
        raw_item(3, labels=("unrelated",)),
        raw_item(4),
    ]
    data = st.load_intrasentence(write_stereoset(tmp_path / "dev.json", items))
    assert data.items[1].anti_stereotype is None and data.items[2].unrelated is None

    stereo_anti = pr.build_pairs(data.items, "stereo-anti")
    assert [item_and_label(s)[0] for s, _ in stereo_anti.pairs] == [0, 2, 4]
    assert stereo_anti.skipped == {"missing anti-stereotype": 1, "missing stereotype and anti-stereotype": 1}

    unrelated = pr.build_pairs(data.items, "unrelated")
    assert [item_and_label(s)[0] for s, _ in unrelated.pairs] == [0, 1, 4]
    assert sum(unrelated.skipped.values()) == 2
    for pair_set in (stereo_anti, unrelated):
        assert len(pair_set.sentences) == 2 * pair_set.n_pairs


def test_no_usable_item_is_a_clear_error(tmp_path):
    items = [raw_item(i, labels=("stereotype", "unrelated")) for i in range(3)]
    data = st.load_intrasentence(write_stereoset(tmp_path / "dev.json", items))
    with pytest.raises(ValueError, match=r"no calibration pairs in mode 'stereo-anti'.*3 missing anti-stereotype"):
        pr.build_pairs(data.items, "stereo-anti")


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="stereo-anti, unrelated, shuffled, sign-shuffled, file"):
        pr.build_pairs([], "stereo_anti")


# --------------------------------------------------------------------------- max_pairs and bias filter


def test_max_pairs_samples_a_seeded_subset(tmp_path):
    data = load_synthetic(tmp_path, {"gender": 30, "race": 30})
    full = pr.build_pairs(data.items, "stereo-anti")
    sample = pr.build_pairs(data.items, "stereo-anti", max_pairs=10, seed=5)
    assert sample.n_pairs == 10 and len(sample.sentences) == 20
    assert set(sample.pairs) <= set(full.pairs)
    assert sample.n_candidates == 60
    assert pr.build_pairs(data.items, "stereo-anti", max_pairs=10, seed=5).sentences == sample.sentences
    assert set(pr.build_pairs(data.items, "stereo-anti", max_pairs=10, seed=6).pairs) != set(sample.pairs)
    # Kept in input order, and which pairs are kept does not depend on that order.
    positions = [full.pairs.index(pair) for pair in sample.pairs]
    assert positions == sorted(positions)
    items = list(data.items)
    random.Random(1).shuffle(items)
    assert set(pr.build_pairs(items, "stereo-anti", max_pairs=10, seed=5).pairs) == set(sample.pairs)


def test_max_pairs_larger_than_available_keeps_everything(tmp_path):
    data = load_synthetic(tmp_path, {"gender": 4})
    assert pr.build_pairs(data.items, "stereo-anti", max_pairs=100).n_pairs == 4


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10"])
def test_max_pairs_must_be_a_positive_integer(tmp_path, bad):
    data = load_synthetic(tmp_path, {"gender": 4})
    with pytest.raises(ValueError, match="max_pairs"):
        pr.build_pairs(data.items, "stereo-anti", max_pairs=bad)


def test_bias_type_filter(tmp_path):
    data = load_synthetic(tmp_path, {"gender": 3, "race": 4, "religion": 2, "profession": 5})
    bias_of = {int(item.id[4:]): item.bias_type for item in data.items}
    pairs = pr.build_pairs(data.items, "stereo-anti", bias_types="gender, religion")
    assert pairs.n_pairs == 5
    assert {bias_of[item_and_label(s)[0]] for s, _ in pairs.pairs} == {"gender", "religion"}
    assert pairs.bias_types == ("gender", "religion")


def test_unknown_bias_type_lists_the_valid_ones(tmp_path):
    data = load_synthetic(tmp_path, {"gender": 3})
    with pytest.raises(ValueError, match="'sexuality'.*gender, profession, race, religion"):
        pr.build_pairs(data.items, "stereo-anti", bias_types=["gender", "sexuality"])


def test_filter_leaving_nothing_is_a_clear_error(tmp_path):
    data = load_synthetic(tmp_path, {"gender": 3})
    with pytest.raises(ValueError, match="no calibration pairs.*race"):
        pr.build_pairs(data.items, "stereo-anti", bias_types=["race"])


# --------------------------------------------------------------------------- pairs from a file


def test_pairs_file_accepts_lists_and_objects(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text(
        json.dumps([["He is a nurse.", "She is a nurse."], {"stereotype": "A", "anti_stereotype": "B"}]),
        encoding="utf-8",
    )
    pairs = pr.build_pairs(None, "file", pairs_file=path)
    assert pairs.sentences == ["He is a nurse.", "She is a nurse.", "A", "B"]
    assert pairs.n_pairs == 2 and pairs.split is None and pairs.pairs_file == str(path)


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json", "not valid JSON"),
        (json.dumps({"pairs": []}), "expected a JSON list"),
        (json.dumps([]), "empty"),
        (json.dumps([["only one"]]), r"pair \[0\] has 1 elements"),
        (json.dumps([["a", "b"], ["a", "b", "c"]]), r"pair \[1\] has 3 elements"),
        (json.dumps([["a", 3]]), "non-empty strings"),
        (json.dumps([["a", "  "]]), "non-empty strings"),
        (json.dumps([{"stereotype": "a"}]), "anti_stereotype"),
        (json.dumps(["a b"]), "expected \\[s, a\\]"),
    ],
)
def test_malformed_pairs_files(tmp_path, content, message):
    path = tmp_path / "pairs.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(pr.PairsFileError, match=message):
        pr.build_pairs(None, "file", pairs_file=path)


def test_pairs_file_mode_argument_errors(tmp_path):
    with pytest.raises(pr.PairsFileError, match="does not exist"):
        pr.build_pairs(None, "file", pairs_file=tmp_path / "missing.json")
    with pytest.raises(ValueError, match="needs a pairs file"):
        pr.build_pairs(None, "file")
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps([["a", "b"]]), encoding="utf-8")
    with pytest.raises(ValueError, match="bias type filter does not apply"):
        pr.build_pairs(None, "file", pairs_file=path, bias_types=["gender"])
    with pytest.raises(ValueError, match="only read in pair mode 'file'"):
        pr.build_pairs([], "stereo-anti", pairs_file=path)
