"""lm-evaluation-harness tasks on local files: lm-eval's own task definitions, pointed at our data.

Each YAML written here ``include``s the installed lm-eval 0.4.13 task file by absolute path and
overrides only where the documents come from, so doc_to_text/target, process_results and the
metrics stay lm-eval's own code:

* ``crows_pairs_english`` and its nine bias-type subtasks read the CrowS-Pairs CSV with the
  ``csv`` loader. ``dataset_name: null`` (else "english" reaches the csv loader as a config name)
  and ``tag: []`` (else our tasks would replace the built-in ``crows_pairs`` tag). No ``autre``
  subtask: the original CSV has no such rows and lm-eval fails on the empty subset.
* ``wikitext`` reads the WikiText-2 test rows with the ``json`` loader; :func:`wikitext_pages`
  rebuilds the one-page-per-document layout the task expects.
* the shared folder's offline tasks (truthfulqa_mc1/mc2, piqa, openbookqa, boolq, social_iqa, winogender_*, bbq)
  read its JSONL files, each checked against a pinned sha256 first (:mod:`evaluation.lm_eval_offline`).

The folder holding these YAMLs is indexed with ``TaskManager(include_path=folder,
include_defaults=False)`` when only local tasks are asked for: indexing lm-eval's ~14.7k built-in
task files costs about 9 s per run. Nothing here imports lm-eval at module level.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from evaluation.lm_eval_offline import OfflineData, resolve_offline_data
from evaluation.lm_eval_offline import task_yaml as offline_yaml

CROWS_TASK = "crows_pairs_english"
CROWS_BIAS_TYPES = ("age", "disability", "gender", "nationality", "physical_appearance", "race_color", "religion",
                    "sexual_orientation", "socioeconomic")
CROWS_TASKS = (CROWS_TASK, *(f"{CROWS_TASK}_{t}" for t in CROWS_BIAS_TYPES))
WIKITEXT_TASK = "wikitext"
LOCAL_TASKS = (*CROWS_TASKS, WIKITEXT_TASK)

# The installed task file each local task includes, relative to lm_eval/tasks/.
_INSTALLED_YAML = {**{name: Path("crows_pairs") / f"{name}.yaml" for name in CROWS_TASKS},
                   WIKITEXT_TASK: Path("wikitext") / "wikitext.yaml"}
# lm-eval imports it by module path (the repository root is on sys.path wherever run_eval runs).
_PAGES_FUNCTION = f"{__name__}.wikitext_pages"

SCORING = {
    CROWS_TASK: "lm-eval's own crows_pairs_english code (loglikelihood of sent_more/sent_less after the prefix "
                "token) on the local CSV; the same definition as our crows_pairs task",
    WIKITEXT_TASK: "lm-eval wikitext: one rolling loglikelihood per document (62 test pages, windows of the model's "
                   "maximum length, BOS as prefix), word_perplexity = exp(-sum LL / sum words of the raw page); "
                   "not the token perplexity of our wikitext2 task (GPTQ convention: joined rows, fixed windows)",
}


def installed_tasks_dir() -> Path:
    """lm-eval's built-in task folder (``lm_eval/tasks``)."""
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).resolve().parent


def is_crows_task(name: str) -> bool:
    return name in CROWS_TASKS


@dataclass(frozen=True)
class LocalData:
    """Local files for the local tasks (``None``: that task falls back to lm-eval's hub version)."""

    crows_csv: Path | None = None
    crows_sha256: str | None = None
    wikitext_rows: Path | None = None
    wikitext_sha256: str | None = None
    offline: dict[str, OfflineData] = field(default_factory=dict)  # task -> its verified shared file

    def tasks(self) -> list[str]:
        """The local task names these files cover."""
        return [*(CROWS_TASKS if self.crows_csv else ()), *((WIKITEXT_TASK,) if self.wikitext_rows else ()),
                *self.offline]

    def fingerprints(self, requested: list[str]) -> dict:
        """Checksums of the local files the ``requested`` tasks read (part of a run's settings)."""
        out = {}
        if self.crows_csv and any(is_crows_task(t) for t in requested):
            out["crows_pairs_csv"] = self.crows_sha256
        if self.wikitext_rows and WIKITEXT_TASK in requested:
            out["wikitext_rows"] = self.wikitext_sha256
        out.update({data.task.file: data.sha256 for name, data in self.offline.items() if name in requested})
        return out


def resolve_local_data(requested: list[str], crows_source: str | None = None,
                       wikitext_source: str | None = None, data_root: Path | None = None) -> LocalData:
    """The local files for the ``requested`` lm-eval tasks; raises ``evaluation.data.DataError``.

    CrowS-Pairs: the same CSV as our ``crows_pairs`` task (``--crows-pairs``, the shared folder,
    else the nyu-mll CSV downloaded once), so both score the same data version. WikiText-2: the
    test rows (``--wikitext2`` as a .jsonl or folder, else the shared folder); without local rows
    lm-eval's hub version is used, or reported unavailable offline. The offline tasks: the shared data folder
    (``data_root``, by default ``fair_gptq.paths.shared_data_dir()``), each file checked against its sha256.
    """
    from evaluation import data
    from fair_gptq.paths import shared_data_dir

    crows_csv = crows_sha = rows = rows_sha = None
    if any(is_crows_task(t) for t in requested):
        source = data.resolve_crows_pairs_source(crows_source)
        crows_csv = data.download_data(source) if data.is_url(source) else Path(source)
        crows_sha = data.sha256_file(crows_csv)
    if WIKITEXT_TASK in requested:
        if wikitext_source and Path(wikitext_source).is_file() and Path(wikitext_source).suffix != ".jsonl":
            raise data.DataError(f"lm-eval wikitext needs the WikiText-2 rows (a .jsonl of {{\"text\": ...}}), "
                                 f"not the joined text {wikitext_source}")
        found = data.resolve_wikitext2_source(wikitext_source, need_rows=True)
        if found.kind == "rows":
            rows, rows_sha = found.path, data.sha256_file(found.path)
    offline = resolve_offline_data(requested, Path(data_root) if data_root else shared_data_dir())
    return LocalData(crows_csv, crows_sha, rows, rows_sha, offline)


def _task_yaml(name: str, tasks_dir: Path, local: LocalData) -> str:
    include = tasks_dir / _INSTALLED_YAML[name]
    if not include.is_file():
        raise FileNotFoundError(f"lm-eval task file {include} is missing (this bridge is written for lm-eval 0.4.13)")
    if is_crows_task(name):
        config = {"include": str(include), "task": name, "tag": [], "dataset_path": "csv", "dataset_name": None,
                  "dataset_kwargs": {"data_files": {"test": str(local.crows_csv)}}}
        return yaml.safe_dump(config, sort_keys=False)
    config = {"include": str(include), "task": name, "dataset_path": "json", "dataset_name": None,
              "dataset_kwargs": {"data_files": {"test": str(local.wikitext_rows)}},
              "training_split": None, "validation_split": None, "test_split": "test"}
    # safe_dump cannot write lm-eval's !function tag; the line is appended as text.
    return yaml.safe_dump(config, sort_keys=False) + f"process_docs: !function {_PAGES_FUNCTION}\n"


def write_task_yamls(folder: Path, local: LocalData, tasks_dir: Path | None = None) -> list[str]:
    """Write one YAML per local task into ``folder``; returns the task names written."""
    tasks_dir = tasks_dir or installed_tasks_dir()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = local.tasks()
    for name in names:
        if name in local.offline:
            text = offline_yaml(local.offline[name], tasks_dir)
        else:
            text = _task_yaml(name, tasks_dir, local)
        (folder / f"{name}.yaml").write_text(text, encoding="utf-8")
    return names


# ----------------------------------------------------------------------------- WikiText pages

# A top-level article heading row, " = Title = \n"; section headings are " = = Section = = \n".
_ARTICLE_HEADING = re.compile(r"^ = [^=].* = \n?$")


def pages_from_rows(rows: list[str]) -> list[str]:
    """Rebuild WikiText-2 documents from its rows: the layout of EleutherAI/wikitext_document_level.

    A blank row is the raw file's " \\n" line; a new page starts at each article heading. Blank rows
    before the first heading make no page of their own. The test split gives 62 pages.
    """
    pages, current = [], []
    for row in rows:
        if _ARTICLE_HEADING.match(row) and current:
            pages.append("".join(current))
            current = []
        if current or row.strip():
            current.append(row if row else " \n")
    if current:
        pages.append("".join(current))
    return pages


def wikitext_pages(dataset):
    """lm-eval ``process_docs``: a dataset of ``{"text": row}`` rows -> one ``{"page": ...}`` per document."""
    import datasets

    return datasets.Dataset.from_dict({"page": pages_from_rows(list(dataset["text"]))})
