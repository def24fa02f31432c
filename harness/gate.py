"""``convparity gate``: check only the families a change touches, with reports for CI.

Files changed since ``--base`` map to families: ``converters/<f>/``, ``golden/<f>/``, ``golden/upstream/<f>/``
and ``tests/test_<f>.py`` affect family ``f``; the shared machinery (``harness/``, ``pyproject.toml``,
``constraints.txt``, ``tox.ini``) affects all. For each affected family the parity matrix and the golden
snapshots run; JUnit XML and a Markdown summary are written; the exit status is 1 on any failure.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import ConversionError
from harness.mutation.on_failure import Diagnoser
from harness.parity.check import RoundTrip, check_family
from harness.parity.html_report import check_page, write_html
from harness.parity.outcomes import case_outcomes
from harness.parity.parity import ParityResult
from harness.parity.report import write_json, write_junit, write_markdown
from harness.parity.snapshot import case_snapshot, check_snapshot
from harness.registry import Family
from harness.terminal import counter

if TYPE_CHECKING:
    from harness.parity.external import ExternalConverter

__all__ = ["SHARED", "affected_families", "changed_files", "run_gate"]

SHARED = ("harness/", "pyproject.toml", "constraints.txt", "tox.ini")


def changed_files(base: str, repo: Path) -> list[str]:
    """Paths changed between ``base`` and the working tree, plus untracked files (relative to the repo)."""
    def git(*args: str) -> list[str]:
        out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
        if out.returncode != 0:
            raise ConversionError(f"git {' '.join(args)} failed in {repo}: {out.stderr.strip() or out.stdout.strip()}")
        return [line for line in out.stdout.splitlines() if line]

    return sorted(set(git("diff", "--name-only", base)) | set(git("ls-files", "--others", "--exclude-standard")))


def affected_families(changed: Sequence[str], known: Sequence[str]) -> dict[str, str]:
    """Family -> the first changed path that puts it in scope.

    >>> affected_families(["converters/phi/convert.py", "README.md"], ["phi", "rwkv"])
    {'phi': 'converters/phi/convert.py'}
    >>> sorted(affected_families(["harness/io/writer.py"], ["phi", "rwkv"]))
    ['phi', 'rwkv']
    """
    out: dict[str, str] = {}
    for path in changed:
        if path.startswith(SHARED):
            return {f: out.get(f, path) for f in known}
        parts = path.split("/")
        candidates = {parts[1] if len(parts) > 2 and parts[0] in ("converters", "golden") else None,
                      parts[2] if len(parts) > 3 and parts[:2] == ["golden", "upstream"] else None,
                      parts[1][len("test_"):-len(".py")] if parts[0] == "tests" and len(parts) == 2 else None}
        for fam in sorted(c for c in candidates if c in known):
            out.setdefault(fam, path)
    return out


def run_gate(base: str, families: dict[str, Family], devices: list[str], dtypes: list[str],
             junit: Path | None = None, markdown: Path | None = None, repo: Path | None = None,
             json_path: Path | None = None, html: Path | None = None, quiet: bool = False,
             only: list[str] | None = None, converter: ExternalConverter | None = None) -> int:
    """Run the matrix and snapshots for the families affected since ``base`` (or ``only`` those); 0 when all pass.

    With ``converter`` an outside converter makes each case's directory; the golden snapshots, which record
    convparity's own converters, are not checked then.
    """
    if repo is None and (only is None or converter is None):
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True)
        if top.returncode != 0:
            raise ConversionError("convparity gate runs inside a git checkout of the converters it checks")
        repo = Path(top.stdout.strip())
    if only is not None:
        scope = dict.fromkeys(only, "--families")
        print(f"families to check: {', '.join(scope)} (--families)")
    else:
        assert repo is not None
        changed = changed_files(base, repo)
        scope = affected_families(changed, list(families))
        print(f"{len(changed)} file(s) changed since {base}; families to check: {', '.join(scope) or 'none'}")
        for fam, why in scope.items():
            print(f"  {fam}: {why}")
    results: list[ParityResult] = []
    snapshots: dict[tuple[str, str], list[str]] = {}
    cells = sum(len(families[name].cases) for name in scope) * len(devices) * len(dtypes)
    with counter(cells, "gate", quiet) as tick:
        for name in scope:
            fam = families[name]

            def snap(rt: RoundTrip, fam: Family = fam) -> None:
                if converter is None and repo is not None:
                    golden = repo / "golden" / fam.name / f"{rt.case}.json"
                    snapshots[fam.name, rt.case] = check_snapshot(case_snapshot(fam, rt), golden)

            d = Diagnoser(fam, on_round_trip=snap, on_result=tick)
            results += check_family(fam, devices, dtypes, on_round_trip=d.round_trip, on_result=d.result,
                                    converter=converter)
    failed = [r for r in results if r.status == "FAIL"] + [k for k, v in snapshots.items() if v]
    lines = [f"- base: `{base}`; families: {', '.join(f'{f} ({w})' for f, w in scope.items()) or 'none'}",
             f"- golden snapshots: {len(snapshots)} checked, {sum(1 for p in snapshots.values() if p)} differ"]
    if converter is not None:
        lines[1] = (f"- converter: `{converter.spec}` (golden snapshots not checked: they record convparity's own "
                    f"converters)")
        lines += [f"- {o.family}/{o.case}: **{o.outcome}** {o.detail}".rstrip() for o in case_outcomes(results)]
    lines += [f"- snapshot **{f}/{c}**: {'; '.join(p)}" for (f, c), p in snapshots.items() if p]
    if junit:
        write_junit(results, junit, snapshots)
    if markdown:
        write_markdown(results, markdown, title="convparity gate", extra_lines=lines)
    if json_path:
        write_json(results, json_path, {"base": base, "families": scope, "snapshots": {
            f"{f}/{c}": p for (f, c), p in snapshots.items()}}, command="gate")
    if html:
        write_html(check_page(results, "convparity gate", [line.lstrip("- ").replace("`", "") for line in lines]),
                   html)
    ran = sum(1 for r in results if not r.skipped) + len(snapshots)
    print(f"{ran - len(failed)} passed, {len(failed)} failed, {sum(1 for r in results if r.skipped)} skipped")
    for line in lines[2:]:
        print(line, file=sys.stderr)
    return 1 if failed else 0
