"""Message types of the Splatsmith wire protocol and their validation.

Every message is a dict with ``"v"`` (protocol version) and ``"type"``. Requests go from a
client (DEALER) to the backend (ROUTER); replies go back, routed by client identity. A
request may carry a client-chosen ``req_id`` that every direct reply echoes.

Requests: ``hello``, ``submit``, ``cancel``, ``status``, ``fetch``, ``chunk``, ``release``,
``ping``. Replies: ``welcome``, ``accepted``, ``progress``, ``preview``, ``result``,
``chunk``, ``error``, ``status``, ``pong``.

A ``result`` carries result files up to the server's inline limit; ``meta.file_sizes`` lists
every file's size, and the client asks for the missing ones with ``chunk`` requests
(``job_id, name, offset, size``), each answered by a ``chunk`` reply with ``data.bytes``
(uint8 [n]) and the file's ``total`` size.

``validate(message, direction)`` checks required fields, types, numeric ranges, string
lengths and enum values, and raises :class:`~shared_protocol.codec.ProtocolError`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np

from .codec import PROTOCOL_VERSION, ProtocolError

Direction = Literal["request", "reply"]

#: Stable error codes carried by ``error`` replies. Never renamed; clients switch on them.
ERROR_CODES: dict[str, str] = {
    "bad_frames": "the multipart framing is wrong",
    "too_large": "a size limit was exceeded",
    "bad_msgpack": "the header is not valid msgpack",
    "too_deep": "the header is nested too deeply",
    "bad_version": "the protocol versions of client and server differ",
    "bad_array": "an array descriptor is malformed",
    "bad_dtype": "an array's dtype is not allowed",
    "bad_shape": "an array's shape does not match its data",
    "bad_field": "a field is missing, of the wrong type or out of range",
    "unknown_type": "the message type is unknown",
    "unknown_pipeline": "the pipeline is not available on this server",
    "bad_params": "a pipeline parameter or input is invalid",
    "unknown_job": "no job with that id",
    "queue_full": "the job queue is full",
    "cancelled": "the job was cancelled",
    "failed": "the pipeline raised an error",
    "out_of_memory": "the device ran out of memory",
    "interrupted": "the server stopped while the job ran",
    "model_missing": "a model's weights are not available",
    "timeout": "no reply within the timeout",
    "server_lost": "the backend stopped answering",
    "internal": "an unexpected server error",
    "worker_crashed": "the worker process running the job ended (a native crash or a kill); the server goes on",
    "worker_lost": "the cluster worker running the job died (its process or node); the job runs once more",
    "disk_full": "the server's output disk is full (or below its free-space minimum)",
    "busy": "this client has too many unread replies waiting",
}

JOB_STATES = ("queued", "running", "done", "failed", "cancelled")
PREVIEW_KINDS = ("gaussians", "mesh", "texture", "views")

REQUEST_TYPES = ("hello", "submit", "cancel", "status", "fetch", "chunk", "release", "ping")
REPLY_TYPES = ("welcome", "accepted", "progress", "preview", "result", "chunk", "error", "status", "pong")

#: The largest chunk a client may ask for, bytes.
MAX_CHUNK_BYTES = 16 * 1024 * 1024

_ID_LEN = 64
_INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class Field:
    """One header field: its kind, whether it is required, and its constraints."""

    kind: str  # "str" | "int" | "float" | "bool" | "dict" | "list" | "arrays"
    required: bool = False
    max_len: int | None = None
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None
    check: Callable[[Any], str | None] | None = None  # returns an error sentence or None


def _id(required: bool = True) -> Field:
    return Field("str", required, max_len=_ID_LEN, check=_check_id)


def _check_id(value: str) -> str | None:
    if not value or not all(c.isalnum() or c in "-_." for c in value):
        return "must be non-empty and contain only letters, digits, '-', '_' and '.'"
    return None


def _check_arrays(value: dict) -> str | None:
    for key, arr in value.items():
        if not isinstance(arr, np.ndarray):
            return f"entry {key!r} must be an array"
    return None


_COMMON = {"v": Field("int", True), "type": Field("str", True, max_len=32), "req_id": Field("str", max_len=_ID_LEN)}

SCHEMAS: dict[tuple[Direction, str], dict[str, Field]] = {
    ("request", "hello"): {"client": Field("str", max_len=128)},
    ("request", "ping"): {},
    ("request", "release"): {},
    ("request", "status"): {"job_id": _id(required=False)},
    ("request", "cancel"): {"job_id": _id()},
    ("request", "fetch"): {"job_id": _id(), "files": Field("bool")},
    ("request", "chunk"): {
        "job_id": _id(),
        "name": Field("str", True, max_len=255),
        "offset": Field("int", True, min=0, max=2**62),
        "size": Field("int", True, min=1, max=MAX_CHUNK_BYTES),
    },
    ("request", "submit"): {
        "pipeline": Field("str", True, max_len=64),
        "preset": Field("str", max_len=32),
        "params": Field("dict"),
        "inputs": Field("arrays", check=_check_arrays),
        "seed": Field("int", min=0, max=_INT32_MAX),
        "label": Field("str", max_len=256),
    },
    ("reply", "welcome"): {
        "server": Field("str", True, max_len=128),
        "device": Field("str", True, max_len=256),
        "pipelines": Field("dict", True),
        "models": Field("dict", True),
        "warnings": Field("list"),  # sentences about the backend (e.g. gsplat unusable, the torch rasteriser runs)
        # where jobs run: [{name, node, device, state (starting|idle|busy|lost|failed), job_id, models}]
        "workers": Field("list"),
    },
    ("reply", "pong"): {"time": Field("float")},
    ("reply", "accepted"): {"job_id": _id(), "position": Field("int", True, min=0)},
    ("reply", "progress"): {
        "job_id": _id(),
        "stage": Field("str", True, max_len=64),
        "step": Field("int", True, min=0),
        "total": Field("int", True, min=0),
        "loss": Field("float"),
        "eta_s": Field("float", min=0),
        "elapsed_s": Field("float", min=0),
        "message": Field("str", max_len=1024),
    },
    ("reply", "preview"): {
        "job_id": _id(),
        "kind": Field("str", True, choices=PREVIEW_KINDS),
        "seq": Field("int", True, min=0),
        "data": Field("arrays", True, check=_check_arrays),
        "meta": Field("dict"),
    },
    ("reply", "result"): {
        "job_id": _id(),
        "arrays": Field("arrays", check=_check_arrays),
        "files": Field("arrays", check=_check_arrays),
        "meta": Field("dict"),
    },
    ("reply", "error"): {
        "code": Field("str", True, choices=tuple(ERROR_CODES)),
        "message": Field("str", True, max_len=8192),
        "job_id": _id(required=False),
    },
    ("reply", "chunk"): {
        "job_id": _id(),
        "name": Field("str", True, max_len=255),
        "offset": Field("int", True, min=0),
        "total": Field("int", True, min=0),
        "data": Field("arrays", True, check=_check_arrays),
    },
    ("reply", "status"): {"jobs": Field("list", True), "released": Field("list"), "job_id": _id(required=False)},
}

_KIND_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "dict": (dict,),
    "list": (list,),
    "arrays": (dict,),
}


def validate(message: dict, direction: Direction) -> dict:
    """Check a decoded message against the schema of its type and direction.

    Args:
        message: the decoded header (arrays substituted).
        direction: ``"request"`` (client -> server) or ``"reply"`` (server -> client).
    Returns:
        The same message, for chaining.
    Raises:
        ProtocolError: ``bad_version``, ``unknown_type`` or ``bad_field`` (unknown field,
            missing required field, wrong type, out of range, too long, not in the enum).
    """
    if message.get("v") != PROTOCOL_VERSION:
        raise ProtocolError("bad_version", f"protocol version {message.get('v')!r} is not {PROTOCOL_VERSION}")
    mtype = message.get("type")
    schema = SCHEMAS.get((direction, mtype)) if isinstance(mtype, str) else None
    if schema is None:
        allowed = REQUEST_TYPES if direction == "request" else REPLY_TYPES
        raise ProtocolError("unknown_type", f"unknown {direction} type {mtype!r}; expected one of {', '.join(allowed)}")
    fields = {**_COMMON, **schema}
    for name in message:
        if name not in fields:
            raise ProtocolError("bad_field", f"{mtype}: unknown field {name!r}")
    for name, spec in fields.items():
        if name not in message or message[name] is None:
            if spec.required:
                raise ProtocolError("bad_field", f"{mtype}: missing required field {name!r}")
            continue
        _check_field(mtype, name, message[name], spec)
    return message


def _check_field(mtype: str, name: str, value: Any, spec: Field) -> None:
    where = f"{mtype}.{name}"
    types = _KIND_TYPES[spec.kind]
    if not isinstance(value, types) or (spec.kind in ("int", "float") and isinstance(value, bool)):
        raise ProtocolError("bad_field", f"{where} must be of type {spec.kind}, got {type(value).__name__}")
    if spec.kind == "float" and not math.isfinite(value):
        raise ProtocolError("bad_field", f"{where} must be finite")
    if spec.max_len is not None and len(value) > spec.max_len:
        raise ProtocolError("bad_field", f"{where} is {len(value)} long; at most {spec.max_len} allowed")
    if spec.min is not None and value < spec.min:
        raise ProtocolError("bad_field", f"{where} = {value} is below the minimum {spec.min}")
    if spec.max is not None and value > spec.max:
        raise ProtocolError("bad_field", f"{where} = {value} is above the maximum {spec.max}")
    if spec.choices is not None and value not in spec.choices:
        raise ProtocolError("bad_field", f"{where} = {value!r} is not one of {', '.join(spec.choices)}")
    if spec.check is not None:
        problem = spec.check(value)
        if problem:
            raise ProtocolError("bad_field", f"{where} {problem}")


def make(mtype: str, **fields: Any) -> dict:
    """Build a message dict ``{"v", "type", **fields}``, dropping fields whose value is None."""
    msg = {"v": PROTOCOL_VERSION, "type": mtype}
    msg.update({k: v for k, v in fields.items() if v is not None})
    return msg


def error(code: str, message: str, *, job_id: str | None = None, req_id: str | None = None) -> dict:
    """Build an ``error`` reply. ``code`` must be one of :data:`ERROR_CODES`."""
    if code not in ERROR_CODES:
        raise ValueError(f"unknown error code {code!r}")
    return make("error", code=code, message=message, job_id=job_id, req_id=req_id)
