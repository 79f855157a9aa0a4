"""The held-out split of StereoSet dev into a calibration half and an evaluation half.

StereoSet dev is both the calibration source of Fair-GPTQ and the only StereoSet split available offline, so
a score on calibration sentences would overstate the method. The split is made once, deterministically:

    items, info = select_split(data, "calib")      # info goes into every result JSON

Version 2 (this one) splits by *group*: items that share a sentence, or a target and context, are linked
(transitively; compared without case and extra spaces) and a group falls on one side. StereoSet dev holds
near-duplicate items (same target and context, some sentences shared, the rest different); version 1 split by
item and put 10 sentences of the `eval` half into `calib` pairs. Results record `split_version`, so results of
the two versions are never mixed unnoticed.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter, defaultdict
from collections.abc import Sequence

from fair_gptq.stereoset import IntrasentenceItem, StereoSetData

SPLIT_VERSION = 2
SPLIT_PARTS = ("calib", "eval", "all")
DEFAULT_SPLIT_SEED = 0
DEFAULT_CALIB_FRACTION = 0.5
SPLIT_METHOD = ("groups of items linked by a shared sentence or the same target and context (case- and "
                "space-insensitive), stratified by bias_type, ranked by sha256(seed:content)")


def content_rank(seed: int, key: str) -> str:
    """A seeded order of content keys. sha256, not hash(): str hashes change with PYTHONHASHSEED."""
    return hashlib.sha256(f"{seed}:{key}".encode("utf-8")).hexdigest()


def calib_count(n_items: int, calib_fraction: float) -> int:
    """round(n * fraction) with halves rounded up (Python's round() sends halves to the even number)."""
    return math.floor(n_items * calib_fraction + 0.5)


def _normalised(text: str) -> str:
    return " ".join(text.split()).casefold()


def _links(item: IntrasentenceItem) -> list[tuple[str, ...]]:
    """What ties an item to its near-duplicates: each of its sentences, and its target with its context."""
    sentences = (item.stereotype, item.anti_stereotype, item.unrelated)
    return [("sentence", _normalised(s)) for s in sentences if s is not None] + [
        ("target+context", _normalised(item.target), _normalised(item.context))]


def item_groups(items: Sequence[IntrasentenceItem]) -> list[list[int]]:
    """Indices of `items` grouped so that items sharing any link (transitively) are in one group."""
    parent = list(range(len(items)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_holder: dict[tuple[str, ...], int] = {}
    for index, item in enumerate(items):
        for link in _links(item):
            holder = first_holder.setdefault(link, index)
            parent[root(index)] = root(holder)
    groups: dict[int, list[int]] = defaultdict(list)
    for index in range(len(items)):
        groups[root(index)].append(index)
    return list(groups.values())


def _check_split_arguments(part: str, calib_fraction: float) -> None:
    if part not in SPLIT_PARTS:
        raise ValueError(f"unknown split part '{part}': choose one of {', '.join(SPLIT_PARTS)}")
    if not 0.0 <= calib_fraction <= 1.0:
        raise ValueError(f"calib_fraction must lie in [0, 1], got {calib_fraction}")


def split_items(
    items: Sequence[IntrasentenceItem],
    part: str,
    seed: int = DEFAULT_SPLIT_SEED,
    calib_fraction: float = DEFAULT_CALIB_FRACTION,
) -> list[IntrasentenceItem]:
    """The `part` ('calib', 'eval' or 'all') of the seeded split, in input order.

    Within each bias type (a group's most common one) the groups are ranked by sha256(f"{seed}:{content}") and
    taken into `calib` until it holds at least round(n_items * calib_fraction) items of that bias type (so it
    may exceed that by less than the largest group). The ranking depends on content only: the split is the
    same on every run and machine, whatever the file order.
    """
    _check_split_arguments(part, calib_fraction)
    if part == "all":
        return list(items)
    in_calib = _calib_indices(items, seed, calib_fraction)
    want_calib = part == "calib"
    return [item for index, item in enumerate(items) if (index in in_calib) == want_calib]


def _calib_indices(items: Sequence[IntrasentenceItem], seed: int, calib_fraction: float) -> set[int]:
    by_bias_type: dict[str, list[list[int]]] = defaultdict(list)
    for group in item_groups(items):
        counts = Counter(items[i].bias_type for i in group)
        # most common bias type; ties go to the first name alphabetically (no cross-type group in dev.json)
        bias_type = min(counts, key=lambda name: (-counts[name], name))
        by_bias_type[bias_type].append(group)
    chosen: set[int] = set()
    for groups in by_bias_type.values():
        target = calib_count(sum(len(group) for group in groups), calib_fraction)
        taken = 0
        for group in sorted(groups, key=lambda group: _group_rank(items, group, seed)):
            if taken >= target:
                break
            chosen.update(group)
            taken += len(group)
    return chosen


def _group_rank(items: Sequence[IntrasentenceItem], group: list[int], seed: int) -> tuple[str, str]:
    content = json.dumps(sorted(items[i].key for i in group), ensure_ascii=False)
    return content_rank(seed, content), content


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
        "split_version": SPLIT_VERSION,
        "seed": seed,
        "calib_fraction": calib_fraction,
        "method": SPLIT_METHOD,
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


def overlap_warning(calibration: dict | None, evaluation: dict) -> str | None:
    """Why the evaluated StereoSet items may include a model's calibration items, or None when they cannot.

    `calibration` is the split a model was calibrated on (`fair_gptq_run.json`'s `calibration.split`; None for
    pairs from a file or a model that was not calibrated on StereoSet), `evaluation` the split being scored.
    Records without `split_version` were made with version 1.
    """
    if not calibration or calibration.get("source_sha256") != evaluation.get("source_sha256"):
        return None  # another file (e.g. calibrated on dev, scored on test): no shared items by construction
    settings = ("split_version", "seed", "calib_fraction")
    calibrated = {name: calibration.get(name, 1 if name == "split_version" else None) for name in settings}
    evaluated = {name: evaluation.get(name, 1 if name == "split_version" else None) for name in settings}
    complementary = {calibration.get("part"), evaluation.get("part")} == {"calib", "eval"}
    if complementary and calibrated == evaluated:
        return None
    differing = ", ".join(f"{name} {calibrated[name]} vs {evaluated[name]}" for name in settings
                          if calibrated[name] != evaluated[name])
    return (f"calibrated on part '{calibration.get('part')}' of the same StereoSet file, scored on part "
            f"'{evaluation.get('part')}'" + (f" ({differing})" if differing else "")
            + ": the StereoSet score may include calibration sentences")
