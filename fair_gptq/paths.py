"""Where the repository and the shared (read-only) data live.

The data sets (StereoSet, CrowS-Pairs, WikiText-2, the tiny stories260K model) are never
copied into the repository: they are read from a folder outside it. By default that is
``<repo>/../shared/data``; set ``$FAIR_GPTQ_DATA`` to point elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV_VAR = "FAIR_GPTQ_DATA"


def repo_root() -> Path:
    """The repository root (the folder that holds ``fair_gptq/``)."""
    return Path(__file__).resolve().parent.parent


def shared_data_candidates() -> list[Path]:
    """The folders :func:`shared_data_dir` looks at, in order (for error messages)."""
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        # An explicit setting wins and is the only place looked at: silently falling back
        # to another folder would hide a typo in the variable.
        return [Path(env).expanduser()]
    return [repo_root().parent / "shared" / "data"]


def shared_data_dir() -> Path | None:
    """The shared data folder, or ``None`` where it does not exist."""
    for candidate in shared_data_candidates():
        if candidate.is_dir():
            return candidate.resolve()
    return None


# Relative locations inside the shared data folder (see its README.md).
STEREOSET_DEV = Path("stereoset") / "stereoset_dev_reconstructed.json"
CROWS_PAIRS = Path("crows_pairs") / "crows_pairs_anonymized.csv"
WIKITEXT2_DIR = Path("wikitext2")
STORIES260K_DIR = Path("models") / "stories260K-hf"


def portable_path(path: str | Path) -> str:
    """How a result records a local path: never as this machine's absolute path.

    Inside the shared data folder: ``<data>/crows_pairs/crows_pairs_anonymized.csv``; inside the cache
    (``$FAIR_GPTQ_CACHE``): ``<cache>/models/smollm2-135m``; inside the repository: relative to its root
    (``outputs/study-models/...``); anywhere else: ``<elsewhere>/<file name>``. URLs, hub ids and relative paths
    are returned as they are. What a file *is* is recorded beside it by its sha256 or fingerprint.
    """
    from fair_gptq.cache import cache_root  # cache imports nothing of ours; kept local to keep this module bare

    text = str(path)
    if not os.path.isabs(text):
        return text
    resolved = Path(text).resolve()
    data = shared_data_dir()
    for root, prefix in ((data, "<data>"), (cache_root().resolve(), "<cache>"), (repo_root(), None)):
        if root is not None and resolved.is_relative_to(root):
            relative = resolved.relative_to(root).as_posix()
            return relative if prefix is None else f"{prefix}/{relative}"
    return f"<elsewhere>/{resolved.name}"


def portable_record(obj):
    """A JSON-able record with every absolute path string replaced by :func:`portable_path`."""
    if isinstance(obj, dict):
        return {key: portable_record(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [portable_record(value) for value in obj]
    if isinstance(obj, str) and obj.startswith("/") and "\n" not in obj:
        return portable_path(obj)
    return obj
