"""Parity reports a reviewer can trust without rerunning: environment, command, every cell against its bound.

``convparity check --report FILE.md --json FILE`` and ``convparity gate --markdown FILE --junit FILE`` write
these. Every record carries the metrics, the tolerance it was held to, the source checkpoint's sha256 and
the time it took.
"""

from __future__ import annotations

import datetime
import json
import platform
import shlex
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from harness.parity.parity import ParityResult

__all__ = ["SCHEMA", "environment", "record", "summary", "write_document", "write_json", "write_junit",
           "write_markdown"]


def environment() -> dict[str, str]:
    """Versions and device of this run."""
    versions = {name: _version(name) for name in ("convparity", "torch", "transformers", "safetensors")}
    device = platform.processor() or platform.machine()
    if torch.cuda.is_available():
        device += f"; CUDA {torch.version.cuda}: {torch.cuda.get_device_name(0)}"
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": shlex.join(["convparity", *sys.argv[1:]]) if sys.argv else "",
            "python": platform.python_version(), "platform": platform.platform(), "device": device, **versions}


def record(r: ParityResult) -> dict[str, Any]:
    """One result as plain data (the JSON report's rows)."""
    tol = r.tolerance
    return {"family": r.family, "case": r.case, "device": r.device, "dtype": r.dtype, "status": r.status,
            "outcome": r.outcome,
            "metrics": r.metrics.as_dict() if r.metrics else None,
            "tolerance": {**asdict(tol), "max_abs_bound": tol.max_abs_bound(r.noise)} if tol else None,
            "noise_floor": r.noise, "violations": r.violations, "first_divergent_layer": r.first_divergent_layer,
            "skipped": r.skipped, "source_sha256": r.source_sha256, "seconds": round(r.seconds, 3),
            "per_layer": r.per_layer, "diagnosis": r.diagnosis}


SCHEMA = "convparity/1"  # docs/json-schema.md


def write_document(path: Path, command: str, results: Sequence[dict[str, Any]], **extra: Any) -> None:
    """Every command's ``--json``: ``{"schema", "command", "environment", **extra, "results": [...]}``.

    ``command`` is the subcommand (check, verify, gate, mutate); ``environment()["command"]`` the exact argv.
    """
    payload = {"schema": SCHEMA, "command": command, "environment": environment(), **extra,
               "results": list(results)}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def write_json(results: Sequence[ParityResult], path: Path, extra: dict[str, Any] | None = None,
               command: str = "check") -> None:
    write_document(path, command, [record(r) for r in results], summary=_summary(results), **(extra or {}))


def write_markdown(results: Sequence[ParityResult], path: Path, title: str = "convparity parity report",
                   extra_lines: Sequence[str] = ()) -> None:
    env, summary = environment(), _summary(results)
    lines = [f"# {title}", "", f"{summary['passed']} passed, {summary['failed']} failed, "
             f"{summary['skipped']} skipped: **{'PASS' if not summary['failed'] else 'FAIL'}**", "",
             f"- date: {env['date']}", f"- command: `{env['command']}`",
             f"- python {env['python']}, torch {env['torch']}, transformers {env['transformers']}, "
             f"safetensors {env['safetensors']}, convparity {env['convparity']}",
             f"- device: {env['device']} ({env['platform']})", *extra_lines, "",
             "| family | case | device | dtype | max abs (bound) | max rel | cosine (min) | top-1 (min) "
             "| KL (max) | source sha256 | status |", "|" + "---|" * 11]
    for r in results:
        if r.metrics is None or r.tolerance is None:
            status = "skip" if r.skipped else f"**{r.outcome}**"
            lines.append(f"| {r.family} | {r.case} | {r.device} | {r.dtype} | | | | | | | {status} |")
            continue
        m, t = r.metrics, r.tolerance
        lines.append(f"| {r.family} | {r.case} | {r.device} | {r.dtype} | {m.max_abs:.2e} "
                     f"({t.max_abs_bound(r.noise):.1e}) | {m.max_rel:.1e} | {m.cosine:.7f} ({t.min_cosine}) | "
                     f"{m.top1:.3f} ({t.min_top1}) | {m.kl:.1e} ({t.max_kl:g}) | `{(r.source_sha256 or '')[:12]}` "
                     f"| {'pass' if r.passed else '**FAIL**'} |")
    reasons = sorted({r.skipped for r in results if r.skipped})
    lines += [""] + [f"Skipped: {reason}." for reason in reasons]
    lines += [f"- **{r.family}-{r.case}-{r.device}-{r.dtype}**: {'; '.join(r.violations)}"
              + (f"  \n  diagnosis: {r.diagnosis}" if r.diagnosis else "") for r in results if r.status == "FAIL"]
    path.write_text("\n".join(lines).rstrip() + "\n")


def write_junit(results: Sequence[ParityResult], path: Path, snapshots: dict[tuple[str, str], list[str]]) -> None:
    """One test case per family x case x device x dtype (and one per snapshot check), grouped by family."""
    root = ET.Element("testsuites", name="convparity")
    for family in sorted({r.family for r in results} | {f for f, _ in snapshots}):
        suite = ET.SubElement(root, "testsuite", name=f"convparity.{family}")
        cells = [r for r in results if r.family == family]
        for r in cells:
            case = ET.SubElement(suite, "testcase", classname=f"convparity.{family}.{r.case}",
                                 name=f"parity[{r.device}-{r.dtype}]", time=f"{r.seconds:.3f}")
            if r.skipped:
                ET.SubElement(case, "skipped", message=r.skipped)
            elif not r.passed:
                message = "; ".join(r.violations) + (f"; diagnosis: {r.diagnosis}" if r.diagnosis else "")
                ET.SubElement(case, "failure", message=message).text = json.dumps(record(r), indent=2)
        snaps = {c: p for (f, c), p in snapshots.items() if f == family}
        for case_name, problems in snaps.items():
            case = ET.SubElement(suite, "testcase", classname=f"convparity.{family}.{case_name}", name="snapshot")
            if problems:
                ET.SubElement(case, "failure", message=problems[0]).text = "\n".join(problems)
        failed = sum(1 for r in cells if r.status == "FAIL") + sum(1 for p in snaps.values() if p)
        suite.set("tests", str(len(cells) + len(snaps)))
        suite.set("failures", str(failed))
        suite.set("skipped", str(sum(1 for r in cells if r.skipped)))
    ET.indent(root)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def summary(results: Sequence[ParityResult]) -> dict[str, int]:
    """Counts of passed, failed and skipped results."""
    return _summary(results)


def _summary(results: Sequence[ParityResult]) -> dict[str, int]:
    failed = sum(1 for r in results if r.status == "FAIL")
    skipped = sum(1 for r in results if r.skipped)
    return {"passed": len(results) - failed - skipped, "failed": failed, "skipped": skipped}


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"
