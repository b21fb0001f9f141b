"""A client that stops reading during a burst of previews must not abort its process (issue 28,
item 1; libzmq issue #3937). The configuration the client had before, ZMTP heartbeats with a
small receive queue, aborts it in this very test; the client's configuration now does not."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HELPER = Path(__file__).with_name("slow_reader.py")


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_slow_reader_survives_a_burst_of_previews_on_a_loaded_machine(serve_process):
    """A real ``splatsmith serve``; a second process keeps a core busy; a client process that
    sleeps 7 s at a time (longer than the old 5 s heartbeat timeout) while its job streams a
    preview every step. With heartbeats (the old configuration) libzmq asserts and the process
    dies of SIGABRT; with ``SOCKET_OPTIONS`` it lives through two such sleeps."""
    _, address = serve_process()
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        def run(config: str, cycles: int) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, str(HELPER), address, config, str(cycles), "7"],
                                  capture_output=True, text=True, timeout=600)
        before = run("heartbeats", 3)
        assert before.returncode == -6 and "_input_stopped" in before.stderr, (before.returncode, before.stderr[-500:])
        now = run("current", 2)
        assert now.returncode == 0 and "survived" in now.stdout, (now.returncode, now.stderr[-500:])
    finally:
        busy.kill()
        busy.wait(30)
