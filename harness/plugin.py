"""convparity's pytest plugin, registered through the ``pytest11`` entry point: installing is enough.

Options select the parity matrix (``--families``, ``--devices``, ``--dtypes``), regenerate goldens on
purpose (``--update-golden``) and name a converter convparity did not write (``--converter``, for the
``convparity_converter`` fixture); the ``cuda`` marker skips with a reason where no GPU exists. Fixtures are thin
factories over harness functions; nothing heavy is imported until a fixture is used.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

__all__ = ["pytest_addoption", "pytest_collection_modifyitems", "pytest_configure"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("convparity", "convparity: converter parity")
    group.addoption("--families", metavar="NAMES", help="comma-separated families to test (default: all)")
    group.addoption("--devices", metavar="NAMES", help="comma-separated devices: cpu, cuda (default: both)")
    group.addoption("--dtypes", metavar="NAMES", help="comma-separated dtypes: float32, bfloat16, float16")
    group.addoption("--update-golden", action="store_true",
                    help="rewrite golden snapshots (golden/<family>/<case>.json) from the current converters; "
                         "the tests still fail so that the new goldens are reviewed")
    group.addoption("--golden-dir", metavar="DIR", type=Path,
                    help="where golden snapshots live (default: <rootdir>/golden)")
    group.addoption("--converter", metavar="SPEC", help="a converter convparity did not write, for the "
                    "convparity_converter fixture: a command template ({source}, {output}, the case's facts) or "
                    "module:function, as for `convparity check --converter`")
    group.addoption("--converter-timeout", metavar="SECONDS", type=float, default=300.0,
                    help="stop --converter after this long on one case (default: %(default)g)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cuda: needs a CUDA device; skipped with the reason where none exists")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect matrix items outside --families/--devices/--dtypes; skip cuda items without a GPU."""
    chosen = {p: _split(config.getoption(option))
              for p, option in (("family", "--families"), ("device", "--devices"), ("dtype", "--dtypes"))}
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        wanted = all(sel is None or p not in params or params[p] in sel for p, sel in chosen.items())
        (keep if wanted else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    if any(item.get_closest_marker("cuda") for item in items):
        from harness.parity.parity import cuda_skip_reason  # imports torch: only when cuda items exist

        reason = cuda_skip_reason()
        for item in items:
            if reason and item.get_closest_marker("cuda"):
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def convparity_round_trip(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Any]:
    """``round_trip(family, case)``: the case's tiny source written, read back and converted (cached)."""
    from harness.parity.check import round_trip
    from harness.registry import family

    cache: dict[tuple[str, str], Any] = {}

    def get(name: str, case: str) -> Any:
        if (name, case) not in cache:
            fam = family(name)
            cache[name, case] = round_trip(fam, case, fam.cases[case], tmp_path_factory.mktemp(f"{name}-{case}"))
        return cache[name, case]

    return get


@pytest.fixture
def convparity_tiny_source(convparity_round_trip: Callable[[str, str], Any]) -> Callable[[str, str], Any]:
    """``tiny_source(family, case)``: the SourceCheckpoint as read back from its upstream layout on disk."""
    return lambda name, case: convparity_round_trip(name, case).source


@pytest.fixture
def convparity_converted(convparity_round_trip: Callable[[str, str], Any]) -> Callable[[str, str], Path]:
    """``converted(family, case)``: the converted directory, ready for ``from_pretrained``."""
    return lambda name, case: convparity_round_trip(name, case).model_dir


@pytest.fixture
def convparity_diagnose(convparity_round_trip: Callable[[str, str], Any]) -> Callable[[str, str], str]:
    """``diagnose(family, case)``: for a failed parity's assertion message, the sub-module that disagrees with the
    reference, the tensors feeding it and the likeliest catalogue bugs (``harness.mutation.on_failure``)."""
    from harness.mutation.on_failure import diagnose_case
    from harness.registry import family

    return lambda name, case: diagnose_case(family(name), case, convparity_round_trip(name, case).model_dir)


@pytest.fixture
def convparity_converter(request: pytest.FixtureRequest) -> Callable[[str, str], list[Any]]:
    """``check(family, case)``: the case through ``--converter`` (skipped without one), held to parity in the
    ``--devices`` x ``--dtypes`` matrix, failures diagnosed; each ``ParityResult.outcome`` is PASS, FAIL, REFUSED,
    UNLOADABLE, TIMEOUT or SKIP."""
    spec = request.config.getoption("--converter")
    if not spec:
        pytest.skip("no --converter given")
    from harness.io.raw_dtypes import CAST_DTYPES
    from harness.mutation.on_failure import Diagnoser
    from harness.parity.check import check_family
    from harness.parity.external import ExternalConverter
    from harness.parity.parity import devices
    from harness.registry import family

    converter = ExternalConverter(spec, request.config.getoption("--converter-timeout"))
    devs = sorted(_split(request.config.getoption("--devices")) or devices())
    dtypes = sorted(_split(request.config.getoption("--dtypes")) or CAST_DTYPES)

    def check(name: str, case: str) -> list[Any]:
        d = Diagnoser(family(name))
        return check_family(family(name), devs, dtypes, [case], on_round_trip=d.round_trip, on_result=d.result,
                            converter=converter)

    return check


@pytest.fixture
def convparity_reference() -> Callable[..., Any]:
    """``reference(family, source, tokens)``: the family's original-architecture logits."""
    from harness.registry import family

    return lambda name, source, tokens: family(name).reference(dict(source.tensors), source.config, tokens)


@pytest.fixture
def convparity_golden(request: pytest.FixtureRequest, convparity_round_trip: Callable[[str, str], Any]
                      ) -> Callable[[str, str], None]:
    """``golden(family, case)``: compare the case's snapshot with its golden file; fail with the diff."""
    from harness.parity.snapshot import case_snapshot, check_snapshot
    from harness.registry import family

    root = request.config.getoption("--golden-dir") or Path(request.config.rootpath) / "golden"
    update = request.config.getoption("--update-golden")

    def check(name: str, case: str) -> None:
        obtained = case_snapshot(family(name), convparity_round_trip(name, case))
        problems = check_snapshot(obtained, root / name / f"{case}.json", update=update)
        if problems:
            pytest.fail(f"{name}/{case} snapshot:\n  " + "\n  ".join(problems), pytrace=False)

    return check


def _split(value: str | None) -> set[str] | None:
    return {v.strip() for v in value.split(",") if v.strip()} if value else None
