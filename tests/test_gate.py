"""`convparity gate`: changed files map to families, and only those families run."""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.gate import affected_families, run_gate
from harness.registry import families

ROOT = Path(__file__).resolve().parent.parent
KNOWN = ["gemma", "mixtral", "phi"]


@pytest.mark.parametrize(("changed", "expected"), [
    (["converters/phi/convert.py"], {"phi"}),
    (["golden/upstream/gemma/case-x/meta.json", "golden/mixtral/gqa.json"], {"gemma", "mixtral"}),
    (["tests/test_phi.py", "README.md", "docs/design.md"], {"phi"}),
    (["harness/io/writer.py"], set(KNOWN)),
    (["constraints.txt"], set(KNOWN)),
    (["README.md", "converters/__init__.py", "converters/unknown/x.py"], set()),
])
def test_changed_files_map_to_families(changed: list[str], expected: set[str]) -> None:
    assert set(affected_families(changed, KNOWN)) == expected


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout of convparity")
    repo = tmp_path_factory.mktemp("clone") / "convparity"
    _git(ROOT, "clone", "-q", str(ROOT), str(repo))
    return repo


def _suites(junit: Path) -> set[str]:
    return {s.get("name") for s in ET.parse(junit).getroot()}


def test_a_family_change_gates_that_family_only(clone: Path, tmp_path: Path) -> None:
    with open(clone / "converters" / "phi" / "convert.py", "a") as f:
        f.write("# a reviewed change\n")
    _git(clone, "commit", "-qam", "change phi")
    status = run_gate("HEAD~1", families(), ["cpu"], ["float32"], junit=tmp_path / "j.xml",
                      markdown=tmp_path / "s.md", repo=clone)
    assert status == 0
    assert _suites(tmp_path / "j.xml") == {"convparity.phi"}
    assert "PASS" in (tmp_path / "s.md").read_text()


def test_a_harness_change_gates_every_family(clone: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open(clone / "harness" / "parity" / "metrics.py", "a") as f:
        f.write("# a reviewed change\n")
    _git(clone, "commit", "-qam", "change harness")
    checked: list[str] = []
    monkeypatch.setattr("harness.gate.check_family", lambda fam, *a, **k: checked.append(fam.name) or [])
    assert run_gate("HEAD~1", families(), ["cpu"], ["float32"], repo=clone) == 0
    assert checked == list(families())


def test_a_golden_mismatch_fails_the_gate(clone: Path, tmp_path: Path) -> None:
    golden = clone / "golden" / "mixtral" / "gqa.json"
    golden.write_text(golden.read_text().replace('"rope_theta": 1000000.0', '"rope_theta": 10000.0'))
    _git(clone, "commit", "-qam", "tamper with a golden")
    assert run_gate("HEAD~1", families(), ["cpu"], ["float32"], junit=tmp_path / "j.xml", repo=clone) == 1
    failures = [c.find("failure") for c in ET.parse(tmp_path / "j.xml").getroot().iter("testcase")]
    assert any(f is not None and "config.rope_theta" in f.get("message") for f in failures)
