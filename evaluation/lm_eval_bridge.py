"""Optional bridge to lm-evaluation-harness for the paper's zero-shot and group-bias tasks.

The Fair-GPTQ paper runs ``lm_eval --model hf`` on these tasks (:data:`PAPER_TASKS`). Here the
model that is already loaded (full precision or GPTQ) is wrapped in lm-eval's ``HFLM`` and passed
to ``lm_eval.simple_evaluate``, so no second copy is loaded and GPTQ checkpoints go through the
same loader as the other tasks. When lm-eval is not installed, or its data cannot be reached
(offline machine), one line says why and the other tasks still run.
"""

from __future__ import annotations

import importlib.util

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


class LmEvalUnavailable(RuntimeError):
    """lm-eval cannot run here; the message is one line for the user."""


def _lm_eval_installed() -> bool:
    try:
        return importlib.util.find_spec("lm_eval") is not None
    except (ImportError, ValueError):  # a broken or blocked installation
        return False


def unavailable_reason() -> str | None:
    """None when ``lm_eval`` can be imported, else why not (one line)."""
    if not _lm_eval_installed():
        return "lm-eval is not installed (pip install lm-eval); skipping the lm-eval tasks, the other tasks still run"
    return None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def run_lm_eval(lm, tasks=PAPER_TASKS, batch_size: int = 16, limit: int | None = None, seed: int = 0) -> dict:
    """Run lm-eval ``tasks`` on the loaded model ``lm`` (an :class:`evaluation.models.LoadedModel`).

    Returns a run record (``metrics``: lm-eval's ``results`` per task, ``versions``, ``n-samples``).
    Raises :class:`LmEvalUnavailable` with a one-line reason when lm-eval is missing or fails
    (typically: its datasets cannot be downloaded).
    """
    reason = unavailable_reason()
    if reason:
        raise LmEvalUnavailable(reason)
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM

        wrapped = HFLM(pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=batch_size)
        output = lm_eval.simple_evaluate(
            model=wrapped,
            tasks=list(tasks),
            limit=limit,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
            log_samples=False,
        )
    except Exception as exc:  # noqa: BLE001 - any failure becomes one line; the other tasks go on
        raise LmEvalUnavailable(f"lm-eval could not run ({_one_line(exc)}); the other tasks still run") from exc
    if not output:
        raise LmEvalUnavailable("lm-eval returned no results; the other tasks still run")
    return {
        "metrics": {
            "results": output.get("results", {}),
            "versions": output.get("versions", {}),
            "n_samples": output.get("n-samples", {}),
        },
        "per_item": {},
        "data": {"tasks": list(tasks), "limit": limit},
    }


def flatten_results(results: dict) -> dict[str, float]:
    """``{"arc_easy": {"acc,none": 0.6, "alias": ...}}`` -> ``{"arc_easy/acc": 0.6}`` (numbers only)."""
    flat = {}
    for task, values in sorted(results.items()):
        for key, value in sorted(values.items()):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            metric, _, filt = key.partition(",")
            if metric.endswith("_stderr"):
                continue
            name = f"{task}/{metric}" + (f" ({filt})" if filt and filt != "none" else "")
            flat[name] = float(value)
    return flat
