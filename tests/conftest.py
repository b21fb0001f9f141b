from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from pipelines_for_tests import TEST_PIPELINES  # noqa: E402

from backend.server import Server  # noqa: E402
from shared_protocol.client import Client, Timeouts  # noqa: E402


@pytest.fixture
def make_server(tmp_path):
    """Start real servers on loopback ephemeral ports; all are stopped at teardown."""
    servers = []

    def factory(output_dir=None, **kwargs):
        kwargs.setdefault("pipelines", TEST_PIPELINES)
        server = Server("tcp://127.0.0.1:*", output_dir or tmp_path / "jobs", "cpu", **kwargs).start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture
def make_client():
    clients = []

    def factory(address, **kwargs):
        kwargs.setdefault("timeouts", Timeouts(ping=2.0, submit=5.0))
        client = Client(address, **kwargs)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.close()
