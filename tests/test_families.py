"""Properties every family must have, generated from the registry: adding a folder adds its tests.

- converter (through transformers) and reference each reproduce the real upstream logits (fp32, 1e-5);
- every default case passes the parity matrix after a round trip through disk (CUDA skipped cleanly);
- ``invert(convert(x))`` gives back the source tensors bit for bit;
- every released size converts to the shapes transformers builds for it, on the meta device.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harness.conversion import SourceCheckpoint
from harness.metrics import DTYPES
from harness.parity import load_converted, make_tokens, run_parity
from harness.registry import families
from harness.runner import write_converted
from harness.tensor_store import TensorStore

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "upstream"
FAMILIES = families()
UPSTREAM = [(f, d) for f in FAMILIES for d in sorted((GOLDEN / f).glob("case-*"))]
CASES = [(f, c) for f, fam in FAMILIES.items() for c in fam.CASES]
SIZES = [(f, s) for f, fam in FAMILIES.items() for s in fam.SIZES]
MATRIX = [
    pytest.param(f, c, device, dtype, id=f"{f}-{c}-{device}-{dtype}",
                 marks=[pytest.mark.cuda] if device == "cuda" else [])
    for f, c in CASES for device in ("cpu", "cuda") for dtype in DTYPES
]
UPSTREAM_ATOL = 1e-5


def _read_upstream(family: str, case_dir: Path) -> tuple[SourceCheckpoint, torch.Tensor, torch.Tensor]:
    fam = FAMILIES[family]
    meta = json.loads((case_dir / "meta.json").read_text())
    options = {k: meta[k] for k in getattr(fam, "UPSTREAM_OPTIONS", ())}
    source = fam.read(case_dir / "source", **options)
    # Where upstream's own low-precision load path differs from exact float32, the upcast logits are the truth.
    exact = case_dir / "logits_fp32_upcast.safetensors"
    logits = load_file(exact if exact.exists() else case_dir / "logits.safetensors")["logits"]
    return source, torch.tensor(meta["input_ids"]), logits


@pytest.mark.parametrize(("family", "case_dir"), UPSTREAM, ids=[f"{f}-{d.name}" for f, d in UPSTREAM])
def test_converter_reproduces_upstream(family: str, case_dir: Path, tmp_path: Path) -> None:
    source, tokens, expected = _read_upstream(family, case_dir)
    write_converted(FAMILIES[family].convert(source), tmp_path / "hf", dtype="float32")
    model = load_converted(tmp_path / "hf", "cpu", "float32", FAMILIES[family])
    with torch.no_grad():
        logits = model(tokens).logits.float()
    assert logits.shape == expected.shape
    assert (logits - expected).abs().max().item() <= UPSTREAM_ATOL


@pytest.mark.parametrize(("family", "case_dir"), UPSTREAM, ids=[f"{f}-{d.name}" for f, d in UPSTREAM])
def test_reference_reproduces_upstream(family: str, case_dir: Path) -> None:
    source, tokens, expected = _read_upstream(family, case_dir)
    tensors = {k: (t.float() if t.is_floating_point() else t) for k, t in source.tensors.items()}
    with torch.no_grad():
        logits = FAMILIES[family].forward(tensors, source.config, tokens)
    assert logits.shape == expected.shape
    assert (logits - expected).abs().max().item() <= UPSTREAM_ATOL


@pytest.mark.parametrize(("family", "case", "device", "dtype"), MATRIX)
def test_parity(family: str, case: str, device: str, dtype: str, convparity_round_trip) -> None:
    rt = convparity_round_trip(family, case)
    model = load_converted(rt.model_dir, device, dtype, FAMILIES[family])
    result = run_parity(FAMILIES[family], case, rt.source, model, device, dtype, make_tokens(rt.vocab_size))
    assert result.passed, f"{result.violations}; first divergent hidden state: {result.first_divergent_layer}"


@pytest.mark.parametrize(("family", "case"), CASES, ids=[f"{f}-{c}" for f, c in CASES])
def test_invert_gives_back_the_source(family: str, case: str) -> None:
    fam = FAMILIES[family]
    spec = fam.CASES[case]
    source = fam.tiny(3, layout=spec.layout, **spec.config)
    converted = fam.convert(source)
    back = fam.invert(converted.config, dict(converted.tensors()))
    # Round trip again from the inverted checkpoint: a layout invert does not produce (fused experts,
    # quantised weights, dropped buffers) is compared through the converted tensors.
    again = dict(fam.convert(back).tensors())
    for name, tensor in converted.tensors():
        assert torch.equal(again[name], tensor), name
    if back.layout == source.layout:
        for key in back.tensors:
            assert torch.equal(back.tensors[key], source.tensors[key]), key


@pytest.mark.parametrize(("family", "size"), SIZES, ids=[f"{f}-{s}" for f, s in SIZES])
def test_released_size_matches_transformers_on_meta(family: str, size: str) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    fam = FAMILIES[family]
    config = fam.SIZES[size]
    shapes = fam.shapes(config)
    dtype = torch.bfloat16
    store = TensorStore({k: (lambda s=s: torch.empty(s, dtype=dtype, device="meta")) for k, s in shapes.items()},
                        {k: (tuple(s), dtype) for k, s in shapes.items()})
    converted = fam.convert(SourceCheckpoint(dict(config), store))
    planned = {s.name: s.shape for s in converted.plan()}
    hf = dict(converted.config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(hf.pop("model_type"), **hf))
    expected = {k: tuple(p.shape) for k, p in model.named_parameters()}
    common = planned.keys() & expected.keys()
    assert common, "no parameter names in common"
    assert {k: planned[k] for k in common} == {k: expected[k] for k in common}
    assert sum(torch.Size(s).numel() for s in planned.values()) == sum(p.numel() for p in model.parameters())
