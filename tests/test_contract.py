"""The family contract is checked at discovery, part by part, signatures included; families import only the author
surface ``harness.family`` documents."""

from __future__ import annotations

import ast
import dataclasses
import types
from pathlib import Path

import pytest

from harness.family.conformance import accepts
from harness.family.oracle import Reference
from harness.registry import contract_problems, families

FAMILIES = families()
ROOT = Path(__file__).resolve().parent.parent
# What a family may import from the harness (harness/family/__init__.py lists it)
AUTHOR_SURFACE = {"harness.errors", "harness.family", "harness.io.tensor_store", "harness.io.stacked_store",
                  "harness.io.source_files", "harness.io.tiny", "harness.io.raw_dtypes", "harness.io.sniff",
                  "harness.mapping", "harness.mapping.config_map", "harness.mapping.config_kinds",
                  "harness.mapping.keymap", "harness.mapping.rules", "harness.mapping.transforms",
                  "harness.mapping.conversion", "harness.mapping.points", "harness.mutation.planting"}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_keeps_the_contract(name: str) -> None:
    assert contract_problems(FAMILIES[name]) == []


def _with_source(fam, **members):  # a copy of the family whose source module has other members
    source = types.SimpleNamespace(**{k: getattr(fam.source, k) for k in
                                      ("read", "write", "tiny", "shapes", "CASES", "SIZES", "HUB_FILES")})
    return dataclasses.replace(fam, source=types.SimpleNamespace(**{**vars(source), **members}))


def test_a_read_with_the_wrong_signature_is_refused() -> None:
    fam = FAMILIES["mixtral"]
    problems = contract_problems(_with_source(fam, read=lambda path: None))
    assert problems == ["source.read: takes no argument 2 ('config') (it is called as (path, config=None))"]
    assert contract_problems(_with_source(fam, read=lambda path, cfg=None: None))[0].startswith(
        "source.read: argument 2 is 'cfg', expected 'config'")


def test_a_read_must_take_every_cli_option() -> None:
    fam = FAMILIES["gpt_sw3"]  # --vocab-size reaches read as vocab_size
    problems = contract_problems(_with_source(fam, read=lambda path, config=None: None))
    assert len(problems) == 1 and "takes no keyword 'vocab_size'" in problems[0]


def test_a_reference_with_the_wrong_signature_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "broken_family"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "reference.py").write_text("def forward(tensors, tokens, hidden_states=False):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fam = dataclasses.replace(FAMILIES["mixtral"], oracle=Reference("broken_family.reference"))
    problems = contract_problems(fam)
    assert any(p.startswith("oracle.reference: argument 2 is 'tokens', expected 'config'") for p in problems)
    assert any("takes no keyword 'probe'" in p for p in problems), problems


def test_a_missing_member_and_a_wrong_type_are_named() -> None:
    fam = FAMILIES["phi"]
    source = _with_source(fam, HUB_FILES=["*.bin"]).source
    del source.tiny
    problems = contract_problems(dataclasses.replace(fam, source=source))
    assert sorted(problems) == ["source.HUB_FILES: expected tuple[str, ...], got list", "source.tiny: missing"]


def test_signatures_need_the_defaults_the_harness_relies_on() -> None:
    import inspect

    wanted = inspect.signature(lambda checkpoint, path, container="default": None)
    assert accepts(lambda checkpoint, path, container: None, wanted)[0].startswith("'container' needs a default")
    assert accepts(lambda checkpoint, path, container="x", shards=2: None, wanted) == []
    assert accepts(lambda checkpoint, path, container="x", *, must: None, wanted)[0].startswith("requires 'must'")


@pytest.mark.parametrize("path", sorted((ROOT / "converters").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_families_import_only_the_author_surface(path: Path) -> None:
    tree = ast.parse(path.read_text())
    used = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and n.level == 0}
    used |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    outside = sorted(m for m in used if m.startswith("harness") and m not in AUTHOR_SURFACE
                     and not m.startswith("harness.family."))
    assert not outside, f"{path.relative_to(ROOT)} imports harness internals: {outside}"
