"""Runs tests/gptqmodel7 (Fair-GPTQ on GPTQModel 7.7.0, fair_gptq_v7) with its own environment's python.

That suite cannot run in .venv (GPTQModel 2.2.0 + overlay); `bash install_overlay.sh --dev` creates
.venv-gptqmodel7, so the one README test command covers both versions.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_DIR = Path(__file__).resolve().parents[1]
VENV7_PY = Path(os.environ.get("VENV7", REPO_DIR / ".venv-gptqmodel7")) / "bin" / "python"


@pytest.mark.slow
def test_gptqmodel7_suite_passes():
    if not VENV7_PY.is_file():
        pytest.fail(f"{VENV7_PY} is missing: run `bash install_overlay.sh --dev` (or `bash install_gptqmodel7.sh`) "
                    f"to create the GPTQModel 7.7.0 environment, then rerun.")
    env = dict(os.environ, GPTQMODEL_CPU_WORKERS=os.environ.get("GPTQMODEL_CPU_WORKERS", "2"))
    done = subprocess.run([str(VENV7_PY), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/gptqmodel7"],
                          cwd=REPO_DIR, env=env, capture_output=True, text=True, timeout=1800)
    tail = (done.stdout + done.stderr)[-6000:]
    sys.stdout.write(tail)  # shown with -rP or on failure
    assert done.returncode == 0, f"tests/gptqmodel7 failed under {VENV7_PY}:\n{tail}"
    # tests needing the shared data skip without it, as in the main suite; pytest printed its summary line
    assert " passed" in done.stdout.splitlines()[-1], tail
