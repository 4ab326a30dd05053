"""Stop a run cleanly on SIGTERM (batch schedulers, `timeout`) or Ctrl-C: finish the current step, save, exit.

The first signal only sets a flag that the loop reads after each optimiser step, so the weights are never saved
halfway through an update; the loop then saves `latest.pt` at that exact position and raises `RunInterrupted`. A
second signal interrupts at once. Under DDP every process stops at the same step (the flag is shared).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from semiseg.errors import SemisegError


class RunInterrupted(SemisegError):
    """The run stopped on a signal after saving its state; `exit_code` follows the shell's 128 + signal."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class StopRequest:
    """Context manager catching SIGINT and SIGTERM into `self.signum` (main thread only; elsewhere it is inert)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # the second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def requested(self, info: Any, device: Any) -> bool:
        """Whether any process got a signal (a collective under DDP, so all stop at the same step)."""
        from semiseg.train.distributed import broadcast_flag

        flag = broadcast_flag(self.signum is not None, info, device)
        if flag and self.signum is None:
            self.signum = signal.SIGTERM  # another process was signalled
        return flag

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
