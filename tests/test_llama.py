"""Llama: rank files merged by rule, params.json of three generations, clear errors for bad input, the tokenizer."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from converters.llama.convert import CONFIG
from converters.llama.tokenizer import EXTRA, SAMPLES, check, convert_tokenizer
from harness.cli import main
from harness.errors import ConversionError
from harness.mapping import transforms
from harness.parity.parity import load_converted, make_tokens, run_parity
from harness.pipeline import convert_checkpoint
from harness.registry import family

LLAMA = family("llama")
UPSTREAM = Path(__file__).resolve().parent.parent / "golden" / "upstream" / "llama"


def _written(tmp: Path, container: str = "mp2", **config) -> Path:
    LLAMA.write(LLAMA.tiny(0, **config), tmp / "src", container=container)
    return tmp / "src"


def _rank(folder: Path, r: int, edit) -> None:
    tensors = torch.load(folder / f"consolidated.{r:02d}.pth", weights_only=True)
    edit(tensors)
    torch.save(tensors, folder / f"consolidated.{r:02d}.pth")


def _params(folder: Path, **changes) -> None:
    params = json.loads((folder / "params.json").read_text())
    (folder / "params.json").write_text(json.dumps({**params, **changes}))


def _converted(folder: Path) -> dict[str, torch.Tensor]:
    return dict(LLAMA.convert(LLAMA.read(folder)).tensors())


# ---- bad input: one line naming the file or field, what was expected, what was found ----------------------

@pytest.mark.parametrize(("edit", "message"), [
    (lambda f: (f / "params.json").unlink(), "expected params.json beside the weights in .*; pass --config FILE"),
    (lambda f: [p.unlink() for p in f.glob("*.pth")], r"no weights in .*: expected consolidated.00.pth"),
    (lambda f: (f / "consolidated.01.pth").rename(f / "consolidated.02.pth"),
     r"rank file\(s\) \['consolidated.01.pth'\] missing; found \['consolidated.00.pth', 'consolidated.02.pth'\]"),
    (lambda f: (f / "consolidated.01.pth").rename(f / "model.pth"), r"unexpected weight file\(s\) \['model.pth'\]"),
    (lambda f: _rank(f, 1, lambda t: t.update({"layers.0.attention.wq.weight": torch.zeros(16, 64)})),
     r"consolidated.01.pth: layers.0.attention.wq.weight is \(16, 64\) torch.float32, but consolidated.00.pth has "
     r"\(32, 64\) torch.float32; every rank holds an equal slice \(fairscale; fact 12\)"),
    (lambda f: _rank(f, 1, lambda t: t.pop("layers.1.ffn_norm.weight")),
     r"consolidated.01.pth and consolidated.00.pth hold different tensors \(1, e.g. layers.1.ffn_norm.weight\)"),
])
def test_bad_files_are_refused_when_read(tmp_path: Path, edit, message: str) -> None:
    folder = _written(tmp_path)
    edit(folder)
    with pytest.raises(ConversionError, match=message):
        LLAMA.read(folder)


@pytest.mark.parametrize(("params", "message"), [
    (dict(n_kv_heads=3), r"params.json: n_kv_heads 3 does not divide n_heads 4"),
    (dict(dim=66), r"params.json: dim 66 is not a multiple of n_heads 4"),
    (dict(num_hidden_layers=2), r"params.json: unknown field\(s\) \['num_hidden_layers'\]"),
    # the weights hold FFN 192 (no multiplier); params.json claims x1.3 -> 224 (fact 4)
    (dict(ffn_dim_multiplier=1.3), r"mis-shaped: layers.0.feed_forward.w1.weight is \(2, 96, 64\), expected "
                                   r"\(2, 112, 64\)"),
    (dict(n_kv_heads=2), r"mis-shaped: layers.0.attention.wk.weight is \(2, 32, 64\), expected \(2, 16, 64\)"),
])
def test_params_that_disagree_with_the_weights_are_refused(tmp_path: Path, params: dict, message: str) -> None:
    folder = _written(tmp_path)
    _params(folder, **params)
    with pytest.raises(ConversionError, match=message):
        LLAMA.convert(LLAMA.read(folder))


def test_more_ranks_than_kv_heads_are_refused(tmp_path: Path) -> None:
    folder = _written(tmp_path, "mp4", n_kv_heads=2)  # what fairscale never writes: half a kv head per rank
    with pytest.raises(ConversionError, match=r"params.json: n_kv_heads 2 does not split over 4 rank files"):
        LLAMA.convert(LLAMA.read(folder))


def test_norm_copies_that_differ_between_ranks_fail_the_conversion_and_leave_nothing(tmp_path: Path) -> None:
    folder = _written(tmp_path)
    _rank(folder, 1, lambda t: t["norm.weight"].add_(1e-3))
    out = tmp_path / "out"
    with pytest.raises(ConversionError, match=r"consolidated.01.pth: norm.weight differs from its copy in "
                                              r"consolidated.00.pth \(max \|diff\| 0.001\)"):
        convert_checkpoint(LLAMA, folder, out)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_the_cli_prints_one_line_and_creates_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _written(tmp_path)
    (folder / "consolidated.01.pth").unlink()
    (folder / "consolidated.00.pth").rename(folder / "consolidated.01.pth")
    assert main(["convert", "llama", str(folder), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "['consolidated.00.pth'] missing" in err
    assert not (tmp_path / "out").exists()


def test_a_weights_file_that_is_not_a_rank_file_is_refused(tmp_path: Path) -> None:
    folder = _written(tmp_path)
    (folder / "notes.txt").write_text("x")
    with pytest.raises(ConversionError, match=r"notes.txt is not a rank file; expected consolidated.NN.pth"):
        LLAMA.read(folder / "notes.txt")
    assert LLAMA.read(folder / "consolidated.01.pth").tensors.meta("norm.weight")[0] == (2, 64)


# ---- rank merging -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", [{}, dict(n_heads=8, n_kv_heads=4, vocab_size=512, rope_theta=5e5)],
                         ids=["llama2", "llama3"])
def test_every_model_parallel_degree_converts_to_the_same_tensors(tmp_path: Path, config: dict) -> None:
    one = _converted(_written(tmp_path / "1", "mp1", **config))
    for ranks in (2, 4):
        many = _converted(_written(tmp_path / str(ranks), f"mp{ranks}", **config))
        assert many.keys() == one.keys()
        assert all(torch.equal(many[k], one[k]) for k in one), ranks


def test_the_embedding_is_split_by_columns_in_llama2_and_by_rows_in_llama3(tmp_path: Path) -> None:
    llama2 = _written(tmp_path / "2", "mp2")
    llama3 = _written(tmp_path / "3", "mp2", vocab_size=512, rope_theta=5e5)

    def shape(folder: Path) -> tuple[int, ...]:
        return tuple(torch.load(folder / "consolidated.01.pth", weights_only=True)["tok_embeddings.weight"].shape)

    assert shape(llama2) == (256, 32) and LLAMA.read(llama2).layout == "llama2"  # ParallelEmbedding
    assert shape(llama3) == (256, 64) and LLAMA.read(llama3).layout == "llama3"  # VocabParallelEmbedding
    # The files decide, not params.json: a Llama 2-code checkpoint that states rope_theta (Code Llama) stays llama2.
    _params(llama2, rope_theta=1e6)
    assert LLAMA.read(llama2).layout == "llama2"


def test_upstream_mp2_files_merged_into_one_rank_give_the_same_conversion(tmp_path: Path) -> None:
    source = LLAMA.read(UPSTREAM / "case-llama2-mha-mp2" / "source")
    LLAMA.write(source, tmp_path / "mp1", container="mp1")
    assert sorted(p.name for p in (tmp_path / "mp1").glob("*.pth")) == ["consolidated.00.pth"]
    merged = _converted(tmp_path / "mp1")
    assert all(torch.equal(merged[k], t) for k, t in LLAMA.convert(source).tensors())
    # llama-models' reshard_mp joins every tok_embeddings on dim 0: [512, 32] instead of [256, 64] (fact 12).
    embedding = source.tensors["tok_embeddings.weight"]
    assert transforms.concat_ranks(embedding, 0).shape == (512, 32)
    assert transforms.concat_ranks(embedding, 1).shape == (256, 64)


def test_reading_is_lazy_and_each_tensor_is_merged_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.io.stacked_store as stacked

    folder = _written(tmp_path, "mp4")
    loads: list[str] = []
    real = stacked._load_stacked
    monkeypatch.setattr(stacked, "_load_stacked", lambda files, stores, name, dim, why: loads.append(name) or
                        real(files, stores, name, dim, why))
    source = LLAMA.read(folder)
    converted = LLAMA.convert(source)
    converted.plan()
    assert loads == []  # shapes and dtypes come from the files' headers
    names = [name for name, _ in converted.tensors()]
    assert sorted(loads) == sorted(k for k in source.tensors if k != "rope.freqs") and len(names) == len(loads)


# ---- params.json of each generation -> config.json ------------------------------------------------------------

def test_llama2_defaults_resolve_as_upstream_resolves_them(tmp_path: Path) -> None:
    source = LLAMA.read(UPSTREAM / "case-llama2-ffn-multiplier" / "source")  # no n_kv_heads, rope_theta; vocab -1
    config = LLAMA.convert(source).config
    assert (config["vocab_size"], config["num_key_value_heads"], config["intermediate_size"]) == (288, 4, 224)
    assert config["rope_theta"] == 10000.0 and config["rope_scaling"] is None
    assert config["rope_parameters"] == {"rope_type": "default", "rope_theta": 10000.0}


def test_llama31_rope_scaling_loads_in_transformers(tmp_path: Path) -> None:
    source = LLAMA.read(UPSTREAM / "case-llama31-scaled-rope" / "source")
    convert_checkpoint(LLAMA, UPSTREAM / "case-llama31-scaled-rope" / "source", tmp_path / "hf")
    hf = json.loads((tmp_path / "hf" / "config.json").read_text())
    rope = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    assert hf["rope_scaling"] == {"rope_type": "llama3", **rope}  # transformers 4.x
    assert hf["rope_parameters"] == {"rope_type": "llama3", "rope_theta": 500000.0, **rope}  # 5.x
    model = load_converted(tmp_path / "hf", "cpu", "float32")
    scaling = getattr(model.config, "rope_parameters", None) or model.config.rope_scaling
    assert scaling["rope_type"] == "llama3" and scaling["factor"] == 8.0
    result = run_parity(LLAMA, "llama31", source, model, "cpu", "float32", make_tokens(512, seq=64))
    assert result.passed, result.violations


@given(dim=st.sampled_from([64, 96, 4096, 8192]), multiple_of=st.sampled_from([1, 32, 256, 4096]),
       multiplier=st.sampled_from([None, 0.5, 1.3, 2.0]))
def test_ffn_size_survives_the_inverse_config(dim: int, multiple_of: int, multiplier: float | None) -> None:
    params = dict(dim=dim, n_layers=1, n_heads=8, multiple_of=multiple_of, ffn_dim_multiplier=multiplier,
                  vocab_size=32)
    hf = CONFIG.to_target(params)
    assert CONFIG.to_target(CONFIG.to_source(hf)) == hf


# ---- tokenizer.model -> tokenizer.json ----------------------------------------------------------------------

def _library(name: str):
    return pytest.importorskip(name, reason=f"checking against Meta's tokenizer needs {name}: {EXTRA}")


def _bpe_ranks(text: str, merges: int) -> dict[bytes, int]:
    """tiktoken-style ranks: the 256 bytes, then the most frequent adjacent pairs of ``text``, greedily."""
    ranks = {bytes([b]): b for b in range(256)}
    words = [[bytes([c]) for c in w.encode()] for w in text.split()]
    for _ in range(merges):
        pairs = Counter((a, b) for w in words for a, b in zip(w, w[1:], strict=False))
        (a, b), _ = pairs.most_common(1)[0]
        ranks[a + b] = len(ranks)
        for w in words:
            i = 0
            while i < len(w) - 1:
                w[i:i + 2] = [a + b] if (w[i], w[i + 1]) == (a, b) else w[i:i + 2]
                i += 1
    return ranks


@pytest.mark.parametrize("case", sorted(p.name for p in UPSTREAM.glob("case-*")))
def test_upstream_tokenizers_encode_the_same_both_ways(case: str) -> None:
    model = UPSTREAM / case / "source" / "tokenizer.model"
    _library("tiktoken" if "llama3" in case else "sentencepiece")
    vocab = json.loads((UPSTREAM / case / "meta.json").read_text())["resolved"]["vocab_size"]
    check(model, convert_tokenizer(model, vocab)["tokenizer.json"])


def test_byte_fallback_sentencepiece_and_merging_tiktoken_encode_the_same(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    spm = _library("sentencepiece")
    _library("tiktoken")
    model = io.BytesIO()  # as Meta's: BPE with byte fallback, identity normalisation, no whitespace collapsing
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text.splitlines()), model_writer=model, vocab_size=400,
                                   model_type="bpe", byte_fallback=True, normalization_rule_name="identity",
                                   remove_extra_whitespaces=False, pad_id=-1, minloglevel=2)
    (tmp_path / "sp.model").write_bytes(model.getvalue())
    check(tmp_path / "sp.model", convert_tokenizer(tmp_path / "sp.model", 400)["tokenizer.json"], (*SAMPLES, text))
    ranks = _bpe_ranks(text, 200)
    (tmp_path / "tt.model").write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items()))
    check(tmp_path / "tt.model", convert_tokenizer(tmp_path / "tt.model", 712)["tokenizer.json"], (*SAMPLES, text))


def test_the_output_directory_has_a_tokenizer_transformers_loads(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    source = UPSTREAM / "case-llama3-gqa" / "source"
    converted, _ = convert_checkpoint(LLAMA, source, tmp_path / "hf")
    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in (tmp_path / "hf").iterdir()}
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok("Hi ü").input_ids == [256, *"Hi ü".encode()]  # <|begin_of_text|>, then one token per byte
    assert tok.decode(tok("Hi ü").input_ids, skip_special_tokens=True) == "Hi ü" and len(tok) == 512


def test_tokenizer_problems_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = UPSTREAM / "case-llama2-mha-mp1" / "source" / "tokenizer.model"
    with pytest.raises(ConversionError, match=r"tokenizer.model: 256 words, but output.weight has 300 rows"):
        convert_tokenizer(model, 300)
    (tmp_path / "tokenizer.model").write_text("AAE= 0\nnot a line\n")
    with pytest.raises(ConversionError, match=r"tokenizer.model line 2: expected 'base64 rank', found b'not a line'"):
        convert_tokenizer(tmp_path / "tokenizer.model", 257)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sentencepiece" else real(name))
    with pytest.raises(ConversionError, match=r"needs sentencepiece; pip install 'convparity\[tokenizer\]'"):
        check(model, b"{}")
    with pytest.raises(ConversionError, match=r"--check-tokenizer needs the tokenizer extra"):
        LLAMA.read(model.parent, check_tokenizer=True)
    notes = LLAMA.convert(LLAMA.read(model.parent)).notes
    assert "tokenizer.model -> tokenizer.json (not checked against Meta's library: pip install " in notes[-1]
