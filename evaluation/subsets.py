"""Fixed, seeded item subsets: the same items for every model, recorded by size and the sha256 of the index list.

A subset is drawn without replacement from a task's document indices by numpy's PCG64 generator seeded with the
run's seed, then sorted; a size of None (or at least the task's size) is every item. The precision a size buys for
an accuracy near 0.5 is about ±1.96·√(0.25/n): ±3.1 points at n = 1,000, ±4.4 at n = 500; a paired difference
between two models on the same items is usually tighter.
"""

from __future__ import annotations

import hashlib
import json


def subset_indices(n_docs: int, size: int | None, seed: int) -> list[int]:
    """`size` document indices out of `n_docs` (sorted), the same for the same (n_docs, size, seed)."""
    import numpy as np

    if size is None or size >= n_docs:
        return list(range(n_docs))
    if size < 1:
        raise ValueError(f"a subset needs at least one item, got size {size}")
    return sorted(int(i) for i in np.random.default_rng(seed).choice(n_docs, size=size, replace=False))


def indices_sha256(indices: list[int]) -> str:
    """The record of which items were scored: sha256 of the JSON index list (``[0, 5, 9]``)."""
    return hashlib.sha256(json.dumps(indices).encode()).hexdigest()


def parse_subset_spec(text: str | None) -> dict[str, int | None]:
    """``"piqa=1000,truthfulqa_mc2=all"`` -> ``{"piqa": 1000, "truthfulqa_mc2": None}``; refuses what it cannot read."""
    sizes = {}
    for word in (w.strip() for w in (text or "").split(",")):
        if not word:
            continue
        task, sep, size = word.partition("=")
        if not sep or not task.strip():
            raise ValueError(f"subset {word!r}: expected TASK=N or TASK=all")
        size = size.strip()
        if size == "all":
            sizes[task.strip()] = None
        elif size.isdigit() and int(size) > 0:
            sizes[task.strip()] = int(size)
        else:
            raise ValueError(f"subset {word!r}: the size must be a positive integer or 'all'")
    return sizes


def describe(indices: list[int], n_docs: int, seed: int) -> dict:
    """What a result records about its subset."""
    return {"n": len(indices), "of": n_docs, "seed": seed, "indices_sha256": indices_sha256(indices),
            "whole": len(indices) == n_docs}
