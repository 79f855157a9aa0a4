"""Smoke tests: the offline fixtures of conftest.py work, and GPTQModel 2.2.0 quantizes,
saves, reloads and runs a tiny OPT on CPU.

The quantization test exercises whatever gptq.py / config.py are installed in the running environment
(upstream or the Fair-GPTQ overlay) with default (non-fair) settings, so a broken overlay
shows up here even before any bias-specific test runs.

CPU notes (GPTQModel 2.2.0), found while writing this test:
- GPTQModel.load() down-casts float32 checkpoints to bfloat16 unless torch_dtype is given;
  bfloat16 matmuls on a CPU without native bf16 are tens of times slower, so pass float32.
- quantize(auto_gc=True) (the default) calls gc.collect() after every module: ~0.5 s each
  once transformers/torch are loaded, i.e. most of the time for a tiny model.
- Passing device= to load() together with QuantizeConfig(device=...) raises.
- The model returned by quantize() is packed but not post-initialised: calling it raises
  AttributeError (wf_unsqueeze_zero). Save it and GPTQModel.load() it to run it.
- quantize() writes gptq_log_*.log into the current directory: run it from a tmp dir.
"""

from __future__ import annotations

import time

import pytest

from fair_gptq import paths

CALIBRATION = [
    "The doctor told the nurse that the results would arrive tomorrow morning.",
    "My neighbour grows tomatoes and beans in the small garden behind the house.",
    "The engineer checked the bridge twice before the heavy trucks were allowed across.",
    "She bought a new bicycle because the old one had a broken chain.",
    "Many people in the city take the train to work every day.",
    "The teacher asked the students to write a short story about their summer.",
    "He cooked dinner for his family and then washed all the dishes.",
    "The old library downtown has thousands of books about history and science.",
]


# ------------------------------------------------- the fixtures themselves (fast) ----


def test_tiny_tokenizer_is_byte_level(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    assert 400 <= len(tok) <= 1000
    specials = {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id}
    assert None not in specials and len(specials) == 4, "bos/eos/pad/unk must be distinct tokens"
    text = "Naïve café owners in Zürich earn 3,000€ (日本語 too) — emoji 🙂!"
    enc = tok(text)
    assert "token_type_ids" not in enc
    assert tok.unk_token_id not in enc["input_ids"], "byte-level BPE should never need <unk>"
    assert tok.decode(enc["input_ids"]) == text


@pytest.mark.parametrize("fixture", ["tiny_opt_dir", "tiny_mistral_dir"])
def test_tiny_models_load_and_run(fixture, request):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = request.getfixturevalue(fixture)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    assert model.config.num_hidden_layers == 4 and model.config.hidden_size == 128
    assert model.config.vocab_size == len(tok)
    assert model.config.pad_token_id == tok.pad_token_id != model.config.eos_token_id
    batch = tok(["A short sentence.", "A somewhat longer second sentence here."], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(logits).all()


def test_stories260k_loads(stories260k_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(stories260k_dir)
    model = AutoModelForCausalLM.from_pretrained(stories260k_dir, torch_dtype=torch.float32).eval()
    ids = tok("Once upon a time", return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
    assert torch.isfinite(logits).all()
    # A trained model: the next token after "Once upon a time" is far from uniform.
    probs = logits[0, -1].softmax(-1)
    assert probs.max() > 10 / probs.numel()


def test_shared_data_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv(paths.DATA_ENV_VAR, str(tmp_path))
    assert paths.shared_data_dir() == tmp_path.resolve()
    monkeypatch.setenv(paths.DATA_ENV_VAR, str(tmp_path / "missing"))
    assert paths.shared_data_dir() is None
    assert paths.shared_data_candidates() == [tmp_path / "missing"]
    monkeypatch.delenv(paths.DATA_ENV_VAR)
    assert paths.shared_data_candidates() == [paths.repo_root().parent / "shared" / "data"]
    assert (paths.repo_root() / "fair_gptq" / "paths.py").is_file()


# ----------------------------------------------------------- quantization (slow) ----


@pytest.mark.slow
def test_quantize_save_reload_generate(tiny_opt_dir, tmp_path, monkeypatch):
    import torch
    from transformers import AutoTokenizer

    from gptqmodel import BACKEND, GPTQModel, QuantizeConfig
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear

    monkeypatch.chdir(tmp_path)  # GPTQModel writes its progress log into the cwd
    timings = {}
    t0 = time.perf_counter()

    tokenizer = AutoTokenizer.from_pretrained(tiny_opt_dir)
    # group_size 32 divides every in_features of the tiny OPT (128 and 256). desc_act is
    # spelled out: GPTQModel 2.2.0 defaults it to True.
    qcfg = QuantizeConfig(bits=4, group_size=32, desc_act=False, sym=True, device="cpu")
    model = GPTQModel.load(str(tiny_opt_dir), qcfg, torch_dtype=torch.float32)
    reference = model.model  # keep the float model's logits for a sanity comparison
    prompt = tokenizer("The doctor told the nurse", return_tensors="pt")
    with torch.no_grad():
        float_logits = reference(**prompt).logits.float()

    # BACKEND.TORCH: the pure-PyTorch kernel (TorchQuantLinear), the one that runs on CPU
    # without compiled extensions (AUTO picks it too here; naming it avoids probing).
    model.quantize(CALIBRATION, batch_size=2, tokenizer=tokenizer, backend=BACKEND.TORCH, auto_gc=False)
    timings["quantize"] = time.perf_counter() - t0

    out_dir = tmp_path / "tiny_opt_gptq"
    model.save(str(out_dir))
    saved_cfg = (out_dir / "quantize_config.json").read_text()
    assert '"bits": 4' in saved_cfg and '"group_size": 32' in saved_cfg
    del model, reference

    t1 = time.perf_counter()
    qmodel = GPTQModel.load(str(out_dir), device="cpu", backend=BACKEND.TORCH, torch_dtype=torch.float32)
    # Every linear layer inside the decoder blocks must have been replaced by a quantized one.
    qlayers = [m for m in qmodel.model.modules() if isinstance(m, BaseQuantLinear)]
    assert len(qlayers) == 4 * 6, f"expected 24 quantized linears (4 layers x 6), got {len(qlayers)}"

    with torch.no_grad():
        logits = qmodel.model(**prompt).logits.float()
        generated = qmodel.generate(**prompt, max_new_tokens=5, do_sample=False)
    timings["reload+generate"] = time.perf_counter() - t1
    print("smoke timings (s):", {k: round(v, 2) for k, v in timings.items()})

    assert torch.isfinite(logits).all(), "quantized model produced non-finite logits"
    assert generated.shape[1] > prompt["input_ids"].shape[1], "generate() added no tokens"
    # 4-bit weights must change the output a little, but not into something unrelated.
    assert not torch.equal(logits, float_logits), "logits identical to the float model: nothing was quantized"
    cos = torch.nn.functional.cosine_similarity(logits.flatten(), float_logits.flatten(), dim=0)
    assert cos > 0.9, f"quantized logits far from the float model's (cosine {cos:.3f})"
