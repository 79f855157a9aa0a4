"""tests/gptqmodel7: Fair-GPTQ on GPTQModel 7.7.0 (fair_gptq_v7), run with the 7.7.0 environment's python:

    .venv-gptqmodel7/bin/python -m pytest -q tests/gptqmodel7

The main suite (.venv, GPTQModel 2.2.0 + overlay) cannot import them; it runs them through that command
(tests/test_gptqmodel7_suite.py), so `pytest -q` in .venv skips collecting them here.
"""
import os
from importlib import metadata

os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")  # 7.7.0's loader stops on a 2-core machine otherwise


def _gptqmodel_version():
    try:
        return metadata.version("gptqmodel")
    except metadata.PackageNotFoundError:
        return None


if _gptqmodel_version() != "7.7.0":
    collect_ignore_glob = ["test_*.py"]
