"""One outcome per case, from its cells: what a ``--converter`` run tells its user to do.

A case is REFUSED, TIMEOUT or UNLOADABLE when its cells never reached parity (the converter's last stderr line, the
time limit, the loader's reason), FAIL when any cell failed parity (which cells, and the diagnosis), else PASS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from harness.parity.parity import ParityResult

__all__ = ["CaseOutcome", "case_outcomes", "format_outcomes"]


@dataclass(frozen=True)
class CaseOutcome:
    family: str
    case: str
    outcome: str  # PASS, FAIL, REFUSED, UNLOADABLE, TIMEOUT, SKIP
    detail: str = ""


def case_outcomes(results: Sequence[ParityResult]) -> list[CaseOutcome]:
    """Per family and case, in the order the results came.

    >>> [o.outcome for o in case_outcomes([ParityResult("f", "c", "cpu", "float32", skipped="no GPU")])]
    ['SKIP']
    """
    cases: dict[tuple[str, str], list[ParityResult]] = {}
    for r in results:
        cases.setdefault((r.family, r.case), []).append(r)
    return [_outcome(family, case, cells) for (family, case), cells in cases.items()]


def format_outcomes(outcomes: Sequence[CaseOutcome]) -> list[str]:
    """Aligned lines: family, case, outcome, detail."""
    return [f"{o.family:<9} {o.case:<16} {o.outcome:<10} {o.detail}".rstrip() for o in outcomes]


def _outcome(family: str, case: str, cells: list[ParityResult]) -> CaseOutcome:
    ran = [r for r in cells if not r.skipped]
    if not ran:
        return CaseOutcome(family, case, "SKIP", cells[0].skipped or "")
    stopped = next((r for r in ran if r.not_run), None)
    if stopped is not None:
        return CaseOutcome(family, case, stopped.outcome, stopped.violations[0].removeprefix(f"{stopped.outcome}: "))
    failed = [r for r in ran if not r.passed]
    if not failed:
        return CaseOutcome(family, case, "PASS", ", ".join(f"{r.device}/{r.dtype}" for r in ran))
    where = ", ".join(f"{r.device}/{r.dtype}" for r in failed)
    diagnosis = next((r.diagnosis for r in failed if r.diagnosis), None)
    return CaseOutcome(family, case, "FAIL", f"{where}: {failed[0].violations[0] if failed[0].violations else ''}"
                       + (f"; diagnosis: {diagnosis}" if diagnosis else ""))
