"""fair_gptq.gemma3_gguf on a tiny synthetic Gemma 3 GGUF written like llama.cpp's (no download).

A random-weight `Gemma3ForCausalLM` goes to GGUF (tests/gemma3_helpers.py: llama.cpp's names, +1 on
the norms, q/k unpermuted, one hand-packed Q8_0 tensor) and back: tensors, config and logits must
come back exactly.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fair_gptq import gemma3_gguf
import gemma3_helpers as helpers

gguf = pytest.importorskip("gguf", reason="the gguf package is not installed")
pytest.importorskip("sentencepiece", reason="the sentencepiece package is not installed")


@pytest.fixture(scope="module")
def vocab():
    return helpers.gguf_vocab_from_sentencepiece(helpers.train_sentencepiece())


@pytest.fixture(scope="module")
def original(vocab):
    return helpers.tiny_gemma3(vocab_size=len(vocab[0]))


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory, original, vocab):
    return helpers.write_gemma3_gguf(tmp_path_factory.mktemp("gguf") / "tiny-gemma3.gguf", original, vocab)


@pytest.fixture(scope="module")
def converted(tmp_path_factory, gguf_file):
    out = tmp_path_factory.mktemp("converted") / "hf"
    summary = gemma3_gguf.convert(gguf_file, out)
    return out, summary


def reader(path):
    return gguf.GGUFReader(path)


# ----------------------------------------------------------------------------- tensors


def test_every_tensor_comes_back_exactly(original, converted):
    from safetensors.torch import load_file

    state = load_file(converted[0] / "model.safetensors")
    expected = {k: v for k, v in original.state_dict().items() if k != "lm_head.weight"}  # tied
    assert set(state) == set(expected)
    for name, tensor in expected.items():
        assert state[name].dtype == torch.float32, name
        assert torch.equal(state[name], tensor), name


def test_norms_are_stored_plus_one_and_converted_minus_one(original, gguf_file, converted):
    """llama.cpp stores Gemma's RMSNorm weight w as 1 + w (HF computes x * (1 + w))."""
    tensors = {t.name: t for t in reader(gguf_file).tensors}
    converted_state = gemma3_gguf.hf_state_dict(reader(gguf_file), original.config)
    norm_names = [n for n in original.state_dict() if n.endswith("norm.weight")]
    assert len(norm_names) == 1 + 6 * helpers.BLOCK_COUNT  # final norm; 4 layer norms + q/k norms per layer
    for name in norm_names:
        stored = np.asarray(tensors[helpers.gguf_name(name)].data)
        hf = original.state_dict()[name].numpy()
        np.testing.assert_array_equal(stored, hf + np.float32(1.0))
        assert torch.equal(converted_state[name], original.state_dict()[name])


def test_q_and_k_are_not_permuted(original, converted):
    """Stored as in the HF model: a Llama-style un-permutation would reorder the rows of each head."""
    from safetensors.torch import load_file

    state = load_file(converted[0] / "model.safetensors")
    for name in ("self_attn.q_proj.weight", "self_attn.k_proj.weight"):
        hf = original.state_dict()[f"model.layers.5.{name}"]
        assert torch.equal(state[f"model.layers.5.{name}"], hf)
        half = helpers.HEAD_DIM // 2  # what llama's permute swaps within a head: interleaved vs halves
        interleaved = hf.reshape(-1, half, 2, hf.shape[1]).transpose(1, 2).reshape(hf.shape)
        assert not torch.equal(interleaved, hf)


def test_q8_0_tensor_is_dequantized_to_scale_times_value(converted):
    from safetensors.torch import load_file

    state = load_file(converted[0] / "model.safetensors")
    expected = helpers.q8_0_values(*helpers.q8_0_parts(state[helpers.Q8_0_TENSOR].shape))
    assert torch.equal(state[helpers.Q8_0_TENSOR], expected)
    assert "Q8_0" in converted[1]["gguf_tensor_types"]


# ----------------------------------------------------------------------------- config and model


def test_config_round_trips_to_the_hf_model(original, converted):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(converted[0])
    assert type(config).__name__ == "Gemma3TextConfig"
    mine, theirs = config.to_dict(), original.config.to_dict()
    for volatile in ("transformers_version", "_attn_implementation_autoset", "_name_or_path"):
        mine.pop(volatile, None)
        theirs.pop(volatile, None)
    assert mine == theirs
    # The settings the file does not hold, as llama.cpp sets them for 270M:
    assert (config.sliding_window_pattern, config.rope_local_base_freq) == (6, 10_000.0)
    assert config.query_pre_attn_scalar == config.head_dim  # llama.cpp: 1/sqrt(key_length)
    assert "_attn_implementation_autoset" not in json.loads((converted[0] / "config.json").read_text())


def test_converted_model_gives_the_same_logits(original, converted):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(converted[0], torch_dtype=torch.float32).eval()
    ids = torch.randint(5, original.config.vocab_size, (2, 3 * helpers.SLIDING_WINDOW))  # beyond the window
    with torch.no_grad():
        assert torch.equal(model(ids).logits, original(ids).logits)


def test_tokenizer_is_saved_with_the_model(converted):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(converted[0])
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token) == (
        "<bos>", "<eos>", "<pad>", "<unk>")
    assert tokenizer("The nurse").input_ids[0] == tokenizer.bos_token_id  # add_bos_token from the file


# ----------------------------------------------------------------------------- refusals


def _config_of(path):
    file = reader(path)
    return gemma3_gguf.gemma3_config(file.fields, [t.name for t in file.tensors])


def test_other_sizes_are_refused(tmp_path, vocab):
    model = helpers.tiny_gemma3(vocab_size=len(vocab[0]), block_count=2)
    path = helpers.write_gemma3_gguf(tmp_path / "two-layers.gguf", model, vocab)
    with pytest.raises(ValueError, match=r"2 layers is not supported.*270M \(18 layers\)"):
        _config_of(path)


def test_rope_scaling_is_refused(tmp_path, original, vocab):
    path = helpers.write_gemma3_gguf(tmp_path / "scaled.gguf", original, vocab, rope_scaling=True)
    with pytest.raises(ValueError, match="RoPE scaling"):
        _config_of(path)


def test_missing_and_unexpected_tensors_are_refused(tmp_path, original, vocab):
    path = helpers.write_gemma3_gguf(tmp_path / "missing.gguf", original, vocab,
                                     drop=("model.layers.3.mlp.up_proj.weight",))
    with pytest.raises(ValueError, match=r"no tensor blk\.3\.ffn_up\.weight"):
        gemma3_gguf.hf_state_dict(reader(path), original.config)
    extra = {"blk.0.something_new.weight": np.zeros(4, dtype=np.float32)}
    path = helpers.write_gemma3_gguf(tmp_path / "extra.gguf", original, vocab, extra_tensors=extra)
    with pytest.raises(ValueError, match="something_new"):
        gemma3_gguf.hf_state_dict(reader(path), original.config)


def test_other_architectures_are_refused(tmp_path):
    writer = gguf.GGUFWriter(tmp_path / "llama.gguf", "llama")
    writer.add_block_count(18)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="not a Gemma 3 GGUF"):
        _config_of(tmp_path / "llama.gguf")
