"""Jobs: their persistence on disk, the FIFO queue, and the dispatcher that hands them to the
executor's workers (the local worker process, or Ray actors). Imports neither torch, ray nor
any pipeline implementation: this is the server process's side.

Every job owns ``<output_dir>/<job_id>/`` with:

- ``request.json``: pipeline, preset, resolved parameters, seed, label, input shapes;
- ``inputs.npz``: the input arrays (``numpy.savez``; read back with ``allow_pickle=False``);
- ``state.json``: state, timestamps, error code and message, owner, earlier attempts lost with
  their worker (rewritten atomically);
- ``result.json`` + ``result.npz`` + the pipeline's files (GLB, PLY, PNG): the result;
- ``log.txt``: state changes, progress (at most once a second) and tracebacks.

A server restarted later lists every job from these folders; jobs that were queued or
running when it stopped are marked ``failed`` with the code ``interrupted``.

Failure rules of the dispatcher: every exception is caught per job (the thread never ends
before :meth:`Dispatcher.stop`); a job whose folder cannot be written fails with ``disk_full``
naming the folder; a worker process that dies (segfault, abort, SIGKILL) fails the running job
with ``worker_crashed`` and a new worker is started for the next job; a Ray worker that is lost
(its actor or node died) fails the attempt with ``worker_lost`` and the job runs once more.
"""
from __future__ import annotations

import collections
import errno
import json
import logging
import os
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from shared_protocol import messages

from .contracts import CancelToken, Result
from .pipelines.base import Pipeline
from .text import printable

log = logging.getLogger("splatsmith.jobs")

TERMINAL = ("done", "failed", "cancelled")

#: Called by the dispatcher to send a message to a job's subscribers:
#: ``post(job_id, key, message)``; ``key`` None means "deliver every one, in order", a string
#: means "latest wins per key".
Post = Callable[[str, "str | None", dict], None]


class DiskFullError(OSError):
    """A job folder could not be written because its disk is full (server code ``disk_full``)."""


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is an ``OSError`` for a full disk or an exceeded quota."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def write_failure(folder: Path, exc: OSError) -> tuple[str, str]:
    """(code, sentence) for a job whose folder could not be written: ``disk_full`` naming the
    folder, else ``internal``."""
    if is_disk_full(exc):
        return "disk_full", disk_full_message(folder)
    return "internal", f"cannot write {folder}: {exc}"


def disk_full_message(folder: Path | str) -> str:
    """The sentence for a full disk: which folder, and what to do."""
    return (f"the disk holding {folder} is full: free space there (or start the server with another "
            "--output-dir) and submit the job again")


@dataclass
class Job:
    """One job. ``inputs`` is only held in memory while the job is queued or running.

    ``owner`` is the CURVE public key (Z85 text) of the client that submitted it, or None on a
    server without CURVE; ``client`` is the ZeroMQ identity it was submitted from (quotas).
    """

    job_id: str
    pipeline: str
    preset: str
    params: dict[str, Any]
    seed: int
    dir: Path
    label: str = ""
    inputs: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    state: str = "queued"
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    error_code: str | None = None
    error_message: str | None = None
    files: list[str] = field(default_factory=list)
    owner: str | None = None
    client: bytes | None = field(default=None, repr=False)
    cancel: CancelToken = field(default_factory=CancelToken, repr=False)
    #: Earlier attempts that ended with their worker lost: code, text, worker, started, ended.
    attempts: list[dict] = field(default_factory=list)

    def info(self) -> dict:
        """The job as listed in ``status`` replies (no server paths, no owner key)."""
        return {
            "job_id": self.job_id,
            "pipeline": self.pipeline,
            "preset": self.preset,
            "seed": self.seed,
            "label": self.label,
            "state": self.state,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "files": list(self.files),
            "attempt": len(self.attempts) + 1,
        }


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def new_job_id() -> str:
    """A sortable, unique id: ``YYYYmmdd-HHMMSS-xxxxxx``."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def save_result(job_dir: Path, result: Result) -> list[str]:
    """Write ``result.json`` and ``result.npz`` into ``job_dir``; returns the result file names.

    Raises:
        RuntimeError: a result file is not a file inside ``job_dir``.
        OSError: the folder cannot be written (a full disk among others).
    """
    names = []
    for name, path in result.files.items():
        path = Path(path).resolve()
        if path.parent != job_dir.resolve() or not path.is_file():
            raise RuntimeError(f"pipeline result file {path} is not a file inside the job folder {job_dir}")
        names.append(path.name)
    np.savez(job_dir / "result.npz", **{k: np.ascontiguousarray(v) for k, v in result.arrays.items()})
    _write_json(job_dir / "result.json", {"files": names, "meta": result.meta, "arrays": sorted(result.arrays)})
    return names


class JobStore:
    """The jobs of one output folder, in memory and on disk. Thread-safe.

    Args:
        output_dir: the folder of job folders (created if missing).
        min_free_bytes: :meth:`create` refuses a job while the folder's disk has less free
            space than this (default 0: no check).
    """

    def __init__(self, output_dir: str | os.PathLike, min_free_bytes: int = 0):
        self.root = Path(output_dir).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.min_free_bytes = min_free_bytes
        self._jobs: dict[str, Job] = {}
        self._lock = threading.RLock()
        self._load()

    def _load(self) -> None:
        for state_file in sorted(self.root.glob("*/state.json")):
            try:
                data = json.loads(state_file.read_text())
                job = Job(
                    job_id=data["job_id"], pipeline=data["pipeline"], preset=data.get("preset", "default"),
                    params=data.get("params", {}), seed=int(data.get("seed", 0)), dir=state_file.parent,
                    label=data.get("label", ""), state=data["state"], created=data["created"],
                    started=data.get("started"), finished=data.get("finished"),
                    error_code=data.get("error_code"), error_message=data.get("error_message"),
                    files=list(data.get("files", [])), owner=data.get("owner"),
                    attempts=list(data.get("attempts", [])),
                )
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("skipping unreadable job folder %s: %s", state_file.parent, exc)
                continue
            if job.state not in TERMINAL:
                job.state = "failed"
                # The time it really ran: up to the last line its log received, not this restart.
                job.finished = _last_write(job.dir) if job.started else None
                job.error_code = "interrupted"
                job.error_message = "the server stopped while this job was queued or running; submit it again"
                try:
                    self.save_state(job)
                except OSError as exc:
                    log.warning("cannot mark %s interrupted: %s", job.dir, exc)
            self._jobs[job.job_id] = job

    def free_bytes(self) -> int:
        """Free space on the output folder's disk, bytes."""
        return shutil.disk_usage(self.root).free

    def create(self, pipeline: str, preset: str, params: dict, seed: int, label: str, inputs: dict[str, np.ndarray],
               owner: str | None = None, client: bytes | None = None) -> Job:
        """Create a job folder with request.json, inputs.npz and state.json.

        Raises:
            DiskFullError: the disk has less free space than ``min_free_bytes`` (nothing is
                created), or it filled while the folder was written (the folder is removed).
        """
        if self.min_free_bytes and self.free_bytes() < self.min_free_bytes:
            raise DiskFullError(errno.ENOSPC, (
                f"only {self.free_bytes() / 2**20:.0f} MiB are free on the disk holding {self.root}; the server "
                f"needs {self.min_free_bytes / 2**20:.0f} MiB to accept a job: free space there and submit again"))
        with self._lock:
            job_id = new_job_id()
            while job_id in self._jobs or (self.root / job_id).exists():
                job_id = new_job_id()
            job_dir = self.root / job_id
            job = Job(job_id, pipeline, preset, dict(params), seed, job_dir, label, dict(inputs), owner=owner, client=client)
            try:
                job_dir.mkdir(parents=True)
                _write_json(job_dir / "request.json", {
                    "pipeline": pipeline, "preset": preset, "params": params, "seed": seed, "label": label,
                    "inputs": {k: {"dtype": v.dtype.name, "shape": list(v.shape)} for k, v in inputs.items()},
                })
                if inputs:
                    np.savez(job_dir / "inputs.npz", **inputs)
                self.save_state(job)
            except OSError as exc:
                shutil.rmtree(job_dir, ignore_errors=True)
                if is_disk_full(exc):
                    raise DiskFullError(errno.ENOSPC, disk_full_message(self.root)) from exc
                raise
            self._jobs[job_id] = job
            return job

    def save_state(self, job: Job) -> None:
        """Rewrite ``state.json`` atomically. Raises OSError (a full disk among others)."""
        data = job.info()
        data["params"] = job.params
        data["owner"] = job.owner
        data["attempts"] = job.attempts
        _write_json(job.dir / "state.json", data)

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def all(self, limit: int = 200) -> list[Job]:
        """The newest ``limit`` jobs, oldest first."""
        with self._lock:
            jobs = sorted(self._jobs.values(), key=lambda j: (j.created, j.job_id))
        return jobs[-limit:]

    def append_log(self, job: Job, line: str) -> None:
        """Append a time-stamped line to the job's ``log.txt`` (control characters escaped)."""
        append_log(job.dir, line)

    def result_message(self, job: Job, include_files: bool = True, inline_limit: int | None = None) -> dict:
        """The ``result`` reply of a finished job, read from its folder.

        Args:
            include_files: put the result files in the message.
            inline_limit: files larger than this many bytes are left out of the message and
                listed in ``meta.file_sizes`` only (the client fetches them in chunks).
        """
        meta = json.loads((job.dir / "result.json").read_text())
        with np.load(job.dir / "result.npz", allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        sizes = {name: (job.dir / name).stat().st_size for name in meta["files"]}
        files = {}
        if include_files:
            files = {name: np.fromfile(job.dir / name, dtype=np.uint8) for name in meta["files"]
                     if inline_limit is None or sizes[name] <= inline_limit}
        return messages.make("result", job_id=job.job_id, arrays=arrays, files=files,
                             meta=dict(meta["meta"], files=meta["files"], file_sizes=sizes))

    def read_chunk(self, job: Job, name: str, offset: int, size: int) -> tuple[np.ndarray, int]:
        """``size`` bytes of result file ``name`` from ``offset`` (fewer at its end), and the
        file's total size.

        Raises:
            KeyError: ``name`` is not one of the job's result files.
        """
        if name not in job.files:
            raise KeyError(name)
        path = job.dir / name
        total = path.stat().st_size
        with open(path, "rb") as fh:
            fh.seek(min(offset, total))
            data = fh.read(max(0, min(size, total - offset)))
        return np.frombuffer(data, dtype=np.uint8), total


def append_log(job_dir: Path, line: str) -> None:
    """Append a time-stamped line to ``job_dir/log.txt``; control characters are escaped, so a
    label or client name cannot forge a line. Raises OSError."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    safe = "\n".join(printable(part) for part in line.split("\n"))  # tracebacks keep their lines
    with open(job_dir / "log.txt", "a", encoding="utf-8") as fh:
        fh.write(f"{stamp} {safe}\n")


def _last_write(job_dir: Path) -> float:
    """When the job folder last received a write (its newest file's mtime)."""
    times = [p.stat().st_mtime for p in job_dir.iterdir() if p.is_file()]
    return max(times) if times else time.time()


class QueueFull(Exception):
    """The queue or a client's quota is full (server code ``queue_full``)."""


class WorkerHandle(Protocol):
    """One place where jobs run (the local worker process, or one Ray actor).

    ``run`` blocks the dispatcher's thread for that job and never raises for what happens in
    the worker; its outcome is ``{"state": "done", "files": [...]}`` or ``{"state":
    "failed"|"cancelled", "code": ..., "text": ...}``; ``"requeue": True`` marks a worker that
    was lost under the job (the job may run again elsewhere)."""

    name: str

    def available(self) -> bool: ...
    def models(self) -> set[str]: ...
    def run(self, job: "Job", reference: str, should_kill: Callable[[], bool]) -> dict: ...
    def cancel(self) -> None: ...
    def describe_worker(self) -> dict: ...


class Executor(Protocol):
    """Where the dispatcher's jobs run: ``backend.worker.WorkerProcess`` (one local worker
    process) or ``backend.cluster.RayExecutor`` (Ray actors). ``workers()`` may grow while
    the server runs (a Ray cluster gaining GPUs)."""

    device: str
    warnings: list[str]
    fatal: str | None

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def kill(self) -> None: ...
    def workers(self) -> list[WorkerHandle]: ...
    def wait_ready(self, timeout: float | None = None) -> bool: ...
    def describe(self) -> str: ...
    def memory_free(self) -> int | None: ...
    def release(self, callback: Callable[[list[str]], None]) -> None: ...


#: How many times a job whose worker was lost (``worker_lost``) runs again.
RERUNS_AFTER_LOST_WORKER = 1


class Dispatcher(threading.Thread):
    """Hands queued jobs, in FIFO order, to the executor's free workers: one job per worker,
    as many at once as there are workers.

    Each job runs in a thread of its own that waits on ``worker.run``. Among free workers the
    one already holding the most of the job's models (``Pipeline.needed_models``) is chosen,
    so a GPU keeps its loaded teachers; the queue's order is never changed for it.

    Args:
        store: the job store.
        pipelines: name -> pipeline class (the worker imports ``cls.reference()``).
        executor: where jobs run (:class:`Executor`).
        post: delivers messages to subscribers (see :data:`Post`).
        on_done: called with each job that finished ``done`` (the server sends its result).
        max_queue: most jobs waiting (the running ones not counted).
        client_quota: most jobs one client may have queued or running.
        cancel_grace: seconds a cancelled job may take to stop before its worker is killed
            (the job still ends ``cancelled``; the worker is started again).
        stop_grace: the same when the server stops (the job ends ``interrupted``).
    """

    def __init__(self, store: JobStore, pipelines: dict[str, type[Pipeline]], executor: Executor, post: Post,
                 on_done: Callable[[Job], None], *, max_queue: int = 32, client_quota: int = 8,
                 cancel_grace: float = 10.0, stop_grace: float = 5.0):
        super().__init__(name="splatsmith-dispatcher", daemon=True)
        self.store, self.pipelines, self.executor, self.post, self.on_done = store, pipelines, executor, post, on_done
        self.max_queue, self.client_quota = max_queue, client_quota
        self.cancel_grace, self.stop_grace = cancel_grace, stop_grace
        self._queue: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        #: job id -> (job, the worker running it)
        self._running: dict[str, tuple[Job, WorkerHandle]] = {}
        self._cancel_asked: dict[str, float] = {}
        self._threads: list[threading.Thread] = []
        self.stopped = threading.Event()

    # ------------------------------------------------------------------ queue
    def enqueue(self, job: Job) -> int:
        """Queue a job; returns how many jobs are ahead of it (the running ones included)."""
        with self._cond:
            ahead = len(self._queue) + len(self._running)
            self._queue.append(job)
            self._cond.notify_all()
            return ahead

    def check_room(self, client: bytes | None) -> None:
        """Raise :class:`QueueFull` when the queue, or ``client``'s quota, has no room."""
        with self._cond:
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"the server's queue holds {len(self._queue)} jobs, its limit; submit again when "
                                "some have finished (see `splatsmith jobs`)")
            mine = sum(1 for j in [*self._queue, *(job for job, _ in self._running.values())] if j.client == client)
            if client is not None and mine >= self.client_quota:
                raise QueueFull(f"this client already has {mine} jobs queued or running, its quota; wait for one "
                                "to finish or cancel one")

    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    def running(self) -> dict[str, str]:
        """job id -> the name of the worker running it."""
        with self._cond:
            return {job_id: worker.name for job_id, (_, worker) in self._running.items()}

    def wake(self) -> None:
        """Look for free workers now (an executor calls it when a worker becomes ready)."""
        with self._cond:
            self._cond.notify_all()

    def cancel(self, job: Job) -> None:
        """Cancel a queued job at once, or signal a running one (it stops at its next check)."""
        with self._cond:
            if job in self._queue:
                self._queue.remove(job)
                self._end(job, "cancelled", "cancelled", "the job was cancelled before it started")
                return
            entry = self._running.get(job.job_id)
            if entry is not None and not job.cancel.cancelled:
                job.cancel.cancel()
                self._cancel_asked[job.job_id] = time.monotonic()
                entry[1].cancel()

    def stop(self, wait: bool = True) -> None:
        """Stop: running jobs are cancelled and marked ``interrupted`` (with the time they
        really ran), queued jobs stay queued on disk, the workers end."""
        with self._cond:
            self._stopping = True
            for job, worker in self._running.values():
                job.cancel.cancel()
                self._cancel_asked.setdefault(job.job_id, time.monotonic())
                worker.cancel()
            self._cond.notify_all()
        if wait:
            self.stopped.wait(self.stop_grace + 5.0)

    # ------------------------------------------------------------------ loop
    def _choose(self, job: Job, free: list[WorkerHandle]) -> WorkerHandle:
        """The free worker holding most of ``job``'s models (the first one on a tie)."""
        cls = self.pipelines.get(job.pipeline)
        wanted = set(cls.needed_models(job.preset, job.params)) if cls is not None else set()
        return max(free, key=lambda w: len(wanted & w.models()))

    def run(self) -> None:
        try:
            self.executor.start()
            while True:
                with self._cond:
                    free: list[WorkerHandle] = []
                    while not self._stopping:
                        if self._queue:
                            busy = {id(w) for _, w in self._running.values()}
                            free = [w for w in self.executor.workers() if id(w) not in busy and w.available()]
                            if free:
                                break
                        self._cond.wait(0.25)
                    if self._stopping:
                        break
                    job = self._queue.popleft()
                    worker = self._choose(job, free)
                    self._running[job.job_id] = (job, worker)
                    self._cancel_asked.pop(job.job_id, None)
                thread = threading.Thread(target=self._run_on, args=(job, worker), name=f"splatsmith-job-{job.job_id}",
                                          daemon=True)
                self._threads = [t for t in self._threads if t.is_alive()] + [thread]
                thread.start()
        finally:
            for thread in list(self._threads):
                thread.join(self.stop_grace + 5.0)
            try:
                self.executor.stop()
            finally:
                self.stopped.set()

    def _run_on(self, job: Job, worker: WorkerHandle) -> None:
        try:
            self._run_job(job, worker)
        except Exception as exc:  # the dispatcher must outlive any job
            log.exception("job %s: unexpected error in the dispatcher", job.job_id)
            if job.state not in TERMINAL:
                self._end(job, "failed", "internal", f"{type(exc).__name__}: {exc}")
        finally:
            with self._cond:
                self._running.pop(job.job_id, None)
                self._cancel_asked.pop(job.job_id, None)
                self._cond.notify_all()

    def _end(self, job: Job, state: str, code: str | None, text: str | None) -> None:
        """Record the end of a job in memory, on disk (when the disk allows) and to clients."""
        job.state, job.finished = state, time.time()
        job.error_code, job.error_message = code, text
        job.inputs = {}
        try:
            self.store.save_state(job)
            self.store.append_log(job, f"state {state}" + (f" [{code}] {text}" if code else ""))
        except OSError as exc:
            log.error("job %s: cannot write its state (%s)", job.job_id, exc)
            if code != "disk_full":
                code, text = write_failure(job.dir, exc)
                job.state, job.error_code, job.error_message = "failed", code, text
        if code is not None:
            self.post(job.job_id, None, messages.error(code, text or code, job_id=job.job_id))

    def _run_job(self, job: Job, worker: WorkerHandle) -> None:
        job.state, job.started = "running", time.time()
        job.error_code = job.error_message = None
        try:
            self.store.save_state(job)
            self.store.append_log(job, f"state running: {job.pipeline} preset={job.preset} seed={job.seed} "
                                       f"on {worker.name}")
        except OSError as exc:
            self._end(job, "failed", *write_failure(job.dir, exc))
            return
        self.post(job.job_id, None, messages.make("status", job_id=job.job_id, jobs=[job.info()]))
        cls = self.pipelines[job.pipeline]
        outcome = worker.run(job, cls.reference(), lambda: self._should_kill(job))
        if outcome["state"] == "done":
            job.files = outcome.get("files", [])
            self._end(job, "done", None, None)
            if job.state == "done":
                try:
                    self.on_done(job)
                except Exception:  # noqa: BLE001 - delivery problems must not fail a finished job
                    log.exception("job %s: cannot deliver its result", job.job_id)
            return
        code, text = outcome.get("code") or "failed", outcome.get("text") or "the job failed"
        if code == "cancelled" and self._stopping:
            code, text = "interrupted", "the server stopped while this job ran; submit it again"
        if outcome.get("requeue") and not job.cancel.cancelled and self._requeue(job, worker, code, text):
            return
        self._end(job, "cancelled" if code == "cancelled" else "failed", code, text)

    def _requeue(self, job: Job, worker: WorkerHandle, code: str, text: str) -> bool:
        """Put a job whose worker was lost back at the head of the queue, once; its subscribers
        get a ``status`` with the state ``queued`` and the lost attempt's code and sentence.
        False when it already ran again (it then fails with ``code``)."""
        if len(job.attempts) >= RERUNS_AFTER_LOST_WORKER:
            return False
        job.attempts.append({"code": code, "text": text, "worker": worker.name, "started": job.started,
                             "ended": time.time()})
        job.state, job.started = "queued", None
        job.error_code, job.error_message = code, f"{text} It runs again (attempt {len(job.attempts) + 1})."
        try:
            self.store.save_state(job)
            self.store.append_log(job, f"[{code}] {text}; queued again")
        except OSError as exc:
            log.error("job %s: cannot write its state (%s)", job.job_id, exc)
        self.post(job.job_id, None, messages.make("status", job_id=job.job_id, jobs=[job.info()]))
        with self._cond:
            if self._stopping:
                return False
            self._queue.appendleft(job)
            self._cond.notify_all()
        return True

    def _should_kill(self, job: Job) -> bool:
        """Whether ``job``'s worker must be killed: a cancel (or stop) it ignored for longer
        than its grace."""
        asked = self._cancel_asked.get(job.job_id)
        if asked is None:
            return False
        grace = self.stop_grace if self._stopping else self.cancel_grace
        return time.monotonic() - asked > grace
