"""Gemma 3's tokenizer rebuilt from the vocabulary that llama.cpp stores in a GGUF file.

Gemma's tokenizer is a SentencePiece BPE model. llama.cpp keeps its pieces as
`tokenizer.ggml.tokens`, their scores (BPE merge priority: higher merges first) as
`tokenizer.ggml.scores` and their SentencePiece types as `tokenizer.ggml.token_type`, but no merge
list. transformers 4.51 would read such a file as a Unigram model (its gemma2 path) over scores that
are BPE ranks, which builds without complaint and tokenizes wrongly ("Robert" -> "▁R ob ert").

Here the pieces become a `tokenizers` BPE model whose merges are derived from the scores with
transformers' own `generate_merges` (what it does for SentencePiece BPE files), set up to behave
like SentencePiece: spaces normalised to "▁", no pre-splitting, byte fallback, user-defined pieces
(runs of spaces, newlines, tabs) matched whole before BPE, control pieces special. Two things in
the GGUF differ from the SentencePiece model and are undone (`sentencepiece_pieces`): llama.cpp
writes the whitespace pieces with spaces instead of "▁", and marks `<unk>` as a control piece.
The tests check the result against SentencePiece itself on every WikiText-2 test row.
"""
from __future__ import annotations

from dataclasses import dataclass

# SentencePiece piece types (sentencepiece_model.proto), as llama.cpp writes them to token_type.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPACE_SYMBOL = "▁"  # SentencePiece's stand-in for a space


@dataclass(frozen=True)
class GGUFVocab:
    tokens: list[str]
    scores: list[float]
    types: list[int]
    bos_id: int
    eos_id: int
    unk_id: int
    pad_id: int
    add_bos: bool
    add_eos: bool


def read_vocab(fields) -> GGUFVocab:
    """The SentencePiece vocabulary of a `GGUFReader(...).fields` mapping; refuses other tokenizers."""
    def value(key, default=None):
        return fields[key].contents() if key in fields else default

    model = value("tokenizer.ggml.model")
    if model != "llama" or "tokenizer.ggml.merges" in fields:
        raise ValueError(f"expected a SentencePiece vocabulary (tokenizer.ggml.model 'llama', no merges), "
                         f"found model {model!r}{' with merges' if 'tokenizer.ggml.merges' in fields else ''}")
    if value("tokenizer.ggml.add_space_prefix", False):
        raise ValueError("tokenizer.ggml.add_space_prefix is set: Gemma 3's tokenizer adds no space prefix")
    tokens = value("tokenizer.ggml.tokens")
    scores = value("tokenizer.ggml.scores")
    types = value("tokenizer.ggml.token_type")
    if not (tokens and len(tokens) == len(scores) == len(types)):
        raise ValueError("tokenizer.ggml.tokens/scores/token_type are missing or of different lengths")
    return GGUFVocab(tokens=list(tokens), scores=[float(s) for s in scores], types=[int(t) for t in types],
                     bos_id=int(value("tokenizer.ggml.bos_token_id")), eos_id=int(value("tokenizer.ggml.eos_token_id")),
                     unk_id=int(value("tokenizer.ggml.unknown_token_id")),
                     pad_id=int(value("tokenizer.ggml.padding_token_id")),
                     add_bos=bool(value("tokenizer.ggml.add_bos_token", True)),
                     add_eos=bool(value("tokenizer.ggml.add_eos_token", False)))


def sentencepiece_pieces(vocab: GGUFVocab) -> list[tuple[str, float, int]]:
    """(piece, score, type) as in the SentencePiece model: whitespace pieces with "▁", `<unk>` UNKNOWN."""
    pieces = []
    for index, (token, score, kind) in enumerate(zip(vocab.tokens, vocab.scores, vocab.types)):
        if kind == USER_DEFINED and token.strip(" ") == "" and token:
            token = token.replace(" ", SPACE_SYMBOL)
        if index == vocab.unk_id:
            kind = UNKNOWN
        pieces.append((token, score, kind))
    return pieces


def build_tokenizer(vocab: GGUFVocab):
    """A `GemmaTokenizerFast` that tokenizes as SentencePiece does with the GGUF's vocabulary."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers
    from tokenizers.models import BPE
    from transformers import GemmaTokenizerFast
    from transformers.convert_slow_tokenizer import generate_merges

    pieces = sentencepiece_pieces(vocab)
    ids = {piece: index for index, (piece, _, _) in enumerate(pieces)}
    if len(ids) != len(pieces):
        raise ValueError("the vocabulary holds the same piece twice")
    # SentencePiece's BPE may form any normal or user-defined piece, the highest score first.
    mergeable = [(piece, score) for piece, score, kind in pieces if kind in (NORMAL, USER_DEFINED)]
    backend = Tokenizer(BPE(ids, generate_merges(ids, mergeable), unk_token=pieces[vocab.unk_id][0],
                            fuse_unk=True, byte_fallback=True))
    backend.normalizer = normalizers.Replace(" ", SPACE_SYMBOL)
    backend.decoder = decoders.Sequence([decoders.Replace(SPACE_SYMBOL, " "), decoders.ByteFallback(), decoders.Fuse()])
    # normalized=True: a user-defined piece is matched in the text after spaces became "▁", longest
    # first, and never merged further, as SentencePiece's prefix matcher does.
    backend.add_tokens([AddedToken(piece, normalized=True, special=False)
                        for piece, _, kind in pieces if kind == USER_DEFINED])
    backend.add_special_tokens([AddedToken(piece, normalized=False, special=True)
                                for piece, _, kind in pieces if kind in (CONTROL, UNKNOWN)])
    return GemmaTokenizerFast(
        tokenizer_object=backend, bos_token=pieces[vocab.bos_id][0], eos_token=pieces[vocab.eos_id][0],
        unk_token=pieces[vocab.unk_id][0], pad_token=pieces[vocab.pad_id][0],
        add_bos_token=vocab.add_bos, add_eos_token=vocab.add_eos,
    )
