"""``benchmarks/device_check.py``, the one command for a GPU machine, kept working where there is no GPU.

- without CUDA it says so in one line and exits 2;
- its plan runs end to end on the CPU with tiny settings, with only its CUDA availability check stubbed, and
  writes the JSON and Markdown summaries;
- a step that fails is recorded, the rest still run, and the exit status is 1;
- where two GPUs are visible, the plan also verifies with the reference on the second one;
- its step limits fit the 8 minutes it promises (30 s more with two GPUs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
# tiny settings: one family in one dtype, one quick test, the tiny Mixtral, the benchmark's smallest checkpoint
TINY = ["--device", "cpu", "--tiny", "--families", "rwkv", "--dtypes", "float32", "--gb", "0.01",
        "--pytest", "tests/test_verify.py -k read_input_ids"]


@pytest.fixture
def device_check(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The script as a module, with CUDA said to be present (the one stub)."""
    monkeypatch.syspath_prepend(str(BENCH))
    import device_check

    monkeypatch.setattr(device_check, "cuda_absent", lambda: None)
    yield device_check


def test_without_cuda_it_says_so_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(BENCH / "device_check.py"), str(tmp_path / "out")],
                          capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("device_check: CUDA is absent: ") and proc.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_the_plan_runs_on_cpu_with_tiny_settings(device_check: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert device_check.main([str(out), *TINY]) == 0
    report = json.loads((out / "device-check.json").read_text())
    assert report["passed"] and [s["name"] for s in report["steps"]] == [
        "check-float32", "cuda-tests", "verify-source", "verify-device", "verify-cpu", "convert-bench"]
    assert all(s["status"] == "pass" and 0 < s["seconds"] <= s["limit_s"] for s in report["steps"])
    assert {(c["family"], c["dtype"], c["status"]) for c in report["cells"]} == {("rwkv", "float32", "pass")}
    assert all(c["bound"] and c["max_abs"] is not None for c in report["cells"])
    assert report["tests"]["tests"] >= 1 and not report["tests"]["failed"]
    assert [v["verdict"] for v in report["verify"]] == ["PASS", "PASS"] and report["verify"][1]["device"] == "cpu"
    assert report["benchmark"]["convert s"] > 0 and report["benchmark"]["GB"] > 0
    assert {"GPU", "driver", "torch", "torch CUDA"} <= set(report["environment"])
    assert report["peak_gpu_allocated_mib"] is None  # nothing ran on a GPU
    summary = (out / "device-check.md").read_text()
    assert summary.startswith("# convparity device check: PASS") and "| rwkv | base | cpu | float32 | pass |" in summary
    assert not (out / "work").exists()  # the checkpoints are deleted


def test_a_failed_step_is_recorded_and_the_rest_still_run(device_check: ModuleType, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    plan = device_check._plan
    monkeypatch.setattr(device_check, "_plan", lambda args, out, work: plan(args, out, work)[:2])  # check, tests
    out = tmp_path / "out"
    tiny = [*TINY[:TINY.index("--families") + 1], "nosuch", *TINY[TINY.index("--families") + 2:]]
    assert device_check.main([str(out), *tiny]) == 1
    steps = json.loads((out / "device-check.json").read_text())["steps"]
    assert [(s["name"], s["status"]) for s in steps] == [("check-float32", "FAIL"), ("cuda-tests", "pass")]
    assert steps[0]["detail"].startswith("exit status 2: convparity: error: unknown family 'nosuch'")
    assert "# convparity device check: FAIL" in (out / "device-check.md").read_text()


def test_two_gpus_add_a_verify_with_the_reference_on_the_second(device_check: ModuleType, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    args = device_check._parser().parse_args([str(tmp_path), "--device", "cuda"])
    names = [s.name for s in device_check._plan(args, tmp_path, tmp_path / "work")]
    assert "verify-two-devices" not in names  # no GPU here, or one
    monkeypatch.setattr(device_check, "cuda_devices", lambda: 2)
    steps = {s.name: s for s in device_check._plan(args, tmp_path, tmp_path / "work")}
    assert list(steps).index("verify-two-devices") == list(steps).index("verify-device") + 1
    command = " ".join(map(str, steps["verify-two-devices"].argv))
    assert "--device cuda:0 --reference-device cuda:1" in command
    # the one-GPU step names its GPU: a bare cuda would place the reference on the second by itself
    assert "--device cuda:0 --quiet" in " ".join(map(str, steps["verify-device"].argv))


def test_the_step_limits_fit_in_eight_minutes(device_check: ModuleType) -> None:
    limits = device_check.LIMITS
    plan = 3 * limits["check"] + sum(limits[s] for s in ("cuda-tests", "verify-source", "verify-device",
                                                         "verify-cpu", "convert-bench"))
    assert plan <= 450  # 30 s of the 8 minutes left for start-up and summaries
    assert plan + limits["verify-two-devices"] <= 480  # with two GPUs: 8 minutes, start-up included
