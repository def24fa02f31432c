"""Mistral's tokenizer files -> ``tokenizer.json`` and ``tokenizer_config.json`` for transformers.

Mirrors mistral_common 1.13.1, which mistral-inference's ``load_tokenizer`` uses (golden/upstream/mistral/README.md,
fact 11): ``tokenizer.model`` (v1) and ``tokenizer.model.v3`` (v3, control tokens at ids 3-13) are SentencePiece BPE,
converted as Llama's are; ``tekken.json`` (``tekken.py`` = T) holds tiktoken ranks whose ids follow
``default_num_special_tokens`` specials, cut to ``default_vocab_size`` (T L219, L485, L665-670). Checking the result
against mistral_common itself (:func:`check`) needs the ``tokenizer`` extra.
"""

from __future__ import annotations

import base64
import binascii
import importlib.util
import json
from pathlib import Path
from typing import Any

from converters.llama import tokenizer as spm
from harness.errors import ConversionError
from harness.io.source_files import read_text

__all__ = ["EXTRA", "NAMES", "available", "check", "convert_tokenizer", "find"]

EXTRA = "pip install 'convparity[tokenizer]'"
NAMES = ("tokenizer.model", "tokenizer.model.v3", "tekken.json")
# T L121-143: the specials of a v3/v7 file without a list, then <SPECIAL_i> up to default_num_special_tokens.
LEGACY_SPECIAL = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                  "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]",
                  "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]"]
_VERSIONS = ("v3", "v7", "v11", "v13", "v15")  # tekken versions; from v11 on the file lists its specials (T L311)


def find(folder: Path) -> Path | None:
    """The one tokenizer file beside the weights (mistral-inference ``main.py`` refuses several), or None."""
    found = [folder / n for n in NAMES if (folder / n).is_file()]
    if len(found) > 1:
        raise ConversionError(f"{folder} holds several tokenizers ({', '.join(p.name for p in found)}); upstream "
                              "refuses that: keep the one the model was trained with")
    return found[0] if found else None


def convert_tokenizer(file: Path, vocab_size: int, verify: bool = False) -> dict[str, bytes]:
    """The transformers tokenizer files for ``file``; its size must be params.json's ``vocab_size`` (fact 11).
    ``verify`` runs :func:`check` on the result."""
    if file.suffix != ".json":
        files = spm.convert_tokenizer(file, vocab_size)
    else:
        tokenizer = _tekken(file, vocab_size)
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
                  "unk_token": "<unk>", "clean_up_tokenization_spaces": False}
        files = {"tokenizer.json": tokenizer.to_str().encode(), "tokenizer_config.json": json.dumps(config).encode()}
    if verify:
        check(file, files["tokenizer.json"])
    return files


def available() -> bool:
    """Whether mistral_common, which :func:`check` compares against, is installed."""
    return importlib.util.find_spec("mistral_common") is not None


def check(file: Path, tokenizer_json: bytes, texts: tuple[str, ...] = spm.SAMPLES) -> None:
    """Encode ``texts`` with mistral_common (``encode(text, bos=True, eos=False)``) and with the converted tokenizer;
    ConversionError on any difference, or naming the extra when mistral_common is missing."""
    if not available():
        raise ConversionError(f"checking {file} against Mistral's tokenizer needs mistral_common; {EXTRA}")
    from mistral_common.tokens.tokenizers.sentencepiece import SentencePieceTokenizer
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer
    from tokenizers import Tokenizer

    # the tokenizer MistralTokenizer.from_file wraps (fact 11), without the instruct layer's checks of control tokens
    original = Tekkenizer.from_file(file) if file.suffix == ".json" else SentencePieceTokenizer(str(file))
    converted = Tokenizer.from_str(tokenizer_json.decode())
    for text in texts:
        want, got = original.encode(text, bos=True, eos=False), converted.encode(text).ids
        if got != want:
            raise ConversionError(f"{file}: the converted tokenizer encodes {text!r} as {got[:16]}, mistral_common "
                                  f"as {want[:16]}")
        if original.decode(want) == text and converted.decode(got, skip_special_tokens=True) != text:
            raise ConversionError(f"{file}: the converted tokenizer does not decode {text!r} back")


def _tekken(file: Path, vocab_size: int) -> Any:
    """``Tekkenizer.from_file`` (T L273-340) and ``__init__`` (T L193-245), as a byte-level BPE."""
    try:
        data = json.loads(read_text(file, "tekken JSON"))
        config, vocab = data["config"], data["vocab"]
        version, pattern = config["version"], config["pattern"]
        n_special, size = int(config["default_num_special_tokens"]), int(config["default_vocab_size"])
        ranks = {base64.b64decode(v["token_bytes"], validate=True): int(v["rank"]) for v in vocab[:size - n_special]}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, binascii.Error) as err:
        raise ConversionError(f"{file} is not a tekken tokenizer ({type(err).__name__}: {err}); expected config "
                              "{pattern, default_vocab_size, default_num_special_tokens, version} and a vocab of "
                              "{rank, token_bytes}") from None
    if version not in _VERSIONS:
        raise ConversionError(f"{file}: tekken version {version!r}; known: {', '.join(_VERSIONS)}")
    if size != vocab_size:
        raise ConversionError(f"{file}: default_vocab_size {size}, but params.json vocab_size is {vocab_size}; "
                              "upstream needs them equal (fact 11)")
    if sorted(ranks.values()) != list(range(size - n_special)):
        raise ConversionError(f"{file}: the first {size - n_special} vocab entries must hold ranks 0 .. "
                              f"{size - n_special - 1}, one per token (T L672-679)")
    listed = data.get("special_tokens")
    if listed is None and version not in ("v3", "v7"):
        raise ConversionError(f"{file}: a tekken {version} file must list its special_tokens (T L309-315)")
    names = [t["token_str"] for t in listed] if listed is not None else LEGACY_SPECIAL
    names += [f"<SPECIAL_{i}>" for i in range(len(names), n_special)]
    if len(set(names)) != len(names) or len(names) != n_special or "<s>" not in names or \
            [t["rank"] for t in listed or []] != list(range(len(listed or []))):
        raise ConversionError(f"{file}: {len(names)} special tokens for default_num_special_tokens {n_special}; "
                              "expected each named once, <s> among them, ranked in order (T L223-232)")
    return spm.byte_level_bpe(ranks, pattern, {name: i for i, name in enumerate(names)}, "<s>", file,
                              offset=n_special)
