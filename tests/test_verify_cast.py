"""``verify`` right both ways on conversions that also cast, as the official Llama script makes them (it always
writes bfloat16): a correct float32 -> bfloat16 or bfloat16 -> bfloat16 conversion PASSes, a conversion with a
wrong norm epsilon or a wrong rope scaling FAILs with the sub-module named, and bfloat16 compute never PASSes those
faults. The faults are made as a converter would make them: by what it writes into config.json.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from harness.mapping.output import write_converted
from harness.mutation.runner import prepare
from harness.parity.points import unsupported
from harness.parity.verify import RESOLUTION, verify
from harness.registry import families

LLAMA = families()["llama"]
CASES = list(LLAMA.all_cases())


def _llama3_scaling(config: dict[str, Any]) -> None:
    theta = (config.get("rope_parameters") or {}).get("rope_theta", config.get("rope_theta"))
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192, "rope_theta": theta}
    config["rope_scaling"], config["rope_parameters"] = dict(scaling), dict(scaling)


def _no_scaling(config: dict[str, Any]) -> None:
    theta = config["rope_parameters"]["rope_theta"]
    config["rope_scaling"], config["rope_parameters"] = None, {"rope_type": "default", "rope_theta": theta}


def _eps(config: dict[str, Any]) -> None:
    config["rms_norm_eps"] = 1e-5 if config["rms_norm_eps"] == 1e-6 else 1e-6


# fault -> (case, how the converter got config.json wrong, the point diagnosis must name)
FAULTS: dict[str, tuple[str, Callable[[dict[str, Any]], None], str]] = {
    "norm-eps": ("llama1-eps", _eps, "layers.0.attention_norm"),
    "rope-scaling-dropped": ("llama31-scaled", _no_scaling, "layers.0.attention"),
    "rope-scaling-added": ("llama3-mp2", _llama3_scaling, "layers.0.attention"),
}


def _cast_conversion(case: str, workdir: Path, fault: Callable[[dict[str, Any]], None] | None = None
                     ) -> tuple[Path, Path, torch.dtype]:
    """The case's tiny source on disk, and its conversion stored as bfloat16 (config.json edited by ``fault``)."""
    run = prepare(LLAMA, case, LLAMA.all_cases()[case], workdir)
    out = workdir / case / "hf-bf16"
    write_converted(LLAMA.convert(run.source), out, dtype="bfloat16")
    if fault is not None:
        config = json.loads((out / "config.json").read_text())
        fault(config)
        (out / "config.json").write_text(json.dumps(config))
    source_dtype = run.source.tensors.meta("layers.0.attention.wq.weight")[1]
    return workdir / case / "source", out, source_dtype


@pytest.mark.parametrize("case", CASES)
def test_a_correct_conversion_that_casts_to_bfloat16_passes(case: str, tmp_path: Path) -> None:
    source, out, source_dtype = _cast_conversion(case, tmp_path)
    result = verify(LLAMA, source, out)
    assert result.verdict == "PASS", (result.violations, result.notes)
    assert result.resolution <= RESOLUTION
    if source_dtype == torch.float32:  # the rounding is declared, measured apart, and far above the bound
        assert result.rounding.endswith("to bfloat16")
        assert result.logits is not None and result.logits.cast is not None
        assert result.logits.cast > 10 * result.logits.bound  # what used to fail every block
        assert any("rounded to nearest even" in n for n in result.notes)
    else:
        assert result.rounding == "" and result.logits is not None and result.logits.cast is None


@pytest.mark.parametrize("fault", FAULTS)
def test_a_cast_conversion_with_a_fault_fails_and_names_the_sub_module(fault: str, tmp_path: Path) -> None:
    case, edit, point = FAULTS[fault]
    source, out, _ = _cast_conversion(case, tmp_path, edit)
    result = verify(LLAMA, source, out)
    assert result.verdict == "FAIL"
    assert result.first_divergent == "model.layers.0"
    if unsupported() is None:
        assert result.diagnosis is not None and result.diagnosis.startswith(f"{point} ("), result.diagnosis
        # the fault is in config.json: the fed tensors are convparity's own, rounded as this converter stored them
        assert "its tensors are convparity's own, to the stored dtype" in result.diagnosis, result.diagnosis


@pytest.mark.parametrize("fault", FAULTS)
def test_bfloat16_compute_never_passes_a_fault(fault: str, tmp_path: Path) -> None:
    case, edit, _ = FAULTS[fault]
    source, out, _ = _cast_conversion(case, tmp_path, edit)
    result = verify(LLAMA, source, out, compute_dtype="bfloat16")
    assert result.verdict in ("FAIL", "INCONCLUSIVE")


def test_a_truncating_converter_is_named(tmp_path: Path) -> None:
    """A converter that drops the low bits instead of rounding to nearest even is a finding worth a line."""
    source, out, _ = _cast_conversion("gqa-mp2", tmp_path)
    from safetensors.torch import load_file, save_file

    exact = LLAMA.convert(LLAMA.read(source))
    tensors = load_file(out / "model.safetensors")
    for name, t in exact.tensors():
        bits = t.float().contiguous().view(torch.int32) & ~0xFFFF
        tensors[name] = bits.view(torch.float32).to(torch.bfloat16)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    result = verify(LLAMA, source, out)
    assert any("matches truncation" in n for n in result.notes), result.notes


@pytest.mark.parametrize("family", sorted(families()))
def test_a_cast_to_any_narrower_dtype_passes_on_drawn_configs(family: str, tmp_path_factory: pytest.TempPathFactory
                                                              ) -> None:
    """Cases not in the repository: hypothesis-drawn configs of every family, converted and stored as bfloat16 or
    float16, PASS float32 verify (nothing beyond the bound, resolution fine enough)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from tests.family_strategies import STRATEGIES

    fam = families()[family]

    @settings(max_examples=12, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(case=STRATEGIES[family], stored=st.sampled_from(["bfloat16", "float16"]))
    def sweep(case: Any, stored: str) -> None:
        workdir = tmp_path_factory.mktemp("sweep")
        fam.write(fam.tiny(0, layout=case.layout, **case.config), workdir / "source", container=case.container)
        write_converted(fam.convert(fam.read(workdir / "source")), workdir / "hf", dtype=stored)
        result = verify(fam, workdir / "source", workdir / "hf")
        assert result.verdict == "PASS", (case, stored, result.violations, result.resolution)

    sweep()
