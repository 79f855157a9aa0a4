"""Evaluation data: CrowS-Pairs, StereoSet intrasentence and WikiText-2 (no model code here).

Where each comes from, first match wins:

* CrowS-Pairs: ``--crows-pairs PATH|URL``; else the shared data folder's
  ``crows_pairs/crows_pairs_anonymized.csv``; else the canonical nyu-mll CSV on GitHub, downloaded
  once into ``<cache>/data/`` (``$FAIR_GPTQ_CACHE`` or ``~/.cache/fair_gptq``).
* StereoSet: :mod:`fair_gptq.stereoset` (``resolve_stereoset_source`` / ``load_intrasentence``) and
  :mod:`fair_gptq.split` (``select_split``), so calibration and evaluation agree on which half of the dev file is which.
* WikiText-2 (raw, test split): ``--wikitext2 PATH`` (a ``.txt`` already joined with "\\n\\n", a
  ``.jsonl`` of ``{"text": row}`` rows, or a folder holding either); else the shared data folder's
  ``wikitext2/``; else ``datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split="test")``.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from fair_gptq import paths
from fair_gptq.cache import DownloadError, cache_root, download_cached, is_url

CROWS_PAIRS_URL = "https://raw.githubusercontent.com/nyu-mll/crows-pairs/master/data/crows_pairs_anonymized.csv"
WIKITEXT2_JOINED = "wikitext2_test_joined.txt"
WIKITEXT2_ROWS = "wikitext-2-raw-v1_test_rows.jsonl"


class DataError(ValueError):
    """An evaluation data source is missing or malformed (one clear line for the user)."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_data(url: str) -> Path:
    """Fetch ``url`` once into the shared download cache and return the local path."""
    name = hashlib.sha256(url.encode()).hexdigest()[:12] + "-" + url.rstrip("/").rsplit("/", 1)[-1]
    try:
        return download_cached(url, cache_root() / "data" / name)
    except DownloadError as exc:
        raise DataError(str(exc)) from None


# ----------------------------------------------------------------------------- CrowS-Pairs


@dataclass(frozen=True)
class CrowsPair:
    index: int  # the CSV's own row id: the key that pairs models item by item
    sent_more: str  # always the more stereotypical sentence (stereo and antistereo rows alike)
    sent_less: str
    stereo_antistereo: str
    bias_type: str


@dataclass
class CrowsPairsData:
    pairs: list[CrowsPair]
    source: str
    sha256: str


def resolve_crows_pairs_source(source: str | None = None) -> str:
    """A local CSV path or a URL; raises :class:`DataError` for a local path that is not a file."""
    if source:
        if is_url(source):
            return source
        path = Path(source).expanduser()
        if not path.is_file():
            raise DataError(f"CrowS-Pairs file not found: {source}")
        return str(path)
    shared = paths.shared_data_dir()
    if shared is not None and (shared / paths.CROWS_PAIRS).is_file():
        return str(shared / paths.CROWS_PAIRS)
    return CROWS_PAIRS_URL


def load_crows_pairs(source: str | None = None) -> CrowsPairsData:
    """Read the nyu-mll CrowS-Pairs CSV (columns sent_more, sent_less, stereo_antistereo, bias_type)."""
    resolved = resolve_crows_pairs_source(source)
    path = download_data(resolved) if is_url(resolved) else Path(resolved)
    pairs = []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"sent_more", "sent_less", "stereo_antistereo", "bias_type"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"{resolved}: not a CrowS-Pairs CSV (missing columns {', '.join(sorted(missing))})")
        for position, row in enumerate(reader):
            raw_index = row.get("") or row.get("Unnamed: 0") or row.get("index")
            pairs.append(
                CrowsPair(
                    index=int(raw_index) if raw_index not in (None, "") else position,
                    sent_more=row["sent_more"],
                    sent_less=row["sent_less"],
                    stereo_antistereo=row["stereo_antistereo"],
                    bias_type=row["bias_type"],
                )
            )
    if not pairs:
        raise DataError(f"{resolved}: no CrowS-Pairs rows")
    return CrowsPairsData(pairs=pairs, source=resolved, sha256=sha256_file(path))


# ----------------------------------------------------------------------------- StereoSet


@dataclass
class StereoSetEval:
    """The StereoSet intrasentence items to evaluate, and which part of which file they are."""

    items: list  # fair_gptq.stereoset.IntrasentenceItem with all three sentences present
    split: dict = field(default_factory=dict)  # split_info() + source, kind, sha256, counts (for the JSONs)


def resolve_stereoset(source: str | None = None) -> Path:
    from fair_gptq.stereoset import resolve_stereoset_source

    try:
        return Path(resolve_stereoset_source(source))
    except (OSError, ValueError) as exc:
        raise DataError(f"StereoSet: {exc}") from exc


def item_key(item) -> str:
    """Short content-based identity of an item (StereoSet ids repeat): pairs models item by item."""
    return hashlib.sha256(item.key.encode("utf-8")).hexdigest()[:16]


def load_stereoset(source: str | None = None, part: str | None = None, seed: int = 0) -> StereoSetEval:
    """Intrasentence items of ``part`` ("calib" | "eval" | "all").

    Default part: ``fair_gptq.split.default_split_for(data, "evaluation")``, i.e. "eval" for a
    dev (or unknown) file, whose "calib" half calibrates Fair-GPTQ, and "all" for a test file.
    """
    from fair_gptq import split as held_out, stereoset

    try:
        data = stereoset.load_intrasentence(resolve_stereoset(source))
        part = part or held_out.default_split_for(data, "evaluation")
        chosen, info = held_out.select_split(data, part, seed=seed)
    except (OSError, ValueError) as exc:
        raise DataError(f"StereoSet: {exc}") from exc
    complete = [it for it in chosen if None not in (it.stereotype, it.anti_stereotype, it.unrelated)]
    split = dict(info)
    split.update(
        source=str(data.source),
        kind=data.kind,
        sha256=data.sha256,
        n_items_file=len(data.items),
        n_items_part=len(chosen),
        n_items_incomplete_skipped=len(chosen) - len(complete),
        n_items=len(complete),
    )
    return StereoSetEval(items=complete, split=split)


# ----------------------------------------------------------------------------- WikiText-2


@dataclass(frozen=True)
class WikiTextSource:
    kind: str  # "joined" (.txt), "rows" (.jsonl) or "hub" (datasets)
    path: Path | None

    def describe(self) -> str:
        return str(self.path) if self.path else "datasets:wikitext/wikitext-2-raw-v1/test"


def resolve_wikitext2_source(source: str | None = None, need_rows: bool = False) -> WikiTextSource:
    """Where to read WikiText-2 test from; ``need_rows`` (paper protocol) refuses a joined .txt."""
    if source:
        path = Path(source).expanduser()
        if path.is_dir():
            found = _wikitext_in_folder(path, need_rows)
            if found is None:
                wanted = WIKITEXT2_ROWS if need_rows else f"{WIKITEXT2_JOINED} or {WIKITEXT2_ROWS}"
                raise DataError(f"WikiText-2 folder {source} holds no {wanted}")
            return found
        if not path.is_file():
            raise DataError(f"WikiText-2 file not found: {source}")
        kind = "rows" if path.suffix == ".jsonl" else "joined"
        if need_rows and kind != "rows":
            raise DataError(
                "--protocol paper needs the WikiText-2 rows (a .jsonl of {\"text\": ...}), "
                f"not the joined text {source}"
            )
        return WikiTextSource(kind, path)
    shared = paths.shared_data_dir()
    if shared is not None and (shared / paths.WIKITEXT2_DIR).is_dir():
        found = _wikitext_in_folder(shared / paths.WIKITEXT2_DIR, need_rows)
        if found is not None:
            return found
    return WikiTextSource("hub", None)


def _wikitext_in_folder(folder: Path, need_rows: bool) -> WikiTextSource | None:
    candidates = [("rows", WIKITEXT2_ROWS)] if need_rows else [("joined", WIKITEXT2_JOINED), ("rows", WIKITEXT2_ROWS)]
    for kind, name in candidates:
        if (folder / name).is_file():
            return WikiTextSource(kind, folder / name)
    return None


def load_wikitext2_rows(source: WikiTextSource) -> list[str]:
    if source.kind == "rows":
        with source.path.open(encoding="utf-8") as handle:
            return [json.loads(line)["text"] for line in handle if line.strip()]
    if source.kind == "hub":
        from datasets import load_dataset

        return list(load_dataset("wikitext", "wikitext-2-raw-v1", split="test")["text"])
    raise DataError(f"{source.path} is the joined text; the rows are not recoverable from it")


def load_wikitext2_text(source: WikiTextSource) -> str:
    """The GPTQ evaluation string: the test rows joined with "\\n\\n"."""
    if source.kind == "joined":
        return source.path.read_text(encoding="utf-8")
    return "\n\n".join(load_wikitext2_rows(source))


def paper_wikitext_text(rows: list[str], min_chars: int = 512, max_rows: int = 1024) -> str:
    """The Fair-GPTQ paper's ``ppl-eval.py`` corpus: rows of >= 512 characters (at most 1024), joined with ""."""
    kept = [row for row in rows if len(row) >= min_chars][:max_rows]
    return "".join(kept)


def source_fingerprint(source: WikiTextSource) -> str:
    return sha256_file(source.path) if source.path else "datasets:wikitext-2-raw-v1"
