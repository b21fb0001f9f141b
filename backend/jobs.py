"""Jobs: their persistence on disk, the FIFO queue and the single worker thread.

Every job owns ``<output_dir>/<job_id>/`` with:

- ``request.json``: pipeline, preset, resolved parameters, seed, label, input shapes;
- ``inputs.npz``: the input arrays (``numpy.savez``; read back with ``allow_pickle=False``);
- ``state.json``: state, timestamps, error code and message (rewritten atomically);
- ``result.json`` + ``result.npz`` + the pipeline's files (GLB, PLY, PNG): the result;
- ``log.txt``: state changes, progress (at most once a second) and tracebacks.

A server restarted later lists every job from these folders; jobs that were queued or
running when it stopped are marked ``failed`` with the code ``interrupted``.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import random
import secrets
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from shared_protocol import messages

from .device import free_device_memory, is_out_of_memory
from .models import ModelCache, ModelMissingError
from .pipelines.base import CancelToken, Emitter, JobCancelled, JobRequest, ParamError, Pipeline, Result

log = logging.getLogger("splatsmith.jobs")

TERMINAL = ("done", "failed", "cancelled")

#: Called by the worker to send a message to a job's subscribers: ``post(job, key, message)``;
#: ``key`` None means "deliver every one, in order", a string means "latest wins per key".
Post = Callable[["Job", "str | None", dict], None]


@dataclass
class Job:
    """One job. ``inputs`` is only held in memory while the job is queued or running."""

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
    cancel: CancelToken = field(default_factory=CancelToken, repr=False)

    def info(self) -> dict:
        """The job as listed in ``status`` replies and ``state.json``."""
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
        }


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (a job's reproducibility)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def new_job_id() -> str:
    """A sortable, unique id: ``YYYYmmdd-HHMMSS-xxxxxx``."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


class JobStore:
    """The jobs of one output folder, in memory and on disk. Thread-safe."""

    def __init__(self, output_dir: str | os.PathLike):
        self.root = Path(output_dir).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
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
                    files=list(data.get("files", [])),
                )
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("skipping unreadable job folder %s: %s", state_file.parent, exc)
                continue
            if job.state not in TERMINAL:
                job.state, job.finished = "failed", time.time()
                job.error_code = "interrupted"
                job.error_message = "the server stopped while this job was queued or running; submit it again"
                self.save_state(job)
            self._jobs[job.job_id] = job

    def create(self, pipeline: str, preset: str, params: dict, seed: int, label: str, inputs: dict[str, np.ndarray]) -> Job:
        """Create a job folder with request.json, inputs.npz and state.json."""
        with self._lock:
            job_id = new_job_id()
            while job_id in self._jobs:
                job_id = new_job_id()
            job_dir = self.root / job_id
            job_dir.mkdir(parents=True)
            job = Job(job_id, pipeline, preset, dict(params), seed, job_dir, label, dict(inputs))
            _write_json(job_dir / "request.json", {
                "pipeline": pipeline, "preset": preset, "params": params, "seed": seed, "label": label,
                "inputs": {k: {"dtype": v.dtype.name, "shape": list(v.shape)} for k, v in inputs.items()},
            })
            if inputs:
                np.savez(job_dir / "inputs.npz", **inputs)
            self.save_state(job)
            self._jobs[job_id] = job
            return job

    def save_state(self, job: Job) -> None:
        data = job.info()
        data["params"] = job.params
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
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(job.dir / "log.txt", "a", encoding="utf-8") as fh:
            fh.write(f"{stamp} {line}\n")

    def save_result(self, job: Job, result: Result) -> None:
        """Write result.json and result.npz; checks that the result files are in the job folder."""
        names = []
        for name, path in result.files.items():
            path = Path(path).resolve()
            if path.parent != job.dir.resolve() or not path.is_file():
                raise RuntimeError(f"pipeline result file {path} is not a file inside the job folder {job.dir}")
            names.append(path.name)
        np.savez(job.dir / "result.npz", **{k: np.ascontiguousarray(v) for k, v in result.arrays.items()})
        _write_json(job.dir / "result.json", {"files": names, "meta": result.meta, "arrays": sorted(result.arrays)})
        job.files = names

    def result_message(self, job: Job, include_files: bool = True) -> dict:
        """The ``result`` reply of a finished job, read from its folder."""
        meta = json.loads((job.dir / "result.json").read_text())
        with np.load(job.dir / "result.npz", allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        files = {}
        if include_files:
            files = {name: np.fromfile(job.dir / name, dtype=np.uint8) for name in meta["files"]}
        return messages.make("result", job_id=job.job_id, arrays=arrays, files=files,
                             meta=dict(meta["meta"], files=meta["files"], job_dir=str(job.dir)))


class JobEmitter(Emitter):
    """Streams a running job's progress and previews to its subscribers.

    Progress is throttled to at most ``max_progress_hz`` messages a second (the last step of a
    stage always goes out); previews are posted latest-wins per kind, so a slow client
    receives the newest one and never a backlog. Progress reaches ``log.txt`` at most once a
    second.
    """

    def __init__(self, job: Job, store: JobStore, post: Post, max_progress_hz: float = 10.0):
        super().__init__()
        self.job, self.store, self.post = job, store, post
        self.min_interval = 1.0 / max_progress_hz
        self._last_sent = 0.0
        self._last_logged = 0.0
        self._last_stage: str | None = None
        self._seq = 0

    def _on_progress(self, msg: dict) -> None:
        now = time.monotonic()
        stage_changed = msg["stage"] != self._last_stage
        if stage_changed or msg["step"] >= msg["total"] or now - self._last_sent >= self.min_interval:
            self._last_sent, self._last_stage = now, msg["stage"]
            self.post(self.job, "progress", messages.make("progress", job_id=self.job.job_id, **msg))
        if stage_changed or now - self._last_logged >= 1.0:
            self._last_logged = now
            loss = f" loss={msg['loss']:.5g}" if msg["loss"] is not None else ""
            self.store.append_log(self.job, f"progress {msg['stage']} {msg['step']}/{msg['total']}{loss}")

    def _on_preview(self, msg: dict) -> None:
        self._seq += 1
        self.post(self.job, "preview:" + msg["kind"], messages.make(
            "preview", job_id=self.job.job_id, kind=msg["kind"], seq=self._seq, data=msg["data"], meta=msg["meta"]))

    def _on_log(self, line: str) -> None:
        self.store.append_log(self.job, line)


class Worker(threading.Thread):
    """Runs queued jobs one at a time, in FIFO order, on the server's device.

    Args:
        store: the job store.
        pipelines: name -> pipeline class.
        device: ``"cuda"`` or ``"cpu"``.
        models: the model cache shared by all jobs.
        post: delivers messages to subscribers (see :data:`Post`).
    """

    def __init__(self, store: JobStore, pipelines: dict[str, type[Pipeline]], device: str, models: ModelCache, post: Post,
                 models_dir: str | None = None):
        super().__init__(name="splatsmith-worker", daemon=True)
        self.store, self.pipelines, self.device, self.models, self.post = store, pipelines, device, models, post
        self.models_dir = models_dir
        self._queue: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self.current: Job | None = None

    def enqueue(self, job: Job) -> int:
        """Queue a job; returns how many jobs are ahead of it (the running one included)."""
        with self._cond:
            ahead = len(self._queue) + (1 if self.current is not None else 0)
            self._queue.append(job)
            self._cond.notify()
            return ahead

    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    def cancel(self, job: Job) -> None:
        """Cancel a queued job at once, or signal a running one (it stops at its next step)."""
        with self._cond:
            if job in self._queue:
                self._queue.remove(job)
                self._end(job, "cancelled", "cancelled", "the job was cancelled before it started")
                return
        job.cancel.cancel()

    def stop(self) -> None:
        """Stop after the current job's next cancellation check; queued jobs stay queued."""
        with self._cond:
            self._stopping = True
            if self.current is not None:
                self.current.cancel.cancel()
            self._cond.notify()

    def run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job = self._queue.popleft()
                self.current = job
            try:
                self._run_job(job)
            finally:
                with self._cond:
                    self.current = None

    def _end(self, job: Job, state: str, code: str | None, text: str | None) -> None:
        job.state, job.finished = state, time.time()
        job.error_code, job.error_message = code, text
        job.inputs = {}
        self.store.save_state(job)
        self.store.append_log(job, f"state {state}" + (f" [{code}] {text}" if code else ""))
        if code is not None:
            self.post(job, None, messages.error(code, text or code, job_id=job.job_id))

    def _run_job(self, job: Job) -> None:
        job.state, job.started = "running", time.time()
        self.store.save_state(job)
        self.store.append_log(job, f"state running on {self.device}: {job.pipeline} preset={job.preset} seed={job.seed}")
        self.post(job, None, messages.make("status", jobs=[job.info()]))
        emitter = JobEmitter(job, self.store, self.post)
        request = JobRequest(job.job_id, job.pipeline, job.preset, job.params, job.inputs, job.seed, job.dir,
                             self.device, self.models, self.models_dir)
        try:
            seed_everything(job.seed)
            job.cancel.check()
            result = self.pipelines[job.pipeline]().run(request, emitter, job.cancel)
            job.cancel.check()
            self.store.save_result(job, result)
        except JobCancelled:
            if self._stopping:
                self._end(job, "failed", "interrupted", "the server stopped while this job ran; submit it again")
            else:
                self._end(job, "cancelled", "cancelled", "the job was cancelled")
            return
        except ParamError as exc:
            self._end(job, "failed", "bad_params", str(exc))
            return
        except ModelMissingError as exc:
            self._end(job, "failed", "model_missing", str(exc))
            return
        except Exception as exc:  # a pipeline bug must fail only its own job
            self.store.append_log(job, traceback.format_exc())
            if is_out_of_memory(exc):
                free_device_memory()
                self._end(job, "failed", "out_of_memory",
                          f"the {self.device} ran out of memory ({str(exc)[:300]}). Try a smaller preset or "
                          "resolution, or free memory held by other programs; the server is ready for the next job.")
            else:
                self._end(job, "failed", "failed", f"{type(exc).__name__}: {exc}")
            return
        finally:
            del request, emitter
        self._end(job, "done", None, None)
        self.post(job, None, self.store.result_message(job, include_files=True))


def run_local(store: JobStore, pipeline: type[Pipeline], preset: str | None, params: dict, inputs: dict[str, np.ndarray],
              seed: int, emit: Emitter, device: str = "cpu", label: str = "", cancel: CancelToken | None = None,
              models: ModelCache | None = None, models_dir: str | None = None) -> tuple[Job, Result]:
    """Run a pipeline in this process (the CLI's ``generate``/``reconstruct``), with the same
    validation and job folder as a server job, so a server started later lists it.

    Raises:
        ParamError: invalid parameters or inputs (nothing is written).
        Exception: whatever the pipeline raises; the job folder records it as failed.
    """
    preset, resolved = pipeline.resolve(preset, params, inputs)
    job = store.create(pipeline.name, preset, resolved, seed, label, inputs)
    job.state, job.started = "running", time.time()
    store.save_state(job)
    request = JobRequest(job.job_id, pipeline.name, preset, resolved, job.inputs, seed, job.dir, device, models, models_dir)
    seed_everything(seed)
    try:
        result = pipeline().run(request, emit, cancel or CancelToken())
        store.save_result(job, result)
    except BaseException as exc:
        job.state, job.finished = "failed", time.time()
        job.error_code = "cancelled" if isinstance(exc, (JobCancelled, KeyboardInterrupt)) else "failed"
        job.error_message = f"{type(exc).__name__}: {exc}"
        store.save_state(job)
        store.append_log(job, traceback.format_exc())
        raise
    job.state, job.finished, job.inputs = "done", time.time(), {}
    store.save_state(job)
    return job, result
