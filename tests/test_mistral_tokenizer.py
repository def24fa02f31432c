"""Mistral's tokenizer files -> tokenizer.json, held to mistral_common on the oracle texts and a sweep of strings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from converters.mistral.tokenizer import check, convert_tokenizer, find
from harness.errors import ConversionError
from harness.pipeline import convert_checkpoint
from harness.registry import family

pytest.importorskip("mistral_common", reason="checking against Mistral's tokenizer needs the tokenizer extra")
UPSTREAM = Path(__file__).resolve().parent.parent / "golden" / "upstream" / "mistral"
CASES = sorted(p.name for p in UPSTREAM.glob("case-*"))


def _case(name: str) -> tuple[Path, dict]:
    meta = json.loads((UPSTREAM / name / "meta.json").read_text())
    return find(UPSTREAM / name / "source"), meta


def _v7(tmp_path: Path) -> Path:
    """The oracle's tekken v3 file as a v7 one, its specials listed (two renamed), ranks cut at 400 + 32."""
    data = json.loads((UPSTREAM / "case-nemo-headdim" / "source" / "tekken.json").read_text())
    names = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[THINK]", "[/THINK]"]
    data["config"] |= {"version": "v7", "default_vocab_size": 432}
    data["special_tokens"] = [{"rank": i, "token_str": n, "is_control": True} for i, n in enumerate(names)]
    (tmp_path / "tekken.json").write_text(json.dumps(data))
    return tmp_path / "tekken.json"


@pytest.mark.parametrize("case", CASES)
def test_the_oracle_text_encodes_to_mistral_commons_ids(case: str) -> None:
    from tokenizers import Tokenizer

    file, meta = _case(case)
    converted = Tokenizer.from_str(convert_tokenizer(file, meta["config"]["vocab_size"])["tokenizer.json"].decode())
    assert converted.encode(meta["tokenizer"]["text"]).ids == meta["tokenizer"]["text_ids"]
    assert converted.get_vocab_size() == meta["tokenizer"]["tokenizer_n_words"]


TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)
SOURCES = [*CASES, "tekken-v7"]


@settings(max_examples=40, deadline=None)
@given(texts=st.lists(TEXT, min_size=1, max_size=5), which=st.sampled_from(SOURCES))
def test_any_string_encodes_as_mistral_common_does(tmp_path_factory: pytest.TempPathFactory, texts: list[str],
                                                  which: str) -> None:
    if which == "tekken-v7":
        file, vocab = _v7(tmp_path_factory.mktemp("v7")), 432
    else:
        file, meta = _case(which)
        vocab = meta["config"]["vocab_size"]
    check(file, convert_tokenizer(file, vocab)["tokenizer.json"], tuple(texts))


def test_a_conversion_writes_a_tokenizer_transformers_loads(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    file, meta = _case("case-nemo-headdim")
    convert_checkpoint(family("mistral"), file.parent, tmp_path / "hf")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert loaded(meta["tokenizer"]["text"])["input_ids"] == meta["tokenizer"]["text_ids"]
    assert (loaded.bos_token_id, loaded.eos_token_id) == (1, 2)


def test_tekken_v7_keeps_its_listed_specials_and_cuts_the_vocabulary(tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    converted = Tokenizer.from_str(convert_tokenizer(_v7(tmp_path), 432)["tokenizer.json"].decode())
    assert converted.get_vocab_size() == 432
    assert [converted.token_to_id(t) for t in ("[THINK]", "<SPECIAL_7>", "<SPECIAL_31>")] == [5, 7, 31]


def test_tokenizer_problems_are_one_line(tmp_path: Path) -> None:
    file, _ = _case("case-nemo-headdim")
    with pytest.raises(ConversionError, match="default_vocab_size 512, but params.json vocab_size is 500"):
        convert_tokenizer(file, 500)
    with pytest.raises(ConversionError, match=r"tokenizer.model: 320 words, but output.weight has 321 rows"):
        convert_tokenizer(_case("case-v01-gqa-sliding-window")[0], 321)
    (tmp_path / "tekken.json").write_text('{"config": {"version": "v3"}, "vocab": []}')
    with pytest.raises(ConversionError, match="is not a tekken tokenizer .KeyError: 'pattern'"):
        convert_tokenizer(tmp_path / "tekken.json", 512)
    data = json.loads(file.read_text())
    (tmp_path / "tekken.json").write_text(json.dumps(data | {"config": data["config"] | {"version": "v11"}}))
    with pytest.raises(ConversionError, match="a tekken v11 file must list its special_tokens"):
        convert_tokenizer(tmp_path / "tekken.json", 512)
    shutil.copy(_case("case-v03-safetensors")[0], tmp_path / "tokenizer.model.v3")
    with pytest.raises(ConversionError, match=r"several tokenizers \(tokenizer.model.v3, tekken.json\)"):
        find(tmp_path)
