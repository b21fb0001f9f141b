"""The process's stop signals (SIGINT, SIGTERM) as data: counted as they come, and acted on by
whoever is in charge (``backend.launch`` installs them first thing; ``backend.cli`` decides what
they mean). Imports nothing but the signal module, so it can be the first thing a process does."""
from __future__ import annotations

import signal
from typing import Callable


class StopSignals:
    """The SIGINT/SIGTERM seen so far and who acts on them.

    Attributes:
        count: signals received since :func:`install`.
        target: ``callable(count)`` run by each new signal, in the main thread (None: the
            signal is only counted, for the command to look at).
    """

    def __init__(self) -> None:
        self.count = 0
        self.target: Callable[[int], None] | None = None

    def handler(self, signum, frame) -> None:
        self.count += 1
        if self.target is not None:
            self.target(self.count)

    def interrupt(self, count: int) -> None:
        """A target that raises ``KeyboardInterrupt`` (what Python's own handler does)."""
        raise KeyboardInterrupt


#: The process's stop signals (see the module doc).
stops = StopSignals()


def install() -> None:
    """Take SIGINT and SIGTERM over (counted, not raised: :class:`StopSignals`)."""
    signal.signal(signal.SIGINT, stops.handler)
    signal.signal(signal.SIGTERM, stops.handler)
