"""``--converter``: converters convparity did not write (tests/outside_converters.py), through the same tiny cases,
parity, diagnosis and reports; each outcome a user acts on (PASS, FAIL, REFUSED, UNLOADABLE, TIMEOUT)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import tempfile
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import ConversionError
from harness.mutation.on_failure import Diagnoser
from harness.parity.check import check_family
from harness.parity.external import ExternalConverter
from harness.parity.external_case import case_facts, external_round_trip
from harness.parity.parity import ParityResult, load_converted, make_tokens, run_parity
from harness.parity.points import unsupported
from harness.registry import family

pytest_plugins = ["pytester"]

HERE = Path(__file__).parent
CASE = "llama31-scaled"  # llama's smallest case: one rank file, two layers


def template(name: str) -> str:
    """``outside_converters.py NAME`` as a command template, run by this interpreter."""
    script = shlex.quote(str(HERE / "outside_converters.py"))
    return f"{shlex.quote(sys.executable)} {script} {name} source={{source}} output={{output}} family={{family}}"


@pytest.fixture(autouse=True)
def beside_the_converters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(HERE)  # module:function specs are imported from the working directory


def check(spec: str, dtypes: tuple[str, ...] = ("float32",), timeout: float = 120) -> list[ParityResult]:
    fam = family("llama")
    d = Diagnoser(fam)
    return check_family(fam, ["cpu"], list(dtypes), [CASE], on_round_trip=d.round_trip, on_result=d.result,
                        converter=ExternalConverter(spec, timeout))


def test_a_correct_converter_passes() -> None:
    (r,) = check("outside_converters:correct")
    assert r.outcome == "PASS" and r.metrics is not None and r.metrics.max_abs < 1e-4


def test_a_converter_that_writes_bfloat16_passes_as_a_cast(tmp_path: Path) -> None:
    fam = family("llama")
    rt = external_round_trip(ExternalConverter(template("bfloat16")), fam, CASE, fam.cases[CASE], tmp_path)
    assert rt.refusal is None and "to bfloat16" in rt.note
    tokens = make_tokens(rt.vocab_size)
    model = load_converted(rt.model_dir, "cpu", "float32", fam)
    assert run_parity(fam, CASE, rt.source, model, "cpu", "float32", tokens).passed
    unrounded = fam.read(tmp_path / CASE / "source")  # held to the source as it is, the rounding alone fails it
    assert not run_parity(fam, CASE, unrounded, model, "cpu", "float32", tokens).passed
    assert [r.outcome for r in check(template("bfloat16"), ("float32", "bfloat16"))] == ["PASS", "PASS"]


def test_one_permutation_removed_fails_naming_the_attention_of_layer_0() -> None:
    (r,) = check("outside_converters:no_rotary")
    assert r.outcome == "FAIL" and r.status == "FAIL" and r.not_run is None
    if unsupported() is not None:  # transformers 4.x: diagnosis says it cannot run rather than misplace a bug
        return
    assert r.diagnosis is not None and r.diagnosis.startswith("layers.0.attention ("), r.diagnosis
    assert "model.layers.0.self_attn.q_proj.weight" in r.diagnosis and "likely: " in r.diagnosis


def test_a_converter_that_exits_1_is_refused_with_its_last_stderr_line() -> None:
    results = check(template("refuse"), ("float32", "bfloat16"))
    assert [r.outcome for r in results] == ["REFUSED", "REFUSED"]
    assert results[0].status == "FAIL" and results[0].diagnosis is None
    assert results[0].violations == ["REFUSED: the converter exited 1: cannot convert llama: no size preset matches "
                                     "this checkpoint"]


def test_a_raising_callable_is_refused_with_its_exception() -> None:
    (r,) = check("outside_converters:no_such_function_is_called_so")
    assert r.outcome == "REFUSED" and r.violations[0].endswith(
        "AttributeError: module 'outside_converters' has no attribute 'no_such_function_is_called_so'")


def test_an_output_that_does_not_load_is_unloadable_with_the_loaders_reason() -> None:
    (r,) = check("outside_converters:unloadable")
    assert r.outcome == "UNLOADABLE" and r.diagnosis is None
    assert r.violations[0].startswith("UNLOADABLE: from_pretrained: ") and "\n" not in r.violations[0]


def test_a_converter_that_writes_nothing_is_unloadable() -> None:
    (r,) = check("true {source} {output}")
    assert r.outcome == "UNLOADABLE" and r.violations[0].startswith(
        "UNLOADABLE: the converter exited 0 but wrote nothing at {output}")


def test_code_in_the_output_is_never_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "executed"
    monkeypatch.setenv("REMOTE_CODE_MARKER", str(marker))
    (r,) = check("outside_converters:remote_code")
    assert r.outcome == "UNLOADABLE" and "contains custom code" in r.violations[0], r.violations
    assert not marker.exists()


def test_a_hanging_converter_is_stopped_at_the_limit_leaving_nothing(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    temp, pidfile = tmp_path / "tmp", tmp_path / "pid"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setenv("HANG_PIDFILE", str(pidfile))
    (r,) = check("outside_converters:hang", timeout=4)
    assert r.outcome == "TIMEOUT" and r.violations == ["TIMEOUT: the converter ran past 4 s and was stopped"]
    assert list(temp.iterdir()) == []
    _assert_gone(int(pidfile.read_text()))


def test_ctrl_c_while_converting_kills_the_converter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pidfile = tmp_path / "pid"
    monkeypatch.setenv("HANG_PIDFILE", str(pidfile))

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 3.0)
        with pytest.raises(KeyboardInterrupt):
            ExternalConverter(template("hang")).run({"source": "s", "output": str(tmp_path / "out"), "family": "f"},
                                                    tmp_path / "logs")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    _assert_gone(int(pidfile.read_text()))


@pytest.mark.parametrize(("spec", "message"), [
    ("", "--converter is empty"),
    ("convert.py --in {source}", r"has no \{output\}"),
    ("convert.py '{source} {output}", "No closing quotation"),
    ("no_such_module_here:convert", "no module 'no_such_module_here' on the Python path"),
])
def test_a_bad_spec_is_one_line_before_anything_runs(spec: str, message: str) -> None:
    with pytest.raises(ConversionError, match=message):
        ExternalConverter(spec)


def test_an_unknown_placeholder_names_what_the_case_gives(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", "llama", "--devices", "cpu", "--dtypes", "float32", "--converter",
                 "convert {source} {output} --shards {n_shards}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "unknown placeholder(s) n_shards; this case gives case, dtype, family, llama_version, num_shards" in err


def test_facts_say_what_upstream_scripts_take_as_flags(tmp_path: Path) -> None:
    fam = family("llama")
    facts = {}
    for name in ("mha-mp2", "llama3-mp2", "llama31-scaled", "llama1-mp4-bf16"):
        rt = external_round_trip(ExternalConverter(template("correct")), fam, name, fam.cases[name], tmp_path)
        facts[name] = case_facts(fam, name, rt.source, rt.vocab_size)
    assert {n: (f["num_shards"], f["llama_version"]) for n, f in facts.items()} == {
        "mha-mp2": ("2", "2"), "llama3-mp2": ("2", "3"), "llama31-scaled": ("1", "3.1"), "llama1-mp4-bf16": ("4", "1")}
    assert facts["llama3-mp2"]["vocab_size"] == "512" and facts["llama1-mp4-bf16"]["dtype"] == "bfloat16"
    gemma = family("gemma")
    assert {n: gemma.facts(gemma.tiny(0, **c.config))["variant"] for n, c in gemma.cases.items()} == {
        "mqa": "2b", "mha-wide-heads": "7b", "gqa-sharded-eps": "7b", "quant": "7b-quant"}


def test_check_prints_and_reports_each_cases_outcome(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    code = main(["check", "llama", "--devices", "cpu", "--dtypes", "float32", "--converter",
                 template("refuse"), "--json", str(out), "--report", str(tmp_path / "r.md")])
    text = capsys.readouterr().out
    assert code == 1
    assert "llama     mha-mp2          REFUSED    the converter exited 1: cannot convert llama" in text
    document = json.loads(out.read_text())
    assert document["converter"] == template("refuse")
    assert {c["outcome"] for c in document["cases"]} == {"REFUSED"} and len(document["cases"]) == 5
    assert {r["outcome"] for r in document["results"]} == {"REFUSED"}
    assert "| **REFUSED** |" in (tmp_path / "r.md").read_text()


def test_gate_runs_the_named_families_through_the_converter(tmp_path: Path) -> None:
    from harness.gate import run_gate
    from harness.registry import families

    junit = tmp_path / "junit.xml"
    code = run_gate("HEAD", families(), ["cpu"], ["float32"], junit=junit, markdown=tmp_path / "gate.md",
                    only=["llama"], converter=ExternalConverter(template("refuse")), quiet=True)
    assert code == 1
    assert junit.read_text().count('message="REFUSED: the converter exited 1') == 5
    summary = (tmp_path / "gate.md").read_text()
    assert "golden snapshots not checked" in summary
    assert "- llama/gqa-mp2: **REFUSED** the converter exited 1" in summary


def _assert_gone(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_the_pytest_plugin_takes_a_converter(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_outside=f"""
        def test_outside(convparity_converter):
            assert [r.outcome for r in convparity_converter("llama", "{CASE}")] == ["REFUSED"]
    """)
    run = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--devices", "cpu", "--dtypes", "float32")
    run.assert_outcomes(skipped=1)
    run = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--devices", "cpu", "--dtypes", "float32",
                                        "--converter", template("refuse"))
    run.assert_outcomes(passed=1)
