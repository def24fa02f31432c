"""Every family's default cases against their golden snapshots (golden/<family>/<case>.json).

A converter change that alters its output fails here with a diff until the golden is regenerated on
purpose: ``pytest tests/test_snapshots.py --update-golden``, then review and commit the new files.
"""

from __future__ import annotations

import pytest

from harness.registry import families

CASES = [(f, c) for f, fam in families().items() for c in fam.cases]


@pytest.mark.parametrize(("family", "case"), CASES, ids=[f"{f}-{c}" for f, c in CASES])
def test_snapshot_matches_golden(family: str, case: str, convparity_golden) -> None:
    convparity_golden(family, case)
