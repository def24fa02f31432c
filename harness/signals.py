"""SIGTERM and SIGHUP end a run the way Ctrl-C does: as an exception, so that every cleanup runs.

``timeout``, CI runners and container stops send SIGTERM; a closed terminal sends SIGHUP. Python's default
for both is to die on the spot, leaving a half-written output behind. Inside :func:`signals_as_exceptions`
they raise :class:`Terminated` instead, which unwinds through the writer's cleanup like KeyboardInterrupt.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["HANDLED", "Terminated", "signals_as_exceptions"]

HANDLED = (signal.SIGTERM, signal.SIGHUP)


class Terminated(BaseException):  # noqa: N818 - named like KeyboardInterrupt, which it mirrors
    """The process was asked to stop by ``signum``; the exit status should be 128 + signum."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def signals_as_exceptions() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into :class:`Terminated` for the duration of the block (main thread only).

    A second signal while the first one's cleanup runs is ignored, so that cleanup finishes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum: int, frame: FrameType | None) -> None:
        for s in HANDLED:
            signal.signal(s, signal.SIG_IGN)
        raise Terminated(signum)

    previous = {s: signal.signal(s, raise_terminated) for s in HANDLED}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
