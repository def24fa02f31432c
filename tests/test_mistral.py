"""Mistral (dense): every params.json variant the oracle README documents, every container, parity over a sweep of
configs, and one-line refusals for bad input and for features no upstream code runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings

from harness.cli import main
from harness.errors import ConversionError
from harness.family.cases import Case
from harness.mapping.conversion import SourceCheckpoint
from harness.parity.parity import load_converted, make_tokens, run_parity
from harness.pipeline import convert_checkpoint
from harness.registry import family
from tests.family_strategies import STRATEGIES

MISTRAL = family("mistral")


def _hf_config(**overrides) -> dict:
    return MISTRAL.convert(MISTRAL.tiny(0, **overrides)).config


@pytest.mark.parametrize(("overrides", "theta"), [
    (dict(rope_theta=None, sliding_window=4096), 1e4),  # v0.1: its release code hard-codes 10000
    (dict(rope_theta=None), 1e6),  # today's default, T L113-116
    (dict(rope_theta=None, sliding_window=None), 1e6),  # a null window is no v0.1 file
    (dict(rope_theta=1e8, sliding_window=4096), 1e8),  # a stated theta always wins
])
def test_rope_theta_defaults_by_code_version(overrides: dict, theta: float) -> None:
    assert _hf_config(**overrides)["rope_theta"] == theta


@pytest.mark.parametrize(("overrides", "window", "types"), [
    (dict(sliding_window=7), 7, None),
    (dict(sliding_window=[7, 7]), 7, None),  # one size for every layer: plain Mistral
    (dict(_sliding_window=[None]), None, None),
    (dict(n_layers=4, _sliding_window=[None, 3]), 3, ["full", "sliding", "full", "sliding"]),
    (dict(n_layers=3, sliding_window=[3, None, None]), 3, ["sliding", "full", "full"]),
])
def test_window_patterns_repeat_over_the_layers(overrides: dict, window, types) -> None:
    config = _hf_config(**overrides)
    assert config["sliding_window"] == window
    if types is None:
        assert config["model_type"] == "mistral" and "layer_types" not in config
    else:
        assert config["model_type"] == "ministral"
        assert config["layer_types"] == [f"{t}_attention" for t in types]


@pytest.mark.parametrize(("params", "message"), [
    (dict(sliding_window=4, _sliding_window=4), "sliding_window and _sliding_window are both set"),
    (dict(n_layers=3, _sliding_window=[4, None]), "n_layers 3 is not a multiple of the window pattern's length 2"),
    (dict(sliding_window=[4, 8]), r"window pattern \[4, 8\] has several sizes"),
    (dict(sliding_window=[]), "sliding_window is \\[\\] .*expected a positive integer, or a list"),
    (dict(sliding_window=0), "sliding_window is 0; expected"),
    (dict(head_dim=7), "head_dim 7 is not a multiple of 2"),
    (dict(n_kv_heads=3), "n_heads 4 is not a multiple of n_kv_heads 3"),
    (dict(max_seq_len=4096), r"unknown field\(s\) \['max_seq_len'\]"),
])
def test_bad_params_are_refused_by_name(params: dict, message: str) -> None:
    with pytest.raises(ConversionError, match=message):
        MISTRAL.convert(MISTRAL.tiny(0, **params))


@pytest.mark.parametrize(("params", "named"), [
    (dict(yarn=dict(factor=8.0, original_max_position_embeddings=16384, beta=32.0, alpha=1.0)), "yarn (YaRN"),
    (dict(llama_4_scaling=dict(original_max_position_embeddings=16384, beta=0.1)), "llama_4_scaling (Llama-4"),
    (dict(quantization=dict(qformat_weight="fp8_e4m3")), "quantization (FP8"),
    (dict(tied_embeddings=True), "tied_embeddings (tied"),
    (dict(moe=dict(num_experts=8, num_experts_per_tok=2)), "convparity convert mixtral"),
    (dict(vision_encoder=dict(hidden_size=1024)), "vision_encoder"),
])
def test_newer_features_are_refused_by_name_with_what_is_supported(params: dict, named: str) -> None:
    with pytest.raises(ConversionError, match="not supported") as err:
        MISTRAL.convert(MISTRAL.tiny(0, **params))
    assert named in str(err.value) and "supported fields: dim, n_layers" in str(err.value)


def test_fp8_scales_are_refused_and_untied_embeddings_accepted() -> None:
    source = MISTRAL.tiny(0)
    tensors = {**dict(source.tensors.items()), "layers.0.attention.wq.qscale_weight": torch.ones(())}
    with pytest.raises(ConversionError, match="qscale_weight/qscale_act tensors"):
        MISTRAL.convert(SourceCheckpoint(source.config, tensors))
    assert _hf_config(tied_embeddings=False)["tie_word_embeddings"] is False


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=STRATEGIES["mistral"])
def test_parity_over_configs_and_containers(tmp_path_factory: pytest.TempPathFactory, case: Case) -> None:
    tmp = tmp_path_factory.mktemp("sweep")
    MISTRAL.write(MISTRAL.tiny(1, **case.config), tmp / "src", container=case.container)
    convert_checkpoint(MISTRAL, tmp / "src", tmp / "hf")
    source = MISTRAL.read(tmp / "src")
    tokens = make_tokens(case.config["vocab_size"], batch=2, seq=20, seed=1)
    result = run_parity(MISTRAL, "sweep", source, load_converted(tmp / "hf", "cpu", "float32"), "cpu", "float32",
                        tokens)
    assert result.passed, (case.config, result.violations)


def _cli_error(capsys: pytest.CaptureFixture, *args: str) -> str:
    assert main(["convert", "mistral", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_folders_get_one_line_and_leave_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    MISTRAL.write(MISTRAL.tiny(0), src, container="sharded")
    (src / "consolidated.safetensors.index.json").unlink()
    (src / "consolidated-00002-of-00003.safetensors").unlink()
    assert "not the number their names give" in _cli_error(capsys, str(src), str(out))
    MISTRAL.write(MISTRAL.tiny(0), src, container="pth")
    assert "several weight containers" in _cli_error(capsys, str(src), str(out))
    params = json.loads((src / "params.json").read_text())
    (tmp_path / "v1").mkdir()
    MISTRAL.write(MISTRAL.tiny(0), tmp_path / "v1", container="pth")
    (tmp_path / "v1" / "params.json").write_text(json.dumps({**params, "yarn": {"factor": 4.0}}))
    assert "yarn (YaRN rope scaling" in _cli_error(capsys, str(tmp_path / "v1"), str(out))
    assert not out.exists()


def test_cli_convert_and_check_succeed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    MISTRAL.write(MISTRAL.tiny(0, rope_theta=None, sliding_window=6), tmp_path / "src", container="pth")
    assert main(["convert", "mistral", str(tmp_path / "src"), str(tmp_path / "out"), "--quiet"]) == 0
    assert json.loads((tmp_path / "out" / "config.json").read_text())["rope_theta"] == 1e4
    assert main(["check", "mistral", "--dtypes", "float32", "--devices", "cpu"]) == 0
    assert "0 failed" in capsys.readouterr().out
