"""Suite-wide: torch's threads shared out among pytest-xdist's workers, and every oracle case's measured float32
error printed next to the bound it was held to."""

from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """In an xdist worker, torch (and any process it starts) gets its share of the cores. With every worker
    running one thread per core, the workers' threads outnumber the cores and spin waiting on one another: on 2
    cores with 2 workers, the suite took 362 s that way and 188 s with one thread each."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        import torch

        share = max(1, (os.cpu_count() or 1) // workers)
        torch.set_num_threads(share)
        os.environ["OMP_NUM_THREADS"] = str(share)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = [f"{report.nodeid.split('::')[-1]}: {value}"
             for report in terminalreporter.getreports("passed") + terminalreporter.getreports("failed")
             for name, value in report.user_properties if name == "oracle_error"]
    if lines:
        terminalreporter.section("upstream oracle errors (measured vs bound)")
        for line in sorted(lines):
            terminalreporter.line(line)
