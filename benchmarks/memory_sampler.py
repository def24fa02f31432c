"""Peak memory of a child process, sampled from /proc every 20 ms (shared by the benchmarks).

``VmRSS`` includes file-backed pages of memory-mapped files (reclaimable page cache); ``RssAnon`` is the
private memory the process allocated.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

__all__ = ["sample_memory"]


def sample_memory(proc: subprocess.Popen) -> dict[str, int]:
    """Wait for ``proc``; its peak ``VmRSS`` and ``RssAnon`` in kB."""
    peaks = {"VmRSS": 0, "RssAnon": 0}

    def sample() -> None:
        status = Path(f"/proc/{proc.pid}/status")
        while proc.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    key, _, value = line.partition(":")
                    if key in peaks:
                        peaks[key] = max(peaks[key], int(value.split()[0]))  # kB
            except (FileNotFoundError, ProcessLookupError):
                break
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    proc.wait()
    thread.join()
    return peaks
