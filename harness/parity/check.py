"""``convparity check``: every case of every family, round-tripped through disk and held to parity.

Per case: the tiny random source is written in its upstream layout, read back, converted, written as a
transformers directory, loaded with ``from_pretrained`` and compared with the reference on each device and
dtype. CUDA cells are reported as skipped, with the reason, where no GPU exists. With ``converter`` (``--converter``)
a converter convparity did not write makes the directory (``harness.parity.external_case``); a case it refuses,
or whose output does not load, is a failed cell with that outcome (REFUSED, TIMEOUT, UNLOADABLE) and its reason.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import brief
from harness.family.cases import Case
from harness.family.family import Family
from harness.mapping.conversion import SourceCheckpoint
from harness.mapping.output import write_converted
from harness.parity.parity import ParityResult, cuda_skip_reason, load_converted, make_tokens, run_parity

if TYPE_CHECKING:
    import torch

    from harness.parity.external import ExternalConverter, Refusal

__all__ = ["RoundTrip", "check_family", "hash_files", "round_trip", "write_case"]


@dataclass
class RoundTrip:
    """A case after the disk round trip: the source as read back and the converted directory."""

    case: str
    source: SourceCheckpoint
    model_dir: Path
    vocab_size: int
    source_sha256: str
    refusal: Refusal | None = None  # an outside converter's case that never reached parity, and why
    note: str = ""  # e.g. the cast an outside converter applied


def write_case(family: Family, case: Case, source_dir: Path, seed: int = 0) -> SourceCheckpoint:
    """The case's tiny source written in its upstream layout into ``source_dir``, and read back."""
    family.write(family.tiny(seed, layout=case.layout, **case.config), source_dir, container=case.container)
    return family.read(source_dir)


def round_trip(family: Family, case_name: str, case: Case, workdir: Path, seed: int = 0) -> RoundTrip:
    """Write the case's tiny source to disk, read it back, convert it into ``workdir/<case>/hf``."""
    source_dir, model_dir = workdir / case_name / "source", workdir / case_name / "hf"
    source = write_case(family, case, source_dir, seed)
    converted = family.convert(source)
    write_converted(converted, model_dir)
    return RoundTrip(case_name, source, model_dir, int(converted.config["vocab_size"]), hash_files(source_dir))


def check_family(family: Family, devices: Iterable[str], dtypes: Iterable[str],
                 cases: Iterable[str] | None = None,
                 on_result: Callable[[ParityResult], None] | None = None,
                 on_round_trip: Callable[[RoundTrip], None] | None = None,
                 converter: ExternalConverter | None = None) -> list[ParityResult]:
    """The parity matrix for one family: cases x devices x dtypes.

    ``on_round_trip`` sees each converted case while its files still exist (the gate snapshots it there).
    ``converter``: an outside converter makes each case's directory instead of the family's own.
    """
    results = []
    names = list(cases) if cases is not None else list(family.cases)
    with _workdir() as workdir:
        for name in names:
            if converter is None:
                rt = round_trip(family, name, family.cases[name], workdir)
            else:
                from harness.parity.external_case import external_round_trip  # it builds on this module

                rt = external_round_trip(converter, family, name, family.cases[name], workdir)
            if on_round_trip is not None:
                on_round_trip(rt)
            tokens = make_tokens(rt.vocab_size)
            for device in devices:
                skip = cuda_skip_reason() if device.startswith("cuda") else None
                for dtype in dtypes:
                    start = time.perf_counter()
                    if skip:
                        result = ParityResult(family.name, name, device, dtype, skipped=skip)
                    else:
                        result = _cell(family, rt, device, dtype, tokens)
                    result.source_sha256, result.seconds = rt.source_sha256, time.perf_counter() - start
                    results.append(result)
                    if on_result is not None:
                        on_result(result)
    return results


def _cell(family: Family, rt: RoundTrip, device: str, dtype: str, tokens: torch.Tensor) -> ParityResult:
    """One cell's parity; a refused case, a directory that does not load or a forward that raises is a failed
    cell saying so (the loader's or the forward's first line)."""
    if rt.refusal is not None:
        return _not_run(family, rt, device, dtype, rt.refusal.outcome, rt.refusal.reason)
    try:
        model = load_converted(rt.model_dir, device, dtype, family)
    except Exception as err:  # noqa: BLE001 - whatever from_pretrained raises is the finding
        return _not_run(family, rt, device, dtype, "UNLOADABLE", f"from_pretrained: {brief(err)}")
    try:
        return run_parity(family, rt.case, rt.source, model, device, dtype, tokens)
    except Exception as err:  # noqa: BLE001 - a converted model that crashes on valid tokens fails its cell
        result = ParityResult(family.name, rt.case, device, dtype)
        result.violations = [f"forward raised {brief(err)}"]
        return result


def _not_run(family: Family, rt: RoundTrip, device: str, dtype: str, outcome: str, reason: str) -> ParityResult:
    return ParityResult(family.name, rt.case, device, dtype, violations=[f"{outcome}: {reason}"], not_run=outcome)


def hash_files(folder: Path) -> str:
    """sha256 over every file under ``folder`` (relative names and contents, in sorted order)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


@contextmanager
def _workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="convparity-") as d:
        yield Path(d)
