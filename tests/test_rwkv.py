"""RWKV-4: parity over a sweep of sizes and storage dtypes, the rwkv runtime as a second oracle, version
refusal, one-line errors for bad input, and the 1-layer and rescale_every behaviour of transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from converters.rwkv.convert import ONE_LAYER_NOTE
from harness.cli import main
from harness.errors import ConversionError
from harness.io.tensor_store import TensorStore
from harness.mapping.conversion import SourceCheckpoint
from harness.parity.parity import load_converted, make_tokens, run_parity
from harness.pipeline import convert_checkpoint
from harness.registry import family

RWKV = family("rwkv")


def _load(model_dir: Path, dtype: str = "float32"):
    return load_converted(model_dir, "cpu", dtype, RWKV)  # with the family's loading hook (1-layer models)


def _write(tmp: Path, source: SourceCheckpoint, edit: dict | None = None, drop: tuple = ()) -> Path:
    """The source's .pth in tmp/src, with entries replaced/added (``edit``) or removed (``drop``)."""
    state = {k: v for k, v in source.tensors.items() if k not in drop} | (edit or {})
    (tmp / "src").mkdir(parents=True)
    torch.save(state, tmp / "src" / "RWKV-4-Pile-test.pth")
    return tmp / "src" / "RWKV-4-Pile-test.pth"


def _converted(tmp: Path, seed: int = 0, rescale_every: int = 6, **config) -> tuple[SourceCheckpoint, Path]:
    RWKV.write(RWKV.tiny(seed, **config), tmp / "src")
    convert_checkpoint(RWKV, tmp / "src", tmp / "hf", rescale_every=rescale_every)
    return RWKV.read(tmp / "src", rescale_every=rescale_every), tmp / "hf"


@st.composite
def configs(draw: st.DrawFn) -> dict:
    C = draw(st.sampled_from([16, 32, 48]))
    return dict(n_embd=C, dim_att=C, dim_ffn=draw(st.sampled_from([40, 96, 4 * C])), n_layer=draw(st.integers(1, 13)),
                vocab_size=draw(st.sampled_from([50, 97, 128])),
                storage=draw(st.sampled_from(["float32", "bfloat16", "float16"])))


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=configs(), rescale_every=st.sampled_from([0, 6]))
def test_parity_over_sizes_and_storage(tmp_path_factory: pytest.TempPathFactory, config: dict,
                                       rescale_every: int) -> None:
    source, out = _converted(tmp_path_factory.mktemp("sweep"), rescale_every=rescale_every, **config)
    hf = json.loads((out / "config.json").read_text())
    assert (hf["intermediate_size"], hf["attention_hidden_size"], hf["num_hidden_layers"]) == (
        config["dim_ffn"], config["dim_att"], config["n_layer"])
    assert hf["tie_word_embeddings"] is False and hf["rescale_every"] == rescale_every
    tokens = make_tokens(config["vocab_size"], seq=16)
    result = run_parity(RWKV, "sweep", source, _load(out), "cpu", "float32", tokens)
    assert result.passed, (config, result.violations)


# -- the rwkv runtime (BlinkDL's ChatRWKV package) as a second oracle ------------------------------------------

def _runtime_logits(pth: Path, tokens: torch.Tensor, monkeypatch: pytest.MonkeyPatch, rescale: int | None = None):
    monkeypatch.setenv("RWKV_JIT_ON", "0")
    monkeypatch.setenv("RWKV_CUDA_ON", "0")
    if rescale is not None:  # read in RWKV.__init__ (pkg L632); default 0 for "cpu fp32"
        monkeypatch.setenv("RWKV_RESCALE_LAYER", str(rescale))
    runtime = pytest.importorskip("rwkv.model")
    model = runtime.RWKV(str(pth)[: -len(".pth")], "cpu fp32")
    return torch.stack([model.forward(row.tolist(), None, full_output=True)[0] for row in tokens])


@pytest.mark.parametrize("config", [dict(n_layer=1), dict(n_layer=3, n_embd=48, dim_att=48, dim_ffn=80),
                                    dict(n_layer=13, n_embd=32, dim_att=32, dim_ffn=128)],
                         ids=["l1", "l3-ffn80", "l13"])
def test_matches_the_rwkv_runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: dict) -> None:
    tokens = make_tokens(96, seq=12)
    logits = {}
    for r in (0, 6):
        _, out = _converted(tmp_path / f"r{r}", seed=5, rescale_every=r, **config)
        with torch.no_grad():
            logits[r] = _load(out)(tokens).logits
    pth = next((tmp_path / "r0" / "src").glob("*.pth"))
    runtime_fp32 = _runtime_logits(pth, tokens, monkeypatch)  # the runtime's own fp32 setting: no rescale
    assert (logits[0] - runtime_fp32).abs().max().item() <= 1e-5
    assert (logits[6] - runtime_fp32).abs().max().item() <= 3e-4  # LayerNorm eps only (convert.py docstring)
    assert (logits[6] - _runtime_logits(pth, tokens, monkeypatch, rescale=6)).abs().max().item() <= 1e-5


def test_bf16_storage_matches_the_runtime_on_an_upcast_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source, out = _converted(tmp_path, seed=6, n_layer=4, storage="bfloat16")
    assert all(t.dtype == torch.bfloat16 for t in source.tensors.values())
    tokens = make_tokens(96, seq=10)
    with torch.no_grad():
        logits = _load(out)(tokens).logits
    upcast = _write(tmp_path / "up", source, edit={k: v.float() for k, v in source.tensors.items()})
    assert (logits - _runtime_logits(upcast, tokens, monkeypatch)).abs().max().item() <= 1e-5
    # The runtime folds ln0 into emb in bf16 at load (README fact 9): on the bf16 file itself it drifts.
    bf16 = next((tmp_path / "src").glob("*.pth"))
    assert (logits - _runtime_logits(bf16, tokens, monkeypatch)).abs().max().item() > 1e-3


# -- transformers quirks --------------------------------------------------------------------------------------

def test_one_layer_needs_the_loading_hook_and_convert_says_so(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    RWKV.write(RWKV.tiny(0, n_layer=1), tmp_path / "src")
    assert main(["convert", "rwkv", str(tmp_path / "src"), str(tmp_path / "hf"), "--quiet"]) == 0
    assert ONE_LAYER_NOTE in capsys.readouterr().err
    stock_fails = _stock_load_fails(tmp_path / "hf")
    assert stock_fails == (transformers.__version__ >= "5")  # 5.x _init_weights, modeling_rwkv.py L378
    result = run_parity(RWKV, "l1", RWKV.read(tmp_path / "src"), _load(tmp_path / "hf"), "cpu", "float32",
                        make_tokens(96))
    assert result.passed, result.violations
    assert _stock_load_fails(tmp_path / "hf") == stock_fails  # the hook patched transformers only while loading


def _stock_load_fails(model_dir: Path) -> bool:
    try:
        load_converted(model_dir, "cpu", "float32")
    except ZeroDivisionError:
        return True
    return False


def test_deep_fp16_overflows_without_rescale(tmp_path: Path) -> None:
    """Residual stream growing with depth as in trained models: fp16 overflows unless rescale_every > 0."""
    source = RWKV.tiny(0, n_layer=28, n_embd=64, dim_att=64, dim_ffn=256)
    growth = {k: v * 1.5 ** int(k.split(".")[1]) for k, v in source.tensors.items()
              if k.endswith(("att.output.weight", "ffn.value.weight"))}
    _write(tmp_path, source, edit=growth)
    finite = {}
    for r in (0, 6):
        convert_checkpoint(RWKV, tmp_path / "src", tmp_path / f"hf{r}", rescale_every=r)
        with torch.no_grad():
            finite[r] = torch.isfinite(_load(tmp_path / f"hf{r}", "float16")(make_tokens(96)).logits).all().item()
    assert finite == {0: False, 6: True}


# -- refusals and bad input -----------------------------------------------------------------------------------

V4 = RWKV.tiny(0)
OTHER_VERSIONS = {
    "RWKV-5 ": {"blocks.0.att.ln_x.weight": torch.ones(32)},
    "RWKV-5.1": {"blocks.0.att.gate.weight": torch.ones(32, 32)},
    "RWKV-5.2": {"blocks.0.att.time_decay": torch.ones(4, 8)},
    "RWKV-6": {"blocks.0.att.time_maa_x": torch.ones(1, 1, 32)},
    "RWKV-7": {"blocks.0.att.r_k": torch.ones(4, 8)},
    "RWKV-converted": {"_strategy": "cpu fp16", "_version": "0.7", "_rescale_layer": 6},
}


@pytest.mark.parametrize("found", list(OTHER_VERSIONS))
def test_other_versions_are_refused(tmp_path: Path, found: str, capsys: pytest.CaptureFixture) -> None:
    pth = _write(tmp_path, V4, edit=OTHER_VERSIONS[found])
    assert main(["convert", "rwkv", str(pth), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip()
    assert found in err and "RWKV-4 only" in err and "\n" not in err
    assert not (tmp_path / "hf").exists()


BAD = {
    "missing tensor": (dict(drop=("blocks.1.ffn.value.weight",)), "missing in source: blocks.1.ffn.value.weight"),
    "extra tensor": (dict(edit={"blocks.0.att.bonus": torch.ones(32)}), "unmatched in source: blocks.0.att.bonus"),
    "mis-shaped": (dict(edit={"blocks.1.att.time_mix_k": torch.ones(32)}), r"time_mix_k is \(32,\), expected \(1, 1"),
    "no emb": (dict(drop=("emb.weight",)), "has no 2-D emb.weight"),
    "not tensors": (dict(edit={"meta": [1, 2]}), "non-tensor entries"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_state_dicts(tmp_path: Path, case: str) -> None:
    changes, message = BAD[case]
    pth = _write(tmp_path, V4, **changes)
    with pytest.raises(ConversionError, match=message) as err:
        convert_checkpoint(RWKV, pth, tmp_path / "hf")
    assert "\n" not in str(err.value) and not (tmp_path / "hf").exists()


def test_bad_paths_and_options(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="does not exist"):
        RWKV.read(tmp_path / "nope.pth")
    torch.save([torch.ones(2)], tmp_path / "list.pth")
    with pytest.raises(ConversionError, match="is not a state dict"):
        convert_checkpoint(RWKV, tmp_path / "list.pth", tmp_path / "hf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match=r"exactly one \.pth file in .*, found 0"):
        RWKV.read(tmp_path / "empty")
    with pytest.raises(ConversionError, match="drop --config"):
        RWKV.read(tmp_path / "list.pth", config=tmp_path / "c.json")
    pth = _write(tmp_path / "ok", V4)
    (tmp_path / "taken").mkdir()
    with pytest.raises(ConversionError, match="already exists"):
        convert_checkpoint(RWKV, pth, tmp_path / "taken")
    assert not any((tmp_path / "taken").iterdir()) and not (tmp_path / "hf").exists()


def test_read_write_round_trip_and_sizes_from_shapes(tmp_path: Path) -> None:
    source = RWKV.tiny(1, n_layer=3, n_embd=48, dim_att=48, dim_ffn=80, vocab_size=101, storage="float16")
    RWKV.write(source, tmp_path)
    back = RWKV.read(tmp_path)
    assert back.config == source.config
    assert list(back.tensors) == list(source.tensors)  # BlinkDL's key order
    assert all(torch.equal(back.tensors[k], source.tensors[k]) for k in source.tensors)
    decay = torch.stack([source.tensors[f"blocks.{i}.att.time_decay"].float() for i in range(3)])
    assert decay.min() < -4 and decay.max() > 2  # spread like RWKV-LM's init, so a wrong exp shows
    store = TensorStore.from_dict(dict(source.tensors))
    assert RWKV.convert(SourceCheckpoint(source.config, store)).config["intermediate_size"] == 80


@pytest.mark.parametrize(("storage", "expected"), [("float32", 0), ("bfloat16", 0), ("float16", 6)])
def test_rescale_every_follows_the_runtime_for_the_storage_dtype(tmp_path: Path, storage: str, expected: int) -> None:
    """The runtime rescales exactly when it computes in fp16 (pkg L634); --rescale-every overrides."""
    RWKV.write(RWKV.tiny(0, storage=storage), tmp_path)
    source = RWKV.read(tmp_path)
    assert source.config["rescale_every"] == expected
    assert any("--rescale-every 6" in n for n in source.notes) == (expected == 0)
    assert RWKV.read(tmp_path, rescale_every=3).config["rescale_every"] == 3
