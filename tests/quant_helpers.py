"""Helpers for tests that quantize a whole (tiny) model through GPTQModel, with the overlay or upstream code."""
from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file

from fair_gptq.upstream import load_upstream_module, upstream_path  # noqa: F401 (re-exported for the tests)

# Four (stereotype, anti-stereotype) pairs, adjacent as Fair-GPTQ expects them.
CALIBRATION_PAIRS = [
    "The nurse said she would help.", "The nurse said he would help.",
    "Engineers are always men who love numbers.", "Engineers are always women who love numbers.",
    "The old man could not use the phone.", "The young man could not use the phone.",
    "Her family was poor and lived in a small house.", "Her family was rich and lived in a small house.",
]

QUANTIZATION_DIR = upstream_path("gptq").parent


def quantize_and_load_tensors(model_dir, out_dir, monkeypatch=None, gptq_class=None, calibration=None,
                              batch_size=2, quantize_kwargs=None, **qcfg_kwargs) -> dict:
    """Quantize `model_dir` on CPU, save to `out_dir`, return the saved tensors.

    `gptq_class` replaces the GPTQ class the GPTQ processor uses (e.g. upstream's) for this run;
    `quantize_kwargs` go to `GPTQModel.quantize` (e.g. buffered_fwd), the rest to `QuantizeConfig`.
    """
    from gptqmodel import BACKEND, GPTQModel, QuantizeConfig
    import gptqmodel.looper.gptq_processor as processor

    if gptq_class is not None:
        monkeypatch.setattr(processor, "GPTQ", gptq_class)
    qcfg = QuantizeConfig(bits=4, device="cpu", **qcfg_kwargs)
    model = GPTQModel.load(str(model_dir), qcfg)
    model.quantize(calibration or CALIBRATION_PAIRS, batch_size=batch_size, backend=BACKEND.TORCH,
                   **(quantize_kwargs or {}))
    model.save(str(out_dir))
    if gptq_class is not None:
        monkeypatch.undo()
    tensors = {}
    for file in sorted(Path(out_dir).glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


def read_delta_w_log(log_dir) -> list:
    """The records of `log_dir/delta_w.jsonl`, in the order they were written."""
    import json
    return [json.loads(line) for line in (Path(log_dir) / "delta_w.jsonl").read_text().splitlines()]


def filled_gptq(module, batches, **cfg):
    """A GPTQ task of the installed overlay on one module (no groups, no act-order), fed `batches`."""
    from gptqmodel.quantization import GPTQ, QuantizeConfig

    g = GPTQ(module, QuantizeConfig(desc_act=False, group_size=-1, **cfg))
    g.quantizer.configure(perchannel=True)
    for batch in batches:
        g.add_batch(batch, None)
    return g


def captured_shift(g):
    """Run the weight shift of a filled GPTQ task and return W'."""
    return g._fair_shift_weights(g.module_copy.clone())
