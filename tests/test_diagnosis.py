"""Diagnosis of a failed parity: teacher-forced localisation and the catalogue's signature match.

- probing a reference changes nothing it computes, and every point it reports maps to a transformers module;
- a clean conversion of every case of every family is never diagnosed;
- a bug outside the catalogue (one layer's MLP output weight scaled) is named at that sub-module, not earlier;
- over every catalogue mutant and case (``convparity mutate --diagnose``): the named sub-module is one the
  mutant touched, the mutant's class is ranked first in >= 90% and in the top three in 100% of kills;
- the same targets for the structural catalogue, ranked against itself, on each family's first case, every point of
  the family in its table; a kill whose model cannot be built (a refused config) is left out of localisation only;
- signatures: the same failure matches 1, unrelated failures 0, indistinguishable mutants form one class;
- the diagnosis reaches the reports (JUnit message, Markdown).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

from harness.mutation import accuracy
from harness.mutation.catalogue import swap_q_and_k
from harness.mutation.diagnosis import diagnose, rank
from harness.mutation.on_failure import diagnose_case
from harness.mutation.runner import cases_for, plant, prepare, write_mutable
from harness.mutation.structural import structural
from harness.parity.metrics import compare_logits, tolerance_for
from harness.parity.parity import ParityResult, UpcastTensors, load_converted
from harness.parity.points import points_for, record, sites, unsupported
from harness.parity.report import write_junit, write_markdown
from harness.parity.signature import Mark, similarity
from harness.registry import families, family

FAMILIES = families()
pytestmark = pytest.mark.skipif(unsupported() is not None, reason=unsupported() or "")
CASES = [(f, c) for f, fam in FAMILIES.items() for c in cases_for(fam)]


@pytest.mark.parametrize(("name", "case"), CASES, ids=[f"{f}-{c}" for f, c in CASES])
def test_probe_changes_nothing_and_every_point_maps_to_a_module(name: str, case: str, tmp_path: Path) -> None:
    fam = FAMILIES[name]
    run = prepare(fam, case, cases_for(fam)[case], tmp_path)
    tensors = UpcastTensors(run.source.tensors, "cpu", torch.float32)
    plain = fam.reference(tensors, run.source.config, run.tokens)
    seen: list[str] = []
    probed = fam.reference(tensors, run.source.config, run.tokens, probe=lambda points: seen.extend(points))
    assert torch.equal(plain, probed)
    recording = record(fam, run.source, run.tokens)
    assert sorted(seen) == sorted(recording)
    mapped = sites(points_for(fam), recording)
    assert [s.name for s in mapped if s.name in recording] and {s.name for s in mapped} == set(recording)
    write_mutable(run.clean, tmp_path / "hf", torch.float32)
    model = load_converted(tmp_path / "hf", "cpu", "float32", fam)
    for site in mapped:
        model.get_submodule(site.module)  # raises if the declared module path does not exist


@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_clean_conversion_is_never_diagnosed(name: str, tmp_path: Path) -> None:
    fam = FAMILIES[name]
    for case, spec in cases_for(fam).items():
        run = prepare(fam, case, spec, tmp_path)
        write_mutable(run.clean, tmp_path / case / "hf", torch.float32)
        found = diagnose(fam, run, tmp_path / case / "hf", tmp_path, use_catalogue=False)
        assert found is None, f"{name}/{case}: {found.summary() if found else ''}"


def test_a_bug_outside_the_catalogue_is_named_where_it_was_made(tmp_path: Path) -> None:
    fam = family("llama")
    run = prepare(fam, "gqa-mp2", cases_for(fam)["gqa-mp2"], tmp_path)
    m = run.clean.copy()
    m.tensors["model.layers.1.mlp.down_proj.weight"] = m.tensors["model.layers.1.mlp.down_proj.weight"] * 1.01
    write_mutable(m, tmp_path / "hf", torch.float32)
    found = diagnose(fam, run, tmp_path / "hf", tmp_path)
    assert found is not None and found.finding is not None
    assert found.finding.point == "layers.1.feed_forward"
    assert "model.layers.1.mlp.down_proj.weight" in found.finding.feeds
    assert found.finding.rel is not None and found.finding.agree is not None
    assert found.finding.rel > found.finding.bound > found.finding.agree
    assert set(found.signature) == {"layers.1.feed_forward"}  # teacher forcing: nothing after it disagrees
    assert found.matches and all(0.0 <= m.score < 1.0 for m in found.matches)


def test_a_planted_bug_is_named_and_matched(tmp_path: Path) -> None:
    fam = family("llama")
    run = prepare(fam, "mha-mp2", cases_for(fam)["mha-mp2"], tmp_path)  # q and k of one shape: swappable
    write_mutable(plant(swap_q_and_k, run.clean), tmp_path / "hf", torch.float32)
    text = diagnose_case(fam, "mha-mp2", tmp_path / "hf")
    assert text.startswith("layers.0.attention (model.layers.0.self_attn: attention")
    assert "model.layers.0.self_attn.q_proj.weight" in text
    assert "likely: swap_q_and_k" in text and "(match 1.00)" in text


@pytest.mark.parametrize("name", list(FAMILIES))
def test_diagnosis_accuracy_over_the_catalogue(name: str, tmp_path: Path) -> None:
    trials = accuracy.run_accuracy(FAMILIES[name], tmp_path)
    killed = [t for t in trials if t.killed]
    assert len(killed) >= 8
    missed = [f"{t.case} {t.mutant}: named {t.point}, rank {t.rank}" for t in killed if not t.touched or not t.rank
              or t.rank > 3]
    assert not missed, missed
    assert sum(t.rank == 1 for t in killed) >= 0.9 * len(killed)
    assert not [t.summary for t in trials if t.mutant == "(clean)" and t.summary]
    assert accuracy.meets_targets(trials)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_diagnosis_accuracy_over_the_structural_catalogue(name: str, tmp_path: Path) -> None:
    # the family's first case only, to keep the suite quick: `mutate --diagnose --structural` runs every case
    fam = FAMILIES[name]
    trials = accuracy.run_accuracy(fam, tmp_path, mutants=structural(fam), cases=[next(iter(cases_for(fam)))])
    killed = [t for t in trials if t.killed]
    assert len(killed) >= 10
    # the rule leaves out only a refused config and a raised layer count
    unnamed = {(t.mutant, t.unlocalisable) for t in killed if not accuracy.localisable(t)}
    assert all(m.startswith("perturb ") and why == accuracy.NO_MODEL or (m, why) == (
        "perturb num_hidden_layers", accuracy.NO_LAYER) for m, why in unnamed), unnamed
    missed = [f"{t.mutant}: named {t.point}, rank {t.rank}" for t in killed
              if (accuracy.localisable(t) and not t.touched) or not t.rank or t.rank > 3]
    assert not missed, missed
    assert sum(t.rank == 1 for t in killed) >= 0.9 * len(killed)
    assert not [t.summary for t in trials if t.mutant == "(clean)" and t.summary]
    assert accuracy.meets_targets(trials)
    table = accuracy.point_accuracy_table(fam, trials)
    assert [line.split()[0] for line in table[1:]] == [p.ref for p in fam.points]


def test_only_a_model_that_cannot_be_built_is_left_out_of_localisation() -> None:
    ranked = {"killed": True, "rank": 1, "class_size": 1}
    unbuilt = accuracy.Trial("f", "c", "perturb n_head", point="load", unlocalisable=accuracy.NO_MODEL, **ranked)
    assert accuracy.meets_targets([unbuilt])  # no point to name: counted for its rank only
    assert accuracy.accuracy_table([unbuilt])[1].split()[1:5] == ["1", "1", "-", "100.0%"]
    wrong = accuracy.Trial("f", "c", "scale embd", point="h.0.mlp", **ranked)
    assert not accuracy.meets_targets([wrong])  # a sub-module it did not touch
    assert not accuracy.meets_targets([wrong, *[accuracy.Trial("f", "c", f"m{i}", point="h.0.mlp", touched=True,
                                                               **ranked) for i in range(3)]])


def test_signatures_score_alike_and_group_into_classes() -> None:
    rotary = {"layers.0.attention": Mark("diverged", -0.5, (0.1, 0.5, 1.0), (1.0, 1.0))}
    head = {"output": Mark("diverged", -2.0, (1.0, 1.0, 1.0), (0.0, 1.0))}
    assert similarity(rotary, rotary) == pytest.approx(1.0)
    assert similarity(rotary, head) == 0.0
    assert 0.0 < similarity(rotary, {**rotary, **head}) < 1.0
    flat = {"layers.0.attention": Mark("diverged", -0.5, (1.0, 1.0, 1.0), (1.0, 1.0))}
    assert similarity(rotary, flat) < 1.0  # the same point, but the error does not grow with position
    matches = rank(rotary, [("a", "bug a", rotary), ("b", "bug b", dict(rotary)), ("c", "bug c", head)])
    assert [m.mutants for m in matches] == [["a", "b"], ["c"]]
    assert matches[0].score == 1.0 and matches[1].score == 0.0


def test_the_diagnosis_reaches_the_reports(tmp_path: Path) -> None:
    logits = torch.zeros(1, 2, 4)
    r = ParityResult("llama", "gqa-mp2", "cpu", "float32", compare_logits(logits, logits + 1),
                     tolerance_for("cpu", "float32"), ["max_abs 1 > 0.0001"], diagnosis="layers.0.attention here")
    write_junit([r], tmp_path / "junit.xml", {})
    failure = ET.parse(tmp_path / "junit.xml").find(".//failure")
    assert failure is not None and failure.get("message", "").endswith("; diagnosis: layers.0.attention here")
    write_markdown([r], tmp_path / "report.md")
    assert "diagnosis: layers.0.attention here" in (tmp_path / "report.md").read_text()
