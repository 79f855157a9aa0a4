"""Offline fixtures shared by the whole test suite.

Everything here works without network access: the tiny models are random-weight models
built locally (once per test session) around a byte-level BPE tokenizer trained on the
spot, and the shared data folder is only read, never copied.
"""

from __future__ import annotations

import os

# Must happen before transformers / datasets / huggingface_hub are imported anywhere:
# they read these variables at import time. setdefault: a developer's own setting wins.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# GPTQModel's CPU kernel (TorchQuantLinear) torch.compile()s its dequantize step on load; the
# first forward then spends seconds in inductor (and needs a C++ compiler). Tests check
# numbers, not kernel speed, so compile is off unless a developer sets the variable to 0.
os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")
# The test models are tiny, so a second thread gains little; on a busy 2-core machine torch's
# spinning OpenMP threads made the smoke quantization ~10x slower (12 s with 2 threads vs
# 1.3 s with 1, measured). Export OMP_NUM_THREADS yourself to override.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import csv  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from fair_gptq import paths  # noqa: E402
from model_init import initialised_weights  # noqa: E402  (first: captures torch's own initialisers)
from overlay_files import REPO_DIR, overlay_differences  # noqa: E402

def pytest_sessionstart(session):
    """The tests import the overlay installed in the venv, not ./gptq.py and ./config.py: after an edit they would
    silently run the old code. Stop before collecting anything when the two differ."""
    spec = importlib.util.find_spec("gptqmodel")  # locates the package without importing it
    if spec is None or spec.origin is None:
        problems = ["GPTQModel is not installed in this Python"]
    else:
        version_file = Path(spec.origin).parent / "version.py"
        if version_file.is_file() and "7.7.0" in version_file.read_text():
            return  # the GPTQModel 7.7.0 environment of tests/gptqmodel7 (fair_gptq_v7): no overlay there
        problems = overlay_differences(REPO_DIR, Path(spec.origin).parent / "quantization")
    if problems:
        pytest.exit("Fair-GPTQ overlay check failed: " + "; ".join(problems) + ". Run `bash install_overlay.sh` "
                    "(`--dev` for pytest; seconds once installed) to copy gptq.py and config.py into the venv, "
                    "then rerun the tests.", returncode=pytest.ExitCode.USAGE_ERROR)

# Special tokens of the tiny tokenizer. "<pad>" is distinct from bos/eos on purpose:
# GPTQModel loads tokenizers through `tokenicer`, which replaces a pad token equal to
# bos/eos (or missing) by guessing one from the vocabulary.
UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
TINY_VOCAB_SIZE = 512  # 256 byte symbols + 4 specials + ~250 merges

# Used when the shared data is absent, so the fixtures never depend on it.
_BUILTIN_CORPUS = """\
The quick brown fox jumps over the lazy dog. A model that is quantized to four bits keeps
most of its accuracy when the rounding errors are corrected with second order information.
Many people live in the city and work in offices; others live on farms and grow food.
The nurse helped the patient, the engineer fixed the bridge, and the teacher graded papers.
She said that he would come back tomorrow, but they were not sure whether it would rain.
Language models assign probabilities to sentences. Some sentences are stereotypes, some are
anti-stereotypes, and some are unrelated. We compare the likelihood of paired sentences.
Once upon a time there was a little girl who liked to play in the park with her dog.
Numbers like 1, 2, 3, 42 and 2024 appear in text too, as do symbols such as %, $ and &.
"""


def _corpus_sentences(limit: int = 400) -> list[str]:
    """A small English corpus: the built-in text plus, where present, shared-data sentences."""
    sentences = [line for line in _BUILTIN_CORPUS.splitlines() if line.strip()]
    data = paths.shared_data_dir()
    if data is None:
        return sentences
    stereoset = data / paths.STEREOSET_DEV
    if stereoset.is_file():
        items = json.loads(stereoset.read_text(encoding="utf-8"))["data"]["intrasentence"]
        for item in items[: limit // 3]:
            sentences.extend(s["sentence"] for s in item["sentences"])
    crows = data / paths.CROWS_PAIRS
    if crows.is_file():
        with crows.open(newline="", encoding="utf-8") as f:
            for i, row in enumerate(csv.DictReader(f)):
                if i >= limit // 2:
                    break
                sentences.extend([row["sent_more"], row["sent_less"]])
    return sentences


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The shared data folder ($FAIR_GPTQ_DATA or <repo>/../shared/data); skips if absent."""
    found = paths.shared_data_dir()
    if found is None:
        looked = ", ".join(str(p) for p in paths.shared_data_candidates())
        pytest.skip(f"shared data folder not found (looked at {looked}; set ${paths.DATA_ENV_VAR})")
    return found


def _shared_file(base: Path, rel: Path, want_dir: bool = False) -> Path:
    path = base / rel
    if not (path.is_dir() if want_dir else path.is_file()):
        pytest.skip(f"shared data item missing: {path}")
    return path


@pytest.fixture(scope="session")
def stereoset_dev_path(shared_data_dir: Path) -> Path:
    return _shared_file(shared_data_dir, paths.STEREOSET_DEV)


@pytest.fixture(scope="session")
def crows_pairs_path(shared_data_dir: Path) -> Path:
    return _shared_file(shared_data_dir, paths.CROWS_PAIRS)


@pytest.fixture(scope="session")
def wikitext2_dir(shared_data_dir: Path) -> Path:
    return _shared_file(shared_data_dir, paths.WIKITEXT2_DIR, want_dir=True)


@pytest.fixture(scope="session")
def stories260k_dir(shared_data_dir: Path) -> Path:
    """A real (trained) 260K-parameter Llama with its 512-token SentencePiece tokenizer."""
    return _shared_file(shared_data_dir, paths.STORIES260K_DIR, want_dir=True)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE tokenizer (so any text tokenizes) saved as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=[UNK, BOS, EOS, PAD],  # ids 0..3
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus_sentences(), trainer=trainer)

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        # No token_type_ids: causal LMs' forward() rejects them.
        model_input_names=["input_ids", "attention_mask"],
        model_max_length=256,
    )
    out = tmp_path_factory.mktemp("tiny_tokenizer")
    fast.save_pretrained(out)
    return out


def _load_tiny_tokenizer(tokenizer_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def _special_ids(tokenizer) -> dict:
    return dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _save_with_tokenizer(tmp_path_factory, name: str, model, tokenizer) -> Path:
    out = tmp_path_factory.mktemp(name)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _save_random_model(tmp_path_factory, name: str, model_class, config, tokenizer) -> Path:
    """A float32 model of `model_class` with seeded random weights, saved with `tokenizer` into a fresh folder."""
    import torch

    torch.manual_seed(0)
    with initialised_weights():
        model = model_class(config).to(torch.float32).eval()
    return _save_with_tokenizer(tmp_path_factory, name, model, tokenizer)


@pytest.fixture(scope="session")
def tiny_opt_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> Path:
    """A random-weight 4-layer OPT (hidden 128) saved with the tiny tokenizer."""
    from transformers import OPTConfig, OPTForCausalLM

    tokenizer = _load_tiny_tokenizer(tiny_tokenizer_dir)
    config = OPTConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        ffn_dim=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        word_embed_proj_dim=128,  # == hidden: no project_in/project_out modules
        max_position_embeddings=256,
        torch_dtype="float32",
        **_special_ids(tokenizer),
    )
    return _save_random_model(tmp_path_factory, "tiny_opt", OPTForCausalLM, config, tokenizer)


@pytest.fixture(scope="session")
def tiny_mistral_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> Path:
    """A random-weight 4-layer Mistral (hidden 128, GQA 4/2 heads) saved with the tiny tokenizer."""
    from transformers import MistralConfig, MistralForCausalLM

    tokenizer = _load_tiny_tokenizer(tiny_tokenizer_dir)
    config = MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        sliding_window=None,
        torch_dtype="float32",
        **_special_ids(tokenizer),
    )
    return _save_random_model(tmp_path_factory, "tiny_mistral", MistralForCausalLM, config, tokenizer)


@pytest.fixture(scope="session")
def tiny_gemma3_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> Path:
    """gemma3_helpers' random-weight Gemma 3 with 2 layers, the first with a sliding window of 16 positions, saved
    with the tiny tokenizer."""
    import gemma3_helpers

    tokenizer = _load_tiny_tokenizer(tiny_tokenizer_dir)
    model = gemma3_helpers.tiny_gemma3(len(tokenizer), block_count=2, sliding_window=16, sliding_window_pattern=2,
                                       **_special_ids(tokenizer))
    return _save_with_tokenizer(tmp_path_factory, "tiny_gemma3", model, tokenizer)
