"""Multipart framing of Splatsmith messages: a msgpack header plus one raw frame per array.

A message is a ``dict`` (its header) whose values may be nested dicts, lists, scalars,
strings, bytes and numpy arrays. ``encode`` turns it into a list of ZeroMQ frames:

- frame 0: the msgpack-encoded header, in which every array is replaced by the map
  ``{"__nd__": {"dtype": "float32", "shape": [N, 3], "frame": k}}``;
- frame k (k >= 1): the array's bytes, C-contiguous, little-endian.

``decode`` reverses it and checks, before touching any array data: the frame count, the
header size, the total size, the protocol version, the nesting depth, the dtype whitelist,
that ``prod(shape) * itemsize`` equals the frame length, the per-array limit, and that every
array frame is referenced exactly once. Every violation raises :class:`ProtocolError` with a
stable ``code``. There is no pickle anywhere: object arrays cannot be encoded or decoded.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import msgpack
import numpy as np

PROTOCOL_VERSION = 1

#: dtypes allowed on the wire (names as numpy spells them).
DTYPE_WHITELIST: tuple[str, ...] = ("uint8", "uint16", "int32", "uint32", "float16", "float32")

_ARRAY_KEY = "__nd__"
_MiB = 1024 * 1024


class ProtocolError(Exception):
    """A message broke the wire contract.

    Attributes:
        code: a stable machine-readable code (see ``ERROR_CODES`` in ``messages``), e.g.
            ``"too_large"``, ``"bad_dtype"``, ``"bad_version"``.
        message: a sentence for a person: what was wrong and what to do.
    """

    def __init__(self, code: str, message: str):
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Limits:
    """Decoder limits. All sizes in bytes.

    Attributes:
        max_total_bytes: all frames of one message together (default 512 MiB).
        max_array_bytes: one array frame (default 512 MiB).
        max_header_bytes: the msgpack header (frame 0; default 4 MiB).
        max_frames: frames in one message, header included.
        max_depth: nesting depth of maps/lists in the header.
        max_ndim: dimensions of one array.
        max_str_len: one string in the header, in bytes.
        max_container_len: entries of one map or list in the header.
        max_dim: the largest size of one array dimension (also bounds the dimensions of an
            empty array, which numpy cannot allocate past ``2**63`` elements).
    """

    max_total_bytes: int = 512 * _MiB
    max_array_bytes: int = 512 * _MiB
    max_header_bytes: int = 4 * _MiB
    max_frames: int = 1024
    max_depth: int = 32
    max_ndim: int = 8
    max_str_len: int = 1 * _MiB
    max_container_len: int = 100_000
    max_dim: int = 1 << 31


DEFAULT_LIMITS = Limits()


def _frame_len(frame: Any) -> int:
    if isinstance(frame, (bytes, bytearray)):
        return len(frame)
    if isinstance(frame, memoryview):
        return frame.nbytes
    # zmq.Frame
    return len(frame.buffer) if hasattr(frame, "buffer") else len(frame)


def _frame_buffer(frame: Any) -> Any:
    if hasattr(frame, "buffer"):  # zmq.Frame received with copy=False: zero-copy view
        return frame.buffer
    return frame


def encode(message: dict, version: int = PROTOCOL_VERSION) -> list[Any]:
    """Encode a header dict (which may contain numpy arrays) into ZeroMQ frames.

    Args:
        message: the message; must contain ``"type"``. ``"v"`` is set to ``version``.
            Arrays must have a whitelisted dtype; big-endian or non-contiguous arrays are
            converted (a copy); contiguous little-endian arrays are sent without a copy.
    Returns:
        A list of frames: ``bytes`` for the header, ``memoryview`` for each array.
    Raises:
        ProtocolError: ``bad_dtype`` for an array whose dtype is not in ``DTYPE_WHITELIST``,
            ``bad_field`` for a value msgpack cannot carry.
    """
    frames: list[Any] = [b""]

    def walk(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            name = value.dtype.name
            if name not in DTYPE_WHITELIST:
                raise ProtocolError(
                    "bad_dtype",
                    f"arrays of dtype {value.dtype} cannot be sent; use one of {', '.join(DTYPE_WHITELIST)}",
                )
            arr = value.astype(value.dtype.newbyteorder("<"), order="C", copy=False)  # keeps 0-d shapes
            frames.append(memoryview(arr.reshape(-1)).cast("B") if arr.size else b"")
            return {_ARRAY_KEY: {"dtype": name, "shape": list(arr.shape), "frame": len(frames) - 1}}
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(v) for v in value]
        if isinstance(value, np.generic):
            return value.item()
        return value

    header = walk(message)
    header["v"] = version
    try:
        frames[0] = msgpack.packb(header, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError("bad_field", f"a field cannot be encoded: {exc}") from exc
    return frames


def decode(frames: Sequence[Any], limits: Limits = DEFAULT_LIMITS) -> dict:
    """Decode ZeroMQ frames produced by :func:`encode` into a header dict with numpy arrays.

    Arrays are zero-copy, read-only views of the received frames.

    Args:
        frames: the frames of one message (``bytes``, ``memoryview`` or ``zmq.Frame``),
            without any routing identity.
        limits: the limits to enforce.
    Returns:
        The header dict, arrays substituted back; ``header["v"]`` is the protocol version.
    Raises:
        ProtocolError: and nothing else, for any input: ``bad_frames`` (no frames,
            unreferenced or doubly used frames), ``too_large`` (header, total, array, a
            dimension, a string, list or map over its limit), ``bad_msgpack``
            (frame 0 is not a msgpack map with string keys), ``too_deep`` (nesting),
            ``bad_version``, ``bad_array`` (a malformed descriptor), ``bad_dtype``,
            ``bad_shape`` (shape does not match the frame length).
    """
    try:
        return _decode(frames, limits)
    except ProtocolError:
        raise
    except (ValueError, TypeError, OverflowError, MemoryError) as exc:  # a check this module missed: still a refusal
        raise ProtocolError("bad_array", f"the message cannot be decoded: {type(exc).__name__}: {str(exc)[:200]}") from exc


def _decode(frames: Sequence[Any], limits: Limits) -> dict:
    if not frames:
        raise ProtocolError("bad_frames", "empty message: expected a msgpack header frame")
    if len(frames) > limits.max_frames:
        raise ProtocolError("too_large", f"{len(frames)} frames; at most {limits.max_frames} allowed")
    sizes = [_frame_len(f) for f in frames]
    total = sum(sizes)
    if total > limits.max_total_bytes:
        raise ProtocolError(
            "too_large",
            f"message is {total} bytes; the limit is {limits.max_total_bytes} bytes "
            "(send a smaller texture or mesh, or raise the server's --max-message-mb)",
        )
    if sizes[0] > limits.max_header_bytes:
        raise ProtocolError("too_large", f"header is {sizes[0]} bytes; the limit is {limits.max_header_bytes}")
    try:
        header = msgpack.unpackb(
            bytes(_frame_buffer(frames[0])),
            raw=False,
            strict_map_key=True,
            max_str_len=limits.max_str_len,
            max_bin_len=limits.max_header_bytes,
            max_array_len=limits.max_container_len,
            max_map_len=limits.max_container_len,
            max_ext_len=0,
        )
    except msgpack.exceptions.StackError as exc:
        raise ProtocolError("too_deep", "the header is nested too deeply") from exc
    except ValueError as exc:
        if "exceeds max_" in str(exc):  # msgpack's own limit checks: "N exceeds max_str_len(M)"
            raise ProtocolError("too_large", f"a string, byte string, list or map in the header is too long ({exc})") from exc
        raise ProtocolError("bad_msgpack", f"frame 0 is not a valid msgpack header: {type(exc).__name__}") from exc
    except Exception as exc:  # msgpack raises several unrelated types for corrupt input
        raise ProtocolError("bad_msgpack", f"frame 0 is not a valid msgpack header: {type(exc).__name__}") from exc
    if not isinstance(header, dict):
        raise ProtocolError("bad_msgpack", "frame 0 must be a msgpack map")
    version = header.get("v")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            "bad_version",
            f"protocol version {version!r} is not supported; this side speaks version {PROTOCOL_VERSION}. "
            "Update the Blender add-on and the backend to the same Splatsmith release.",
        )
    used: set[int] = set()

    def array_from(desc: Any) -> np.ndarray:
        if not isinstance(desc, dict) or set(desc) != {"dtype", "shape", "frame"}:
            raise ProtocolError("bad_array", "array descriptor must be {dtype, shape, frame}")
        dtype, shape, index = desc["dtype"], desc["shape"], desc["frame"]
        if dtype not in DTYPE_WHITELIST:
            raise ProtocolError("bad_dtype", f"dtype {dtype!r} is not allowed; use one of {', '.join(DTYPE_WHITELIST)}")
        if (
            not isinstance(shape, list)
            or len(shape) > limits.max_ndim
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
        ):
            raise ProtocolError("bad_shape", f"shape {shape!r} must be a list of at most {limits.max_ndim} non-negative ints")
        if not isinstance(index, int) or isinstance(index, bool) or not 1 <= index < len(frames):
            raise ProtocolError("bad_frames", f"array refers to frame {index!r}, which does not exist")
        if index in used:
            raise ProtocolError("bad_frames", f"frame {index} is referenced twice")
        if any(s > limits.max_dim for s in shape):
            raise ProtocolError("too_large", f"shape {shape!r} has a dimension above {limits.max_dim}")
        # Bound the element count of the non-empty dimensions too: numpy refuses to create even
        # an empty array whose other dimensions multiply past its index range.
        if math.prod(s for s in shape if s) > limits.max_array_bytes:
            raise ProtocolError("too_large", f"shape {shape!r} has more elements than the per-array limit allows")
        used.add(index)
        dt = np.dtype(dtype).newbyteorder("<")
        nbytes = math.prod(shape) * dt.itemsize
        if nbytes > limits.max_array_bytes:
            raise ProtocolError("too_large", f"an array of {nbytes} bytes exceeds the per-array limit {limits.max_array_bytes}")
        if nbytes != sizes[index]:
            raise ProtocolError(
                "bad_shape", f"shape {shape} of {dtype} needs {nbytes} bytes but frame {index} has {sizes[index]}"
            )
        if nbytes == 0:
            return np.zeros(shape, dtype=dt)
        return np.frombuffer(_frame_buffer(frames[index]), dtype=dt).reshape(shape)

    def walk(value: Any, depth: int) -> Any:
        if depth > limits.max_depth:
            raise ProtocolError("too_deep", f"the header is nested deeper than {limits.max_depth} levels")
        if isinstance(value, dict):
            if _ARRAY_KEY in value:
                if len(value) != 1:
                    raise ProtocolError("bad_array", "an array descriptor must stand alone in its map")
                return array_from(value[_ARRAY_KEY])
            return {k: walk(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, depth + 1) for v in value]
        return value

    message = walk(header, 0)
    if len(used) != len(frames) - 1:
        raise ProtocolError("bad_frames", f"{len(frames) - 1 - len(used)} frame(s) are not referenced by the header")
    return message
