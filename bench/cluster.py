"""The Ray executor: throughput with 1 and 2 workers, and the dispatch overhead per job.

Prints figures; asserts nothing.

    python bench/cluster.py                    # CPU: a local Ray instance, DreamGaussian's tiny preset
    python bench/cluster.py --jobs 8 --preset tiny --address auto   # an existing cluster

For each executor (the local worker process, then Ray with 1 and with 2 workers) a server is
started in this process, every worker runs one warm-up job (its models loaded, kernels warm),
then:

- **dispatch overhead**: ``--probes`` jobs one after another on an idle server; for each, the
  time from the client's submit to the first progress message of the job's first step, as
  the client receives it (the wire both ways, the queue, the hand-over to the worker; the
  pipeline's own set-up included, which is the same for every executor), median printed;
- **throughput**: ``--jobs`` jobs submitted at once; jobs per minute from the first submit to
  the last result;
- **cancel**: the time from cancelling a running job to the client's ``cancelled`` reply.

On a 2-core machine each Ray worker reserves 1 CPU (Ray then gives torch 1 thread), while the
local worker process uses both cores; with GPUs each worker has its own.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from backend.pipelines import load_builtin  # noqa: E402
from backend.server import Server  # noqa: E402
from shared_protocol.client import Client, Timeouts  # noqa: E402


def _first_step(client: Client, params: dict, preset: str, seed: int) -> tuple[float, dict]:
    """Seconds from submit to the job's first progress message, and its result."""
    seen: list[float] = []
    start = time.monotonic()
    handle = client.submit("dreamgaussian", params=params, preset=preset, seed=seed,
                           on_event=lambda h, m: seen.append(time.monotonic()) if m["type"] == "progress" and not seen
                           else None)
    result = client.wait(handle, 3600)
    return seen[0] - start, result


def _cancel_latency(client: Client, params: dict, preset: str) -> float:
    """Seconds from the cancel request of a running job (1 s after its first step) to the
    client's ``cancelled`` reply."""
    handle = client.submit("dreamgaussian", params=dict(params, iters=100_000), preset=preset, seed=7)
    while handle.progress is None:
        client.poll(0.02)
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        client.poll(0.02)
    start = time.monotonic()
    client.cancel(handle)
    while not handle.finished:
        client.poll(0.005)
    assert handle.state == "cancelled", handle.error
    return time.monotonic() - start


def measure(executor: str, workers: int, args, root: Path) -> dict:
    from backend.cluster import RayOptions

    ray = RayOptions(address=args.address, workers=workers) if executor == "ray" else None
    server = Server("tcp://127.0.0.1:*", root / f"{executor}-{workers}", "auto", executor=executor, ray=ray).start()
    started = time.monotonic()
    try:
        assert server.wait_worker(1800), server.executor.fatal
        while sum(w["state"] == "idle" for w in server.workers()) < workers:
            time.sleep(0.1)
        ready = time.monotonic() - started
        params = {"mode": "text", "prompt": "a red cube"}
        with Client(server.endpoint, timeouts=Timeouts(ping=60.0, submit=120.0)) as client:
            warm = [client.submit("dreamgaussian", params=params, preset=args.preset, seed=i) for i in range(workers)]
            for handle in warm:
                client.wait(handle, 3600)
            overhead = [_first_step(client, params, args.preset, 100 + i)[0] for i in range(args.probes)]
            start = time.monotonic()
            handles = [client.submit("dreamgaussian", params=params, preset=args.preset, seed=200 + i)
                       for i in range(args.jobs)]
            for handle in handles:
                client.wait(handle, 3600)
            wall = time.monotonic() - start
            cancel = statistics.median(_cancel_latency(client, params, args.preset) for _ in range(3))
            device = ", ".join(sorted({w["device"] for w in client.hello()["workers"]}))
    finally:
        server.stop(120)
    return {"executor": executor if executor == "local" else f"ray x{workers}", "device": device, "ready_s": ready,
            "first_step_s": statistics.median(overhead), "jobs": args.jobs, "wall_s": wall,
            "jobs_per_min": 60.0 * args.jobs / wall, "cancel_s": cancel}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=6, help="jobs in the throughput queue")
    parser.add_argument("--probes", type=int, default=3, help="sequential jobs timed for the dispatch overhead")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--address", default="local", help="Ray address: local, auto or ray://HOST:10001")
    args = parser.parse_args()
    load_builtin()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for executor, workers in (("local", 1), ("ray", 1), ("ray", 2)):
            rows.append(measure(executor, workers, args, Path(tmp)))
            row = rows[-1]
            print(f"{row['executor']:>8}: ready in {row['ready_s']:5.1f} s | submit -> first step {row['first_step_s']:.2f} s "
                  f"(median of {args.probes}) | {row['jobs']} {args.preset} jobs in {row['wall_s']:.1f} s = "
                  f"{row['jobs_per_min']:.1f} jobs/min | cancel of a running job {row['cancel_s'] * 1000:.0f} ms "
                  f"(median of 3) | {row['device']}", flush=True)
    local = rows[0]["first_step_s"]
    for row in rows[1:]:
        print(f"dispatch overhead of {row['executor']} against the local executor: "
              f"{row['first_step_s'] - local:+.2f} s per job")
    print(f"2 Ray workers against 1: x{rows[2]['jobs_per_min'] / rows[1]['jobs_per_min']:.2f} jobs per minute")


if __name__ == "__main__":
    main()
