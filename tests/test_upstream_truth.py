"""No family without upstream truth: every registered family has oracle cases from its real upstream code, every
named point of its reference is touched by some applicable mutant, and ``tools/make_oracle.py`` makes a case in
the layout the oracle tests read."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harness.mapping.output import write_converted
from harness.mutation.accuracy import touched
from harness.mutation.planting import Mutable
from harness.mutation.runner import mutants_for, plant
from harness.mutation.structural import structural
from harness.parity.parity import UpcastTensors, load_converted
from harness.registry import families
from tools.make_oracle import make_oracle

FAMILIES = families()
GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "upstream"


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_has_upstream_cases(name: str) -> None:
    cases = sorted((GOLDEN / name).glob("case-*"))
    assert cases, f"golden/upstream/{name} has no case: make one with tools/make_oracle.py (docs/adding-a-family.md)"
    for case in cases:
        assert (case / "meta.json").is_file() and (case / "logits.safetensors").is_file() and (case / "source").is_dir()
        assert "input_ids" in json.loads((case / "meta.json").read_text())
    assert (GOLDEN / name / "README.md").is_file()


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_point_is_touched_by_an_applicable_mutant(name: str) -> None:
    fam = FAMILIES[name]
    feeds = {p.ref: (p.module.format(layer=0), [], p.config) for p in fam.points}
    hit: set[str] = set()
    for case in fam.all_cases().values():
        clean = Mutable.of(fam.convert(fam.tiny(0, layout=case.layout, **case.config)), {})
        for mutant in [*mutants_for(fam), *structural(fam)]:
            m = plant(mutant, clean)
            if not m.same_as(clean):
                hit |= touched(clean, m, feeds)
    assert not {p.ref for p in fam.points} - hit, f"{name}: no applicable mutant touches these points"


def test_make_oracle_writes_a_case_the_oracle_tests_read(tmp_path: Path) -> None:
    fam = FAMILIES["mixtral"]
    entered = []

    @contextmanager
    def shim():  # what a CPU run of an upstream would patch; here it only records that it was entered
        entered.append(True)
        yield

    def upstream(source: Path, ids: torch.Tensor) -> torch.Tensor:  # stands in for the upstream's own forward pass
        checkpoint = fam.read(source)
        return fam.reference(UpcastTensors(checkpoint.tensors, "cpu", torch.float32), checkpoint.config, ids)

    folder = make_oracle(fam, "tiny", tmp_path, upstream, upstream_id="example@0:ref.py", seed=3, shim=shim,
                         config={"n_layers": 2})
    meta = json.loads((folder / "meta.json").read_text())
    assert entered and meta["upstream"] == "example@0:ref.py" and meta["config"]["n_layers"] == 2
    expected = load_file(folder / "logits.safetensors")["logits"]
    write_converted(fam.convert(fam.read(folder / "source")), tmp_path / "hf", dtype="float32")
    with torch.no_grad():
        got = load_converted(tmp_path / "hf", "cpu", "float32", fam)(torch.tensor(meta["input_ids"])).logits
    assert got.shape == expected.shape and (got - expected).abs().max().item() < 1e-4
    readme = (tmp_path / "README.md").read_text()
    for heading in ("## Upstream code used", "## How the data was generated", "## Cases",
                    "## Facts a converter must get right"):  # the sections the existing oracle READMEs have
        assert heading in readme and all(heading in (GOLDEN / f / "README.md").read_text()
                                         for f in ("gemma", "mixtral", "llama")), heading
