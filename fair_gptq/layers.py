"""Which decoder layers and which linear modules get Fair-GPTQ's bias term.

- `fair_layers(strategy, L)`: the paper's layer strategies (all / lower / upper / lower-upper).
- `default_ignore_bias(model_type)`: per model family, the modules that keep plain GPTQ.
- `decoder_linear_names(config)` / `validate_ignore_bias(...)`: check user-given module names
  against the model's real linear modules, from its config alone (no weights are loaded).
- `validate_select_layer(indices, L)`: explicit layer indices, checked against the model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

STRATEGIES = ("all", "lower", "upper", "lower-upper")

# Modules that keep plain GPTQ (no bias term), per `config.model_type`: the paper applies the
# fair term to the attention output and the MLP output projections only.
_LLAMA_LIKE_IGNORE = "k_proj,q_proj,v_proj,up_proj,gate_proj"
DEFAULT_IGNORE_BIAS: dict[str, str] = {
    "opt": "k_proj,q_proj,v_proj,fc1",
    "llama": _LLAMA_LIKE_IGNORE,
    "mistral": _LLAMA_LIKE_IGNORE,
    "qwen2": _LLAMA_LIKE_IGNORE,
    "qwen3": _LLAMA_LIKE_IGNORE,
    "gemma": _LLAMA_LIKE_IGNORE,
    "gemma2": _LLAMA_LIKE_IGNORE,
    "gemma3_text": _LLAMA_LIKE_IGNORE,  # Gemma 3 text-only (e.g. the gemma3-270m preset)
}

OVERLAY_MISSING_MESSAGE = "Fair-GPTQ overlay not installed: run bash install_overlay.sh"

# Where the decoder layer list lives in transformers' causal-LM classes (OPT, then Llama family).
_DECODER_LAYER_PATHS = ("model.decoder.layers", "model.layers")


# --------------------------------------------------------------------------- layer strategies


def fair_layer_count(num_layers: int) -> int:
    """k = ceil(0.1 * L), raised to the next even number (never more than L)."""
    _check_num_layers(num_layers)
    # Integer ceil(L / 10): exact for any L, no floating-point rounding involved.
    k = -(-num_layers // 10)
    if k % 2:
        k += 1
    return min(k, num_layers)


def fair_layers(strategy: str, num_layers: int) -> list[int]:
    """Indices of the decoder layers that get the fair term under `strategy`.

    lower = the first k layers, upper = the last k, lower-upper = the first k/2 and the last k/2.
    (The published snippet passes the lower layers for `upper` and `lower-upper`; this does not.)
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown layer strategy '{strategy}': choose one of {', '.join(STRATEGIES)}")
    k = fair_layer_count(num_layers)
    if strategy == "all":
        return list(range(num_layers))
    if strategy == "lower":
        return list(range(k))
    if strategy == "upper":
        return list(range(num_layers - k, num_layers))
    half = max(1, k // 2)  # k is even except for a one-layer model, where k == 1
    return sorted(set(range(half)) | set(range(num_layers - half, num_layers)))


def _check_num_layers(num_layers: int) -> None:
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"number of decoder layers must be a positive integer, got {num_layers!r}")


def validate_select_layer(indices: Iterable[int], num_layers: int) -> list[int]:
    """Explicit `--select-layer` indices: each in [0, L-1]; returns them sorted, without repeats."""
    _check_num_layers(num_layers)
    checked = set()
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, int):
            raise ValueError(f"layer index {index!r} is not an integer")
        if not 0 <= index < num_layers:
            raise ValueError(
                f"layer index {index} is out of range: this model has {num_layers} decoder layers, "
                f"valid indices are 0..{num_layers - 1}"
            )
        checked.add(index)
    return sorted(checked)


def resolve_fair_layers(strategy: str, num_layers: int, select_layer: Sequence[int] | None = None) -> list[int]:
    """An explicit, non-empty `select_layer` overrides the strategy."""
    if select_layer:
        return validate_select_layer(select_layer, num_layers)
    return fair_layers(strategy, num_layers)


# --------------------------------------------------------------------------- model families


def default_ignore_bias(model_type: str) -> str:
    """The family's default `ignore_bias` list (comma-separated module names)."""
    try:
        return DEFAULT_IGNORE_BIAS[model_type]
    except KeyError:
        raise ValueError(
            f"no default --ignore-bias for model_type '{model_type}' (known: "
            f"{', '.join(sorted(DEFAULT_IGNORE_BIAS))}): pass --ignore-bias with the module names "
            "that should keep plain GPTQ, or --ignore-bias '' to give every module the fair term"
        ) from None


def parse_ignore_bias(value: str | Iterable[str] | None) -> list[str]:
    """'k_proj, q_proj' or ['k_proj', 'q_proj'] -> ['k_proj', 'q_proj']; '' or None -> []."""
    if value is None:
        return []
    parts = value.split(",") if isinstance(value, str) else list(value)
    return [part.strip() for part in parts if part.strip()]


# --------------------------------------------------------------------------- module names


def num_decoder_layers(config) -> int:
    return int(config.num_hidden_layers)


def _load_config(config_or_path):
    if isinstance(config_or_path, (str, bytes)) or hasattr(config_or_path, "__fspath__"):
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(config_or_path)
    return config_or_path


def _find_decoder_layers(model, num_layers: int):
    for dotted in _DECODER_LAYER_PATHS:
        module = model
        for attribute in dotted.split("."):
            module = getattr(module, attribute, None)
            if module is None:
                break
        if module is not None:
            return module
    # Other architectures: the one ModuleList that holds exactly L layers.
    import torch.nn as nn

    candidates = [m for _, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == num_layers]
    if len(candidates) == 1:
        return candidates[0]
    raise ValueError(f"cannot find the decoder layer list of {type(model).__name__}")


def decoder_linear_names(config_or_path) -> list[str]:
    """Layer-relative names of the nn.Linear modules in one decoder layer (e.g. 'self_attn.q_proj').

    The model is built from its config on the meta device (accelerate's `init_empty_weights`), so
    this costs no memory and no weight loading, even for a 70B model.
    """
    import torch.nn as nn
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    config = _load_config(config_or_path)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    first_layer = _find_decoder_layers(model, num_decoder_layers(config))[0]
    from transformers.pytorch_utils import Conv1D  # GPT-2 style layers, which GPTQ quantizes like nn.Linear
    names = [name for name, module in first_layer.named_modules() if isinstance(module, (nn.Linear, Conv1D))]
    if not names:
        raise ValueError(f"no linear (nn.Linear or Conv1D) modules found in the decoder layers of {type(model).__name__}")
    return names


def _overlay_matcher():
    """The canonical name matcher of the installed overlay config (one rule for CLI and quantizer)."""
    try:
        from gptqmodel.quantization.config import ignore_bias_matches
    except ImportError:
        raise RuntimeError(OVERLAY_MISSING_MESSAGE) from None
    return ignore_bias_matches


def validate_ignore_bias(names: str | Iterable[str] | None, config_or_path) -> list[str]:
    """Check every `ignore_bias` entry against the decoder's linear modules; return the entries.

    An entry matches a module when its dotted parts appear as a contiguous run of the module name's
    dotted parts ('q_proj' matches 'self_attn.q_proj'; 'fc1' does not match 'fc11'; 'proj' matches
    nothing). An entry that matches nothing is almost always a typo that would silently give that
    module the fair term, so stop with the list of valid names.
    """
    entries = parse_ignore_bias(names)
    if not entries:
        return []
    matches = _overlay_matcher()
    module_names = decoder_linear_names(config_or_path)
    unknown = [entry for entry in entries if not any(matches(entry, module) for module in module_names)]
    if unknown:
        short_names = sorted({module.rsplit(".", 1)[-1] for module in module_names})
        raise ValueError(
            f"--ignore-bias name(s) {', '.join(repr(u) for u in unknown)} match no linear module of a "
            f"decoder layer; valid names: {', '.join(short_names)} "
            f"(or the dotted forms: {', '.join(module_names)})"
        )
    return entries


__all__ = [
    "DEFAULT_IGNORE_BIAS",
    "OVERLAY_MISSING_MESSAGE",
    "STRATEGIES",
    "decoder_linear_names",
    "default_ignore_bias",
    "fair_layer_count",
    "fair_layers",
    "num_decoder_layers",
    "parse_ignore_bias",
    "resolve_fair_layers",
    "validate_ignore_bias",
    "validate_select_layer",
]
