"""The one Splatsmith client: a ZeroMQ DEALER used by the Blender add-on, the CLI and the tests.

Non-blocking by design: :meth:`Client.poll` (with the default ``timeout=0``) reads only what
has already arrived, dispatches it to per-job callbacks and returns at once, so it can be
called from a ``bpy.app.timers`` tick. The blocking helpers (:meth:`hello`, :meth:`ping`,
:meth:`status`, :meth:`release`, :meth:`wait`) are built on it, for scripts and the CLI.

While jobs are active the client watches the server: after ``Timeouts.heartbeat`` seconds of
silence it asks for the jobs' status (which also notices jobs that a restarted server marked
``interrupted``), and after ``Timeouts.lost`` seconds of silence it fails them with the code
``server_lost``. A CURVE handshake the server refuses is reported as ``refused``.
"""
from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

from . import messages
from .codec import DEFAULT_LIMITS, PROTOCOL_VERSION, Limits, ProtocolError, decode, encode
from .endpoints import normalize_endpoint

DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"

EventCallback = Callable[["JobHandle", dict], None]

#: Result files are fetched in chunks of this many bytes, at most ``CHUNK_CREDIT`` in flight
#: (credit-based flow control, as in the ZeroMQ guide's file-transfer pattern).
CHUNK_BYTES = 1 << 20
CHUNK_CREDIT = 4


#: The client socket's options (libzmq names), as data so that a test can run the client with
#: another configuration. A small receive queue (RCVHWM 32) makes the server's latest-wins
#: previews apply while the client does not poll. No ZMTP heartbeats (HEARTBEAT_IVL 0, libzmq's
#: default): with a full receive queue libzmq stops reading the connection, so it cannot see the
#: peer's heartbeats either; the heartbeat timeout then drops a healthy connection, libzmq
#: reconnects, and when the client reads again a stale "input may restart" command reaches the
#: new connection: ``Assertion failed: _input_stopped (src/stream_engine_base.cpp:396)``, which
#: aborts the process (libzmq issue #3937, open; root cause in pull request #4830:
#: ``session_base_t::write_activated`` restarts input on an engine that never stalled; no
#: released libzmq has the fix). A slow reader (Blender busy for a few seconds during a burst of
#: previews) is exactly that case. Liveness is the client's own business instead: while jobs are
#: active it asks for their status after ``Timeouts.heartbeat`` seconds of silence and fails them
#: after ``Timeouts.lost`` (the server does the same with TCP keepalive, never ZMTP heartbeats).
SOCKET_OPTIONS: dict[str, int] = {"LINGER": 0, "RCVHWM": 32, "HEARTBEAT_IVL": 0}
#: How long a send that finds no connection waits for a refused handshake to be reported, seconds.
REFUSAL_WAIT_S = 0.5


class ClientError(Exception):
    """A request could not be completed.

    Attributes:
        code: a stable code: one of ``messages.ERROR_CODES`` or ``"refused"`` (the server
            rejected this client's CURVE keys).
        message: a sentence for a person.
    """

    def __init__(self, code: str, message: str):
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message


class JobError(ClientError):
    """A job ended in ``failed`` or ``cancelled``; ``code`` says why."""


@dataclass(frozen=True)
class Timeouts:
    """Client timeouts in seconds.

    Attributes:
        ping: reply to ping/hello/status/release.
        submit: from submit to ``accepted``.
        transfer: from fetch of a finished job to its ``result``.
        heartbeat: silence while jobs are active before the client asks for their status.
        lost: silence while jobs are active before they fail with ``server_lost``.
    """

    ping: float = 1.0
    submit: float = 10.0
    transfer: float = 120.0
    heartbeat: float = 2.0
    lost: float = 15.0


@dataclass(frozen=True)
class CurveKeys:
    """CURVE keys of a client (Z85-encoded bytes, as ``zmq.auth`` writes them)."""

    server_public: bytes
    client_public: bytes
    client_secret: bytes

    @classmethod
    def from_files(cls, server_public_file: str | os.PathLike, client_secret_file: str | os.PathLike) -> "CurveKeys":
        """Load keys from certificate files written by ``zmq.auth.create_certificates``
        (``splatsmith keygen``).

        Raises:
            ClientError: code ``bad_field`` when a file is missing or has no key of the
                expected kind.
        """
        try:
            server_public, _ = zmq.auth.load_certificate(str(server_public_file))
            client_public, client_secret = zmq.auth.load_certificate(str(client_secret_file))
        except (OSError, ValueError) as exc:
            raise ClientError("bad_field", f"cannot read CURVE key files: {exc}") from exc
        if client_secret is None:
            raise ClientError("bad_field", f"{client_secret_file} holds no secret key; pass the client's .key_secret file")
        return cls(server_public, client_public, client_secret)


@dataclass
class JobHandle:
    """What the client knows of one job. Updated by :meth:`Client.poll`.

    Attributes:
        job_id: the server's id, None until ``accepted`` arrives.
        state: ``submitting``, ``queued``, ``running``, ``done``, ``failed`` or ``cancelled``.
        progress: the latest ``progress`` message, or None.
        previews: the latest ``preview`` message of each kind.
        result: the ``result`` message once done.
        error: the ``error`` message once failed or cancelled.
    """

    req_id: str
    job_id: str | None = None
    state: str = "submitting"
    progress: dict | None = None
    previews: dict[str, dict] = field(default_factory=dict)
    preview_counts: dict[str, int] = field(default_factory=dict)
    result: dict | None = None
    error: dict | None = None
    callbacks: list[EventCallback] = field(default_factory=list)
    deadline: float | None = None
    want_files: bool = True
    transfer: "_Transfer | None" = None

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")


class _Transfer:
    """The result files of one job being fetched chunk by chunk."""

    def __init__(self, result: dict, sizes: dict[str, int]):
        self.result = result
        self.buffers = {name: bytearray(size) for name, size in sizes.items()}
        self.todo = [(name, offset) for name, size in sizes.items() for offset in range(0, size, CHUNK_BYTES)]
        self.todo.reverse()
        self.outstanding = 0

    @property
    def complete(self) -> bool:
        return not self.todo and self.outstanding == 0

    def files(self) -> dict:
        return {name: np.frombuffer(bytes(buf), dtype=np.uint8) for name, buf in self.buffers.items()}


class Client:
    """DEALER client of a Splatsmith backend.

    Args:
        address: the backend's ZeroMQ endpoint, e.g. ``tcp://127.0.0.1:5555``.
        timeouts: see :class:`Timeouts`.
        curve: keys for a server that requires CURVE; None for a plain connection.
        limits: decoder limits for replies.
        name: a label the server logs in ``hello``.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        timeouts: Timeouts = Timeouts(),
        curve: CurveKeys | None = None,
        limits: Limits = DEFAULT_LIMITS,
        name: str = "splatsmith-client",
    ):
        try:
            address = normalize_endpoint(address)
        except ValueError as exc:
            raise ClientError("bad_address", str(exc)) from None
        self.address = address
        self.curve = curve
        self.timeouts = timeouts
        self.limits = limits
        self.name = name
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        for option, value in SOCKET_OPTIONS.items():
            self._sock.setsockopt(getattr(zmq, option), value)
        self._sock.setsockopt(zmq.MAXMSGSIZE, limits.max_total_bytes)
        if curve is not None:
            self._sock.curve_serverkey = curve.server_public
            self._sock.curve_publickey = curve.client_public
            self._sock.curve_secretkey = curve.client_secret
        self._monitor = self._sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
            | zmq.EVENT_HANDSHAKE_SUCCEEDED
        )
        self._sock.connect(address)
        self._ids = itertools.count(1)
        self._prefix = os.urandom(4).hex()
        self._jobs: dict[str, JobHandle] = {}  # by job_id
        self._pending_submits: dict[str, JobHandle] = {}  # by req_id
        self._pending: dict[str, tuple[float, float, Callable[[dict], None]]] = {}  # req_id -> (deadline, timeout, cb)
        self._last_heard = time.monotonic()
        self._last_probe = 0.0
        self.refused: str | None = None
        self.welcome: dict | None = None
        self.closed = False

    # ------------------------------------------------------------------ plumbing
    def _next_req(self) -> str:
        return f"{self._prefix}-{next(self._ids)}"

    def _send(self, message: dict) -> None:
        if self.closed:
            raise ClientError("bad_field", "the client is closed")
        frames = encode(message)
        try:
            self._sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again as exc:
            # A DEALER also refuses to queue while it has no connection at all, which is what a
            # refused CURVE handshake leaves: its monitor event can lag the dropped connection by a
            # moment, so wait for it briefly before saying anything else.
            deadline = time.monotonic() + REFUSAL_WAIT_S
            while self.refused is None and time.monotonic() < deadline:
                if self._monitor.poll(20):
                    self._check_monitor()
            if self.refused:
                raise ClientError("refused", self.refused) from exc
            raise ClientError("timeout", f"cannot send to {self.address}: no connection to the backend, or its "
                                         "incoming queue is full") from exc

    def request(self, message: dict, on_reply: Callable[[dict], None], timeout: float) -> str:
        """Send a request without blocking; ``on_reply`` gets its reply (or an ``error``
        message with code ``timeout``/``refused`` from :meth:`poll`). Returns the req_id."""
        req_id = self._next_req()
        message = dict(message, req_id=req_id)
        self._pending[req_id] = (time.monotonic() + timeout, timeout, on_reply)
        self._send(message)
        return req_id

    def _blocking(self, message: dict, timeout: float) -> dict:
        box: list[dict] = []
        self.request(message, box.append, timeout)
        while not box:
            self.poll(0.02)
        reply = box[0]
        if reply["type"] == "error":
            raise ClientError(reply["code"], reply["message"])
        return reply

    def _timeout_message(self, what: str, seconds: float) -> str:
        return (
            f"no {what} from the backend at {self.address} within {seconds:g} s: is it running "
            "(`splatsmith serve`), and is the address right?"
        )

    # ------------------------------------------------------------------ polling
    def poll(self, timeout: float = 0.0, max_messages: int = 1000) -> int:
        """Read and dispatch what has arrived; never blocks longer than ``timeout`` seconds.

        Args:
            timeout: seconds to wait for the first message (0: do not wait).
            max_messages: stop after this many messages, to bound the work of one call.
        Returns:
            The number of messages dispatched.
        """
        if self.closed:
            return 0
        self._check_monitor()
        count = 0
        wait_ms = int(timeout * 1000)
        # Previews are latest-wins here too: of a batch, only the newest per (job, kind) is
        # dispatched, so a client that could not poll for a while gets no backlog.
        previews: dict[tuple[str, str], dict] = {}
        while count < max_messages:
            if not self._sock.poll(wait_ms if count == 0 else 0, zmq.POLLIN):
                break
            frames = self._sock.recv_multipart(copy=False)
            self._last_heard = time.monotonic()
            count += 1
            try:
                message = messages.validate(decode(frames, self.limits), "reply")
            except ProtocolError as exc:
                message = messages.error("internal", f"the backend sent an invalid reply: {exc.message}")
            if message["type"] == "preview":
                key = (message["job_id"], message["kind"])
                previews.pop(key, None)
                previews[key] = message
                continue
            job_id = message.get("job_id")
            for key in [k for k in previews if k[0] == job_id]:
                self._dispatch(previews.pop(key))
            self._dispatch(message)
        for message in previews.values():
            self._dispatch(message)
        self._check_deadlines()
        return count

    def _check_monitor(self) -> None:
        while self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)
            kind = event["event"]
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.refused = None
            elif kind in (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                          zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
                self.refused = self._refusal(kind, event["value"])

    def _refusal(self, kind: int, value: int) -> str:
        """One sentence for a failed handshake (libzmq's monitor events, tried against a real
        server: a mechanism mismatch when exactly one side uses CURVE, no detail when the
        server key is wrong, an authentication failure when the client key is not listed)."""
        where = f"the backend at {self.address}"
        if kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == getattr(zmq, "PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH", -1):
            if self.curve is None:
                return (f"{where} requires CURVE keys: set the server's public key and this client's secret key "
                        "(add-on preferences, or --server-key and --client-key)")
            return f"{where} does not use CURVE keys: connect without them (clear the key files)"
        if kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL and self.curve is not None:
            return (f"{where} did not accept the handshake: the server public key given to this client does not match "
                    "the server's key (copy server.key from the server's key folder again)")
        if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            return (f"{where} refused this client's CURVE keys: add the client's public key to the server's authorised "
                    "keys (clients/ in its key folder), or check the server public key")
        return f"{where} refused the connection handshake: check the address and the CURVE key settings"

    def _fail_code(self) -> str:
        return "refused" if self.refused else "timeout"

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        for req_id, (deadline, seconds, cb) in list(self._pending.items()):
            if now > deadline:
                del self._pending[req_id]
                text = self.refused or self._timeout_message("reply", seconds)
                cb({"v": PROTOCOL_VERSION, "type": "error", "code": self._fail_code(), "message": text, "req_id": req_id})
        for req_id, handle in list(self._pending_submits.items()):
            if handle.deadline is not None and now > handle.deadline:
                del self._pending_submits[req_id]
                text = self.refused or self._timeout_message("answer to the submit", self.timeouts.submit)
                self._finish(handle, {"v": PROTOCOL_VERSION, "type": "error", "code": self._fail_code(), "message": text})
        active = [h for h in self._jobs.values() if not h.finished]
        if not active:
            self._last_heard = now  # silence is only measured while jobs are active
            return
        silence = now - self._last_heard
        for handle in active:
            if handle.deadline is not None and now > handle.deadline:
                self._finish(handle, messages.error(
                    "timeout", self._timeout_message("result", self.timeouts.transfer), job_id=handle.job_id))
        if silence > self.timeouts.lost:
            for handle in active:
                if not handle.finished:
                    self._finish(handle, messages.error(
                        "server_lost",
                        f"the backend at {self.address} stopped answering. Restart it (`splatsmith serve`), "
                        f"then fetch job {handle.job_id}: finished results stay on disk.",
                        job_id=handle.job_id,
                    ))
        elif silence > self.timeouts.heartbeat and now - self._last_probe > self.timeouts.heartbeat:
            self._last_probe = now
            for handle in active:
                self.request(messages.make("status", job_id=handle.job_id), self._on_probe, self.timeouts.lost)

    def _on_probe(self, reply: dict) -> None:
        if reply["type"] == "error":
            job_id = reply.get("job_id")
            if reply["code"] == "unknown_job" and job_id in self._jobs:
                self._finish(self._jobs[job_id], reply)
            return
        for info in reply.get("jobs", []):
            handle = self._jobs.get(info.get("job_id"))
            if handle is None or handle.finished or handle.transfer is not None:
                continue
            if info.get("state") in ("done", "failed", "cancelled"):
                # The end was missed (e.g. the server restarted, or we reconnected): ask again.
                self._send(messages.make("fetch", job_id=handle.job_id, files=True))
            elif info.get("state") in ("queued", "running"):
                handle.state = info["state"]

    def _dispatch(self, message: dict) -> None:
        mtype = message["type"]
        req_id = message.get("req_id")
        if req_id in self._pending and mtype != "accepted":
            _, _, cb = self._pending.pop(req_id)
            cb(message)
            return
        if mtype == "accepted" and req_id in self._pending_submits:
            handle = self._pending_submits.pop(req_id)
            handle.job_id = message["job_id"]
            handle.state = "queued"
            handle.deadline = None
            self._jobs[handle.job_id] = handle
            self._notify(handle, message)
            return
        if mtype == "error" and req_id in self._pending_submits:
            self._finish(self._pending_submits.pop(req_id), message)
            return
        handle = self._jobs.get(message.get("job_id", ""))
        if handle is None or handle.finished:
            return
        if handle.transfer is not None:
            if mtype == "chunk":
                self._on_chunk(handle, message)
            elif mtype == "error":
                handle.transfer = None
                self._finish(handle, message)
            return
        if mtype == "result" and handle.want_files:
            meta = message.get("meta") or {}
            missing = {n: int(size) for n, size in (meta.get("file_sizes") or {}).items()
                       if n not in (message.get("files") or {})}
            if missing:
                handle.transfer = _Transfer(message, missing)
                handle.deadline = time.monotonic() + self.timeouts.transfer
                self._request_chunks(handle)
                if not handle.transfer.complete:
                    return
                message = dict(message, files={**(message.get("files") or {}), **handle.transfer.files()})
                handle.transfer = None  # only empty files were missing: nothing to fetch
        if mtype == "progress":
            handle.state = "running"
            handle.progress = message
        elif mtype == "preview":
            handle.previews[message["kind"]] = message
            handle.preview_counts[message["kind"]] = handle.preview_counts.get(message["kind"], 0) + 1
        elif mtype == "status":
            for info in message.get("jobs", []):
                if info.get("job_id") == handle.job_id and info.get("state") in ("queued", "running"):
                    handle.state = info["state"]
        elif mtype in ("result", "error"):
            self._finish(handle, message)
            return
        self._notify(handle, message)

    def _request_chunks(self, handle: JobHandle) -> None:
        transfer = handle.transfer
        while transfer.todo and transfer.outstanding < CHUNK_CREDIT:
            name, offset = transfer.todo.pop()
            self._send(messages.make("chunk", job_id=handle.job_id, name=name, offset=offset, size=CHUNK_BYTES))
            transfer.outstanding += 1

    def _on_chunk(self, handle: JobHandle, message: dict) -> None:
        transfer = handle.transfer
        buf = transfer.buffers.get(message["name"])
        data = message["data"].get("bytes")
        if buf is None or data is None or message["total"] != len(buf) or message["offset"] + len(data) > len(buf):
            handle.transfer = None
            self._finish(handle, messages.error("internal", f"the backend sent a malformed chunk of {message['name']!r}",
                                                job_id=handle.job_id))
            return
        buf[message["offset"]: message["offset"] + len(data)] = data.tobytes()
        transfer.outstanding -= 1
        handle.deadline = time.monotonic() + self.timeouts.transfer
        self._request_chunks(handle)
        if transfer.complete:
            result = dict(transfer.result, files={**(transfer.result.get("files") or {}), **transfer.files()})
            handle.transfer = None
            self._finish(handle, result)

    def _finish(self, handle: JobHandle, message: dict) -> None:
        handle.deadline = None
        if message["type"] == "result":
            handle.state, handle.result = "done", message
        else:
            handle.state = "cancelled" if message.get("code") == "cancelled" else "failed"
            handle.error = message
        self._notify(handle, message)

    @staticmethod
    def _notify(handle: JobHandle, message: dict) -> None:
        for cb in handle.callbacks:
            cb(handle, message)

    # ------------------------------------------------------------------ requests
    def hello(self, timeout: float | None = None) -> dict:
        """Handshake: returns the ``welcome`` (server version, device, pipelines, models).

        Raises:
            ClientError: ``timeout`` (no backend), ``refused`` (CURVE keys rejected),
                ``bad_version`` (client and server speak different protocol versions).
        """
        self.welcome = self._blocking(messages.make("hello", client=self.name), timeout or self.timeouts.ping)
        return self.welcome

    def ping(self, timeout: float | None = None) -> float:
        """Round trip to the server; returns the round-trip time in seconds. Raises ClientError."""
        start = time.perf_counter()
        self._blocking(messages.make("ping"), timeout or self.timeouts.ping)
        return time.perf_counter() - start

    def status(self, job_id: str | None = None, timeout: float | None = None) -> list[dict]:
        """The server's jobs (or one job), newest last: dicts with job_id, pipeline, state,
        created/started/finished (Unix seconds), label, error code/message. Raises ClientError."""
        return self._blocking(messages.make("status", job_id=job_id), timeout or self.timeouts.ping)["jobs"]

    def release(self, timeout: float | None = None) -> list[str]:
        """Ask the server to unload its models and free device memory; returns what was freed."""
        return self._blocking(messages.make("release"), timeout or self.timeouts.submit).get("released", [])

    def submit(
        self,
        pipeline: str,
        *,
        params: dict | None = None,
        inputs: dict | None = None,
        preset: str | None = None,
        seed: int | None = None,
        label: str | None = None,
        on_event: EventCallback | None = None,
    ) -> JobHandle:
        """Submit a job without blocking. The returned handle fills in as :meth:`poll` runs.

        Args:
            pipeline: a pipeline name from the welcome's ``pipelines``.
            params: pipeline parameters (validated by the server against its schema).
            inputs: named numpy arrays (e.g. ``{"image": uint8 [H, W, 4]}``).
            preset: a preset name of that pipeline.
            seed: 0 .. 2**31-1.
            label: a name for people (shown by ``splatsmith jobs``).
            on_event: called as ``on_event(handle, message)`` for every message of the job.
        """
        req_id = self._next_req()
        handle = JobHandle(req_id=req_id, deadline=time.monotonic() + self.timeouts.submit)
        if on_event:
            handle.callbacks.append(on_event)
        self._pending_submits[req_id] = handle
        self._send(messages.make(
            "submit", req_id=req_id, pipeline=pipeline, params=params or {}, inputs=inputs,
            preset=preset, seed=seed, label=label,
        ))
        return handle

    def fetch(self, job_id: str, *, on_event: EventCallback | None = None, files: bool = True) -> JobHandle:
        """Follow a job by id without blocking: a finished job's result (or error) arrives
        within ``Timeouts.transfer``; a running one streams to this client from now on."""
        handle = self._jobs.get(job_id)
        if handle is None or handle.finished:
            handle = JobHandle(req_id=self._next_req(), job_id=job_id, state="queued")
            self._jobs[job_id] = handle
        if on_event:
            handle.callbacks.append(on_event)
        handle.deadline = time.monotonic() + self.timeouts.transfer
        handle.want_files = files
        self._last_heard = time.monotonic()
        self._send(messages.make("fetch", job_id=job_id, files=files))

        if _follow not in handle.callbacks:
            handle.callbacks.append(_follow)
        return handle

    def cancel(self, job: JobHandle | str) -> None:
        """Ask the server to cancel a job (queued or running); the job's ``error`` reply with
        code ``cancelled`` follows through :meth:`poll`."""
        job_id = job.job_id if isinstance(job, JobHandle) else job
        if job_id is None:
            raise ClientError("bad_field", "the job has not been accepted yet; poll until it has a job_id")
        self._send(messages.make("cancel", job_id=job_id))

    def wait(self, job: JobHandle | str, timeout: float | None = None) -> dict:
        """Block until the job ends; returns its ``result`` message.

        Raises:
            JobError: the job failed or was cancelled (``code`` says which), or the server
                was lost.
            ClientError: ``timeout`` when ``timeout`` seconds pass first.
        """
        handle = job if isinstance(job, JobHandle) else self._jobs.get(job) or self.fetch(job)
        end = None if timeout is None else time.monotonic() + timeout
        while not handle.finished:
            if end is not None and time.monotonic() > end:
                raise ClientError("timeout", f"job {handle.job_id} did not finish within {timeout:g} s")
            self.poll(0.05)
        if handle.state != "done":
            raise JobError(handle.error["code"], handle.error["message"])
        return handle.result

    def close(self) -> None:
        """Close the socket (pending requests are dropped)."""
        if not self.closed:
            self.closed = True
            self._sock.disable_monitor()
            self._monitor.close(0)
            self._sock.close(0)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _follow(handle: JobHandle, message: dict) -> None:
    """A fetched job that is queued or running answers with its status: follow it to its end;
    the heartbeat (not the transfer deadline) watches the server from then on."""
    if message["type"] in ("status", "progress", "preview") and handle.transfer is None:
        handle.deadline = None


def load_curve_keys(server_public_file: str | Path | None, client_secret_file: str | Path | None) -> CurveKeys | None:
    """Keys from two optional files; None when neither is given. Raises ClientError when
    only one is given or a file is unreadable."""
    if not server_public_file and not client_secret_file:
        return None
    if not (server_public_file and client_secret_file):
        raise ClientError("bad_field", "CURVE needs both the server public key file and the client secret key file")
    return CurveKeys.from_files(server_public_file, client_secret_file)
