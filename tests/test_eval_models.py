"""Model loading (evaluation/models.py): full precision and GPTQ checkpoints on CPU."""

from __future__ import annotations

import json

import pytest
import torch

from evaluation import models, scoring

CALIBRATION = [
    "The nurse helped the patient and the engineer fixed the bridge.",
    "Once upon a time there was a little girl who liked to play.",
    "Many people live in the city and work in offices.",
    "Language models assign probabilities to sentences.",
    "The quick brown fox jumps over the lazy dog.",
    "She said that he would come back tomorrow.",
    "Numbers like 1, 2, 3 and 42 appear in text too.",
    "Some sentences are stereotypes and some are not.",
]


@pytest.fixture(scope="module")
def no_torch_compile():
    """GPTQModel's TorchQuantLinear torch.compile()s its dequantization: ~15 s of C++ builds for a
    toy model on 2 cores. Eager mode computes the same weights."""
    import torch._dynamo

    saved = torch._dynamo.config.disable
    torch._dynamo.config.disable = True
    yield
    torch._dynamo.config.disable = saved


@pytest.fixture(scope="module")
def tiny_opt_gptq_dir(tiny_opt_dir, tmp_path_factory, no_torch_compile):
    """Stock GPTQModel, 4 bits, group size 32, 8 calibration sentences, on CPU."""
    import os

    from gptqmodel import GPTQModel, QuantizeConfig
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("tiny_opt_gptq")
    tokenizer = AutoTokenizer.from_pretrained(tiny_opt_dir)
    cwd = os.getcwd()
    os.chdir(out.parent)  # GPTQModel writes a gptq_log_*.log into the working directory
    try:
        model = GPTQModel.load(str(tiny_opt_dir), QuantizeConfig(bits=4, group_size=32), device="cpu")
        model.quantize([tokenizer(s) for s in CALIBRATION], batch_size=1)
        model.save(str(out))
    finally:
        os.chdir(cwd)
    return out


def test_full_precision_checkpoint(tiny_opt_dir):
    assert not models.is_gptq_checkpoint(str(tiny_opt_dir))
    lm = models.load_model(str(tiny_opt_dir), name="fp", device="cpu")
    assert (lm.kind, lm.dtype, lm.backend, lm.device) == ("fp", "float32", None, "cpu")
    assert lm.describe()["kind"] == "fp"


def test_device_and_dtype_resolution():
    assert models.resolve_dtype("auto", "cpu") == torch.float32
    assert models.resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError):
        models.resolve_dtype("float8", "cpu")
    with pytest.raises(ValueError):
        models.resolve_device("tpu")
    if not torch.cuda.is_available():
        assert models.resolve_device("auto") == "cpu"
        with pytest.raises(ValueError, match="no CUDA"):
            models.resolve_device("cuda")


def test_fingerprint_changes_when_the_checkpoint_is_rewritten(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    before = models.model_fingerprint(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"x")
    assert models.model_fingerprint(str(tmp_path)) != before
    assert models.model_fingerprint("org/name") == "hub:org/name"


@pytest.mark.slow
def test_gptq_checkpoint_loads_with_the_torch_kernel_and_scores(tiny_opt_gptq_dir, tiny_opt_dir):
    assert json.loads((tiny_opt_gptq_dir / "quantize_config.json").read_text())["bits"] == 4
    assert models.is_gptq_checkpoint(str(tiny_opt_gptq_dir))
    lm = models.load_model(str(tiny_opt_gptq_dir), name="gptq", device="cpu")
    assert (lm.kind, lm.backend, lm.dtype) == ("gptq", "torch", "float32")
    kernels = {type(m).__name__ for m in lm.model.modules()}
    assert "TorchQuantLinear" in kernels

    texts = ["The nurse helped the patient.", "Cats have sharp claws.", "Many people live in Ethiopia."]
    quant = scoring.score_sentences(lm.model, lm.tokenizer, texts, batch_size=3, progress=False)
    # the engine on a GPTQ model agrees with a direct forward of the same model
    for text, score in zip(texts, quant):
        ids = [lm.tokenizer.bos_token_id] + lm.tokenizer.encode(text, add_special_tokens=False)
        with torch.inference_mode():
            logprobs = torch.log_softmax(lm.model(torch.tensor([ids])).logits[0].double(), dim=-1)
        direct = sum(float(logprobs[t, ids[t + 1]]) for t in range(len(ids) - 1))
        assert score.loglik == pytest.approx(direct, abs=1e-4)
    # 4-bit weights of a random model: close to, but not the same as, full precision
    fp = models.load_model(str(tiny_opt_dir), name="fp", device="cpu")
    full = scoring.score_sentences(fp.model, fp.tokenizer, texts, batch_size=3, progress=False)
    for q, f in zip(quant, full):
        assert q.n_tokens == f.n_tokens
        assert q.loglik != f.loglik
        assert abs(q.loglik - f.loglik) < 0.1 * abs(f.loglik)


@pytest.mark.slow
def test_full_precision_load_after_gptqmodel_is_the_checkpoint(tiny_opt_gptq_dir, tiny_opt_dir):
    """run_eval scores FP and GPTQ checkpoints in one process, and GPTQModel's loader leaves torch's
    initialisers as no-ops and transformers' `_init_weights` off behind it: a later FP load must still be
    exactly the saved weights, with the output embeddings tied (OPT saves no lm_head)."""
    import transformers.modeling_utils
    from safetensors.torch import load_file

    models.load_model(str(tiny_opt_gptq_dir), name="gptq", device="cpu")
    assert transformers.modeling_utils._init_weights is False  # the condition this test is about
    fp = models.load_model(str(tiny_opt_dir), name="fp", device="cpu")
    saved = load_file(str(tiny_opt_dir / "model.safetensors"))
    state = fp.model.state_dict()
    assert "lm_head.weight" not in saved
    for name, tensor in saved.items():
        assert torch.equal(state[name], tensor), name
    assert torch.equal(state["lm_head.weight"], saved["model.decoder.embed_tokens.weight"])


@pytest.mark.slow
def test_cached_dequantization_gives_the_kernels_own_logits(tiny_opt_gptq_dir):
    """After cache_dequantized_weights each module dequantizes once; the logits are bit-identical to the
    stock kernel's, which dequantizes on every forward. load_model applies it to GPTQ checkpoints."""
    from gptqmodel import BACKEND, GPTQModel
    from gptqmodel.nn_modules.qlinear.torch import TorchQuantLinear

    model = GPTQModel.load(str(tiny_opt_gptq_dir), device="cpu", backend=BACKEND.TORCH,
                           torch_dtype=torch.float32).model.eval()
    tokenizer = models.load_tokenizer(str(tiny_opt_gptq_dir))
    batch = tokenizer(["The nurse helped the patient.", "Cats have sharp claws and long tails."],
                      return_tensors="pt", padding=True)
    with torch.inference_mode():
        reference = model(**batch).logits
    calls = []
    quantized = [m for m in model.modules() if isinstance(m, TorchQuantLinear)]
    for module in quantized:  # count the kernel's own dequantize calls behind the cache
        module.dequantize_weight = (lambda num_itr=1, f=module.dequantize_weight:
                                    calls.append(1) or f(num_itr=num_itr))
    assert models.cache_dequantized_weights(model) == len(quantized) > 0
    with torch.inference_mode():
        first, second = model(**batch).logits, model(**batch).logits
    assert len(calls) == len(quantized)  # once per module, not once per forward
    assert torch.equal(first, reference) and torch.equal(second, reference)
    # and load_model's GPTQ models are cached
    loaded = models.load_model(str(tiny_opt_gptq_dir), name="gptq", device="cpu")
    assert all(m.dequantize_weight.__name__ == "cached"
               for m in loaded.model.modules() if isinstance(m, TorchQuantLinear))
