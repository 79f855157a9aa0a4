"""Tiny synthetic Gemma 3 pieces for the tests: a SentencePiece BPE model trained on the spot, a
random-weight `Gemma3ForCausalLM`, and a GGUF file of both written the way llama.cpp writes Gemma 3.

The GGUF writer here is deliberately independent of `fair_gptq.gemma3_gguf`: its own table of tensor
names, llama.cpp's +1 on every RMSNorm weight, q/k stored as they are, `<unk>` marked as a control
token and the whitespace pieces written with spaces instead of "▁".
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from fair_gptq import paths

BLOCK_COUNT = 18  # Gemma 3 270M's layer count: the only size the converter accepts
HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN = 32, 2, 1, 16, 64
SLIDING_WINDOW = 8
Q8_0_TENSOR = "model.layers.0.self_attn.v_proj.weight"  # stored as hand-packed Q8_0 blocks

_TRAINING_TEXT = """\
The quick brown fox jumps over the lazy dog. The nurse helped the patient and the engineer fixed the bridge.
In 1994 the  battalion  was formed ; it saw action in Hrvatska Kostajnica and near Slano .
Robert Boulter is an English film , television and theatre actor .
\tTabs and  double  spaces   and newlines

appear in text too, as do symbols such as %, $ and &.
"""

# HF name (layer-relative for blk.*) -> GGUF name, as llama.cpp's convert_hf_to_gguf.py writes Gemma 3.
GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
}
LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf_name: str) -> str:
    if hf_name in GLOBAL_NAMES:
        return GLOBAL_NAMES[hf_name]
    _, _, index, rest = hf_name.split(".", 3)  # model.layers.<i>.<rest>
    return f"blk.{index}.{LAYER_NAMES[rest]}"


def training_rows(limit: int = 400) -> list[str]:
    rows = [line for line in _TRAINING_TEXT.splitlines(keepends=True) if line.strip()]
    data = paths.shared_data_dir()
    wikitext = data / paths.WIKITEXT2_DIR / "wikitext-2-raw-v1_test_rows.jsonl" if data else None
    if wikitext is not None and wikitext.is_file():
        with wikitext.open(encoding="utf-8") as handle:
            rows += [text for text in (json.loads(line)["text"] for line in handle) if text][:limit]
    return rows


def train_sentencepiece(vocab_size: int = 600) -> bytes:
    """A Gemma-like SentencePiece BPE model (serialized): specials 0-3, byte fallback, whitespace pieces."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_rows()), model_writer=model, model_type="bpe", vocab_size=vocab_size,
        byte_fallback=True, split_digits=True, add_dummy_prefix=False, remove_extra_whitespaces=False,
        normalization_rule_name="identity", allow_whitespace_only_pieces=True, character_coverage=1.0,
        user_defined_symbols=["\n", "\n\n", "▁▁", "▁▁▁", "\t"], control_symbols=["<mask>"],
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>", num_threads=1, minloglevel=2, max_sentence_length=1 << 20,
    )
    return model.getvalue()


def gguf_vocab_from_sentencepiece(model_bytes: bytes) -> tuple[list[str], list[float], list[int]]:
    """tokens, scores, token types as llama.cpp writes a Gemma 3 vocabulary (with its two quirks)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(model_bytes)
    tokens, scores, types = [], [], []
    for piece in proto.pieces:
        text, kind = piece.piece, piece.type
        if kind == 4 and set(text) == {"▁"}:
            text = text.replace("▁", " ")  # llama.cpp writes spaces in the whitespace pieces
        if kind == 2:
            kind = 3  # and marks <unk> as a control token
        tokens.append(text)
        types.append(kind)
        scores.append(-1000.0 if kind in (3, 4) else piece.score)
    return tokens, scores, types


def sentencepiece_from_pieces(pieces) -> bytes:
    """A SentencePiece BPE model (serialized) over (piece, score, type) triples, Gemma's normalizer."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.trainer_spec.model_type = pb.TrainerSpec.BPE
    proto.trainer_spec.byte_fallback = True
    proto.trainer_spec.vocab_size = len(pieces)
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = False
    proto.normalizer_spec.remove_extra_whitespaces = False
    proto.normalizer_spec.escape_whitespaces = True
    for text, score, kind in pieces:
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = text, score, kind
    return proto.SerializeToString()


def tiny_gemma3(vocab_size: int, block_count: int = BLOCK_COUNT, seed: int = 0, **overrides):
    """A random-weight Gemma3ForCausalLM with the settings llama.cpp implies for 270M (float32)."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    settings = dict(
        vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=block_count,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM, max_position_embeddings=512,
        rms_norm_eps=1e-6, rope_theta=1_000_000.0, sliding_window=SLIDING_WINDOW,
        query_pre_attn_scalar=HEAD_DIM, rope_local_base_freq=10_000.0, sliding_window_pattern=6,
        pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=True, torch_dtype="float32",
        architectures=["Gemma3ForCausalLM"],
    )
    settings.update(overrides)
    model = Gemma3ForCausalLM(Gemma3TextConfig(**settings)).eval()
    # Every weight drawn here from a seeded generator, not by the modules' initialisers: GPTQModel's loader
    # replaces torch.nn.init.normal_/uniform_/kaiming_uniform_ with no-ops for the rest of the process, so after
    # any GPTQModel.load in the same test session a freshly built model would hold uninitialised memory.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # random norms (the model starts with zeros) and Q8_0-exact v_proj weights
        for name, tensor in model.state_dict().items():
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.05)
            if name.endswith("norm.weight"):
                # bfloat16 values, as Gemma's released weights are: then float32 (1 + w) - 1 == w exactly
                tensor.copy_((torch.randn_like(tensor) * 0.1).to(torch.bfloat16).float())
        v_proj = model.get_parameter(Q8_0_TENSOR)
        v_proj.copy_(q8_0_values(*q8_0_parts(v_proj.shape)))
    # GPTQModel's loader also sets transformers' _init_weights to False for the process, and then the constructor
    # no longer ties lm_head to the embeddings: tie explicitly, as the released model (and its GGUF) is tied.
    model.tie_weights()
    return model


def q8_0_parts(shape):
    """Fixed per-block float16 scales and int8 values for a (rows, cols) tensor, cols a multiple of 32."""
    rng = np.random.default_rng(1234)
    rows, cols = shape
    scales = rng.uniform(0.001, 0.01, size=(rows, cols // 32)).astype(np.float16)
    values = rng.integers(-127, 128, size=(rows, cols), dtype=np.int8)
    return scales, values


def q8_0_values(scales, values):
    """Q8_0 by definition: every weight = its block's scale x its int8 value."""
    import torch

    rows, cols = values.shape
    expanded = np.repeat(scales.astype(np.float32), 32, axis=1).reshape(rows, cols)
    return torch.from_numpy(expanded * values.astype(np.float32))


def q8_0_bytes(scales, values) -> np.ndarray:
    """GGML's Q8_0 layout: per block of 32, the float16 scale (2 bytes) then 32 int8 values."""
    rows, cols = values.shape
    blocks = np.concatenate(
        [scales.reshape(rows, -1, 1).view(np.uint8), values.reshape(rows, -1, 32).view(np.uint8)], axis=2)
    return blocks.reshape(rows, -1)


def write_gemma3_gguf(path: Path, model, vocab, norm_shift: float = 1.0, block_count: int | None = None,
                      extra_tensors: dict | None = None, drop: tuple = (), rope_scaling: bool = False) -> Path:
    """The model and vocabulary as llama.cpp writes a Gemma 3 GGUF (norm weights + norm_shift)."""
    import gguf
    import torch

    config = model.config
    tokens, scores, types = vocab
    writer = gguf.GGUFWriter(path, "gemma3")
    writer.add_block_count(config.num_hidden_layers if block_count is None else block_count)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_sliding_window(config.sliding_window)
    if rope_scaling:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(config.pad_token_id)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" or name in drop:
            continue  # tied to the embeddings: llama.cpp writes no output.weight
        if name == Q8_0_TENSOR:
            parts = q8_0_parts(tensor.shape)
            assert torch.equal(tensor, q8_0_values(*parts)), "v_proj must hold the Q8_0 values tiny_gemma3 set"
            data = q8_0_bytes(*parts)
            writer.add_tensor(gguf_name(name), data, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            continue
        array = tensor.detach().float().numpy().copy()
        if name.endswith("norm.weight"):
            array = array + np.float32(norm_shift)
        writer.add_tensor(gguf_name(name), array)
    for name, array in (extra_tensors or {}).items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
