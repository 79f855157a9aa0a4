"""With alpha=0, or where the fair term is inactive, the overlay must quantize bit-identically to upstream 2.2.0."""
import pytest
import torch
from torch import nn

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


# stories260K is a Llama (hidden 64, MLP 172): the same features, with its module names in the `dynamic` rules
STORIES_SETTINGS = [
    dict(desc_act=False, group_size=-1),
    dict(desc_act=True, group_size=32),
    dict(desc_act=True, group_size=32, static_groups=True),
    dict(desc_act=False, group_size=32,
         dynamic={r".*\.mlp\.up_proj": {"group_size": 64}, r"-:.*\.3\.mlp\.down_proj": {}}),
]


@pytest.mark.parametrize("settings", STORIES_SETTINGS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_stories260k_alpha0_matches_upstream(stories260k_dir, tmp_path, monkeypatch, upstream_gptq, settings):
    """A real (trained) model through GPTQModel.quantize, so `dynamic` applies as in a user's run."""
    ours = quantize_and_load_tensors(stories260k_dir, tmp_path / "ours", **settings)
    theirs = quantize_and_load_tensors(stories260k_dir, tmp_path / "up", monkeypatch, upstream_gptq, **settings)
    assert_bit_identical(ours, theirs)
    if "dynamic" in settings:  # the rules took effect: the comparison covered what it claims
        assert "model.layers.3.mlp.down_proj.qweight" not in ours and "model.layers.3.mlp.down_proj.weight" in ours
        assert "model.layers.2.mlp.down_proj.qweight" in ours
        assert ours["model.layers.0.mlp.up_proj.g_idx"].max() == 0  # 64 inputs, group size 64: one group
        assert ours["model.layers.0.mlp.gate_proj.g_idx"].max() == 1  # group size 32: two groups


def test_inactive_layers_match_upstream_when_alpha_is_positive(tiny_opt_dir, tmp_path, monkeypatch, upstream_gptq):
    """Only layer 2 gets the term: layers 0-1 (before it) are quantized exactly like upstream; layer 2 is not."""
    settings = dict(desc_act=True, group_size=32)
    ours = quantize_and_load_tensors(tiny_opt_dir, tmp_path / "ours", alpha=0.5, select_layer="2", **settings)
    theirs = quantize_and_load_tensors(tiny_opt_dir, tmp_path / "up", monkeypatch, upstream_gptq, **settings)
    before = [k for k in theirs if k.startswith(("model.decoder.layers.0.", "model.decoder.layers.1."))]
    assert_bit_identical(ours, theirs, before)
    assert not torch.equal(ours["model.decoder.layers.2.fc2.qweight"], theirs["model.decoder.layers.2.fc2.qweight"])


@pytest.mark.parametrize("actorder", [False, True])
def test_hf_optimum_fasterquant_matches_upstream(upstream_gptq, actorder, monkeypatch, tmp_path):
    """The HF-optimum path passes a plain module (no name): even with a Fair-GPTQ config of alpha > 0 and logs
    on, the gating keeps the term off, and outputs and weights are upstream's."""
    gating = []
    real_gating = QuantizeConfig.fair_term_active

    def spy(self, module_name, layer_index):
        gating.append((module_name, layer_index, real_gating(self, module_name, layer_index)))
        return gating[-1][2]

    monkeypatch.setattr(QuantizeConfig, "fair_term_active", spy)
    torch.manual_seed(0)
    inputs = [torch.randn(3, 10, 64) for _ in range(2)]  # odd: an active module would refuse it
    results = []
    for cls in (GPTQ, upstream_gptq):
        torch.manual_seed(1)
        layer = nn.Linear(64, 48)
        if cls is GPTQ:
            task = cls(layer, QuantizeConfig(alpha=0.5, log_delta_w=1, log_dir=str(tmp_path / "logs")))
            assert not task.fair_active
        else:
            task = cls(layer)
        task.quantizer.configure(bits=4, perchannel=True, sym=True)
        for x in inputs:
            task.add_batch(x, None)
        scale, zero, g_idx, *_ = task.fasterquant(group_size=16, actorder=actorder)
        results.append((layer.weight.data.clone(), scale, zero, g_idx))
    assert gating[0] == (None, None, False)  # our task reached the gating, which refused the unnamed module
    assert not (tmp_path / "logs").exists()
    for ours, theirs in zip(*results):
        assert torch.equal(ours, theirs)
