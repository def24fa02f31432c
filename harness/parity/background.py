"""Work beside the main thread: a read one unit ahead, or one side of a verification on its own device.

Reading a unit is file I/O and tensor copies, and torch kernels release the GIL, so a second thread overlaps
with the main one on the CPU as on CUDA. The threads are daemons and the main thread waits on a ``Future``: an
error raised there is raised again, unchanged, where the result is taken, and Ctrl-C interrupts the wait
rather than hanging on a thread (which is simply left to finish, or to end with the process).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic, TypeVar

__all__ = ["ReadAhead", "background"]

T = TypeVar("T")


def background(work: Callable[[], T], name: str = "convparity-background") -> Future[T]:
    """``work()`` on a daemon thread; ``.result()`` returns its value or raises its error.

    >>> background(lambda: 6 * 7).result()
    42
    """
    future: Future[T] = Future()

    def run() -> None:
        future.set_running_or_notify_cancel()
        try:
            future.set_result(work())
        except BaseException as err:  # noqa: BLE001 - carried to the thread that takes the result
            future.set_exception(err)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


class ReadAhead(Generic[T]):
    """``read(index)``, with at most one read started ahead of need: memory holds the item in use and the next.

    >>> reads = ReadAhead(lambda i: i * 10)
    >>> reads.start(1)
    >>> reads.take(1), reads.take(2)  # the first read ahead, the second read when asked
    (10, 20)
    """

    def __init__(self, read: Callable[[int], T]) -> None:
        self.read = read
        self._pending: tuple[int, Future[T]] | None = None

    def start(self, index: int) -> None:
        """Begin reading ``index`` on a thread, once the read ahead of it, if any, has been taken or dropped."""
        self.drop()
        self._pending = index, background(lambda: self.read(index), name=f"convparity-read-{index}")

    def take(self, index: int) -> T:
        """Item ``index``: the read started ahead if it was this one, else read now (a wrong guess is waited
        for first, so that no more than two items are ever held, and its error, if any, is not this read's)."""
        if self._pending is not None:
            ahead, future = self._pending
            self._pending = None
            if ahead == index:
                return future.result()
            future.exception()  # waits; then the guessed item is let go before this one is read
            del future
        return self.read(index)

    def drop(self) -> None:
        """Forget the read ahead without waiting for it (end of a run, or an error unwinding)."""
        self._pending = None
