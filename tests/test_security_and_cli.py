"""Bind policy, CURVE authentication, and the CLI commands run as real processes."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq.auth

from backend.server import CurveConfig, Server, ServerConfigError, is_loopback
from shared_protocol.client import ClientError, CurveKeys, Timeouts

SPLATSMITH = [sys.executable, "-m", "backend.cli"]


@pytest.mark.parametrize("bind, loopback", [
    ("tcp://127.0.0.1:5555", True), ("tcp://127.3.4.5:1", True), ("tcp://localhost:5555", True),
    ("tcp://[::1]:5555", True), ("ipc:///tmp/splat", True), ("tcp://0.0.0.0:5555", False),
    ("tcp://*:5555", False), ("tcp://192.168.1.20:5555", False), ("tcp://eth0:5555", False),
    ("tcp://[::]:5555", False), ("tcp://example.org:5555", False),
])
def test_loopback_classification(bind, loopback):
    assert is_loopback(bind) is loopback


def test_non_loopback_bind_without_keys_is_refused(tmp_path):
    with pytest.raises(ServerConfigError, match="--insecure"):
        Server("tcp://0.0.0.0:5599", tmp_path, "cpu")
    with pytest.raises(ServerConfigError, match="--insecure"):
        Server("tcp://*:5599", tmp_path, "cpu")


def _keys(tmp_path: Path):
    root = tmp_path / "keys"
    (root / "clients").mkdir(parents=True)
    zmq.auth.create_certificates(str(root), "server")
    pub, sec = zmq.auth.create_certificates(str(root), "known")
    os.replace(pub, root / "clients" / "known.key")
    zmq.auth.create_certificates(str(root), "stranger")
    return root


@pytest.mark.slow
def test_curve_known_client_is_served_unknown_is_not(tmp_path, make_server, make_client):
    root = _keys(tmp_path)
    server = make_server(curve=CurveConfig.from_dir(root))
    known = make_client(server.endpoint, curve=CurveKeys.from_files(root / "server.key", root / "known.key_secret"))
    assert known.hello()["pipelines"]
    assert known.wait(known.submit("fit", params={"steps": 2}), timeout=120)["meta"]["steps"] == 2
    stranger = make_client(server.endpoint, curve=CurveKeys.from_files(root / "server.key", root / "stranger.key_secret"),
                           timeouts=Timeouts(ping=10.0))
    with pytest.raises(ClientError) as info:
        stranger.ping()
    assert info.value.code == "refused" and "CURVE" in info.value.message
    plain = make_client(server.endpoint, timeouts=Timeouts(ping=10.0))
    with pytest.raises(ClientError) as info:
        plain.ping()
    assert info.value.code == "refused" and "requires CURVE keys" in info.value.message
    assert known.ping() < 30  # the server still serves the known client


def test_curve_dir_errors_name_the_fix(tmp_path):
    with pytest.raises(ServerConfigError, match="splatsmith keygen"):
        CurveConfig.from_dir(tmp_path)
    with pytest.raises(ClientError, match="CURVE key files"):
        CurveKeys.from_files(tmp_path / "missing.key", tmp_path / "missing.key_secret")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(*args, **kwargs):
    return subprocess.run([*SPLATSMITH, *args], capture_output=True, text=True, timeout=120, **kwargs)


def test_cli_serve_jobs_and_refusals(tmp_path):
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    refused = _run("serve", "--bind", "tcp://0.0.0.0:5599", "--output-dir", str(tmp_path / "o"))
    assert refused.returncode == 1 and "refusing to bind" in refused.stderr
    unreachable = _run("jobs", "--address", address)
    assert unreachable.returncode == 1 and "is it running" in unreachable.stderr
    proc = subprocess.Popen([*SPLATSMITH, "serve", "--bind", address, "--output-dir", str(tmp_path / "o"), "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        end = time.monotonic() + 300
        while True:
            listed = _run("jobs", "--address", address)
            if listed.returncode == 0 or time.monotonic() > end:
                break
            time.sleep(0.5)
        assert listed.returncode == 0 and "no jobs" in listed.stdout, listed.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0 and "stopped" in output


@pytest.mark.slow
def test_cli_keygen_and_doctor(tmp_path):
    made = _run("keygen", str(tmp_path / "k"))
    assert made.returncode == 0
    assert (tmp_path / "k" / "server.key_secret").is_file() and (tmp_path / "k" / "clients" / "client.key").is_file()
    CurveConfig.from_dir(tmp_path / "k")
    CurveKeys.from_files(tmp_path / "k" / "server.key", tmp_path / "k" / "client.key_secret")
    doctor = _run("doctor")
    assert doctor.returncode == 0 and "torch" in doctor.stdout and "CUDA" in doctor.stdout


def test_shared_protocol_imports_without_torch():
    code = "import sys, shared_protocol.client, shared_protocol.messages; assert 'torch' not in sys.modules, 'torch'; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.stdout.strip() == "ok", done.stderr
