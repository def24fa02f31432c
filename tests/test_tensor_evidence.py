"""Diagnosis says how the tensors feeding a disagreeing sub-module differ from convparity's own conversion of the
same source (``harness.parity.tensor_evidence``), on a tiny case (``check``, where it also orders the likely bugs)
and on a conversion ``verify`` judges, and a correct cast is no difference."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from harness.mapping.output import write_converted
from harness.mutation.on_failure import Diagnoser
from harness.mutation.runner import prepare
from harness.parity.check import check_family
from harness.parity.external import ExternalConverter
from harness.parity.points import unsupported
from harness.parity.tensor_evidence import relation
from harness.parity.verify import verify
from harness.registry import families

LLAMA = families()["llama"]
HERE = Path(__file__).resolve().parent
W = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
SQUARE = torch.randn(4, 4, generator=torch.Generator().manual_seed(1))
KINDS = {  # got from W (or SQUARE) -> the kind of difference diagnosis must name
    "transposed": (W, W.t().contiguous(), "transposed"),
    "square transposed": (SQUARE, SQUARE.t().contiguous(), "transposed"),
    "rows reordered": (W, W[[1, 0, 2, 3, 5, 4]], "rows reordered"),
    "columns reordered": (W, W[:, [3, 2, 1, 0]], "columns reordered"),
    "scaled": (W, W * 1.01, "scaled"),
    "offset": (W, W + 1, "offset"),
    "other shape": (W, W[:5], "shape"),
    "other values": (W, W + torch.linspace(0, 1, 24).reshape(6, 4), "values"),
}


@pytest.mark.parametrize("name", KINDS)
def test_each_kind_of_difference_is_named(name: str) -> None:
    expected, got, kind = KINDS[name]
    found = relation(expected, got)
    assert found is not None and found.kind == kind, found


def test_a_correct_cast_and_an_equal_tensor_are_no_difference() -> None:
    assert relation(W, W.clone()) is None
    assert relation(W, W.bfloat16()) is None and relation(W, W.half()) is None
    assert relation(W, W.bfloat16() + 2 ** -6) is not None  # beyond bfloat16's rounding


def test_check_names_the_reordered_rows_and_ranks_a_rotary_bug_first() -> None:
    if unsupported() is not None:
        pytest.skip(unsupported())
    script = shlex.quote(str(HERE / "outside_converters.py"))
    spec = f"{shlex.quote(sys.executable)} {script} no_rotary source={{source}} output={{output}} family={{family}}"
    d = Diagnoser(LLAMA)
    (r,) = check_family(LLAMA, ["cpu"], ["float32"], ["llama31-scaled"], on_round_trip=d.round_trip,
                        on_result=d.result, converter=ExternalConverter(spec, 120))
    assert r.diagnosis is not None
    assert "model.layers.0.self_attn.q_proj.weight: rows reordered" in r.diagnosis, r.diagnosis
    # a transposed square matrix matches its signature closely, but changes q another way: ranked below
    likely = r.diagnosis.split("likely: ", 1)[1]
    assert likely.startswith("rotary_"), r.diagnosis


def test_verify_says_how_a_fed_tensor_differs_from_convparitys_conversion(tmp_path: Path) -> None:
    if unsupported() is not None:
        pytest.skip(unsupported())
    case = "llama31-scaled"
    run = prepare(LLAMA, case, LLAMA.all_cases()[case], tmp_path)
    out = tmp_path / "hf"
    write_converted(LLAMA.convert(run.source), out, dtype="bfloat16")
    path, name = out / "model.safetensors", "model.layers.0.self_attn.o_proj.weight"
    tensors = load_file(path)
    tensors[name] = tensors[name].t().contiguous()  # o_proj is square here: its shape cannot show it
    save_file(tensors, path, metadata={"format": "pt"})
    result = verify(LLAMA, tmp_path / case / "source", out)
    assert result.verdict == "FAIL" and result.diagnosis is not None
    assert f"against convparity's own conversion: {name}: written transposed" in result.diagnosis, result.diagnosis


def test_verify_follows_fused_parameters_back_to_the_keys_that_load_them(tmp_path: Path) -> None:
    """transformers 5 fuses Mixtral's per-expert tensors on load: the evidence names the stored key."""
    if unsupported() is not None:
        pytest.skip(unsupported())
    mixtral = families()["mixtral"]
    case = next(iter(mixtral.cases))
    run = prepare(mixtral, case, mixtral.all_cases()[case], tmp_path)
    out = tmp_path / "hf"
    write_converted(mixtral.convert(run.source), out, dtype="bfloat16")
    path, name = out / "model.safetensors", "model.layers.0.block_sparse_moe.experts.0.w1.weight"
    tensors = load_file(path)
    tensors[name] = tensors[name] * 1.25
    save_file(tensors, path, metadata={"format": "pt"})
    result = verify(mixtral, tmp_path / case / "source", out)
    assert result.verdict == "FAIL" and result.diagnosis is not None
    assert f"{name}: scaled by 1.25" in result.diagnosis, result.diagnosis
