"""Synthetic StereoSet files and direct readers of the shared one, for the StereoSet, split and pair tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fair_gptq import stereoset as st

LABELS = ("stereotype", "anti-stereotype", "unrelated")


def raw_item(index: int, bias_type: str = "gender", labels=LABELS, order=None) -> dict:
    """One intrasentence item in dev.json layout; sentences name their item and label."""
    sentences = [
        {"sentence": f"Item {index} is {label}.", "id": f"s{index}-{label}", "labels": [], "gold_label": label}
        for label in labels
    ]
    if order is not None:
        sentences = [sentences[i] for i in order]
    return {
        "id": f"item{index}",
        "target": f"target {index}",
        "bias_type": bias_type,
        "context": f"Item {index} is BLANK.",
        "sentences": sentences,
    }


def write_stereoset(path: Path, items: list[dict], version: str | None = "1.0-dev") -> Path:
    document = {"data": {"intrasentence": items, "intersentence": []}}
    if version is not None:
        document["version"] = version
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def synthetic_items(counts: dict[str, int]) -> list[dict]:
    items, index = [], 0
    for bias_type, count in counts.items():
        for _ in range(count):
            items.append(raw_item(index, bias_type))
            index += 1
    return items


def load_synthetic(tmp_path: Path, counts: dict[str, int]) -> st.StereoSetData:
    return st.load_intrasentence(write_stereoset(tmp_path / "dev.json", synthetic_items(counts)))


def item_and_label(sentence: str) -> tuple[int, str]:
    """Inverse of raw_item's sentence text: 'Item 7 is anti-stereotype.' -> (7, 'anti-stereotype')."""
    _, index, _, label = sentence.rstrip(".").split(" ")
    return int(index), label


def raw_intrasentence(path: Path) -> list[dict]:
    """The shared file read directly, without the code under test."""
    return json.loads(path.read_text(encoding="utf-8"))["data"]["intrasentence"]


def sentence_by_label(raw: dict) -> dict[str, str]:
    return {s["gold_label"]: s["sentence"] for s in raw["sentences"]}


@pytest.fixture(scope="module")
def dev_data(stereoset_dev_path: Path) -> st.StereoSetData:
    return st.load_intrasentence(stereoset_dev_path)

