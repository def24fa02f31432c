"""Start fast: help imports no family, torch or transformers; a conversion never imports transformers, and one
that only moves bytes never imports torch (checked in a fresh interpreter, where sys.modules tells)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.registry import family

ROOT = Path(__file__).resolve().parent.parent
_PROBE = """
import json, sys
from harness.cli import main
try:
    status = main(sys.argv[1:])
except SystemExit as stop:
    status = stop.code
heavy = ("torch", "transformers", "safetensors.torch", "converters.mixtral", "converters.gemma")
print(json.dumps({"status": status, "loaded": [m for m in heavy if m in sys.modules]}))
"""


def _loaded(*argv: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, *argv], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [["--help"], ["convert", "--help"], ["verify", "--help"], ["check", "--help"]])
def test_help_imports_no_family_and_no_torch(argv: list[str]) -> None:
    assert _loaded(*argv) == {"status": 0, "loaded": []}


def test_a_family_help_imports_that_family_alone() -> None:
    assert _loaded("convert", "mixtral", "--help") == {"status": 0, "loaded": ["converters.mixtral"]}
    gemma = _loaded("verify", "gemma", "--help")  # its options are built; gemma's source module imports torch
    assert "converters.gemma" in gemma["loaded"] and "transformers" not in gemma["loaded"]
    assert "converters.mixtral" not in gemma["loaded"]


def test_a_byte_only_conversion_imports_neither_torch_nor_transformers(tmp_path: Path) -> None:
    mixtral = family("mixtral")
    mixtral.write(mixtral.tiny(0), tmp_path / "src", container="pt-shards")
    found = _loaded("convert", "mixtral", str(tmp_path / "src"), str(tmp_path / "out"), "--quiet")
    assert found == {"status": 0, "loaded": ["converters.mixtral"]}
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_a_computing_conversion_imports_torch_but_not_transformers(tmp_path: Path) -> None:
    mixtral = family("mixtral")
    mixtral.write(mixtral.tiny(0), tmp_path / "src", container="pt-shards")
    found = _loaded("convert", "mixtral", str(tmp_path / "src"), str(tmp_path / "out"), "--quiet", "--dtype", "float16")
    assert found == {"status": 0, "loaded": ["torch", "converters.mixtral"]}
