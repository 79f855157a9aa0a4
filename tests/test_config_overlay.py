"""The overlay config.py keeps every upstream name and adds validated, saved Fair-GPTQ fields."""
import ast
import dataclasses
import json
import math

import pytest

import gptqmodel.quantization.config as overlay
from gptqmodel.quantization.config import QuantizeConfig

from quant_helpers import QUANTIZATION_DIR, load_upstream_module


@pytest.fixture(scope="module")
def upstream():
    return load_upstream_module("config")


def names_defined_by(path):
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def test_every_upstream_name_is_importable_with_the_same_meaning(upstream):
    names = names_defined_by(QUANTIZATION_DIR / "config.py.upstream")
    assert {"QuantizeConfig", "FORMAT", "QUANT_METHOD", "dynamic_get", "BaseQuantizeConfig"} <= names
    for name in names:
        ours, theirs = getattr(overlay, name), getattr(upstream, name)
        if isinstance(theirs, (str, int, float, dict, list, tuple, set)):
            assert ours == theirs, name
        elif isinstance(theirs, type) and dataclasses.is_dataclass(theirs):
            their_fields = {f.name: f for f in dataclasses.fields(theirs)}
            our_fields = {f.name: f for f in dataclasses.fields(ours)}
            for field_name, field in their_fields.items():
                assert our_fields[field_name].default == field.default, f"{name}.{field_name}"
        elif isinstance(theirs, type):
            assert {k for k in vars(theirs) if not k.startswith("_")} <= set(vars(ours)), name
        else:
            assert type(ours) is type(theirs), name  # functions stay functions, the logger stays a logger


def test_alpha_zero_exports_exactly_the_upstream_dict(upstream):
    kwargs = dict(bits=4, group_size=32, desc_act=False, dynamic={"-:.*fc2": {}})
    assert QuantizeConfig(**kwargs).to_dict() == upstream.QuantizeConfig(**kwargs).to_dict()


def test_fair_fields_round_trip_and_load_with_stock_config(tmp_path, upstream):
    cfg = QuantizeConfig(bits=4, group_size=32, alpha=0.25, ignore_bias=["q_proj", " fc1"], select_layer="0-2,7",
                         sum_hessians=0, log_delta_w=1, log_hessian_sensitivity=True, log_dir="runs/logs")
    cfg.save_pretrained(str(tmp_path))
    saved = json.loads((tmp_path / "quantize_config.json").read_text())
    assert saved["alpha"] == 0.25 and saved["ignore_bias"] == "q_proj,fc1" and saved["select_layer"] == "0,1,2,7"
    restored = QuantizeConfig.from_pretrained(str(tmp_path))
    assert restored.fair_gptq_dict() == cfg.fair_gptq_dict()
    assert restored.selected_layers() == (0, 1, 2, 7) and restored.ignore_bias_names() == ("q_proj", "fc1")
    assert QuantizeConfig.from_quant_config(saved).fair_gptq_dict() == cfg.fair_gptq_dict()
    stock = upstream.QuantizeConfig.from_pretrained(str(tmp_path))
    assert (stock.bits, stock.group_size, stock.desc_act) == (4, 32, cfg.desc_act)


@pytest.mark.parametrize("field, value, message", [
    ("alpha", -0.1, r"`alpha` must be finite and >= 0, got -0.1"),
    ("alpha", math.nan, r"`alpha` must be finite and >= 0, got nan"),
    ("alpha", math.inf, r"`alpha` must be finite"),
    ("alpha", "0.1", r"`alpha` must be a number, got '0.1'"),
    ("select_layer", "1,two", r"`select_layer` holds 'two'"),
    ("select_layer", "1.5", r"`select_layer` holds '1.5'"),
    ("select_layer", [-1], r"negative layer index -1"),
    ("select_layer", "5-2", r"range '5-2' runs backwards"),
    ("sum_hessians", 2, r"`sum_hessians` must be 0 or 1, got 2"),
    ("log_delta_w", "yes", r"`log_delta_w` must be 0 or 1, got 'yes'"),
    ("log_hessian_sensitivity", -1, r"`log_hessian_sensitivity` must be 0 or 1, got -1"),
    ("ignore_bias", "q_proj,fc-1", r"`ignore_bias` entry 'fc-1'"),
    ("ignore_bias", 3, r"`ignore_bias` must be a comma-separated string"),
    ("log_dir", "", r"`log_dir` must be a non-empty path"),
])
def test_bad_values_are_rejected_naming_field_and_value(field, value, message):
    with pytest.raises(ValueError, match=message):
        QuantizeConfig(**{field: value})


@pytest.mark.parametrize("entry, name, expected", [
    ("fc1", "model.decoder.layers.0.fc1", True),
    ("fc1", "model.decoder.layers.0.fc11", False),
    ("proj", "model.layers.0.self_attn.q_proj", False),
    ("q_proj", "model.layers.0.self_attn.q_proj", True),
    ("self_attn.q_proj", "model.layers.0.self_attn.q_proj", True),
    ("mlp.q_proj", "model.layers.0.self_attn.q_proj", False),
    ("layers.0", "model.layers.0.self_attn.q_proj", True),
])
def test_ignore_bias_matches_whole_dotted_parts(entry, name, expected):
    assert overlay.ignore_bias_matches(entry, name) is expected


def test_gating_rule():
    cfg = QuantizeConfig(alpha=0.1, ignore_bias="fc1", select_layer="0-1")
    assert cfg.fair_term_active("model.decoder.layers.1.fc2", 1)
    assert not cfg.fair_term_active("model.decoder.layers.1.fc1", 1)
    assert cfg.fair_term_active("model.decoder.layers.1.fc11", 1)
    assert not cfg.fair_term_active("model.decoder.layers.2.fc2", 2)
    assert not cfg.fair_term_active(None, 1)
    assert not QuantizeConfig(alpha=0.1).fair_term_active("lm_head", 4)  # GPTQModel numbers lm_head past the layers
    assert not QuantizeConfig(alpha=0.0).fair_term_active("model.decoder.layers.1.fc2", 1)


def test_numpy_numbers_are_accepted():
    import numpy as np
    cfg = QuantizeConfig(alpha=np.float32(0.25), select_layer=[np.int64(3), 1])
    assert cfg.alpha == 0.25 and type(cfg.alpha) is float and cfg.selected_layers() == (1, 3)
    with pytest.raises(ValueError, match="not a layer index"):
        QuantizeConfig(select_layer=[1.0])


# ----------------------------------------------------------------------------- per-module overrides in `dynamic`

@pytest.mark.parametrize("field, value, message", [
    ("alpha", "nonsense", r"`alpha` must be a number, got 'nonsense' in `dynamic` rule '\.\*fc2'\.$"),
    ("alpha", -1, r"`alpha` must be finite and >= 0, got -1 in `dynamic` rule '\.\*fc2'\.$"),
    ("alpha", math.inf, r"`alpha` must be finite and >= 0, got inf in `dynamic` rule"),
    ("ignore_bias", "q_proj,fc-1", r"`ignore_bias` entry 'fc-1' .* in `dynamic` rule '\.\*fc2'\.$"),
    ("select_layer", "5-2", r"range '5-2' runs backwards in `dynamic` rule '\.\*fc2'\.$"),
    ("sum_hessians", 2, r"`sum_hessians` must be 0 or 1, got 2 in `dynamic` rule '\.\*fc2'\.$"),
])
def test_bad_dynamic_values_are_refused_naming_the_rule(field, value, message):
    with pytest.raises(ValueError, match=message):
        QuantizeConfig(alpha=0.1, dynamic={r".*fc2": {field: value}})


@pytest.mark.parametrize("field", ["log_delta_w", "log_hessian_sensitivity", "log_dir", "log_run_id"])
def test_run_wide_settings_cannot_be_set_per_module(field):
    with pytest.raises(ValueError, match=rf"`{field}` applies to the whole run .* `dynamic` rule '\.\*fc2'"):
        QuantizeConfig(alpha=0.1, dynamic={r".*fc2": {field: 1}})


def test_dynamic_values_are_saved_normalised_and_other_rules_untouched():
    import numpy as np
    bits_rule = {"bits": 8}
    cfg = QuantizeConfig(alpha=0.1, dynamic={r".*fc2": {"alpha": np.float32(0.5), "select_layer": "2-3,0",
                                                        "ignore_bias": [" q_proj", "k_proj"]},
                                             r".*fc1": bits_rule})
    assert cfg.dynamic[r".*fc2"] == {"alpha": 0.5, "select_layer": "0,2,3", "ignore_bias": "q_proj,k_proj"}
    assert type(cfg.dynamic[r".*fc2"]["alpha"]) is float
    assert cfg.dynamic[r".*fc1"] is bits_rule
    json.dumps(cfg.to_dict())  # numpy numbers would not serialise


def test_dynamic_overrides_follow_gptqmodels_first_matching_rule():
    cfg = QuantizeConfig(alpha=0.1, ignore_bias="q_proj", select_layer="0-2", dynamic={
        r"-:.*\.2\.fc1": {},
        r".*\.1\.fc2": {"alpha": 0.0},
        r".*\.fc2": {"alpha": 0.3, "sum_hessians": 0},
        r".*\.0\.self_attn\.q_proj": {"ignore_bias": ""},
        r".*\.fc1": {"select_layer": "5"},
    })
    name = "model.decoder.layers.{}.{}".format
    assert cfg.fair_settings_for(name(0, "fc2")) == dict(alpha=0.3, ignore_bias="q_proj", select_layer="0,1,2",
                                                         sum_hessians=0, fair_target="pairs", fair_rank=1)
    assert cfg.fair_settings_for(name(1, "fc2"))["alpha"] == 0.0  # the first matching rule wins
    assert cfg.fair_settings_for(name(0, "self_attn.out_proj"))["alpha"] == 0.1  # no rule: the fields
    assert cfg.fair_settings_for(name(2, "fc1"))["alpha"] == 0.0  # excluded by `-:`: not quantized at all
    assert cfg.fair_settings_for(None) == dict(alpha=0.1, ignore_bias="q_proj", select_layer="0,1,2", sum_hessians=1,
                                               fair_target="pairs", fair_rank=1)

    assert cfg.fair_term_active(name(0, "fc2"), 0) and not cfg.fair_term_active(name(1, "fc2"), 1)
    assert not cfg.fair_term_active(name(3, "fc2"), 3)  # the rule sets alpha only: select_layer 0-2 still holds
    assert cfg.fair_term_active(name(0, "self_attn.q_proj"), 0)  # its rule empties ignore_bias
    assert not cfg.fair_term_active(name(1, "self_attn.q_proj"), 1)
    assert not cfg.fair_term_active(name(1, "fc1"), 1) and cfg.fair_term_active(name(5, "fc1"), 5)
    assert not cfg.fair_term_active(name(2, "fc1"), 2)


def test_a_dynamic_alpha_alone_enables_the_term_and_its_export():
    cfg = QuantizeConfig(alpha=0.0, dynamic={r".*\.fc2": {"alpha": 0.2}})
    assert cfg.fair_enabled()
    assert cfg.fair_term_active("model.decoder.layers.1.fc2", 1)
    assert not cfg.fair_term_active("model.decoder.layers.1.fc1", 1)
    assert cfg.to_dict()["log_run_id"] == cfg.log_run_id and cfg.to_dict()["alpha"] == 0.0
    assert not QuantizeConfig(alpha=0.0, dynamic={r"-:.*\.fc2": {"alpha": 0.2}}).fair_enabled()
    assert not QuantizeConfig(alpha=0.0, dynamic={r".*\.fc2": {"alpha": 0.0, "bits": 8}}).fair_enabled()


# ----------------------------------------------------------------------------- run identifier

def test_run_id_is_generated_once_per_config_and_kept_by_copies():
    import copy
    first, second = QuantizeConfig(alpha=0.1), QuantizeConfig(alpha=0.1)
    assert first.log_run_id and second.log_run_id and first.log_run_id != second.log_run_id
    assert copy.deepcopy(first).log_run_id == first.log_run_id  # GPTQModel deep-copies the config per module
    assert QuantizeConfig(alpha=0.1, log_run_id="smollm2-fair").log_run_id == "smollm2-fair"
    with pytest.raises(ValueError, match=r"`log_run_id` must be a string, got 7"):
        QuantizeConfig(log_run_id=7)


def test_run_id_is_saved_with_the_term_only(tmp_path):
    QuantizeConfig(bits=4, alpha=0.0, log_run_id="plain").save_pretrained(str(tmp_path))
    assert "log_run_id" not in json.loads((tmp_path / "quantize_config.json").read_text())
    QuantizeConfig(bits=4, alpha=0.1, log_run_id="fair").save_pretrained(str(tmp_path))
    assert json.loads((tmp_path / "quantize_config.json").read_text())["log_run_id"] == "fair"
    assert QuantizeConfig.from_pretrained(str(tmp_path)).log_run_id == "fair"


# ----------------------------------------------------------------------------- concatenated calibration

def test_concatenated_calibration_is_refused_when_the_term_is_on():
    message = r"calibration_dataset_concat_size=256 joins calibration sentences.*no longer be a .*pair"
    with pytest.raises(ValueError, match=message):
        QuantizeConfig(alpha=0.1).check_calibration_concat_size(256)
    with pytest.raises(ValueError, match=message):
        QuantizeConfig(alpha=0.0, dynamic={r".*fc2": {"alpha": 0.1}}).check_calibration_concat_size(256)
    QuantizeConfig(alpha=0.1).check_calibration_concat_size(None)
    QuantizeConfig(alpha=0.0).check_calibration_concat_size(256)  # plain GPTQ: upstream's choice
