"""Mixtral: parity over a sweep of configs, every container and layout, and clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.cli import main
from harness.errors import ConversionError
from harness.parity.parity import load_converted, make_tokens, run_parity
from harness.pipeline import convert_checkpoint
from harness.registry import family

MIXTRAL = family("mixtral")


@st.composite
def configs(draw: st.DrawFn) -> dict:
    kv = draw(st.sampled_from([1, 2, 4]))
    heads = kv * draw(st.sampled_from([1, 2, 4]))  # MQA, GQA and full attention
    experts = draw(st.integers(2, 8))
    return dict(
        dim=draw(st.sampled_from([16, 32, 48])), n_heads=heads, n_kv_heads=kv,
        head_dim=draw(st.sampled_from([4, 8, 16])),  # n_heads * head_dim rarely equals dim
        hidden_dim=draw(st.sampled_from([24, 40])), n_layers=draw(st.integers(1, 3)),
        vocab_size=draw(st.sampled_from([61, 128, 200])),
        norm_eps=draw(st.sampled_from([1e-5, 1e-6, 1e-3])),
        rope_theta=draw(st.sampled_from([None, 1e4, 5e5, 1e6])),
        moe=dict(num_experts=experts, num_experts_per_tok=draw(st.integers(1, min(3, experts)))),
    )


def _convert_and_check(tmp: Path, config: dict, container: str, layout: str, seed: int = 0):
    source_dir, out = tmp / "source", tmp / "hf"
    MIXTRAL.write(MIXTRAL.tiny(seed, layout=layout, **config), source_dir, container=container)
    convert_checkpoint(MIXTRAL, source_dir, out)
    source = MIXTRAL.read(source_dir)
    model = load_converted(out, "cpu", "float32")
    tokens = make_tokens(source.config["vocab_size"], batch=2, seq=32, seed=seed)
    return run_parity(MIXTRAL, "sweep", source, model, "cpu", "float32", tokens)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=configs(), container=st.sampled_from(["pth", "pt-shards", "safetensors"]),
       layout=st.sampled_from(["experts", "fused"]))
def test_parity_over_configs_containers_and_layouts(tmp_path_factory: pytest.TempPathFactory, config: dict,
                                                    container: str, layout: str) -> None:
    result = _convert_and_check(tmp_path_factory.mktemp("sweep"), config, container, layout)
    assert result.passed, (config, result.violations)


def test_absent_rope_theta_means_1e6_and_the_old_default_is_caught(tmp_path: Path) -> None:
    config = dict(rope_theta=None, n_layers=2)
    assert _convert_and_check(tmp_path / "ok", config, "pth", "experts").passed
    hf = json.loads((tmp_path / "ok" / "hf" / "config.json").read_text())
    assert hf["rope_theta"] == 1e6
    # transformers' old script defaulted to 10000: the same weights with that theta must fail parity.
    hf["rope_theta"] = 10000.0
    (tmp_path / "ok" / "hf" / "config.json").write_text(json.dumps(hf))
    model = load_converted(tmp_path / "ok" / "hf", "cpu", "float32")
    source = MIXTRAL.read(tmp_path / "ok" / "source")
    result = run_parity(MIXTRAL, "theta", source, model, "cpu", "float32", make_tokens(128, seq=32))
    assert not result.passed


def test_output_is_sharded_with_an_index_and_casts_dtype(tmp_path: Path) -> None:
    MIXTRAL.write(MIXTRAL.tiny(0), tmp_path / "src")
    _, plan = convert_checkpoint(MIXTRAL, tmp_path / "src", tmp_path / "out", dtype="bfloat16",
                                 max_shard_size=50_000)
    assert len(plan.filename_to_tensors) > 2
    assert (tmp_path / "out" / "model.safetensors.index.json").exists()
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
    model = load_converted(tmp_path / "out", "cpu", "bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16


def _cli_error(capsys: pytest.CaptureFixture, *args: str) -> str:
    assert main(["convert", "mixtral", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def source_dir(tmp_path: Path) -> Path:
    MIXTRAL.write(MIXTRAL.tiny(0), tmp_path / "src")
    return tmp_path / "src"


def _rewrite(source_dir: Path, edit) -> None:
    tensors = torch.load(source_dir / "consolidated.00.pth", weights_only=True)
    edit(tensors)
    torch.save(tensors, source_dir / "consolidated.00.pth")


@pytest.mark.parametrize(("edit", "message"), [
    (lambda t: t.pop("layers.1.attention.wk.weight"), "missing in source: layers.1.attention.wk.weight"),
    (lambda t: t.update(extra=torch.zeros(1)), "unmatched in source: extra"),
    (lambda t: t.update({"norm.weight": torch.zeros(5)}), r"mis-shaped: norm.weight is \(5,\), expected \(32,\)"),
])
def test_bad_tensors_get_one_line_naming_the_key(source_dir: Path, capsys, edit, message: str) -> None:
    _rewrite(source_dir, edit)
    out = source_dir.parent / "out"
    assert pytest.importorskip("re").search(message, _cli_error(capsys, str(source_dir), str(out)))
    assert not out.exists() and [p.name for p in source_dir.parent.iterdir()] == ["src"]


def test_bad_paths_and_configs_get_one_line(source_dir: Path, tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "out")
    assert "does not exist" in _cli_error(capsys, str(tmp_path / "nope"), out)
    (tmp_path / "empty").mkdir()
    assert "expected params.json beside the weights" in _cli_error(capsys, str(tmp_path / "empty"), out)
    (tmp_path / "exists").mkdir()
    assert "already exists" in _cli_error(capsys, str(source_dir), str(tmp_path / "exists"))
    params = json.loads((source_dir / "params.json").read_text())
    (source_dir / "params.json").write_text(json.dumps({**params, "num_hidden_layers": 2}))
    assert "unknown field(s) ['num_hidden_layers']" in _cli_error(capsys, str(source_dir), out)
    assert not Path(out).exists()


def test_several_containers_in_one_folder_are_ambiguous(source_dir: Path) -> None:
    MIXTRAL.write(MIXTRAL.tiny(0), source_dir, container="safetensors")
    with pytest.raises(ConversionError, match="several weight containers"):
        MIXTRAL.read(source_dir)


def test_cli_convert_and_check_succeed(source_dir: Path, tmp_path: Path, capsys) -> None:
    assert main(["convert", "mixtral", str(source_dir), str(tmp_path / "out"), "--quiet"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["check", "mixtral", "--dtypes", "float32", "--devices", "cpu"]) == 0
    assert "0 failed" in capsys.readouterr().out
