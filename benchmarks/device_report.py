"""``device_check.py``'s steps and what it writes: each step run under its limit and read back, then one JSON and
one Markdown summary of them all.

A step's process writes its own record (``OUT/<step>.json`` from ``--json``, ``OUT/cuda-tests.xml`` from
``--junitxml``, the benchmark's table on stdout) and, through ``gpu_peak.py``, ``OUT/<step>.peak.json``.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["Step", "environment", "summarise", "write_summary"]

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = "convparity-device-check/1"


@dataclass
class Step:
    """One command under a time limit; ``kind`` says how its record is read (check, tests, verify, bench)."""

    name: str
    argv: list[str]
    limit: float
    kind: str = ""
    status: str = "not run"  # pass, FAIL or timeout
    seconds: float = 0.0
    detail: str = ""
    peak: dict[str, float | None] = field(default_factory=dict)  # torch's peak GPU memory, MiB
    data: Any = None  # what the record held: cells, test counts, a verify result, a benchmark row

    def run(self, out: Path) -> Step:
        """Run to completion or to the limit (then the whole process group is killed), and read the record."""
        log = out / f"{self.name}.log"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        start = time.perf_counter()
        with log.open("w") as f:
            proc = subprocess.Popen(self.argv, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)  # its own group: a timeout ends its children too
            try:
                code: int | None = proc.wait(timeout=self.limit)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                code = None
        self.seconds = time.perf_counter() - start
        peak = out / f"{self.name}.peak.json"
        self.peak = json.loads(peak.read_text()) if peak.is_file() else {}
        if code is None:
            self.status, self.detail = "timeout", f"ran past its {self.limit:g} s limit"
            return self
        try:
            ok, self.detail, self.data = _READERS.get(self.kind, _read_nothing)(out, self.name, log)
        except (OSError, ValueError, KeyError, IndexError, TypeError, ET.ParseError) as err:
            ok, self.detail = False, f"its record could not be read: {type(err).__name__}: {err}"
        self.status = "pass" if code == 0 and ok else "FAIL"
        if code != 0 and self.data is None:  # no record to tell why: the output's last line may
            tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-1:]
            self.detail = f"exit status {code}" + (f": {tail[0][:300]}" if tail else "")
        return self


def environment() -> dict[str, Any]:
    """GPU (from nvidia-smi), driver, and the versions that decide what ran."""
    import torch

    env: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
        "torch CUDA": torch.version.cuda, "cuDNN": torch.backends.cudnn.version(),
        "transformers": _version("transformers"), "commit": _git("rev-parse", "--short", "HEAD"),
        "uncommitted changes": bool(_git("status", "--porcelain", "--untracked-files=no"))}
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    try:
        name, driver, memory = subprocess.run(query, capture_output=True, text=True, timeout=30,
                                              check=True).stdout.splitlines()[0].split(", ")
        env |= {"GPU": name, "driver": driver, "GPU memory": memory}
    except (OSError, subprocess.SubprocessError, IndexError, ValueError) as err:
        env |= {"GPU": f"unknown: nvidia-smi failed ({err})", "driver": None, "GPU memory": None}
    return env


def summarise(steps: list[Step], env: dict[str, Any], seconds: float, command: str) -> dict[str, Any]:
    """Everything the run found, as plain data."""
    def of(kind: str) -> list[Step]:
        return [s for s in steps if s.kind == kind and s.data is not None]

    peaks = [s.peak.get("allocated_mib") for s in steps]
    return {
        "schema": SCHEMA, "passed": bool(steps) and all(s.status == "pass" for s in steps), "command": command,
        "seconds": round(seconds, 1), "environment": env,
        "peak_gpu_allocated_mib": max((p for p in peaks if p is not None), default=None),
        "steps": [{"name": s.name, "status": s.status, "seconds": round(s.seconds, 1), "limit_s": s.limit,
                   "peak_gpu_mib": s.peak, "detail": s.detail} for s in steps],
        "cells": [cell for s in of("check") for cell in s.data],
        "tests": next((s.data for s in of("tests")), None),
        "verify": [{"step": s.name, **s.data} for s in of("verify")],
        "benchmark": next((s.data for s in of("bench")), None),
    }


def write_summary(report: dict[str, Any], out: Path) -> None:
    """``OUT/device-check.json`` and ``OUT/device-check.md``."""
    (out / "device-check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    env = report["environment"]
    lines = [f"# convparity device check: {'PASS' if report['passed'] else 'FAIL'}", "",
             f"- GPU: {env['GPU']}, driver {env['driver']}, {env['GPU memory']}",
             f"- torch {env['torch']} (CUDA {env['torch CUDA']}, cuDNN {env['cuDNN']}), transformers "
             f"{env['transformers']}, python {env['python']}",
             f"- convparity at {env['commit']}{' with uncommitted changes' if env['uncommitted changes'] else ''}; "
             f"{env['date']}; `{report['command']}`",
             f"- {report['seconds']} s in all; peak GPU memory allocated by torch: "
             f"{_mib(report['peak_gpu_allocated_mib'])} MiB", "",
             "| step | status | seconds | limit s | peak GPU MiB (allocated / reserved) | detail |", "|---" * 6 + "|"]
    lines += [f"| {s['name']} | {s['status']} | {s['seconds']} | {s['limit_s']:g} | "
              f"{_mib(s['peak_gpu_mib'].get('allocated_mib'))} / {_mib(s['peak_gpu_mib'].get('reserved_mib'))} | "
              f"{s['detail']} |" for s in report["steps"]]
    lines += ["", "## Parity cells (`convparity check`)", "",
              "| family | case | device | dtype | status | max abs | bound | margin |", "|---" * 8 + "|"]
    lines += [f"| {c['family']} | {c['case']} | {c['device']} | {c['dtype']} | {c['status']} | {_num(c['max_abs'])} | "
              f"{_num(c['bound'])} | {'exact' if c['max_abs'] == 0 else _num(c['margin'], 'x')} |"
              for c in report["cells"]]
    lines += ["", "## verify on the 1-layer Mixtral of `verify-source` (8x7B-shaped; tiny with --tiny)", "",
              "| step | device | status | logits max abs | rel | bound | margin | seconds | peak RSS GiB |",
              "|---" * 9 + "|"]
    lines += [f"| {v['step']} | {v['device']} | {v['verdict']} | {_num(v['max_abs'])} | "
              f"{_num(v['rel'])} | {_num(v['bound'])} | {_num(v['margin'], 'x')} | {_num(v['seconds'])} | "
              f"{_num(v['peak_rss_gib'])} |" for v in report["verify"]]
    if report["benchmark"]:
        b = report["benchmark"]
        lines += ["", "## Conversion throughput (`convert_throughput.py`)", "", "| " + " | ".join(b) + " |",
                  "|---" * len(b) + "|", "| " + " | ".join(str(v) for v in b.values()) + " |"]
    (out / "device-check.md").write_text("\n".join(lines) + "\n")


def _read_check(out: Path, name: str, log: Path) -> tuple[bool, str, Any]:
    results = json.loads((out / f"{name}.json").read_text())["results"]
    cells = []
    for r in results:
        m, t = r.get("metrics") or {}, r.get("tolerance") or {}
        max_abs, bound = m.get("max_abs"), t.get("max_abs_bound")
        cells.append({"family": r["family"], "case": r["case"], "device": r["device"], "dtype": r["dtype"],
                      "status": r["status"], "max_abs": max_abs, "bound": bound,
                      "margin": bound / max_abs if max_abs and bound else None,  # None: exact, or no number
                      "why": r.get("skipped") or "; ".join(r.get("violations") or [])})
    bad = [c for c in cells if c["status"] != "pass"]
    detail = f"{len(cells) - len(bad)} of {len(cells)} cells pass"
    if bad:
        detail += f"; {bad[0]['family']}-{bad[0]['case']}: {bad[0]['status']}: {bad[0]['why']}"
    return bool(cells) and not bad, detail, cells


def _read_tests(out: Path, name: str, log: Path) -> tuple[bool, str, Any]:
    root = ET.parse(out / f"{name}.xml").getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = [f"{c.get('classname')}::{c.get('name')}" for c in root.iter("testcase")
              if c.find("failure") is not None or c.find("error") is not None]
    ran = counts["tests"] - counts["skipped"]
    detail = (f"{ran - counts['failures'] - counts['errors']} passed, {counts['failures'] + counts['errors']} failed, "
              f"{counts['skipped']} skipped")
    return ran > 0 and not failed, detail, {**counts, "failed": failed}


def _read_verify(out: Path, name: str, log: Path) -> tuple[bool, str, Any]:
    r = json.loads((out / f"{name}.json").read_text())["results"][0]
    logits = r.get("logits") or {}
    verdict = r.get("verdict") or ("PASS" if r.get("passed") else "FAIL")  # PASS, FAIL or INCONCLUSIVE
    data = {"device": r.get("device"), "verdict": verdict, "passed": verdict == "PASS",
            "max_abs": logits.get("max_abs"), "rel": logits.get("rel"), "bound": logits.get("bound"),
            "margin": logits.get("margin"), "seconds": r.get("seconds"), "peak_rss_gib": r.get("peak_rss_gib"),
            "diagnosis": r.get("diagnosis")}
    detail = f"{verdict}: logits rel {_num(data['rel'])} against bound {_num(data['bound'])}"
    return data["passed"], detail, data


def _read_bench(out: Path, name: str, log: Path) -> tuple[bool, str, Any]:
    """The benchmark's one row: path, checkout, then eight numbers (its header names them)."""
    rows = [line.split() for line in log.read_text().splitlines() if line.startswith("safetensors ")]
    if not rows or len(rows[0]) != 10:
        return False, "no result row in the benchmark's output", None
    names = ["GB", "cp s", "cat s", "convert s", "x cp", "x cat", "peak RSS GiB", "peak anon GiB"]
    data = {"path": rows[0][0], **dict(zip(names, map(float, rows[0][2:]), strict=True))}
    return True, f"{data['convert s']} s for {data['GB']} GB ({data['x cp']}x cp)", data


def _read_nothing(out: Path, name: str, log: Path) -> tuple[bool, str, Any]:
    return True, "", None


_READERS = {"check": _read_check, "tests": _read_tests, "verify": _read_verify, "bench": _read_bench}


def _num(value: float | None, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:.3g}{unit}"


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
