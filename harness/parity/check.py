"""``convparity check``: every case of every family, round-tripped through disk and held to parity.

Per case: the tiny random source is written in its upstream layout, read back, converted, written as a
transformers directory, loaded with ``from_pretrained`` and compared with the reference on each device and
dtype. CUDA cells are reported as skipped, with the reason, where no GPU exists.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from harness.family.cases import Case
from harness.family.family import Family
from harness.mapping.conversion import SourceCheckpoint
from harness.mapping.output import write_converted
from harness.parity.parity import ParityResult, cuda_skip_reason, load_converted, make_tokens, run_parity

__all__ = ["RoundTrip", "check_family", "hash_files", "round_trip"]

@dataclass
class RoundTrip:
    """A case after the disk round trip: the source as read back and the converted directory."""

    case: str
    source: SourceCheckpoint
    model_dir: Path
    vocab_size: int
    source_sha256: str


def round_trip(family: Family, case_name: str, case: Case, workdir: Path, seed: int = 0) -> RoundTrip:
    """Write the case's tiny source to disk, read it back, convert it into ``workdir/<case>/hf``."""
    source_dir, model_dir = workdir / case_name / "source", workdir / case_name / "hf"
    family.write(family.tiny(seed, layout=case.layout, **case.config), source_dir, container=case.container)
    source = family.read(source_dir)
    converted = family.convert(source)
    write_converted(converted, model_dir)
    return RoundTrip(case_name, source, model_dir, int(converted.config["vocab_size"]), hash_files(source_dir))


def check_family(family: Family, devices: Iterable[str], dtypes: Iterable[str],
                 cases: Iterable[str] | None = None,
                 on_result: Callable[[ParityResult], None] | None = None,
                 on_round_trip: Callable[[RoundTrip], None] | None = None) -> list[ParityResult]:
    """The parity matrix for one family: cases x devices x dtypes.

    ``on_round_trip`` sees each converted case while its files still exist (the gate snapshots it there).
    """
    results = []
    names = list(cases) if cases is not None else list(family.cases)
    with _workdir() as workdir:
        for name in names:
            rt = round_trip(family, name, family.cases[name], workdir)
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
                        model = load_converted(rt.model_dir, device, dtype, family)
                        result = run_parity(family, name, rt.source, model, device, dtype, tokens)
                    result.source_sha256, result.seconds = rt.source_sha256, time.perf_counter() - start
                    results.append(result)
                    if on_result is not None:
                        on_result(result)
    return results


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
