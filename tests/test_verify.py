"""``convparity verify`` and the streamed transformers model under it, on every family's tiny models.

- the streamed model (built empty, loaded one unit at a time through transformers' own loading) gives the
  logits of ``from_pretrained`` bit for bit, for float32 and bfloat16 checkpoints: this pins what it relies on
  in transformers' internals, on whichever version is installed (``tox -e tf4`` and ``tox -e tf5``);
- verify passes on the conversion of every upstream oracle case, within 1e-4 of the logit scale or tighter,
  and on every ``check`` case in float32 compute (bfloat16 compute: nothing beyond its bound, INCONCLUSIVE);
- verify fails on a conversion with one tensor of one block altered after the fact (rows permuted, scaled,
  swapped with another of the same shape), naming that block;
- the CLI (``verify``, ``--json``, ``--report``, ``--input-ids``, ``--text``, bad input, ``convert --verify``),
  the lazy upcast the reference reads through, and CUDA (skipped with the reason where absent).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from harness.cli import main
from harness.errors import ConversionError
from harness.mapping.output import write_converted
from harness.parity.localise import NO_CATALOGUE
from harness.parity.parity import UpcastTensors, load_converted, make_tokens
from harness.parity.points import unsupported
from harness.parity.streamed_model import StreamedModel
from harness.parity.verify import RESOLUTION, read_input_ids, verify
from harness.registry import families

FAMILIES = families()
GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "upstream"
UPSTREAM = [(f, d) for f in FAMILIES for d in sorted((GOLDEN / f).glob("case-*"))]
CASES = [(f, c) for f, fam in FAMILIES.items() for c in fam.cases]
FIRST = [(f, next(iter(fam.cases))) for f, fam in FAMILIES.items()]
ALTERATIONS = ("permute-rows", "scale", "swap")
# Every case as converted (float32) and each family's first case cast to bfloat16 on conversion (the narrow load path).
STORAGE = [(f, c, "float32") for f, c in CASES] + [(f, c, "bfloat16") for f, c in FIRST]
COMPUTE = [(f, c, "float32") for f, c in CASES] + [(f, c, "bfloat16") for f, c in FIRST]


@pytest.mark.parametrize(("family", "case", "storage"), STORAGE, ids=[f"{f}-{c}-{s}" for f, c, s in STORAGE])
def test_streamed_model_equals_from_pretrained_bit_for_bit(family: str, case: str, storage: str, tmp_path: Path,
                                                           convparity_round_trip: Callable) -> None:
    rt = convparity_round_trip(family, case)
    model_dir = rt.model_dir
    if storage != "float32":
        model_dir = tmp_path / "hf"
        write_converted(FAMILIES[family].convert(rt.source), model_dir, dtype=storage)
    tokens = make_tokens(rt.vocab_size)
    streamed = StreamedModel(model_dir, loading=FAMILIES[family].loading)
    with torch.no_grad():
        expected = load_converted(model_dir, "cpu", "float32", FAMILIES[family])(tokens).logits
    out = streamed(tokens)
    assert torch.equal(out.logits, expected.float())
    assert torch.equal(streamed(tokens).logits, out.logits)  # reloads every unit: same bits the second time
    assert len(out.block_states) == len(streamed.block_names)
    assert all(p.device.type == "meta" for p in streamed.model.parameters())  # everything freed after the run


@pytest.mark.parametrize(("family", "case_dir"), UPSTREAM, ids=[f"{f}-{d.name}" for f, d in UPSTREAM])
def test_verify_passes_on_upstream_oracles(family: str, case_dir: Path, tmp_path: Path) -> None:
    fam = FAMILIES[family]
    meta = json.loads((case_dir / "meta.json").read_text())
    options = {k: meta[k] for k in fam.upstream_options}
    write_converted(fam.convert(fam.read(case_dir / "source", **options)), tmp_path / "hf")
    tokens, lengths = read_input_ids(case_dir / "meta.json")
    result = verify(fam, case_dir / "source", tmp_path / "hf", tokens=tokens, lengths=lengths, **options)
    assert result.passed, result.violations
    assert result.logits is not None and result.logits.bound <= 1e-4


@pytest.mark.parametrize(("family", "case", "compute"), COMPUTE, ids=[f"{f}-{c}-{d}" for f, c, d in COMPUTE])
def test_verify_passes_on_check_cases(family: str, case: str, compute: str, convparity_round_trip: Callable) -> None:
    """float32 compute PASSes; bfloat16 compute finds nothing either, but its bound is too coarse to have seen the
    catalogue's smallest faults, so it says INCONCLUSIVE rather than PASS."""
    rt = convparity_round_trip(family, case)
    result = verify(FAMILIES[family], _source(rt), rt.model_dir, compute_dtype=compute)
    assert not result.violations
    assert result.verdict == ("PASS" if compute == "float32" else "INCONCLUSIVE"), result.resolution
    assert result.logits is not None and result.logits.rel <= result.logits.bound / 2  # never at the edge


@pytest.mark.parametrize("alteration", ALTERATIONS)
@pytest.mark.parametrize(("family", "case"), FIRST, ids=[f"{f}-{c}" for f, c in FIRST])
def test_verify_fails_on_one_altered_tensor_and_names_its_block(family: str, case: str, alteration: str, tmp_path: Path,
                                                                convparity_round_trip: Callable) -> None:
    rt = convparity_round_trip(family, case)
    block = StreamedModel(rt.model_dir, loading=FAMILIES[family].loading).block_names[-1]
    altered = _alter(rt.model_dir, tmp_path / "hf", block, alteration)
    result = verify(FAMILIES[family], _source(rt), altered)
    assert result.verdict == "FAIL"
    assert result.first_divergent == block
    if alteration == "scale":  # the smallest fault verify claims to see lands well above its resolution
        assert next(c for c in result.blocks if c.name == block).rel >= 3 * RESOLUTION
    assert result.violations[0].startswith(f"first divergent block {block}: max abs ")
    if unsupported() is not None:  # transformers 4.x: diagnosis says it cannot run rather than misplace a bug
        assert result.diagnosis == unsupported()
        return
    # teacher-forced localisation names a sub-module inside that block, and says why it names no likely bug
    assert result.diagnosis is not None and f" ({block}." in result.diagnosis.split(" disagrees")[0]
    assert result.diagnosis.endswith(NO_CATALOGUE)


def test_cli_exits_1_on_a_divergence_and_names_the_block(tmp_path: Path, convparity_round_trip: Callable,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    rt = convparity_round_trip("llama", next(iter(FAMILIES["llama"].cases)))
    altered = _alter(rt.model_dir, tmp_path / "hf", "model.layers.0", "scale")
    assert main(["verify", "llama", str(_source(rt)), str(altered)]) == 1
    out = capsys.readouterr().out
    assert "\nFAIL: first divergent block model.layers.0: max abs " in out and " at batch " in out


def test_cli_verify_writes_json_and_report(tmp_path: Path, convparity_round_trip: Callable,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    rt = convparity_round_trip("mixtral", "gqa")
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps([[5, 9, 3, 7, 1, 2], [4, 4, 8]]))  # ragged: right-padded, padding not compared
    argv = ["verify", "mixtral", str(_source(rt)), str(rt.model_dir), "--input-ids", str(ids),
            "--json", str(tmp_path / "v.json"), "--report", str(tmp_path / "v.md")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "model.layers.1" in out and "\nPASS: logits within" in out
    document = json.loads((tmp_path / "v.json").read_text())
    assert document["schema"] == "convparity/1" and document["command"] == "verify"
    record = document["results"][0]
    assert record["passed"] and record["tokens_shape"] == [2, 6] and len(record["blocks"]) == 2
    assert document["environment"]["transformers"] and record["bound"]["noise_dtype"] == "float64"
    assert "**PASS**" in (tmp_path / "v.md").read_text()


def test_cli_text_uses_the_converted_tokenizer(tmp_path: Path, convparity_round_trip: Callable,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    rt = convparity_round_trip("phi", "gqa")
    source, hf = _source(rt), tmp_path / "hf"
    argv = ["verify", "phi", str(source), str(hf), "--text", "the cat sat", "--text", "a dog"]
    write_converted(FAMILIES["phi"].convert(rt.source), hf)
    assert main(argv) == 2
    assert "--text needs a tokenizer in" in capsys.readouterr().err
    words = {w: i for i, w in enumerate(["[UNK]", "the", "cat", "sat", "a", "dog"])}
    tokenizer = Tokenizer(models.WordLevel(words, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer).save_pretrained(hf)
    assert main(argv) == 0
    assert "2 x 3 token ids of 2 text(s)" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [
    (["{src}", "{tmp}/nowhere"], "is not a transformers model directory: no config.json"),
    (["{tmp}/nothing", "{hf}"], "does not exist"),
    (["{src}", "{hf}", "--input-ids", "{tmp}/ids.json"], "expected non-negative token ids"),
    (["{src}", "{hf}", "--seq-len", "0"], "--batch and --seq-len must be positive"),
    (["{src}", "{tmp}/extra"], "does not load cleanly: unexpected keys extra.weight"),
    (["{src}", "{tmp}/missing"], "does not load cleanly: missing in the checkpoint: model.norm.weight"),
], ids=["no-config", "no-source", "bad-ids", "seq-len", "unexpected-key", "missing-key"])
def test_cli_bad_input_is_one_line_and_exit_2(argv: list[str], message: str, tmp_path: Path,
                                               convparity_round_trip: Callable,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    rt = convparity_round_trip("mixtral", "gqa")
    (tmp_path / "ids.json").write_text('{"input_ids": [[1, -2]]}')
    tensors = load_file(rt.model_dir / "model.safetensors")
    for name, changed in [("extra", tensors | {"extra.weight": torch.ones(2)}),
                          ("missing", {k: t for k, t in tensors.items() if k != "model.norm.weight"})]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text((rt.model_dir / "config.json").read_text())
        save_file(changed, tmp_path / name / "model.safetensors")
    args = [a.format(src=_source(rt), hf=rt.model_dir, tmp=tmp_path) for a in argv]
    assert main(["verify", "mixtral", *args]) == 2
    last = capsys.readouterr().err.splitlines()[-1]  # after verify's progress lines
    assert last.startswith("convparity: error: ") and message in last


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cli_cuda_without_a_device_says_why(convparity_round_trip: Callable,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    rt = convparity_round_trip("mixtral", "gqa")
    assert main(["verify", "mixtral", str(_source(rt)), str(rt.model_dir), "--device", "cuda"]) == 2
    assert "--device cuda: no CUDA device" in capsys.readouterr().err


def test_cli_convert_then_verify(tmp_path: Path, convparity_round_trip: Callable,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    rt = convparity_round_trip("rwkv", "base")
    assert main(["convert", "rwkv", str(_source(rt)), str(tmp_path / "out"), "--verify", "--quiet",
                 "--seq-len", "8"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"wrote {tmp_path / 'out'}") and "rwkv.blocks.0" in out and "\nPASS: " in out


@pytest.mark.parametrize("layout", ["sharded", "bin"])
def test_verify_reads_sharded_safetensors_and_pytorch_bin_directories(layout: str, tmp_path: Path,
                                                                       convparity_round_trip: Callable) -> None:
    rt = convparity_round_trip("gemma", "mqa")  # tied embedding and head
    out = tmp_path / layout
    if layout == "sharded":
        write_converted(FAMILIES["gemma"].convert(rt.source), out, max_shard_size=20_000)
        assert (out / "model.safetensors.index.json").is_file()
    else:
        out.mkdir()
        (out / "config.json").write_text((rt.model_dir / "config.json").read_text())
        torch.save(load_file(rt.model_dir / "model.safetensors"), out / "pytorch_model.bin")
    result = verify(FAMILIES["gemma"], _source(rt), out)
    assert result.passed, result.violations


def test_read_input_ids_accepts_lists_objects_and_safetensors(tmp_path: Path) -> None:
    (tmp_path / "flat.json").write_text("[3, 1, 2]")
    assert read_input_ids(tmp_path / "flat.json")[0].tolist() == [[3, 1, 2]]
    save_file({"input_ids": torch.tensor([[1, 2], [3, 4]])}, tmp_path / "ids.safetensors")
    tokens, lengths = read_input_ids(tmp_path / "ids.safetensors")
    assert tokens.tolist() == [[1, 2], [3, 4]] and lengths == [2, 2]
    (tmp_path / "bad.json").write_text("[[1.5]]")
    with pytest.raises(ConversionError, match="expected non-negative token ids"):
        read_input_ids(tmp_path / "bad.json")


def test_upcast_tensors_reads_only_what_is_asked_and_caches_only_rereads() -> None:
    reads: list[str] = []
    store = {k: torch.ones(4, dtype=torch.bfloat16) for k in ("a", "b")} | {"i": torch.ones(2, dtype=torch.int8)}

    class Counting(dict):
        def __getitem__(self, k: str) -> torch.Tensor:
            reads.append(k)
            return super().__getitem__(k)

    tensors = UpcastTensors(Counting(store), "cpu", torch.float32, cache_bytes=16)
    assert reads == [] and "a" in tensors and len(tensors) == 3
    assert tensors["a"].dtype == torch.float32 and tensors["i"].dtype == torch.int8
    _ = [tensors["a"] for _ in range(3)]
    assert reads == ["a", "i", "a"]  # first read not kept; the second is, and serves the third


@pytest.mark.cuda
def test_verify_streams_blocks_to_cuda(convparity_round_trip: Callable) -> None:
    rt = convparity_round_trip("mixtral", "gqa")
    result = verify(FAMILIES["mixtral"], _source(rt), rt.model_dir, device="cuda")
    assert result.passed, result.violations


def _source(rt: object) -> Path:
    return rt.model_dir.parent / "source"  # type: ignore[attr-defined] - where check.round_trip writes it


def _alter(model_dir: Path, out: Path, block: str, how: str) -> Path:
    """A copy of ``model_dir`` with one tensor of ``block`` changed after the fact."""
    out.mkdir()
    (out / "config.json").write_text((model_dir / "config.json").read_text())
    tensors = load_file(model_dir / "model.safetensors")
    mine = sorted((k for k in tensors if k.startswith(block + ".")), key=lambda k: -tensors[k].numel())
    name = next(k for k in mine if tensors[k].dim() == 2)  # the block's largest matrix
    if how == "permute-rows":
        tensors[name] = tensors[name].roll(1, dims=0)
    elif how == "scale":
        tensors[name] = tensors[name] * 1.01
    else:
        a, b = next((a, b) for a in mine for b in mine
                    if a < b and tensors[a].shape == tensors[b].shape and not torch.equal(tensors[a], tensors[b]))
        tensors[a], tensors[b] = tensors[b], tensors[a]
    save_file({k: t.contiguous() for k, t in tensors.items()}, out / "model.safetensors")
    return out
