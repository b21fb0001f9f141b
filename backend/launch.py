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

from .stop_signals import install


def main() -> None:
    """The ``splatsmith`` console command: stop signals first, then the command line."""
    install()
    from .cli import main as cli_main

    cli_main()
