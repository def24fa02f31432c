"""No traceback, ever, for a user's input (issue 11).

Every family's tiny sources, broken in each of the ways in ``tests/corruptions.py`` (truncated, flipped, replaced
by a directory, text, random bytes or zeros, the wrong container, broken indexes and configs, config values of
the wrong type or value, tensors removed, renamed, reshaped, of odd dtypes or holding NaN/Inf, ...), must give a
one-line refusal (library and, for one in four, the command line: exit 2, one line on stderr), or a conversion
where the corruption says why that is right, and leave nothing behind.

CI runs 50 examples per family, the same ones every run (derandomised); ``CONVPARITY_FUZZ_PROFILE=thorough``
draws 500 new ones per family (or set a number). ``python -m tests.fuzz_support --per-family 200`` prints the
table of kind x outcome.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import harness.pipeline
from harness.cli import INTERNAL_ERROR, main
from harness.errors import ConversionError
from harness.pipeline import convert_checkpoint
from harness.registry import families
from tests.corruptions import applicable
from tests.fuzz_fixtures import Evil, rewrite_json, rewrite_torch, truncate
from tests.fuzz_support import attempt
from tests.pristine import Pristine

FAMILIES = families()
_PROFILES = {"ci": (50, True), "thorough": (500, False)}
_CHOSEN = os.environ.get("CONVPARITY_FUZZ_PROFILE", "ci")
EXAMPLES, DERANDOMIZE = _PROFILES[_CHOSEN] if _CHOSEN in _PROFILES else (int(_CHOSEN), False)


@pytest.fixture(scope="session")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], list[Pristine]]:
    """Every case of a family written once per session (per xdist worker), in its own temporary folder."""
    cache: dict[str, list[Pristine]] = {}

    def get(name: str) -> list[Pristine]:
        if name not in cache:
            fam = FAMILIES[name]
            cache[name] = [Pristine.build(fam, c, tmp_path_factory.mktemp(f"pristine-{name}-{c}") / "src")
                           for c in fam.cases]
        return cache[name]
    return get


@pytest.mark.parametrize("family", sorted(FAMILIES))
@settings(max_examples=EXAMPLES, derandomize=DERANDOMIZE, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_corrupted_source_is_refused_in_one_line_and_leaves_nothing(
        family: str, data: st.DataObject, pristine: Callable[[str], list[Pristine]],
        tmp_path_factory: pytest.TempPathFactory) -> None:
    sources = pristine(family)
    kind = data.draw(st.sampled_from(sorted({k for p in sources for k in applicable(p)})), label="kind")
    source = data.draw(st.sampled_from([p for p in sources if kind in applicable(p)]), label="case")
    rng = data.draw(st.randoms(use_true_random=False), label="rng")
    cli = data.draw(st.integers(0, 3), label="cli") == 0
    work = tmp_path_factory.mktemp(f"fuzz-{family}")
    try:
        outcome = attempt(source, kind, rng, work, cli=cli)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assume(outcome.status != "n/a")
    assert outcome.ok, outcome.explain()


# ---- the wording of the most common refusals -------------------------------------------------------------------

def _nan_q(d: Path) -> None:
    rewrite_torch(d / "consolidated.00.pth", lambda s: s["layers.0.attention.wq.weight"].view(-1)[:2].fill_(torch.nan))


# Key-table errors end with whose table it was and what to check (harness.mapping.keymap.Layouts.pick).
_MIXTRAL_NEXT = (r" \(mixtral, layout 'experts'\): is SOURCE a Mixtral checkpoint in this layout\? `convparity "
                 r"describe mixtral` lists the keys each layout expects\.$")
PINNED: dict[str, tuple[str, str, Callable[[Path], object], str]] = {
    "random bytes": ("mixtral", "gqa", lambda d: (d / "consolidated.00.pth").write_bytes(bytes(range(7, 250))),
                     r"consolidated.00.pth is not a torch checkpoint: expected a torch.save file \(a zip archive or a "
                     r"pickle\), found unrecognised binary data \(first bytes 07 08 09 0a"),
    "zeros": ("mixtral", "gqa", lambda d: (d / "consolidated.00.pth").write_bytes(bytes(4096)),
              r"is not a torch checkpoint: .*found only zero bytes \(the first 4096 of 4096; a failed copy"),
    "directory": ("phi", "mixformer-v0", lambda d: ((d / "pytorch_model.bin").unlink(),
                                                    (d / "pytorch_model.bin").mkdir()),
                  r"pytorch_model.bin is not a torch checkpoint: .*found a directory$"),
    "LFS pointer": ("rwkv", "base", lambda d: next(d.glob("*.pth")).write_text("version https://git-lfs.github"
                                                                               ".com/spec/v1\noid sha256:12\n"),
                    r"found a Git LFS pointer, not the weights \(run `git lfs pull` in that repository\)"),
    "safetensors named .pth": ("mixtral", "gqa", lambda d: save_file({"w": torch.ones(2)}, d / "consolidated.00.pth"),
                               r"consolidated.00.pth is not a torch checkpoint: .*found a safetensors file"),
    "truncated zip": ("mixtral", "gqa", lambda d: truncate(d / "consolidated.00.pth", 1000),
                      r"cannot read .*consolidated.00.pth as a torch checkpoint: it is a zip archive .* but "
                      r"RuntimeError: .*; is it truncated or corrupt\?"),
    "truncated safetensors": ("phi", "gqa", lambda d: truncate(d / "model.safetensors", 5000),
                              r"cannot read .*model.safetensors as safetensors: .*truncated or corrupt\?"),
    "truncated .nemo": ("gpt_sw3", "nemo-padvocab", lambda d: truncate(d / "model.nemo", 3000),
                        r"cannot read .*model.nemo as a .nemo archive: it is a tar archive .*, but ReadError: "
                        r"unexpected end of data; is it truncated or corrupt\?"),
    "code in a pickle": ("gemma", "mqa", lambda d: torch.save({"model_state_dict": {"w": Evil(d)}}, d / "model.ckpt"),
                         r"model.ckpt holds objects other than tensors and plain containers; refusing to unpickle it "
                         r"\(that could run code\)"),
    "UTF-16 config": ("mixtral", "gqa", lambda d: (d / "params.json").write_bytes(
                          (d / "params.json").read_text().encode("utf-16")),
                      r"params.json is not UTF-8 text: expected a JSON config in UTF-8, found UTF-16 text"),
    "broken index": ("phi", "partial-rotary", lambda d: (d / "model.safetensors.index.json").write_text("{"),
                     r"model.safetensors.index.json is not a shard index with a weight_map \(JSONDecodeError"),
    "zero heads": ("mixtral", "gqa", lambda d: rewrite_json(d / "params.json", n_heads=0),
                   r"^params.json: n_heads is 0; expected a positive integer$"),
    "negative heads": ("gemma", "mqa", lambda d: rewrite_json(d / "config.json", num_attention_heads=-2),
                       r"^config.json: num_attention_heads is -2; expected a positive integer$"),
    "string eps": ("mixtral", "gqa", lambda d: rewrite_json(d / "params.json", norm_eps="1e-05"),
                   r"^params.json: norm_eps is '1e-05' \(a string\); expected a finite number > 0$"),
    "list size": ("phi", "gqa", lambda d: rewrite_json(d / "config.json", n_embd=[32]),
                  r"^config.json: n_embd is \[32\] \(a list\); expected a positive integer$"),
    "NaN rotary_dim": ("phi", "gqa", lambda d: rewrite_json(d / "config.json", rotary_dim=float("nan")),
                       r"^config.json: rotary_dim is nan; expected a positive integer$"),
    "inf eps": ("gemma", "mqa", lambda d: rewrite_json(d / "config.json", rms_norm_eps=float("inf")),
                r"^config.json: rms_norm_eps is inf; expected a finite number > 0$"),
    "heads not dividing": ("mixtral", "gqa", lambda d: rewrite_json(d / "params.json", n_heads=6, n_kv_heads=4),
                           r"^params.json: n_heads 6 is not a multiple of n_kv_heads 4; each kv head serves a whole "
                           r"group of q heads$"),
    "integer weight": ("mixtral", "gqa", lambda d: rewrite_torch(d / "consolidated.00.pth", lambda s: s.update(
                           {"layers.0.attention.wq.weight": s["layers.0.attention.wq.weight"].long()})),
                       r"^tensor dtypes: layers.0.attention.wq.weight \(.*consolidated.00.pth\) is int64, expected "
                       r"float32, bfloat16, float16 or float64" + _MIXTRAL_NEXT),
    "NaN weights": ("mixtral", "gqa", _nan_q,
                    r"^non-finite weights: model.layers.0.self_attn.q_proj.weight \(2 NaN/Inf\); .*--allow-nonfinite"),
    "tensor removed": ("mixtral", "gqa", lambda d: rewrite_torch(d / "consolidated.00.pth", lambda s: s.pop(
                           "layers.1.attention.wk.weight")),
                       r"^key ledger: missing in source: layers.1.attention.wk.weight" + _MIXTRAL_NEXT),
    "tensor reshaped": ("mixtral", "gqa", lambda d: rewrite_torch(d / "consolidated.00.pth", lambda s: s.update(
                            {"norm.weight": s["norm.weight"][None]})),
                        r"^key ledger: mis-shaped: norm.weight is \(1, 48\), expected \(48,\)" + _MIXTRAL_NEXT),
}


@pytest.mark.parametrize("what", sorted(PINNED))
def test_common_refusals_are_worded_as_pinned(what: str, pristine: Callable[[str], list[Pristine]],
                                               tmp_path: Path) -> None:
    family, case, corrupt, match = PINNED[what]
    src = tmp_path / "src"
    shutil.copytree(next(p for p in pristine(family) if p.case == case).path, src)
    corrupt(src)
    with pytest.raises(ConversionError, match=match):
        convert_checkpoint(FAMILIES[family], src, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"] and not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("what", ["zero heads", "truncated .nemo", "NaN weights"])
def test_the_command_line_prints_one_line_and_exits_2(what: str, pristine: Callable[[str], list[Pristine]],
                                                      tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    family, case, corrupt, match = PINNED[what]
    src = tmp_path / "src"
    shutil.copytree(next(p for p in pristine(family) if p.case == case).path, src)
    corrupt(src)
    assert main(["convert", family, str(src), str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("convparity: error: ")
    assert not (tmp_path / "out").exists()


def test_an_internal_error_is_one_line_unless_debugging(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug\nwith a second line")

    monkeypatch.setattr(harness.pipeline, "convert_checkpoint", crash)
    argv = ["convert", "rwkv", str(tmp_path), str(tmp_path / "out")]
    monkeypatch.delenv("CONVPARITY_DEBUG", raising=False)
    assert main(argv) == INTERNAL_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("convparity: internal error: RuntimeError: a bug; rerun with --debug (or CONVPARITY_DEBUG=1)")
    with pytest.raises(RuntimeError, match="a bug"):
        main(["--debug", *argv])
    monkeypatch.setenv("CONVPARITY_DEBUG", "1")
    with pytest.raises(RuntimeError, match="a bug"):
        main(argv)


def test_debug_shows_the_traceback_of_a_refusal_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.pth").write_text("hello")
    assert main(["--debug", "convert", "rwkv", str(tmp_path / "x.pth"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.splitlines()[-1].startswith("convparity: error: ")


def test_nonfinite_weights_convert_with_a_warning_when_allowed(pristine: Callable[[str], list[Pristine]],
                                                                tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(next(p for p in pristine("mixtral") if p.case == "gqa").path, src)
    _nan_q(src)
    converted, _ = convert_checkpoint(FAMILIES["mixtral"], src, tmp_path / "out", allow_nonfinite=True)
    assert any("non-finite" in note and "q_proj" in note for note in converted.notes)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "mixtral"
