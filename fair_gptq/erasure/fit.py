"""Fit an eraser of either kind on pooled representations and labelled fitting data, with its metadata."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version

import numpy as np
import torch

from fair_gptq.erasure.artifact import ERASER_KINDS, Eraser
from fair_gptq.erasure.diagnostics import CV_FOLDS, PROBE, fit_set_accuracy, heldout_accuracy, majority_rate
from fair_gptq.erasure.fitting_data import FittingData
from fair_gptq.erasure.inlp import DEFAULT_ITERATIONS, SVC_PARAMETERS, fit_inlp
from fair_gptq.erasure.leace import LEACE_SETTINGS, fit_leace
from fair_gptq.erasure.representations import HIDDEN_STATE_LOCATION, POOLING

_VERSIONED = ("torch", "transformers", "numpy", "scipy", "scikit-learn", "concept-erasure", "gptqmodel")


def check_method(method: str) -> str:
    if method not in ERASER_KINDS:
        raise ValueError(f"unknown erasure method {method!r}: choose one of {', '.join(ERASER_KINDS)}")
    return method


def erase_numpy(x: np.ndarray, projection: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """The artifact's map, bias + P (h - bias), on the rows of `x` in float64."""
    return x @ projection.T if bias is None else (x - bias) @ projection.T + bias


def fit_map(x: np.ndarray, labels: np.ndarray, method: str,
            iterations: int = DEFAULT_ITERATIONS) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """(projection, bias or None, settings and fit statistics) of `method` fitted on `x` and `labels`."""
    if check_method(method) == "inlp":
        result = fit_inlp(x, labels, iterations=iterations)
        settings = {"classifier": "sklearn.svm.LinearSVC",
                    "classifier_parameters": {**SVC_PARAMETERS, "random_state": 0}, "iterations": iterations,
                    "autoregressive": True, "min_accuracy": 0.0, "rank_removed": result.rank_removed,
                    "convergence_warnings": result.convergence_warnings,
                    "train_accuracies": [round(a, 4) for a in result.train_accuracies]}
        return result.projection, None, settings
    result = fit_leace(x, labels)
    return result.projection, result.bias, {"fitter": "concept_erasure.LeaceFitter", **LEACE_SETTINGS,
                                            "rank_removed": result.rank_removed}


def package_versions() -> dict:
    found = {}
    for name in _VERSIONED:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def diagnostics(x: np.ndarray, data: FittingData, method: str, iterations: int, projection: np.ndarray,
                bias: np.ndarray | None) -> dict:
    """Probe accuracies before and after erasure (diagnostics.py); the held-out `after` refits per fold."""
    def refit(x_train, labels_train):
        fold_projection, fold_bias, _ = fit_map(x_train, labels_train, method, iterations)
        return lambda rows: erase_numpy(rows, fold_projection, fold_bias)

    erased = erase_numpy(x, projection, bias)
    return {"probe": PROBE, "folds": CV_FOLDS, "chance": majority_rate(data.labels),
            "fit_set": {"before": fit_set_accuracy(x, data.labels), "after": fit_set_accuracy(erased, data.labels)},
            "heldout": {"before": heldout_accuracy(x, data.labels, data.groups),
                        "after": heldout_accuracy(x, data.labels, data.groups, refit=refit)}}


def fit_eraser(x: np.ndarray, data: FittingData, method: str, *, iterations: int = DEFAULT_ITERATIONS,
               model: dict | None = None, extra: dict | None = None) -> Eraser:
    """Fit `method` on `x` (one row per sentence of `data`); metadata includes probe accuracies before/after.

    `model` describes where `x` came from; `extra` adds further metadata entries (e.g. timings)."""
    check_method(method)
    if len(x) != len(data.sentences):
        raise ValueError(f"{len(x)} representations for {len(data.sentences)} sentences")
    started = time.perf_counter()
    projection, bias, settings = fit_map(x, data.labels, method, iterations)
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    checks = diagnostics(x, data, method, iterations, projection, bias)
    metadata = {
        "location": HIDDEN_STATE_LOCATION, "pooling": POOLING, "model": model or {}, "fitting": data.summary(),
        "method": settings, "fit_seconds": round(fit_seconds, 2), "n_sentences": len(x), "hidden_size": x.shape[1],
        "diagnostics": {**checks, "seconds": round(time.perf_counter() - started, 2)},
        "versions": package_versions(), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    return Eraser(kind=method, projection=torch.from_numpy(projection),
                  bias=None if bias is None else torch.from_numpy(bias), metadata=metadata)
