"""Hardening of the server process (issue 11, items 3-7): native crashes in the worker, a full
disk, signals, cancel in every stage, and a client that never reads, against real server
processes, a real tmpfs and real signals."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zmq

from shared_protocol import messages
from shared_protocol.client import Client, JobError, Timeouts
from shared_protocol.codec import encode

from backend.contracts import CancelToken, JobCancelled

ROOT = Path(__file__).resolve().parents[1]


def _until(predicate, timeout=120.0, what="condition", poll=None):
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        if poll is not None:
            poll.poll(0.05)
        else:
            time.sleep(0.02)


# ---------------------------------------------------------------------- item 3: the worker process
@pytest.mark.slow
@pytest.mark.parametrize("how, signame", [("segv", "SIGSEGV"), ("abort", "SIGABRT"), ("kill", "SIGKILL")])
def test_a_native_crash_costs_one_job_not_the_server(make_server, make_client, how, signame):
    server = make_server()
    client = make_client(server.endpoint)
    first_pid = client.wait(client.submit("cached"), timeout=120)["meta"]["pid"]
    crash = client.submit("crash", params={"how": how})
    queued = client.submit("fit", params={"steps": 5})
    with pytest.raises(JobError) as info:
        client.wait(crash, timeout=120)
    assert info.value.code == "worker_crashed" and signame in info.value.message
    assert client.wait(queued, timeout=120)["arrays"]["points"].shape == (256, 3)  # the queue goes on
    again = client.wait(client.submit("cached"), timeout=120)["meta"]
    assert again["pid"] != first_pid and again["loaded_now"] is True  # a new worker
    assert server.store.get(crash.job_id).error_code == "worker_crashed"
    assert json.loads((server.store.root / crash.job_id / "state.json").read_text())["state"] == "failed"


@pytest.mark.slow
def test_sigkill_of_the_worker_mid_job(make_server, make_client):
    server = make_server()
    client = make_client(server.endpoint)
    running = client.submit("fit", params={"steps": 100_000, "step_ms": 5})
    _until(lambda: running.progress is not None, what="progress", poll=client)
    os.kill(server.executor.pid, signal.SIGKILL)
    with pytest.raises(JobError) as info:
        client.wait(running, timeout=120)
    assert info.value.code == "worker_crashed" and "SIGKILL" in info.value.message
    assert client.ping() < 30
    assert client.wait(client.submit("fit", params={"steps": 3}), timeout=120)["meta"]["steps"] == 3


@pytest.mark.slow
def test_a_job_that_ignores_cancel_is_stopped_by_killing_its_worker(make_server, make_client):
    server = make_server(cancel_grace=1.0)
    client = make_client(server.endpoint)
    stuck = client.submit("crash", params={"how": "hang", "steps": 1})
    _until(lambda: stuck.progress is not None, what="progress", poll=client)
    client.cancel(stuck)
    with pytest.raises(JobError) as info:
        client.wait(stuck, timeout=120)
    assert info.value.code == "cancelled"
    assert client.wait(client.submit("fit", params={"steps": 3}), timeout=120)["meta"]["steps"] == 3


def test_the_server_process_never_imports_torch(serve_process):
    proc, address = serve_process()
    with Client(address, timeouts=Timeouts(ping=30)) as client:
        assert client.wait(client.submit("fit", params={"steps": 3}), timeout=120)["meta"]["steps"] == 3
    maps = Path(f"/proc/{proc.pid}/maps").read_text()
    assert "libtorch" not in maps and "torch/_C" not in maps
    children = _children(proc.pid)
    assert any("libtorch" in Path(f"/proc/{pid}/maps").read_text() for pid in children)  # the worker has it


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_serve_with_an_unusable_device_says_why_and_exits(tmp_path):
    done = subprocess.run([sys.executable, "-m", "backend.cli", "serve", "--bind", "127.0.0.1:*", "--device", "cuda",
                           "--output-dir", str(tmp_path / "jobs")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1 and "worker process could not start" in done.stderr and "CUDA" in done.stderr
    assert "Traceback" not in done.stderr


# ---------------------------------------------------------------------- item 4: a full disk
@pytest.fixture
def small_disk(tmp_path):
    """A real 8 MiB tmpfs (needs root, as on the project's machines and CI)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass
    return filler


@pytest.mark.slow
def test_a_full_disk_fails_jobs_with_disk_full_and_the_queue_goes_on(make_server, make_client, small_disk):
    server = make_server(output_dir=small_disk / "jobs", min_free_mb=0)
    client = make_client(server.endpoint)
    running = client.submit("fit", params={"steps": 40, "step_ms": 50, "file_mb": 1})
    _until(lambda: running.progress is not None, what="progress", poll=client)
    filler = _fill(small_disk)
    with pytest.raises(JobError) as info:
        client.wait(running, timeout=120)
    assert info.value.code == "disk_full" and str(server.store.root) in info.value.message
    # Submits while the disk is full are refused without leaving a folder behind.
    before = sorted(p.name for p in server.store.root.iterdir())
    with pytest.raises(JobError) as info:
        client.wait(client.submit("fit", params={"steps": 2}), timeout=60)
    assert info.value.code == "disk_full"
    assert sorted(p.name for p in server.store.root.iterdir()) == before
    assert client.ping() < 30
    filler.unlink()  # space again: the dispatcher is alive and the next job runs
    assert client.wait(client.submit("fit", params={"steps": 2}), timeout=120)["meta"]["steps"] == 2


def test_a_submit_below_the_free_space_minimum_creates_nothing(make_server, make_client, small_disk):
    server = make_server(output_dir=small_disk / "jobs", min_free_mb=64)
    client = make_client(server.endpoint)
    with pytest.raises(JobError) as info:
        client.wait(client.submit("fit", params={"steps": 2}), timeout=60)
    assert info.value.code == "disk_full" and "MiB" in info.value.message
    assert list(server.store.root.iterdir()) == []


# ---------------------------------------------------------------------- item 5: signals
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_job_marks_it_interrupted_and_exits_0(serve_process, tmp_path, signum):
    proc, address = serve_process(output_dir=tmp_path / "jobs")
    with Client(address, timeouts=Timeouts(ping=30, lost=600)) as client:
        job = client.submit("fit", params={"steps": 100_000, "step_ms": 5})
        _until(lambda: job.progress is not None, what="progress", poll=client)
        time.sleep(1.0)
        sent = time.time()
        proc.send_signal(signum)
        assert proc.wait(60) == 0, proc.log_path.read_text()
        exited = time.time()
    state = json.loads((tmp_path / "jobs" / job.job_id / "state.json").read_text())
    assert (state["state"], state["error_code"]) == ("failed", "interrupted")
    assert sent - 1.0 <= state["finished"] <= exited  # the time it really ran, not the next start's
    assert state["finished"] - state["started"] >= 1.0
    assert "Segmentation" not in proc.log_path.read_text() and "terminate called" not in proc.log_path.read_text()


def _server_running_a_hanging_job(serve_process, tmp_path) -> tuple[subprocess.Popen, list[int]]:
    """A real server whose worker runs a job that ignores cancel; returns (server, worker pids)."""
    proc, address = serve_process(output_dir=tmp_path / "jobs")
    with Client(address, timeouts=Timeouts(ping=30, lost=600)) as client:
        job = client.submit("crash", params={"how": "hang", "steps": 1})
        _until(lambda: job.progress is not None, what="progress", poll=client)
    workers = _children(proc.pid)
    assert workers
    return proc, workers


def test_a_second_signal_exits_at_once(serve_process, tmp_path):
    proc, workers = _server_running_a_hanging_job(serve_process, tmp_path)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 128 + signal.SIGINT
    _until(lambda: not any(map(_running, workers)), timeout=30, what="the worker to end with the server")


def test_a_killed_server_leaves_no_worker_running(serve_process, tmp_path):
    proc, workers = _server_running_a_hanging_job(serve_process, tmp_path)
    proc.kill()
    proc.wait(60)
    _until(lambda: not any(map(_running, workers)), timeout=30, what="the worker to die with the server")


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (every thread's: the worker is started by a thread)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:  # the thread ended between the listing and the read
            continue
    return found


def _running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0]
    except (OSError, IndexError):
        return False


def _generate(tmp_path, name: str, *extra: str, env: dict | None = None) -> subprocess.Popen:
    """``splatsmith generate`` (the console command: ``backend.launch``) of a tiny text job."""
    environment = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="200", **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "backend", "generate", "--prompt", "a cube", "--preset", "tiny",
                             "--device", "cpu", "--output-dir", str(tmp_path / name), "--out",
                             str(tmp_path / f"{name}.glb"), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=environment, cwd=ROOT)


def _job_folder(jobs: Path) -> Path | None:
    folders = [d for d in jobs.iterdir() if (d / "state.json").is_file()] if jobs.is_dir() else []
    return folders[0] if folders else None


@pytest.mark.slow
def test_a_stop_signal_at_any_point_of_start_up_cancels_an_in_process_generate(tmp_path):
    """Issue 28, item 2: SIGINT or SIGTERM while the command starts (imports), the moment the job
    folder exists (the tiny teachers being written into a fresh cache, then loaded), and once
    the teachers are written: each cancels, says so (with the folder once there is one), exits
    130 and writes no asset."""
    cases = []
    # 1. While the command is still importing: no job folder yet.
    early = _generate(tmp_path, "early")
    time.sleep(0.3)
    early.send_signal(signal.SIGINT)
    cases.append(("early", early, None))
    for name, sig, wait_for in (("folder", signal.SIGINT, "folder"), ("teachers", signal.SIGTERM, "teachers")):
        cache = tmp_path / f"cache-{name}"  # a fresh cache: the tiny teachers are written by this job
        proc = _generate(tmp_path, name, env={"SPLATSMITH_CACHE": str(cache)})
        jobs = tmp_path / name
        if wait_for == "folder":
            _until(lambda: _job_folder(jobs) is not None, timeout=600, what="the job folder")
        else:
            _until(lambda: any(cache.rglob("model_index.json")), timeout=600, what="a written tiny teacher")
        assert proc.poll() is None
        proc.send_signal(sig)
        cases.append((name, proc, jobs))
    for name, proc, jobs in cases:
        output = proc.communicate(timeout=600)[0].decode()
        assert proc.returncode == 130, (name, output[-2000:])
        assert "job cancelled" in output and "Traceback" not in output, (name, output[-2000:])
        assert not (tmp_path / f"{name}.glb").exists()
        if jobs is None:
            assert "before it started" in output
        else:
            folder = _job_folder(jobs)
            assert str(folder) in output, output[-2000:]
            assert json.loads((folder / "state.json").read_text())["state"] == "cancelled"


@pytest.mark.slow
def test_a_stop_signal_cancels_a_generate_running_on_a_server(tmp_path, serve_process):
    """``generate --server``: SIGINT once the job runs there cancels the server's job and says so."""
    jobs = tmp_path / "server-jobs"
    _, address = serve_process(output_dir=jobs)
    proc = _generate(tmp_path, "remote", "--server", address)
    _until(lambda: (folder := _job_folder(jobs)) is not None and '"running"' in (folder / "state.json").read_text(),
           timeout=600, what="the job running on the server")
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 130 and "cancelled on" in output and "Traceback" not in output, output[-2000:]
    folder = _job_folder(jobs)
    assert folder.name in output
    _until(lambda: json.loads((folder / "state.json").read_text())["state"] == "cancelled", timeout=60,
           what="the server's job cancelled")


# ---------------------------------------------------------------------- item 6: cancel in every stage
def _cancel_after(token: CancelToken, seconds: float) -> list[float]:
    fired = []

    def fire():
        fired.append(time.monotonic())
        token.cancel()

    threading.Timer(seconds, fire).start()
    return fired


def _cancel_latency(run, delay: float = 0.3) -> float:
    token = CancelToken()
    fired = _cancel_after(token, delay)
    with pytest.raises(JobCancelled):
        run(token)
    return time.monotonic() - fired[0]


def test_cancel_reaches_extraction_unwrapping_and_baking():
    from backend.cameras import orbit_cameras
    from backend.geometry.extract import density_grid, extract_mesh
    from backend.geometry.uv import bake_texture, unwrap
    from backend.render.gaussians import GaussianModel

    gen = torch.Generator().manual_seed(0)
    model = GaussianModel.init_sphere(20_000, 0.5, 0.5, 0, gen)
    latencies = {
        "density grid": _cancel_latency(lambda token: density_grid(model, 256, cancel=token)),
        "extraction": _cancel_latency(lambda token: extract_mesh(model, 256, cancel=token)),
    }
    import trimesh

    sphere = trimesh.creation.icosphere(subdivisions=5)  # 20,480 faces: xatlas takes seconds
    latencies["unwrapping"] = _cancel_latency(lambda token: unwrap(sphere.vertices, sphere.faces, cancel=token), 0.5)
    small = trimesh.creation.icosphere(subdivisions=4)
    uvm = unwrap(small.vertices, small.faces)
    cams = orbit_cameras([0.0] * 400, list(np.linspace(0, 360, 400)), 2.0, 49.1, 256, 256)
    images = torch.rand(400, 256, 256, 3)
    latencies["baking"] = _cancel_latency(lambda token: bake_texture(uvm, cams, images, size=1024, cancel=token), 0.5)
    print("cancel latency per stage (s):", {k: round(v, 3) for k, v in latencies.items()})
    for stage, seconds in latencies.items():
        assert seconds < 30, (stage, seconds)  # a ceiling against a stage that ignores cancel


def test_cancel_through_the_server_ends_a_running_job(make_server, make_client):
    server = make_server()
    client = make_client(server.endpoint)
    job = client.submit("fit", params={"steps": 100_000, "step_ms": 5})
    _until(lambda: job.progress is not None, what="progress", poll=client)
    client.cancel(job)
    with pytest.raises(JobError) as info:
        client.wait(job, timeout=120)
    assert info.value.code == "cancelled"
    assert json.loads((server.store.root / job.job_id / "state.json").read_text())["state"] == "cancelled"


# ---------------------------------------------------------------------- item 7: a client that never reads
def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_a_client_that_never_reads_costs_bounded_memory(serve_process):
    proc, address = serve_process()
    with Client(address, timeouts=Timeouts(ping=30)) as client:
        done = client.wait(client.submit("fit", params={"steps": 2, "file_mb": 4}), timeout=300)
        before = _rss(proc.pid)
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 1)
        sock.connect(f"tcp://{address}")
        try:
            pings = []
            for k in range(2000):
                sock.send_multipart(encode(messages.make("fetch", job_id=done["job_id"])))
                sock.send_multipart(encode(messages.make("chunk", job_id=done["job_id"], name="blob.bin",
                                                         offset=0, size=16 << 20)))
                if k % 40 == 0:
                    pings.append(client.ping())
            time.sleep(2.0)
            pings += [client.ping() for _ in range(20)]
            growth = _rss(proc.pid) - before
        finally:
            sock.close(0)
    print(f"never-reading client: RSS growth {growth / 2**20:.1f} MiB, ping p99 {np.percentile(pings, 99) * 1000:.1f} ms")
    assert growth < 192 << 20  # the per-client outbox bound is 64 MiB; a repeated request adds nothing
    assert max(pings) < 30
