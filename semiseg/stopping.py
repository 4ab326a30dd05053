"""SIGTERM for every command but training: stop, remove temporaries, leave earlier outputs as they were.

`semiseg.cli.run_cli` installs `handle` for SIGTERM. By default it raises `Terminated` where the program is, so
every `finally` and context manager on the way out cleans up, as Ctrl-C does. An exception raised from a signal
handler is lost when the signal lands inside code that cannot propagate it (a fork hook, a C callback: Python
prints "Exception ignored" and carries on), so long loops run under `deferred_stop()`: there a signal only records
itself and the loop calls `check_stop()` between steps. Training has its own handler (`semiseg.train.signals`),
which saves its state first.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType


class Terminated(BaseException):
    """A stop on a signal. A BaseException, so no `except Exception` swallows it on the way out."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_pending: int | None = None
_deferred = 0


def handle(signum: int, frame: FrameType | None) -> None:
    global _pending
    _pending = signum
    if not _deferred:
        raise Terminated(signum)


def reset() -> None:
    """Forget an earlier signal (a new command starts)."""
    global _pending
    _pending = None


def check_stop() -> None:
    """Raise `Terminated` if a signal arrived (call between the steps of a long loop)."""
    if _pending is not None:
        raise Terminated(_pending)


@contextlib.contextmanager
def deferred_stop() -> Iterator[None]:
    """Inside, a signal is only recorded; the caller's `check_stop()` acts on it (and leaving the block does)."""
    global _deferred
    _deferred += 1
    try:
        yield
    finally:
        _deferred -= 1
    check_stop()
