from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


def _share_the_cores() -> None:
    """Under pytest-xdist (``-n auto`` in pyproject.toml), give each worker its share of the
    cores for torch's and OpenMP's threads, before torch loads; the processes a test starts
    (servers, CLI runs, Blender) inherit it. Several workers each using every core would
    oversubscribe them (OpenMP's threads spin), and the suite would be slower, not faster."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(name, threads)


_share_the_cores()
# pytest-xdist's workers inherit COLUMNS=80; the CLI's rich consoles would fix their width at it
# when backend.cli is first imported, and every CliRunner test would see 80 columns.
os.environ.pop("COLUMNS", None)
os.environ.pop("LINES", None)

#: Run in the Blender 5.2 LTS environment by tests/blender/test_blender_lts.py, not in this one.
collect_ignore = ["blender_lts"]

from pipelines_for_tests import TEST_PIPELINES  # noqa: E402

from backend.guidance.quiet import hide_broken_torchvision  # noqa: E402

hide_broken_torchvision()  # before any test module imports transformers (see its docstring)

from backend.server import Server  # noqa: E402
from shared_protocol.client import Client, Timeouts  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """Files holding a ``slow`` test run first (the order is otherwise kept), so that xdist's
    workers start the long runs early and end together instead of one finishing a long file
    alone. Tests marked ``cuda`` run on a CUDA GPU and are skipped, saying why, everywhere else
    (``pytest -m cuda`` selects them all on a GPU machine)."""
    slow_files = {item.path for item in items if "slow" in item.keywords}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: each file stays in order
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def cli(*args: str, columns: int = 250):
    """Run ``splatsmith ARGS`` in this process (typer's CliRunner: exit code and output, no new
    interpreter). Tests where the process boundary is the point (signals, exit codes of a fresh
    interpreter) start ``python -m backend`` instead."""
    from typer.testing import CliRunner

    from backend.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": str(columns)})


#: Seconds a test waits for a (tiny) job at most: a ceiling against hangs, far above a loaded run
#: (a tiny job takes seconds alone, minutes beside the whole suite on 2 cores). Tests must not
#: depend on the machine's speed.
JOB_CEILING = 1800.0


@pytest.fixture(scope="session", autouse=True)
def tiny_models(tmp_path_factory):
    """One cache of the tiny teachers for the whole session: each is written on its first use
    and read by every later test and every process a test starts (they inherit the variable).
    Tests that must see a teacher written set a fresh cache of their own. Yields the folder."""
    import os

    cache = tmp_path_factory.mktemp("tiny-models")
    before = os.environ.get("SPLATSMITH_CACHE")
    os.environ["SPLATSMITH_CACHE"] = str(cache)
    yield cache
    if before is None:
        os.environ.pop("SPLATSMITH_CACHE", None)
    else:
        os.environ["SPLATSMITH_CACHE"] = before


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
        # Ceilings against hangs, far above a loaded run (tests must not depend on speed).
        kwargs.setdefault("timeouts", Timeouts(ping=30.0, submit=60.0))
        client = Client(address, **kwargs)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.close()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def serve_process(tmp_path):
    """Start real ``splatsmith serve`` processes (with the test pipelines as a plugin) on a
    free loopback port given as HOST:PORT; returns (process, address). Killed at teardown."""
    import os
    import subprocess

    procs = []

    def factory(*extra: str, output_dir=None, env=None, wait: bool = True):
        port = free_port()
        address = f"127.0.0.1:{port}"
        environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
                           **(env or {}))
        argv = [sys.executable, "-m", "backend.cli", "serve", "--bind", address, "--device", "cpu",
                "--output-dir", str(output_dir or tmp_path / "jobs"), "--plugin", "pipelines_for_tests", *extra]
        log = open(tmp_path / f"serve-{port}.log", "wb")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=environment,
                                cwd=str(Path(__file__).parents[1]))
        proc.log_path = tmp_path / f"serve-{port}.log"
        procs.append((proc, log))
        if wait:
            with Client(address, timeouts=Timeouts(ping=2.0)) as probe:
                import time

                end = time.monotonic() + 300
                while True:
                    assert proc.poll() is None, proc.log_path.read_text()
                    try:
                        probe.ping()
                        break
                    except Exception:
                        assert time.monotonic() < end, "the server did not answer"
        return proc, address

    yield factory
    for proc, log in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        log.close()
