"""Every CUDA check of convparity in one command, for a machine with an NVIDIA GPU (about 8 minutes at most):

    python benchmarks/device_check.py OUT

Steps, each in its own process under its own time limit (a step that fails or runs out of time is recorded and
the rest still run):

- ``check-float32``, ``check-bfloat16``, ``check-float16``: ``convparity check --devices cuda --dtypes D --json``
  on every family; every cell must run and pass (a skipped CUDA cell is a failure here);
- ``cuda-tests``: the suite's tests marked ``cuda`` (``pytest -m cuda tests``), with JUnit XML;
- ``verify-source``: a 1-layer Mixtral-8x7B-shaped bf16 checkpoint (3.4 GB), written and converted by
  ``benchmarks/verify_memory.py``'s functions;
- ``verify-device`` then ``verify-cpu``: ``convparity verify`` of that conversion with ``--device cuda``, and the
  same on the CPU for comparison; where two GPUs are visible, ``verify-two-devices`` between them:
  ``--device cuda:0 --reference-device cuda:1`` (the reference beside the converted model; 30 s more);
- ``convert-bench``: ``benchmarks/convert_throughput.py`` on its ``safetensors`` path (every tensor renamed, one
  file: the fastest path of design.md's settled run), ``--gb 1``, against ``cp`` and ``cat``.

Writes ``OUT/device-check.json`` and ``OUT/device-check.md`` (per cell: status, max abs, bound; per step: status,
seconds and torch's peak GPU memory; GPU name, driver, torch / CUDA / cuDNN versions), each step's output in
``OUT/<step>.log`` and its own JSON or XML beside it. Exit status 0 when every step passed, 1 otherwise, and 2,
with one line, where CUDA is absent. It installs nothing when convparity's dependencies and pytest import;
otherwise ``pip install -e '.[test]'`` with torch held at the installed version.

``--device cpu --tiny`` runs the same plan on the CPU with tiny settings (``tests/test_device_check.py``, with
only the CUDA availability check stubbed).
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import shutil
import sys
import time
from pathlib import Path

from device_report import Step, environment, summarise, write_summary

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
DTYPES = ("float32", "bfloat16", "float16")
# Seconds per step: the sum (430) leaves 50 s of the 8 minutes for start-up and the odd slow step; a machine with
# two GPUs runs verify-two-devices too.
LIMITS = {"install": 120, "check": 45, "cuda-tests": 100, "verify-source": 50, "verify-device": 45,
          "verify-two-devices": 30, "verify-cpu": 60, "convert-bench": 40}
# What the steps import; one missing is installed with the test extra (torch never is).
NEEDED = ("transformers", "safetensors", "accelerate", "jinja2", "pygal", "omegaconf", "tqdm", "huggingface_hub",
          "numpy", "pytest", "hypothesis")


def cuda_absent() -> str | None:
    """Why CUDA cannot be used here, or None: with ``cuda_devices``, the one place this script asks torch about
    CUDA."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA device (torch.cuda.is_available() is False)"
    return None


def cuda_devices() -> int:
    """How many CUDA devices torch sees (0 without torch or CUDA)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    if args.write_verify_source:
        return _write_verify_source(args.write_verify_source, args.tiny)
    absent = cuda_absent()
    if absent:
        print(f"device_check: CUDA is absent: {absent}; run this on a machine with an NVIDIA GPU", file=sys.stderr)
        return 2
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    start, steps = time.perf_counter(), []
    try:
        for step in _plan(args, out, work):
            steps.append(step.run(out))
            print(f"{step.name}: {step.status} in {step.seconds:.1f}s" + (f" ({step.detail})" if step.detail else ""),
                  flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    command = shlex.join(["python", "benchmarks/device_check.py", *argv])
    report = summarise(steps, environment(), time.perf_counter() - start, command)
    write_summary(report, out)
    print(f"{'PASS' if report['passed'] else 'FAIL'}: {out / 'device-check.md'}")
    return 0 if report["passed"] else 1


def _plan(args: argparse.Namespace, out: Path, work: Path) -> list[Step]:
    device, py = args.device, sys.executable
    peak = [py, str(BENCH / "gpu_peak.py")]
    families = ["check", *args.families.split(",")] if args.families else ["check"]
    steps = [] if not _missing() else [Step("install", [py, "-m", "pip", "install", "-q", "-c", str(_held_torch(work)),
                                                        "-e", ".[test]"], LIMITS["install"])]
    for dtype in args.dtypes.split(","):
        name = f"check-{dtype}"
        steps.append(Step(name, [*peak, str(out / f"{name}.peak.json"), "harness.cli", *families, "--devices",
                                 device, "--dtypes", dtype, "--json", str(out / f"{name}.json")],
                          LIMITS["check"], kind="check"))
    plugin = [] if _installed("convparity") else ["-p", "harness.plugin"]  # the entry point registers it otherwise
    steps.append(Step("cuda-tests", [*peak, str(out / "cuda-tests.peak.json"), "pytest", "-q", "-n", "0",
                                     "-p", "no:cacheprovider", *plugin, "--junitxml", str(out / "cuda-tests.xml"),
                                     *shlex.split(args.pytest)], LIMITS["cuda-tests"], kind="tests"))
    source, converted = work / "mixtral-1-layer", work / "mixtral-1-layer-hf"
    tiny = ["--tiny"] if args.tiny else []
    steps.append(Step("verify-source", [py, str(Path(__file__).resolve()), str(out), "--write-verify-source",
                                        str(work), *tiny], LIMITS["verify-source"]))
    one = "cuda:0" if device == "cuda" else device  # a bare cuda would take a second GPU for the reference
    runs = [("verify-device", ["--device", one]), ("verify-cpu", ["--device", "cpu"])]
    if device.startswith("cuda") and cuda_devices() > 1:  # the reference beside the converted model, a GPU each
        runs.insert(1, ("verify-two-devices", ["--device", "cuda:0", "--reference-device", "cuda:1"]))
    for name, on in runs:
        steps.append(Step(name, [*peak, str(out / f"{name}.peak.json"), "harness.cli", "verify", "mixtral",
                                 str(source), str(converted), *on, "--quiet", "--json",
                                 str(out / f"{name}.json")], LIMITS[name], kind="verify"))
    steps.append(Step("convert-bench", [py, str(BENCH / "convert_throughput.py"), "--paths", "safetensors", "--gb",
                                        str(args.gb), "--runs", "1", "--settle", "1", "--workdir", str(work / "bench")],
                      LIMITS["convert-bench"], kind="bench"))
    return steps


def _write_verify_source(work: Path, tiny: bool) -> int:
    """The ``verify-source`` step, in its own process: a 1-layer checkpoint written and converted."""
    from verify_memory import SHAPE, convert_source, write_source

    from converters.mixtral.source import TINY

    shutil.rmtree(work / "mixtral-1-layer", ignore_errors=True)
    shutil.rmtree(work / "mixtral-1-layer-hf", ignore_errors=True)
    write_source({**(TINY if tiny else SHAPE), "n_layers": 1}, work / "mixtral-1-layer")
    convert_source(work / "mixtral-1-layer", work / "mixtral-1-layer-hf")
    return 0


def _missing() -> list[str]:
    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


def _installed(distribution: str) -> bool:
    from importlib import metadata

    try:
        metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def _held_torch(work: Path) -> Path:
    """constraints.txt with torch pinned to the installed version (a CUDA build stays the one installed)."""
    import torch

    work.mkdir(parents=True, exist_ok=True)
    lines = [line for line in (ROOT / "constraints.txt").read_text().splitlines() if not line.startswith("torch")]
    held = work / "constraints-held.txt"
    held.write_text("\n".join([*lines, f"torch=={torch.__version__}"]) + "\n")
    return held


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, metavar="OUT", help="folder for the summary and each step's output")
    parser.add_argument("--device", default="cuda", help="where the GPU steps run (default cuda; cpu: a dry run)")
    parser.add_argument("--tiny", action="store_true", help="a tiny Mixtral for the verify steps (a dry run)")
    parser.add_argument("--families", default="", help="comma-separated families to check (default: all)")
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated (default: %(default)s)")
    parser.add_argument("--pytest", default="-m cuda tests", help="pytest's selection (default: %(default)s)")
    parser.add_argument("--gb", type=float, default=1.0, help="size of the benchmark's checkpoint (default 1)")
    parser.add_argument("--write-verify-source", type=Path, help=argparse.SUPPRESS)
    return parser


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # converters and harness, installed or not
    sys.exit(main())
