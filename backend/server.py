"""The backend's ZeroMQ ROUTER loop: the wire, the queue and the job folders.

One thread (the one that calls :meth:`Server.serve_forever`) owns the ROUTER socket: it decodes
requests, answers them, and flushes each client's outbox. Jobs run in a separate worker
process (``backend.worker``), handed to it one at a time by the dispatcher thread
(``jobs.Dispatcher``); this process never imports torch, so nothing a pipeline does in native
code can take the server down.

Delivery rules:

- Outboxes are per client identity. Ordinary messages (accepted, status, result, error) are
  delivered in order; progress and each preview kind occupy a latest-wins slot per job, so a
  client that reads slowly gets the newest state and never a backlog, and never slows a job.
- A client's outbox is bounded: at most ``client_max_messages`` messages and
  ``client_max_bytes`` bytes wait for it. A result is in flight at most once per client and
  job (a repeated ``fetch`` while it waits adds nothing); result files larger than
  ``inline_file_bytes`` are not put in the result but listed in its ``meta.file_sizes``, and
  the client asks for them in chunks (``chunk`` requests, a few in flight at a time: the
  credit-based flow control of the ZeroMQ guide's file-transfer pattern). Past the bounds a
  client gets the error ``busy`` (or nothing more, when even that would not fit).
- Sends never block: the ROUTER has a small send high-water mark and ``ROUTER_MANDATORY``;
  a full pipe leaves messages in the outbox for the next round, a vanished client is dropped
  (its jobs go on; their results stay on disk for ``fetch``).
- Any undecodable or invalid request gets an ``error`` reply with a stable code; the loop
  keeps serving.

Security: binding a non-loopback address requires CURVE keys (``zmq.auth``) or ``insecure``.
With CURVE, a job belongs to the key that submitted it: other keys neither list, fetch nor
cancel it, except the admin keys. File-path parameters (the oracle's mesh) are refused unless
``allow_oracle`` names a folder, and then only files inside it are accepted. No reply carries
an absolute path of the server.
"""
from __future__ import annotations

import collections
import ipaddress
import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from shared_protocol import messages
from shared_protocol.codec import DEFAULT_LIMITS, Limits, ProtocolError, decode, encode
from shared_protocol.endpoints import normalize_endpoint

from . import __version__
from .jobs import DiskFullError, Dispatcher, Job, JobStore, QueueFull
from .models import models_present
from .pipelines.base import REGISTRY, ParamError, Pipeline
from .text import printable
from .worker import WorkerProcess

log = logging.getLogger("splatsmith.server")

DEFAULT_BIND = "tcp://127.0.0.1:5555"
_MiB = 1 << 20


class ServerConfigError(RuntimeError):
    """The server cannot start as configured (e.g. a public bind without keys)."""


@dataclass(frozen=True)
class CurveConfig:
    """Server CURVE keys: its own key pair, the folder of authorised client public keys, and
    the public keys (Z85 text) of admins, who may see and touch every job."""

    server_public: bytes
    server_secret: bytes
    clients_dir: Path
    admins: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_dir(cls, curve_dir: str | os.PathLike) -> "CurveConfig":
        """Load ``server.key_secret``, the ``clients/`` folder of ``*.key`` files and the
        optional ``admins/`` folder of ``*.key`` files from ``curve_dir`` (the layout
        ``splatsmith keygen`` writes).

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
        admins = set()
        if (root / "admins").is_dir():
            for key_file in sorted((root / "admins").glob("*.key")):
                admins.add(zmq.auth.load_certificate(str(key_file))[0].decode("ascii"))
        return cls(public, secret_key, clients, frozenset(admins))


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


def _message_bytes(value: Any) -> int:
    """Approximate size of a message: its arrays' bytes plus a small allowance per field."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, dict):
        return 16 + sum(_message_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return 16 + sum(_message_bytes(v) for v in value)
    if isinstance(value, (str, bytes)):
        return len(value)
    return 8


class _Outbox:
    """Pending messages of one client: ordered; latest-wins entries keep their slot."""

    def __init__(self) -> None:
        self.items: collections.OrderedDict[Any, tuple[dict, int]] = collections.OrderedDict()
        self.bytes = 0


class Server:
    """The Splatsmith backend server.

    Args:
        bind: ZeroMQ endpoint to bind (default loopback ``tcp://127.0.0.1:5555``; ``HOST:PORT``
            is accepted).
        output_dir: where job folders are written.
        device: ``"auto"``, ``"cuda"`` or ``"cpu"``, resolved by the worker process.
        pipelines: name -> Pipeline class (default: the global registry).
        curve: CURVE keys; required for a non-loopback bind unless ``insecure``.
        insecure: allow a non-loopback bind without encryption (logs a warning).
        limits: decoder limits for requests.
        models_dir: an extra folder of model weights.
        model_capacity: how many models stay loaded between jobs.
        max_queue: most jobs waiting; more are answered ``queue_full``.
        client_quota: most jobs one client may have queued or running.
        min_free_mb: a submit is refused (``disk_full``) while the output folder's disk has less
            free space, MiB.
        allow_oracle: the folder whose files path parameters may name; None refuses them.
        client_max_bytes, client_max_messages: bounds of one client's outbox.
        inline_file_bytes: result files up to this size travel inside the result; larger
            ones in chunks.
        cancel_grace: seconds a cancelled job may run on before its worker is killed.
        executor: ``"local"`` (one worker process, the default) or ``"ray"`` (Ray actors; needs
            the ``cluster`` extra).
        ray: the Ray executor's settings (``backend.cluster.RayOptions``); None: its defaults.

    Raises:
        ServerConfigError: a bad endpoint, a non-loopback bind without keys or ``insecure``, or
            an address that cannot be bound, or ``executor="ray"`` without Ray installed.
    """

    def __init__(
        self,
        bind: str = DEFAULT_BIND,
        output_dir: str | os.PathLike = "splatsmith-output",
        device: str = "auto",
        *,
        pipelines: dict[str, type[Pipeline]] | None = None,
        curve: CurveConfig | None = None,
        insecure: bool = False,
        limits: Limits = DEFAULT_LIMITS,
        models_dir: str | os.PathLike | None = None,
        model_capacity: int = 2,
        send_hwm: int = 4,
        max_queue: int = 32,
        client_quota: int = 8,
        min_free_mb: float = 256,
        allow_oracle: str | os.PathLike | None = None,
        client_max_bytes: int = 64 * _MiB,
        client_max_messages: int = 1000,
        inline_file_bytes: int = 1 * _MiB,
        cancel_grace: float = 10.0,
        executor: str = "local",
        ray: Any = None,
    ):
        try:
            bind = normalize_endpoint(bind, bind=True)
        except ValueError as exc:
            raise ServerConfigError(str(exc)) from None
        if not is_loopback(bind) and curve is None and not insecure:
            raise ServerConfigError(
                f"refusing to bind {bind} without encryption: it is reachable from other machines. "
                "Give CURVE keys (--curve-dir, see `splatsmith keygen`) or pass --insecure on a trusted network."
            )
        if not is_loopback(bind) and curve is None:
            log.warning("INSECURE: %s accepts unauthenticated, unencrypted connections from the network", bind)
        self.bind = bind
        self.limits = limits
        self.models_dir = models_dir
        self.pipelines = dict(REGISTRY if pipelines is None else pipelines)
        self.store = JobStore(output_dir, min_free_bytes=int(min_free_mb * _MiB))
        self.curve = curve
        self.allow_oracle = Path(allow_oracle).expanduser().resolve() if allow_oracle else None
        self.client_max_bytes, self.client_max_messages = client_max_bytes, client_max_messages
        self.inline_file_bytes = inline_file_bytes
        self._ctx = zmq.Context()
        self._auth: ThreadAuthenticator | None = None
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._sock.setsockopt(zmq.SNDHWM, send_hwm)
        self._sock.setsockopt(zmq.RCVHWM, 1000)
        # Generous hard cap per frame; the decoder enforces the configured limits with a reply.
        self._sock.setsockopt(zmq.MAXMSGSIZE, 2 * limits.max_total_bytes + (1 << 20))
        # No ZMTP heartbeats (shared_protocol.client.SOCKET_OPTIONS says why: libzmq issue #3937):
        # a peer whose receive queue is full cannot answer them, and the reconnect they force
        # aborts that peer's process. Dead peers are found by TCP keepalive (the kernel probes the
        # connection, whatever the peer's queue) and by ROUTER_MANDATORY sends.
        self._sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
        self._sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, 60)
        self._sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, 10)
        self._sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, 6)
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
        # A self-pipe wakes the loop when another thread posts (zmq sockets are single-threaded).
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._lock = threading.Lock()
        self._outboxes: dict[bytes, _Outbox] = {}
        self._subscribers: dict[str, set[bytes]] = collections.defaultdict(set)
        self._keys = itertools.count()
        self._stop = threading.Event()
        self.stats: collections.Counter = collections.Counter()
        self.executor = self._make_executor(executor, ray, device, None if models_dir is None else str(models_dir),
                                            model_capacity)
        self.dispatcher = Dispatcher(self.store, self.pipelines, self.executor, self._post, self._deliver_result,
                                     max_queue=max_queue, client_quota=client_quota, cancel_grace=cancel_grace)
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._dispatcher_started = False

    def _make_executor(self, kind: str, ray: Any, device: str, models_dir: str | None, capacity: int):
        if kind == "local":
            return WorkerProcess(self._post, device, models_dir, capacity)
        if kind != "ray":
            self._close_sockets()
            raise ServerConfigError(f"unknown executor {kind!r}; use local or ray")
        try:
            from .cluster import RayExecutor, RayOptions
        except ImportError as exc:
            self._close_sockets()
            raise ServerConfigError(f"the ray executor needs Ray ({exc}): pip install 'splatsmith[cluster]'") from None
        return RayExecutor(self._post, device, models_dir, capacity, ray or RayOptions(),
                           on_change=lambda: self.dispatcher.wake(), job_root=self.store.root)

    def workers(self) -> list[dict]:
        """Where jobs run, for the welcome and ``splatsmith jobs``: name, node, device, state
        (``starting``, ``idle``, ``busy``, ``lost``, ``failed``), the running job, models held."""
        running = {worker: job_id for job_id, worker in self.dispatcher.running().items()}
        out = []
        for worker in self.executor.workers():
            info = dict(worker.describe_worker())
            if worker.name in running:
                info["state"], info["job_id"] = "busy", running[worker.name]
            out.append(info)
        return out

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "Server":
        """Serve in a background thread (tests, embedding). Returns self."""
        self._thread = threading.Thread(target=self.serve_forever, name="splatsmith-server", daemon=True)
        self._thread.start()
        return self

    def _start_dispatcher(self) -> None:
        """Start the dispatcher thread (which starts the executor's workers) once, even when the
        serving thread and ``wait_worker`` ask at the same time."""
        with self._start_lock:
            if not self._dispatcher_started:
                self._dispatcher_started = True
                self.dispatcher.start()

    def serve_forever(self) -> None:
        """Run the ROUTER loop until :meth:`stop` (or :meth:`request_stop`)."""
        self._start_dispatcher()
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        log.info("serving on %s (output %s)", self.endpoint, self.store.root)
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
            self.dispatcher.stop(wait=True)
            self._flush()
            self._close_sockets()

    def wait_worker(self, timeout: float | None = None) -> bool:
        """Start the dispatcher if needed and wait until the worker process is ready; False
        (with ``executor.fatal`` saying why) when it could not start."""
        self._start_dispatcher()
        return self.executor.wait_ready(600.0 if timeout is None else timeout)

    def request_stop(self) -> None:
        """Ask the loop to stop (safe from a signal handler): the running job is cancelled and
        marked ``interrupted``; :meth:`serve_forever` returns once the worker has ended."""
        self._stop.set()
        self._wake()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop serving; a running job is cancelled and marked interrupted (its folder stays)."""
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout)
        else:
            self.dispatcher.stop(wait=True)

    def _close_sockets(self) -> None:
        self._sock.close(0)
        for fd in (getattr(self, "_wake_r", None), getattr(self, "_wake_w", None)):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._wake_r = self._wake_w = None
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()

    # ------------------------------------------------------------------ delivery
    def _post(self, job_id: str, key: str | None, message: dict) -> None:
        """Queue ``message`` for every subscriber of ``job_id`` (called from any thread)."""
        with self._lock:
            for ident in self._subscribers.get(job_id, ()):
                self._queue(ident, message, None if key is None else (job_id, key))
        self._wake()

    def _deliver_result(self, job: Job) -> None:
        """Send a finished job's result to its subscribers (read from disk once)."""
        with self._lock:
            subscribers = list(self._subscribers.get(job.job_id, ()))
        if not subscribers:
            return
        message = self.store.result_message(job, include_files=True, inline_limit=self.inline_file_bytes)
        with self._lock:
            for ident in subscribers:
                self._queue(ident, message, ("result", job.job_id))
        self._wake()

    def _queue(self, ident: bytes, message: dict, slot: Any = None) -> bool:
        """Put a message in a client's outbox (lock held). Returns False when the outbox is
        over its bounds: then a small ``busy`` error takes its place if that still fits."""
        outbox = self._outboxes.setdefault(ident, _Outbox())
        size = _message_bytes(message)
        replaced = outbox.items.get(slot) if slot is not None else None
        held = outbox.bytes - (replaced[1] if replaced else 0)
        if replaced is None and (len(outbox.items) >= self.client_max_messages or held + size > self.client_max_bytes):
            self.stats["refused_replies"] += 1
            if size > 4096 and len(outbox.items) < self.client_max_messages:
                busy = messages.error("busy", "this client has too many unread replies waiting; read them, then ask again",
                                      job_id=message.get("job_id"), req_id=message.get("req_id"))
                outbox.items[("seq", next(self._keys))] = (busy, 256)
                outbox.bytes += 256
            return False
        if slot is None:
            slot = ("seq", next(self._keys))
        elif replaced is not None:
            self.stats["superseded"] += 1
        outbox.items[slot] = (message, size)
        outbox.bytes = held + size
        return True

    def _waiting(self, ident: bytes, slot: Any) -> bool:
        """Whether ``slot`` already waits unsent in ``ident``'s outbox (a repeated request then
        adds nothing)."""
        with self._lock:
            outbox = self._outboxes.get(ident)
            return outbox is not None and slot in outbox.items

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"!")
        except (BlockingIOError, OSError, TypeError):
            pass  # the pipe is full (a wake-up is pending) or the server is closing

    def _reply(self, ident: bytes, message: dict, slot: Any = None) -> None:
        with self._lock:
            self._queue(ident, message, slot)

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
                    slot, (message, size) = next(iter(outbox.items.items()))
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
                except ProtocolError:
                    log.exception("a reply could not be encoded; dropped")
                with self._lock:
                    entry = outbox.items.get(slot)
                    if entry is not None and entry[0] is message:
                        del outbox.items[slot]
                        outbox.bytes -= size
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
            owner = body[0].get("User-Id") if self.curve is not None and body else None
        except (zmq.ZMQError, AttributeError):
            owner = None
        try:
            message = decode(body, self.limits)
            req_id = message.get("req_id") if isinstance(message.get("req_id"), str) else None
            messages.validate(message, "request")
        except ProtocolError as exc:
            self.stats["bad_requests"] += 1
            log.info("bad request: %s", printable(exc, 300))
            self._reply(ident, messages.error(exc.code, exc.message, req_id=req_id if _is_id(req_id) else None))
            return
        try:
            handler = getattr(self, "_on_" + message["type"])
            handler(ident, message, req_id, owner)
        except Exception as exc:  # never let one request stop the loop
            log.exception("error while handling %s", message["type"])
            self._reply(ident, messages.error("internal", f"{type(exc).__name__}: {exc}", req_id=req_id))

    def welcome(self) -> dict:
        """The ``welcome`` message: server version, device, pipelines, and models present
        (no server paths)."""
        model_ids = [m for cls in self.pipelines.values() for ids in cls.models.values() for m in ids]
        return messages.make(
            "welcome", server=f"splatsmith {__version__}", device=self.executor.describe(),
            pipelines={name: cls.describe() for name, cls in sorted(self.pipelines.items())},
            models=models_present(model_ids, self.models_dir), warnings=list(self.executor.warnings),
            workers=self.workers(),
        )

    def _on_hello(self, ident: bytes, message: dict, req_id: str | None, owner: str | None) -> None:
        log.info("hello from %s", printable(message.get("client", "?"), 128))
        self._reply(ident, dict(self.welcome(), req_id=req_id))

    def _on_ping(self, ident: bytes, message: dict, req_id: str | None, owner: str | None) -> None:
        self._reply(ident, messages.make("pong", time=time.time(), req_id=req_id))

    def _check_paths(self, cls: type[Pipeline], params: dict) -> None:
        """Refuse path parameters unless ``allow_oracle`` holds them (same words whether the
        file exists or not). Rewrites accepted paths to their resolved form."""
        for name, spec in cls.params.items():
            value = params.get(name)
            if not spec.path or not value:
                continue
            refusal = (f"parameter {name!r} names a file on the server, which this server does not accept from "
                       "clients" + (" outside the folder it was started with (--allow-oracle DIR)" if self.allow_oracle
                                    else "; start it with --allow-oracle DIR to allow files inside DIR"))
            if self.allow_oracle is None:
                raise ParamError(refusal)
            candidate = Path(value).expanduser()
            if not candidate.is_absolute():
                candidate = self.allow_oracle / candidate
            resolved = Path(os.path.realpath(candidate))  # follows every symlink
            if resolved != self.allow_oracle and self.allow_oracle not in resolved.parents:
                raise ParamError(refusal)
            params[name] = str(resolved)

    def _check_memory(self, cls: type[Pipeline], params: dict, inputs: dict) -> None:
        estimate = cls.estimate_memory(params, inputs)
        free = self.executor.memory_free()
        if not estimate or free is None:
            return
        total = sum(estimate.values())
        if total > free:
            biggest = max(estimate, key=estimate.get)
            raise _TooLarge(f"this job needs about {total / 2**30:.1f} GiB on the {self.executor.device}, mostly for "
                            f"{biggest!r} ({estimate[biggest] / 2**30:.1f} GiB), but {free / 2**30:.1f} GiB are free: "
                            f"lower {biggest!r} or use a smaller preset")

    def _on_submit(self, ident: bytes, message: dict, req_id: str | None, owner: str | None) -> None:
        name = message["pipeline"]
        cls = self.pipelines.get(name)
        if cls is None:
            known = ", ".join(sorted(self.pipelines)) or "none"
            self._reply(ident, messages.error("unknown_pipeline", f"no pipeline {printable(name)!r} on this server; "
                                                                  f"available: {known}", req_id=req_id))
            return
        inputs = message.get("inputs") or {}
        try:
            preset, params = cls.resolve(message.get("preset"), message.get("params") or {}, inputs)
            self._check_paths(cls, params)
            self._check_memory(cls, params, inputs)
            self.dispatcher.check_room(ident)
        except ParamError as exc:
            self._reply(ident, messages.error("bad_params", str(exc), req_id=req_id))
            return
        except _TooLarge as exc:
            self._reply(ident, messages.error("too_large", str(exc), req_id=req_id))
            return
        except QueueFull as exc:
            self._reply(ident, messages.error("queue_full", str(exc), req_id=req_id))
            return
        seed = message.get("seed")
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
        try:
            job = self.store.create(name, preset, params, seed, message.get("label", ""), inputs, owner=owner, client=ident)
        except DiskFullError as exc:
            self._reply(ident, messages.error("disk_full", exc.strerror or str(exc), req_id=req_id))
            return
        except OSError as exc:
            self._reply(ident, messages.error("internal", f"cannot create the job folder: {exc}", req_id=req_id))
            return
        with self._lock:
            self._subscribers[job.job_id].add(ident)
            position = self.dispatcher.queued() + len(self.dispatcher.running())
            self._queue(ident, messages.make("accepted", job_id=job.job_id, position=position, req_id=req_id))
        self.dispatcher.enqueue(job)

    def _visible(self, job: Job, owner: str | None) -> bool:
        """Whether the client with CURVE key ``owner`` may see ``job`` (always without CURVE)."""
        if self.curve is None or job.owner is None:
            return True
        return owner == job.owner or owner in self.curve.admins

    def _job_or_error(self, ident: bytes, job_id: str, req_id: str | None, owner: str | None) -> Job | None:
        job = self.store.get(job_id)
        if job is None or not self._visible(job, owner):
            self._reply(ident, messages.error("unknown_job", f"no job {job_id!r} on this server", job_id=job_id,
                                              req_id=req_id))
            return None
        return job

    def _on_cancel(self, ident: bytes, message: dict, req_id: str | None, owner: str | None) -> None:
        job = self._job_or_error(ident, message["job_id"], req_id, owner)
        if job is None:
            return
        with self._lock:
            self._subscribers[job.job_id].add(ident)
        if job.state in ("queued", "running"):
            self.dispatcher.cancel(job)
        self._reply(ident, messages.make("status", job_id=job.job_id, jobs=[job.info()], req_id=req_id))

    def _on_status(self, ident: bytes, message: dict, req_id: str | None, owner: str | None) -> None:
        if message.get("job_id"):
            job = self._job_or_error(ident, message["job_id"], req_id, owner)
            if job is None:
                return
            reply = messages.make("status", job_id=job.job_id, jobs=[job.info()], req_id=req_id)
        else:
            reply = messages.make("status", jobs=[j.info() for j in self.store.all() if self._visible(j, owner)],
                                  req_id=req_id)
        self._reply(ident, reply)

    def _on_fetch(self, ident: bytes, message: dict, req_id: str | None, owner: str | None) -> None:
        job = self._job_or_error(ident, message["job_id"], req_id, owner)
        if job is None:
            return
        if job.state == "done":
            slot = ("result", job.job_id)
            if self._waiting(ident, slot):  # one result per client and job
                self.stats["coalesced_fetches"] += 1
                return
            try:
                reply = self.store.result_message(job, include_files=message.get("files", True),
                                                  inline_limit=self.inline_file_bytes)
            except OSError as exc:
                reply = messages.error("failed", f"the results of job {job.job_id} cannot be read on the server: "
                                                 f"{exc.strerror or exc}", job_id=job.job_id)
                slot = None
            self._reply(ident, dict(reply, req_id=req_id), slot)
        elif job.state in ("failed", "cancelled"):
            self._reply(ident, dict(messages.error(job.error_code or "failed", job.error_message or "the job failed",
                                                   job_id=job.job_id), req_id=req_id))
        else:
            with self._lock:
                self._subscribers[job.job_id].add(ident)
            self._reply(ident, messages.make("status", job_id=job.job_id, jobs=[job.info()], req_id=req_id))

    def _on_chunk(self, ident: bytes, message: dict, req_id: str | None, owner: str | None) -> None:
        job = self._job_or_error(ident, message["job_id"], req_id, owner)
        if job is None:
            return
        slot = ("chunk", job.job_id, message["name"], message["offset"], message["size"])
        if self._waiting(ident, slot):
            self.stats["coalesced_chunks"] += 1
            return
        try:
            if job.state != "done":
                raise KeyError(message["name"])
            data, total = self.store.read_chunk(job, message["name"], message["offset"], message["size"])
        except KeyError:
            self._reply(ident, messages.error("bad_field", f"job {job.job_id} has no result file "
                                                           f"{printable(message['name'])!r}", job_id=job.job_id,
                                              req_id=req_id))
            return
        except OSError as exc:
            self._reply(ident, messages.error("failed", f"cannot read {message['name']!r}: {exc.strerror or exc}",
                                              job_id=job.job_id, req_id=req_id))
            return
        self._reply(ident, messages.make("chunk", job_id=job.job_id, name=message["name"], offset=message["offset"],
                                         total=total, data={"bytes": data}, req_id=req_id), slot)

    def _on_release(self, ident: bytes, message: dict, req_id: str | None, owner: str | None) -> None:
        def done(released: list[str]) -> None:
            self._reply(ident, messages.make("status", jobs=[], released=released, req_id=req_id))
            self._wake()

        self.executor.release(done)


class _TooLarge(Exception):
    """A job would not fit in the device's free memory (code ``too_large``)."""


def _is_id(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 64 and all(c.isalnum() or c in "-_." for c in value)
