"""``--converter``: a converter convparity did not write, run on one case's source as a subprocess.

Either a command template, split with ``shlex`` and each argument formatted with the case's values (``{source}``,
``{output}`` and the facts), or ``module:function``, called in a child interpreter (``harness.parity.converter_call``)
with the same values as keyword arguments. No shell is involved. The child runs in its own session with a time
limit; whatever way the run ends (exit, time limit, Ctrl-C, SIGTERM), its whole process group is killed, so nothing
it started outlives it. Its output directory is loaded later without executing code from it.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import json
import os
import re
import shlex
import signal
import string
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from harness.errors import ConversionError

__all__ = ["DEFAULT_TIMEOUT", "ExternalConverter", "Refusal"]

DEFAULT_TIMEOUT = 300.0
_CALLABLE = re.compile(r"(?P<module>[A-Za-z_][\w.]*):(?P<function>[A-Za-z_]\w*)")


@dataclass(frozen=True)
class Refusal:
    """A case the converter did not convert: ``outcome`` REFUSED (non-zero exit) or TIMEOUT, and why."""

    outcome: str
    reason: str


@dataclass(frozen=True)
class ExternalConverter:
    """``--converter SPEC``, checked on construction (bad input is a ConversionError).

    >>> ExternalConverter("convert.py --in {source} --out {output} --shards {num_shards}").placeholders
    ('source', 'output', 'num_shards')
    >>> ExternalConverter("json:loads").function  # any importable module:function
    'json:loads'
    """

    spec: str
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        if not self.spec.strip():
            raise ConversionError("--converter is empty; pass a command template or module:function")
        if not self.timeout > 0:
            raise ConversionError(f"--converter-timeout must be positive; found {self.timeout:g}")
        if self.function is not None:
            module = self.function.split(":")[0]
            if importlib.machinery.PathFinder.find_spec(module.split(".")[0], [os.getcwd(), *sys.path]) is None:
                raise ConversionError(f"--converter {self.spec}: no module {module!r} on the Python path (run from "
                                      f"the folder that holds it, or install it)")
            return
        missing = [name for name in ("source", "output") if name not in self.placeholders]
        if missing:
            named = ", ".join(f"{{{m}}}" for m in missing)
            raise ConversionError(f"--converter template {self.spec!r} has no {named}; it must say where the case's "
                                  f"source is and where to write the converted directory")

    @property
    def function(self) -> str | None:
        """``module:function`` where the spec is one, else None (a command template)."""
        return self.spec.strip() if _CALLABLE.fullmatch(self.spec.strip()) else None

    @property
    def words(self) -> list[str]:
        """The template's arguments, as the shell would split them (without running one)."""
        try:
            return shlex.split(self.spec)
        except ValueError as err:
            raise ConversionError(f"--converter template {self.spec!r}: {err}") from None

    @property
    def placeholders(self) -> tuple[str, ...]:
        """The ``{names}`` the template uses, in order of first use."""
        names: list[str] = []
        for word in self.words:
            try:
                names += [f for _, f, _, _ in string.Formatter().parse(word) if f is not None and f not in names]
            except ValueError as err:
                raise ConversionError(f"--converter template {self.spec!r}: {err}") from None
        return tuple(names)

    def argv(self, values: Mapping[str, str]) -> list[str]:
        """The command for one case: each template argument formatted with ``values`` (never re-split)."""
        if self.function is not None:
            return [sys.executable, "-m", "harness.parity.converter_call", self.function, json.dumps(dict(values))]
        unknown = [name for name in self.placeholders if name not in values]
        if unknown:
            raise ConversionError(f"--converter template: unknown placeholder(s) {', '.join(unknown)}; this case "
                                  f"gives {', '.join(sorted(values))}")
        try:
            return [word.format_map(values) for word in self.words]
        except (ValueError, IndexError, AttributeError) as err:
            raise ConversionError(f"--converter template {self.spec!r}: {err}") from None

    def run(self, values: Mapping[str, str], logs: Path) -> Refusal | None:
        """Run on one case; None when it exited 0. Its stdout and stderr go to files in ``logs``."""
        argv = self.argv(values)
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / "stdout", "wb") as out, open(logs / "stderr", "wb") as err:
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                        start_new_session=True)
            except OSError as e:  # the template's program: not there, not executable
                raise ConversionError(f"--converter: cannot run {argv[0]!r}: {e.strerror or e}") from None
            try:
                code = proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                return Refusal("TIMEOUT", f"the converter ran past {self.timeout:g} s and was stopped")
            finally:  # on any exit, Ctrl-C and SIGTERM included: its children too
                _kill_group(proc)
        if code == 0:
            return None
        how = f"exited {code}" if code > 0 else f"killed by {signal.Signals(-code).name}"
        return Refusal("REFUSED", f"the converter {how}: {_last_line(logs / 'stderr')}")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone already
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _last_line(path: Path, limit: int = 300) -> str:
    lines = [line.strip() for line in path.read_bytes().decode(errors="replace").splitlines() if line.strip()]
    return lines[-1][:limit] if lines else "(nothing on stderr)"
