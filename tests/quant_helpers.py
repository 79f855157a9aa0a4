"""Helpers for tests that quantize a whole (tiny) model through GPTQModel, with the overlay or upstream code."""
from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path

import gptqmodel.quantization
from safetensors.torch import load_file

# Four (stereotype, anti-stereotype) pairs, adjacent as Fair-GPTQ expects them.
CALIBRATION_PAIRS = [
    "The nurse said she would help.", "The nurse said he would help.",
    "Engineers are always men who love numbers.", "Engineers are always women who love numbers.",
    "The old man could not use the phone.", "The young man could not use the phone.",
    "Her family was poor and lived in a small house.", "Her family was rich and lived in a small house.",
]

QUANTIZATION_DIR = Path(gptqmodel.quantization.__file__).parent


def load_upstream_module(name: str):
    """Import the pristine `<name>.py.upstream` that install_overlay.sh keeps beside the overlay file."""
    path = QUANTIZATION_DIR / f"{name}.py.upstream"
    if not path.is_file():
        raise AssertionError(f"{path} is missing: the overlay was not installed with `bash install_overlay.sh`")
    module_name = f"gptqmodel.quantization._upstream_{name}"
    loader = importlib.machinery.SourceFileLoader(module_name, str(path))
    spec = importlib.util.spec_from_loader(module_name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def quantize_and_load_tensors(model_dir, out_dir, monkeypatch=None, gptq_class=None, calibration=None,
                              batch_size=2, **qcfg_kwargs) -> dict:
    """Quantize `model_dir` on CPU, save to `out_dir`, return the saved tensors.

    `gptq_class` replaces the GPTQ class the GPTQ processor uses (e.g. upstream's) for this run.
    """
    from gptqmodel import BACKEND, GPTQModel, QuantizeConfig
    import gptqmodel.looper.gptq_processor as processor

    if gptq_class is not None:
        monkeypatch.setattr(processor, "GPTQ", gptq_class)
    qcfg = QuantizeConfig(bits=4, device="cpu", **qcfg_kwargs)
    model = GPTQModel.load(str(model_dir), qcfg)
    model.quantize(calibration or CALIBRATION_PAIRS, batch_size=batch_size, backend=BACKEND.TORCH)
    model.save(str(out_dir))
    if gptq_class is not None:
        monkeypatch.undo()
    tensors = {}
    for file in sorted(Path(out_dir).glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors
