"""LEACE (Belrose et al., 2023) through EleutherAI's `concept-erasure`, as an affine map h -> b + P (h - b).

`LeaceEraser` applies x - ((x - bias) @ proj_right^H) @ proj_left^H; with P = I - proj_left @ proj_right
(its `.P`) that is bias + P (x - bias), the form the artifact stores for every kind (artifact.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# LeaceFitter's own defaults, recorded in the artifact so that a later default change is visible
LEACE_SETTINGS = {"method": "leace", "affine": True, "constrain_cov_trace": True, "shrinkage": True,
                  "svd_tol": 0.01}


@dataclass
class LeaceResult:
    projection: np.ndarray  # (d, d) float64, oblique in general
    bias: np.ndarray  # (d,) float64: the mean of the fitting representations
    rank_removed: int  # columns of proj_left: dimensions of the concept erased (at most 1 for one label)


def fit_leace(x: np.ndarray, labels: np.ndarray) -> LeaceResult:
    """Fit LEACE on representations `x` (n, d) and binary `labels` (n,), in float64."""
    from concept_erasure import LeaceFitter

    x = np.asarray(x, dtype=np.float64)
    labels = np.asarray(labels)
    if x.ndim != 2 or len(x) != len(labels):
        raise ValueError(f"need x of shape (n, d) and n labels, got {x.shape} and {labels.shape}")
    if len(np.unique(labels)) != 2:
        raise ValueError(f"LEACE here needs two classes, got {len(np.unique(labels))}")
    concept = torch.from_numpy(labels.astype(np.float64)).unsqueeze(1)  # one column: the binary concept
    fitter = LeaceFitter(x.shape[1], 1, dtype=torch.float64, **LEACE_SETTINGS)
    eraser = fitter.update(torch.from_numpy(x), concept).eraser
    # svd_tol drops directions whose singular value is too small (then nothing may be erased at all)
    rank = int(torch.linalg.matrix_rank(torch.eye(x.shape[1], dtype=torch.float64) - eraser.P))
    return LeaceResult(projection=eraser.P.numpy(), bias=eraser.bias.numpy(), rank_removed=rank)
