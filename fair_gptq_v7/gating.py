"""Which modules get the paired term, with which settings: the same rules as the 2.2.0 overlay's config.py.

Pure functions (no GPTQModel import). The 2.2.0 overlay must stay self-contained (it is copied into
GPTQModel), so its parsers cannot be imported from here; tests/test_gptqmodel7_gating_parity.py checks that
both give the same answers on the same table of inputs.
"""
from __future__ import annotations

import math
import numbers
import operator
import re
from typing import Any, Callable, Dict, Optional, Tuple

# the fields of FairGPTQConfig, as in the 2.2.0 overlay's QuantizeConfig
FAIR_FIELDS = ("alpha", "ignore_bias", "select_layer", "sum_hessians", "fair_accumulate", "log_delta_w",
               "log_hessian_sensitivity", "log_dir", "log_run_id")
# the ones a `dynamic` rule may override for the modules it matches; the logs belong to the whole run
FAIR_DYNAMIC_FIELDS = ("alpha", "ignore_bias", "select_layer", "sum_hessians")

_MODULE_NAME_PART = re.compile(r"^[A-Za-z0-9_]+$")


def parse_ignore_bias(value) -> Tuple[str, ...]:
    """`"k_proj, q_proj"` or `["k_proj", "q_proj"]` -> `("k_proj", "q_proj")`; empty entries are dropped."""
    if value is None:
        return ()
    if isinstance(value, str):
        entries = value.split(",")
    elif isinstance(value, (list, tuple)):
        entries = list(value)
    else:
        raise ValueError(f"FairGPTQConfig: `ignore_bias` must be a comma-separated string or a list of module "
                         f"names, got {value!r}.")
    names = []
    for entry in entries:
        if not isinstance(entry, str):
            raise ValueError(f"FairGPTQConfig: `ignore_bias` entries must be strings, got {entry!r} in {value!r}.")
        entry = entry.strip()
        if not entry:
            continue
        if not all(_MODULE_NAME_PART.match(part) for part in entry.split(".")):
            raise ValueError(f"FairGPTQConfig: `ignore_bias` entry {entry!r} is not a module name "
                             f"(dotted parts of letters, digits and underscores), in {value!r}.")
        names.append(entry)
    return tuple(names)


def _layer_range(token, value) -> range:
    if isinstance(token, bool):
        raise ValueError(f"FairGPTQConfig: `select_layer` holds {token!r}, not a layer index.")
    if not isinstance(token, str):
        try:
            first = last = operator.index(token)  # ints, numpy integers; not floats
        except TypeError:
            raise ValueError(f"FairGPTQConfig: `select_layer` holds {token!r}, which is not a layer index "
                             f"(value {value!r}).") from None
    elif re.fullmatch(r"\d+", token):
        first = last = int(token)
    elif re.fullmatch(r"\d+\s*-\s*\d+", token):
        first, last = (int(x) for x in token.split("-"))
        if first > last:
            raise ValueError(f"FairGPTQConfig: `select_layer` range {token!r} runs backwards.")
    else:
        raise ValueError(f"FairGPTQConfig: `select_layer` holds {token!r}, which is not a non-negative integer "
                         f"layer index or a range like `0-3` (value {value!r}).")
    if first < 0:
        raise ValueError(f"FairGPTQConfig: `select_layer` holds the negative layer index {first}.")
    return range(first, last + 1)


def parse_select_layer(value) -> Tuple[int, ...]:
    """`"0,1,5-7"` or `[0, 1, 5, 6, 7]` -> `(0, 1, 5, 6, 7)` (sorted, unique). Empty means every layer."""
    if value is None:
        return ()
    if isinstance(value, bool):
        raise ValueError(f"FairGPTQConfig: `select_layer` must hold layer indices, got {value!r}.")
    if isinstance(value, int):
        value = [value]
    if isinstance(value, str):
        tokens = [t.strip() for t in value.split(",") if t.strip()]
    elif isinstance(value, (list, tuple)):
        tokens = list(value)
    else:
        raise ValueError(f"FairGPTQConfig: `select_layer` must be a comma-separated string or a list of layer "
                         f"indices, got {value!r}.")
    layers = set()
    for token in tokens:
        layers.update(_layer_range(token, value))
    return tuple(sorted(layers))


def ignore_bias_matches(entry: str, module_name: str) -> bool:
    """True when `entry`'s dotted parts are a contiguous run of `module_name`'s (`fc1` never matches `fc11`)."""
    entry_parts, name_parts = entry.split("."), module_name.split(".")
    width = len(entry_parts)
    return any(name_parts[i:i + width] == entry_parts for i in range(len(name_parts) - width + 1))


def as_flag(name: str, value: Any) -> int:
    if isinstance(value, bool) or value in (0, 1):
        return int(value)
    raise ValueError(f"FairGPTQConfig: `{name}` must be 0 or 1, got {value!r}.")


def as_alpha(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"FairGPTQConfig: `alpha` must be a number, got {value!r}.")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"FairGPTQConfig: `alpha` must be finite and >= 0, got {value!r}.")
    return float(value)


def normalise_fair_setting(name: str, value: Any) -> Any:
    """One of FAIR_DYNAMIC_FIELDS checked and put in the form that is saved (float, int or string)."""
    if name == "alpha":
        return as_alpha(value)
    if name == "ignore_bias":
        return ",".join(parse_ignore_bias(value))
    if name == "select_layer":
        return ",".join(str(i) for i in parse_select_layer(value))
    return as_flag(name, value)


def settings_for(fields: Dict[str, Any], dynamic_get: Callable[[str], Any], module_name: Optional[str]) -> Dict:
    """alpha, ignore_bias, select_layer and sum_hessians as they apply to one module: the fields, overridden by
    the module's `dynamic` rule (GPTQModel's lookup: the first matching rule; a missing key keeps the field).
    A module excluded by a `-:` rule is not quantized, so its alpha is 0."""
    settings = {name: fields[name] for name in FAIR_DYNAMIC_FIELDS}
    if module_name is None:
        return settings
    overrides = dynamic_get(module_name)
    if overrides is False:
        settings["alpha"] = 0.0
    elif overrides:
        settings.update({name: overrides[name] for name in FAIR_DYNAMIC_FIELDS if name in overrides})
    return settings


def term_active(settings: Dict[str, Any], module_name: Optional[str], layer_index: Optional[int]) -> bool:
    """alpha > 0, not ignored, in a selected layer. Only modules inside a repeating decoder layer (whose index is
    a part of their name) are eligible: GPTQModel numbers lm_head past the last layer, and it never gets the term."""
    if module_name is None or layer_index is None or str(layer_index) not in module_name.split("."):
        return False
    if settings["alpha"] <= 0:
        return False
    if any(ignore_bias_matches(entry, module_name) for entry in parse_ignore_bias(settings["ignore_bias"])):
        return False
    layers = parse_select_layer(settings["select_layer"])
    return not layers or layer_index in layers
