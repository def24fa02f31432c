"""SIGTERM, SIGHUP and SIGINT mid-conversion leave nothing behind; SIGKILL's debris is recognised next time."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness.cli import main
from harness.registry import family

# The child converts a tiny Mixtral, sleeping between tensors so that there is time to signal it mid-write.
_SLOW_CONVERT = textwrap.dedent("""
    import signal, sys, time
    # Ctrl-C as in an interactive shell, even where pytest itself was started in the background by a shell
    # without job control (which ignores SIGINT for its background jobs and so for their children)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from harness.mapping import output
    checked = output.refuse_nonfinite  # the stream the writer takes, on the byte path and the torch path alike
    def slow(stream, **options):
        for item in checked(stream, **options):
            time.sleep(0.2)
            yield item
    output.refuse_nonfinite = slow
    from harness.cli import main
    sys.exit(main(["convert", "mixtral", sys.argv[1], sys.argv[2], "--quiet"]))
""")


@pytest.fixture
def source(tmp_path: Path) -> Path:
    mixtral = family("mixtral")
    mixtral.write(mixtral.tiny(0), tmp_path / "src")
    return tmp_path / "src"


def _start(source: Path, output: Path) -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-c", _SLOW_CONVERT, str(source), str(output)],
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(output.parent.glob(f".{output.name}.*.partial")):
        assert child.poll() is None, child.stderr.read() if child.stderr else ""
        assert time.monotonic() < deadline, "the conversion never started writing"
        time.sleep(0.05)
    time.sleep(0.3)  # a few tensors into the first shard
    return child


def _debris(output: Path) -> list[str]:
    return sorted(p.name for p in output.parent.iterdir() if p.name.startswith(f".{output.name}.") or p == output)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_signal_mid_conversion_leaves_nothing(source: Path, tmp_path: Path, signum: signal.Signals) -> None:
    output = tmp_path / "out"
    child = _start(source, output)
    child.send_signal(signum)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 128 + signum, err
    assert _debris(output) == []
    assert err.strip().splitlines()[-1].startswith("convparity: ")
    assert "nothing was written" in err


def test_sigkill_debris_is_removed_by_the_next_conversion(source: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "out"
    child = _start(source, output)
    child.kill()
    child.wait(timeout=60)
    left = _debris(output)
    assert len(left) == 1 and left[0].endswith(".partial")  # what a power cut leaves: recognisably stale
    assert main(["convert", "mixtral", str(source), str(output), "--quiet"]) == 0
    assert _debris(output) == ["out"]
    assert f"removed {tmp_path / left[0]}, left by an interrupted conversion (process {child.pid})" in \
        capsys.readouterr().err


def test_a_partial_being_written_is_left_alone(source: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "out"
    child = _start(source, output)
    try:
        assert main(["convert", "mixtral", str(source), str(output), "--quiet"]) == 2
        assert "is being written by process" in capsys.readouterr().err
    finally:
        child.terminate()
        child.communicate(timeout=60)
    assert _debris(output) == []


def test_a_reader_that_stops_early_gets_no_error() -> None:
    # `convparity describe mixtral | head -1`: the reader is gone before convparity writes (`true` reads nothing).
    pipeline = f"'{sys.executable}' -m harness.cli describe mixtral | true"
    done = subprocess.run(["bash", "-o", "pipefail", "-c", pipeline], capture_output=True, text=True, timeout=120)
    assert done.returncode == 128 + signal.SIGPIPE
    assert done.stderr == ""
