"""Which modules get the fair term, observed through real quantizations of the tiny OPT and tiny Mistral."""
import json

import pytest
import torch
from torch import nn

from gptqmodel.quantization import GPTQ

from quant_helpers import load_upstream_module, quantize_and_load_tensors

pytestmark = pytest.mark.slow


def expected_active(model_dir, ignore, layers):
    """Independent of the overlay's matcher: compare names part by part with a plain loop."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from accelerate import init_empty_weights
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    decoder = getattr(model.model, "decoder", model.model)
    prefix = "model.decoder.layers" if hasattr(model.model, "decoder") else "model.layers"
    active = set()
    for index, layer in enumerate(decoder.layers):
        for name, module in layer.named_modules():
            if not isinstance(module, nn.Linear) or (layers and index not in layers):
                continue
            if name.split(".")[-1] in ignore:
                continue
            active.add(f"{prefix}.{index}.{name}")
    return active


def logged_modules(log_dir):
    return {json.loads(line)["module"] for line in (log_dir / "delta_w.jsonl").read_text().splitlines()}


def test_opt_gating_reaches_flattened_fc_modules(tiny_opt_dir, tmp_path):
    log_dir = tmp_path / "logs"
    quantize_and_load_tensors(tiny_opt_dir, tmp_path / "q", alpha=0.5, ignore_bias="q_proj, k_proj",
                              select_layer="1,3", log_delta_w=1, log_dir=str(log_dir), group_size=32)
    expected = expected_active(tiny_opt_dir, {"q_proj", "k_proj"}, {1, 3})
    assert any(name.endswith("fc1") for name in expected) and len(expected) == 8
    assert logged_modules(log_dir) == expected


def test_mistral_default_ignore_list_all_layers(tiny_mistral_dir, tmp_path, monkeypatch):
    log_dir = tmp_path / "logs"
    ignore = "k_proj,q_proj,v_proj,up_proj,gate_proj"
    out = tmp_path / "q"
    quantize_and_load_tensors(tiny_mistral_dir, out, alpha=0.1, ignore_bias=ignore, log_delta_w=1,
                              log_dir=str(log_dir), group_size=32)
    assert logged_modules(log_dir) == expected_active(tiny_mistral_dir, set(ignore.split(",")), set())

    # The checkpoint carries the Fair-GPTQ settings ...
    saved = json.loads((out / "quantize_config.json").read_text())
    assert saved["alpha"] == 0.1 and saved["ignore_bias"] == ignore and saved["select_layer"] == ""
    from gptqmodel import BACKEND, GPTQModel
    from gptqmodel.quantization import QuantizeConfig
    restored = QuantizeConfig.from_pretrained(str(out))
    assert restored.fair_gptq_dict() == {k: saved[k] for k in restored.fair_gptq_dict()}

    # ... and still loads and runs with the stock config.py of GPTQModel 2.2.0.
    import gptqmodel.models.loader as loader
    stock = load_upstream_module("config").QuantizeConfig
    assert not hasattr(stock, "fair_term_active")
    monkeypatch.setattr(loader, "QuantizeConfig", stock)
    model = GPTQModel.load(str(out), device="cpu", backend=BACKEND.TORCH)
    assert type(model.quantize_config) is stock and model.quantize_config.bits == 4
    ids = torch.tensor([[1, 40, 41, 42]])
    with torch.no_grad():
        assert torch.isfinite(model.model(input_ids=ids).logits).all()


def test_batch_size_two_and_four_give_the_same_h01_in_a_model(tiny_opt_dir, tmp_path, monkeypatch):
    """Equal-length pairs need no padding, so the running averages must agree up to rounding.

    true_sequential=False feeds every module of layer 0 from one full-precision forward pass; otherwise out_proj
    and fc1/fc2 would see the outputs of already-quantized q/k/v, whose rounding can differ between batch sizes.
    For the flattened fc1/fc2, upstream counts a batch as one sample, so H and H01 both scale with the batch
    size there: their shift dW is what must agree."""
    torch.manual_seed(0)
    calibration = torch.randint(10, 300, (8, 12)).tolist()
    h01, shifts = {2: {}, 4: {}}, {2: {}, 4: {}}
    original = GPTQ._fair_shift_weights

    def capture(self, W):
        before = W.clone()
        h01[self.batch_size_under_test][self.full_name] = self.H01.clone()
        shifted = original(self, W)
        shifts[self.batch_size_under_test][self.full_name] = before - shifted
        return shifted

    monkeypatch.setattr(GPTQ, "_fair_shift_weights", capture)
    for batch_size in (2, 4):
        monkeypatch.setattr(GPTQ, "batch_size_under_test", batch_size, raising=False)
        quantize_and_load_tensors(tiny_opt_dir, tmp_path / f"bs{batch_size}", calibration=calibration,
                                  batch_size=batch_size, alpha=0.3, ignore_bias="", group_size=32,
                                  select_layer="0", true_sequential=False)
    assert set(shifts[2]) == set(shifts[4]) and len(shifts[2]) == 6
    for name, delta in shifts[2].items():
        assert delta.abs().max() > 0
        torch.testing.assert_close(shifts[4][name], delta, rtol=1e-3, atol=1e-5)
        if "self_attn" in name:  # 3-D inputs: H01 itself is the same
            torch.testing.assert_close(h01[4][name], h01[2][name], rtol=1e-4, atol=1e-6)
