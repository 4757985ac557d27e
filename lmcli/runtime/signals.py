"""Graceful preemption: SIGTERM / SIGINT ask the training loop to stop after the current step.

The loop checks `requested` after every step, writes a checkpoint and raises `Interrupted` with exit
code 143 (SIGTERM) or 130 (SIGINT). A second SIGINT while stopping exits at once (KeyboardInterrupt).
"""

from __future__ import annotations

import signal
import threading
from typing import Optional

CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}


class StopRequests:
    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return CODES.get(self.signum, 1)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def _handle(self, signum, frame) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signum = signum

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            for sig in CODES:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
