"""Run a Python module as ``python -m`` would, in this process, and record torch's peak CUDA memory at exit.

    python benchmarks/gpu_peak.py PEAK.json harness.cli check --devices cuda
    python benchmarks/gpu_peak.py PEAK.json pytest -m cuda tests

``PEAK.json`` gets ``{"allocated_mib", "reserved_mib"}`` (torch's ``max_memory_allocated`` and
``max_memory_reserved``), both null where the module never used CUDA. Used by ``device_check.py``: a step runs
in its own process so that its time limit can end it, and this is how the parent learns what it held on the GPU.
"""

from __future__ import annotations

import atexit
import json
import runpy
import sys
from pathlib import Path

__all__ = ["main"]


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit("usage: gpu_peak.py PEAK.json MODULE [ARGS...]")
    peak, module, args = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    atexit.register(_record, peak)  # also on sys.exit, which is how both harness.cli and pytest end
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def _record(path: Path) -> None:
    torch = sys.modules.get("torch")  # never imported here: a module that did not import torch used no GPU
    used = torch is not None and torch.cuda.is_initialized()
    peaks = {"allocated_mib": torch.cuda.max_memory_allocated() / 2**20 if used else None,
             "reserved_mib": torch.cuda.max_memory_reserved() / 2**20 if used else None}
    path.write_text(json.dumps(peaks) + "\n")


if __name__ == "__main__":
    main()
