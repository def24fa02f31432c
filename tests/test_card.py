"""The verification card: `convert --verify` writes it, `verify --card` reproduces it and catches a tampered file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file

from harness.cli import main
from harness.parity.card import CARD_JSON, CARD_README, file_hashes

FAST = ["--quiet", "--batch", "1", "--seq-len", "8"]


@pytest.fixture
def carded(tmp_path: Path, convparity_round_trip: Callable, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path]:
    """(source, converted): a tiny mixtral converted with ``--verify``, so with a card."""
    source = convparity_round_trip("mixtral", "gqa").model_dir.parent / "source"
    out = tmp_path / "hf"
    assert main(["convert", "mixtral", str(source), str(out), "--verify", *FAST]) == 0
    assert "card: wrote" in capsys.readouterr().out
    return source, out


def test_convert_verify_writes_a_model_card_and_its_record(carded: tuple[Path, Path]) -> None:
    source, out = carded
    card = ModelCard.load(out / CARD_README)
    assert card.data.library_name == "transformers" and {"convparity", "mixtral"} <= set(card.data.tags)
    record = json.loads((out / CARD_JSON).read_text())
    assert record["schema"] == "convparity/1" and record["result"]["passed"]
    assert record["files"]["output"] == file_hashes(out, skip=(CARD_JSON, CARD_README))
    assert record["files"]["source"] == file_hashes(source) and record["files"]["source"]
    assert {"model.safetensors", "config.json"} <= set(record["files"]["output"])
    assert record["environment"]["torch"] and record["environment"]["command"].startswith("convparity")
    text = card.text
    assert "**PASS**" in text and "model.layers.1" in text and "logits" in text
    assert all(digest in text for digest in record["files"]["output"].values())  # every output file's sha256
    assert record["result"]["bound"]["noise_dtype"] == "float64"


def test_verify_card_reproduces_an_unchanged_directory(carded: tuple[Path, Path],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    source, out = carded
    before = {p: p.read_bytes() for p in (out / CARD_README, out / CARD_JSON)}
    assert main(["verify", "mixtral", str(source), str(out), "--card", *FAST]) == 0
    assert "card: reproduced" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in before} == before  # the proof is kept as it was written


def test_verify_card_names_a_tensor_changed_after_the_card(carded: tuple[Path, Path],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    source, out = carded
    tensors = load_file(out / "model.safetensors")
    name = next(k for k in sorted(tensors) if k.endswith("o_proj.weight"))
    tensors[name] = tensors[name] * 1.0001
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    assert main(["verify", "mixtral", str(source), str(out), "--card", *FAST]) == 1
    printed = capsys.readouterr().out
    assert f"FAIL: card: output file {out / 'model.safetensors'} changed" in printed


def test_a_foreign_readme_is_not_overwritten(tmp_path: Path, convparity_round_trip: Callable,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    rt = convparity_round_trip("mixtral", "gqa")
    (rt.model_dir / CARD_README).write_text("# someone's notes\n")
    try:
        assert main(["verify", "mixtral", str(rt.model_dir.parent / "source"), str(rt.model_dir), "--card",
                     *FAST]) == 2
        assert "README.md exists and is not a convparity card" in capsys.readouterr().err
    finally:
        (rt.model_dir / CARD_README).unlink()
