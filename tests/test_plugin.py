"""The pytest plugin as its users meet it: options, the cuda marker and the golden-snapshot lifecycle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.parity.parity import cuda_skip_reason

pytest_plugins = ["pytester"]

GOLDEN_TEST = """
def test_golden(convparity_golden):
    convparity_golden("mixtral", "gqa")
"""


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    # A subprocess, as users run it: in-process runs reset sys.modules, and torch cannot be imported twice.
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--golden-dir={pytester.path / 'golden'}", *args)


def test_golden_lifecycle(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_g=GOLDEN_TEST)
    golden = pytester.path / "golden" / "mixtral" / "gqa.json"

    first = _run(pytester)  # missing: written, and the test fails so the new golden is reviewed
    first.assert_outcomes(failed=1)
    first.stdout.fnmatch_lines(["*golden was missing; wrote*gqa.json*"])
    assert golden.exists()
    _run(pytester).assert_outcomes(passed=1)

    snapshot = json.loads(golden.read_text())
    snapshot["config"]["rope_theta"] = 10000.0
    name = "model.layers.0.self_attn.q_proj.weight"
    snapshot["tensors"][name] = snapshot["tensors"][name].replace("sha256:", "sha256:0")
    snapshot["logits"]["sample"][3] += 0.5
    golden.write_text(json.dumps(snapshot))
    changed = _run(pytester)
    changed.assert_outcomes(failed=1)
    changed.stdout.fnmatch_lines([
        "*config.rope_theta: golden 10000.0, now 1000000.0*",
        f"*tensor changed: {name}*",
        "*logits: 1 of 64 sampled values differ by more than 0.0001; max abs 0.5*"
        "first differing sample indices [[]3[]]*",
    ])
    assert golden.with_suffix(".obtained.json").exists()

    updated = _run(pytester, "--update-golden")  # rewritten on purpose, and still a failure to review
    updated.assert_outcomes(failed=1)
    updated.stdout.fnmatch_lines(["*rewrote*gqa.json*"])
    assert not golden.with_suffix(".obtained.json").exists()
    _run(pytester).assert_outcomes(passed=1)


def test_matrix_options_deselect_and_cuda_marker_skips(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_m="""
        import pytest

        @pytest.mark.parametrize("family", ["mixtral", "gemma"])
        @pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
        def test_cell(family, dtype):
            pass

        @pytest.mark.cuda
        def test_gpu():
            pass
    """)
    result = _run(pytester, "--families=gemma", "--dtypes=float32", "-rs")
    if cuda_skip_reason():
        result.assert_outcomes(passed=1, skipped=1, deselected=3)
        result.stdout.fnmatch_lines(["*no CUDA device*"])
    else:
        result.assert_outcomes(passed=2, deselected=3)


def test_plugin_is_registered_from_any_directory(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "pytest", "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert "--update-golden" in out.stdout
