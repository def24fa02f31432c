"""Write a directory atomically: into a temporary sibling that is renamed into place, or removed on failure.

The sibling is named ``.<output>.<random>.partial`` and records which process writes it, so that one left
behind by SIGKILL or a power cut is recognisable as stale and removed by the next run into the same output,
while one still being written is left alone.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.errors import ConversionError

__all__ = ["remove_stale_partials", "staged_directory"]

_PARTIAL = ".partial"
_OWNER = ".convparity-owner.json"  # inside a staging directory: which process is writing it


@contextmanager
def staged_directory(output: Path) -> Iterator[Path]:
    """A fresh staging directory for ``output``; renamed to ``output`` when the block ends without error.

    >>> import tempfile
    >>> parent = Path(tempfile.mkdtemp())
    >>> with staged_directory(parent / "out") as d:
    ...     _ = (d / "f").write_text("x")
    >>> sorted(p.name for p in parent.iterdir()), (parent / "out" / "f").read_text()
    (['out'], 'x')
    """
    if output.exists():
        raise ConversionError(f"output {output} already exists; choose a new directory or remove it")
    if not output.parent.is_dir():
        raise ConversionError(f"parent directory {output.parent} of the output does not exist")
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=_PARTIAL, dir=output.parent))
    try:
        (staging / _OWNER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n")
        yield staging
        (staging / _OWNER).unlink()
        os.rename(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def remove_stale_partials(output: Path) -> list[str]:
    """Remove staging directories that an earlier, killed run into ``output`` left behind.

    A staging directory is stale when the process that made it (recorded inside it) no longer runs on this
    host. One that is still being written, or that another host made (a shared filesystem), is left alone
    with an error saying how to remove it. Returns one note per directory removed.
    """
    notes = []
    for partial in sorted(output.parent.glob(f".{glob.escape(output.name)}.*{_PARTIAL}")):
        owner = _read_owner(partial)
        if owner.get("host") == socket.gethostname() and _running(owner.get("pid")):
            raise ConversionError(f"{partial} is being written by process {owner['pid']}; wait for it to finish "
                                  f"or stop it, then run again (if no conversion is running, rm -r '{partial}')")
        if owner and owner.get("host") != socket.gethostname():
            raise ConversionError(f"{partial} was left by a conversion on host {owner.get('host')!r}; if none is "
                                  f"running there, remove it: rm -r '{partial}'")
        shutil.rmtree(partial, ignore_errors=True)
        notes.append(f"removed {partial}, left by an interrupted conversion"
                     f"{' (process ' + str(owner['pid']) + ')' if owner.get('pid') else ''}")
    return notes


def _read_owner(partial: Path) -> dict[str, Any]:
    try:
        owner = json.loads((partial / _OWNER).read_text())
    except (OSError, ValueError):
        return {}  # the owner file is written first: without one, the directory was abandoned at once
    return owner if isinstance(owner, dict) else {}


def _running(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True
