"""Gemma 3 (text) GGUF file -> Hugging Face `Gemma3ForCausalLM` folder (float32 safetensors).

transformers 4.51 cannot load a gemma3 GGUF ("architecture gemma3 is not supported yet"), so the
tensors are read with the `gguf` package (`GGUFReader`, `gguf.quants.dequantize`) and renamed with
its own HF -> GGUF name map. What llama.cpp's conversion changed is undone:

- Gemma's RMSNorm computes x * (1 + w); llama.cpp stores 1 + w in every norm weight: subtract 1
  (left in, WikiText-2 perplexity is ~1e8, as measured for issue 13).
- q/k are stored as in the HF model: no un-permutation (a Llama-style one gave perplexity ~4,300).
- The sliding-window pattern, the local RoPE base and the query scaling are not in the file;
  llama.cpp sets them per model size. Only the size whose values are known here (270M, 18 layers)
  is accepted; other sizes are refused rather than guessed.

float32, not float16: Gemma's activations overflow float16 (NaN logits).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np

ARCH = "gemma3"
# llama.cpp (llama-model.cpp, LLM_ARCH_GEMMA3): 18 layers = LLM_TYPE_270M; for every size but 27B
# the attention scale is 1/sqrt(key_length), every 6th layer is global, local layers use RoPE base 10k.
SUPPORTED_BLOCK_COUNTS = {18: "270M"}
SLIDING_WINDOW_PATTERN = 6
LOCAL_ROPE_BASE = 10_000.0


def _field(fields, key, default=None):
    return fields[key].contents() if key in fields else default


def _shortest_float(value) -> float:
    """GGUF stores float32: 1e-6 comes back as 9.99999997e-07; take the shortest decimal that rounds
    to the same float32 (what the HF config said), which torch turns into the same float32 again."""
    return float(str(np.float32(value)))


def gemma3_config(fields, tensor_names):
    """`Gemma3TextConfig` from a GGUF file's metadata (`GGUFReader.fields`) and tensor names.

    Refuses sizes whose unstored settings are unknown here. Embeddings are tied when the file has no
    separate `output.weight`.
    """
    from transformers import Gemma3TextConfig

    arch = _field(fields, "general.architecture")
    if arch != ARCH:
        raise ValueError(f"not a Gemma 3 GGUF file: general.architecture is {arch!r}, expected {ARCH!r}")

    def key(name):
        if f"{ARCH}.{name}" not in fields:
            raise ValueError(f"the GGUF file has no {ARCH}.{name}")
        return _field(fields, f"{ARCH}.{name}")

    layers = int(key("block_count"))
    if layers not in SUPPORTED_BLOCK_COUNTS:
        raise ValueError(
            f"Gemma 3 with {layers} layers is not supported: the sliding-window pattern, local RoPE base and "
            f"query scaling are not stored in the file and are known here only for "
            + ", ".join(f"{size} ({n} layers)" for n, size in SUPPORTED_BLOCK_COUNTS.items()))
    if any(name.startswith(f"{ARCH}.rope.scaling") for name in fields):
        raise ValueError("RoPE scaling in a Gemma 3 GGUF file is not supported (the 270M model has none)")
    head_dim = int(key("attention.key_length"))
    if int(key("attention.value_length")) != head_dim:
        raise ValueError("Gemma 3 needs attention.key_length == attention.value_length")
    return Gemma3TextConfig(
        vocab_size=len(_field(fields, "tokenizer.ggml.tokens")),
        hidden_size=int(key("embedding_length")),
        intermediate_size=int(key("feed_forward_length")),
        num_hidden_layers=layers,
        num_attention_heads=int(key("attention.head_count")),
        num_key_value_heads=int(key("attention.head_count_kv")),
        head_dim=head_dim,
        max_position_embeddings=int(key("context_length")),
        rms_norm_eps=_shortest_float(key("attention.layer_norm_rms_epsilon")),
        rope_theta=_shortest_float(key("rope.freq_base")),
        sliding_window=int(key("attention.sliding_window")),
        final_logit_softcapping=_field(fields, f"{ARCH}.final_logit_softcapping"),  # absent for Gemma 3
        attn_logit_softcapping=_field(fields, f"{ARCH}.attn_logit_softcapping"),
        query_pre_attn_scalar=head_dim,
        rope_local_base_freq=LOCAL_ROPE_BASE,
        sliding_window_pattern=SLIDING_WINDOW_PATTERN,
        bos_token_id=int(_field(fields, "tokenizer.ggml.bos_token_id")),
        eos_token_id=int(_field(fields, "tokenizer.ggml.eos_token_id")),
        pad_token_id=int(_field(fields, "tokenizer.ggml.padding_token_id")),
        tie_word_embeddings="output.weight" not in set(tensor_names),
        torch_dtype="float32",
        architectures=["Gemma3ForCausalLM"],
    )


def hf_state_dict(reader, config) -> dict:
    """Every tensor of the GGUF file as a float32 torch tensor under its `Gemma3ForCausalLM` name."""
    import gguf
    import torch
    from transformers import Gemma3ForCausalLM
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm

    with torch.device("meta"):  # names, shapes and module types only; no memory
        skeleton = Gemma3ForCausalLM(copy.deepcopy(config))  # a copy: the model adds attention settings
    norms = {f"{name}.weight" for name, module in skeleton.named_modules() if isinstance(module, Gemma3RMSNorm)}
    expected = skeleton.state_dict()
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight")
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, config.num_hidden_layers)
    tensors = {t.name: t for t in reader.tensors}
    state = {}
    for name, meta in expected.items():
        gguf_name = names.get_name(name, try_suffixes=(".weight",))
        if gguf_name not in tensors:
            raise ValueError(f"the GGUF file has no tensor {gguf_name} (for {name})")
        tensor = tensors.pop(gguf_name)
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        # a copy: F32 tensors come back as read-only views of the memory-mapped file
        values = np.array(values, dtype=np.float32).reshape(tuple(reversed(tensor.shape.tolist())))
        if name in norms:
            values = values - 1.0
        if tuple(values.shape) != tuple(meta.shape):
            raise ValueError(f"{gguf_name}: shape {values.shape}, but {name} needs {tuple(meta.shape)}")
        state[name] = torch.from_numpy(values)
    if tensors:
        raise ValueError(f"tensors of the GGUF file that Gemma3ForCausalLM has no place for: {sorted(tensors)}")
    return state


def convert(gguf_path: Path, out_dir: Path) -> dict:
    """Write config, generation config, model.safetensors and the tokenizer into `out_dir`.

    Returns a summary for the caller's record. The caller makes `out_dir` appear atomically.
    """
    from gguf import GGUFReader
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    from fair_gptq import gemma3_tokenizer

    reader = GGUFReader(gguf_path)  # memory-maps the file; tensors are read one at a time
    config = gemma3_config(reader.fields, [t.name for t in reader.tensors])
    state = hf_state_dict(reader, config)
    out_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out_dir)
    GenerationConfig.from_model_config(config).save_pretrained(out_dir)
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    tokenizer = gemma3_tokenizer.build_tokenizer(gemma3_tokenizer.read_vocab(reader.fields))
    tokenizer.save_pretrained(out_dir, legacy_format=False)
    n_params = sum(t.numel() for t in state.values())
    types = sorted({t.tensor_type.name for t in reader.tensors})
    return {"parameters": n_params, "gguf_tensor_types": types, "tied_embeddings": config.tie_word_embeddings,
            "config": json.loads(config.to_json_string(use_diff=True))}
