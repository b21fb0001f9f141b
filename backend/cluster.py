"""The Ray executor: the backend's jobs on Ray actors, one per GPU, across a cluster.

The ZeroMQ server stays the one front door; only where jobs run changes. Imported only by
``splatsmith serve --executor ray`` (``Server(executor="ray")``): without the ``cluster`` extra
nothing imports Ray.

- :class:`WorkerActor` runs in a Ray worker process: it resolves its device, keeps a model
  cache between jobs, and runs each job with the same code as the local worker process
  (``backend.worker.run_spec``). ``start`` runs the job in a thread of the actor and returns;
  the job puts its events (progress and previews, latest-wins per kind, log lines, then the
  outcome) into a buffer that never blocks it, and the server long-polls ``events``, which
  returns all that waits, so a slow reader never slows a step. (Not a Ray streaming
  generator: Ray Client, ``ray://``, does not carry those.) ``cancel`` runs concurrently (a
  threaded actor) and reaches the job at its next ``cancel.check()``.
- Result files travel back in the outcome and the server writes them into the job folder; with
  ``shared_output`` (the output folder mounted at the same path on every node) the actor
  writes into the job folder itself.
- :class:`RayWorker` is the server's handle on one actor (``jobs.WorkerHandle``);
  :class:`RayExecutor` starts or joins Ray, creates the actors (``workers="auto"``: one per GPU
  the cluster has, or one CPU worker per node when it has none, re-checked as nodes join),
  and stops them.
- Faults: an actor whose process or node dies under a job ends that attempt with
  ``worker_lost`` (the dispatcher runs the job once more); Ray restarts the actor
  (``max_restarts=-1``) and the worker is used again once it answers.

Ray APIs used: ``ray.init``, ``ray.remote`` actors with ``max_concurrency`` (threaded
actors) and ``max_restarts``, ``ray.wait``/``ray.get``, ``ray.kill``, ``ray.cluster_resources``,
``ray.nodes`` (https://docs.ray.io/en/latest/ray-core/actors.html).
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import ray
import ray.exceptions

from .jobs import Job, append_log
from .worker import LatestWins, job_spec

log = logging.getLogger("splatsmith.cluster")

#: Files of a finished job that travel back besides the pipeline's own (``jobs.save_result``).
RESULT_RECORDS = ("result.json", "result.npz")


@dataclass(frozen=True)
class RayOptions:
    """Settings of the Ray executor (``splatsmith serve --executor ray ...``).

    Attributes:
        address: ``"local"`` starts a Ray instance inside the server (one machine); ``"auto"``
            joins the cluster this machine belongs to; ``"ray://HOST:10001"`` (Ray Client) or
            ``"HOST:6379"`` joins that one.
        workers: how many actors (an int >= 1), or ``"auto"``: one per ``gpus_per_worker`` GPUs
            of the cluster (one CPU worker per node when it has no GPU), growing as nodes join.
        gpus_per_worker: GPUs each actor reserves; None: 1 when the cluster has GPUs, else 0.
        cpus_per_worker: CPUs each actor reserves.
        shared_output: the server's output folder is mounted at the same path on every node:
            actors write job folders directly instead of sending the files back.
        local_cpus: CPUs of a ``local`` Ray instance (None: the machine's).
        watch_interval: seconds between checks for new nodes (``workers="auto"``).
    """

    address: str = "local"
    workers: int | str = "auto"
    gpus_per_worker: float | None = None
    cpus_per_worker: float = 1.0
    shared_output: bool = False
    local_cpus: int | None = None
    watch_interval: float = 10.0

    def __post_init__(self) -> None:
        if self.workers != "auto" and (isinstance(self.workers, bool) or not isinstance(self.workers, int)
                                       or self.workers < 1):
            raise ValueError(f"workers must be a whole number >= 1 or 'auto', got {self.workers!r}")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            raise ValueError(f"gpus_per_worker must be >= 0, got {self.gpus_per_worker}")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker must be > 0, got {self.cpus_per_worker}")


# ---------------------------------------------------------------------- actor side
class WorkerActor:
    """One worker of the cluster (a Ray actor; :class:`RayExecutor` wraps it with
    ``ray.remote``). Holds its device and its model cache for its whole life.

    Args:
        device_request: ``"auto"``, ``"cuda"`` or ``"cpu"`` (Ray sets ``CUDA_VISIBLE_DEVICES`` to
            the actor's GPUs).
        models_dir: an extra folder of model weights on the node.
        capacity: models kept loaded between jobs.
        overrides: the server's model-id overrides (``serve --model-override``).
        shared_output: write into the server's job folders (mounted on every node).
    """

    def __init__(self, device_request: str, models_dir: str | None, capacity: int, overrides: dict[str, str],
                 shared_output: bool):
        from .device import describe_device, resolve_device
        from .models import ModelCache, set_model_overrides

        if overrides:
            set_model_overrides(overrides)
        self.device = resolve_device(device_request)
        self.description = describe_device(self.device)
        self.models = ModelCache(capacity)
        self.models_dir, self.shared_output = models_dir, shared_output
        self._cancel = threading.Event()
        self._scratch = Path(tempfile.mkdtemp(prefix="splatsmith-ray-"))
        self._events = LatestWins()
        self._job: threading.Thread | None = None

    def info(self) -> dict:
        """Node, process, device, models held and device memory of this actor."""
        from .worker import device_memory, loaded_model_ids

        context = ray.get_runtime_context()
        return {"node": socket.gethostname(), "node_id": context.get_node_id(), "pid": os.getpid(),
                "device": self.device, "description": self.description, "models": loaded_model_ids(self.models),
                "memory": device_memory(self.device)}

    def cancel(self) -> None:
        """Cancel the running job (a concurrent call: the job sees it at its next check)."""
        self._cancel.set()

    def release(self) -> list[str]:
        """Drop the cached models; returns their keys."""
        from .device import free_device_memory

        names = self.models.release()
        free_device_memory()
        return names

    def start(self, spec: dict) -> None:
        """Start one job in a thread of this actor and return at once; its events are taken
        with :meth:`events`.

        Raises:
            RuntimeError: a job is still running here (the server sends one at a time).
        """
        from .pipelines.base import CancelToken
        from .worker import loaded_model_ids, run_spec

        if self._job is not None:
            self._job.join(10.0)  # it put its outcome: it is ending
            if self._job.is_alive():
                raise RuntimeError("this worker is still running a job")
        self._cancel.clear()
        events = self._events = LatestWins()
        if self.shared_output:
            job_dir, log_line = Path(spec["job_dir"]), None
            if not (job_dir / "request.json").is_file():
                events.put(("outcome", {"job_id": spec["job_id"], "state": "failed", "code": "failed", "text": (
                    f"the job folder {job_dir} is not visible on node {socket.gethostname()}: mount the server's output "
                    "folder at the same path on every node, or serve without --shared-output")}))
                return
        else:
            shutil.rmtree(self._scratch, ignore_errors=True)  # the previous job's files went back with it
            job_dir = self._scratch / spec["job_id"]
            job_dir.mkdir(parents=True)
            for other_job, name, data in spec.pop("job_files", []):
                (self._scratch / other_job).mkdir(exist_ok=True)
                (self._scratch / other_job / name).write_bytes(data)

            def log_line(line: str) -> None:
                events.put(("log", line))

        def work() -> None:
            try:
                outcome = run_spec(spec, CancelToken(self._cancel), events, self.device, self.models, self.models_dir,
                                   job_dir, log_line)
                if outcome["state"] == "done" and not self.shared_output:
                    names = [*RESULT_RECORDS, *outcome["files"]]
                    outcome["blobs"] = {name: (job_dir / name).read_bytes() for name in names}
            except BaseException as exc:  # noqa: BLE001 - reading the files back failed
                outcome = {"job_id": spec["job_id"], "state": "failed", "code": "failed",
                           "text": f"{type(exc).__name__}: {exc}"}
            outcome["models"] = loaded_model_ids(self.models)
            events.put(("outcome", outcome))

        self._job = threading.Thread(target=work, name="splatsmith-ray-job", daemon=True)
        self._job.start()

    def events(self, wait: float = 0.25) -> list[tuple]:
        """The running job's events not taken yet, in order (progress and each preview kind
        latest-wins), waiting up to ``wait`` seconds for the first: ``("post", job_id, key,
        message)``, ``("log", line)``, ``("warning", text)``, and last ``("outcome",
        outcome)``, whose ``blobs`` (name -> bytes) are a finished job's files unless
        ``shared_output``. A long poll rather than a Ray streaming generator: Ray Client
        (``ray://``) does not carry those (ray-project/ray#43357)."""
        return self._events.take_all(wait)


# ---------------------------------------------------------------------- server side
_KILLED = object()

def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class RayWorker:
    """The server's handle on one :class:`WorkerActor` (``jobs.WorkerHandle``).

    States: ``starting`` (the actor is being created or restarted), ``idle``, ``lost`` (its
    process or node died; Ray restarts it), ``failed`` (it cannot start: ``error`` says why).
    The dispatcher marks it busy while it runs a job.
    """

    def __init__(self, name: str, actor, executor: "RayExecutor"):
        self.name, self.actor, self.executor = name, actor, executor
        self.state = "starting"
        self.error: str | None = None
        self.info: dict = {}
        self._lock = threading.Lock()
        self._watching = False
        self.watch()

    # ------------------------------------------------------------------ state
    def available(self) -> bool:
        return self.state == "idle"

    def models(self) -> set[str]:
        return set(self.info.get("models", []))

    def describe_worker(self) -> dict:
        return {"name": self.name, "node": self.info.get("node", "?"), "device": self.info.get("description", "?"),
                "state": self.state, "pid": self.info.get("pid"), "models": sorted(self.models()),
                **({"error": self.error} if self.error else {})}

    def watch(self) -> None:
        """Wait (in a thread) until the actor answers, then mark it idle; a new actor, or one
        Ray is restarting after a death, answers once its process is up."""
        with self._lock:
            if self._watching:
                return
            self._watching = True
        threading.Thread(target=self._watch, name=f"splatsmith-{self.name}-watch", daemon=True).start()

    def _watch(self) -> None:
        try:
            while not self.executor.stopping:
                try:
                    self.info = ray.get(self.actor.info.remote(), timeout=5.0)
                except ray.exceptions.GetTimeoutError:
                    continue  # still starting (or waiting for a node with free resources)
                except ray.exceptions.ActorUnavailableError:
                    time.sleep(0.5)  # Ray is restarting it
                    continue
                except ray.exceptions.RayActorError as exc:  # it cannot be created, or died for good
                    if self.state != "failed":
                        log.warning("%s cannot start: %s", self.name, exc)
                    self.state, self.error = "failed", _first_line(exc)
                    time.sleep(2.0)
                    continue
                except ray.exceptions.RayError as exc:
                    log.warning("%s: %s", self.name, _first_line(exc))
                    time.sleep(1.0)
                    continue
                self.state, self.error = "idle", None
                log.info("%s ready on %s (%s, pid %s)", self.name, self.info.get("node"), self.info.get("description"),
                         self.info.get("pid"))
                self.executor.changed()
                return
        finally:
            with self._lock:
                self._watching = False

    def _lost(self, job: Job, detail: str) -> dict:
        """The outcome of a job whose actor died under it (its process, or its node)."""
        self.state = "lost"
        self.watch()
        try:
            append_log(job.dir, f"{self.name}: Ray says: {detail}")
        except OSError:
            pass
        log.warning("%s lost under job %s: %s", self.name, job.job_id, detail)
        return {"state": "failed", "code": "worker_lost", "requeue": True,
                "text": f"the cluster worker {self.name} on {self.info.get('node', '?')} died while running this job "
                        "(its process ended or its node went away); Ray restarts it."}

    # ------------------------------------------------------------------ jobs
    def cancel(self) -> None:
        try:
            self.actor.cancel.remote()
        except ray.exceptions.RayError:
            pass  # a lost actor runs nothing

    def run(self, job: Job, reference: str, should_kill: Callable[[], bool]) -> dict:
        """Run ``job`` on the actor, relaying its events; the outcome as ``WorkerProcess.run``'s,
        plus ``requeue`` when the actor died under it. Never raises for what happens there."""
        spec = job_spec(job, reference)
        if not self.executor.options.shared_output:
            spec["job_files"] = self.executor.job_files(job)
        self.state = "busy"
        try:
            if self._wait(self.actor.start.remote(spec), should_kill) is _KILLED:
                return self._kill_for_cancel()
            if job.cancel.cancelled:  # cancelled on its way: the actor's start cleared that call's flag
                self.actor.cancel.remote()
            while True:
                batch = self._wait(self.actor.events.remote(), should_kill)
                if batch is _KILLED:
                    return self._kill_for_cancel()
                for event in batch:
                    outcome = self._handle(job, event)
                    if outcome is not None:
                        return outcome
        except ray.exceptions.RayActorError as exc:
            return self._lost(job, _first_line(exc))
        except ray.exceptions.RayTaskError as exc:
            return {"state": "failed", "code": "failed", "text": f"the cluster worker failed: {_first_line(exc)}"}
        except ray.exceptions.RayError as exc:
            return self._lost(job, _first_line(exc))
        finally:
            if self.state == "busy":
                self.state = "idle"
                self.executor.changed()

    @staticmethod
    def _wait(ref, should_kill: Callable[[], bool]):
        """``ray.get(ref)``, looking first and then every 0.1 s whether the job's worker must be
        killed (then :data:`_KILLED`; each long poll of a busy job answers at once, so the
        look cannot wait for a poll to time out). Raises what ``ray.get`` raises."""
        while True:
            if should_kill():
                return _KILLED
            if ray.wait([ref], timeout=0.1)[0]:
                return ray.get(ref)

    def _handle(self, job: Job, event: tuple) -> dict | None:
        kind = event[0]
        if kind == "post":
            self.executor.post(*event[1:])
        elif kind == "log":
            try:
                append_log(job.dir, event[1])
            except OSError:
                pass
        elif kind == "warning":
            self.executor.warn(event[1])
        elif kind == "outcome":
            outcome = dict(event[1])
            self.info["models"] = outcome.pop("models", self.info.get("models", []))
            blobs = outcome.pop("blobs", None) or {}
            try:
                for name, data in blobs.items():
                    _write_atomic(job.dir / Path(name).name, data)
            except OSError as exc:
                from .jobs import write_failure

                code, text = write_failure(job.dir, exc)
                return {"state": "failed", "code": code, "text": text}
            return outcome
        return None

    def _kill_for_cancel(self) -> dict:
        """A cancelled job that ignored its grace: kill the actor (Ray restarts it)."""
        self.state = "starting"
        try:
            ray.kill(self.actor, no_restart=False)
        except ray.exceptions.RayError:
            pass
        self.watch()
        return {"state": "cancelled", "code": "cancelled",
                "text": "the job was cancelled; it did not stop by itself, so its worker was restarted"}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


class RayExecutor:
    """Runs jobs on Ray actors (``jobs.Executor``).

    Args:
        post: ``post(job_id, key, message)`` delivers a job's progress and previews.
        device: the device each actor asks for (``auto``: CUDA where Ray gave it a GPU).
        models_dir: an extra folder of model weights (the same path on every node).
        model_capacity: models each actor keeps loaded.
        options: :class:`RayOptions`.
        on_change: called when a worker becomes ready or free (the dispatcher looks again).
        job_root: the server's output folder (files of earlier jobs a job reads).
    """

    def __init__(self, post: Callable[[str, str | None, dict], None], device: str, models_dir: str | None,
                 model_capacity: int, options: RayOptions, on_change: Callable[[], None] = lambda: None,
                 job_root: Path | None = None):
        self.post, self.device_request, self.models_dir = post, device, models_dir
        self.model_capacity, self.options, self.on_change = model_capacity, options, on_change
        self.job_root = job_root
        self.stopping = False
        self.fatal: str | None = None
        self.warnings: list[str] = []
        self._workers: list[RayWorker] = []
        self._lock = threading.Lock()
        self._started = threading.Event()
        self._owns_ray = False
        self._actor_class = None
        self._gpus_per_worker = 0.0

    # ------------------------------------------------------------------ lifecycle
    @property
    def device(self) -> str:
        return "cuda" if self._gpus_per_worker > 0 else self.device_request

    def start(self) -> None:
        """Start (``local``) or join Ray and create the workers. Errors end up in ``fatal``."""
        if self._started.is_set():
            return
        try:
            self._connect()
            target = self._target_count()
            with self._lock:
                for _ in range(target):
                    self._add_worker()
            if self.options.workers == "auto":
                threading.Thread(target=self._watch_cluster, name="splatsmith-ray-nodes", daemon=True).start()
        except Exception as exc:  # noqa: BLE001 - reported by wait_ready and the CLI
            self.fatal = f"cannot use Ray at {self.options.address!r}: {_first_line(exc)}"
            log.error("%s", self.fatal)
        finally:
            self._started.set()

    def _connect(self) -> None:
        address = self.options.address
        if ray.is_initialized():
            return
        if address == "local":
            # The actors are processes of this machine: they import what the server imports
            # (``--plugin`` modules included) from the same paths.
            path = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
            ray.init(num_cpus=self.options.local_cpus, include_dashboard=False, log_to_driver=False,
                     namespace="splatsmith", configure_logging=False, object_store_memory=256 * 2**20,
                     runtime_env={"env_vars": {"PYTHONPATH": path}})
            self._owns_ray = True
        else:
            ray.init(address=address, namespace="splatsmith", log_to_driver=False, configure_logging=False)
        gpus = ray.cluster_resources().get("GPU", 0.0)
        per = self.options.gpus_per_worker
        self._gpus_per_worker = (1.0 if gpus >= 1 else 0.0) if per is None else float(per)
        if self._gpus_per_worker > gpus:
            raise RuntimeError(f"each worker asks for {self._gpus_per_worker:g} GPUs but the cluster has {gpus:g}; "
                               "add GPU nodes or pass --gpus-per-worker 0 for CPU workers")
        from .models import model_overrides

        self._actor_class = ray.remote(WorkerActor).options(
            num_cpus=self.options.cpus_per_worker, num_gpus=self._gpus_per_worker, max_concurrency=4,
            max_restarts=-1, max_task_retries=0)
        self._overrides = model_overrides()

    def _target_count(self) -> int:
        if self.options.workers != "auto":
            return int(self.options.workers)
        if self._gpus_per_worker > 0:
            return max(1, int(ray.cluster_resources().get("GPU", 0.0) // self._gpus_per_worker))
        return max(1, sum(1 for node in ray.nodes() if node.get("Alive")))

    def _add_worker(self) -> None:
        actor = self._actor_class.remote(self.device_request, self.models_dir, self.model_capacity, self._overrides,
                                         self.options.shared_output)
        self._workers.append(RayWorker(f"ray-{len(self._workers) + 1}", actor, self))

    def _watch_cluster(self) -> None:
        """``workers="auto"``: add workers when GPUs (or nodes) join."""
        while True:
            time.sleep(self.options.watch_interval)
            if self.stopping:
                return
            try:
                target = self._target_count()
                with self._lock:
                    while len(self._workers) < target and not self.stopping:
                        self._add_worker()
                        log.info("the cluster grew: %d workers", len(self._workers))
            except Exception:  # noqa: BLE001 - the next check tries again
                log.exception("cannot read the cluster's resources")

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until a worker is ready (True) or Ray cannot be used (False; see ``fatal``)."""
        end = time.monotonic() + (600.0 if timeout is None else timeout)
        self._started.wait(max(0.0, end - time.monotonic()))
        while self.fatal is None and time.monotonic() < end:
            if any(w.state in ("idle", "busy") for w in self.workers()):
                return True
            failed = [w for w in self.workers() if w.state == "failed"]
            if failed and len(failed) == len(self.workers()):
                self.fatal = f"no cluster worker can start: {failed[0].error}"
                break
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        """Kill the actors; leave a joined cluster running, end a ``local`` one."""
        self.stopping = True
        self.kill()
        try:
            ray.shutdown()
        except Exception:  # noqa: BLE001
            log.exception("ray.shutdown failed")

    def kill(self) -> None:
        """Kill every actor now (no restart)."""
        for worker in self.workers():
            try:
                ray.kill(worker.actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass

    # ------------------------------------------------------------------ executor
    def workers(self) -> list[RayWorker]:
        with self._lock:
            return list(self._workers)

    def changed(self) -> None:
        try:
            self.on_change()
        except Exception:  # noqa: BLE001
            log.exception("on_change failed")

    def warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)
        log.warning("%s", text)

    def describe(self) -> str:
        workers = self.workers()
        where = "a local Ray instance" if self.options.address == "local" else f"the Ray cluster at {self.options.address}"
        kinds = sorted({w.info.get("description", "starting") for w in workers})
        return f"{len(workers)} workers on {where} ({', '.join(kinds) or 'none yet'})"

    def memory_free(self) -> int | None:
        """The most free device memory any ready worker reported, bytes (a job fits there)."""
        free = [w.info.get("memory", {}).get("free") for w in self.workers() if w.state in ("idle", "busy")]
        free = [f for f in free if f is not None]
        return max(free) if free else None

    def job_files(self, job: Job) -> list[tuple[str, str, bytes]]:
        """Files of earlier jobs that ``job`` reads (``Pipeline.needed_job_files``), sent with it
        to a node that does not share the output folder."""
        from .pipelines.base import REGISTRY

        cls = REGISTRY.get(job.pipeline)
        out = []
        for other, name in (cls.needed_job_files(job.params) if cls is not None else []):
            path = (self.job_root or job.dir.parent) / other / name
            if path.is_file():
                out.append((other, name, path.read_bytes()))
        return out

    def release(self, callback: Callable[[list[str]], None]) -> None:
        """Ask every ready worker to drop its models; ``callback(names)`` from a thread."""
        def run() -> None:
            refs = [w.actor.release.remote() for w in self.workers() if w.state in ("idle", "busy")]
            names: set[str] = set()
            for ref in refs:
                try:
                    names.update(ray.get(ref, timeout=600))
                except ray.exceptions.RayError:
                    pass
            for w in self.workers():
                w.info["models"] = []
            callback(sorted(names))

        threading.Thread(target=run, name="splatsmith-ray-release", daemon=True).start()
