"""How well diagnosis names a bug it does not know: ``convparity mutate --diagnose``.

Each catalogue mutant in turn is the unknown bug on each case where it changes the conversion: it is planted,
written and held to parity (as ``convparity mutate`` does); where parity kills it, the result is diagnosed as if
the bug were unknown. Three things are counted over the killed ones: the named sub-module is one the mutant
touched (a converted tensor it changed feeds it, or a config field it changed drives it), the mutant's class is
ranked first, and it is among the first three classes. A kill with no point to name counts for the ranks, not for
localisation (``localisable``): the model cannot be built at all (transformers refuses its config before any
sub-module exists), or the sub-module named lies in a layer the reference does not have (a layer count raised); the
tables show how many there were. The structural catalogue (``harness.mutation.structural``)
is measured the same way, ranked against itself, with its kills as a bfloat16 checkpoint beside and the counts per
named point its mutants are aimed at (``mutate --diagnose --structural``).
"""

from __future__ import annotations

import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.family.family import Family
from harness.mutation.diagnosis import diagnose, diagnose_planted
from harness.mutation.planting import Mutable, Mutant
from harness.mutation.runner import (
    CaseRun,
    cases_for,
    evaluate,
    mutants_for,
    plant,
    prepare,
    reference_source,
    write_mutable,
)
from harness.mutation.structural import aimed_points, structural
from harness.parity.observe import Finding
from harness.parity.parity import load_converted
from harness.parity.points import points_for, record, sites, unsupported
from harness.parity.report import write_document
from harness.parity.streamed_model import StreamedModel
from harness.parity.teacher import feeds
from harness.terminal import bar

__all__ = ["NO_LAYER", "NO_MODEL", "TARGETS", "Trial", "accuracy_table", "localisable", "meets_targets",
           "point_accuracy_table", "run_accuracy", "run_diagnose", "touched"]

TARGETS = {"touched": 100.0, "top-1": 90.0, "top-3": 100.0}  # percent of killed mutants (issue #14)
NO_MODEL = "the model cannot be built"
NO_LAYER = "a layer the reference does not have"


@dataclass
class Trial:
    """One mutant as the unknown bug on one case."""

    family: str
    case: str
    mutant: str
    killed: bool  # as a float32 checkpoint: the trials diagnosed
    point: str | None = None  # the sub-module diagnosis named
    unlocalisable: str = ""  # why no point can be named (see ``localisable``); empty: one can
    touched: bool = False  # ... is one the mutant touched
    rank: int | None = None  # 1-based rank of the class holding the mutant; None if not in the reported classes
    class_size: int = 0  # how many mutants share its class on this case
    seconds: float = 0.0
    summary: str = ""
    aimed: tuple[str, ...] = ()  # the points a structural mutant is aimed at
    kills: dict[str, bool] = field(default_factory=dict)  # killed as a checkpoint of each other dtype asked for

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_accuracy(family: Family, workdir: Path, quiet: bool = True, mutants: list[Mutant] | None = None,
                 dtypes: tuple[str, ...] = (), cases: list[str] | None = None) -> list[Trial]:
    """A :class:`Trial` per (mutant, case) where the mutant changes the conversion, float32 checkpoints, and one
    per case for the clean conversion (``mutant`` "(clean)"; its ``summary`` is empty unless it was diagnosed).

    ``mutants`` are both the unknown bugs and the catalogue diagnosis ranks (default ``mutants_for(family)``);
    each is also held to parity as a checkpoint of each of ``dtypes`` (``Trial.kills``). ``cases``: the names of
    the cases to run (default: all of ``cases_for(family)``)."""
    mutants = mutants_for(family) if mutants is None else mutants
    chosen = [(n, c) for n, c in cases_for(family).items() if cases is None or n in cases]
    trials = []
    for name, case in bar(chosen, f"diagnose {family.name}", quiet):
        run = prepare(family, name, case, workdir)
        module_feeds = _feeds(family, run, workdir)
        references = {d: reference_source(family, run, d) for d in dtypes}
        clean = Trial(family.name, name, "(clean)", False)
        _diagnose(family, run, run.clean, clean, module_feeds, workdir, mutants)
        trials.append(clean)
        for mutant in mutants:
            m = plant(mutant, run.clean)
            if m.same_as(run.clean):
                continue
            trial = Trial(family.name, name, mutant.__name__, evaluate(family, run, m, run.source, "float32",
                                                                       workdir).killed, aimed=aimed_points(mutant))
            trial.kills = {d: evaluate(family, run, m, ref, d, workdir).killed for d, ref in references.items()}
            if trial.killed:
                _diagnose(family, run, m, trial, module_feeds, workdir, mutants)
            trials.append(trial)
    return trials


def run_diagnose(families: list[Family], json_path: Path | None = None, quiet: bool = False,
                 structural_only: bool = False) -> int:
    """``convparity mutate --diagnose``: the accuracy table; 1 if a family misses a target or a clean conversion
    is diagnosed. ``structural_only``: over the structural catalogue, with its bfloat16 kills and a table per point.
    """
    if (why := unsupported()) is not None:
        print(f"convparity mutate --diagnose: {why}")
        return 1
    start = time.perf_counter()
    trials: list[Trial] = []
    with tempfile.TemporaryDirectory(prefix="convparity-diagnose-") as d:
        for fam in families:
            if not structural_only:
                trials += run_accuracy(fam, Path(d), quiet=quiet)
                continue
            mine = run_accuracy(fam, Path(d), quiet=quiet, mutants=structural(fam), dtypes=("bfloat16",))
            print("\n".join(point_accuracy_table(fam, mine)), flush=True)
            trials += mine
    for t in trials:
        if t.killed and ((localisable(t) and not t.touched) or t.rank != 1):
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
        killed = [t for t in trials if t.family == fam and t.killed]
        pct = _percentages(killed)
        if not killed or any((got := pct[k]) is not None and got < v for k, v in TARGETS.items()):
            return False
    return True


def localisable(trial: Trial) -> bool:
    """Whether a killed trial's fault can be named at a point. Not when the model cannot be built at all (the
    finding is the load itself: transformers refused the config, e.g. a head count that no longer divides the
    width, before any sub-module existed to feed the reference's input), nor when the sub-module named lies in a
    layer the reference does not run (a layer count raised: the extra layer's keys are missing), which no point
    records. ``_diagnose`` states which (``Trial.unlocalisable``).

    >>> localisable(Trial("gemma", "mqa", "perturb head_dim", True, point="load", unlocalisable=NO_MODEL))
    False
    """
    return not trial.unlocalisable


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
    """Per family: killed, of which with no point to name (not ``localisable``), named sub-module touched % (of
    the others), true class first %, in the top three %, mean class size, slowest seconds."""
    lines = [f"{'family':<9} {'killed':>6} {'no point':>8} {'touched':>8} {'top-1':>6} {'top-3':>6} {'class':>6} "
             f"{'slowest s':>9}"]
    for fam in dict.fromkeys(t.family for t in trials):
        lines.append(_row(fam, [t for t in trials if t.family == fam and t.killed]))
    lines.append(_row("all", [t for t in trials if t.killed]))
    clean = [t for t in trials if t.mutant == "(clean)"]
    lines.append(f"clean conversions: {len(clean)}, diagnosed: {sum(1 for t in clean if t.summary)}")
    return lines


def point_accuracy_table(family: Family, trials: list[Trial]) -> list[str]:
    """Per named point, over the trials of the mutants aimed at it (a mutant aimed at two points counts in both):
    mutants that apply, trials, kills per checkpoint dtype, and over the float32 kills: how many have no point to
    name (not ``localisable``) and the three percentages."""
    dtypes = list(dict.fromkeys(d for t in trials for d in t.kills))
    lines = [f"{'point':<34} {'mutants':>7} {'trials':>6} {'killed float32':>14} "
             + "".join(f"{'killed ' + d:>16}" for d in dtypes)
             + f" {'no point':>8} {'localised':>9} {'top-1':>6} {'top-3':>6}"]
    for point in [p.ref for p in family.points]:
        mine = [t for t in trials if point in t.aimed]
        killed = [t for t in mine if t.killed]
        pct = _percentages(killed)
        lines.append(f"{point:<34} {len({t.mutant for t in mine}):>7} {len(mine):>6} {len(killed):>14} "
                     + "".join(f"{sum(t.kills.get(d, False) for t in mine):>16}" for d in dtypes)
                     + f" {_unnamed(killed):>8} {_shown(pct['touched'], 9)} {_shown(pct['top-1'], 6)} "
                     f"{_shown(pct['top-3'], 6)}")
    return lines


def _diagnose(family: Family, run: CaseRun, m: Mutable, trial: Trial,
              module_feeds: dict[str, tuple[str, list[str], tuple[str, ...]]], workdir: Path,
              mutants: list[Mutant]) -> None:
    if trial.mutant == "(clean)":
        with tempfile.TemporaryDirectory(dir=workdir) as d:
            write_mutable(m, Path(d) / "hf", torch.float32)
            found = diagnose(family, run, Path(d) / "hf", workdir, mutants=mutants)
    else:  # the catalogue has observed this very conversion already
        found = diagnose_planted(family, run, workdir, trial.mutant, mutants)
    if found is None:
        trial.summary = "" if trial.mutant == "(clean)" else "no sub-module disagrees"
        return
    trial.summary, trial.seconds = found.summary(), found.seconds
    if found.finding is not None:
        trial.point = found.finding.point
        trial.unlocalisable = _unlocalisable(family, found.finding, module_feeds)
        hit = touched(run.clean, m, module_feeds)
        trial.touched = trial.point in hit
    for i, match in enumerate(found.matches):
        if trial.mutant in match.mutants:
            trial.rank, trial.class_size = i + 1, len(match.mutants)


def _unlocalisable(family: Family, finding: Finding,
                   module_feeds: dict[str, tuple[str, list[str], tuple[str, ...]]]) -> str:
    if finding.status == "load":
        return NO_MODEL
    recorded = {module for module, _, _ in module_feeds.values()}
    for p in family.points:
        pattern = re.escape(p.module).replace(re.escape("{layer}"), r"(\d+)")
        hit = re.match(pattern + r"(?:\.|$)", finding.module) if "{layer}" in p.module else None
        if hit and p.module.format(layer=hit.group(1)) not in recorded:
            return NO_LAYER
    return ""


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


def _percentages(killed: list[Trial]) -> dict[str, float | None]:
    """Localisation over the localisable kills, the ranks over all of them; None where there is nothing to count."""
    named = [t for t in killed if localisable(t)]
    return {"touched": _percent(sum(t.touched for t in named), len(named)),
            "top-1": _percent(sum(t.rank == 1 for t in killed), len(killed)),
            "top-3": _percent(sum(t.rank is not None and t.rank <= 3 for t in killed), len(killed))}


def _percent(part: int, whole: int) -> float | None:
    return 100.0 * part / whole if whole else None


def _shown(pct: float | None, width: int) -> str:
    return f"{pct:>{width - 1}.1f}%" if pct is not None else f"{'-':>{width}}"


def _row(name: str, killed: list[Trial]) -> str:
    pct = _percentages(killed)
    size = sum(t.class_size for t in killed) / (len(killed) or 1)
    slowest = max((t.seconds for t in killed), default=0.0)
    return (f"{name:<9} {len(killed):>6} {_unnamed(killed):>8} {_shown(pct['touched'], 8)} {_shown(pct['top-1'], 6)} "
            f"{_shown(pct['top-3'], 6)} {size:>6.2f} {slowest:>9.2f}")


def _unnamed(killed: list[Trial]) -> int:
    return sum(not localisable(t) for t in killed)
