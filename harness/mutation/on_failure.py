"""Diagnosis where a parity fails: ``convparity check``, ``gate`` and the pytest plugin attach it to the result.

A :class:`Diagnoser` rides along ``check_family``'s callbacks: it remembers each case's round trip and, when a
result fails, diagnoses the converted directory of that case once (float32, whatever the failing cell) and puts
the one-line summary on ``ParityResult.diagnosis``, which the terminal, JSON, Markdown and JUnit reports print.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from harness.family.family import Family
from harness.mapping.conversion import SourceCheckpoint
from harness.mutation.diagnosis import diagnose
from harness.mutation.runner import case_run, cases_for, prepare
from harness.parity.check import RoundTrip
from harness.parity.parity import ParityResult
from harness.parity.points import unsupported

__all__ = ["AGREE", "Diagnoser", "diagnose_case"]

AGREE = ("every sub-module agrees with the reference in float32 when fed its input: the error comes from "
         "low-precision compute, not from a converted tensor or config field")


def diagnose_case(family: Family, case: str, model_dir: Path, source: SourceCheckpoint | None = None) -> str:
    """The diagnosis of ``model_dir``, a conversion of ``case``'s tiny source, as one line; ``source``: that source
    as the reference must read it (an outside converter's cast applied), where not the case's own as written."""
    if (why := unsupported()) is not None:
        return why
    with tempfile.TemporaryDirectory(prefix="convparity-diagnose-") as d:
        run = prepare(family, case, cases_for(family)[case], Path(d)) if source is None else (
            case_run(family, case, source))
        found = diagnose(family, run, model_dir, Path(d))
    return AGREE if found is None else found.summary()


class Diagnoser:
    """``check_family(..., on_round_trip=d.round_trip, on_result=d.result)``; each hook chains to ``then``."""

    def __init__(self, family: Family, on_round_trip: Callable[[RoundTrip], None] | None = None,
                 on_result: Callable[[ParityResult], None] | None = None) -> None:
        self.family, self.on_round_trip, self.on_result = family, on_round_trip, on_result
        self.current: RoundTrip | None = None
        self.found: dict[str, str] = {}

    def round_trip(self, rt: RoundTrip) -> None:
        self.current = rt
        if self.on_round_trip is not None:
            self.on_round_trip(rt)

    def result(self, r: ParityResult) -> None:
        if r.status == "FAIL" and not r.not_run and self.current is not None and self.current.case == r.case:
            if r.case not in self.found:
                rt = self.current
                self.found[r.case] = diagnose_case(self.family, r.case, rt.model_dir, rt.source)
            r.diagnosis = self.found[r.case]
        if self.on_result is not None:
            self.on_result(r)
