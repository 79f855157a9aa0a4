"""Which overlay files the tests expect installed, and how to tell whether the installed copies are the repository's.

A plain module (not conftest.py), so that tests can import it: `from conftest import ...` resolves to whichever
conftest.py was imported last, and tests/gptqmodel7/ has its own.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[1]
OVERLAY_FILES = ("gptq.py", "config.py")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def overlay_differences(repo_dir: Path, quantization_dir: Path) -> list[str]:
    """The overlay files whose copy in `quantization_dir` (an installed gptqmodel/quantization) is missing or
    differs (sha256) from the repository's."""
    problems = []
    for name in OVERLAY_FILES:
        installed = quantization_dir / name
        if not installed.is_file():
            problems.append(f"{installed} is missing")
        elif _sha256(installed) != _sha256(repo_dir / name):
            problems.append(f"{installed} differs from {repo_dir / name}")
    return problems
