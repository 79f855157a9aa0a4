"""The host a measurement ran on, for the JSON records of jobs, checkpoints and benchmarks.

Quantization is deterministic on one machine but not across CPUs whose kernels round differently (docs/study.md,
re-quantization), and timings only compare on one machine: both need the host on record.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_record() -> dict:
    import torch

    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch_threads": torch.get_num_threads()}
