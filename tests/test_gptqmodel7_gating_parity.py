"""fair_gptq_v7's gating parsers give the same answers as the 2.2.0 overlay's config.py (installed in .venv).

The overlay is copied into GPTQModel and must stay self-contained, so fair_gptq_v7 (which cannot import it:
it runs on 7.7.0) has its own copy of these pure functions; this test keeps the two in step.
"""
import pytest

from fair_gptq_v7 import gating  # pure: no GPTQModel import
from gptqmodel.quantization import config as overlay

CASES = {
    "parse_ignore_bias": ["", None, "q_proj", " k_proj , q_proj,", ["fc1", "self_attn.q_proj"], "q-proj",
                          ["ok", 3], 5, "a..b"],
    "parse_select_layer": ["", None, "0,1,30-31", "3-1", "-1", [2, 0, 2], 4, True, "1.5", [1.5], "x"],
}
MATCHES = [("q_proj", "model.layers.3.self_attn.q_proj"), ("self_attn.q_proj", "model.layers.3.self_attn.q_proj"),
           ("fc1", "model.decoder.layers.0.fc11"), ("proj", "model.layers.0.mlp.up_proj"),
           ("layers.3", "model.layers.3.mlp.fc1"), ("mlp.fc1", "model.layers.3.self_attn.fc1")]


def outcome(function, value):
    try:
        return ("value", function(value))
    except ValueError:
        return ("ValueError", None)


@pytest.mark.parametrize("name", sorted(CASES))
def test_parsers_agree(name):
    for value in CASES[name]:
        assert outcome(getattr(gating, name), value) == outcome(getattr(overlay, name), value), value


def test_matcher_agrees():
    for entry, module in MATCHES:
        assert gating.ignore_bias_matches(entry, module) == overlay.ignore_bias_matches(entry, module), (entry, module)
    assert [gating.ignore_bias_matches(e, m) for e, m in MATCHES] == [True, True, False, False, True, False]
