"""Layer strategies, model-family defaults and module-name validation (issue 4)."""

from __future__ import annotations

import importlib
import time

import pytest

from fair_gptq import layers

# The paper's rule worked by hand: k = ceil(0.1 L), raised to the next even number.
PAPER_VALUES = {
    12: dict(k=2, lower=[0, 1], upper=[10, 11], lower_upper=[0, 11]),
    24: dict(k=4, lower=[0, 1, 2, 3], upper=[20, 21, 22, 23], lower_upper=[0, 1, 22, 23]),
    32: dict(k=4, lower=[0, 1, 2, 3], upper=[28, 29, 30, 31], lower_upper=[0, 1, 30, 31]),
    40: dict(k=4, lower=[0, 1, 2, 3], upper=[36, 37, 38, 39], lower_upper=[0, 1, 38, 39]),
}


# --------------------------------------------------------------------------- strategies


@pytest.mark.parametrize("num_layers", sorted(PAPER_VALUES))
def test_strategies_match_the_paper_values(num_layers):
    expected = PAPER_VALUES[num_layers]
    assert layers.fair_layer_count(num_layers) == expected["k"]
    assert layers.fair_layers("lower", num_layers) == expected["lower"]
    assert layers.fair_layers("upper", num_layers) == expected["upper"]
    assert layers.fair_layers("lower-upper", num_layers) == expected["lower_upper"]
    assert layers.fair_layers("all", num_layers) == list(range(num_layers))


@pytest.mark.parametrize("num_layers, k", [(1, 1), (2, 2), (10, 2), (11, 2), (21, 4), (30, 4), (50, 6), (60, 6), (80, 8)])
def test_layer_count_rule_at_the_edges(num_layers, k):
    assert layers.fair_layer_count(num_layers) == k


@pytest.mark.parametrize("num_layers", range(2, 130))
def test_strategy_invariants(num_layers):
    k = layers.fair_layer_count(num_layers)
    lower = layers.fair_layers("lower", num_layers)
    upper = layers.fair_layers("upper", num_layers)
    both = layers.fair_layers("lower-upper", num_layers)
    assert k % 2 == 0 and k >= num_layers / 10
    assert len(lower) == len(upper) == len(both) == k
    assert lower == list(range(k)) and upper == list(range(num_layers - k, num_layers))
    assert both == lower[: k // 2] + upper[k // 2 :]
    if 2 * k <= num_layers:
        # The published snippet passed the lower layers for "upper": ours must differ.
        assert not set(lower) & set(upper)


def test_one_layer_model_gets_its_only_layer():
    for strategy in layers.STRATEGIES:
        assert layers.fair_layers(strategy, 1) == [0]


def test_unknown_strategy_and_bad_layer_counts():
    with pytest.raises(ValueError, match="all, lower, upper, lower-upper"):
        layers.fair_layers("middle", 12)
    for bad in (0, -4, 2.0, True):
        with pytest.raises(ValueError, match="positive integer"):
            layers.fair_layers("lower", bad)


def test_select_layer_validation():
    assert layers.validate_select_layer([3, 0, 3], 4) == [0, 3]
    with pytest.raises(ValueError, match=r"layer index 4 is out of range.*4 decoder layers.*0\.\.3"):
        layers.validate_select_layer([0, 4], 4)
    with pytest.raises(ValueError, match="layer index -1 is out of range"):
        layers.validate_select_layer([-1], 4)
    with pytest.raises(ValueError, match="not an integer"):
        layers.validate_select_layer(["2"], 4)


def test_explicit_select_layer_overrides_the_strategy():
    assert layers.resolve_fair_layers("lower", 12, [5, 7]) == [5, 7]
    assert layers.resolve_fair_layers("upper", 12, None) == [10, 11]
    assert layers.resolve_fair_layers("upper", 12, []) == [10, 11]
    with pytest.raises(ValueError, match="out of range"):
        layers.resolve_fair_layers("lower", 12, [12])


# --------------------------------------------------------------------------- family defaults


def test_family_defaults():
    assert layers.default_ignore_bias("opt") == "k_proj,q_proj,v_proj,fc1"
    for family in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2"):
        assert layers.parse_ignore_bias(layers.default_ignore_bias(family)) == [
            "k_proj", "q_proj", "v_proj", "up_proj", "gate_proj",
        ]


def test_unknown_family_asks_for_ignore_bias():
    with pytest.raises(ValueError, match=r"model_type 'gpt2'.*--ignore-bias"):
        layers.default_ignore_bias("gpt2")


def test_parse_ignore_bias():
    assert layers.parse_ignore_bias(" q_proj, ,fc1 ") == ["q_proj", "fc1"]
    assert layers.parse_ignore_bias("") == []
    assert layers.parse_ignore_bias(None) == []
    assert layers.parse_ignore_bias(["a", " b "]) == ["a", "b"]


# --------------------------------------------------------------------------- module names


def test_decoder_linear_names_of_tiny_opt(tiny_opt_dir):
    assert set(layers.decoder_linear_names(tiny_opt_dir)) == {
        "self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj", "self_attn.out_proj", "fc1", "fc2",
    }


def test_decoder_linear_names_of_tiny_mistral(tiny_mistral_dir):
    assert set(layers.decoder_linear_names(tiny_mistral_dir)) == {
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
    }


def test_decoder_linear_names_loads_no_weights():
    """A 70B-sized Llama config: only the meta device can build it in a blink."""
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                         num_attention_heads=64, num_key_value_heads=8, vocab_size=128256)
    started = time.monotonic()
    names = layers.decoder_linear_names(config)
    assert "mlp.down_proj" in names and len(names) == 7
    assert time.monotonic() - started < 60


@pytest.fixture
def overlay_matcher():
    """The installed overlay's matcher (tests/conftest.py stops the session when the overlay is not installed)."""
    from gptqmodel.quantization.config import ignore_bias_matches

    return ignore_bias_matches


# Worked by hand from the rule: the entry's dotted parts must be a contiguous run of the module name's parts.
@pytest.mark.parametrize(
    "entry, module, expected",
    [
        ("q_proj", "self_attn.q_proj", True),
        ("self_attn.q_proj", "self_attn.q_proj", True),
        ("q_proj", "model.layers.3.self_attn.q_proj", True),
        ("layers.3", "model.layers.3.self_attn.q_proj", True),
        ("layers.3.self_attn", "model.layers.3.self_attn.q_proj", True),
        ("model", "model.layers.3.self_attn.q_proj", True),
        ("fc1", "fc1", True),
        ("fc1", "model.decoder.layers.0.fc1", True),
        ("fc1", "fc11", False),
        ("fc1", "model.decoder.layers.0.fc11", False),
        ("fc11", "model.decoder.layers.0.fc1", False),
        ("proj", "self_attn.q_proj", False),
        ("attn.q_proj", "self_attn.q_proj", False),
        ("self_attn.k_proj", "self_attn.q_proj", False),
        ("layers.3", "model.layers.13.self_attn.q_proj", False),
        ("layers.3.q_proj", "model.layers.3.self_attn.q_proj", False),  # parts must be contiguous
        ("q_proj.self_attn", "model.layers.3.self_attn.q_proj", False),  # and in order
        ("model.layers.3.self_attn.q_proj.x", "model.layers.3.self_attn.q_proj", False),  # longer than the name
        ("up_proj", "mlp.gate_up_proj", False),
    ],
)
def test_matcher_matches_whole_dotted_parts(overlay_matcher, entry, module, expected):
    assert overlay_matcher(entry, module) is expected


def test_family_defaults_are_valid_for_the_tiny_models(overlay_matcher, tiny_opt_dir, tiny_mistral_dir):
    assert layers.validate_ignore_bias(layers.default_ignore_bias("opt"), tiny_opt_dir) == ["k_proj", "q_proj", "v_proj", "fc1"]
    assert len(layers.validate_ignore_bias(layers.default_ignore_bias("mistral"), tiny_mistral_dir)) == 5
    assert layers.validate_ignore_bias("self_attn.q_proj", tiny_mistral_dir) == ["self_attn.q_proj"]
    assert layers.validate_ignore_bias("", tiny_opt_dir) == []


@pytest.mark.parametrize("typo", ["k_prj", "fc11", "proj", "up_proj"])
def test_ignore_bias_typo_lists_the_valid_names(overlay_matcher, tiny_opt_dir, typo):
    with pytest.raises(ValueError, match=rf"'{typo}'.*valid names: fc1, fc2, k_proj, out_proj, q_proj, v_proj"):
        layers.validate_ignore_bias(f"q_proj,{typo}", tiny_opt_dir)


def test_missing_overlay_is_reported(monkeypatch, tiny_opt_dir):
    config_module = importlib.import_module("gptqmodel.quantization.config")
    monkeypatch.delattr(config_module, "ignore_bias_matches", raising=False)
    with pytest.raises(RuntimeError, match="overlay not installed: run bash install_overlay.sh"):
        layers.validate_ignore_bias("q_proj", tiny_opt_dir)


def test_gpt2_conv1d_modules_are_found():
    """GPT-2 keeps its projections in transformers' Conv1D, which GPTQ quantizes like nn.Linear."""
    from transformers import GPT2Config

    names = layers.decoder_linear_names(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64))
    assert {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"} <= set(names)
