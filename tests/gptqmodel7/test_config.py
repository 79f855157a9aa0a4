"""FairGPTQConfig: real fields, checked, exported; gating as in the 2.2.0 overlay."""
import pytest

from fair_gptq_v7 import FairGPTQConfig
from fair_gptq_v7.task import FairGPTQ


def cfg(**kw):
    return FairGPTQConfig(bits=4, group_size=32, **kw)


@pytest.mark.parametrize("field, value, message", [
    ("alpha", -0.1, "finite and >= 0"), ("alpha", float("nan"), "finite"), ("alpha", True, "a number"),
    ("sum_hessians", 2, "0 or 1"), ("ignore_bias", "q-proj", "not a module name"),
    ("select_layer", "3-1", "runs backwards"), ("log_dir", "", "non-empty"),
])
def test_bad_values_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        cfg(**{field: value})


def test_fields_are_normalised_and_exported_only_with_the_term():
    c = cfg(alpha=1, ignore_bias=["q_proj", " k_proj "], select_layer="3,0-1")
    assert (c.alpha, c.ignore_bias, c.select_layer) == (1.0, "q_proj,k_proj", "0,1,3")
    exported = c.to_dict()
    assert exported["alpha"] == 1.0 and exported["select_layer"] == "0,1,3" and exported["log_run_id"]
    assert "alpha" not in cfg(alpha=0).to_dict()
    assert "alpha" in cfg(dynamic={r".*\.fc1$": {"alpha": 0.2}}).to_dict()  # a dynamic rule enables the term


def test_gptaq_and_foem_are_refused_with_the_term():
    with pytest.raises(ValueError, match="`gptaq` cannot be combined"):
        cfg(alpha=0.1, gptaq={"alpha": 0.25})
    with pytest.raises(ValueError, match="`foem` cannot be combined"):
        cfg(dynamic={r".*fc1": {"alpha": 0.1}, r".*fc2": {"foem": {"alpha": 0.25}}})
    assert cfg(alpha=0.0, gptaq={"alpha": 0.25}).gptaq is not None  # plain GPTAQ stays available


@pytest.mark.parametrize("kwargs, message", [
    (dict(fair_target="direction"), r"`fair_target` 'direction' is supported by the GPTQModel 2\.2\.0 overlay only"),
    (dict(fair_target="random-direction"), r"`fair_target` 'random-direction' is supported by the GPTQModel 2\.2\.0"),
    (dict(fair_rank=2), r"`fair_rank` must be 1 in fair_gptq_v7"),
    (dict(fair_seed=3), r"`fair_seed` must be 0 in fair_gptq_v7"),
    (dict(dynamic={r".*fc1": {"fair_target": "direction"}}), r"overlay only.* in `dynamic` rule '\.\*fc1'\.$"),
])
def test_the_overlays_direction_targets_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        cfg(alpha=0.1, **kwargs)


def test_the_pairs_target_is_accepted_and_not_exported():
    c = cfg(alpha=0.1, fair_target="pairs", fair_rank=1, fair_seed=0)
    assert c.fair_target == "pairs" and not {"fair_target", "fair_rank", "fair_seed"} & set(c.to_dict())


def test_run_wide_settings_cannot_be_set_per_module():
    with pytest.raises(ValueError, match="`log_dir` applies to the whole run"):
        cfg(alpha=0.1, dynamic={r".*fc1": {"log_dir": "x"}})


def named(full_name, layer):
    from torch import nn
    from gptqmodel.looper.named_module import NamedModule

    return NamedModule(nn.Linear(8, 8), name=full_name.split(".", 3)[-1], full_name=full_name, layer_index=layer)


@pytest.mark.parametrize("full_name, layer, active", [
    ("model.layers.3.self_attn.q_proj", 3, False),  # ignored by name
    ("model.layers.3.mlp.fc11", 3, True),  # `fc1` does not match `fc11`
    ("model.layers.3.mlp.fc1", 3, False),
    ("model.layers.2.mlp.down_proj", 2, False),  # layer not selected
    ("model.layers.5.mlp.down_proj", 5, True),  # dynamic rule: alpha 0.2 there, no select_layer limit
    ("lm_head", 4, False),  # never lm_head
])
def test_gating_by_name_layer_and_dynamic_rule(full_name, layer, active):
    c = cfg(alpha=0.1, ignore_bias="q_proj,fc1", select_layer="3",
            dynamic={r"model\.layers\.5\..*": {"alpha": 0.2, "select_layer": ""}})
    task = FairGPTQ(named(full_name, layer), c)
    assert task.fair_active is active
    if full_name.startswith("model.layers.5"):
        assert task.fair_alpha == 0.2


@pytest.mark.parametrize("kwargs, message", [
    (dict(fair_accumulate="sums"), r"`fair_accumulate` must be one of 'direct', 'sum-difference', got 'sums'"),
    (dict(fair_accumulate="sum-difference", hessian={"chunk_size": 64}), r"cannot honour `hessian` chunk_size"),
    (dict(fair_accumulate="sum-difference", hessian={"staging_dtype": "bfloat16"}), r"staging_dtype other than"),
    (dict(dynamic={r".*fc1": {"fair_accumulate": "sum-difference"}}), r"`fair_accumulate` applies to the whole run"),
])
def test_accumulation_mode_is_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        cfg(alpha=0.1, **kwargs)


def test_accumulation_mode_is_exported_with_the_term():
    c = cfg(alpha=0.1, fair_accumulate="sum-difference")
    assert c.to_dict()["fair_accumulate"] == "sum-difference"
    assert cfg(alpha=0.1).to_dict()["fair_accumulate"] == "direct"
