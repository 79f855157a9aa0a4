"""How much of the label a fresh linear probe still reads from the representations, before and after erasure.

* fit set: a probe trained and scored on the fitting sentences themselves. With fewer sentences than
  dimensions (512 vs 576 for SmolLM2-135M) a probe can fit almost any labelling there, so this number
  says little before erasure; after LEACE it is at chance by construction (equal class means).
* held out: pair-grouped k-fold cross-validation (a pair's two sentences always in the same fold). After
  erasure the eraser is refitted on the training folds only, so the held-out fold is unseen by the eraser
  as well as by the probe. Scoring held-out sentences with an eraser fitted on all of them would not do:
  equalising the class means over all sentences shifts each fold's means against the rest, and the
  probe then lands *below* chance (measured: 34% for LEACE on SmolLM2-135M).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

PROBE = "StandardScaler + LogisticRegression(C=1.0, lbfgs, max_iter=5000)"
CV_FOLDS = 5

# (x_train, labels_train) -> a function that erases rows of x
EraserFit = Callable[[np.ndarray, np.ndarray], Callable[[np.ndarray], np.ndarray]]


def _probe():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))


def majority_rate(labels: np.ndarray) -> float:
    """Accuracy of always predicting the most common label: chance for a probe."""
    counts = np.bincount(np.asarray(labels))
    return float(counts.max() / counts.sum())


def fit_set_accuracy(x: np.ndarray, labels: np.ndarray) -> float:
    return float(_probe().fit(x, labels).score(x, labels))


def heldout_accuracy(x: np.ndarray, labels: np.ndarray, groups: np.ndarray, refit: EraserFit | None = None,
                     folds: int = CV_FOLDS) -> float:
    """Mean accuracy over pair-grouped folds; with `refit`, each fold's eraser is fitted on its training part."""
    from sklearn.model_selection import GroupKFold

    scores = []
    for train, test in GroupKFold(n_splits=folds).split(x, labels, groups):
        x_train, x_test = x[train], x[test]
        if refit is not None:
            erase = refit(x_train, labels[train])
            x_train, x_test = erase(x_train), erase(x_test)
        scores.append(_probe().fit(x_train, labels[train]).score(x_test, labels[test]))
    return float(np.mean(scores))
