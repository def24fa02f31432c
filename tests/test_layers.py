"""The harness's layers import one way: front ends -> mutation -> parity -> family -> mapping -> io.

Read from the source (``ast``), so a wrong-way import fails here even where it is deferred inside a function.
Imports under ``if TYPE_CHECKING:`` are annotations, not dependencies, and are allowed.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parent.parent / "harness"
ORDER = ["io", "mapping", "family", "parity", "mutation"]  # each may import only those before it
SHARED = {"errors", "signals", "terminal", "lazy"}  # small helpers any layer may use
NO_TRANSFORMERS = {"io", "mapping"}


def _layer(module: str) -> str | None:
    """The layer of a dotted ``harness.*`` module; ``None`` for a shared helper, ``"front"`` for a front end."""
    parts = module.split(".")
    if parts[0] != "harness" or len(parts) < 2:
        return None
    if parts[1] in ORDER:
        return parts[1]
    return None if parts[1] in SHARED else "front"


def _rank(layer: str) -> int:
    return ORDER.index(layer) if layer in ORDER else len(ORDER)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import outside ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text())
    guarded = [n for n in ast.walk(tree) if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)]
    skipped = {id(n) for block in guarded for n in ast.walk(block)}
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names if node.module == "harness"]
    return found


def _modules() -> list[Path]:
    return sorted(HARNESS.rglob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(HARNESS)))
def test_imports_point_down_the_layers(path: Path) -> None:
    here = _layer("harness." + ".".join(path.relative_to(HARNESS).with_suffix("").parts))
    if here is None or here == "front":
        return
    wrong = [f"line {line}: {module} ({_layer(module)})" for line, module in _imports(path)
             if (there := _layer(module)) is not None and _rank(there) > _rank(here)]
    assert not wrong, f"harness/{path.relative_to(HARNESS)} ({here}) imports a layer above it: {wrong}"


@pytest.mark.parametrize("path", [p for p in _modules() if p.relative_to(HARNESS).parts[0] in NO_TRANSFORMERS],
                         ids=lambda p: str(p.relative_to(HARNESS)))
def test_io_and_mapping_never_import_transformers(path: Path) -> None:
    assert not [m for _, m in _imports(path) if m.split(".")[0] in {"transformers", "accelerate"}]


def test_the_check_sees_a_wrong_way_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from harness.parity.metrics import TORCH_DTYPES\nfrom typing import TYPE_CHECKING\n"
                   "if TYPE_CHECKING:\n    from harness.mutation.planting import Mutant\n")
    assert [m for _, m in _imports(bad)] == ["harness.parity.metrics", "typing"]
    assert _rank(_layer("harness.parity.metrics")) > _rank("mapping")


@pytest.mark.parametrize("package", [p.parent.name for p in sorted(HARNESS.glob("*/__init__.py"))])
def test_every_exported_name_resolves(package: str) -> None:
    module = importlib.import_module(f"harness.{package}")
    missing = [name for name in getattr(module, "__all__", ()) if not _resolves(module, name)]
    assert not missing, f"harness.{package} exports names it cannot give: {missing}"


def _resolves(module: object, name: str) -> bool:
    try:
        getattr(module, name)
    except (AttributeError, KeyError):  # a lazy export pointing at a module that lacks the name
        return False
    return True
