"""Wire throughput: a large result and many small progress messages, server -> client over
TCP loopback, with the project's codec, compared with a plain memcpy of the same bytes.

Prints figures; asserts nothing. Run: ``python bench/stream.py``.

Result: 200k vertices (float32 [V,3]), 400k faces (int32 [F,3]), per-corner UVs (float32
[3F,2]) and a 1024x1024 RGBA texture (uint8), encoded, sent ROUTER -> DEALER, received and
decoded into numpy arrays. Also the same through the real Server's ``fetch`` (read from the
job folder on disk).
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared_protocol import messages  # noqa: E402
from shared_protocol.codec import decode, encode  # noqa: E402


def make_result() -> dict:
    rng = np.random.default_rng(0)
    return messages.make(
        "result", job_id="bench",
        arrays={
            "vertices": rng.random((200_000, 3), dtype=np.float32),
            "faces": rng.integers(0, 200_000, (400_000, 3), dtype=np.int32),
            "uv": rng.random((1_200_000, 2), dtype=np.float32),
            "texture": rng.integers(0, 255, (1024, 1024, 4), dtype=np.uint8),
        },
        meta={"faces": 400_000},
    )


def pair(buffers: int = 8 << 20):
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.SNDBUF, buffers)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.RCVBUF, buffers)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    dealer.send(b"hi")
    ident, _ = router.recv_multipart()
    return router, dealer, ident


def _sender(port_queue, repeats: int) -> None:
    """Child process: the 'server' side. Sends the result once per request."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 1000)
    port_queue.put(router.bind_to_random_port("tcp://127.0.0.1"))
    msg = make_result()
    for _ in range(repeats + 1):
        ident, _ = router.recv_multipart()
        router.send_multipart([ident, *encode(msg)], copy=False)
    router.close()
    ctx.term()


def bench_result(repeats: int = 10) -> None:
    import multiprocessing as mp

    msg = make_result()
    nbytes = sum(a.nbytes for a in msg["arrays"].values())
    spawn = mp.get_context("spawn")
    ports = spawn.Queue()
    proc = spawn.Process(target=_sender, args=(ports, repeats))
    proc.start()
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(f"tcp://127.0.0.1:{ports.get(timeout=60)}")
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        dealer.send(b"go")
        frames = dealer.recv_multipart(copy=False)
        out = messages.validate(decode(frames), "reply")
        if i:  # the first transfer warms the connection up
            times.append(time.perf_counter() - t0)
    proc.join(30)
    dealer.close(0)
    assert np.array_equal(out["arrays"]["faces"], msg["arrays"]["faces"])
    src = np.concatenate([a.reshape(-1).view(np.uint8) for a in msg["arrays"].values()])
    dst = np.empty_like(src)
    copies = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        copies.append(time.perf_counter() - t0)
    t, c = statistics.median(times), statistics.median(copies)
    print(f"result payload             {nbytes / 1e6:8.1f} MB")
    print(f"wire send+recv+decode      {t * 1e3:8.1f} ms   {nbytes / t / 1e9:6.2f} GB/s (server in another process; target >= 1 GB/s)")
    print(f"plain memcpy               {c * 1e3:8.1f} ms   {nbytes / c / 1e9:6.2f} GB/s")
    print(f"wire / memcpy time         {t / c:8.1f} x")


def bench_progress(n: int = 50_000) -> None:
    router, dealer, ident = pair()
    router.setsockopt(zmq.SNDHWM, 0)
    dealer.setsockopt(zmq.RCVHWM, 0)
    t0 = time.perf_counter()
    for i in range(n):
        router.send_multipart([ident, *encode(messages.make(
            "progress", job_id="bench", stage="sds", step=i, total=n, loss=0.5, eta_s=1.0, elapsed_s=2.0))])
        if i % 100 == 99:  # receive as we go, as a client would
            while dealer.poll(0):
                messages.validate(decode(dealer.recv_multipart()), "reply")
    received = 0
    while received < n and dealer.poll(2000):
        messages.validate(decode(dealer.recv_multipart()), "reply")
        received += 1
    dt = time.perf_counter() - t0
    print(f"progress messages          {n / dt:8.0f} msg/s (encode+send+recv+decode+validate; target >= 5000)")
    router.close(0)
    dealer.close(0)


def bench_raw_tcp(nbytes: int = 21_000_000, repeats: int = 10) -> None:
    """The ceiling: plain sockets moving the same number of bytes over loopback."""
    import os
    import socket
    import threading

    data = os.urandom(nbytes)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def serve():
        conn, _ = srv.accept()
        for _ in range(repeats + 1):
            conn.recv(2)
            conn.sendall(data)
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    cl = socket.create_connection(srv.getsockname())
    view = memoryview(bytearray(nbytes))
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        cl.send(b"go")
        got = 0
        while got < nbytes:
            got += cl.recv_into(view[got:])
        if i:
            times.append(time.perf_counter() - t0)
    cl.close()
    srv.close()
    t = statistics.median(times)
    print(f"raw TCP loopback ceiling   {t * 1e3:8.1f} ms   {nbytes / t / 1e9:6.2f} GB/s (plain sockets, same bytes)")


def bench_server_fetch() -> None:
    from backend.pipelines.base import Pipeline, Result
    from backend.server import Server
    from shared_protocol.client import Client

    class Big(Pipeline):
        name = "big"

        def run(self, request, emit, cancel):
            return Result(arrays=dict(make_result()["arrays"]))

    with tempfile.TemporaryDirectory() as tmp:
        server = Server("tcp://127.0.0.1:*", tmp, "cpu", pipelines={"big": Big}).start()
        client = Client(server.endpoint)
        job = client.submit("big")
        client.wait(job, timeout=120)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            client.wait(client.fetch(job.job_id, files=False), timeout=120)
            times.append(time.perf_counter() - t0)
        nbytes = sum(a.nbytes for a in make_result()["arrays"].values())
        t = statistics.median(times)
        print(f"server fetch from disk     {t * 1e3:8.1f} ms   {nbytes / t / 1e9:6.2f} GB/s (includes reading result.npz)")
        client.close()
        server.stop()


if __name__ == "__main__":
    bench_result()
    bench_raw_tcp()
    bench_progress()
    bench_server_fetch()
