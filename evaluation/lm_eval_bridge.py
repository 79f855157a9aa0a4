"""lm-evaluation-harness (0.4.13, ``requirements-eval.txt``) on the models our loader builds.

The model that is already loaded (full precision or GPTQ, :func:`evaluation.models.load_model`)
is wrapped in lm-eval's ``HFLM``, or by default in its subclass that computes each shared context once
(:mod:`evaluation.lm_eval_scorer`, ``--lm-eval-scorer``), and passed to ``lm_eval.simple_evaluate``: no second
copy is loaded, and GPTQ checkpoints go through the same loader (and dtype) as our own tasks.

Tasks with local data (:mod:`evaluation.lm_eval_tasks`: ``crows_pairs_english`` and its bias-type
subtasks on the CrowS-Pairs CSV, ``wikitext`` on the WikiText-2 rows, and the shared folder's offline tasks of
:mod:`evaluation.lm_eval_offline`) run lm-eval's own task code offline. Other tasks load lm-eval's hub datasets.
Offline, the paper's tasks known to have no local data are skipped without asking the hub; any other task that
cannot be loaded (unknown name, hub unreachable) is reported as unavailable too, one line each, and the others
still run. Without lm-eval installed, one line says so.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import tempfile
from pathlib import Path

from evaluation import lm_eval_offline, lm_eval_tasks, subsets
from evaluation.crows_version import LM_EVAL_HUB, csv_version
from evaluation.lm_eval_groups import PAPER_TASKS, expand_tasks

# --lm-eval-scorer: evaluation.lm_eval_scorer.SharedContextHFLM (each shared context computed once) or lm-eval's HFLM
SCORERS = ("shared-context", "hflm")
DEFAULT_SCORER = "shared-context"
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


def run_settings(requested: list[str], local: lm_eval_tasks.LocalData, scorer: str = DEFAULT_SCORER) -> dict:
    """What besides tasks, limit and seed changes an lm-eval result (stored runs compare it).

    The scorer is part of it: its log-likelihoods equal HFLM's to float rounding, not bit for bit. So is the list of
    tasks skipped offline: a run made online may have them.
    """
    return {"lm_eval_version": lm_eval_version(), "add_bos_token": ADD_BOS_TOKEN,
            "local_data": local.fingerprints(requested), "scorer": scorer,
            "skipped_offline": sorted(skipped_offline(requested, local))}


def skipped_offline(requested: list[str], local: lm_eval_tasks.LocalData) -> dict[str, str]:
    """{task: why} for the requested tasks that are skipped because the hub may not be used and nothing is local."""
    if not lm_eval_offline.hub_offline():
        return {}
    return lm_eval_offline.offline_skips(requested, local.tasks())


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


def load_tasks(manager, requested: list[str]) -> tuple[list, dict[str, str], dict]:
    """Build each requested task (this loads its data); returns (tasks and groups, {name: why not},
    {leaf task name: task object})."""
    loaded, unavailable, leaves = [], {}, {}
    for name in requested:
        try:
            got = manager.load([name])
        except Exception as exc:  # noqa: BLE001 - offline hub data, unknown names, ...: one line each
            unavailable[name] = _one_line(exc)
            continue
        # A group keeps its own aggregate; a task or a tag contributes its tasks.
        loaded.extend([got["groups"][name]] if name in got.get("groups", {}) else got["tasks"].values())
        leaves.update(got["tasks"])
    return loaded, unavailable, leaves


def draw_subsets(leaves: dict, sizes: dict[str, int | None], seed: int) -> tuple[dict, dict]:
    """lm-eval's ``samples`` argument ({task: document indices}) for the tasks in ``sizes`` (seeded, the same for
    every model) and what the record says about each subset. A task of ``sizes`` that is not a loaded task is refused:
    a subset must never be dropped silently."""
    missing = sorted(set(sizes) - set(leaves))
    if missing:
        raise ValueError(f"--lm-eval-subset names {', '.join(missing)}, which is not a loaded lm-eval task "
                         f"(loaded: {', '.join(sorted(leaves))})")
    samples, described = {}, {}
    for name, size in sizes.items():
        n_docs = len(leaves[name].eval_docs)
        samples[name] = subsets.subset_indices(n_docs, size, seed)
        described[name] = subsets.describe(samples[name], n_docs, seed)
    return samples, described


def _per_item_value(value):
    """A logged metric value as stored: numbers as floats, tuples as lists; None for what is not per-item data."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) or hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return float(value)
    if isinstance(value, (tuple, list)) and all(isinstance(v, (int, float, bool)) or hasattr(v, "item")
                                                for v in value):
        items = [float(v) for v in value]
        return None if any(math.isnan(v) for v in items) else items
    return None


def per_item_records(logged: dict) -> dict:
    """lm-eval's logged samples -> per task, one list per column, in document order: ``doc_id``, ``loglikelihoods``
    (each choice's summed log-likelihood, what the prediction was made from), ``target`` (lm-eval's target index:
    the gold choice where there is one; truthfulqa_mc2 and BBQ accept several), every metric whose per-item value is
    a number or a tuple without NaN (BBQ's ``(acc, n_biased, n_non_unknown, disambiguated)`` is kept once, under
    the first metric name that carries it; its per-category copies differ only in NaNs) and ``category`` where the
    document has one (BBQ). Enough to recompute every aggregate, and to resample items for paired intervals."""
    records = {}
    for task, samples in sorted(logged.items()):
        columns: dict[str, list] = {"doc_id": [], "loglikelihoods": []}
        for sample in sorted(samples, key=lambda s: s["doc_id"]):
            columns["doc_id"].append(int(sample["doc_id"]))
            if isinstance(sample.get("target"), int) and not isinstance(sample.get("target"), bool):
                # lm-eval's target index: the gold choice for single-answer tasks; for truthfulqa_mc2 (several true
                # answers) and BBQ (several 'unknown' wordings) only the first of the accepted ones
                columns.setdefault("target", []).append(sample["target"])
            columns["loglikelihoods"].append([float(r[0]) if isinstance(r, (tuple, list)) else float(r)
                                              for r in sample["filtered_resps"]])
            seen_tuples = []
            for metric in sample["metrics"]:
                value = _per_item_value(sample.get(metric))
                if value is None or isinstance(value, list) and value in seen_tuples and metric not in columns:
                    continue
                if isinstance(value, list) and metric not in columns:
                    seen_tuples.append(value)
                columns.setdefault(metric, []).append(value)
            if isinstance(sample.get("doc"), dict) and "category" in sample["doc"]:
                columns.setdefault("category", []).append(str(sample["doc"]["category"]))
        n = len(columns["doc_id"])
        records[task] = {k: v for k, v in columns.items() if len(v) == n}  # a column every item has
    return records


def wrap_model(lm, batch_size: int, scorer: str = DEFAULT_SCORER):
    """lm-eval's HFLM (``scorer="hflm"``) or its shared-context subclass around our loaded model (full precision or
    GPTQ alike); its dtype and device are the ones our loader chose.

    HFLM gets a copy of the tokenizer: it sets a pad token on the one it is given.
    """
    if scorer == "hflm":
        from lm_eval.models.huggingface import HFLM as model_class
    elif scorer == "shared-context":
        from evaluation.lm_eval_scorer import SharedContextHFLM as model_class
    else:
        raise ValueError(f"unknown lm-eval scorer {scorer!r} (choose from {', '.join(SCORERS)})")
    return model_class(pretrained=lm.model, tokenizer=copy.deepcopy(lm.tokenizer), batch_size=batch_size,
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
        if task in local.offline:  # by its name in the data folder, never this machine's path
            sources[task] = local.offline[task].describe()
        elif task in local_tasks and lm_eval_tasks.is_crows_task(task):
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
                local: lm_eval_tasks.LocalData | None = None, scorer: str = DEFAULT_SCORER,
                subset_sizes: dict[str, int | None] | None = None) -> dict:
    """Run lm-eval ``tasks`` (task and group names) on the loaded model ``lm`` (an
    :class:`evaluation.models.LoadedModel`), scored by ``scorer`` (:data:`SCORERS`).

    Returns a run record: ``metrics`` (lm-eval's ``results`` per task, ``versions``, ``n_samples``,
    ``scoring``) and ``data`` (tasks evaluated, tasks unavailable with the reason, the source and
    data version of each task, the scorer, and ``partial`` for tasks on incomplete data: BBQ) and ``per_item``
    (:func:`per_item_records`). ``subset_sizes`` ({task: n or None}) scores a seeded subset of those tasks
    (:func:`draw_subsets`; not together with ``limit``). Raises
    :class:`LmEvalUnavailable` when lm-eval is missing, no task can be loaded, or the evaluation fails.
    """
    reason = unavailable_reason()
    if reason:
        raise LmEvalUnavailable(reason)
    tasks, local = expand_tasks(",".join(tasks)) if tasks else [], local or lm_eval_tasks.LocalData()
    skipped = skipped_offline(tasks, local)
    with tempfile.TemporaryDirectory(prefix="fair_gptq_lm_eval_") as folder:
        to_load = [t for t in tasks if t not in skipped]
        try:
            manager = build_task_manager(Path(folder), to_load, local) if to_load else None
            loaded, failed, leaves = load_tasks(manager, to_load) if to_load else ([], {}, {})
        except Exception as exc:  # noqa: BLE001 - a broken installation: one line, the other tasks go on
            raise LmEvalUnavailable(f"lm-eval could not set up its tasks ({_one_line(exc)})") from exc
        if subset_sizes and limit is not None:
            raise ValueError("an lm-eval subset and a limit both choose the items: use one")
        try:
            samples, drawn = draw_subsets(leaves, subset_sizes, seed) if subset_sizes else (None, {})
        except ValueError as exc:  # a subset task that could not load (offline, no data): one line, like the rest
            raise LmEvalUnavailable(f"lm-eval subsets: {exc}", unavailable) from exc
        unavailable = {t: skipped.get(t) or failed[t] for t in tasks if t in skipped or t in failed}
        if not loaded:
            raise LmEvalUnavailable("no lm-eval task could be loaded; the other tasks still run", unavailable)
        try:
            import lm_eval

            model = wrap_model(lm, batch_size, scorer)
            output = lm_eval.simple_evaluate(
                model=model, tasks=loaded, task_manager=manager, limit=limit, samples=samples,
                bootstrap_iters=BOOTSTRAP_ITERS, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                fewshot_random_seed=seed, log_samples=True,
            )
        except Exception as exc:  # noqa: BLE001 - reported in one line; the other tasks go on
            raise LmEvalUnavailable(f"lm-eval failed while evaluating ({_one_line(exc)}); the other tasks still run",
                                    unavailable) from exc
    if not output:
        raise LmEvalUnavailable("lm-eval returned no results; the other tasks still run", unavailable)
    per_item = per_item_records(output.get("samples") or {})
    output = json.loads(json.dumps({k: output.get(k, {}) for k in ("results", "versions", "n-samples", "configs")},
                                   default=_plain))
    evaluated = sorted(output["results"])
    scoring = {t: text for t, text in lm_eval_tasks.SCORING.items() if t in evaluated and t in local.tasks()}
    partial = {}
    if "bbq" in evaluated and "bbq" in local.offline:
        partial["bbq"] = mark_bbq_partial(output["results"]["bbq"])
    return {
        "metrics": {"results": output["results"], "versions": output["versions"],
                    "n_samples": output["n-samples"], "scoring": scoring},
        "per_item": per_item,
        "data": {"tasks": evaluated, "requested": tasks, "unavailable": unavailable, "limit": limit,
                 "subsets": drawn,
                 "sources": data_sources(evaluated, output["configs"], local), "partial": partial,
                 "scorer": {"name": scorer, **getattr(model, "stats", {})}},
    }


def mark_bbq_partial(results: dict) -> dict:
    """BBQ on the partial file: drop the per-category scores of the categories the file lacks (NaN by
    construction) from ``results`` in place; returns what the record says about the partiality, with the
    categories that got a bias score (with ``--max-items``, only the file's first categories are evaluated)."""
    info = lm_eval_offline.BBQ_PARTIAL
    dropped = sorted(key for key in results if any(key.split(",")[0].removesuffix("_stderr").endswith(
        f"_bias_score_{category}") for category in info["categories_missing"]))
    for key in dropped:
        del results[key]
    results["partial"] = True  # in the results themselves too: anyone reading only them sees it
    scored = [c for c in info["categories_present"] if any(
        isinstance(v := results.get(f"{kind}_bias_score_{c},none"), float) and math.isfinite(v)
        for kind in ("amb", "disamb"))]
    return {**info, "categories_scored": scored, "metrics_dropped": dropped}


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
