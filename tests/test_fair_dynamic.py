"""Per-module Fair-GPTQ settings through GPTQModel's `dynamic`, observed in real quantizations of the tiny OPT."""
import pytest
import torch
from safetensors.torch import load_file

from quant_helpers import quantize_and_load_tensors, read_delta_w_log

pytestmark = pytest.mark.slow

LAYERS = range(4)  # the tiny OPT of tests/conftest.py
MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2")


def name(layer, module):
    return f"model.decoder.layers.{layer}.{module}"


def test_dynamic_alpha_zero_and_exclusion(tiny_opt_dir, tmp_path):
    """fc2 gets alpha 0 through `dynamic`: it leaves the ΔW log while out_proj stays; layer 1's fc2, excluded by a
    `-:` rule, is not quantized at all and keeps its original weights."""
    dynamic = {r"-:.*\.1\.fc2$": {}, r".*\.fc2$": {"alpha": 0.0}}
    tensors = quantize_and_load_tensors(tiny_opt_dir, tmp_path / "q", alpha=0.1, ignore_bias="", dynamic=dynamic,
                                        log_delta_w=1, log_dir=str(tmp_path / "logs"), group_size=32)
    logged = {record["module"] for record in read_delta_w_log(tmp_path / "logs")}
    assert logged == {name(layer, module) for layer in LAYERS for module in MODULES if module != "fc2"}

    original = load_file(str(next(tiny_opt_dir.glob("*.safetensors"))))
    excluded = name(1, "fc2")
    assert f"{excluded}.qweight" not in tensors
    saved = tensors[f"{excluded}.weight"]  # in the dtype GPTQModel loaded the model in (bfloat16 on CPU)
    assert torch.equal(saved, original[f"{excluded}.weight"].to(saved.dtype))
    assert all(f"{name(layer, 'fc2')}.qweight" in tensors for layer in (0, 2, 3))


def test_per_module_alpha(tiny_opt_dir, tmp_path):
    """Layer 0's fc2 with alpha 0.3 inside a global 0.1 run moves further (relative ΔW) than with the global 0.1,
    exactly as far as in a global 0.3 run. true_sequential=False feeds all of layer 0 from one full-precision
    forward pass, so layer 0's fc2 sees the same inputs in all three runs."""
    records = {}
    for run, settings in {"global 0.1": dict(alpha=0.1),
                          "fc2 0.3": dict(alpha=0.1, dynamic={r".*\.0\.fc2$": {"alpha": 0.3}}),
                          "global 0.3": dict(alpha=0.3)}.items():
        log_dir = tmp_path / run.replace(" ", "-")
        quantize_and_load_tensors(tiny_opt_dir, tmp_path / f"q-{run.replace(' ', '-')}", ignore_bias="",
                                  select_layer="0", true_sequential=False, group_size=32, log_delta_w=1,
                                  log_dir=str(log_dir), **settings)
        records[run] = {record["module"]: record for record in read_delta_w_log(log_dir)}
    fc2 = name(0, "fc2")
    assert records["fc2 0.3"][fc2]["alpha"] == 0.3 and records["fc2 0.3"][name(0, "fc1")]["alpha"] == 0.1
    assert records["fc2 0.3"][fc2]["relative_delta_w"] > 1.5 * records["global 0.1"][fc2]["relative_delta_w"]
    assert records["fc2 0.3"][fc2]["relative_delta_w"] == pytest.approx(
        records["global 0.3"][fc2]["relative_delta_w"], rel=1e-5)
    for module in MODULES[:-1]:  # every other module of layer 0 is shifted as in the global 0.1 run
        assert records["fc2 0.3"][name(0, module)]["delta_w_fro"] == pytest.approx(
            records["global 0.1"][name(0, module)]["delta_w_fro"], rel=1e-5)


def test_bad_dynamic_value_is_refused_before_loading(tiny_opt_dir, tmp_path):
    with pytest.raises(ValueError, match=r"`alpha` must be a number, got 'nonsense' in `dynamic` rule"):
        quantize_and_load_tensors(tiny_opt_dir, tmp_path / "q", alpha=0.1, dynamic={r".*fc2": {"alpha": "nonsense"}})
