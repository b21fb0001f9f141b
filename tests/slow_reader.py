"""A client process that stops reading while a job streams previews at it (issue 28, item 1).

    python tests/slow_reader.py ADDRESS CONFIG CYCLES SLEEP_S

Submits a ``fit`` job of the test pipelines that sends a preview every step, then ``CYCLES``
times: reads for a moment, then sleeps ``SLEEP_S`` seconds without reading (a Blender main
thread busy elsewhere). ``CONFIG`` is ``current`` (``shared_protocol.client.SOCKET_OPTIONS``)
or ``heartbeats`` (the configuration before the fix: RCVHWM 32 with ZMTP heartbeats of 1 s /
5 s / 10 s, which libzmq issue #3937 turns into ``Assertion failed: _input_stopped`` and an
abort). Prints ``survived`` and exits 0 when the process lives through it.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared_protocol import client as wire  # noqa: E402

BEFORE_THE_FIX = {"LINGER": 0, "RCVHWM": 32, "HEARTBEAT_IVL": 1000, "HEARTBEAT_TIMEOUT": 5000, "HEARTBEAT_TTL": 10000}


def main() -> None:
    address, config, cycles, sleep_s = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    if config == "heartbeats":
        wire.SOCKET_OPTIONS = dict(BEFORE_THE_FIX)
    steps = int(cycles * (sleep_s + 1) * 200) + 200  # previews keep coming for the whole run
    with wire.Client(address, timeouts=wire.Timeouts(ping=60.0, submit=120.0, heartbeat=60.0, lost=600.0)) as client:
        handle = client.submit("fit", params={"steps": steps, "points": 2000, "step_ms": 5, "preview_every": 1})
        for _ in range(cycles):
            client.poll(0.2, max_messages=8)  # a glance, as a busy timer tick would
            time.sleep(sleep_s)  # not reading: the receive queue fills, libzmq stops reading the socket
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            client.poll(0.05)
        client.cancel(handle)
        client.poll(0.5)
    print("survived", flush=True)


if __name__ == "__main__":
    main()
