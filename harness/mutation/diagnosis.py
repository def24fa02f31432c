"""Diagnosis of a failed parity: where the bug is (teacher forcing) and what it probably is (the catalogue).

For a failing case: the reference's named points are recorded once; each sub-module of the converted model is
fed the reference's input at its point, and the first that disagrees is named with its error, the noise of the
sub-modules that agree, and the converted tensors that feed it (``harness.parity.observe``). Then every applicable
mutant of the catalogue is planted in the clean conversion of the same tiny source, observed the same way, and
ranked by how alike its divergence signature is to the failure's (``harness.parity.signature``). Mutants whose
signatures are the same on that case cannot be told apart there, and are reported together as one class.
Catalogue observations are cached per case, clean conversion and catalogue, so a second failure of the case costs
one load, and a catalogue mutant's own failure (``diagnose_planted``, for measuring accuracy) costs none. The
catalogue is the name-based one unless a caller passes another (the structural catalogue's accuracy is measured
against itself).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.family.family import Family
from harness.mutation.planting import Mutant, about
from harness.mutation.runner import CaseRun, mutants_for, plant, write_mutable
from harness.parity.observe import BOUND, Finding, Observation, observe
from harness.parity.points import Recording, Site, points_for, record, sites
from harness.parity.signature import Signature, similarity
from harness.parity.streamed_model import StreamedModel
from harness.parity.tensor_evidence import Difference, differences, explain, feeding_keys, stored_tensors

__all__ = ["SAME", "Diagnosis", "Match", "catalogue", "diagnose", "diagnose_planted", "rank"]

SAME = 0.999  # signatures this alike are one class: the case cannot tell those mutants apart
TOP = 5


@dataclass
class Match:
    """One class of catalogue mutants, with its similarity to the observed failure."""

    mutants: list[str]
    about: str
    score: float

    def text(self) -> str:
        return f"{' = '.join(self.mutants)}: {self.about} (match {self.score:.2f})"


@dataclass
class Diagnosis:
    finding: Finding | None
    matches: list[Match] = field(default_factory=list)
    note: str = ""
    seconds: float = 0.0
    signature: Signature = field(default_factory=dict)
    evidence: str = ""  # how the tensors that feed the sub-module differ from the clean conversion's

    def summary(self) -> str:
        """One line: the sub-module, then the best matches (``likely: ...; next: ...``).

        >>> Diagnosis(None, [Match(["swap_q_and_k"], "q/k swapped", 0.9)]).summary()
        'likely: swap_q_and_k: q/k swapped (match 0.90)'
        """
        parts = [self.finding.text()] if self.finding else []
        parts += [self.evidence] if self.evidence else []
        if self.matches:
            parts.append("likely: " + self.matches[0].text())
            parts += [f"next: {' = '.join(m.mutants)} ({m.score:.2f})" for m in self.matches[1:3]]
        if self.note:
            parts.append(self.note)
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {"finding": None if self.finding is None else vars(self.finding), "evidence": self.evidence,
                "matches": [vars(m) for m in self.matches], "note": self.note, "seconds": self.seconds}


def diagnose(family: Family, run: CaseRun, model_dir: Path, workdir: Path, use_catalogue: bool = True,
             mutants: list[Mutant] | None = None) -> Diagnosis | None:
    """Diagnose the conversion in ``model_dir`` of ``run``'s source; None when every sub-module agrees.

    ``run`` is the case as ``harness.mutation.runner.prepare`` makes it (source, clean conversion, tokens); the
    catalogue (``mutants``; default ``mutants_for(family)``) is planted in ``run.clean``.
    """
    start = time.perf_counter()
    recording, where = _points(family, run)
    observed = observe(family, model_dir, run.tokens, recording, where, _bound())
    if not observed.signature:
        return None
    feeds = observed.finding.feeds if observed.finding else []
    keys = feeding_keys(feeds, StreamedModel(model_dir, loading=family.loading).renamed) if feeds else []
    stored = stored_tensors(model_dir, keys)
    clean = {k: run.clean.tensors[k] for k in stored if k in run.clean.tensors}
    matches = []
    if use_catalogue:
        seen = _observed(family, run, workdir, mutants)
        matches = rank(observed.signature, catalogue(family, run, workdir, mutants),
                       _tiers(keys, differences(clean, stored), seen))
    return Diagnosis(observed.finding, matches, seconds=time.perf_counter() - start, signature=observed.signature,
                     evidence=explain(clean, stored, len(stored)))


def catalogue(family: Family, run: CaseRun, workdir: Path, mutants: list[Mutant] | None = None
              ) -> list[tuple[str, str, Signature]]:
    """(mutant, what it plants, signature) for every mutant of ``mutants`` (default ``mutants_for(family)``) that
    changes and breaks ``run``'s conversion."""
    return [(name, what, seen.signature) for name, (what, seen, _, _) in
            _observed(family, run, workdir, mutants).items() if seen.signature]


def diagnose_planted(family: Family, run: CaseRun, workdir: Path, mutant: str, mutants: list[Mutant]
                     ) -> Diagnosis | None:
    """What ``diagnose`` gives for ``mutant`` (one of ``mutants``, applicable to ``run``) planted in ``run.clean``
    and written, from the observation the catalogue already made of it (observing is deterministic); ``seconds``
    is what that observation took plus the ranking (plus planting the whole catalogue, on a case's first call)."""
    start = time.perf_counter()
    found = _observed(family, run, workdir, mutants)
    _, seen, took, changed = found[mutant]
    if not seen.signature:
        return None
    keys = feeding_keys(seen.finding.feeds, _renamed(family, run, workdir)) if seen.finding else []
    matches = rank(seen.signature, catalogue(family, run, workdir, mutants),
                   _tiers(keys, {n: d for n, d in changed.items() if n in keys}, found))
    return Diagnosis(seen.finding, matches, seconds=took + time.perf_counter() - start, signature=seen.signature)


def rank(observed: Signature, candidates: list[tuple[str, str, Signature]], tiers: Mapping[str, int] | None = None
         ) -> list[Match]:
    """Classes of candidates, best match first; members of a class have signatures at least ``SAME`` alike.

    ``tiers`` (mutant -> 2, 1 or 0; 1 where absent) come before the signature: a mutant that changes the tensors
    feeding the failing sub-module the way they are found changed ranks first, one that leaves them alone next,
    one that changes them otherwise last (``_tiers``).
    """
    def tier(name: str) -> int:
        return (tiers or {}).get(name, 1)

    scored = sorted(((similarity(observed, sig), name, what, sig) for name, what, sig in candidates),
                    key=lambda s: (-tier(s[1]), -s[0]))
    matches, taken = [], set()
    for score, name, what, sig in scored:
        if name in taken:
            continue
        members = [n for _, n, _, s in scored if n not in taken and tier(n) == tier(name) and
                   similarity(sig, s) >= SAME]
        taken.update(members)
        matches.append(Match(members, what, round(score, 3)))
    return matches[:TOP]


Seen = tuple[str, Observation, float, dict[str, Difference]]  # what it plants, observed, seconds, tensors changed
_OBSERVED: dict[tuple[str, str, str, tuple[str, ...]], dict[str, Seen]] = {}
_POINTS: dict[tuple[str, str, str], tuple[Recording, list[Site]]] = {}


def _points(family: Family, run: CaseRun) -> tuple[Recording, list[Site]]:
    key = (family.name, run.name, _fingerprint(run))
    if key not in _POINTS:
        recording = record(family, run.source, run.tokens)
        _POINTS[key] = recording, sites(points_for(family), recording)
    return _POINTS[key]


def _observed(family: Family, run: CaseRun, workdir: Path, mutants: list[Mutant] | None) -> dict[str, Seen]:
    """Per mutant of the catalogue that changes ``run``'s conversion: what it plants, how it is observed, seconds,
    and how it changes the clean conversion's tensors."""
    mutants = mutants_for(family) if mutants is None else mutants
    key = (family.name, run.name, _fingerprint(run), tuple(m.__name__ for m in mutants))
    if key not in _OBSERVED:
        recording, where = _points(family, run)
        found = {}
        for mutant in mutants:
            m = plant(mutant, run.clean)
            if m.same_as(run.clean):
                continue
            with tempfile.TemporaryDirectory(dir=workdir) as d:
                write_mutable(m, Path(d) / "hf", torch.float32)
                start = time.perf_counter()
                seen = observe(family, Path(d) / "hf", run.tokens, recording, where, _bound())
            found[mutant.__name__] = (about(mutant), seen, time.perf_counter() - start,
                                      differences(run.clean.tensors, m.tensors))
        _OBSERVED[key] = found
    return _OBSERVED[key]


def _renamed(family: Family, run: CaseRun, workdir: Path) -> dict[str, str]:
    """Checkpoint key -> the parameter it loads into, for ``run``'s clean conversion (cached per case)."""
    key = (family.name, run.name, _fingerprint(run))
    if key not in _RENAMED:
        with tempfile.TemporaryDirectory(dir=workdir) as d:
            write_mutable(run.clean, Path(d) / "hf", torch.float32)
            _RENAMED[key] = StreamedModel(Path(d) / "hf", loading=family.loading).renamed
    return _RENAMED[key]


_RENAMED: dict[tuple[str, str, str], dict[str, str]] = {}


def _tiers(keys: list[str], found: Mapping[str, Difference], seen: Mapping[str, Seen]) -> dict[str, int]:
    """Per mutant, how its planted tensors agree with ``found`` (checkpoint key feeding the sub-module -> how it
    differs from the clean conversion): 2 where it changes one of them the same kind of way, 1 where it changes none
    of the ``keys`` (a config field, another sub-module), 0 where it changes them otherwise or changes ones found
    unchanged."""
    tiers = {}
    for name, (_, _, _, changed) in seen.items():
        touched = {t: d for t, d in changed.items() if t in keys}
        same = any(t in found and found[t].kind == d.kind for t, d in touched.items())
        tiers[name] = 2 if same else 1 if not touched else 0
    return tiers


def _bound() -> float:
    return BOUND


def _fingerprint(run: CaseRun) -> str:
    digest = hashlib.sha256(json.dumps(run.clean.config, sort_keys=True, default=str).encode())
    for name, t in run.clean.tensors.items():
        digest.update(name.encode() + bytes(t.contiguous().view(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()

