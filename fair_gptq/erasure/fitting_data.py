"""The labelled sentences an eraser is fitted on: calibration pairs of the `calib` half, one label per sentence.

    data = fitting_data(calibration_pairs(None, "stereo-anti", max_pairs=256, seed=0), "stereo-anti")

Label modes (`--labels`):
  * `stereo-anti`: stereotype 1, anti-stereotype 0 (pairs of mode `stereo-anti`);
  * `unrelated`: stereotype 1, the same item's unrelated sentence 0 (pairs of mode `unrelated`);
  * `shuffled-labels`: the `stereo-anti` pairs, each pair's label order drawn at random (seeded), so the
    labels carry no stereotype information while every pair keeps one 1 and one 0.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from fair_gptq.pairs import PairSet

# --labels -> the calibration_pairs mode that supplies its pairs
LABEL_MODES = {"stereo-anti": "stereo-anti", "unrelated": "unrelated", "shuffled-labels": "stereo-anti"}
FITTING_PART = "calib"


class EvaluationDataError(ValueError):
    """Fitting was asked on pairs that are not (verifiably) from the calibration half."""


@dataclass(frozen=True)
class FittingData:
    sentences: list[str]  # pairs adjacent, as in PairSet: [s0, a0, s1, a1, ...]
    labels: np.ndarray  # int64, one per sentence
    label_mode: str
    label_seed: int | None  # the seed of the label order (shuffled-labels only)
    pairs: dict  # PairSet.summary(): mode, counts, sha256 of the sentences, split

    @property
    def groups(self) -> np.ndarray:
        """The pair index of each sentence (a pair's two sentences must never straddle a CV split)."""
        return np.arange(len(self.sentences)) // 2

    @property
    def labels_sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.labels.tolist()).encode()).hexdigest()

    def summary(self) -> dict:
        return {"label_mode": self.label_mode, "label_seed": self.label_seed, "n_sentences": len(self.sentences),
                "n_positive": int(self.labels.sum()), "sentences_sha256": self.pairs["sha256"],
                "labels_sha256": self.labels_sha256, "pairs": self.pairs}


def check_label_mode(label_mode: str) -> str:
    """The calibration_pairs mode for `label_mode`; a clear error for an unknown one."""
    if label_mode not in LABEL_MODES:
        raise ValueError(f"unknown label mode {label_mode!r}: choose one of {', '.join(LABEL_MODES)}")
    return LABEL_MODES[label_mode]


def refuse_unless_calibration_half(pair_set: PairSet) -> None:
    """An eraser is a baseline for the quantizer: it may see only what the quantizer calibrates on."""
    split = pair_set.split
    if split is None:
        raise EvaluationDataError(
            f"pairs of mode '{pair_set.mode}' carry no StereoSet split, so it cannot be checked that they "
            f"hold no evaluation item: fit on StereoSet pairs of the '{FITTING_PART}' part")
    if split.get("part") != FITTING_PART:
        raise EvaluationDataError(
            f"these pairs come from the '{split.get('part')}' part of StereoSet, which holds evaluation items: "
            f"an eraser is fitted on the '{FITTING_PART}' part only")


def fitting_data(pair_set: PairSet, label_mode: str, seed: int = 0) -> FittingData:
    """Sentences and labels of `pair_set` under `label_mode` (refused unless from the `calib` half)."""
    wanted_mode = check_label_mode(label_mode)
    refuse_unless_calibration_half(pair_set)
    if pair_set.mode != wanted_mode:
        raise ValueError(f"label mode '{label_mode}' needs pairs of mode '{wanted_mode}', got '{pair_set.mode}'")
    first_is_positive = np.ones(pair_set.n_pairs, dtype=np.int64)
    if label_mode == "shuffled-labels":
        first_is_positive = np.random.default_rng(seed).integers(0, 2, size=pair_set.n_pairs, dtype=np.int64)
    labels = np.empty(2 * pair_set.n_pairs, dtype=np.int64)
    labels[0::2], labels[1::2] = first_is_positive, 1 - first_is_positive
    return FittingData(sentences=list(pair_set.sentences), labels=labels, label_mode=label_mode,
                       label_seed=seed if label_mode == "shuffled-labels" else None, pairs=pair_set.summary())
