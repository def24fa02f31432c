"""SOURCE as a Hub repository id: resolved offline from a Hugging Face cache laid out here, never the network."""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

import pytest
from huggingface_hub import constants

from harness.cli import main
from harness.registry import families, family

COMMIT = "0123456789abcdef0123456789abcdef01234567"
FAST = ["--quiet", "--batch", "1", "--seq-len", "8"]


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hub cache in ``tmp_path``, offline: what is not in it cannot be had."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def cache_repo(cache: Path, repo_id: str, files: Path, refs: tuple[str, ...] = ("main",), sub: str = "") -> Path:
    """Lay ``files`` out as huggingface_hub's cache does: refs/<name> -> commit, snapshots/<commit>/<sub>/..."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT / sub
    snapshot.mkdir(parents=True)
    for f in files.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    for ref in refs:
        (repo / "refs" / ref).write_text(COMMIT)
    return snapshot


@pytest.fixture
def mixtral_source(tmp_path: Path) -> Path:
    fam = family("mixtral")
    fam.write(fam.tiny(0), tmp_path / "src")
    return tmp_path / "src"


@pytest.mark.parametrize("name", list(families()))
def test_every_family_declares_the_files_its_reader_uses(name: str, tmp_path: Path) -> None:
    fam = family(name)
    assert fam.hub_files and all(isinstance(p, str) for p in fam.hub_files)
    for case_name, case in fam.cases.items():
        folder = tmp_path / case_name
        fam.write(fam.tiny(0, layout=case.layout, **case.config), folder, container=case.container)
        written = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
        missed = [f for f in written if not any(fnmatch.fnmatch(f, pat) for pat in fam.hub_files)]
        assert not missed, f"{name}/{case_name}: HUB_FILES {fam.hub_files} miss {missed}"


def test_convert_and_verify_a_hub_id_offline(hub_cache: Path, mixtral_source: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    cache_repo(hub_cache, "acme/tiny-mixtral", mixtral_source, refs=("main", "v1"))
    out = tmp_path / "hf"
    assert main(["convert", "mixtral", "acme/tiny-mixtral", str(out), "--revision", "v1", "--verify", *FAST]) == 0
    assert "PASS" in capsys.readouterr().out
    record = json.loads((out / "convparity.json").read_text())
    assert record["base_model"] == "acme/tiny-mixtral"
    assert "base_model: acme/tiny-mixtral" in (out / "README.md").read_text()
    assert main(["verify", "mixtral", "acme/tiny-mixtral", str(out), "--card", *FAST]) == 0
    assert "card: reproduced" in capsys.readouterr().out


def test_files_under_one_subfolder_are_found(hub_cache: Path, tmp_path: Path) -> None:
    fam = family("llama")
    fam.write(fam.tiny(0), tmp_path / "src")
    cache_repo(hub_cache, "acme/tiny-llama", tmp_path / "src", sub="original")  # as Meta's Hub repos keep them
    assert main(["convert", "llama", "acme/tiny-llama", str(tmp_path / "hf"), "--quiet"]) == 0
    assert (tmp_path / "hf" / "config.json").is_file()


@pytest.mark.parametrize(("argv", "message"), [
    (["acme/absent"], r"^convparity: error: acme/absent@main is not in the local Hugging Face cache and the Hub "
                      r"cannot be reached \(offline\); download it once with network access: hf download acme/absent "
                      r"--include 'params.json' 'consolidated.\*'$"),
    (["{src}", "--revision", "v1"], r"^convparity: error: --revision applies to a Hub repository id, and .* is a "
                                    r"local path$"),
    (["./not/here/at/all"], r"^convparity: error: source not/here/at/all does not exist \(neither a local path nor "
                            r"a Hub id owner/name\)$"),
], ids=["missing-repo", "revision-on-a-path", "no-such-path"])
def test_bad_hub_sources_are_one_line_errors(argv: list[str], message: str, hub_cache: Path, mixtral_source: Path,
                                             tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [a.replace("{src}", str(mixtral_source)) for a in argv]
    assert main(["convert", "mixtral", args[0], str(tmp_path / "hf"), *args[1:]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert re.match(message, err), err
    assert not (tmp_path / "hf").exists()
