"""The wire codec and message validation: round trips and every violation's error code."""
from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from shared_protocol import messages
from shared_protocol.codec import DTYPE_WHITELIST, PROTOCOL_VERSION, Limits, ProtocolError, decode, encode


def _bytes(frames):
    """As ZeroMQ delivers them: each frame its own bytes object."""
    return [bytes(f) for f in frames]


arrays = st.sampled_from(DTYPE_WHITELIST).flatmap(
    lambda dt: hnp.arrays(np.dtype(dt), hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6))
)


@settings(max_examples=200, deadline=None)
@given(arrays)
def test_array_round_trip_every_dtype_and_shape(arr):
    frames = encode(messages.make("preview", job_id="j1", kind="mesh", seq=1, data={"a": arr}))
    out = decode(_bytes(frames))
    got = out["data"]["a"]
    assert got.dtype == arr.dtype and got.shape == arr.shape
    assert np.array_equal(got, arr, equal_nan=arr.dtype.kind == "f")


@settings(max_examples=50, deadline=None)
@given(st.lists(arrays, min_size=0, max_size=5), st.text(max_size=50), st.integers(0, 2**31 - 1))
def test_nested_arrays_and_scalars_round_trip(arrs, text, seed):
    msg = {"type": "x", "nested": {"list": [{"a": a} for a in arrs], "text": text, "seed": seed}}
    out = decode(_bytes(encode(msg)))
    assert out["v"] == PROTOCOL_VERSION and out["nested"]["text"] == text and out["nested"]["seed"] == seed
    for a, b in zip(arrs, (d["a"] for d in out["nested"]["list"])):
        assert a.shape == b.shape and a.dtype == b.dtype


def test_non_contiguous_and_big_endian_arrays_are_sent_as_little_endian_c_order():
    base = np.arange(24, dtype=">f4").reshape(4, 6)
    out = decode(_bytes(encode({"type": "x", "a": base[:, ::2]})))["a"]
    assert out.dtype == np.dtype("<f4") and np.array_equal(out, base[:, ::2].astype("<f4"))


def test_every_message_type_round_trips_and_validates():
    img = np.zeros((4, 5, 4), np.uint8)
    samples = {
        ("request", "hello"): messages.make("hello", client="blender 5.0", req_id="r1"),
        ("request", "ping"): messages.make("ping", req_id="r2"),
        ("request", "release"): messages.make("release"),
        ("request", "status"): messages.make("status", job_id="20260101-000000-abcdef"),
        ("request", "cancel"): messages.make("cancel", job_id="j"),
        ("request", "fetch"): messages.make("fetch", job_id="j", files=False),
        ("request", "chunk"): messages.make("chunk", job_id="j", name="asset.glb", offset=0, size=1 << 20),
        ("reply", "chunk"): messages.make("chunk", job_id="j", name="asset.glb", offset=0, total=3,
                                          data={"bytes": np.arange(3, dtype=np.uint8)}),
        ("request", "submit"): messages.make("submit", pipeline="fit", preset="fast", params={"steps": 3, "lr": 0.1},
                                             inputs={"image": img}, seed=7, label="cat"),
        ("reply", "welcome"): messages.make("welcome", server="splatsmith 0.1.0", device="cpu", pipelines={"fit": {}},
                                            models={"a/b": False}),
        ("reply", "pong"): messages.make("pong", time=1.5),
        ("reply", "accepted"): messages.make("accepted", job_id="j", position=0),
        ("reply", "progress"): messages.make("progress", job_id="j", stage="s", step=1, total=2, loss=0.5, eta_s=1.0,
                                             elapsed_s=2.0),
        ("reply", "preview"): messages.make("preview", job_id="j", kind="texture", seq=3, data={"rgba": img}),
        ("reply", "result"): messages.make("result", job_id="j", arrays={"v": np.zeros((3, 3), np.float32)},
                                           files={"a.glb": np.zeros(10, np.uint8)}, meta={"faces": 1}),
        ("reply", "error"): messages.error("bad_params", "steps must be positive", job_id="j"),
        ("reply", "status"): messages.make("status", jobs=[{"job_id": "j", "state": "done"}], released=["sd"]),
    }
    assert {t for _, t in samples} == set(messages.REQUEST_TYPES) | set(messages.REPLY_TYPES)
    for (direction, mtype), msg in samples.items():
        out = messages.validate(decode(_bytes(encode(msg))), direction)
        assert out["type"] == mtype
        for key, value in msg.items():
            if isinstance(value, dict) and value and isinstance(next(iter(value.values())), np.ndarray):
                assert all(np.array_equal(value[k], out[key][k]) for k in value)
            elif not isinstance(value, np.ndarray):
                assert out[key] == value


def _code(frames, limits=Limits()):
    with pytest.raises(ProtocolError) as info:
        decode(frames, limits)
    return info.value.code


def test_hostile_frames_each_raise_their_code():
    good = _bytes(encode({"type": "x", "a": np.zeros((2, 3), np.float32)}))
    assert _code([]) == "bad_frames"
    assert _code([good[0]]) == "bad_frames"  # the array frame is missing
    assert _code([good[0], good[1][:-1]]) == "bad_shape"  # truncated frame
    assert _code([good[0], good[1], b"extra"]) == "bad_frames"  # unreferenced frame
    assert _code([good[0][:-3], good[1]]) == "bad_msgpack"  # truncated header
    assert _code([b"\xc1\xff\x00garbage", b"x"]) == "bad_msgpack"
    assert _code([msgpack.packb([1, 2, 3])]) == "bad_msgpack"  # not a map
    assert _code([msgpack.packb({1: 2, "v": PROTOCOL_VERSION})]) == "bad_msgpack"  # non-string key
    lie = {"v": PROTOCOL_VERSION, "type": "x", "a": {"__nd__": {"dtype": "float32", "shape": [1000], "frame": 1}}}
    assert _code([msgpack.packb(lie), b"\0" * 16]) == "bad_shape"
    forbidden = dict(lie, a={"__nd__": {"dtype": "object", "shape": [2], "frame": 1}})
    assert _code([msgpack.packb(forbidden), b"\0" * 16]) == "bad_dtype"
    float64 = dict(lie, a={"__nd__": {"dtype": "float64", "shape": [2], "frame": 1}})
    assert _code([msgpack.packb(float64), b"\0" * 16]) == "bad_dtype"
    neg = dict(lie, a={"__nd__": {"dtype": "uint8", "shape": [-16], "frame": 1}})
    assert _code([msgpack.packb(neg), b"\0" * 16]) == "bad_shape"
    twice = dict(lie, a={"__nd__": {"dtype": "uint8", "shape": [4], "frame": 1}},
                 b={"__nd__": {"dtype": "uint8", "shape": [4], "frame": 1}})
    assert _code([msgpack.packb(twice), b"\0" * 4]) == "bad_frames"
    outside = dict(lie, a={"__nd__": {"dtype": "uint8", "shape": [4], "frame": 5}})
    assert _code([msgpack.packb(outside), b"\0" * 4]) == "bad_frames"
    extra_key = dict(lie, a={"__nd__": {"dtype": "uint8", "shape": [4], "frame": 1}, "x": 1})
    assert _code([msgpack.packb(extra_key), b"\0" * 4]) == "bad_array"


def test_version_is_checked_before_arrays_are_touched():
    header = {"v": PROTOCOL_VERSION + 1, "type": "ping",
              "a": {"__nd__": {"dtype": "float32", "shape": [99], "frame": 1}}}
    assert _code([msgpack.packb(header), b""]) == "bad_version"
    assert _code([msgpack.packb({"type": "ping"})]) == "bad_version"


def test_deep_nesting_is_refused():
    deep = b"\x81\xa1a" * 10_000 + b"\xc0"  # {"a": {"a": ... 10,000 deep
    assert _code([deep]) == "too_deep"
    nested: dict = {"v": PROTOCOL_VERSION, "type": "x"}
    cur = nested
    for _ in range(40):
        cur["n"] = {}
        cur = cur["n"]
    assert _code([msgpack.packb(nested)]) == "too_deep"


def test_size_limits():
    limits = Limits(max_total_bytes=1000, max_array_bytes=500, max_header_bytes=200)
    big = _bytes(encode({"type": "x", "a": np.zeros(2000, np.uint8)}))
    assert _code(big, limits) == "too_large"
    arr = _bytes(encode({"type": "x", "a": np.zeros(600, np.uint8)}))
    assert _code(arr, limits) == "too_large"
    header = _bytes(encode({"type": "x", "s": "y" * 300}))
    assert _code(header, limits) == "too_large"
    assert decode(_bytes(encode({"type": "x", "a": np.zeros(400, np.uint8)})), limits)["a"].shape == (400,)


def test_encode_refuses_forbidden_dtypes_and_unencodable_values():
    with pytest.raises(ProtocolError) as info:
        encode({"type": "x", "a": np.zeros(3, np.float64)})
    assert info.value.code == "bad_dtype" and "float32" in info.value.message
    with pytest.raises(ProtocolError) as info:
        encode({"type": "x", "a": object()})
    assert info.value.code == "bad_field"


@pytest.mark.parametrize("msg, fragment", [
    (messages.make("submit"), "missing required field 'pipeline'"),
    (messages.make("submit", pipeline=3), "must be of type str"),
    (messages.make("submit", pipeline="x" * 65), "at most 64"),
    (messages.make("submit", pipeline="fit", seed=-1), "below the minimum"),
    (messages.make("submit", pipeline="fit", seed=True), "must be of type int"),
    (messages.make("submit", pipeline="fit", inputs={"image": [1, 2]}), "must be an array"),
    (messages.make("submit", pipeline="fit", colour="red"), "unknown field 'colour'"),
    (messages.make("cancel", job_id="../../etc"), "letters, digits"),
    (messages.make("cancel"), "missing required field 'job_id'"),
    (messages.make("launch"), "unknown request type 'launch'"),
    (messages.make("welcome", server="s", device="d", pipelines={}, models={}), "unknown request type"),
])
def test_request_validation_messages(msg, fragment):
    with pytest.raises(ProtocolError) as info:
        messages.validate(msg, "request")
    assert fragment in info.value.message


def test_reply_validation_enums_and_ranges():
    with pytest.raises(ProtocolError, match="not one of"):
        messages.validate(messages.make("preview", job_id="j", kind="voxels", seq=0, data={}), "reply")
    with pytest.raises(ProtocolError, match="finite"):
        messages.validate(messages.make("progress", job_id="j", stage="s", step=0, total=1, loss=float("nan")), "reply")
    with pytest.raises(ValueError):
        messages.error("no_such_code", "x")
