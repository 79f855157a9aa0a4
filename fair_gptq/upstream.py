"""Import the pristine GPTQModel 2.2.0 files that install_overlay.sh keeps beside the overlay (`*.py.upstream`).

Used by the parity tests and by the benchmark's "stock" configuration, so both compare against the same bytes.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path


def upstream_path(name: str) -> Path:
    import gptqmodel.quantization
    return Path(gptqmodel.quantization.__file__).parent / f"{name}.py.upstream"


def load_upstream_module(name: str):
    """`name` is "gptq" or "config"; the module is imported inside gptqmodel.quantization, so its relative
    imports resolve as the original's did."""
    path = upstream_path(name)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: install the overlay with `bash install_overlay.sh`")
    module_name = f"gptqmodel.quantization._upstream_{name}"
    loader = importlib.machinery.SourceFileLoader(module_name, str(path))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(module_name, loader))
    loader.exec_module(module)
    return module
