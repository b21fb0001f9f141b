"""ZeroMQ endpoints as people type them.

``localhost:5555``, ``127.0.0.1:5555``, ``[::1]:5555`` and ``gpu-box:5555`` mean TCP; a full
``tcp://``, ``ipc://`` or ``inproc://`` endpoint is kept as it is. Anything else is refused with
one sentence, before ZeroMQ sees it (ZeroMQ answers only "Invalid argument").
"""
from __future__ import annotations

import re

_HOST = re.compile(r"^(\*|\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+|[A-Za-z0-9_.-]+;[A-Za-z0-9_.-]+)$")


def normalize_endpoint(address: str, *, bind: bool = False) -> str:
    """The ZeroMQ endpoint for ``address``.

    Args:
        address: ``tcp://HOST:PORT``, ``HOST:PORT``, ``ipc://PATH`` or ``inproc://NAME``.
        bind: whether the endpoint is for binding (then the port may be ``*``: any free port).
    Returns:
        e.g. ``"tcp://localhost:5555"``.
    Raises:
        ValueError: with a sentence saying what is wrong and what a good address looks like.
    """
    text = (address or "").strip()
    if text.startswith(("ipc://", "inproc://")):
        if len(text.split("://", 1)[1]) == 0:
            raise ValueError(f"{address!r} names no path after the scheme")
        return text
    if "://" in text and not text.startswith("tcp://"):
        raise ValueError(f"{address!r} is not an address Splatsmith can use: write HOST:PORT, e.g. 127.0.0.1:5555 "
                         "(tcp://, ipc:// and inproc:// endpoints also work)")
    rest = text[len("tcp://"):] if text.startswith("tcp://") else text
    host, sep, port = rest.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{address!r} has no port: write HOST:PORT, e.g. 127.0.0.1:5555")
    port_ok = port.isdigit() and 0 < int(port) < 65536 or (bind and port == "*")
    if not port_ok:
        raise ValueError(f"{address!r}: the port must be a number from 1 to 65535{' or *' if bind else ''}; write HOST:PORT, "
                         "e.g. 127.0.0.1:5555")
    if not _HOST.match(host):
        raise ValueError(f"{address!r}: {host!r} is not a host name or IP address; write HOST:PORT, e.g. 127.0.0.1:5555")
    return f"tcp://{host}:{port}"
