"""lm-evaluation-harness (0.4.13, ``requirements-eval.txt``) on the models our loader builds.

The model that is already loaded (full precision or GPTQ, :func:`evaluation.models.load_model`)
is wrapped in lm-eval's ``HFLM`` and passed to ``lm_eval.simple_evaluate``: no second copy is
loaded, and GPTQ checkpoints go through the same loader (and dtype) as our own tasks.

Tasks with local data (:mod:`evaluation.lm_eval_tasks`: ``crows_pairs_english`` and its bias-type
subtasks on the CrowS-Pairs CSV, ``wikitext`` on the WikiText-2 rows) run lm-eval's own task code
offline. Other tasks (the paper's zero-shot set, :data:`PAPER_TASKS`) load lm-eval's hub datasets;
a task that cannot be loaded (offline, unknown name) is reported as unavailable, one line each,
and the others still run. Without lm-eval installed, one line says so.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import tempfile
from pathlib import Path

from evaluation import lm_eval_tasks
from evaluation.crows_version import LM_EVAL_HUB, csv_version

PAPER_TASKS = (
    "arc_easy",
    "arc_challenge",
    "piqa",
    "hellaswag",
    "openbookqa",
    "xstorycloze_en",
    "winogender",
    "bbq",
    "crows_pairs_english",
    "simple_cooccurrence_bias",
)
# lm-eval 0.4.13 lets a Llama tokenizer add BOS to a document that its rolling-window code also
# prefixes with BOS (perplexity tasks score after two BOS); False stops the tokenizer's one.
# Choice tasks such as CrowS-Pairs tokenize without special tokens either way (tested).
ADD_BOS_TOKEN = False
BOOTSTRAP_ITERS = 1000  # lm-eval's stderr bootstrap (only for metrics without a closed form)


class LmEvalUnavailable(RuntimeError):
    """lm-eval cannot run here; the message is one line, ``unavailable`` names tasks that could not load."""

    def __init__(self, message: str, unavailable: dict[str, str] | None = None):
        super().__init__(message)
        self.unavailable = dict(unavailable or {})


def _lm_eval_installed() -> bool:
    try:
        return importlib.util.find_spec("lm_eval") is not None
    except (ImportError, ValueError):  # a broken or blocked installation
        return False


def unavailable_reason() -> str | None:
    """None when ``lm_eval`` can be imported, else why not (one line)."""
    if not _lm_eval_installed():
        return ("lm-eval is not installed (bash install_overlay.sh --eval); skipping the lm-eval tasks, "
                "the other tasks still run")
    return None


def lm_eval_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:
        return None


def run_settings(requested: list[str], local: lm_eval_tasks.LocalData) -> dict:
    """What besides tasks, limit and seed changes an lm-eval result (stored runs compare it)."""
    return {"lm_eval_version": lm_eval_version(), "add_bos_token": ADD_BOS_TOKEN,
            "local_data": local.fingerprints(requested)}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def unavailable_lines(unavailable: dict[str, str]) -> list[str]:
    return [f"{task} unavailable ({reason})" for task, reason in unavailable.items()]


# ----------------------------------------------------------------------------- tasks and model


def build_task_manager(folder: Path, requested: list[str], local: lm_eval_tasks.LocalData):
    """A TaskManager over the local task YAMLs; lm-eval's built-in index only when a task needs it."""
    from lm_eval.tasks import TaskManager

    local_names = lm_eval_tasks.write_task_yamls(folder, local)
    needs_builtin = any(name not in local_names for name in requested)
    return TaskManager(include_path=str(folder), include_defaults=needs_builtin)


def load_tasks(manager, requested: list[str]) -> tuple[list, dict[str, str]]:
    """Build each requested task (this loads its data); returns (tasks and groups, {name: why not})."""
    loaded, unavailable = [], {}
    for name in requested:
        try:
            got = manager.load([name])
        except Exception as exc:  # noqa: BLE001 - offline hub data, unknown names, ...: one line each
            unavailable[name] = _one_line(exc)
            continue
        # A group keeps its own aggregate; a task or a tag contributes its tasks.
        loaded.extend([got["groups"][name]] if name in got.get("groups", {}) else got["tasks"].values())
    return loaded, unavailable


def wrap_model(lm, batch_size: int):
    """lm-eval's HFLM around our loaded model; its dtype and device are the ones our loader chose.

    HFLM gets a copy of the tokenizer: it sets a pad token on the one it is given.
    """
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=lm.model, tokenizer=copy.deepcopy(lm.tokenizer), batch_size=batch_size,
                add_bos_token=ADD_BOS_TOKEN)


# ----------------------------------------------------------------------------- running


def _plain(value):
    """numpy scalars and other stragglers -> JSON-friendly values."""
    return value.item() if hasattr(value, "item") else str(value)


def data_sources(evaluated: list[str], configs: dict, local: lm_eval_tasks.LocalData) -> dict:
    """Where each evaluated task's documents came from, with the CrowS-Pairs data version."""
    local_tasks = set(local.tasks())
    sources = {}
    for task in evaluated:
        if task in local_tasks and lm_eval_tasks.is_crows_task(task):
            sources[task] = {"source": str(local.crows_csv), "sha256": local.crows_sha256,
                             "version": csv_version(local.crows_sha256)}
        elif task in local_tasks:
            sources[task] = {"source": str(local.wikitext_rows), "sha256": local.wikitext_sha256,
                             "version": "WikiText-2 raw test rows, rebuilt into 62 pages"}
        else:
            hub = configs.get(task, {}).get("dataset_path")
            sources[task] = {"source": f"hub {hub}" if hub else "hub"}
            if lm_eval_tasks.is_crows_task(task):
                sources[task]["version"] = LM_EVAL_HUB
    return sources


def run_lm_eval(lm, tasks=PAPER_TASKS, batch_size: int = 16, limit: int | None = None, seed: int = 0,
                local: lm_eval_tasks.LocalData | None = None) -> dict:
    """Run lm-eval ``tasks`` on the loaded model ``lm`` (an :class:`evaluation.models.LoadedModel`).

    Returns a run record: ``metrics`` (lm-eval's ``results`` per task, ``versions``, ``n_samples``,
    ``scoring``) and ``data`` (tasks evaluated, tasks unavailable with the reason, the source and
    data version of each task). Raises :class:`LmEvalUnavailable` when lm-eval is missing, no task
    can be loaded, or the evaluation fails.
    """
    reason = unavailable_reason()
    if reason:
        raise LmEvalUnavailable(reason)
    tasks, local = list(tasks), local or lm_eval_tasks.LocalData()
    with tempfile.TemporaryDirectory(prefix="fair_gptq_lm_eval_") as folder:
        try:
            manager = build_task_manager(Path(folder), tasks, local)
            loaded, unavailable = load_tasks(manager, tasks)
        except Exception as exc:  # noqa: BLE001 - a broken installation: one line, the other tasks go on
            raise LmEvalUnavailable(f"lm-eval could not set up its tasks ({_one_line(exc)})") from exc
        if not loaded:
            raise LmEvalUnavailable("no lm-eval task could be loaded; the other tasks still run", unavailable)
        try:
            import lm_eval

            output = lm_eval.simple_evaluate(
                model=wrap_model(lm, batch_size), tasks=loaded, task_manager=manager, limit=limit,
                bootstrap_iters=BOOTSTRAP_ITERS, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                fewshot_random_seed=seed, log_samples=False,
            )
        except Exception as exc:  # noqa: BLE001 - reported in one line; the other tasks go on
            raise LmEvalUnavailable(f"lm-eval failed while evaluating ({_one_line(exc)}); the other tasks still run",
                                    unavailable) from exc
    if not output:
        raise LmEvalUnavailable("lm-eval returned no results; the other tasks still run", unavailable)
    output = json.loads(json.dumps({k: output.get(k, {}) for k in ("results", "versions", "n-samples", "configs")},
                                   default=_plain))
    evaluated = sorted(output["results"])
    scoring = {t: text for t, text in lm_eval_tasks.SCORING.items() if t in evaluated and t in local.tasks()}
    return {
        "metrics": {"results": output["results"], "versions": output["versions"],
                    "n_samples": output["n-samples"], "scoring": scoring},
        "per_item": {},
        "data": {"tasks": evaluated, "requested": tasks, "unavailable": unavailable, "limit": limit,
                 "sources": data_sources(evaluated, output["configs"], local)},
    }


def flatten_results(results: dict) -> dict[str, float]:
    """``{"arc_easy": {"acc,none": 0.6, "alias": ...}}`` -> ``{"arc_easy/acc": 0.6}`` (numbers only).

    Metrics are the ``metric,filter`` keys; others (``sample_len``, ``alias``) and standard errors are left out.
    """
    flat = {}
    for task, values in sorted(results.items()):
        for key, value in sorted(values.items()):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or "," not in key:
                continue
            metric, _, filt = key.partition(",")
            if metric.endswith("_stderr"):
                continue
            name = f"{task}/{metric}" + (f" ({filt})" if filt and filt != "none" else "")
            flat[name] = float(value)
    return flat
