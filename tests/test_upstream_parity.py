"""With alpha=0, or where the fair term is inactive, the overlay must quantize bit-identically to upstream 2.2.0."""
import pytest
import torch
from torch import nn

from gptqmodel.looper.named_module import NamedModule
from gptqmodel.quantization import GPTQ, QuantizeConfig

from quant_helpers import load_upstream_module, quantize_and_load_tensors

pytestmark = pytest.mark.slow

SETTINGS = [
    dict(desc_act=False, group_size=32),
    dict(desc_act=True, group_size=32),
    dict(desc_act=False, group_size=-1),
    dict(desc_act=True, group_size=-1),
    dict(desc_act=True, group_size=32, static_groups=True),
    dict(desc_act=False, group_size=32, dynamic={r".*\.fc1": {"group_size": 64}, r"-:.*\.3\.fc2": {}}),
]


def assert_bit_identical(ours: dict, theirs: dict, keys=None):
    keys = sorted(theirs) if keys is None else keys
    assert keys and set(keys) <= set(ours)
    for key in keys:
        assert torch.equal(ours[key], theirs[key]), f"{key} differs from upstream"


@pytest.fixture(scope="module")
def upstream_gptq():
    return load_upstream_module("gptq").GPTQ


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_tiny_opt_alpha0_matches_upstream(tiny_opt_dir, tmp_path, monkeypatch, upstream_gptq, settings):
    ours = quantize_and_load_tensors(tiny_opt_dir, tmp_path / "ours", **settings)
    theirs = quantize_and_load_tensors(tiny_opt_dir, tmp_path / "up", monkeypatch, upstream_gptq, **settings)
    assert_bit_identical(ours, theirs)


def stories_modules(model_dir):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    return [(f"model.layers.{i}.{name}", i, m) for i, layer in enumerate(model.model.layers)
            for name, m in layer.named_modules() if isinstance(m, nn.Linear)]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_stories260k_gptq_task_matches_upstream(stories260k_dir, upstream_gptq, settings):
    """stories260K's MLP width (172) fits no group size, so compare the GPTQ tasks module by module on its
    real weights and real activations instead of through packing. group_size=32 applies where it divides."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(stories260k_dir)
    model = AutoModelForCausalLM.from_pretrained(stories260k_dir, torch_dtype=torch.float32)
    batch = tokenizer(["Once upon a time there was a cat.", "Once upon a time there was a dog."],
                      return_tensors="pt", padding=False)
    captured = {}

    def capture(key):
        def hook(module, inp, out):
            captured[key] = inp[0].detach()  # returns None: the module's output stays untouched
        return hook

    hooks = [m.register_forward_hook(capture(name))
             for name, m in model.model.named_modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        model(**batch)
    for h in hooks:
        h.remove()
    compared = 0
    for name, module in model.model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        cfg = dict(settings)
        if module.in_features % 32 != 0 and cfg["group_size"] == 32:
            cfg["group_size"] = -1
            cfg.pop("static_groups", None)
        layer_index = int(name.split(".")[1])
        results = []
        for cls in (GPTQ, upstream_gptq):
            task = cls(NamedModule(module, name=name, full_name=f"model.{name}", layer_index=layer_index),
                       QuantizeConfig(alpha=0.0, **cfg))
            task.quantizer.configure(perchannel=True)
            task.add_batch(captured[name], None)
            results.append(task.quantize())
        for ours, theirs in zip(results[0][:4], results[1][:4]):  # Q, scale, zero, g_idx
            assert torch.equal(ours, theirs), f"{name} differs from upstream with {cfg}"
        compared += 1
    assert compared == 5 * 7


def test_inactive_layers_match_upstream_when_alpha_is_positive(tiny_opt_dir, tmp_path, monkeypatch, upstream_gptq):
    """Only layer 2 gets the term: layers 0-1 (before it) are quantized exactly like upstream; layer 2 is not."""
    settings = dict(desc_act=True, group_size=32)
    ours = quantize_and_load_tensors(tiny_opt_dir, tmp_path / "ours", alpha=0.5, select_layer="2", **settings)
    theirs = quantize_and_load_tensors(tiny_opt_dir, tmp_path / "up", monkeypatch, upstream_gptq, **settings)
    before = [k for k in theirs if k.startswith(("model.decoder.layers.0.", "model.decoder.layers.1."))]
    assert_bit_identical(ours, theirs, before)
    assert not torch.equal(ours["model.decoder.layers.2.fc2.qweight"], theirs["model.decoder.layers.2.fc2.qweight"])


@pytest.mark.parametrize("actorder", [False, True])
def test_hf_optimum_fasterquant_matches_upstream(upstream_gptq, actorder):
    """The HF-optimum path passes a plain module and no config: same outputs and same weights as upstream."""
    torch.manual_seed(0)
    inputs = [torch.randn(3, 10, 64) for _ in range(2)]
    results = []
    for cls in (GPTQ, upstream_gptq):
        torch.manual_seed(1)
        layer = nn.Linear(64, 48)
        task = cls(layer)
        task.quantizer.configure(bits=4, perchannel=True, sym=True)
        for x in inputs:
            task.add_batch(x, None)
        scale, zero, g_idx, *_ = task.fasterquant(group_size=16, actorder=actorder)
        results.append((layer.weight.data.clone(), scale, zero, g_idx))
    for ours, theirs in zip(*results):
        assert torch.equal(ours, theirs)
