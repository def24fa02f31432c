"""Gemma: parity over a sweep of attention layouts and containers, the quant layout, the GELU option, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from harness.cli import main
from harness.errors import ConversionError
from harness.mapping import transforms
from harness.mapping.rules import DequantizeSplit
from harness.parity.parity import load_converted, make_tokens, run_parity
from harness.pipeline import convert_checkpoint
from harness.registry import family

GEMMA = family("gemma")
UPSTREAM = Path(__file__).resolve().parent.parent / "golden" / "upstream" / "gemma"


@st.composite
def configs(draw: st.DrawFn) -> dict:
    kv = draw(st.sampled_from([1, 2, 4]))
    heads = kv * draw(st.sampled_from([1, 2, 4]))  # MQA (kv 1), GQA (fewer) and MHA (equal)
    return dict(
        hidden_size=draw(st.sampled_from([16, 32, 64])), num_attention_heads=heads, num_key_value_heads=kv,
        head_dim=draw(st.sampled_from([4, 8, 12, 16])),  # heads * head_dim rarely equals hidden_size
        intermediate_size=draw(st.sampled_from([24, 40])), num_hidden_layers=draw(st.integers(1, 3)),
        vocab_size=draw(st.sampled_from([61, 128, 311])), rms_norm_eps=draw(st.sampled_from([1e-6, 1e-5, 1e-3])),
        quant=draw(st.booleans()), freqs_cis=draw(st.booleans()),
    )


def _convert_and_check(tmp: Path, config: dict, container: str = "ckpt", gelu: str = "tanh", seed: int = 0):
    source_dir, out = tmp / "source", tmp / "hf"
    GEMMA.write(GEMMA.tiny(seed, **config), source_dir, container=container)
    convert_checkpoint(GEMMA, source_dir, out, gelu=gelu)
    source = GEMMA.read(source_dir, gelu=gelu)
    model = load_converted(out, "cpu", "float32")
    tokens = make_tokens(source.config["vocab_size"], batch=2, seq=32, seed=seed)
    return run_parity(GEMMA, "sweep", source, model, "cpu", "float32", tokens)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=configs(), container=st.sampled_from(["ckpt", "sharded"]))
def test_parity_over_attention_layouts_containers_and_quant(tmp_path_factory: pytest.TempPathFactory,
                                                            config: dict, container: str) -> None:
    result = _convert_and_check(tmp_path_factory.mktemp("sweep"), config, container)
    assert result.passed, (config, container, result.violations)


def test_quant_weights_are_dequantised_and_scalers_dropped(tmp_path: Path) -> None:
    source = GEMMA.tiny(1, quant=True, num_key_value_heads=2)
    assert source.tensors["model.layers.0.mlp.up_proj.weight"].dtype == torch.int8
    out = dict(GEMMA.convert(source).tensors())
    assert not any("scaler" in k for k in out) and all(t.dtype == torch.float32 for t in out.values())
    t = source.tensors
    up = t["model.layers.0.mlp.up_proj.weight"].float() * t["model.layers.0.mlp.up_proj.weight_scaler"][:, None]
    assert torch.equal(out["model.layers.0.mlp.up_proj.weight"], up)
    assert _convert_and_check(tmp_path, dict(quant=True, num_key_value_heads=2), "sharded").passed


@settings(max_examples=20, deadline=None)
@given(kv=st.integers(1, 4), group=st.integers(1, 4), head_dim=st.integers(1, 8), cols=st.integers(1, 9))
def test_dequantize_split_is_split_of_dequantize_and_inverts(kv: int, group: int, head_dim: int, cols: int) -> None:
    dims = {"n_heads": kv * group, "n_kv_heads": kv, "head_dim": head_dim}
    w8, scale = transforms.quantize(torch.randn((kv * group + 2 * kv) * head_dim, cols))
    rule = DequantizeSplit("w", "s", ["q", "k", "v"])
    q, k, v = rule.forward([w8, scale], dims)
    assert all(torch.equal(a, b) for a, b in zip((q, k, v), transforms.split_qkv(
        transforms.dequantize(w8, scale), dims["n_heads"], kv, head_dim), strict=True))
    assert torch.equal(rule.inverse([q, k, v], dims)[0], w8)


def test_exact_gelu_option_changes_config_and_passes_against_exact_reference(tmp_path: Path) -> None:
    assert _convert_and_check(tmp_path, {}, gelu="exact").passed
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["hidden_act"] == "gelu_python"
    # The same exact-GELU model against the tanh reference must FAIL: the tolerance catches the variant.
    model = load_converted(tmp_path / "hf", "cpu", "float32")
    tanh_source = GEMMA.read(tmp_path / "source")
    result = run_parity(GEMMA, "mismatch", tanh_source, model, "cpu", "float32", make_tokens(128, seq=32))
    assert not result.passed and any("max_abs" in v for v in result.violations)


def test_tanh_conversion_fails_against_the_exact_gelu_reference(tmp_path: Path) -> None:
    assert _convert_and_check(tmp_path, {}).passed
    model = load_converted(tmp_path / "hf", "cpu", "float32")
    exact_source = GEMMA.read(tmp_path / "source", gelu="exact")
    assert not run_parity(GEMMA, "mismatch", exact_source, model, "cpu", "float32", make_tokens(128, seq=32)).passed


def test_exact_gelu_misses_the_tanh_upstream_logits(tmp_path: Path) -> None:
    case = UPSTREAM / "case-gqa-4h2kv"
    convert_checkpoint(GEMMA, case / "source", tmp_path / "hf", gelu="exact")
    with torch.no_grad():
        logits = load_converted(tmp_path / "hf", "cpu", "float32")(
            torch.tensor(json.loads((case / "meta.json").read_text())["input_ids"])).logits
    assert (logits - load_file(case / "logits.safetensors")["logits"]).abs().max().item() > 1e-4


def test_variant_presets_match_gemma_pytorch_config(tmp_path: Path) -> None:
    two_b = GEMMA.read(UPSTREAM / "case-mqa-2layer" / "source" / "model.ckpt", variant="2b").config
    assert (two_b["num_hidden_layers"], two_b["num_attention_heads"], two_b["num_key_value_heads"],
            two_b["hidden_size"], two_b["intermediate_size"], two_b["head_dim"]) == (18, 8, 1, 2048, 16384, 256)
    seven_b = GEMMA.convert(_meta_source("7b")).config
    assert (seven_b["num_hidden_layers"], seven_b["num_attention_heads"], seven_b["hidden_size"]) == (28, 16, 3072)
    assert seven_b["vocab_size"] == 256000 and seven_b["rms_norm_eps"] == 1e-6 and seven_b["head_dim"] == 256
    planned = {s.name: (s.shape, s.dtype) for s in GEMMA.convert(_meta_source("7b-quant")).plan()}
    assert planned["model.layers.0.self_attn.k_proj.weight"] == ((4096, 3072), torch.bfloat16)


def _meta_source(variant: str):
    from harness.io.tensor_store import TensorStore
    from harness.mapping.conversion import SourceCheckpoint

    config = GEMMA.sizes[variant]
    metas = {k: (s, torch.int8 if k.endswith("proj.weight") and config["quant"] else torch.bfloat16)
             for k, s in GEMMA.shapes(config).items()}
    return SourceCheckpoint(dict(config), TensorStore(
        {k: (lambda m=m: torch.empty(m[0], dtype=m[1], device="meta")) for k, m in metas.items()}, metas))


def _cli_error(capsys: pytest.CaptureFixture, *args: str) -> str:
    assert main(["convert", "gemma", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def source_dir(tmp_path: Path) -> Path:
    GEMMA.write(GEMMA.tiny(0), tmp_path / "src")
    return tmp_path / "src"


def _rewrite(source_dir: Path, edit) -> None:
    state = torch.load(source_dir / "model.ckpt", weights_only=True)
    edit(state["model_state_dict"])
    torch.save(state, source_dir / "model.ckpt")


@pytest.mark.parametrize(("edit", "message"), [
    (lambda t: t.pop("model.layers.1.mlp.up_proj.weight"), "missing in source: model.layers.1.mlp.up_proj.weight"),
    (lambda t: t.pop("model.norm.weight"), "unused rules: Rename(model.norm.weight"),
    (lambda t: t.update(extra=torch.zeros(1)), "unmatched in source: extra"),
    (lambda t: t.update({"model.layers.0.self_attn.qkv_proj.weight": torch.zeros(40, 32)}),
     "mis-shaped: model.layers.0.self_attn.qkv_proj.weight is (40, 32), expected (48, 32)"),
])
def test_bad_tensors_get_one_line_naming_the_key(source_dir: Path, capsys, edit, message: str) -> None:
    _rewrite(source_dir, edit)
    out = source_dir.parent / "out"
    assert message in _cli_error(capsys, str(source_dir), str(out))
    assert not out.exists() and [p.name for p in source_dir.parent.iterdir()] == ["src"]


def _edit_config(source_dir: Path, **changes) -> None:
    params = json.loads((source_dir / "config.json").read_text())
    (source_dir / "config.json").write_text(json.dumps({**params, **changes}))


@pytest.mark.parametrize(("changes", "message"), [
    (dict(n_layers=2), "unknown field(s) ['n_layers']"),
    (dict(hidden_activation="gelu_exact"), "not a GemmaConfig field; pass --gelu exact"),
    (dict(final_logit_softcapping=30.0), "Gemma 2/3 field(s) ['final_logit_softcapping']"),
    (dict(architecture="GEMMA_2"), "expected GEMMA_1"),
    (dict(quant=True), "config says quant=True but the weights"),
    (dict(num_hidden_layers=3), "missing in source: model.layers.2"),
])
def test_bad_configs_get_one_line(source_dir: Path, tmp_path: Path, capsys, changes: dict, message: str) -> None:
    _edit_config(source_dir, **changes)
    assert message in _cli_error(capsys, str(source_dir), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_bad_paths_and_options_get_one_line(source_dir: Path, tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "out")
    (tmp_path / "exists").mkdir()
    assert "already exists" in _cli_error(capsys, str(source_dir), str(tmp_path / "exists"))
    assert "mis-shaped" in _cli_error(capsys, str(source_dir), out, "--variant", "2b")  # the preset is applied
    assert "not both" in _cli_error(capsys, str(source_dir), out, "--variant", "2b", "--config",
                                    str(source_dir / "config.json"))
    (source_dir / "config.json").unlink()
    assert "expected config.json beside the weights" in _cli_error(
        capsys, str(source_dir), out)
    assert not Path(out).exists()


def test_sharded_index_naming_a_missing_shard_is_an_error(tmp_path: Path) -> None:
    GEMMA.write(GEMMA.tiny(0), tmp_path, container="sharded")
    (tmp_path / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(ConversionError, match=r"names shard\(s\) \['pytorch_model-00002-of-00002.bin'\]"):
        GEMMA.read(tmp_path)


def test_cli_convert_with_options_and_check_succeed(tmp_path: Path, capsys) -> None:
    src = UPSTREAM / "case-sharded-gqa-nofreqs" / "source"
    assert main(["convert", "gemma", str(src), str(tmp_path / "out"), "--quiet", "--gelu", "exact"]) == 0
    assert json.loads((tmp_path / "out" / "config.json").read_text())["hidden_act"] == "gelu_python"
    assert main(["check", "gemma", "--dtypes", "float32", "--devices", "cpu"]) == 0
    assert "0 failed" in capsys.readouterr().out
