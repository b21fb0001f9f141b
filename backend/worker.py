"""The worker process: where pipelines run, apart from the server.

A pipeline can crash in native code (a segfault in a CUDA kernel or in torch's CPU
``grid_sample``, an abort in a C++ library) or be killed by the kernel's OOM killer. Run in the
server's process, that ends the server; run here, it costs one job: the server's
:class:`WorkerProcess` sees the process end, fails the running job with ``worker_crashed``,
and starts a new worker for the next job.

Two one-way pipes connect the two sides (``multiprocessing`` with the ``spawn`` start method,
so the server, which holds ZeroMQ sockets and threads, is never forked):

- server -> worker: ``("run", spec)``, ``("release",)``, ``("stop",)``;
- worker -> server: ``("ready", info)``, ``("fatal", text)``, ``("post", job_id, key, message)``,
  ``("outcome", outcome)``, ``("released", names)``, ``("memory", info)``, ``("warning", text)``.

Cancellation is a shared ``multiprocessing.Event``: the job sees it at its next
``cancel.check()`` without waiting for the pipe. The worker sends through a thread with
latest-wins slots (progress, each preview kind), so a slow server never slows a step and
never receives a backlog. The model cache lives here and survives between jobs. Results are
written to the job folder by the worker; only their names cross the pipe.

This module imports torch only inside the worker process (:func:`worker_main`) and in
:func:`run_local` (the CLI's in-process runs).
"""
from __future__ import annotations

import collections
import itertools
import logging
import multiprocessing as mp
import os
import queue
import random
import signal
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

from shared_protocol import messages

from .jobs import Job, JobStore, append_log, disk_full_message, is_disk_full, save_result
from .contracts import CancelToken, Emitter, JobCancelled, JobRequest, ParamError, Result
from .pipelines.base import Pipeline, load_reference

log = logging.getLogger("splatsmith.worker")


# ---------------------------------------------------------------------- shared helpers
def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (a job's reproducibility)."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def host_memory_available() -> int:
    """Memory the host can give a new allocation without swapping, bytes (``MemAvailable`` of
    ``/proc/meminfo``; free pages elsewhere)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def failure(exc: BaseException, device: str, job_dir: Path) -> tuple[str, str]:
    """(code, sentence) for an exception that ended a job (see ``messages.ERROR_CODES``)."""
    from .device import is_out_of_memory
    from .models import ModelMissingError

    if isinstance(exc, (JobCancelled, KeyboardInterrupt)):
        return "cancelled", "the job was cancelled"
    from .geometry.export import MeshFileError
    from .images import ImageFileError, MaskError

    if isinstance(exc, (ParamError, ImageFileError, MeshFileError, MaskError)):
        return "bad_params", str(exc)
    if isinstance(exc, ModelMissingError):
        return "model_missing", str(exc)
    if is_disk_full(exc):
        return "disk_full", disk_full_message(job_dir)
    if is_out_of_memory(exc):
        return "out_of_memory", (f"the {device} ran out of memory ({str(exc)[:300]}). Try a smaller preset or "
                                 "resolution, or free memory held by other programs; the server is ready for the next job.")
    return "failed", f"{type(exc).__name__}: {exc}"


def describe_exit(exitcode: int | None) -> str:
    """A sentence for a worker process that ended on its own."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        what = {"SIGSEGV": "a crash in native code", "SIGABRT": "an abort in native code",
                "SIGKILL": "killed, e.g. by the system's out-of-memory killer"}.get(name, "a signal")
        cause = f"was ended by {name} ({what})"
    else:
        cause = f"exited with code {exitcode}"
    return (f"the worker process running this job {cause}; the server started a new worker and goes on with the "
            "queue. Submit the job again; if it fails the same way, try another preset or report it with its log.txt")


# ---------------------------------------------------------------------- worker side
class LatestWins:
    """A worker's outgoing events: in order, except that an event with a key replaces the
    untaken one with the same key (progress, each preview kind), so a slow reader gets the
    newest state and never a backlog. ``put`` never blocks: the job never waits for it."""

    def __init__(self) -> None:
        self._items: collections.OrderedDict[Any, tuple] = collections.OrderedDict()
        self._cond = threading.Condition()
        self._busy = False  # an event was taken and is being delivered
        self._seq = itertools.count()

    def put(self, event: tuple, key: Any = None) -> None:
        with self._cond:
            self._items[("seq", next(self._seq)) if key is None else key] = event
            self._cond.notify_all()

    def take(self) -> tuple:
        """The next event (waits for one); call :meth:`delivered` once it is sent."""
        with self._cond:
            while not self._items:
                self._cond.wait()
            self._busy = True
            return self._items.popitem(last=False)[1]

    def take_all(self, timeout: float) -> list[tuple]:
        """Every waiting event, in order, waiting up to ``timeout`` seconds for the first
        ([] when none came)."""
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            events = list(self._items.values())
            self._items.clear()
            return events

    def delivered(self) -> None:
        with self._cond:
            self._busy = False
            self._cond.notify_all()

    def wait_delivered(self, timeout: float, give_up: Callable[[], bool]) -> None:
        """Wait up to ``timeout`` seconds until every event was taken and delivered, or until
        ``give_up()`` is true (checked every 0.05 s)."""
        end = time.monotonic() + timeout
        with self._cond:
            while (self._items or self._busy) and not give_up() and time.monotonic() < end:
                self._cond.wait(0.05)


class _Sender(threading.Thread):
    """Sends a worker process's events to the server through its pipe, from a
    :class:`LatestWins` buffer."""

    def __init__(self, conn) -> None:
        super().__init__(name="splatsmith-worker-sender", daemon=True)
        self.conn = conn
        self.events = LatestWins()
        self.broken = False

    def put(self, event: tuple, key: Any = None) -> None:
        self.events.put(event, key)

    def run(self) -> None:
        while True:
            event = self.events.take()
            try:
                self.conn.send(event)
            except (OSError, ValueError):  # the server is gone
                self.broken = True
                return
            finally:
                self.events.delivered()

    def flush(self, timeout: float) -> None:
        self.events.wait_delivered(timeout, lambda: self.broken)


class WorkerEmitter(Emitter):
    """Streams a running job's progress and previews to the server.

    Progress is throttled to at most ``max_progress_hz`` messages a second (the last step of a
    stage always goes out); previews are latest-wins per kind. Progress reaches ``log.txt`` at
    most once a second.
    """

    def __init__(self, job_id: str, job_dir: Path, send: Callable[[tuple, Any], None], max_progress_hz: float = 10.0,
                 log_line: Callable[[str], None] | None = None):
        super().__init__()
        self.job_id, self.job_dir, self.send = job_id, job_dir, send
        self.log_line = log_line
        self.min_interval = 1.0 / max_progress_hz
        self._last_sent = 0.0
        self._last_logged = 0.0
        self._last_stage: str | None = None
        self._seq = 0

    def _post(self, key: str | None, message: dict) -> None:
        self.send(("post", self.job_id, key, message), None if key is None else (self.job_id, key))

    def _on_progress(self, msg: dict) -> None:
        now = time.monotonic()
        stage_changed = msg["stage"] != self._last_stage
        if stage_changed or msg["step"] >= msg["total"] or now - self._last_sent >= self.min_interval:
            self._last_sent, self._last_stage = now, msg["stage"]
            self._post("progress", messages.make("progress", job_id=self.job_id, **msg))
        if stage_changed or now - self._last_logged >= 1.0:
            self._last_logged = now
            loss = f" loss={msg['loss']:.5g}" if msg["loss"] is not None else ""
            self._on_log(f"progress {msg['stage']} {msg['step']}/{msg['total']}{loss}")

    def _on_preview(self, msg: dict) -> None:
        self._seq += 1
        self._post("preview:" + msg["kind"], messages.make(
            "preview", job_id=self.job_id, kind=msg["kind"], seq=self._seq, data=msg["data"], meta=msg["meta"]))

    def _on_log(self, line: str) -> None:
        if self.log_line is not None:  # a Ray worker on another node: the server writes the line
            self.log_line(line)
            return
        try:
            append_log(self.job_dir, line)
        except OSError:
            pass  # a full disk ends the job through its own writes; the log is not worth a failure


def loaded_model_ids(models) -> list[str]:
    """The model ids a worker's ``ModelCache`` holds (its keys are ``kind:model_id:...``)."""
    return sorted({key.split(":")[1] for key in models.keys() if key.count(":") >= 1})


def device_memory(device: str) -> dict:
    import torch

    if device == "cuda":
        free, total = torch.cuda.mem_get_info()
        # What this process's allocator holds (cached models, freed blocks) is reusable by a job.
        return {"free": int(free) + int(torch.cuda.memory_reserved()), "total": int(total)}
    return {"free": host_memory_available(), "total": os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")}


def prepare_device(device: str, emit, sender=None, render_once=None) -> None:
    """Before the first job on a CUDA device: probe gsplat (its kernels compile on first use,
    which takes minutes; the job shows it as its ``setup`` stage). When gsplat cannot render,
    the job's log and the server's welcome (through ``sender``) say so and the torch
    rasteriser is used. ``render_once``: see :func:`backend.render.gaussians.probe_gsplat`."""
    from .render.gaussians import gsplat_probed, probe_gsplat

    if not device.startswith("cuda") or gsplat_probed(device):
        return
    emit.progress("setup", 0, 1, message="checking gsplat's CUDA kernels (the first use compiles them: minutes)")
    reason = probe_gsplat(device) if render_once is None else probe_gsplat(device, render_once)
    emit.progress("setup", 1, 1, message="gsplat ready" if reason is None else "gsplat unusable: torch rasteriser")
    if reason is not None:
        emit.log(reason)
        if sender is not None:
            sender.put(("warning", reason))


def job_spec(job: Job, reference: str) -> dict:
    """What a worker needs to run ``job`` (the argument of :func:`run_spec`): job id, the
    pipeline's ``reference`` (``Pipeline.reference()``), pipeline, preset, params, input
    arrays, seed, job folder."""
    return {"job_id": job.job_id, "reference": reference, "pipeline": job.pipeline, "preset": job.preset,
            "params": job.params, "inputs": {k: np.asarray(v) for k, v in job.inputs.items()}, "seed": job.seed,
            "job_dir": str(job.dir)}


def run_spec(spec: dict, cancel: CancelToken, sender, device: str, models, models_dir: str | None,
             job_dir: Path | None = None, log_line: Callable[[str], None] | None = None) -> dict:
    """Run one job in a worker (the local worker process or a Ray actor) and return its
    outcome; every failure is the job's outcome, never an exception.

    Args:
        spec: job id, pipeline reference, pipeline, preset, params, inputs, seed, job_dir.
        sender: has ``put(event, key=None)`` (latest wins per key): progress and previews.
        job_dir: where the job writes (default ``spec["job_dir"]``; a Ray worker without the
            server's folder uses a folder of its node and sends the files back).
        log_line: where log lines go (default the job folder's ``log.txt``).
    """
    job_dir = Path(spec["job_dir"]) if job_dir is None else job_dir
    emitter = WorkerEmitter(spec["job_id"], job_dir, sender.put, log_line=log_line)
    oom = False
    try:
        seed_everything(spec["seed"])
        cls = load_reference(spec["reference"]).implementation_class()
        prepare_device(device, emitter, sender)
        request = JobRequest(spec["job_id"], spec["pipeline"], spec["preset"], spec["params"], spec["inputs"],
                             spec["seed"], job_dir, device, models, models_dir)
        cancel.check()
        result = cls().run(request, emitter, cancel)
        cancel.check()
        files = save_result(job_dir, result)
        return {"job_id": spec["job_id"], "state": "done", "files": files}
    except BaseException as exc:  # noqa: BLE001 - every failure is one job's outcome
        code, text = failure(exc, device, job_dir)
        if code not in ("cancelled", "bad_params", "model_missing"):
            emitter.log(traceback.format_exc())
        oom = code == "out_of_memory"
        outcome = {"job_id": spec["job_id"], "state": "cancelled" if code == "cancelled" else "failed",
                   "code": code, "text": text}
        del exc
    if oom:
        # Outside the handler: the traceback's frames (holding GPU tensors) are gone now.
        from .device import free_device_memory

        models.release()
        free_device_memory()
    return outcome


def _die_with_the_server(parent: int) -> None:
    """Ask Linux to kill this process when the thread that started it (the server's dispatcher)
    ends, so that a server killed or exiting at once never leaves a worker running a job
    (``prctl(PR_SET_PDEATHSIG, SIGKILL)``; elsewhere the closed pipe ends an idle worker)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the server ended before the request took effect
        os._exit(1)


def worker_main(commands, events, cancel_event, device_request: str, models_dir: str | None, capacity: int,
                parent: int | None = None) -> None:
    """Entry point of the worker process (``multiprocessing`` target). Returns when told to
    stop or when the server's end of the pipe closes; dies with the server."""
    if parent is not None:
        _die_with_the_server(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the server decides
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sender = _Sender(events)
    sender.start()
    try:
        from .device import describe_device, free_device_memory, resolve_device
        from .models import ModelCache

        device = resolve_device(device_request)
        models = ModelCache(capacity)
        sender.put(("ready", {"device": device, "description": describe_device(device), "pid": os.getpid(),
                              "memory": device_memory(device)}))
    except Exception as exc:  # noqa: BLE001 - reported to the server, which refuses to start
        sender.put(("fatal", f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)))
        sender.flush(5.0)
        return
    cancel = CancelToken(cancel_event)
    while True:
        try:
            command = commands.recv()
        except (EOFError, OSError):
            break  # the server is gone
        if command[0] == "run":  # the server cleared cancel_event before sending it (WorkerProcess.run)
            sender.put(("outcome", run_spec(command[1], cancel, sender, device, models, models_dir)))
            sender.put(("memory", device_memory(device)), key="memory")
            sender.put(("models", loaded_model_ids(models)), key="models")
        elif command[0] == "release":
            names = models.release()
            free_device_memory()
            sender.put(("models", []), key="models")
            sender.put(("released", names))
        elif command[0] == "stop":
            break
    sender.flush(5.0)


# ---------------------------------------------------------------------- server side
class WorkerProcess:
    """The server's handle on its worker process: starts it (again after a crash), runs one
    job at a time in it, relays its messages, cancels, releases models, stops it. It is both
    the local executor (``jobs.Executor``) and its one worker (``jobs.WorkerHandle``).

    Args:
        post: ``post(job_id, key, message)`` delivers a job's progress and previews.
        device: ``"auto"``, ``"cuda"`` or ``"cpu"``, resolved in the worker.
        models_dir: an extra folder of model weights.
        model_capacity: models kept loaded between jobs.
        start_timeout: seconds to wait for a new worker to report ready.
    """

    def __init__(self, post: Callable[[str, str | None, dict], None], device: str = "auto", models_dir: str | None = None,
                 model_capacity: int = 2, start_timeout: float = 600.0):
        self.post, self.device_request, self.models_dir = post, device, models_dir
        self.model_capacity, self.start_timeout = model_capacity, start_timeout
        self._ctx = mp.get_context("spawn")
        self._lock = threading.RLock()
        self._proc = None
        self._commands = None
        self._cancel = self._ctx.Event()
        self._generation = 0
        self._outcomes: queue.Queue[dict] = queue.Queue()
        self._ready = threading.Event()
        self._release_callbacks: collections.deque[Callable[[list[str]], None]] = collections.deque()
        self._stopping = False
        self.info: dict = {}
        self.fatal: str | None = None
        #: Sentences the worker reported about the backend (shown in the welcome).
        self.warnings: list[str] = []
        self.name = "local"
        self._models: set[str] = set()

    # ------------------------------------------------------------------ executor and worker
    def workers(self) -> list["WorkerProcess"]:
        return [self]

    def available(self) -> bool:
        """Whether it can take a job (``run`` starts the process when it is not running)."""
        return not self._stopping

    def models(self) -> set[str]:
        """Model ids the worker process held after its last job."""
        return set(self._models)

    def describe_worker(self) -> dict:
        """This worker for the welcome and ``splatsmith jobs`` (the server adds busy/idle)."""
        import socket

        state = "idle" if self._ready.is_set() else ("failed" if self.fatal else "starting")
        return {"name": self.name, "node": socket.gethostname(), "device": self.describe(), "state": state,
                "pid": self.pid, "models": sorted(self._models)}

    # ------------------------------------------------------------------ lifecycle
    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.is_alive() else None

    @property
    def device(self) -> str:
        """The resolved device once a worker reported ready, else the requested one."""
        return self.info.get("device", self.device_request)

    def describe(self) -> str:
        return self.info.get("description") or f"{self.device_request} (worker starting)"

    def memory_free(self) -> int | None:
        """Free memory of the worker's device, bytes (live for the CPU, the worker's last
        report for CUDA); None before the first report."""
        if self.info.get("device") == "cpu":
            return host_memory_available()
        return self.info.get("memory", {}).get("free")

    def start(self) -> None:
        """Start a worker process unless one is alive (returns at once; see :meth:`wait_ready`)."""
        with self._lock:
            if self._stopping or (self._proc is not None and self._proc.is_alive()):
                return
            self._generation += 1
            self._ready.clear()
            self.fatal = None
            cmd_r, cmd_w = self._ctx.Pipe(duplex=False)
            ev_r, ev_w = self._ctx.Pipe(duplex=False)
            proc = self._ctx.Process(target=worker_main, name="splatsmith-worker", daemon=True,
                                     args=(cmd_r, ev_w, self._cancel, self.device_request, self.models_dir,
                                           self.model_capacity, os.getpid()))
            proc.start()
            cmd_r.close()
            ev_w.close()
            self._proc, self._commands = proc, cmd_w
            threading.Thread(target=self._read, args=(proc, ev_r, self._generation), name="splatsmith-worker-reader",
                             daemon=True).start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until the worker reported ready (True) or failed to start (False; see ``fatal``)."""
        self._ready.wait(self.start_timeout if timeout is None else timeout)
        return self._ready.is_set() and self.fatal is None

    def _read(self, proc, conn, generation: int) -> None:
        while True:
            try:
                event = conn.recv()
            except (EOFError, OSError):
                break
            except Exception:  # noqa: BLE001 - an unpicklable event; skip it
                log.exception("unreadable event from the worker")
                continue
            kind = event[0]
            if kind == "post":
                try:
                    self.post(*event[1:])
                except Exception:  # noqa: BLE001 - delivery must not stop the reader
                    log.exception("cannot deliver a worker message")
            elif kind == "outcome":
                self._outcomes.put(event[1])
            elif kind == "ready":
                self.info = dict(event[1])
                self._ready.set()
                log.info("worker %s ready on %s", self.info.get("pid"), self.info.get("description"))
            elif kind == "fatal":
                self.fatal = event[1]
                self._ready.set()
            elif kind == "memory":
                self.info["memory"] = event[1]
            elif kind == "models":
                self._models = set(event[1])
            elif kind == "warning":
                if event[1] not in self.warnings:
                    self.warnings.append(event[1])
                log.warning("%s", event[1])
            elif kind == "released":
                self._call_release(event[1])
        conn.close()
        proc.join(5.0)
        with self._lock:
            current = generation == self._generation
            if current:
                self._ready.clear()
        while self._release_callbacks:
            self._call_release([])
        if current and not self._stopping:
            log.error("worker process %s ended (exit code %s)", proc.pid, proc.exitcode)
            self._outcomes.put({"job_id": None, "state": "failed", "code": "worker_crashed",
                                "text": describe_exit(proc.exitcode), "crashed": True})

    def _call_release(self, names: list[str]) -> None:
        try:
            callback = self._release_callbacks.popleft()
        except IndexError:
            return
        try:
            callback(names)
        except Exception:  # noqa: BLE001
            log.exception("release callback failed")

    # ------------------------------------------------------------------ jobs
    def run(self, job: Job, reference: str, should_kill: Callable[[], bool]) -> dict:
        """Run ``job`` in the worker and return its outcome: ``{"state": "done", "files": [...]}``
        or ``{"state": "failed"|"cancelled", "code": ..., "text": ...}``. Never raises for
        what happens in the worker."""
        self.start()
        end = time.monotonic() + self.start_timeout
        while not self._ready.wait(0.1):  # a cancel or a stop may come while the worker starts
            if should_kill() or time.monotonic() > end:
                self.kill()
                if should_kill():
                    return {"state": "cancelled", "code": "cancelled", "text": "the job was cancelled"}
                return {"state": "failed", "code": "worker_crashed",
                        "text": f"the worker process did not start within {self.start_timeout:g} s"}
        if self.fatal is not None:
            return {"state": "failed", "code": "worker_crashed", "text": f"the worker process cannot run jobs: {self.fatal}"}
        while True:  # outcomes of an earlier worker (a crash while idle) are not this job's
            try:
                self._outcomes.get_nowait()
            except queue.Empty:
                break
        spec = job_spec(job, reference)
        # The server, not the worker, clears the cancel flag: a cancel that comes while the job
        # is on its way (the dispatcher cancels the job's token first, then the worker) is kept.
        self._cancel.clear()
        try:
            with self._lock:
                self._commands.send(("run", spec))
        except (OSError, ValueError) as exc:
            return {"state": "failed", "code": "worker_crashed", "text": f"the worker process could not take the job ({exc})"}
        if job.cancel.cancelled:
            self._cancel.set()
        while True:
            try:
                event = self._outcomes.get(timeout=0.1)
            except queue.Empty:
                if should_kill():
                    self.kill()
                    return {"state": "cancelled", "code": "cancelled",
                            "text": "the job was cancelled; it did not stop by itself, so its worker was restarted"}
                continue
            if event.get("job_id") in (None, job.job_id):
                if event.get("crashed"):
                    self.start()  # the next job (and the welcome) get a worker at once
                return event

    def cancel(self) -> None:
        """Cancel the running job: it stops at its next ``cancel.check()``."""
        self._cancel.set()

    def release(self, callback: Callable[[list[str]], None]) -> None:
        """Ask the worker to drop its cached models; ``callback(names)`` is called from the
        reader thread once it did (after the running job, if any), or at once with [] when no
        worker is running."""
        with self._lock:
            if self._proc is None or not self._proc.is_alive() or not self._ready.is_set():
                callback([])
                return
            self._release_callbacks.append(callback)
            try:
                self._commands.send(("release",))
            except (OSError, ValueError):
                self._release_callbacks.pop()
                callback([])

    def kill(self) -> None:
        """Kill the worker process now (its crash is not reported as a job's outcome)."""
        with self._lock:
            self._generation += 1
            proc = self._proc
            self._ready.clear()
        if proc is not None and proc.is_alive():
            proc.kill()
            proc.join(5.0)

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the worker to exit; kill it after ``timeout`` seconds."""
        with self._lock:
            self._stopping = True
            proc, commands = self._proc, self._commands
        if proc is None:
            return
        try:
            commands.send(("stop",))
        except (OSError, ValueError):
            pass
        proc.join(timeout)
        if proc.is_alive():
            proc.kill()
            proc.join(5.0)
        try:
            commands.close()
        except OSError:
            pass


# ---------------------------------------------------------------------- in-process runs
def run_local(store: JobStore, pipeline: type[Pipeline], preset: str | None, params: dict, inputs: dict[str, np.ndarray],
              seed: int, emit: Emitter, device: str = "cpu", label: str = "", cancel: CancelToken | None = None,
              models: Any = None, models_dir: str | None = None) -> tuple[Job, Result]:
    """Run a pipeline in this process (the CLI's ``generate``/``reconstruct``), with the same
    validation and job folder as a server job, so a server started later lists it.

    Raises:
        ParamError: invalid parameters or inputs (nothing is written).
        JobCancelled, KeyboardInterrupt: the job was cancelled; its folder records it.
        Exception: whatever the pipeline raises; the job folder records it as failed.
    """
    preset, resolved = pipeline.resolve(preset, params, inputs)
    job = store.create(pipeline.name, preset, resolved, seed, label, inputs)
    job.state, job.started = "running", time.time()
    store.save_state(job)
    store.append_log(job, f"state running: {job.pipeline} preset={job.preset} seed={job.seed} (in this process, "
                          f"device {device})")
    emit = _JobLog(emit, store, job)
    request = JobRequest(job.job_id, pipeline.name, preset, resolved, job.inputs, seed, job.dir, device, models, models_dir)
    seed_everything(seed)
    try:
        cancel = cancel or CancelToken()
        cancel.check()  # a stop that came while the job was being set up
        result = pipeline.implementation_class()().run(request, emit, cancel)
        cancel.check()  # nor is one lost that came after the pipeline's last check
        job.files = save_result(job.dir, result)
    except BaseException as exc:
        code, text = failure(exc, device, job.dir)
        job.state, job.finished = ("cancelled" if code == "cancelled" else "failed"), time.time()
        job.error_code, job.error_message = code, text
        try:
            store.save_state(job)
            store.append_log(job, f"state {job.state} [{code}] {text}")
            store.append_log(job, traceback.format_exc())
        except OSError:
            pass
        raise
    job.state, job.finished, job.inputs = "done", time.time(), {}
    store.save_state(job)
    store.append_log(job, f"state done: {', '.join(sorted(job.files))}")
    return job, result


class _JobLog(Emitter):
    """An in-process job's emitter: everything goes to the caller's ``inner`` emitter, and log
    lines also into the job's ``log.txt``, as a server job's do."""

    def __init__(self, inner: Emitter, store: JobStore, job: Job) -> None:
        super().__init__()
        self.inner, self.store, self.job = inner, store, job

    def progress(self, *args, **kwargs):
        return self.inner.progress(*args, **kwargs)

    def preview(self, *args, **kwargs) -> None:
        self.inner.preview(*args, **kwargs)

    def log(self, line: str) -> None:
        try:
            self.store.append_log(self.job, line)
        except OSError:
            pass  # a full disk must not end the job over a log line
        self.inner.log(line)
