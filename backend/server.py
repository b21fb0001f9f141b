"""The backend's ZeroMQ ROUTER loop.

One thread (the one that calls :meth:`Server.serve_forever`) owns the ROUTER socket: it decodes
requests, answers them, and flushes each client's outbox. The worker thread (``jobs.Worker``)
runs pipelines and posts messages into those outboxes; an inproc socket wakes the loop.

Delivery rules:

- Outboxes are per client identity. Ordinary messages (accepted, status, result, error) are
  delivered in order; progress and each preview kind occupy a latest-wins slot per job, so a
  client that reads slowly gets the newest state and never a backlog, and never slows a job.
- Sends never block: the ROUTER has a small send high-water mark and ``ROUTER_MANDATORY``;
  a full pipe leaves messages in the outbox for the next round, a vanished client is dropped
  (its jobs go on; their results stay on disk for ``fetch``).
- Any undecodable or invalid request gets an ``error`` reply with a stable code; the loop
  keeps serving.

Security: binding a non-loopback address requires CURVE keys (``zmq.auth``) or ``insecure``.
"""
from __future__ import annotations

import collections
import ipaddress
import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from shared_protocol import messages
from shared_protocol.codec import DEFAULT_LIMITS, Limits, ProtocolError, decode, encode

from . import __version__
from .device import describe_device, free_device_memory
from .jobs import Job, JobStore, Worker
from .models import ModelCache, models_present
from .pipelines.base import REGISTRY, ParamError, Pipeline

log = logging.getLogger("splatsmith.server")

DEFAULT_BIND = "tcp://127.0.0.1:5555"


class ServerConfigError(RuntimeError):
    """The server cannot start as configured (e.g. a public bind without keys)."""


@dataclass(frozen=True)
class CurveConfig:
    """Server CURVE keys: its own key pair and the folder of authorised client public keys."""

    server_public: bytes
    server_secret: bytes
    clients_dir: Path

    @classmethod
    def from_dir(cls, curve_dir: str | os.PathLike) -> "CurveConfig":
        """Load ``server.key_secret`` and the ``clients/`` folder of ``*.key`` files from
        ``curve_dir`` (the layout ``splatsmith keygen`` writes).

        Raises:
            ServerConfigError: a file or folder is missing.
        """
        root = Path(curve_dir).expanduser()
        secret = root / "server.key_secret"
        clients = root / "clients"
        if not secret.is_file():
            raise ServerConfigError(f"{secret} not found: create keys with `splatsmith keygen {root}`")
        if not clients.is_dir():
            raise ServerConfigError(f"{clients} not found: put the authorised clients' public .key files there")
        public, secret_key = zmq.auth.load_certificate(str(secret))
        if secret_key is None:
            raise ServerConfigError(f"{secret} holds no secret key")
        return cls(public, secret_key, clients)


def is_loopback(bind: str) -> bool:
    """Whether a ZeroMQ endpoint only accepts connections from this machine."""
    if bind.startswith(("ipc://", "inproc://")):
        return True
    if not bind.startswith("tcp://"):
        return False
    host = bind[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", an interface name, or a host name: reachable from outside


class _Outbox:
    """Pending messages of one client: ordered; latest-wins entries keep their slot."""

    def __init__(self) -> None:
        self.items: collections.OrderedDict[Any, dict] = collections.OrderedDict()


class Server:
    """The Splatsmith backend server.

    Args:
        bind: ZeroMQ endpoint to bind (default loopback ``tcp://127.0.0.1:5555``).
        output_dir: where job folders are written.
        device: ``"cuda"`` or ``"cpu"`` (resolve ``auto`` with ``device.resolve_device``).
        pipelines: name -> Pipeline class (default: the global registry).
        curve: CURVE keys; required for a non-loopback bind unless ``insecure``.
        insecure: allow a non-loopback bind without encryption (logs a warning).
        limits: decoder limits for requests.
        models_dir: an extra folder of model weights.
        model_capacity: how many models stay loaded between jobs.

    Raises:
        ServerConfigError: a non-loopback bind without keys or ``insecure``.
    """

    def __init__(
        self,
        bind: str = DEFAULT_BIND,
        output_dir: str | os.PathLike = "splatsmith-output",
        device: str = "cpu",
        *,
        pipelines: dict[str, type[Pipeline]] | None = None,
        curve: CurveConfig | None = None,
        insecure: bool = False,
        limits: Limits = DEFAULT_LIMITS,
        models_dir: str | os.PathLike | None = None,
        model_capacity: int = 2,
        send_hwm: int = 4,
    ):
        if not is_loopback(bind) and curve is None and not insecure:
            raise ServerConfigError(
                f"refusing to bind {bind} without encryption: it is reachable from other machines. "
                "Give CURVE keys (--curve-dir, see `splatsmith keygen`) or pass --insecure on a trusted network."
            )
        if not is_loopback(bind) and curve is None:
            log.warning("INSECURE: %s accepts unauthenticated, unencrypted connections from the network", bind)
        self.bind = bind
        self.device = device
        self.limits = limits
        self.models_dir = models_dir
        self.pipelines = dict(REGISTRY if pipelines is None else pipelines)
        self.store = JobStore(output_dir)
        self.models = ModelCache(model_capacity)
        self.curve = curve
        self._ctx = zmq.Context()
        self._auth: ThreadAuthenticator | None = None
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._sock.setsockopt(zmq.SNDHWM, send_hwm)
        self._sock.setsockopt(zmq.RCVHWM, 1000)
        # Generous hard cap per frame; the decoder enforces the configured limits with a reply.
        self._sock.setsockopt(zmq.MAXMSGSIZE, 2 * limits.max_total_bytes + (1 << 20))
        self._sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
        self._sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5000)
        self._sock.setsockopt(zmq.HEARTBEAT_TTL, 10000)
        if curve is not None:
            self._auth = ThreadAuthenticator(self._ctx)
            self._auth.start()
            self._auth.configure_curve(domain="*", location=str(curve.clients_dir))
            self._sock.curve_secretkey = curve.server_secret
            self._sock.curve_publickey = curve.server_public
            self._sock.curve_server = True
        try:
            self._sock.bind(bind)
        except zmq.ZMQError as exc:
            self._close_sockets()
            raise ServerConfigError(f"cannot bind {bind}: {exc}. Is another server running there?") from exc
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        # A self-pipe wakes the loop when the worker posts (zmq sockets are single-threaded).
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._lock = threading.Lock()
        self._outboxes: dict[bytes, _Outbox] = {}
        self._subscribers: dict[str, set[bytes]] = collections.defaultdict(set)
        self._keys = itertools.count()
        self._stop = threading.Event()
        self.stats = collections.Counter()
        self.worker = Worker(self.store, self.pipelines, device, self.models, self._post,
                             None if models_dir is None else str(models_dir))
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "Server":
        """Serve in a background thread (tests, embedding). Returns self."""
        self._thread = threading.Thread(target=self.serve_forever, name="splatsmith-server", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Run the ROUTER loop until :meth:`stop`."""
        self.worker.start()
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        log.info("serving on %s (device %s, output %s)", self.endpoint, self.device, self.store.root)
        try:
            while not self._stop.is_set():
                pending = self._flush()
                events = dict(poller.poll(10 if pending else 100))
                if self._wake_r in events:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                if self._sock in events:
                    for _ in range(1000):
                        try:
                            frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._handle(frames)
        finally:
            self.worker.stop()
            self._close_sockets()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving; a running job is cancelled (its folder stays on disk)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.worker.join(timeout)

    def _close_sockets(self) -> None:
        self._sock.close(0)
        for fd in (getattr(self, "_wake_r", None), getattr(self, "_wake_w", None)):
            if fd is not None:
                os.close(fd)
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()

    # ------------------------------------------------------------------ delivery
    def _post(self, job: Job, key: str | None, message: dict) -> None:
        """Queue ``message`` for every subscriber of ``job`` (called from any thread)."""
        with self._lock:
            for ident in self._subscribers.get(job.job_id, ()):
                self._queue(ident, message, None if key is None else (job.job_id, key))
        self._wake()

    def _queue(self, ident: bytes, message: dict, slot: Any = None) -> None:
        outbox = self._outboxes.setdefault(ident, _Outbox())
        if slot is None:
            slot = ("seq", next(self._keys))
        elif slot in outbox.items:
            self.stats["superseded"] += 1
        outbox.items[slot] = message

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"!")
        except (BlockingIOError, OSError):
            pass  # the pipe is full (a wake-up is pending) or the server is closing

    def _reply(self, ident: bytes, message: dict) -> None:
        with self._lock:
            self._queue(ident, message)

    def _flush(self) -> bool:
        """Send what each outbox holds without blocking; returns whether anything is left."""
        left = False
        with self._lock:
            idents = list(self._outboxes)
        for ident in idents:
            while True:
                with self._lock:
                    outbox = self._outboxes.get(ident)
                    if not outbox or not outbox.items:
                        break
                    slot, message = next(iter(outbox.items.items()))
                try:
                    frames = encode(message)
                    self._sock.send_multipart([ident, *frames], flags=zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    left = True
                    break
                except zmq.ZMQError as exc:
                    if exc.errno == zmq.EHOSTUNREACH:
                        self._drop_client(ident)
                        break
                    raise
                with self._lock:
                    if outbox.items.get(slot) is message:
                        del outbox.items[slot]
                self.stats["sent"] += 1
        return left

    def _drop_client(self, ident: bytes) -> None:
        with self._lock:
            self._outboxes.pop(ident, None)
            for subs in self._subscribers.values():
                subs.discard(ident)
        self.stats["dropped_clients"] += 1

    # ------------------------------------------------------------------ requests
    def _handle(self, frames: list) -> None:
        ident, body = frames[0].bytes, frames[1:]
        req_id = None
        try:
            message = decode(body, self.limits)
            req_id = message.get("req_id") if isinstance(message.get("req_id"), str) else None
            messages.validate(message, "request")
        except ProtocolError as exc:
            self.stats["bad_requests"] += 1
            log.info("bad request: %s", exc)
            self._reply(ident, messages.error(exc.code, exc.message, req_id=req_id))
            return
        try:
            handler = getattr(self, "_on_" + message["type"])
            handler(ident, message, req_id)
        except Exception as exc:  # never let one request stop the loop
            log.exception("error while handling %s", message["type"])
            self._reply(ident, messages.error("internal", f"{type(exc).__name__}: {exc}", req_id=req_id))

    def welcome(self) -> dict:
        """The ``welcome`` message: server version, device, pipelines, and models present."""
        model_ids = [m for cls in self.pipelines.values() for ids in cls.models.values() for m in ids]
        return messages.make(
            "welcome", server=f"splatsmith {__version__}", device=describe_device(self.device),
            pipelines={name: cls.describe() for name, cls in sorted(self.pipelines.items())},
            models=models_present(model_ids, self.models_dir), output_dir=str(self.store.root),
        )

    def _on_hello(self, ident: bytes, message: dict, req_id: str | None) -> None:
        log.info("hello from %s", message.get("client", "?"))
        self._reply(ident, dict(self.welcome(), req_id=req_id))

    def _on_ping(self, ident: bytes, message: dict, req_id: str | None) -> None:
        self._reply(ident, messages.make("pong", time=time.time(), req_id=req_id))

    def _on_submit(self, ident: bytes, message: dict, req_id: str | None) -> None:
        name = message["pipeline"]
        cls = self.pipelines.get(name)
        if cls is None:
            known = ", ".join(sorted(self.pipelines)) or "none"
            self._reply(ident, messages.error("unknown_pipeline", f"no pipeline {name!r} on this server; available: {known}", req_id=req_id))
            return
        inputs = message.get("inputs") or {}
        try:
            preset, params = cls.resolve(message.get("preset"), message.get("params") or {}, inputs)
        except ParamError as exc:
            self._reply(ident, messages.error("bad_params", str(exc), req_id=req_id))
            return
        seed = message.get("seed")
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
        job = self.store.create(name, preset, params, seed, message.get("label", ""), inputs)
        with self._lock:
            self._subscribers[job.job_id].add(ident)
            position = self.worker.queued() + (1 if self.worker.current is not None else 0)
            self._queue(ident, messages.make("accepted", job_id=job.job_id, position=position, req_id=req_id))
        self.worker.enqueue(job)

    def _job_or_error(self, ident: bytes, job_id: str, req_id: str | None) -> Job | None:
        job = self.store.get(job_id)
        if job is None:
            self._reply(ident, messages.error("unknown_job", f"no job {job_id!r} in {self.store.root}", job_id=job_id, req_id=req_id))
        return job

    def _on_cancel(self, ident: bytes, message: dict, req_id: str | None) -> None:
        job = self._job_or_error(ident, message["job_id"], req_id)
        if job is None:
            return
        with self._lock:
            self._subscribers[job.job_id].add(ident)
        if job.state in ("queued", "running"):
            self.worker.cancel(job)
        self._reply(ident, messages.make("status", jobs=[job.info()], req_id=req_id))

    def _on_status(self, ident: bytes, message: dict, req_id: str | None) -> None:
        if message.get("job_id"):
            job = self._job_or_error(ident, message["job_id"], req_id)
            if job is None:
                return
            jobs = [job]
        else:
            jobs = self.store.all()
        self._reply(ident, messages.make("status", jobs=[j.info() for j in jobs], req_id=req_id))

    def _on_fetch(self, ident: bytes, message: dict, req_id: str | None) -> None:
        job = self._job_or_error(ident, message["job_id"], req_id)
        if job is None:
            return
        if job.state == "done":
            reply = self.store.result_message(job, include_files=message.get("files", True))
        elif job.state in ("failed", "cancelled"):
            reply = messages.error(job.error_code or "failed", job.error_message or "the job failed", job_id=job.job_id)
        else:
            with self._lock:
                self._subscribers[job.job_id].add(ident)
            reply = messages.make("status", jobs=[job.info()])
        self._reply(ident, dict(reply, req_id=req_id))

    def _on_release(self, ident: bytes, message: dict, req_id: str | None) -> None:
        released = self.models.release()
        free_device_memory()
        self._reply(ident, messages.make("status", jobs=[], released=released, req_id=req_id))
