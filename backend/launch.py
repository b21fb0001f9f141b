"""The command line's process start: SIGINT and SIGTERM are taken over before anything heavy is
imported, so that a Ctrl-C in the first seconds of an in-process job is never lost.

Python's own SIGINT handler raises ``KeyboardInterrupt`` wherever the main thread happens to be:
inside an import (a traceback), or inside a finaliser or a library callback, where Python prints
"Exception ignored" and carries on, and the job then runs to its end. Here a signal only counts
(:data:`stops`); a command decides what it means (``backend.cli``): an in-process job is cancelled
through its cancel token (a second signal interrupts at once), a job on a server is cancelled
there, and any other command exits 130 as after a Ctrl-C.
"""
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


def main() -> None:
    """The ``splatsmith`` console command: stop signals first, then the command line."""
    install()
    from .cli import main as cli_main

    cli_main()
