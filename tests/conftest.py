"""Suite-wide: print every oracle case's measured float32 error next to the bound it was held to."""

from __future__ import annotations

import pytest


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = [f"{report.nodeid.split('::')[-1]}: {value}"
             for report in terminalreporter.getreports("passed") + terminalreporter.getreports("failed")
             for name, value in report.user_properties if name == "oracle_error"]
    if lines:
        terminalreporter.section("upstream oracle errors (measured vs bound)")
        for line in sorted(lines):
            terminalreporter.line(line)
