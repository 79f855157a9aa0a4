"""Loading the models to evaluate: full-precision checkpoints and GPTQ checkpoints.

* Full precision: ``transformers.AutoModelForCausalLM.from_pretrained(path, torch_dtype=dtype)``.
* GPTQ (a folder with ``quantize_config.json`` / ``quant_config.json``, or a config with a
  ``quantization_config``): ``gptqmodel.GPTQModel.load(path, device=..., backend=...)``; the
  Hugging Face module that is scored is the wrapper's ``.model``. On CPU the backend is
  ``BACKEND.TORCH`` (``TorchQuantLinear``: the one GPTQModel v2.2.0 kernel that runs on a plain CPU;
  the CPU alternative, IPEX, needs intel-extension-for-pytorch and bfloat16). It dequantizes
  the int4 weights on every forward and casts them to the activation dtype, so it runs in float32
  as well as in half precision. Scoring never changes the weights, so each module's dequantized weight is
computed once, by the kernel's own function, and reused (:func:`cache_dequantized_weights`): the same numbers,
13x faster on CPU (200 CrowS-Pairs sentences of SmolLM2-135M GPTQ: 197 s -> 15 s, one thread). On CUDA, ``BACKEND.AUTO`` lets GPTQModel choose (Marlin, ExLlama,
  Triton, ...).

Both kinds are loaded with the same tokenizer class (``AutoTokenizer`` from the checkpoint folder)
and, by default, the same dtype (``--dtype auto``: float32 on CPU; bfloat16 on CUDA where supported,
else float16). The first forward of a GPTQ model on CPU is slow: GPTQModel compiles
``dequantize_weight`` with ``torch.compile``.

An eraser (``load_model(..., eraser=FILE)``, fair_gptq/erasure) is attached to either kind as a forward
pre-hook on the LM head: every final hidden state is erased before the head sees it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

QUANT_CONFIG_FILES = ("quantize_config.json", "quant_config.json")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    """A model ready to score: the Hugging Face module, its tokenizer, and how it was loaded."""

    name: str
    path: str
    model: torch.nn.Module
    tokenizer: Any
    kind: str  # "fp" or "gptq"
    device: str
    dtype: str
    backend: str | None = None  # GPTQ kernel backend, None for full precision
    eraser: dict | None = None  # fair_gptq.erasure.artifact.describe_eraser of the attached eraser

    def describe(self) -> dict:
        described = {"path": self.path, "kind": self.kind, "device": self.device, "dtype": self.dtype,
                     "backend": self.backend}
        if self.eraser is not None:  # only then: descriptions of models without one stay as they were
            described["eraser"] = self.eraser
        return described


def resolve_device(device: str = "auto") -> str:
    """"auto" -> "cuda" when a GPU is visible, else "cpu"; refuses "cuda" without one."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA device is available")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"unknown device {device!r} (auto, cpu, cuda, cuda:N)")
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """"auto" -> float32 on CPU; bfloat16 on CUDA where supported, else float16."""
    if dtype == "auto":
        if device == "cpu":
            # explicit: GPTQModel.load would auto-pick bfloat16 on CPU, ~3.5x slower than fp32 without bf16 units
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r} (auto, {', '.join(DTYPES)})")
    return DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def is_gptq_checkpoint(path: str) -> bool:
    """True for a GPTQ checkpoint: a quantize config file, or a ``quantization_config`` in config.json."""
    local = Path(path)
    if local.is_dir():
        if any((local / name).is_file() for name in QUANT_CONFIG_FILES):
            return True
        config_file = local / "config.json"
        if config_file.is_file():
            return "quantization_config" in json.loads(config_file.read_text(encoding="utf-8"))
        return False
    from transformers import AutoConfig  # hub id: the config says

    return hasattr(AutoConfig.from_pretrained(path), "quantization_config")


def model_fingerprint(path: str) -> str:
    """Changes when a local checkpoint is rewritten (names, sizes, mtimes); the id for a hub model."""
    local = Path(path)
    if not local.is_dir():
        return f"hub:{path}"
    digest = hashlib.sha256()
    for file in sorted(p for p in local.iterdir() if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def cache_dequantized_weights(model: torch.nn.Module) -> int:
    """Make every `TorchQuantLinear` of `model` dequantize its weight once instead of on every forward.

    The kernel's forward calls `self.dequantize_weight(num_itr)` and multiplies by the result; the cached
    tensor is what that (possibly torch.compile'd) call returns, so every forward computes exactly what it
    would have. Costs one half-precision copy of the quantized weights; for inference only (the cache is never
    invalidated). Returns the number of modules changed."""
    from gptqmodel.nn_modules.qlinear.torch import TorchQuantLinear

    changed = 0
    for module in model.modules():
        if not isinstance(module, TorchQuantLinear):
            continue
        dequantize, cache = module.dequantize_weight, {}

        def cached(num_itr: int = 1, _dequantize=dequantize, _cache=cache):
            if num_itr not in _cache:
                with torch.no_grad():
                    _cache[num_itr] = _dequantize(num_itr=num_itr)
            return _cache[num_itr]

        module.dequantize_weight = cached
        changed += 1
    return changed


def load_model(
    path: str, name: str | None = None, device: str = "auto", dtype: str = "auto", gptq_backend: str = "auto",
    eraser: str | None = None,
) -> LoadedModel:
    """Load a full-precision or GPTQ checkpoint (detected with :func:`is_gptq_checkpoint`); with ``eraser`` (an
    eraser file of fair_gptq/erasure) its final hidden states are erased at every forward pass."""
    eraser_object = None
    if eraser is not None:  # a bad file fails here, before the weights load
        from fair_gptq.erasure.artifact import load_eraser

        eraser_object = load_eraser(eraser)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    tokenizer = load_tokenizer(path)
    if is_gptq_checkpoint(path):
        from gptqmodel import BACKEND, GPTQModel

        if gptq_backend == "auto":
            backend = BACKEND.TORCH if device == "cpu" else BACKEND.AUTO
        else:
            backend = BACKEND(gptq_backend)
        wrapper = GPTQModel.load(path, device=device, backend=backend, torch_dtype=torch_dtype)
        model, kind, backend_name = wrapper.model, "gptq", backend.value
        cache_dequantized_weights(model)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch_dtype).to(device)
        kind, backend_name = "fp", None
    model.eval()
    eraser_info = None
    if eraser_object is not None:
        from fair_gptq.erasure.artifact import describe_eraser
        from fair_gptq.erasure.hook import attach_eraser

        attach_eraser(model, eraser_object)
        eraser_info = describe_eraser(eraser_object, eraser)
    return LoadedModel(
        name=name or Path(path).name,
        path=path,
        model=model,
        tokenizer=tokenizer,
        kind=kind,
        device=device,
        dtype=dtype_name(torch_dtype),
        backend=backend_name,
        eraser=eraser_info,
    )
