"""Properties every family must have, generated from the registry: adding a folder adds its tests.

- converter (through transformers) and reference each reproduce the real upstream logits in float32, within
  FLOOR_FACTOR x the reference's own float32-vs-float64 drift on that case (harness/parity/precision.py);
- every default case passes the parity matrix after a round trip through disk (CUDA skipped cleanly);
- ``invert(convert(x))`` gives back the source tensors bit for bit;
- every released size converts to the shapes transformers builds for it, on the meta device.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harness.io.tensor_store import TensorStore
from harness.mapping.conversion import SourceCheckpoint
from harness.mapping.output import write_converted
from harness.parity.metrics import TORCH_DTYPES
from harness.parity.parity import load_converted, make_tokens, run_parity
from harness.parity.precision import FLOOR_FACTOR, noise_bound, reference_noise_floor
from harness.registry import families

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "upstream"
FAMILIES = families()
UPSTREAM = [(f, d) for f in FAMILIES for d in sorted((GOLDEN / f).glob("case-*"))]
CASES = [(f, c) for f, fam in FAMILIES.items() for c in fam.cases]
SIZES = [(f, s) for f, fam in FAMILIES.items() for s in fam.sizes]
MATRIX = [
    pytest.param(f, c, device, dtype, id=f"{f}-{c}-{device}-{dtype}",
                 marks=[pytest.mark.cuda] if device == "cuda" else [])
    for f, c in CASES for device in ("cpu", "cuda") for dtype in TORCH_DTYPES
]


def _read_upstream(family: str, case_dir: Path) -> tuple[SourceCheckpoint, torch.Tensor, torch.Tensor]:
    fam = FAMILIES[family]
    meta = json.loads((case_dir / "meta.json").read_text())
    options = {k: meta[k] for k in fam.upstream_options}
    source = fam.read(case_dir / "source", **options)
    # Where upstream's own low-precision load path differs from exact float32, the upcast logits are the truth.
    exact = case_dir / "logits_fp32_upcast.safetensors"
    logits = load_file(exact if exact.exists() else case_dir / "logits.safetensors")["logits"]
    return source, torch.tensor(meta["input_ids"]), logits


@pytest.fixture(scope="module")
def upstream_floor() -> Callable[[str, Path], tuple[float, float]]:
    """(noise floor, bound) per oracle case: the reference's own float32-vs-float64 drift, times FLOOR_FACTOR."""
    cache: dict[tuple[str, Path], tuple[float, float]] = {}

    def get(family: str, case_dir: Path) -> tuple[float, float]:
        if (family, case_dir) not in cache:
            source, tokens, _ = _read_upstream(family, case_dir)
            floor = reference_noise_floor(FAMILIES[family].reference, source.tensors, source.config, tokens)[1]
            cache[family, case_dir] = floor, noise_bound(floor)
        return cache[family, case_dir]

    return get


@pytest.mark.parametrize(("family", "case_dir"), UPSTREAM, ids=[f"{f}-{d.name}" for f, d in UPSTREAM])
def test_converter_reproduces_upstream(family: str, case_dir: Path, tmp_path: Path, upstream_floor,
                                       record_property: Callable[[str, object], None]) -> None:
    source, tokens, expected = _read_upstream(family, case_dir)
    write_converted(FAMILIES[family].convert(source), tmp_path / "hf", dtype="float32")
    model = load_converted(tmp_path / "hf", "cpu", "float32", FAMILIES[family])
    with torch.no_grad():
        logits = model(tokens).logits.float()
    assert logits.shape == expected.shape
    _assert_within_floor((logits - expected).abs().max().item(), *upstream_floor(family, case_dir), record_property)


@pytest.mark.parametrize(("family", "case_dir"), UPSTREAM, ids=[f"{f}-{d.name}" for f, d in UPSTREAM])
def test_reference_reproduces_upstream(family: str, case_dir: Path, upstream_floor,
                                       record_property: Callable[[str, object], None]) -> None:
    source, tokens, expected = _read_upstream(family, case_dir)
    tensors = {k: (t.float() if t.is_floating_point() else t) for k, t in source.tensors.items()}
    with torch.no_grad():
        logits = FAMILIES[family].reference(tensors, source.config, tokens)
    assert logits.shape == expected.shape
    _assert_within_floor((logits - expected).abs().max().item(), *upstream_floor(family, case_dir), record_property)


def _assert_within_floor(measured: float, floor: float, bound: float,
                         record_property: Callable[[str, object], None]) -> None:
    """The measured error, next to its bound, goes to the terminal summary (tests/conftest.py) and to JUnit."""
    record_property("oracle_error", f"max|diff| {measured:.3g} <= bound {bound:.3g} ({FLOOR_FACTOR:g} x float32 "
                                    f"noise floor {floor:.3g}; {measured / bound:.2f} of it)")
    assert measured <= bound, f"max|diff| {measured:.3g} > {bound:.3g} = {FLOOR_FACTOR:g} x noise floor {floor:.3g}"


@pytest.mark.parametrize(("family", "case", "device", "dtype"), MATRIX)
def test_parity(family: str, case: str, device: str, dtype: str, convparity_round_trip, convparity_diagnose) -> None:
    rt = convparity_round_trip(family, case)
    model = load_converted(rt.model_dir, device, dtype, FAMILIES[family])
    result = run_parity(FAMILIES[family], case, rt.source, model, device, dtype, make_tokens(rt.vocab_size))
    assert result.passed, (f"{result.violations}; first divergent hidden state: {result.first_divergent_layer}; "
                           f"diagnosis: {convparity_diagnose(family, case)}")


@pytest.mark.parametrize(("family", "case"), CASES, ids=[f"{f}-{c}" for f, c in CASES])
def test_invert_gives_back_the_source(family: str, case: str) -> None:
    fam = FAMILIES[family]
    spec = fam.cases[case]
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
    config = fam.sizes[size]
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
