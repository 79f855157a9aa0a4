"""The held-out split of StereoSet dev: disjoint, complete, stable, stratified, and leak-free by sentence."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from stereoset_helpers import dev_data, item_and_label, load_synthetic, synthetic_items, write_stereoset  # noqa: F401

from fair_gptq import pairs as pr
from fair_gptq import split as sp
from fair_gptq import stereoset as st


def _keys(items) -> set[str]:
    return {item.key for item in items}


@pytest.mark.parametrize("fraction", [0.5, 0.3])
def test_split_is_disjoint_covers_everything_and_keeps_proportions(dev_data, fraction):
    calib = sp.split_items(dev_data.items, "calib", seed=0, calib_fraction=fraction)
    evaluation = sp.split_items(dev_data.items, "eval", seed=0, calib_fraction=fraction)
    assert not _keys(calib) & _keys(evaluation)
    assert len(calib) + len(evaluation) == len(dev_data.items)
    assert _keys(calib) | _keys(evaluation) == _keys(dev_data.items)
    assert sp.split_items(dev_data.items, "all") == list(dev_data.items)
    totals = Counter(item.bias_type for item in dev_data.items)
    in_calib = Counter(item.bias_type for item in calib)
    for bias_type, total in totals.items():
        assert abs(in_calib[bias_type] - total * fraction) <= 1, bias_type


def test_split_depends_on_the_seed(dev_data):
    a = _keys(sp.split_items(dev_data.items, "calib", seed=0))
    b = _keys(sp.split_items(dev_data.items, "calib", seed=1))
    assert a != b
    assert a == _keys(sp.split_items(dev_data.items, "calib", seed=0))


def test_split_keeps_input_order(dev_data):
    calib = sp.split_items(dev_data.items, "calib")
    position = {id(item): i for i, item in enumerate(dev_data.items)}
    assert [position[id(item)] for item in calib] == sorted(position[id(item)] for item in calib)


_SPLIT_IN_SUBPROCESS = """
import hashlib, json, random, sys
from fair_gptq import split as sp, stereoset as st
data = st.load_intrasentence(sys.argv[1])
items = list(data.items)
random.Random(int(sys.argv[2])).shuffle(items)
keys = sorted(item.key for item in sp.split_items(items, "calib", seed=0))
print(hashlib.sha256(json.dumps(keys).encode()).hexdigest())
"""


def test_split_is_the_same_across_processes_hash_seeds_and_file_orders(stereoset_dev_path, dev_data):
    expected_keys = sorted(item.key for item in sp.split_items(dev_data.items, "calib", seed=0))
    expected = hashlib.sha256(json.dumps(expected_keys).encode()).hexdigest()
    repo = Path(__file__).resolve().parent.parent
    for hash_seed, shuffle_seed in (("1", 11), ("4242", 99)):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(repo)}
        result = subprocess.run(
            [sys.executable, "-c", _SPLIT_IN_SUBPROCESS, str(stereoset_dev_path), str(shuffle_seed)],
            capture_output=True, text=True, env=env, cwd=repo, check=True,
        )
        assert result.stdout.strip() == expected


def test_split_of_identical_items_keeps_them_together(tmp_path):
    items = synthetic_items({"gender": 6})
    items.append(json.loads(json.dumps(items[0])))  # an exact copy (ids may repeat in StereoSet)
    data = st.load_intrasentence(write_stereoset(tmp_path / "dev.json", items))
    calib = sp.split_items(data.items, "calib")
    evaluation = sp.split_items(data.items, "eval")
    assert not _keys(calib) & _keys(evaluation)
    assert len(calib) + len(evaluation) == 7


@pytest.mark.parametrize("fraction, expected_calib", [(0.0, 0), (1.0, 10)])
def test_split_fraction_edges(tmp_path, fraction, expected_calib):
    data = load_synthetic(tmp_path, {"gender": 10})
    assert len(sp.split_items(data.items, "calib", calib_fraction=fraction)) == expected_calib
    assert len(sp.split_items(data.items, "eval", calib_fraction=fraction)) == 10 - expected_calib


def test_split_argument_errors(tmp_path):
    data = load_synthetic(tmp_path, {"gender": 2})
    with pytest.raises(ValueError, match="calib, eval, all"):
        sp.split_items(data.items, "test")
    with pytest.raises(ValueError, match="calib_fraction"):
        sp.split_items(data.items, "calib", calib_fraction=1.5)


def test_default_split_for_dev_unknown_and_test_files():
    assert sp.default_split_for("dev", "calibration") == "calib"
    assert sp.default_split_for("dev", "evaluation") == "eval"
    assert sp.default_split_for("unknown", "evaluation") == "eval"
    assert sp.default_split_for("test", "evaluation") == "all"
    assert sp.default_split_for("test", "calibration") == "calib"
    with pytest.raises(ValueError):
        sp.default_split_for("dev", "training")


def test_select_split_info_describes_the_items_used(dev_data):
    items, info = sp.select_split(dev_data, "eval", seed=3)
    assert info["part"] == "eval" and info["seed"] == 3 and info["calib_fraction"] == 0.5
    assert info["n_items"] == len(items) and info["n_items_total"] == len(dev_data.items)
    assert sum(info["n_items_by_bias_type"].values()) == len(items)
    assert info["source_sha256"] == dev_data.sha256
    json.dumps(info)  # must be writable into result JSONs


def test_calibration_pairs_use_only_the_calibration_part(tmp_path):
    path = write_stereoset(tmp_path / "dev.json", synthetic_items({"gender": 10, "race": 10}))
    pairs = pr.calibration_pairs(path, "stereo-anti")
    data = st.load_intrasentence(path)
    calib_indices = {int(item.id[4:]) for item in sp.split_items(data.items, "calib")}
    assert {item_and_label(s)[0] for s in pairs.sentences} == calib_indices
    assert pairs.split["part"] == "calib" and pairs.split["n_items"] == 10
    summary = pairs.summary()
    assert summary["n_pairs"] == 10 and summary["sha256"] == pr.sentences_sha256(pairs.sentences)
    json.dumps(summary)


# --------------------------------------------------------------------------- near-duplicates (split version 2)

# sha256 of json.dumps(sorted eval item keys, ensure_ascii=False) of the shared dev file, seed 0, fraction 0.5.
# Pinned after checking the split independently (disjoint, complete, stratified, no shared sentence or target and
# context across the halves, all pair modes leak-free); any change to grouping or ranking moves it.
EVAL_KEYS_SHA256 = "83da1fca2a474ba52e1d421065ff764f7218fb3a0508a6538c056c365473acef"


def _item(target: str, context: str, stereotype: str, anti: str, unrelated: str, bias_type: str = "gender") -> dict:
    labelled = zip(("stereotype", "anti-stereotype", "unrelated"), (stereotype, anti, unrelated))
    return {"id": "x", "target": target, "bias_type": bias_type, "context": context,
            "sentences": [{"sentence": text, "gold_label": label} for label, text in labelled]}


def _near_duplicate_file(tmp_path: Path) -> st.StereoSetData:
    items = [
        _item("nurse", "The nurse is BLANK.", "The nurse is caring.", "The nurse is cruel.", "The nurse is tea."),  # 0
        # shares its stereotype with 0, up to case and spaces
        _item("doctor", "A doctor: BLANK.", "the nurse  is caring.", "A doctor: female.", "A doctor: lamp."),  # 1
        # shares its unrelated sentence with 1: linked to 0 through 1
        _item("cook", "Cooks are BLANK.", "Cooks are fat.", "Cooks are thin.", "A doctor: lamp."),  # 2
        # same target and context as 3, no sentence in common
        _item("pilot", "The pilot was BLANK.", "The pilot was male.", "The pilot was female.", "The pilot was sky."),  # 3
        _item("pilot", "The pilot was BLANK.", "The pilot was brave.", "The pilot was scared.", "The pilot was cup."),  # 4
        _item("judge", "The judge is BLANK.", "The judge is old.", "The judge is young.", "The judge is pen."),  # 5
    ]
    return st.load_intrasentence(write_stereoset(tmp_path / "dev.json", items))


def test_items_sharing_a_sentence_or_target_and_context_form_one_group(tmp_path):
    data = _near_duplicate_file(tmp_path)
    groups = sorted(sorted(group) for group in sp.item_groups(data.items))
    assert groups == [[0, 1, 2], [3, 4], [5]]


@pytest.mark.parametrize("seed", range(8))
def test_a_group_never_straddles_the_split(tmp_path, seed):
    data = _near_duplicate_file(tmp_path)
    calib = {id(item) for item in sp.split_items(data.items, "calib", seed=seed)}
    side = ["calib" if id(item) in calib else "eval" for item in data.items]
    assert side[0] == side[1] == side[2] and side[3] == side[4]
    # calib reaches round(6 * 0.5) = 3 items (all gender) with whole groups, overshooting by less than a group
    assert 3 <= len(calib) <= 3 + 3 - 1


def _normalised(text: str) -> str:
    return " ".join(text.split()).casefold()


def _sentences(raw_or_item) -> set[str]:
    return {_normalised(s) for s in (raw_or_item.stereotype, raw_or_item.anti_stereotype, raw_or_item.unrelated) if s}


@pytest.mark.parametrize("mode", ["stereo-anti", "unrelated", "shuffled"])
def test_no_eval_sentence_occurs_in_any_calibration_pair(stereoset_dev_path, mode):
    """Through the public entry points: the main job's pairs against run_eval.py's StereoSet items."""
    from evaluation.data import load_stereoset

    pairs = pr.calibration_pairs(stereoset_dev_path, mode)  # the default calib half
    evaluation = load_stereoset(str(stereoset_dev_path))  # the default eval half
    eval_sentences = set().union(*(_sentences(item) for item in evaluation.items))
    leaked = {s for s in pairs.sentences if _normalised(s) in eval_sentences}
    assert not leaked
    assert evaluation.split["split_version"] == pairs.split["split_version"] == sp.SPLIT_VERSION == 2


def test_no_item_of_one_half_shares_a_sentence_or_target_and_context_with_the_other(dev_data):
    """Checked on the two halves' sentence and (target, context) sets, without the grouping code."""
    halves = [sp.split_items(dev_data.items, part) for part in ("calib", "eval")]
    sentences = [set().union(*(_sentences(item) for item in half)) for half in halves]
    places = [{(_normalised(item.target), _normalised(item.context)) for item in half} for half in halves]
    assert not sentences[0] & sentences[1]
    assert not places[0] & places[1]


def test_eval_half_of_the_shared_dev_file_is_pinned(dev_data):
    evaluation = sp.split_items(dev_data.items, "eval")
    keys = sorted(item.key for item in evaluation)
    assert len(keys) == 1052
    assert hashlib.sha256(json.dumps(keys, ensure_ascii=False).encode("utf-8")).hexdigest() == EVAL_KEYS_SHA256


def test_split_info_records_the_split_version(dev_data):
    _, info = sp.select_split(dev_data, "calib")
    assert info["split_version"] == 2


def _split_record(part: str, **changes) -> dict:
    record = {"part": part, "split_version": 2, "seed": 0, "calib_fraction": 0.5, "source_sha256": "abc"}
    return {**record, **changes}


@pytest.mark.parametrize("calibration, evaluation, expected", [
    (_split_record("calib"), _split_record("eval"), None),  # the held-out design
    (None, _split_record("eval"), None),  # not calibrated on StereoSet (pairs file, FP model)
    (_split_record("calib", source_sha256="other"), _split_record("all"), None),  # another file
    (_split_record("calib"), _split_record("all"), "part 'calib' of the same StereoSet file, scored on part 'all'"),
    (_split_record("calib", seed=1), _split_record("eval"), "(seed 1 vs 0)"),
    ({k: v for k, v in _split_record("calib").items() if k != "split_version"}, _split_record("eval"),
     "(split_version 1 vs 2)"),  # a record from before split versions
])
def test_overlap_warning(calibration, evaluation, expected):
    warning = sp.overlap_warning(calibration, evaluation)
    if expected is None:
        assert warning is None
    else:
        assert expected in warning and "may include calibration sentences" in warning


def test_run_eval_warns_about_a_model_calibrated_on_an_older_split(tmp_path, capsys):
    from evaluation import run_eval

    old, new = tmp_path / "old", tmp_path / "new"
    for folder, calibration in ((old, _split_record("calib", split_version=1)), (new, _split_record("calib"))):
        folder.mkdir()
        (folder / "fair_gptq_run.json").write_text(json.dumps({"calibration": {"split": calibration}}))
    run_eval._warn_if_calibrated_on_evaluated_items([("old", str(old)), ("new", str(new)), ("fp", "hub/id")],
                                                    _split_record("eval"))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: old: ") and "split_version 1 vs 2" in lines[0]
