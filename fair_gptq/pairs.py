"""Fair-GPTQ calibration pairs from StereoSet items (or a user's file), pairs adjacent: [s0, a0, s1, a1, ...].

    pair_set = calibration_pairs(None, "stereo-anti", max_pairs=64)   # calib half of the shared dev file
    pair_set.sentences                                                # what GPTQModel.quantize() gets

Modes: `stereo-anti` (the method), `unrelated`, `shuffled` and `sign-shuffled` (controls), `file`. A `PairFilter`
(e.g. the token-aligned pairs of `fair_gptq.alignment`) is applied before `max_pairs` sampling, so `max_pairs`
pairs are used whenever that many pass the filter.

Order contract: in every mode but `sign-shuffled`, each pair is (stereotype, anti-stereotype) in that order, the
stereotype at even positions of `sentences` (2i) and its partner right after it (2i+1; for `unrelated` the partner
is the unrelated sentence). With an even batch size GPTQModel keeps that order, so rows 2i / 2i+1 of a batch are
stereotype / partner; the overlay's direction targets (gptq.py, fair_target="direction") take the mean of
x_stereotype - x_partner and rely on it. `sign-shuffled` (control) breaks it on purpose: the pairs of `stereo-anti`,
with a seeded half of them (floor(n/2)) put anti-stereotype first, so a consistent mean difference cancels.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fair_gptq.split import DEFAULT_CALIB_FRACTION, DEFAULT_SPLIT_SEED, content_rank, select_split
from fair_gptq.stereoset import BIAS_TYPES, IntrasentenceItem, StereoSetError, load_intrasentence

PAIR_MODES = ("stereo-anti", "unrelated", "shuffled", "sign-shuffled", "file")
# gold_label -> IntrasentenceItem attribute
_LABEL_ATTRIBUTE = {"stereotype": "stereotype", "anti-stereotype": "anti_stereotype", "unrelated": "unrelated"}

Pair = tuple[str, str]


class PairsFileError(StereoSetError):
    """A user-given pairs file (`--pairs file`) is malformed."""


@dataclass(frozen=True)
class PairFilter:
    """Keeps some candidate pairs; `name` is recorded in the result (e.g. "equal-length")."""

    name: str
    keep: Callable[[Sequence[Pair]], Sequence[bool]]  # one flag per pair, for all pairs at once


@dataclass(frozen=True)
class PairSet:
    sentences: list[str]  # flat, pairs adjacent: [s0, a0, s1, a1, ...]
    n_pairs: int
    skipped: dict[str, int]  # reason -> number of items
    mode: str
    sha256: str  # of the sentence list (see `sentences_sha256`)
    split: dict | None = None  # `split_info(...)` of the items the pairs came from
    n_candidates: int = 0  # pairs available before filtering and --max-pairs sampling
    seed: int = 0
    bias_types: tuple[str, ...] | None = None
    max_pairs: int | None = None
    pairs_file: str | None = None
    pair_filter: str | None = None  # PairFilter.name
    n_filtered_out: int = 0  # candidates the filter dropped (before sampling)
    n_order_flipped: int = 0  # pairs given anti-stereotype first (`sign-shuffled` only)

    @property
    def pairs(self) -> list[Pair]:
        return list(zip(self.sentences[0::2], self.sentences[1::2]))

    def summary(self) -> dict:
        """Everything but the sentences, for result JSONs (`fair_gptq_run.json`, reports)."""
        return {
            "mode": self.mode,
            "n_pairs": self.n_pairs,
            "n_sentences": len(self.sentences),
            "n_candidates": self.n_candidates,
            "skipped": dict(self.skipped),
            "pair_filter": self.pair_filter,
            "n_kept_by_filter": self.n_candidates - self.n_filtered_out,
            "n_dropped_by_filter": self.n_filtered_out,
            "n_order_flipped": self.n_order_flipped,
            "sha256": self.sha256,
            "seed": self.seed,
            "bias_types": list(self.bias_types) if self.bias_types else None,
            "max_pairs": self.max_pairs,
            "pairs_file": self.pairs_file,
            "split": self.split,
        }


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


def _shuffled_pairs(items: Sequence[IntrasentenceItem], seed: int, skipped: Counter) -> list[Pair]:
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
        partner[lone] = min(others, key=lambda i: (content_rank(seed, items[i].key), i))
    elif leftovers:
        skipped["no other item to pair with"] += 1
    return [(items[i].stereotype, items[partner[i]].anti_stereotype) for i in range(len(items)) if i in partner]


def _cyclic_derangement(indices: Sequence[int], items: Sequence[IntrasentenceItem], seed: int) -> dict[int, int]:
    ordered = sorted(indices, key=lambda i: (content_rank(seed, items[i].key), i))
    return {ordered[k]: ordered[(k + 1) % len(ordered)] for k in range(len(ordered))}


def load_pairs_file(path: str | os.PathLike) -> list[Pair]:
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


def _parse_pair(entry, where: str) -> Pair:
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


def _sign_shuffled(pairs: list[Pair], seed: int) -> tuple[list[Pair], int]:
    """Puts the anti-stereotype first in a seeded half of the pairs (floor(n/2), chosen by content rank: the same
    pairs whatever the list order), so that the mean of x_first - x_second over pairs cancels to noise."""
    ranked = sorted(range(len(pairs)),
                    key=lambda i: (content_rank(seed, "sign-shuffled:" + json.dumps(pairs[i], ensure_ascii=False)), i))
    flipped = set(ranked[:len(pairs) // 2])
    return [(pair[1], pair[0]) if i in flipped else pair for i, pair in enumerate(pairs)], len(flipped)


def _sample_pairs(pairs: list[Pair], max_pairs: int | None, seed: int) -> list[Pair]:
    """Keep `max_pairs` pairs chosen by seeded content rank (independent of order), in input order."""
    if max_pairs is None or max_pairs >= len(pairs):
        return pairs
    ranked = sorted(range(len(pairs)), key=lambda i: (content_rank(seed, json.dumps(pairs[i], ensure_ascii=False)), i))
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
    pair_filter: PairFilter | None = None,
) -> PairSet:
    """Calibration sentences for Fair-GPTQ, pairs adjacent: [s0, a0, s1, a1, ...].

    Modes: 'stereo-anti' (each item's stereotype, then its anti-stereotype: the paper's),
    'unrelated' (stereotype, then the same item's unrelated sentence), 'shuffled' (stereotype,
    then another item's anti-stereotype; seeded), 'sign-shuffled' (the pairs 'stereo-anti' gives
    with the same arguments, a seeded half of them in the order anti-stereotype, stereotype),
    'file' (pairs from `pairs_file`; `items` is ignored). Items lacking a needed sentence are skipped and counted in `skipped`. `pair_filter` drops
    candidates before `max_pairs` are sampled. `split` (from `split_info`) is only recorded in the result.
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
    kept = _apply_filter(candidates, pair_filter)
    pairs = _sample_pairs(kept, max_pairs, seed)
    if not pairs:
        raise ValueError(_empty_message(mode, chosen_types, skipped, pair_filter, len(candidates)))
    n_flipped = 0
    if mode == "sign-shuffled":  # after sampling: exactly the pairs of 'stereo-anti', only the order changes
        pairs, n_flipped = _sign_shuffled(pairs, seed)
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
        pair_filter=pair_filter.name if pair_filter is not None else None,
        n_filtered_out=len(candidates) - len(kept),
        n_order_flipped=n_flipped,
    )


def _apply_filter(candidates: list[Pair], pair_filter: PairFilter | None) -> list[Pair]:
    if pair_filter is None or not candidates:
        return candidates
    flags = list(pair_filter.keep(candidates))
    if len(flags) != len(candidates):
        raise ValueError(f"pair filter '{pair_filter.name}' gave {len(flags)} flags for {len(candidates)} pairs")
    return [pair for pair, keep in zip(candidates, flags) if keep]


def _candidate_pairs(items: Sequence[IntrasentenceItem], mode: str, seed: int, skipped: Counter) -> list[Pair]:
    if mode == "unrelated":
        usable = _usable_items(items, ("stereotype", "unrelated"), skipped)
        return [(item.stereotype, item.unrelated) for item in usable]
    # 'shuffled' uses exactly the sentences of 'stereo-anti' and changes only who pairs with whom; 'sign-shuffled'
    # starts from the very pairs of 'stereo-anti' (build_pairs changes their order after sampling).
    usable = _usable_items(items, ("stereotype", "anti-stereotype"), skipped)
    if mode == "shuffled":
        return _shuffled_pairs(usable, seed, skipped)
    return [(item.stereotype, item.anti_stereotype) for item in usable]


def _empty_message(mode: str, bias_types: tuple[str, ...] | None, skipped: Counter,
                   pair_filter: PairFilter | None = None, n_candidates: int = 0) -> str:
    details = []
    if pair_filter is not None and n_candidates:
        details.append(f"filter '{pair_filter.name}' dropped all {n_candidates} candidate pairs")
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
    pair_filter: PairFilter | None = None,
) -> PairSet:
    """Load, split and pair in one call (what example_fair_gptq.py needs). 'file' mode reads no StereoSet."""
    common = dict(bias_types=bias_types, max_pairs=max_pairs, seed=seed, pairs_file=pairs_file, pair_filter=pair_filter)
    if mode == "file":
        return build_pairs(None, mode, **common)
    data = load_intrasentence(source)
    items, info = select_split(data, part, seed=split_seed, calib_fraction=calib_fraction)
    return build_pairs(items, mode, split=info, **common)