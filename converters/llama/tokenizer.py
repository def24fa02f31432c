"""Meta's ``tokenizer.model`` -> ``tokenizer.json`` and ``tokenizer_config.json`` for transformers.

One file name, two formats: a SentencePiece BPE ``ModelProto`` (Llama 1/2; ``L2tok`` = meta-llama/llama @ 689c7f26
``llama/tokenizer.py``) or tiktoken BPE ranks, one ``base64(token) rank`` per line, followed by 256 special tokens
(Llama 3/3.1; ``L3tok`` = meta-llama/llama-models @ a9c89c47 ``models/llama3/tokenizer.py``). Both are rebuilt with
the ``tokenizers`` library, which transformers already depends on, as a plain ``PreTrainedTokenizerFast`` that
transformers 4.57 and 5.x load alike; BOS is prepended as Meta's ``encode(bos=True)`` does. Checking the result
against Meta's own libraries (:func:`check`) needs the ``tokenizer`` extra: sentencepiece and tiktoken.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from harness.errors import ConversionError

__all__ = ["EXTRA", "SAMPLES", "available", "byte_level_bpe", "check", "convert_tokenizer"]

EXTRA = "pip install 'convparity[tokenizer]'"
SAMPLES = ("Hello world", "  two  spaces\tand a\nnewline ", "Zürich, naïve café — 1234567 ✓ 東京",
           "def f(x):\n    return x ** 2  # ok")
# L3tok 55 and 77-94: the pre-tokenizer pattern and the named special tokens (then reserved ones up to 256).
PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
           r"|\s+(?!\S)|\s+")
LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                  "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>",
                  "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>", "<|image|>"]
LLAMA3_SPECIAL += [f"<|reserved_special_token_{2 + i}|>" for i in range(256 - len(LLAMA3_SPECIAL))]
_NORMAL, _UNKNOWN, _CONTROL, _USER = 1, 2, 3, 4  # SentencePiece.Type


def convert_tokenizer(model: Path, vocab_size: int, verify: bool = False) -> dict[str, bytes]:
    """The transformers tokenizer files for ``model``; its word count must be the model's vocabulary (upstream
    builds the embedding with ``tokenizer.n_words`` rows, L2gen 116-117, and asserts it in Llama 3, L3gen 103).
    ``verify`` runs :func:`check` on the result."""
    data = model.read_bytes()
    tokenizer, config = _tiktoken(data, model) if _is_tiktoken(data) else _sentencepiece(data, model)
    words = tokenizer.get_vocab_size(with_added_tokens=True)
    if words != vocab_size:
        raise ConversionError(f"{model}: {words} words, but output.weight has {vocab_size} rows; upstream needs them "
                              "equal (tokenizer.n_words is the vocabulary size)")
    files = {"tokenizer.json": tokenizer.to_str().encode(), "tokenizer_config.json": json.dumps(config).encode()}
    if verify:
        check(model, files["tokenizer.json"])
    return files


def available(model: Path) -> bool:
    """Whether the library that :func:`check` compares ``model`` against is installed."""
    return importlib.util.find_spec(_library(model.read_bytes())) is not None


def check(model: Path, tokenizer_json: bytes, texts: tuple[str, ...] = SAMPLES) -> None:
    """Encode ``texts`` with Meta's tokenizer (sentencepiece / tiktoken, BOS first) and with the converted one;
    ConversionError on any difference, or naming the extra when the library is missing."""
    from tokenizers import Tokenizer

    data = model.read_bytes()
    library = _library(data)
    if importlib.util.find_spec(library) is None:
        raise ConversionError(f"checking {model} against Meta's tokenizer needs {library}; {EXTRA}")
    encode, decode = _original(model, data)
    converted = Tokenizer.from_str(tokenizer_json.decode())
    for text in texts:
        want, got = encode(text), converted.encode(text).ids
        if got != want:
            raise ConversionError(f"{model}: the converted tokenizer encodes {text!r} as {got[:16]}, {library} as "
                                  f"{want[:16]}")
        if decode(want) == text and converted.decode(got, skip_special_tokens=True) != text:
            raise ConversionError(f"{model}: the converted tokenizer does not decode {text!r} back")


def _library(data: bytes) -> str:
    return "tiktoken" if _is_tiktoken(data) else "sentencepiece"


def _is_tiktoken(data: bytes) -> bool:
    return re.match(rb"\s*[A-Za-z0-9+/=]+ \d+\s*$", data[:200].split(b"\n", 1)[0] + b"\n") is not None


def _original(model: Path, data: bytes) -> tuple[Callable[[str], list[int]], Callable[[list[int]], str]]:
    if _is_tiktoken(data):
        import tiktoken

        ranks = _ranks(data, model)
        special = {name: len(ranks) + i for i, name in enumerate(LLAMA3_SPECIAL)}  # L3tok 96
        enc = tiktoken.Encoding(name=model.name, pat_str=PATTERN, mergeable_ranks=ranks, special_tokens=special)
        return (lambda t: [special["<|begin_of_text|>"], *enc.encode(t, disallowed_special=())]), enc.decode
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(model))
    return (lambda t: [sp.bos_id(), *sp.encode(t)]), sp.decode  # L2tok 38-56 with bos=True


def _sentencepiece(data: bytes, model: Path) -> tuple[Any, dict[str, Any]]:
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE

    pieces, trainer, normalizer = [], {}, {}
    for number, value in _fields(data, model):
        if number == 1:
            fields = dict((n, v) for n, v in _fields(value, model))
            pieces.append((fields[1].decode(), struct.unpack("<f", fields.get(2, b"\0" * 4))[0], fields.get(3, 1)))
        elif number in (2, 3):
            (trainer if number == 2 else normalizer).update(_fields(value, model))
    if trainer.get(3, 1) != 2:
        raise ConversionError(f"{model}: a SentencePiece model of type {trainer.get(3, 1)}; Meta's Llama tokenizers "
                              "are BPE (model_type 2)")
    ids = {piece: i for i, (piece, _, _) in enumerate(pieces)}
    merges = []  # every split of a piece into two pieces, best-scored pieces first (SentencePiece BPE merges by score)
    for piece, score, kind in pieces:
        if kind == _NORMAL:
            splits = [(piece[:k], piece[k:]) for k in range(1, len(piece)) if piece[:k] in ids and piece[k:] in ids]
            merges += [(-score, ids[a], ids[b], a, b) for a, b in splits]
    unk = _int(trainer.get(40, 0))
    bpe = BPE(vocab=ids, merges=[(a, b) for *_, a, b in sorted(merges)], unk_token=pieces[unk][0], fuse_unk=True,
              byte_fallback=bool(trainer.get(35, 0)))
    tokenizer = Tokenizer(bpe)
    steps = [normalizers.Precompiled(normalizer[2])] if normalizer.get(2) else []
    if normalizer.get(4, 1):  # remove_extra_whitespaces
        steps += [normalizers.Strip(), normalizers.Replace(normalizers.Regex(" {2,}"), " ")]
    steps += [normalizers.Prepend("▁")] if normalizer.get(3, 1) else []  # add_dummy_prefix
    steps += [normalizers.Replace(" ", "▁")] if normalizer.get(5, 1) else []  # escape_whitespaces
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
                                          + ([decoders.Strip(" ", 1, 0)] if normalizer.get(3, 1) else []))
    tokenizer.add_tokens([AddedToken(p, special=k != _USER, normalized=False) for p, _, k in pieces
                          if k in (_UNKNOWN, _CONTROL, _USER)])
    bos, eos = _int(trainer.get(41, 1)), _int(trainer.get(42, 2))
    if bos >= 0:
        name = pieces[bos][0]
        tokenizer.post_processor = processors.TemplateProcessing(single=f"{name} $A", pair=f"{name} $A {name} $B",
                                                                 special_tokens=[(name, bos)])
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": pieces[unk][0],
              "clean_up_tokenization_spaces": False}
    config |= ({"bos_token": pieces[bos][0]} if bos >= 0 else {}) | ({"eos_token": pieces[eos][0]} if eos >= 0 else {})
    return tokenizer, config


def _tiktoken(data: bytes, model: Path) -> tuple[Any, dict[str, Any]]:
    ranks = _ranks(data, model)
    special = {name: len(ranks) + i for i, name in enumerate(LLAMA3_SPECIAL)}  # L3tok 96
    tokenizer = byte_level_bpe(ranks, PATTERN, special, "<|begin_of_text|>", model)
    return tokenizer, {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
                       "eos_token": "<|end_of_text|>", "clean_up_tokenization_spaces": False}


def byte_level_bpe(ranks: dict[bytes, int], pattern: str, special: dict[str, int], bos: str, model: Path,
                   offset: int = 0) -> Any:
    """A ``tokenizers`` byte-level BPE that encodes as ``tiktoken.Encoding(pat_str=pattern, mergeable_ranks=ranks)``
    does, each rank's id shifted by ``offset``, the ``special`` tokens at their ids and ``bos`` first (Llama 3, and
    Mistral's tekken.json, whose specials come first)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE

    chars = _byte_chars()
    text = {token: "".join(chars[b] for b in token) for token in ranks}
    merges = []  # tiktoken merges the adjacent pair whose join ranks lowest: merges in the rank order of the join
    for token in sorted(ranks, key=ranks.__getitem__):
        splits = [(token[:k], token[k:]) for k in range(1, len(token)) if token[:k] in ranks and token[k:] in ranks]
        merges += [(text[a], text[b]) for a, b in sorted(splits, key=lambda s: (ranks[s[0]], ranks[s[1]]))]
    vocab = {text[t]: r + offset for t, r in ranks.items()}
    if clash := sorted(set(vocab) & set(special)):
        raise ConversionError(f"{model}: special token(s) {clash[:3]} are also regular tokens; a tokenizer.json "
                              "holds one id per string")
    tokenizer = Tokenizer(BPE(vocab=vocab | special, merges=merges, fuse_unk=False))
    tokenizer.model.ignore_merges = True  # a pre-token that is itself a rank is one token, as in tiktoken
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(name, special=True, normalized=False) for name in special])
    tokenizer.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                      special_tokens=[(bos, special[bos])])])
    return tokenizer


def _ranks(data: bytes, model: Path) -> dict[bytes, int]:
    """``load_bpe_file`` (llama-models ``tokenizer_utils``): ranks must be 0 .. n-1, special ids follow them."""
    ranks = {}
    for n, line in enumerate(data.splitlines(), 1):
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise ConversionError(f"{model} line {n}: expected 'base64 rank', found {line[:40]!r}")
        ranks[base64.b64decode(parts[0])] = int(parts[1])
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ConversionError(f"{model}: ranks are not 0 .. {len(ranks) - 1}, one per token")
    return ranks


def _byte_chars() -> list[str]:
    """The byte -> character table of byte-level BPE (GPT-2's): printable Latin-1 bytes stand for themselves, the
    others take the characters from U+0100 on, in byte order."""
    kept = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = iter(range(0x100, 0x200))
    return [chr(b) if b in kept else chr(next(others)) for b in range(256)]


def _fields(buf: bytes, model: Path) -> Iterator[tuple[int, Any]]:
    """(field number, value) of a protobuf message: ints for varints, bytes for the rest."""
    i = 0
    try:
        while i < len(buf):
            key, i = _varint(buf, i)
            number, wire = key >> 3, key & 7
            if wire == 0:
                value, i = _varint(buf, i)
            elif wire == 2:
                size, i = _varint(buf, i)
                value, i = buf[i:i + size], i + size
            elif wire in (1, 5):
                value, i = buf[i:i + (8 if wire == 1 else 4)], i + (8 if wire == 1 else 4)
            else:
                raise ValueError(f"wire type {wire}")
            yield number, value
    except (ValueError, IndexError) as err:
        raise ConversionError(f"{model} is neither tiktoken ranks nor a SentencePiece model ({err})") from None


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if byte < 0x80:
            return value, i


def _int(value: int) -> int:
    """A protobuf int32 (negative ones are 64-bit two's complement varints)."""
    return value - (1 << 64) if value >= 1 << 63 else value
