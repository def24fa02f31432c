"""Start fast: help imports no family, torch or transformers; a conversion never imports transformers, and one
that only rearranges or casts bytes never imports torch (checked in a fresh interpreter, where sys.modules
tells)."""

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
    assert _loaded("verify", "gemma", "--help") == {"status": 0, "loaded": ["converters.gemma"]}


@pytest.mark.parametrize(("name", "case", "options"), [
    ("mixtral", "gqa", []), ("mixtral", "fused-shards", ["--dtype", "float16"]), ("gemma", "mqa", []),
    ("llama", "gqa-mp2", ["--dtype", "bfloat16"]), ("rwkv", "ffn-bf16", []), ("mistral", "layer-pattern", []),
    ("mistral", "v01-window", ["--dtype", "bfloat16"])],
    ids=["renames", "transposed-and-cast", "gemma-ckpt", "llama-ranks", "rwkv-pth", "mistral-shards", "mistral-pth"])
def test_a_conversion_that_rearranges_or_casts_bytes_imports_neither_torch_nor_transformers(
        tmp_path: Path, name: str, case: str, options: list[str]) -> None:
    fam = family(name)
    spec = fam.cases[case]
    fam.write(fam.tiny(0, layout=spec.layout, **spec.config), tmp_path / "src", container=spec.container)
    found = _loaded("convert", name, str(tmp_path / "src"), str(tmp_path / "out"), "--quiet", *options)
    assert found == {"status": 0, "loaded": [f"converters.{name}"] if name in ("mixtral", "gemma") else []}
    assert any((tmp_path / "out").glob("*.safetensors"))


def test_a_computing_conversion_imports_torch_but_not_transformers(tmp_path: Path) -> None:
    gemma = family("gemma")
    gemma.write(gemma.tiny(0, layout="quant"), tmp_path / "src")
    found = _loaded("convert", "gemma", str(tmp_path / "src"), str(tmp_path / "out"), "--quiet")
    assert found == {"status": 0, "loaded": ["torch", "converters.gemma"]}  # int8 weights are dequantized
