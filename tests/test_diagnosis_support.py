"""Diagnosis runs only where its named points mean something: with transformers 4.x it says so instead."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from harness.mutation.on_failure import diagnose_case
from harness.parity.points import unsupported
from harness.registry import family


def test_transformers_4_gets_a_reason_not_a_diagnosis(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "4.57.6")
    why = unsupported()
    assert why is not None and "transformers 5" in why and "4.57.6" in why
    assert diagnose_case(family("mixtral"), "gqa", tmp_path) == why  # nothing is planted or loaded


def test_transformers_5_is_supported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "5.23.0")
    assert unsupported() is None
