"""Stored runs: ``<out>/runs/<model>/<task>.json``, one per (model, task), written atomically.

A run is reused by a later invocation only when its ``settings`` equal the ones asked for now
(checkpoint fingerprint, data checksum, split, dtype, seqlen, ...); anything else is recomputed.
``<out>/manifest.json`` records the model order of the last invocation (the first model is the
baseline of every comparison).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from fair_gptq.cache import write_bytes_atomically

RUN_FORMAT = "fair_gptq.evaluation.run/1"
MANIFEST = "manifest.json"


def _clean(obj):
    """JSON has no NaN/inf: store them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json_atomic(path: Path, payload) -> None:
    """Write JSON to a temporary file in the same folder, then ``os.replace`` it into place."""
    text = json.dumps(_clean(payload), indent=1, allow_nan=False) + "\n"
    write_bytes_atomically(Path(path), text.encode("utf-8"))


def run_path(out_dir: Path, model: str, task: str) -> Path:
    return Path(out_dir) / "runs" / model / f"{task}.json"


def load_run(path: Path) -> dict | None:
    """A stored run, or None when missing or unreadable (then it is simply recomputed)."""
    try:
        run = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return run if isinstance(run, dict) and run.get("format") == RUN_FORMAT else None


def reusable_run(out_dir: Path, model: str, task: str, settings: dict) -> dict | None:
    """The stored run when its settings match ``settings`` exactly, else None."""
    run = load_run(run_path(out_dir, model, task))
    if run is None or run.get("settings") != _clean(json.loads(json.dumps(settings))):
        return None
    return run


def write_manifest(out_dir: Path, models: list[str], tasks: list[str], extra: dict | None = None) -> None:
    write_json_atomic(Path(out_dir) / MANIFEST, {"models": models, "tasks": tasks, **(extra or {})})


def load_runs(results_dir: Path) -> dict:
    """``{"models": [...], "runs": {model: {task: run}}}`` from a results folder.

    Model order: the manifest's (first = baseline), then any other stored model alphabetically.
    """
    results_dir = Path(results_dir)
    runs_dir = results_dir / "runs"
    runs: dict[str, dict] = {}
    if runs_dir.is_dir():
        for model_dir in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
            for file in sorted(model_dir.glob("*.json")):
                run = load_run(file)
                if run is not None:
                    runs.setdefault(model_dir.name, {})[run.get("task", file.stem)] = run
    order: list[str] = []
    manifest = results_dir / MANIFEST
    if manifest.is_file():
        try:
            order = [m for m in json.loads(manifest.read_text(encoding="utf-8")).get("models", []) if m in runs]
        except ValueError:
            order = []
    order += [m for m in sorted(runs) if m not in order]
    return {"models": order, "runs": runs}
