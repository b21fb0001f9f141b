"""Job lifecycle through a real server and real clients on loopback, with real pipelines."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from pipelines_for_tests import run_a_job_cancelled_on_its_way
from shared_protocol.client import JobError


def _wait_until(predicate, timeout=20.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def _poll_until(client, predicate, timeout=20.0):
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        client.poll(0.02)


def test_submit_runs_and_returns_arrays_files_and_disk_layout(make_server, make_client):
    server = make_server()
    client = make_client(server.endpoint)
    welcome = client.hello()
    assert welcome["device"].startswith("cpu") and "fit" in welcome["pipelines"]
    assert welcome["pipelines"]["fit"]["params"]["steps"]["max"] == 100_000
    events = []
    handle = client.submit("fit", params={"steps": 30, "lr": 0.1}, seed=3, label="sphere",
                           on_event=lambda h, m: events.append(m["type"]))
    result = client.wait(handle, timeout=30)
    assert events[0] == "accepted" and events[-1] == "result" and "progress" in events and "preview" in events
    points = result["arrays"]["points"]
    assert points.shape == (256, 3) and points.dtype == np.float32
    # The fit converges towards the unit sphere it was given.
    assert np.allclose(np.linalg.norm(points, axis=1), 1.0, atol=0.35)
    assert np.array_equal(np.frombuffer(result["files"]["points.bin"].tobytes(), np.float32).reshape(-1, 3), points)
    job_dir = server.store.root / handle.job_id
    assert json.loads((job_dir / "request.json").read_text())["params"]["steps"] == 30
    assert json.loads((job_dir / "state.json").read_text())["state"] == "done"
    assert "state done" in (job_dir / "log.txt").read_text()
    assert result["meta"]["final_loss"] < 0.1
    # Same seed, same result.
    again = client.wait(client.submit("fit", params={"steps": 30, "lr": 0.1}, seed=3), timeout=30)
    assert np.array_equal(again["arrays"]["points"], points)


def test_inputs_are_validated_and_used(make_server, make_client):
    server = make_server()
    client = make_client(server.endpoint)
    target = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
    result = client.wait(client.submit("fit", params={"points": 16, "steps": 200, "lr": 0.1}, inputs={"target": target}), 30)
    assert np.abs(result["arrays"]["points"] - target).max() < 0.05
    bad = client.submit("fit", params={"points": 8}, inputs={"target": target})
    with pytest.raises(JobError) as info:
        client.wait(bad, timeout=10)
    assert info.value.code == "bad_params" and "16 points" in info.value.message


def test_fifo_order_with_two_clients(make_server, make_client):
    server = make_server()
    a, b = make_client(server.endpoint), make_client(server.endpoint)
    first = a.submit("fit", params={"steps": 15, "step_ms": 20})
    _poll_until(a, lambda: first.job_id is not None)
    second = b.submit("fit", params={"steps": 5})
    third = a.submit("fit", params={"steps": 5})
    _poll_until(b, lambda: second.job_id is not None)
    _poll_until(a, lambda: third.job_id is not None)
    for client, handle in ((a, first), (b, second), (a, third)):
        client.wait(handle, timeout=30)
    info = {j["job_id"]: j for j in a.status()}
    t1, t2, t3 = (info[h.job_id] for h in (first, second, third))
    assert t1["finished"] <= t2["started"] and t2["finished"] <= t3["started"]


def test_cancel_running_job_within_one_second(make_server, make_client):
    server = make_server()
    client = make_client(server.endpoint)
    handle = client.submit("fit", params={"steps": 100_000, "step_ms": 5})
    _poll_until(client, lambda: handle.progress is not None)
    start = time.monotonic()
    client.cancel(handle)
    with pytest.raises(JobError) as info:
        client.wait(handle, timeout=5)
    latency = time.monotonic() - start
    assert info.value.code == "cancelled" and latency < 1.0, latency
    assert client.status(handle.job_id)[0]["state"] == "cancelled"
    # The worker is free again.
    assert client.wait(client.submit("fit", params={"steps": 3}), timeout=10)["meta"]["steps"] == 3


def test_a_cancel_that_comes_while_the_job_is_on_its_way_to_the_worker_is_kept(make_server):
    server = make_server()
    assert server.wait_worker(600), server.executor.fatal
    outcome = run_a_job_cancelled_on_its_way(server, server.executor.workers()[0])
    assert outcome["code"] == "cancelled" and "restarted" not in outcome["text"], outcome


def test_cancel_queued_job(make_server, make_client):
    server = make_server()
    client = make_client(server.endpoint)
    running = client.submit("fit", params={"steps": 100_000, "step_ms": 5})
    queued = client.submit("fit", params={"steps": 3})
    _poll_until(client, lambda: queued.job_id is not None and running.progress is not None)
    client.cancel(queued)
    with pytest.raises(JobError, match="before it started"):
        client.wait(queued, timeout=5)
    assert running.state == "running"
    client.cancel(running)
    with pytest.raises(JobError):
        client.wait(running, timeout=5)


def test_client_disconnects_mid_job_and_fetches_later(make_server, make_client):
    server = make_server()
    first = make_client(server.endpoint)
    handle = first.submit("fit", params={"steps": 40, "step_ms": 20})
    _poll_until(first, lambda: handle.progress is not None)
    job_id = handle.job_id
    first.close()
    second = make_client(server.endpoint)
    follow = second.fetch(job_id)  # still running: this client follows it from now on
    result = second.wait(follow, timeout=30)
    assert result["job_id"] == job_id and result["arrays"]["points"].shape == (256, 3)
    assert follow.progress is not None  # progress streamed to the new client
    # A third client fetches the finished job without the files.
    third = make_client(server.endpoint)
    late = third.wait(third.fetch(job_id, files=False), timeout=10)
    assert late["files"] == {} and late["meta"]["files"] == ["points.bin"]


@pytest.mark.slow
def test_server_restarted_between_submit_and_fetch(make_server, make_client, tmp_path):
    out = tmp_path / "persist"
    server = make_server(output_dir=out)
    client = make_client(server.endpoint)
    done = client.submit("fit", params={"steps": 5})
    client.wait(done, timeout=20)
    interrupted = client.submit("fit", params={"steps": 100_000, "step_ms": 5})
    _poll_until(client, lambda: interrupted.progress is not None)
    client.close()
    server.stop()
    restarted = make_server(output_dir=out)
    client2 = make_client(restarted.endpoint)
    listed = {j["job_id"]: j for j in client2.status()}
    assert listed[done.job_id]["state"] == "done"
    assert listed[interrupted.job_id]["state"] == "failed" and listed[interrupted.job_id]["error_code"] == "interrupted"
    result = client2.wait(client2.fetch(done.job_id), timeout=20)
    assert result["arrays"]["points"].shape == (256, 3)
    with pytest.raises(JobError) as info:
        client2.wait(client2.fetch(interrupted.job_id), timeout=20)
    assert info.value.code == "interrupted"


@pytest.mark.slow
def test_pipeline_exception_fails_only_that_job(make_server, make_client):
    server = make_server()
    client = make_client(server.endpoint)
    with pytest.raises(JobError) as info:
        client.wait(client.submit("boom"), timeout=10)
    assert info.value.code == "failed" and "ValueError: the pipeline tripped over a bad value" in info.value.message
    assert client.wait(client.submit("fit", params={"steps": 2}), timeout=10)["meta"]["steps"] == 2
    failed = [j for j in client.status() if j["state"] == "failed"][0]
    assert "Traceback" in (server.store.root / failed["job_id"] / "log.txt").read_text()


def test_out_of_memory_fails_job_with_code_and_next_job_runs(make_server, make_client):
    server = make_server()
    client = make_client(server.endpoint)
    with pytest.raises(JobError) as info:
        client.wait(client.submit("hog"), timeout=10)
    assert info.value.code == "out_of_memory" and "ran out of memory" in info.value.message
    assert client.wait(client.submit("fit", params={"steps": 2}), timeout=10)["meta"]["steps"] == 2


def test_progress_is_throttled_to_ten_per_second(make_server, make_client):
    server = make_server()
    client = make_client(server.endpoint)
    stamps = []
    handle = client.submit("fit", params={"steps": 600, "step_ms": 1, "preview_every": 1000},
                           on_event=lambda h, m: m["type"] == "progress" and stamps.append(time.monotonic()))
    client.wait(handle, timeout=30)
    info = client.status(handle.job_id)[0]
    duration = info["finished"] - info["started"]
    assert 1 <= len(stamps) <= duration * 10 + 3, (len(stamps), duration)
    assert handle.progress["step"] == 600 and handle.progress["total"] == 600


def test_slow_client_gets_latest_preview_and_never_delays_the_job(make_server, make_client):
    server = make_server()
    client = make_client(server.endpoint)
    steps = 150
    handle = client.submit("fit", params={"steps": steps, "points": 20_000, "step_ms": 5, "preview_every": 1})
    _poll_until(client, lambda: handle.job_id is not None)
    # Read nothing while ~150 previews of 380 kB each are produced: the job must finish anyway
    # (the ceiling is against a hang, far above a loaded run).
    end = time.monotonic() + 600
    while server.store.get(handle.job_id).state != "done":
        assert time.monotonic() < end, "the job was held up by a client that does not read"
        time.sleep(0.2)
    result = client.wait(handle, timeout=30)
    assert result["arrays"]["points"].shape == (20_000, 3)
    received = handle.preview_counts["gaussians"]
    assert received < steps // 4, received  # no backlog: most previews were superseded
    assert server.stats["superseded"] > steps // 2
    assert handle.previews["gaussians"]["meta"]["step"] == steps  # the newest one arrived
