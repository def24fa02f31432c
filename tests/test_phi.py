"""Phi: parity over a sweep of configs, layouts and containers; the old script's Wqkv trap; bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from converters.phi.convert import CONFIG, KEYS
from converters.phi.source import CONTAINERS, LAYOUTS, SIZES
from harness.cli import main
from harness.errors import ConversionError
from harness.io.tensor_store import TensorStore
from harness.mapping.conversion import SourceCheckpoint
from harness.mapping.rules import RenameAt
from harness.parity.parity import load_converted, make_tokens, run_parity
from harness.pipeline import convert_checkpoint
from harness.registry import family

PHI = family("phi")


@st.composite
def configs(draw: st.DrawFn) -> dict:
    kv = draw(st.sampled_from([1, 2, 4]))
    heads = kv * draw(st.sampled_from([1, 2]))  # MQA, GQA and full attention
    head_dim = draw(st.sampled_from([6, 8, 10, 12, 16]))
    return dict(
        n_embd=heads * head_dim, n_head=heads, n_head_kv=draw(st.sampled_from([kv, None])) if kv == heads else kv,
        # even rotary_dim <= head_dim, or above it (the config class clamps it to head_dim)
        rotary_dim=draw(st.sampled_from([2 * i for i in range(1, head_dim // 2 + 1)] + [32])),
        n_inner=draw(st.sampled_from([None, 24, 40])), n_layer=draw(st.integers(1, 3)),
        vocab_size=draw(st.sampled_from([64, 100, 128, 200])), pad_vocab_size_multiple=draw(st.sampled_from([1, 64])),
        activation_function=draw(st.sampled_from(["gelu_new", "gelu", "gelu_pytorch_tanh", "relu"])),
        layer_norm_epsilon=draw(st.sampled_from([1e-5, 1e-6])),
    )


def _convert(tmp: Path, config: dict, container: str, layout: str, dtype: torch.dtype = torch.float32
             ) -> tuple[SourceCheckpoint, Path]:
    source = PHI.tiny(0, layout=layout, **config)
    if dtype != torch.float32:  # the released checkpoints are stored in float16
        source = SourceCheckpoint(source.config, TensorStore.from_dict({k: t.to(dtype) for k, t in
                                                                        source.tensors.items()}), layout)
    PHI.write(source, tmp / "source", container=container)
    convert_checkpoint(PHI, tmp / "source", tmp / "hf")
    return PHI.read(tmp / "source"), tmp / "hf"


def _parity(source: SourceCheckpoint, model, dtype: str = "float32"):
    vocab = model.config.vocab_size
    return run_parity(PHI, "sweep", source, model, "cpu", dtype, make_tokens(vocab, seq=32))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=configs(), container=st.sampled_from(CONTAINERS), layout=st.sampled_from(LAYOUTS))
def test_parity_over_configs_layouts_and_containers(tmp_path_factory: pytest.TempPathFactory, config: dict,
                                                    container: str, layout: str) -> None:
    source, out = _convert(tmp_path_factory.mktemp("sweep"), config, container, layout)
    model = load_converted(out, "cpu", "float32")
    rows = PHI.shapes(config)["transformer.embd.wte.weight"][0]
    assert model.config.vocab_size == rows  # the padded rows, never cut
    head_dim = config["n_embd"] // config["n_head"]
    assert model.model.layers[0].self_attn.rotary_ndims == min(config["rotary_dim"], head_dim)
    result = _parity(source, model)
    assert result.passed, (config, layout, result.violations)


def test_float16_checkpoint_converts_and_matches_in_float16(tmp_path: Path) -> None:
    source, out = _convert(tmp_path, dict(n_embd=40, n_head=4, rotary_dim=4, n_layer=2), "shards", "phi-msft",
                           torch.float16)
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
    model = load_converted(out, "cpu", "float16")
    result = _parity(source, model, "float16")
    assert result.passed, result.violations


def test_old_script_interleaved_wqkv_reshuffle_is_caught(tmp_path: Path) -> None:
    """convert_phi_weights_to_hf.py did view(3, heads, -1, hidden).transpose(0, 1) on Wqkv: wrong for Phi."""
    source, out = _convert(tmp_path, dict(n_layer=2), "bin", "phi-msft")
    model = load_converted(out, "cpu", "float32")
    assert _parity(source, model).passed
    heads, state = model.config.num_attention_heads, model.state_dict()
    for i in range(model.config.num_hidden_layers):
        for p in ("weight", "bias"):
            names = [f"model.layers.{i}.self_attn.{x}_proj.{p}" for x in "qkv"]
            fused = torch.cat([state[n] for n in names])
            rest = fused.shape[1:]
            shuffled = fused.view(3, heads, -1, *rest).transpose(0, 1).reshape(fused.shape)
            state |= dict(zip(names, shuffled.chunk(3), strict=True))
    model.load_state_dict(state)
    result = _parity(source, model)
    assert not result.passed and result.metrics.max_abs > 0.1, result.metrics


def test_partial_rotary_factor_gives_exactly_rotary_dim() -> None:
    pairs = [(r, h) for h in range(2, 130) for r in range(2, h + 1, 2)]
    assert any(int(h * (r / h)) < r for r, h in pairs)  # the plain quotient rounds down for some of them
    for rotary_dim, head_dim in pairs:
        rope = CONFIG.to_target(dict(n_embd=head_dim, n_head=1, n_layer=1, vocab_size=64,
                                     rotary_dim=rotary_dim))["rope_parameters"]
        assert int(head_dim * rope["partial_rotary_factor"]) == rotary_dim  # tf5 modeling_phi.py:168
        assert rope["partial_rotary_factor"] <= rotary_dim / head_dim + 1e-12


@pytest.mark.parametrize(("size", "factor", "inner"), [("phi-1", 0.5, 8192), ("phi-1.5", 0.5, 8192),
                                                       ("phi-2", 0.4, 10240)])
def test_released_sizes_map_to_the_published_transformers_configs(size: str, factor: float, inner: int) -> None:
    hf = CONFIG.to_target(SIZES[size])
    assert hf["rope_parameters"]["partial_rotary_factor"] == factor
    assert (hf["intermediate_size"], hf["vocab_size"], hf["model_type"]) == (inner, 51200, "phi")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("container", CONTAINERS)
def test_read_inverts_write(tmp_path: Path, layout: str, container: str) -> None:
    source = PHI.tiny(1, layout=layout, n_layer=3)
    PHI.write(source, tmp_path, container=container)
    back = PHI.read(tmp_path)
    assert (back.config, back.layout, sorted(back.tensors)) == (source.config, layout, sorted(source.tensors))
    assert all(torch.equal(back.tensors[k], source.tensors[k]) for k in source.tensors)


def test_mixformer_head_index_follows_n_layer_and_inverts() -> None:
    source = PHI.tiny(2, layout="mixformer-sequential", n_layer=3)
    converted = PHI.convert(source)
    assert {"layers.4.linear.bias", "layers.1.mixer.Wqkv.weight"} <= set(source.tensors)
    back = KEYS["mixformer-sequential"].invert(dict(converted.tensors()), converted.dims)
    assert sorted(back) == sorted(source.tensors)
    assert all(torch.equal(back[k], source.tensors[k]) for k in back)
    with pytest.raises(ValueError, match="must carry"):
        RenameAt("layers.{layer}.ln.weight", "model.final_layernorm.weight", at="head")


def _cli_error(capsys: pytest.CaptureFixture, *args: str) -> str:
    assert main(["convert", "phi", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def source_dir(tmp_path: Path) -> Path:
    PHI.write(PHI.tiny(0), tmp_path / "src")
    return tmp_path / "src"


def _edit_weights(source_dir: Path, edit) -> None:
    tensors = torch.load(source_dir / "pytorch_model.bin", weights_only=True)
    edit(tensors)
    torch.save(tensors, source_dir / "pytorch_model.bin")


def _edit_config(source_dir: Path, **fields) -> None:
    config = json.loads((source_dir / "config.json").read_text())
    (source_dir / "config.json").write_text(json.dumps({**config, **fields}))


@pytest.mark.parametrize(("edit", "message"), [
    (lambda t: t.pop("transformer.h.1.mixer.Wqkv.bias"), "missing in source: transformer.h.1.mixer.Wqkv.bias"),
    (lambda t: t.update(extra=torch.zeros(1)), "unmatched in source: extra"),
    (lambda t: t.update({"lm_head.ln.bias": torch.zeros(5)}),
     r"mis-shaped: lm_head.ln.bias is \(5,\), expected \(32,\)"),
    (lambda t: t.update({"transformer.h.0.mixer.Wqkv.weight": torch.zeros(32, 32)}),
     r"transformer.h.0.mixer.Wqkv.weight is \(32, 32\), expected \(96, 32\)"),
])
def test_bad_tensors_get_one_line_naming_the_key(source_dir: Path, capsys, edit, message: str) -> None:
    _edit_weights(source_dir, edit)
    out = source_dir.parent / "out"
    assert re.search(message, _cli_error(capsys, str(source_dir), str(out)))
    assert not out.exists() and [p.name for p in source_dir.parent.iterdir()] == ["src"]


@pytest.mark.parametrize(("fields", "message"), [
    (dict(hidden_size=32), r"unknown field\(s\) \['hidden_size'\]"),
    (dict(model_type="phi"), "model_type 'phi' is not an original Phi layout"),
    (dict(tie_word_embeddings=True), "tie_word_embeddings is true"),
    (dict(n_head=3), r"config.json: n_embd 32 is not a multiple of n_head 3; out_proj is Linear"),
])
def test_bad_configs_get_one_line(source_dir: Path, capsys, fields: dict, message: str) -> None:
    _edit_config(source_dir, **fields)
    out = source_dir.parent / "out"
    assert re.search(message, _cli_error(capsys, str(source_dir), str(out)))
    assert not out.exists()


def test_bad_paths_get_one_line(source_dir: Path, tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "out")
    (tmp_path / "empty").mkdir()
    assert "expected config.json beside the weights" in _cli_error(capsys, str(tmp_path / "empty"), out)
    (source_dir / "config.json").rename(tmp_path / "moved.json")
    assert "expected config.json beside the weights" in _cli_error(capsys, str(source_dir), out)
    assert main(["convert", "phi", str(source_dir), out, "--config", str(tmp_path / "moved.json"), "--quiet"]) == 0
    assert "already exists" in _cli_error(capsys, str(source_dir), out)


def test_ambiguous_or_incomplete_containers_are_rejected(source_dir: Path, tmp_path: Path) -> None:
    PHI.write(PHI.tiny(0), source_dir, container="safetensors")
    with pytest.raises(ConversionError, match="several weight containers"):
        PHI.read(source_dir)
    PHI.write(PHI.tiny(0), tmp_path / "shards", container="shards")
    (tmp_path / "shards" / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ConversionError, match=r"names shard\(s\) \['model-00002-of-00002.safetensors'\]"):
        PHI.read(tmp_path / "shards")


def test_cli_check_succeeds(capsys) -> None:
    assert main(["check", "phi", "--dtypes", "float32", "--devices", "cpu"]) == 0
    assert "0 failed" in capsys.readouterr().out
