"""Iterative Nullspace Projection (Ravfogel et al., 2020) as bias-bench runs it (see the package docstring).

Each iteration trains a linear classifier on the representations projected onto the nullspace of all
earlier classifiers; the result is P = I - (orthogonal projection onto the span of every classifier's
weight vector), a symmetric idempotent d x d matrix with P w = 0 for each w.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

DEFAULT_ITERATIONS = 80  # bias-bench's --n_classifiers (experiments/inlp_projection_matrix.py)
# bias-bench's classifier_parameters in context_nullspace_projection._apply_nullspace_projection
SVC_PARAMETERS = {"fit_intercept": False, "class_weight": None, "dual": False}


def svm_classifier(seed: int = 0):
    """bias-bench's INLP classifier: a primal LinearSVC without intercept."""
    from sklearn.svm import LinearSVC

    return LinearSVC(**SVC_PARAMETERS, random_state=seed)


@dataclass
class InlpResult:
    projection: np.ndarray  # (d, d) float64
    directions: np.ndarray  # (iterations, d): each classifier's weight vector, in training order
    train_accuracies: list[float] = field(default_factory=list)  # each classifier on its own input
    convergence_warnings: int = 0  # liblinear iterations ran out (sklearn's ConvergenceWarning)

    @property
    def rank_removed(self) -> int:
        return int(round(np.trace(np.eye(len(self.projection)) - self.projection)))


def nullspace_projection(directions: np.ndarray, dim: int) -> np.ndarray:
    """I minus the orthogonal projection onto the row span of `directions` (zero rows add nothing)."""
    if len(directions) == 0:
        return np.eye(dim)
    from scipy.linalg import orth

    basis = orth(np.asarray(directions, dtype=np.float64).T)  # (dim, rank), orthonormal columns
    projection = np.eye(dim) - basis @ basis.T
    return (projection + projection.T) / 2  # symmetric to the last bit


def fit_inlp(x: np.ndarray, labels: np.ndarray, iterations: int = DEFAULT_ITERATIONS,
             make_classifier: Callable[[], object] | None = None) -> InlpResult:
    """INLP on representations `x` (n, d) with binary `labels` (n,); every classifier is kept (min_accuracy 0)."""
    x = np.asarray(x, dtype=np.float64)
    labels = np.asarray(labels)
    if x.ndim != 2 or len(x) != len(labels):
        raise ValueError(f"need x of shape (n, d) and n labels, got {x.shape} and {labels.shape}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a positive integer, got {iterations!r}")
    if len(np.unique(labels)) != 2:
        raise ValueError(f"INLP here needs two classes, got {len(np.unique(labels))}")
    from sklearn.exceptions import ConvergenceWarning

    make_classifier = make_classifier or svm_classifier
    dim = x.shape[1]
    projection, directions, accuracies, n_warnings = np.eye(dim), [], [], 0
    for _ in range(iterations):
        projected = x @ projection  # P is symmetric: rows are P x_i
        classifier = make_classifier()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            classifier.fit(projected, labels)
        n_warnings += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
        for other in caught:  # anything but convergence is passed on, not swallowed
            if not issubclass(other.category, ConvergenceWarning):
                warnings.warn_explicit(other.message, other.category, other.filename, other.lineno)
        accuracies.append(float(classifier.score(projected, labels)))
        directions.append(np.asarray(classifier.coef_, dtype=np.float64).reshape(-1, dim))
        # Re-derived from all directions at once (Ben-Israel), not multiplied up: stays a projection even when
        # a new direction is not exactly orthogonal to the earlier ones.
        projection = nullspace_projection(np.vstack(directions), dim)
    return InlpResult(projection=projection, directions=np.vstack(directions), train_accuracies=accuracies,
                      convergence_warnings=n_warnings)
