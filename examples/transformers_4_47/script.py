"""Load one of transformers' own conversion scripts from its file, as a module (it is not importable by name)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["load"]


def load(path: str) -> ModuleType:
    """The script at ``path``, imported without running its ``main``."""
    file = Path(path)
    if not file.is_file():
        sys.exit(f"no conversion script at {path}: fetch it as README.md shows (pip download transformers==4.47.1)")
    spec = importlib.util.spec_from_file_location(file.stem, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
