"""Fair-GPTQ on GPTQModel 7.7.0 (the 2.2.0 overlay, gptq.py/config.py at the repository root, is separate).

    from gptqmodel import GPTQModel
    import fair_gptq_v7
    cfg = fair_gptq_v7.FairGPTQConfig(bits=4, group_size=128, alpha=0.1, ignore_bias="q_proj,k_proj,v_proj")
    model = GPTQModel.load(path, cfg, dtype=torch.float32)
    fair_gptq_v7.quantize(model, ["stereotype 1", "anti-stereotype 1", ...], batch_size=2)
    model.save(out)
"""
from __future__ import annotations

import os

# GPTQModel 7.7.0's loader asks for 2 CPU workers, more than it allots itself on a 2-core machine
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")

_EXPORTS = {"FairGPTQConfig": "config", "install": "hooks", "installed": "hooks", "uninstall": "hooks",
            "quantize": "run"}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    # imported on first use, so the pure modules (gating, pairs, compare) load without GPTQModel 7.7.0
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fair_gptq_v7' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
