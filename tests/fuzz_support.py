"""Run one corrupted source through ``convparity convert`` (library and command line) and judge the outcome.

The outcome of a conversion of a corrupted source is one of:

- ``refused``: a ConversionError of one line, nothing written (the test's expectation);
- ``accepted``: converted, which is right only where the corruption says why (``Broken.may_convert``), else
  ``wrongly-accepted``;
- ``traceback``: any other exception, or a command line that printed more than one line or exited otherwise;
- ``debris``: something left behind: OUTPUT after a refusal, a ``.OUTPUT.*.partial`` sibling, a temporary
  file, or the marker of a pickle that ran code;
- ``n/a``: the family's writer cannot write this corruption at all (not counted).

Also a script: ``python -m tests.fuzz_support --per-family 200`` fuzzes every family and prints the table of
kind x outcome.
"""

from __future__ import annotations

import argparse
import gc
import io
import random
import shutil
import sys
import tempfile
import traceback
from collections import Counter
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from harness.cli import main
from harness.errors import ConversionError
from harness.pipeline import convert_checkpoint
from tests.corruptions import ALLOWED_MAY_CONVERT, KINDS, NONFINITE_MAY_CONVERT, Broken, CannotBuildError, applicable
from tests.pristine import Pristine

__all__ = ["Outcome", "attempt"]

STATUSES = ("refused", "accepted", "wrongly-accepted", "traceback", "debris")


@dataclass
class Outcome:
    family: str
    case: str
    kind: str
    status: str
    detail: str  # what the corruption did
    message: str  # the error, the traceback, or why the acceptance is right
    ok: bool

    def explain(self) -> str:
        return f"{self.family}/{self.case} {self.kind} ({self.detail}) -> {self.status}: {self.message}"


def attempt(pristine: Pristine, kind: str, rng: random.Random, work: Path, cli: bool = False) -> Outcome:
    """Corrupt a copy of ``pristine`` in ``work`` one way and convert it; ``cli`` also runs the command line."""
    src = work / "src"
    shutil.copytree(pristine.path, src)

    def outcome(status: str, broken: Broken | None, message: str, ok: bool) -> Outcome:
        detail = broken.detail if broken is not None else ""
        return Outcome(pristine.family.name, pristine.case, kind, status, detail, message, ok)

    try:
        broken = KINDS[kind][1](src, pristine, rng)
    except CannotBuildError as err:
        return outcome("n/a", None, str(err), True)
    source = broken.options.pop("__source__", src)
    status, message = _convert(pristine, source, work / "out", broken, work / "tmp")
    left = _debris(work, work / "out", status)
    if left:
        return outcome("debris", broken, f"{left} (after {status}: {message})", False)
    ok, message = _judge(status, message, broken, work / "out")
    status = "wrongly-accepted" if status == "accepted" and not ok else status
    if cli and status != "traceback":
        code, err = _command_line(pristine, source, work / "cli-out", broken)
        want = 2 if status == "refused" else 0
        lines = err.splitlines()
        if code != want or (want == 2 and (len(lines) != 1 or not lines[0].startswith("convparity: error: "))):
            return outcome("traceback", broken, f"command line exited {code} (library: {status}) with {err!r}",
                           False)
        left = _debris(work, work / "cli-out", "refused" if want == 2 else "accepted")
        if left:
            return outcome("debris", broken, f"{left} (command line)", False)
    return outcome(status, broken, message, ok)


def _convert(pristine: Pristine, source: Path, out: Path, broken: Broken, tmp: Path) -> tuple[str, str]:
    tmp.mkdir()
    saved, tempfile.tempdir = tempfile.tempdir, str(tmp)  # temporary files of the conversion land here
    try:
        converted, _ = convert_checkpoint(pristine.family, source, out, **broken.options)
        status, message = "accepted", "; ".join(converted.notes)
        del converted
    except ConversionError as err:
        status, message = "refused", str(err)
    except Exception:
        status, message = "traceback", traceback.format_exc()
    finally:
        tempfile.tempdir = saved
    gc.collect()  # stores remove their temporary files when collected
    return status, message


def _debris(work: Path, out: Path, status: str) -> str:
    left = [p.name for p in work.glob(f".{out.name}.*.partial")]
    if (work / "tmp").is_dir():  # torch keeps its compiler cache there, by design
        left += [f"temporary {p.name}" for p in (work / "tmp").iterdir() if not p.name.startswith("torchinductor_")]
    if status != "accepted" and out.exists():
        left.append(f"{out.name} itself")
    if (work / "pwned").exists():
        left.append("the marker of a pickle that ran code")
    return ", ".join(left)


def _judge(status: str, message: str, broken: Broken, out: Path) -> tuple[bool, str]:
    if status == "refused":
        return "\n" not in message, message
    if status != "accepted":
        return False, message
    if broken.may_convert is None:
        return False, f"converted, but it must be refused ({message or 'no notes'})"
    if broken.may_convert == NONFINITE_MAY_CONVERT and not _finite(out):
        return False, "converted with NaN/Inf in the output, without --allow-nonfinite"
    if broken.may_convert == ALLOWED_MAY_CONVERT and not _finite(out) and "non-finite" not in message:
        return False, "converted NaN/Inf with --allow-nonfinite but gave no warning"
    return True, broken.may_convert


def _finite(out: Path) -> bool:
    tensors = [t for f in out.glob("*.safetensors") for t in load_file(f).values()]
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


def _command_line(pristine: Pristine, source: Path, out: Path, broken: Broken) -> tuple[int, str]:
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        code = main(["convert", pristine.family.name, str(source), str(out), "--quiet", *broken.flags])
    return code, err.getvalue()


def report(per_family: int, seed: int, workdir: Path, verbose: bool = False,
           only: list[str] | None = None) -> list[Outcome]:
    """``per_family`` corrupted sources for every family (kinds drawn uniformly, then a case each applies to),
    one in four also through the command line."""
    from harness.registry import families

    rng = random.Random(seed)
    outcomes = []
    for name, fam in families().items():
        if only and name not in only:
            continue
        pristines = [Pristine.build(fam, case, workdir / "pristine" / name / case) for case in fam.cases]
        kinds = sorted({k for p in pristines for k in applicable(p)})
        for i in range(per_family):  # a kind, then a case it applies to: rare kinds (an index) are not starved
            kind = rng.choice(kinds)
            p = rng.choice([p for p in pristines if kind in applicable(p)])
            work = workdir / "work" / f"{name}-{i}"
            work.mkdir(parents=True)
            kind_rng, cli = random.Random(rng.random()), rng.random() < 0.25
            if verbose:
                print(f"{name} {i} {p.case} {kind}", file=sys.stderr, flush=True)
            outcomes.append(attempt(p, kind, kind_rng, work, cli=cli))
            shutil.rmtree(work, ignore_errors=True)
    return outcomes


def table(outcomes: list[Outcome]) -> str:
    counted = [o for o in outcomes if o.status != "n/a"]
    counts = Counter((o.kind, o.status) for o in counted)
    rows = ["| kind | " + " | ".join(STATUSES) + " | total |", "|---" * (len(STATUSES) + 2) + "|"]
    for kind in KINDS:
        n = [counts[kind, s] for s in STATUSES]
        if sum(n):
            rows.append(f"| {kind} | " + " | ".join(map(str, n)) + f" | {sum(n)} |")
    totals = [sum(counts[k, s] for k in KINDS) for s in STATUSES]
    rows.append("| **total** | " + " | ".join(f"**{n}**" for n in totals) + f" | **{sum(totals)}** |")
    by_family = Counter((o.family, o.status) for o in counted)
    rows += ["", "| family | " + " | ".join(STATUSES) + " | total |", "|---" * (len(STATUSES) + 2) + "|"]
    for fam in sorted({o.family for o in counted}):
        n = [by_family[fam, s] for s in STATUSES]
        rows.append(f"| {fam} | " + " | ".join(map(str, n)) + f" | {sum(n)} |")
    return "\n".join(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-family", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help="name each source before it is tried")
    parser.add_argument("--families", help="comma-separated (default: every family)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="convparity-fuzz-") as d:
        results = report(args.per_family, args.seed, Path(d), args.verbose,
                         args.families.split(",") if args.families else None)
    print(table(results))
    print(f"\nnot applicable (the writer cannot write it): {sum(o.status == 'n/a' for o in results)}")
    for o in results:
        if not o.ok:
            print(f"\nFAIL {o.explain()}", file=sys.stderr)
    sys.exit(0 if all(o.ok for o in results) else 1)
