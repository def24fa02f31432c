"""Verification power: every applicable planted bug is killed, and no clean conversion fails.

- per family and checkpoint dtype (float32, bfloat16): every applicable mutant of the catalogue is killed on
  CPU, and there are at least 8 of them;
- the clean conversions of the same cases pass (a kill means nothing if the clean output fails too);
- a hypothesis sweep of 100 configs per family: clean conversions always pass (no false failure);
- the runner reports what it should: an identity edit is not applicable, a function-preserving edit survives
  and makes ``convparity mutate`` exit 1, and the JSON carries family, mutant, killed and the metric.
"""

from __future__ import annotations

import dataclasses
import json
import types
from pathlib import Path

import pytest
import torch
import transformers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.mutation import runner as mutate
from harness.mutation.catalogue import Mutable, swap_names, transpose_square_weight
from harness.mutation.structural import point_table, structural
from harness.registry import families, family
from tests.family_strategies import STRATEGIES

FAMILIES = families()
MUTATE_DTYPES = ("float32", "bfloat16")
MIN_APPLICABLE = 8


@pytest.fixture(scope="module")
def verdicts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[list, list]]:
    cache: dict[str, tuple[list, list]] = {}

    def get(name: str) -> tuple[list, list]:
        if name not in cache:
            cache[name] = mutate.run_family(FAMILIES[name], list(MUTATE_DTYPES), tmp_path_factory.mktemp(name),
                                            exhaustive=False)
        return cache[name]

    return get  # type: ignore[return-value]


@pytest.mark.skipif(int(transformers.__version__.split(".")[0]) < 5, reason=(
    "kills are measured against transformers 5.x: on 4.57 some planted bugs are inert (GPT-2 loads the old "
    "attention buffers silently, and its sdpa path ignores scale_attn_by_inverse_layer_idx)"))
@pytest.mark.parametrize("dtype", MUTATE_DTYPES)
@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_applicable_mutant_is_killed(name: str, dtype: str, verdicts) -> None:
    records = [r for r in verdicts(name)[0] if r.dtype == dtype]
    applicable = [r for r in records if r.applicable]
    survivors = [f"{r.mutant} ({r.detail})" for r in applicable if not r.killed]
    assert not survivors, f"{name} {dtype}: survived: {survivors}"
    assert len(applicable) >= MIN_APPLICABLE, [r.mutant for r in applicable]


MIN_STRUCTURAL = 10


@pytest.mark.skipif(int(transformers.__version__.split(".")[0]) < 5, reason="kills are measured on transformers 5.x")
@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_structural_catalogue_applies_to_every_family_and_is_killed(name: str, tmp_path: Path) -> None:
    """Mutants derived from the key table and the points, not from names: RWKV gets as many as a Llama."""
    records, controls = mutate.run_family(FAMILIES[name], list(MUTATE_DTYPES), tmp_path, exhaustive=False,
                                          mutants=structural(FAMILIES[name]))
    for dtype in MUTATE_DTYPES:
        applicable = [r for r in records if r.dtype == dtype and r.applicable]
        assert not [f"{r.mutant} ({r.detail})" for r in applicable if not r.killed], f"{name} {dtype}"
        assert len(applicable) >= MIN_STRUCTURAL, [r.mutant for r in applicable]
    assert not [c for c in controls if c.killed]
    table = point_table(FAMILIES[name], records)
    assert len(table) == len(FAMILIES[name].points) + 1


@pytest.mark.parametrize("dtype", MUTATE_DTYPES)
@pytest.mark.parametrize("name", list(FAMILIES))
def test_clean_cases_pass(name: str, dtype: str, verdicts) -> None:
    failures = [f"{r.case}: {r.detail}" for r in verdicts(name)[1] if r.dtype == dtype and r.killed]
    assert not failures


@pytest.mark.parametrize("name", list(FAMILIES))
def test_clean_conversions_never_fail(name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    fam = FAMILIES[name]
    workdir = tmp_path_factory.mktemp(f"sweep-{name}")
    counter = iter(range(10**6))

    @settings(max_examples=100, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(case=STRATEGIES[name], dtype=st.sampled_from(MUTATE_DTYPES), seed=st.integers(0, 2**16))
    def sweep(case, dtype: str, seed: int) -> None:
        run = mutate.prepare(fam, f"c{next(counter)}", case, workdir, seed=seed)
        record = mutate.evaluate(fam, run, run.clean, mutate.reference_source(fam, run, dtype), dtype, workdir)
        assert not record.killed, f"{case.config} {dtype}: {record.metric} {record.detail}"

    sweep()
    assert next(counter) >= 100, "the sweep ran fewer than 100 configs"


def test_mutant_that_changes_nothing_is_not_applicable(tmp_path: Path) -> None:
    fam = family("rwkv")
    run = mutate.prepare(fam, "base", fam.cases["base"], tmp_path)
    m = run.clean.copy()
    swap_names(m, ".experts.0.", ".experts.1.")  # RWKV has no experts
    assert m.same_as(run.clean)


def test_a_case_runs_its_reference_once_for_all_the_models_it_judges(tmp_path: Path) -> None:
    calls = []
    real = family("rwkv")
    counted = types.SimpleNamespace(reference=lambda *a, **k: calls.append(1) or real.reference(*a, **k),
                                    points=real.points, loading=real.loading)
    fam = dataclasses.replace(real, oracle=counted)
    run = mutate.prepare(fam, "base", fam.cases["base"], tmp_path)
    clean = [mutate.evaluate(fam, run, run.clean, run.source, "float32", tmp_path) for _ in range(2)]
    bug = mutate.evaluate(fam, run, mutate.plant(transpose_square_weight, run.clean), run.source, "float32", tmp_path)
    assert len(calls) == 1
    assert not any(r.killed for r in clean) and bug.killed  # the kept outputs judge the mutant as before
    assert clean[0].value == clean[1].value
    mutate.evaluate(fam, run, run.clean, mutate.reference_source(fam, run, "bfloat16"), "bfloat16", tmp_path)
    assert len(calls) == 2  # another source (the rounded checkpoint) is another reference


def swap_experts_with_router(m: Mutable) -> None:
    """Experts 0 and 1 exchanged together with their router rows: the same function, different tensors."""
    swap_names(m, ".experts.0.", ".experts.1.")
    for name in [n for n in m.tensors if n.endswith("gate.weight")]:
        w = m.tensors[name].clone()
        w[[0, 1]] = w[[1, 0]]
        m.tensors[name] = w


def test_an_equivalent_mutant_survives_and_fails_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(mutate, "mutants_for", lambda fam: [swap_experts_with_router])
    monkeypatch.setattr(mutate, "cases_for", lambda fam: {"gqa": fam.cases["gqa"]})
    out = tmp_path / "mutate.json"
    assert mutate.run_mutate([family("mixtral")], ["float32"], out) == 1
    records = json.loads(out.read_text())["results"]
    mine = [r for r in records if r["mutant"] == "swap_experts_with_router"]
    assert mine and mine[0]["applicable"] and not mine[0]["killed"]
    assert {"family", "mutant", "killed", "metric", "value", "bound", "case"} <= mine[0].keys()
    assert "SURVIVED mixtral swap_experts_with_router" in capsys.readouterr().out


def test_bfloat16_reference_sees_the_rounded_checkpoint() -> None:
    fam = family("gemma")
    with torch.no_grad():
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            run = mutate.prepare(fam, "quant", fam.cases["quant"], Path(d))
    ref = mutate.reference_source(fam, run, "bfloat16")
    again = dict(fam.convert(ref).tensors())
    for name, t in run.clean.tensors.items():
        assert torch.equal(again[name], t.to(torch.bfloat16).float()), name
