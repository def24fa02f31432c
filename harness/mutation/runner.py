"""``convparity mutate``: plant every bug of the catalogue in a family's conversion and show parity catches it.

Per family and case (the family's cases plus its mutation-only cases (``converters/<family>/mutants.py``)):
the tiny source is written in its upstream layout, read back and converted, as ``convparity check`` does. Each
mutant then edits the clean conversion's config and tensor stream (never a file of the converter); the result
is written with the streaming writer, loaded with ``from_pretrained`` and held to the same parity check. A
mutant is *killed* when some case fails (a metric over its bound, a load that reports bad keys, a forward that
raises, or logits of the wrong vocabulary width); *not applicable* when it changes nothing in any case.

Low precision is tested as a checkpoint dtype: the conversion is written in that dtype and evaluated in float32
against the reference run on the weights that checkpoint holds (the family's ``invert`` of the rounded clean
output), so the float32 bound applies. Comparing low-precision compute instead would bury 1e-3 bugs (exact vs
tanh GELU) under ~1e-1 of rounding noise. Working from the rounded *output* rather than a rounded source keeps
this honest for conversions that do arithmetic (gemma's int8 dequantisation): the reference sees exactly the
values the written checkpoint holds.
"""

from __future__ import annotations

import fnmatch
import math
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.family.cases import Case, MutationCase
from harness.family.family import Family
from harness.io.tensor_store import TensorSpec, TensorStore
from harness.io.writer import write_model_dir
from harness.mapping.conversion import SourceCheckpoint
from harness.mutation.catalogue import GENERIC
from harness.mutation.planting import Mutable, Mutant, about
from harness.mutation.structural import point_table, structural
from harness.parity.html_report import mutate_page, write_html
from harness.parity.metrics import TORCH_DTYPES
from harness.parity.parity import ReferenceMemo, load_converted, make_tokens, run_parity
from harness.parity.report import write_document
from harness.terminal import bar

__all__ = ["BATCH", "SEQ", "CaseRun", "Record", "case_run", "cases_for", "evaluate", "mutants_for", "plant", "prepare",
           "run_family", "run_mutate", "summary", "write_mutable"]

BATCH, SEQ = 2, 32  # long enough that rotary-frequency and position errors reach the logits


@dataclass
class CaseRun:
    """One case ready for mutation: the source as read back, its clean conversion, the tokens, and the
    reference's outputs on them (computed once, whatever the number of mutants held to them)."""

    name: str
    source: SourceCheckpoint
    clean: Mutable
    tokens: torch.Tensor
    vocab_size: int
    references: ReferenceMemo = field(default_factory=dict, repr=False)


@dataclass
class Record:
    """The verdict on one mutant of one family in one checkpoint dtype (``margin`` = error / bound)."""

    family: str
    mutant: str
    dtype: str
    applicable: bool
    killed: bool
    case: str | None = None
    metric: str | None = None
    value: float | None = None
    bound: float | None = None
    margin: float | None = None
    detail: str = ""
    about: str = ""
    per_layer: list[dict[str, Any]] | None = None  # relative error per hidden state and the logits (parity)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["margin"] is not None and math.isinf(d["margin"]):
            d["margin"] = None  # structural kills (load, forward, width) have no numeric margin
        return d


def mutants_for(family: Family) -> list[Mutant]:
    """The generic catalogue plus the family's own mutants (``converters/<family>/mutants.py``)."""
    return [*GENERIC, *family.mutants]


def cases_for(family: Family) -> dict[str, Case]:
    """The family's cases plus its mutation-only cases (configs where a planted bug matters)."""
    return family.all_cases()


def prepare(family: Family, name: str, case: Case, workdir: Path, seed: int = 0) -> CaseRun:
    """Write the case's tiny source, read it back and convert it (as ``harness.parity.check.round_trip`` does)."""
    source_dir = workdir / name / "source"
    tiny = family.tiny(seed, layout=case.layout, **case.config)
    if isinstance(case, MutationCase) and case.scale:
        tiny.tensors = TensorStore.from_dict({k: _scaled(k, tiny.tensors[k], case.scale) for k in tiny.tensors})
    family.write(tiny, source_dir, container=case.container)
    return case_run(family, name, family.read(source_dir))


def case_run(family: Family, name: str, source: SourceCheckpoint) -> CaseRun:
    """``source`` (as read back from disk, or rounded as a checkpoint stores it) with its clean conversion."""
    converted = family.convert(source)
    clean = Mutable.of(converted, source.config)
    vocab = int(converted.config["vocab_size"])
    return CaseRun(name, source, clean, make_tokens(vocab, batch=BATCH, seq=SEQ, seed=1), vocab)


def reference_source(family: Family, run: CaseRun, dtype: str) -> SourceCheckpoint:
    """What the reference runs on: the source itself in float32; for a low-precision checkpoint, the source
    that checkpoint holds (``invert`` of the rounded clean output, in float32)."""
    if dtype == "float32":
        return run.source
    rounded = {k: _round(t, TORCH_DTYPES[dtype]) for k, t in run.clean.tensors.items()}
    return family.invert(dict(run.clean.config), rounded)


def evaluate(family: Family, run: CaseRun, m: Mutable, reference: SourceCheckpoint, dtype: str,
             workdir: Path) -> Record:
    """Write ``m`` as a ``dtype`` checkpoint, load it, and hold it to float32 parity against ``reference``."""
    out = Path(tempfile.mkdtemp(dir=workdir)) / "hf"
    try:
        write_mutable(m, out, TORCH_DTYPES[dtype])
        try:
            model = load_converted(out, "cpu", "float32", family)
        except Exception as err:  # noqa: BLE001 - any load failure is the check catching the conversion
            return _killed(run, dtype, "load", f"{type(err).__name__}: {_first_line(err)}")
        try:
            result = run_parity(family, run.name, reference, model, "cpu", "float32", run.tokens, run.references)
        except Exception as err:  # noqa: BLE001 - a crash on valid tokens fails the check as well
            return _killed(run, dtype, "forward", f"{type(err).__name__}: {_first_line(err)}")
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
    if result.metrics is None:  # logits of another shape than the reference's: a wrong vocabulary cut
        return Record("", "", dtype, True, True, run.name, "vocab", float(model.config.vocab_size),
                      float(run.vocab_size), math.inf, result.violations[0])
    assert result.tolerance is not None
    bound = result.tolerance.max_abs_bound(result.noise)
    value = result.metrics.max_abs
    metric = result.violations[0].split()[0] if result.violations else "max_abs"
    detail = "; ".join(result.violations) or f"max_abs {value:.3g} <= {bound:.3g}"
    return Record("", "", dtype, True, bool(result.violations), run.name, metric, value, bound, value / bound, detail,
                  per_layer=result.per_layer)


def run_family(family: Family, dtypes: list[str], workdir: Path, exhaustive: bool = True, quiet: bool = True,
               mutants: list[Mutant] | None = None) -> tuple[list[Record], list[Record]]:
    """(mutant records, clean-control records) for one family, one record per mutant x dtype (of ``mutants``;
    default: ``mutants_for(family)``).

    ``exhaustive`` tries every case the mutant changes and keeps the kill with the largest margin (how close the
    harness came to missing the bug); otherwise cases are tried in order until one kills.
    """
    runs = [prepare(family, name, case, workdir) for name, case in cases_for(family).items()]
    refs = {(r.name, d): reference_source(family, r, d) for r in runs for d in dtypes}
    controls = []
    for run in runs:
        for dtype in dtypes:
            rec = evaluate(family, run, run.clean, refs[run.name, dtype], dtype, workdir)
            rec.family, rec.mutant, rec.applicable = family.name, "(clean)", False
            controls.append(rec)
    records = []
    for mutant in bar(mutants_for(family) if mutants is None else mutants, f"mutate {family.name}", quiet):
        planted = [(run, plant(mutant, run.clean)) for run in runs]
        live = [(run, m) for run, m in planted if not m.same_as(run.clean)]
        for dtype in dtypes:
            rec = Record(family.name, mutant.__name__, dtype, bool(live), False, detail="changes nothing here")
            tried = []
            for run, m in live:
                tried.append(evaluate(family, run, m, refs[run.name, dtype], dtype, workdir))
                if tried[-1].killed and not exhaustive:
                    break
            if tried:
                rec = max(tried, key=lambda r: (r.killed, r.margin or 0.0))
            rec.family, rec.mutant, rec.about = family.name, mutant.__name__, about(mutant)
            records.append(rec)
    return records, controls


def run_mutate(families: list[Family], dtypes: list[str], json_path: Path | None, html: Path | None = None,
               quiet: bool = False, structural_only: bool = False) -> int:
    """``convparity mutate``: the kill table and rates on the terminal, records as JSON; 1 if any survives.

    ``structural_only``: the catalogue derived from each family's key table and points
    (``harness.mutation.structural``) instead of the name-based one, with the kills per point."""
    start = time.perf_counter()
    records: list[Record] = []
    controls: list[Record] = []
    print(_row("family", "mutant", dtypes))
    with _workdir() as workdir:
        for fam in families:
            recs, ctrl = run_family(fam, dtypes, workdir, quiet=quiet,
                                    mutants=structural(fam) if structural_only else None)
            records += recs
            controls += ctrl
            for name in dict.fromkeys(r.mutant for r in recs):
                cells = [_cell(r) for d in dtypes for r in recs if r.mutant == name and r.dtype == d]
                print(_row(fam.name, name, cells), flush=True)
            if structural_only:
                print("\n".join(point_table(fam, recs)), flush=True)
    print()
    for line in summary(records, controls):
        print(line)
    print(f"in {time.perf_counter() - start:.1f}s")
    if json_path is not None:
        write_document(json_path, "mutate", [r.as_dict() for r in records + controls])
    if html is not None:
        write_html(mutate_page(records, controls), html)
    survived = [r for r in records if r.applicable and not r.killed]
    false_failures = [r for r in controls if r.killed]
    return 1 if survived or false_failures else 0


def summary(records: list[Record], controls: list[Record]) -> list[str]:
    """Kill rate per family and dtype, survivors, false failures and the closest calls."""
    lines = []
    for fam in dict.fromkeys(r.family for r in records):
        for dtype in dict.fromkeys(r.dtype for r in records):
            rs = [r for r in records if r.family == fam and r.dtype == dtype]
            app = [r for r in rs if r.applicable]
            killed = [r for r in app if r.killed]
            rate = 100.0 * len(killed) / len(app) if app else 100.0
            lines.append(f"{fam:<9} {dtype:<9} {len(rs):>3} mutants, {len(app):>3} applicable, {len(killed):>3} "
                         f"killed: {rate:.0f}%")
    lines += [f"SURVIVED {r.family} {r.mutant} {r.dtype}: {r.detail}" for r in records if r.applicable and not r.killed]
    lines += [f"FALSE FAILURE {r.family} {r.case} {r.dtype}: {r.detail}" for r in controls if r.killed]
    numeric = [r for r in records if r.killed and r.margin is not None and math.isfinite(r.margin)]
    if numeric:
        c = min(numeric, key=lambda r: r.margin or 0)
        lines.append(f"closest kill: {c.family} {c.mutant} {c.dtype} on {c.case}: {c.metric} {c.value:.3g} vs bound "
                     f"{c.bound:.3g} ({c.margin:.3g}x)")
    clean = [r for r in controls if r.margin is not None]
    if clean:
        c = max(clean, key=lambda r: r.margin or 0)
        lines.append(f"largest clean error: {c.family} {c.case} {c.dtype}: max_abs {c.value:.3g} vs bound "
                     f"{c.bound:.3g} ({c.margin:.3g}x)")
    return lines


def plant(mutant: Mutant, clean: Mutable) -> Mutable:
    """A copy of the clean conversion with ``mutant`` planted."""
    m = clean.copy()
    mutant(m)
    return m


def write_mutable(m: Mutable, out: Path, dtype: torch.dtype) -> None:
    """Write a (planted) conversion as a transformers directory of ``dtype`` weights."""
    tensors = {k: (t.to(dtype) if t.is_floating_point() else t).contiguous() for k, t in m.tensors.items()}
    specs = [TensorSpec(k, tuple(t.shape), t.dtype) for k, t in tensors.items()]
    write_model_dir(out, {**m.config, "dtype": str(dtype)[6:]}, specs, tensors.items(), 2**62)


def _row(family: str, mutant: str, cells: list[str]) -> str:
    return f"{family:<9} {mutant:<32} " + " ".join(f"{c:<40}" for c in cells).rstrip()


def _cell(r: Record) -> str:
    if not r.applicable:
        return "n/a"
    if not r.killed:
        return "SURVIVED"
    ratio = f" {r.margin:.3g}x" if r.margin is not None and math.isfinite(r.margin) else ""
    return f"killed ({r.metric}{ratio}, {r.case})"


def _killed(run: CaseRun, dtype: str, metric: str, detail: str) -> Record:
    return Record("", "", dtype, True, True, run.name, metric, None, None, math.inf, detail)


def _scaled(name: str, t: torch.Tensor, scale: dict[str, float]) -> torch.Tensor:
    factor = next((f for pat, f in scale.items() if fnmatch.fnmatchcase(name, pat)), None)
    return t if factor is None else (t.float() * factor).to(t.dtype)


def _round(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype).float() if t.is_floating_point() else t


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0][:200]



@contextmanager
def _workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="convparity-mutate-") as d:
        yield Path(d)
