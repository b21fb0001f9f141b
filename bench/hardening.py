"""The figures of the hardening work (issue 11), measured against real ``splatsmith serve``
processes on loopback. Prints figures; asserts nothing. Run: ``python bench/hardening.py``.

- fuzz: random hostile messages (the test suite's generator) sent to a server; how many were
  answered, and whether it still answers a ping;
- throughput: 50 clients x 200 ping requests at once (requests per second);
- a client that never reads (RCVHWM 1, 2000 fetch + 2000 chunk requests for a finished job):
  the server's RSS growth, and another client's ping round trips meanwhile (p50/p99);
- cancel -> ``cancelled`` for a running job through the server, the cancel latency of each
  mesh stage (density grid, extraction, unwrapping, baking) called directly, and cancel ->
  ``cancelled`` of a real DreamGaussian job (tiny teachers) in each of its stages;
- SIGTERM -> exit of a server with a running job.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import zmq

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from shared_protocol import messages  # noqa: E402
from shared_protocol.client import Client, JobError, Timeouts  # noqa: E402
from shared_protocol.codec import decode, encode  # noqa: E402


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(jobs: Path) -> tuple[subprocess.Popen, str]:
    address = f"127.0.0.1:{_port()}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    proc = subprocess.Popen([sys.executable, "-m", "backend.cli", "serve", "--bind", address, "--device", "cpu",
                             "--output-dir", str(jobs), "--plugin", "pipelines_for_tests"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with Client(address, timeouts=Timeouts(ping=2)) as probe:
        while True:
            try:
                probe.ping()
                return proc, address
            except Exception:  # noqa: BLE001
                if proc.poll() is not None:
                    raise SystemExit("the server did not start")


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def bench_fuzz(address: str, n: int = 3000) -> None:
    from hypothesis import HealthCheck, given, settings

    from test_hardening_wire import hostile_frames

    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://{address}")
    counts = {"sent": 0, "answered": 0}

    @settings(max_examples=n, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(hostile_frames())
    def one(frames):
        sock.send_multipart(frames)
        counts["sent"] += 1
        if sock.poll(30_000):
            counts["answered"] += 1
            while sock.poll(0):
                messages.validate(decode(sock.recv_multipart()), "reply")

    one()
    sock.close(0)
    with Client(address, timeouts=Timeouts(ping=10)) as client:
        alive = client.ping() < 10
    print(f"fuzz: {counts['sent']} hostile messages, {counts['answered']} answered, server alive afterwards: {alive}")


def bench_throughput(address: str, clients: int = 50, requests: int = 200) -> None:
    barrier = threading.Barrier(clients + 1)
    done = []

    def worker():
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"tcp://{address}")
        frames = encode(messages.make("ping", req_id="p"))
        barrier.wait()
        got = 0
        for _ in range(requests):
            sock.send_multipart(frames)
        while got < requests and sock.poll(30_000):
            sock.recv_multipart()
            got += 1
        done.append(got)
        sock.close(0)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    dt = time.perf_counter() - start
    print(f"throughput: {clients} clients x {requests} requests: {sum(done)} answered, {sum(done) / dt:.0f} req/s "
          f"(target >= 5000)")


def bench_never_reading(proc: subprocess.Popen, address: str) -> None:
    with Client(address, timeouts=Timeouts(ping=30)) as client:
        done = client.wait(client.submit("fit", params={"steps": 2, "file_mb": 4}), timeout=300)
        before = rss(proc.pid)
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 1)
        sock.connect(f"tcp://{address}")
        pings = []
        for k in range(2000):
            sock.send_multipart(encode(messages.make("fetch", job_id=done["job_id"])))
            sock.send_multipart(encode(messages.make("chunk", job_id=done["job_id"], name="blob.bin", offset=0,
                                                     size=16 << 20)))
            if k % 20 == 0:
                pings.append(client.ping())
        pings += [client.ping() for _ in range(100)]
        growth = rss(proc.pid) - before
        sock.close(0)
    ms = np.array(pings) * 1000
    print(f"never-reading client: server RSS {before / 2**20:.0f} MiB -> +{growth / 2**20:.1f} MiB; other client's "
          f"ping p50 {np.percentile(ms, 50):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms (target < 100 ms)")


def bench_cancel(address: str) -> None:
    with Client(address, timeouts=Timeouts(ping=30)) as client:
        job = client.submit("fit", params={"steps": 100_000, "step_ms": 5})
        while job.progress is None:
            client.poll(0.05)
        asked = time.perf_counter()
        client.cancel(job)
        try:
            client.wait(job, timeout=120)
        except JobError:
            pass
        print(f"cancel -> cancelled through the server (optimisation stage): {(time.perf_counter() - asked) * 1000:.0f} ms")
    import torch
    import trimesh

    from backend.cameras import orbit_cameras
    from backend.geometry.extract import density_grid, extract_mesh
    from backend.geometry.uv import bake_texture, unwrap
    from backend.pipelines.base import CancelToken, JobCancelled
    from backend.render.gaussians import GaussianModel

    def latency(run, delay):
        token = CancelToken()
        fired = []
        threading.Timer(delay, lambda: (fired.append(time.perf_counter()), token.cancel())).start()
        try:
            run(token)
            return float("nan")
        except JobCancelled:
            return time.perf_counter() - fired[0]

    model = GaussianModel.init_sphere(20_000, 0.5, 0.5, 0, torch.Generator().manual_seed(0))
    sphere = trimesh.creation.icosphere(subdivisions=5)
    small = trimesh.creation.icosphere(subdivisions=4)
    uvm = unwrap(small.vertices, small.faces)
    cams = orbit_cameras([0.0] * 400, list(np.linspace(0, 360, 400)), 2.0, 49.1, 256, 256)
    images = torch.rand(400, 256, 256, 3)
    figures = {
        "density grid (256^3)": latency(lambda t: density_grid(model, 256, cancel=t), 0.3),
        "extraction (256^3)": latency(lambda t: extract_mesh(model, 256, cancel=t), 0.3),
        "unwrapping (20k faces)": latency(lambda t: unwrap(sphere.vertices, sphere.faces, cancel=t), 0.5),
        "baking (400 views)": latency(lambda t: bake_texture(uvm, cams, images, size=1024, cancel=t), 0.5),
    }
    for stage, seconds in figures.items():
        print(f"cancel latency, {stage}: {seconds * 1000:.0f} ms")


def bench_cancel_dreamgaussian(address: str) -> None:
    """Cancel a real DreamGaussian job (tiny teachers, sizes raised so that each mesh step takes
    seconds) in each of its stages, and time cancel -> ``cancelled`` at the client."""
    params = {"mode": "text", "prompt": "a chair", "mesh_resolution": 256, "max_faces": 60_000, "texture_size": 2048,
              "bake_size": 512, "iters": 200, "texture_iters": 200}
    stages = {"stage 1 (Gaussians)": lambda m: m["stage"] == "gaussians" and m["step"] > 5,
              "mesh: extraction": lambda m: m.get("message") == "extracting the surface",
              "mesh: UV unwrapping": lambda m: m.get("message") == "UV unwrapping",
              "mesh: baking": lambda m: (m.get("message") or "").startswith("baking"),
              "stage 2 (texture)": lambda m: m["stage"] not in ("gaussians", "mesh") and m["step"] > 1}
    with Client(address, timeouts=Timeouts(ping=30, lost=600)) as client:
        for name, when in stages.items():
            seen = []
            job = client.submit("dreamgaussian", preset="tiny", params=params, seed=1,
                                on_event=lambda h, m: seen.append(m) if m["type"] == "progress" else None)
            end = time.monotonic() + 900
            while not any(when(m) for m in seen) and not job.finished and time.monotonic() < end:
                client.poll(0.01)
            if job.finished:
                print(f"cancel latency, DreamGaussian {name}: the job ended before the stage was seen")
                continue
            asked = time.perf_counter()
            client.cancel(job)
            try:
                client.wait(job, timeout=300)
            except JobError as exc:
                code = exc.code
            print(f"cancel -> {code}, DreamGaussian {name}: {(time.perf_counter() - asked) * 1000:.0f} ms")


def bench_sigterm(jobs: Path) -> None:
    proc, address = serve(jobs)
    with Client(address, timeouts=Timeouts(ping=30, lost=600)) as client:
        job = client.submit("fit", params={"steps": 100_000, "step_ms": 5})
        while job.progress is None:
            client.poll(0.05)
    sent = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(60)
    print(f"SIGTERM with a running job -> exit {code} in {(time.perf_counter() - sent) * 1000:.0f} ms")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        proc, address = serve(Path(tmp) / "jobs")
        try:
            bench_fuzz(address)
            bench_throughput(address)
            bench_never_reading(proc, address)
            bench_cancel(address)
            bench_cancel_dreamgaussian(address)
        finally:
            proc.terminate()
            proc.wait(60)
        bench_sigterm(Path(tmp) / "jobs2")


if __name__ == "__main__":
    main()
