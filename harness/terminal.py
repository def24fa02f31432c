"""Terminal habits: colour only where stdout is a terminal (and ``NO_COLOR`` is unset), progress bars on stderr
only where stderr is a terminal and ``--quiet`` was not given. Pipes, files and CI logs get plain text.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO, TypeVar

from tqdm import tqdm

__all__ = ["bar", "byte_progress", "colour", "counter", "module_progress", "paint_status", "show_progress"]

T = TypeVar("T")
_CODES = {"green": "32", "red": "1;31", "yellow": "33", "dim": "2"}
_STATUS = {"pass": "green", "ok": "green", "FAIL": "red", "skip": "yellow"}


def colour(stream: TextIO | None = None) -> bool:
    """Whether to colour ``stream`` (stdout by default): a terminal, and no ``NO_COLOR`` (no-color.org)."""
    stream = stream or sys.stdout
    return not os.environ.get("NO_COLOR") and bool(getattr(stream, "isatty", lambda: False)())


def paint_status(text: str, status: str, enabled: bool) -> str:
    """``text`` in the colour of ``status`` (pass/ok green, FAIL red, skip yellow) when ``enabled``.

    >>> paint_status("pass", "pass", False), paint_status("pass", "pass", True)
    ('pass', '\\x1b[32mpass\\x1b[0m')
    """
    code = _CODES.get(_STATUS.get(status, ""))
    return f"\x1b[{code}m{text}\x1b[0m" if enabled and code else text


def show_progress(quiet: bool = False) -> bool:
    """Progress bars go to stderr, only on a terminal and without ``--quiet``."""
    return not quiet and sys.stderr.isatty()


def bar(items: Iterable[T], desc: str, quiet: bool = False, total: int | None = None) -> Iterator[T]:
    """``items`` with a tqdm bar on stderr where one is wanted; the items unchanged otherwise."""
    if not show_progress(quiet):
        yield from items
        return
    with tqdm(items, desc=desc, total=total, file=sys.stderr, leave=False, dynamic_ncols=True) as it:
        yield from it


@contextmanager
def counter(total: int, desc: str, quiet: bool = False) -> Iterator[Callable[..., None]]:
    """A bar of ``total`` steps; the yielded callable advances it by one (a no-op where no bar is shown)."""
    if not show_progress(quiet):
        yield lambda *_: None
        return
    with tqdm(total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True) as progress:
        yield lambda *_: progress.update()


@contextmanager
def module_progress(modules: Sequence[Any], desc: str, quiet: bool = False) -> Iterator[None]:
    """A bar advanced by each of ``modules`` (torch modules) finishing its forward, e.g. verify's blocks."""
    if not show_progress(quiet) or not modules:
        yield
        return
    with tqdm(total=len(modules), desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True) as progress:
        handles = [m.register_forward_hook(lambda *_: progress.update()) for m in modules]
        try:
            yield
        finally:
            for h in handles:
                h.remove()


@contextmanager
def byte_progress(total: int, enabled: bool) -> Iterator[Callable[[int], None] | None]:
    """A byte-count bar on stderr, shown only when asked for and stderr is a terminal; yields its ``update``."""
    if not (enabled and sys.stderr.isatty()):
        yield None
        return
    with tqdm(total=total, unit="B", unit_scale=True, desc="writing", file=sys.stderr) as progress:
        yield progress.update
