"""How well diagnosis names a bug it does not know: ``convparity mutate --diagnose``.

Each catalogue mutant in turn is the unknown bug on each case where it changes the conversion: it is planted,
written and held to parity (as ``convparity mutate`` does); where parity kills it, the result is diagnosed as if
the bug were unknown. Three things are counted over the killed ones: the named sub-module is one the mutant
touched (a converted tensor it changed feeds it, or a config field it changed drives it), the mutant's class is
ranked first, and it is among the first three classes.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from harness.family.family import Family
from harness.mutation.diagnosis import diagnose
from harness.mutation.planting import Mutable
from harness.mutation.runner import CaseRun, cases_for, evaluate, mutants_for, plant, prepare, write_mutable
from harness.parity.parity import load_converted
from harness.parity.points import points_for, record, sites, unsupported
from harness.parity.report import write_document
from harness.parity.streamed_model import StreamedModel
from harness.parity.teacher import feeds
from harness.terminal import bar

__all__ = ["TARGETS", "Trial", "accuracy_table", "meets_targets", "run_accuracy", "run_diagnose", "touched"]

TARGETS = {"touched": 100.0, "top-1": 90.0, "top-3": 100.0}  # percent of killed mutants (issue #14)


@dataclass
class Trial:
    """One mutant as the unknown bug on one case."""

    family: str
    case: str
    mutant: str
    killed: bool
    point: str | None = None  # the sub-module diagnosis named
    touched: bool = False  # ... is one the mutant touched
    rank: int | None = None  # 1-based rank of the class holding the mutant; None if not in the reported classes
    class_size: int = 0  # how many mutants share its class on this case
    seconds: float = 0.0
    summary: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_accuracy(family: Family, workdir: Path, quiet: bool = True) -> list[Trial]:
    """A :class:`Trial` per (mutant, case) where the mutant changes the conversion, float32 checkpoints, and one
    per case for the clean conversion (``mutant`` "(clean)"; its ``summary`` is empty unless it was diagnosed)."""
    trials = []
    for name, case in bar(list(cases_for(family).items()), f"diagnose {family.name}", quiet):
        run = prepare(family, name, case, workdir)
        module_feeds = _feeds(family, run, workdir)
        clean = Trial(family.name, name, "(clean)", False)
        _diagnose(family, run, run.clean, clean, module_feeds, workdir)
        trials.append(clean)
        for mutant in mutants_for(family):
            m = plant(mutant, run.clean)
            if m.same_as(run.clean):
                continue
            trial = Trial(family.name, name, mutant.__name__, evaluate(family, run, m, run.source, "float32",
                                                                       workdir).killed)
            if trial.killed:
                _diagnose(family, run, m, trial, module_feeds, workdir)
            trials.append(trial)
    return trials


def run_diagnose(families: list[Family], json_path: Path | None = None, quiet: bool = False) -> int:
    """``convparity mutate --diagnose``: the accuracy table; 1 if a family misses a target or a clean conversion
    is diagnosed."""
    if (why := unsupported()) is not None:
        print(f"convparity mutate --diagnose: {why}")
        return 1
    start = time.perf_counter()
    trials: list[Trial] = []
    with tempfile.TemporaryDirectory(prefix="convparity-diagnose-") as d:
        for fam in families:
            trials += run_accuracy(fam, Path(d), quiet=quiet)
    for t in trials:
        if t.killed and (not t.touched or t.rank != 1):
            print(f"{t.family} {t.case} {t.mutant}: rank {t.rank}, named {t.point} "
                  f"({'touched' if t.touched else 'NOT touched'}): {t.summary}")
    for line in accuracy_table(trials):
        print(line)
    print(f"in {time.perf_counter() - start:.1f}s")
    if json_path is not None:
        write_document(json_path, "mutate-diagnose", [t.as_dict() for t in trials])
    return 0 if meets_targets(trials) else 1


def meets_targets(trials: list[Trial]) -> bool:
    """Every family's killed trials reach ``TARGETS``, and no clean conversion is diagnosed."""
    if any(t.mutant == "(clean)" and t.summary for t in trials):
        return False
    for fam in dict.fromkeys(t.family for t in trials):
        pct = _percentages([t for t in trials if t.family == fam and t.killed])
        if any(pct[k] < v for k, v in TARGETS.items()):
            return False
    return True


def touched(clean: Mutable, m: Mutable, module_feeds: dict[str, tuple[str, list[str], tuple[str, ...]]]) -> set[str]:
    """The points a planted bug touched: those fed by a converted tensor it changed, added or removed, and those
    driven by a config field it changed. ``module_feeds``: point -> (its module, the tensors feeding it, its
    config fields); a converted tensor under the module's path feeds it too (transformers may fuse on load)."""
    tensors = {k for k in clean.tensors.keys() | m.tensors.keys()
               if k not in clean.tensors or k not in m.tensors or not torch.equal(clean.tensors[k], m.tensors[k])}
    fields = _changed(clean.config, m.config)
    return {point for point, (module, names, config) in module_feeds.items()
            if tensors & set(names) or any(t.startswith(module + ".") for t in tensors) or fields & set(config)}


def accuracy_table(trials: list[Trial]) -> list[str]:
    """Per family: killed, named sub-module touched %, true class first %, in the top three %, slowest seconds."""
    lines = [f"{'family':<9} {'killed':>6} {'touched':>8} {'top-1':>6} {'top-3':>6} {'class':>6} {'slowest s':>9}"]
    for fam in dict.fromkeys(t.family for t in trials):
        lines.append(_row(fam, [t for t in trials if t.family == fam and t.killed]))
    lines.append(_row("all", [t for t in trials if t.killed]))
    clean = [t for t in trials if t.mutant == "(clean)"]
    lines.append(f"clean conversions: {len(clean)}, diagnosed: {sum(1 for t in clean if t.summary)}")
    return lines


def _diagnose(family: Family, run: CaseRun, m: Mutable, trial: Trial,
              module_feeds: dict[str, tuple[str, list[str], tuple[str, ...]]], workdir: Path) -> None:
    with tempfile.TemporaryDirectory(dir=workdir) as d:
        write_mutable(m, Path(d) / "hf", torch.float32)
        start = time.perf_counter()
        found = diagnose(family, run, Path(d) / "hf", workdir)
        trial.seconds = time.perf_counter() - start
    if found is None:
        trial.summary = "" if trial.mutant == "(clean)" else "no sub-module disagrees"
        return
    trial.summary = found.summary()
    if found.finding is not None:
        trial.point = found.finding.point
        hit = touched(run.clean, m, module_feeds)
        trial.touched = trial.point in hit
    for i, match in enumerate(found.matches):
        if trial.mutant in match.mutants:
            trial.rank, trial.class_size = i + 1, len(match.mutants)


def _feeds(family: Family, run: CaseRun, workdir: Path) -> dict[str, tuple[str, list[str], tuple[str, ...]]]:
    """Per point of the case: its module, the converted tensors feeding it (by the checkpoint keys that load into
    its parameters: transformers renames and fuses some, e.g. Mixtral's experts), its config fields."""
    with tempfile.TemporaryDirectory(dir=workdir) as d:
        write_mutable(run.clean, Path(d) / "hf", torch.float32)
        model = load_converted(Path(d) / "hf", "cpu", "float32", family)
        renamed = StreamedModel(Path(d) / "hf", loading=family.loading).renamed
    where = sites(points_for(family), record(family, run.source, run.tokens))
    out = {}
    for s in where:
        params = set(feeds(model, s.module))
        out[s.name] = (s.module, sorted(params | {k for k, p in renamed.items() if p in params}), s.config)
    return out


def _changed(a: Any, b: Any, key: str = "") -> set[str]:
    """Names of the config fields (at any depth) whose values differ, with the fields that hold them."""
    if isinstance(a, dict) and isinstance(b, dict):
        inner = {f for k in a.keys() | b.keys() for f in _changed(a.get(k), b.get(k), k)}
        return inner | ({key} if inner and key else set())
    return {key} if a != b and key else set()


def _percentages(killed: list[Trial]) -> dict[str, float]:
    n = len(killed) or 1
    return {"touched": 100.0 * sum(t.touched for t in killed) / n,
            "top-1": 100.0 * sum(t.rank == 1 for t in killed) / n,
            "top-3": 100.0 * sum(t.rank is not None and t.rank <= 3 for t in killed) / n}


def _row(name: str, killed: list[Trial]) -> str:
    pct = _percentages(killed)
    size = sum(t.class_size for t in killed) / (len(killed) or 1)
    slowest = max((t.seconds for t in killed), default=0.0)
    return (f"{name:<9} {len(killed):>6} {pct['touched']:>7.1f}% {pct['top-1']:>5.1f}% {pct['top-3']:>5.1f}% "
            f"{size:>6.2f} {slowest:>9.2f}")
