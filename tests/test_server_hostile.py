"""Hostile and malformed requests over a real ROUTER on loopback: each gets an error reply with
its stable code, and the server goes on serving the next client."""
from __future__ import annotations

import os

import msgpack
import numpy as np
import pytest
import zmq

from shared_protocol import messages
from shared_protocol.codec import PROTOCOL_VERSION, Limits, decode, encode


@pytest.fixture
def raw(make_server):
    server = make_server(limits=Limits(max_total_bytes=1 << 20, max_array_bytes=1 << 20))
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.endpoint)

    def exchange(frames):
        sock.send_multipart(frames)
        assert sock.poll(5000), "no reply from the server"
        return messages.validate(decode(sock.recv_multipart()), "reply")

    exchange.server = server
    yield exchange
    sock.close(0)


def _ok(exchange):
    reply = exchange(encode(messages.make("ping", req_id="alive")))
    assert reply["type"] == "pong" and reply["req_id"] == "alive"


HEADER = {"v": PROTOCOL_VERSION, "type": "submit", "pipeline": "fit"}


@pytest.mark.parametrize("name, frames, code", [
    ("truncated frames", [msgpack.packb(dict(HEADER, inputs={"target": {"__nd__": {"dtype": "float32", "shape": [256, 3], "frame": 1}}}))], "bad_frames"),
    ("shape lies", [msgpack.packb(dict(HEADER, inputs={"target": {"__nd__": {"dtype": "float32", "shape": [256, 3], "frame": 1}}})), b"\0" * 12], "bad_shape"),
    ("forbidden dtype", [msgpack.packb(dict(HEADER, inputs={"target": {"__nd__": {"dtype": "float64", "shape": [1, 3], "frame": 1}}})), b"\0" * 24], "bad_dtype"),
    ("oversized", encode(messages.make("submit", pipeline="fit", inputs={"target": np.zeros((200_000, 3), np.float32)})), "too_large"),
    ("nested 10,000 deep", [b"\x82\xa1v\x01\xa4type" + b"\x91" * 10_000 + b"\xc0"], "too_deep"),
    ("unknown type", encode({"type": "launch_missiles"}), "unknown_type"),
    ("wrong version", encode(messages.make("ping"), version=PROTOCOL_VERSION + 1), "bad_version"),
    # 0xc1 is the one byte msgpack never uses, so this garbage is invalid whatever follows it
    # (plain os.urandom sometimes parses as a map header claiming 400 million entries: too_large).
    ("garbage bytes", [b"\xc1" + np.random.default_rng(0).bytes(63)], "bad_msgpack"),
    ("empty frame", [b""], "bad_msgpack"),
    ("unknown pipeline", encode(messages.make("submit", pipeline="teleport")), "unknown_pipeline"),
    ("unknown parameter", encode(messages.make("submit", pipeline="fit", params={"warp": 9})), "bad_params"),
    ("out-of-range parameter", encode(messages.make("submit", pipeline="fit", params={"steps": -5})), "bad_params"),
    ("wrongly typed parameter", encode(messages.make("submit", pipeline="fit", params={"steps": "many"})), "bad_params"),
    ("unknown preset", encode(messages.make("submit", pipeline="fit", preset="ultra")), "bad_params"),
    ("input of the wrong shape", encode(messages.make("submit", pipeline="fit", inputs={"target": np.zeros((256, 2), np.float32)})), "bad_params"),
    ("unknown job", encode(messages.make("fetch", job_id="nope")), "unknown_job"),
    ("bad field type", encode(messages.make("submit", pipeline=["fit"])), "bad_field"),
])
@pytest.mark.slow
def test_hostile_request_gets_error_and_server_keeps_serving(raw, name, frames, code):
    reply = raw(frames)
    assert reply["type"] == "error", name
    assert reply["code"] == code, (name, reply)
    assert len(reply["message"]) > 10
    _ok(raw)


def test_random_bytes_get_a_protocol_error_and_server_keeps_serving(raw):
    """Whatever 64 random bytes happen to parse as, the reply is a protocol error, never a crash."""
    rng = np.random.default_rng(1234)
    for _ in range(30):
        reply = raw([rng.bytes(64)])
        assert reply["type"] == "error"
        assert reply["code"] in {"bad_msgpack", "too_large", "too_deep", "bad_version", "bad_frames", "bad_field", "unknown_type"}, reply
    _ok(raw)


def test_req_id_is_echoed_on_errors(raw):
    reply = raw(encode(messages.make("submit", pipeline="teleport", req_id="abc")))
    assert reply["req_id"] == "abc" and "available: boom, cached, crash, fit, hog, mesh" in reply["message"]


def test_many_bad_clients_then_a_good_one(make_server, make_client):
    server = make_server()
    ctx = zmq.Context.instance()
    for i in range(20):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(server.endpoint)
        sock.send_multipart([os.urandom(i + 1) for _ in range(i % 3 + 1)])
        sock.close(0)
    client = make_client(server.endpoint)
    assert client.hello()["pipelines"].keys() == {"boom", "cached", "crash", "fit", "hog", "mesh", "oom"}
    assert client.ping() < 1.0
