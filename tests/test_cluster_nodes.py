"""``--workers auto`` with a real multi-node Ray cluster on this machine
(``ray.cluster_utils.Cluster``: a head and a second node, separate raylets): the server
follows the cluster, one CPU worker per node, and a node that joins gets a worker; with
``shared_output`` the actors write the job folders themselves."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

from backend.cluster import RayOptions  # noqa: E402
from backend.server import Server  # noqa: E402
from pipelines_for_tests import TEST_PIPELINES  # noqa: E402
from shared_protocol.client import Client, Timeouts  # noqa: E402


@pytest.mark.slow
def test_workers_auto_follows_the_nodes_of_a_cluster_it_joins(tmp_path, monkeypatch):
    import os

    from ray.cluster_utils import Cluster

    # The nodes have the test pipelines installed, as a cluster's image has the plugins it serves.
    tests = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    server = None
    try:
        server = Server("tcp://127.0.0.1:*", tmp_path / "jobs", "cpu", pipelines=TEST_PIPELINES, executor="ray",
                        ray=RayOptions(address=cluster.address, workers="auto", watch_interval=0.5,
                                       shared_output=True)).start()
        assert server.wait_worker(600), server.executor.fatal
        assert [w["name"] for w in server.workers()] == ["ray-1"]  # one node, no GPU: one CPU worker
        cluster.add_node(num_cpus=1)
        end = time.monotonic() + 600  # a ceiling against hangs
        while sum(w["state"] == "idle" for w in server.workers()) < 2:
            assert time.monotonic() < end, server.workers()
            time.sleep(0.1)
        with Client(server.endpoint, timeouts=Timeouts(ping=30.0, submit=60.0)) as client:
            handles = [client.submit("fit", params={"steps": 20}) for _ in range(2)]
            assert [client.wait(h, 300)["meta"]["steps"] for h in handles] == [20, 20]
            assert len(client.hello()["workers"]) == 2
        for handle in handles:  # --shared-output: the actors wrote the job folders themselves
            folder = tmp_path / "jobs" / handle.job_id
            assert (folder / "points.bin").stat().st_size == 256 * 3 * 4  # 256 points, float32 xyz
            assert "progress fit" in (folder / "log.txt").read_text()
    finally:
        if server is not None:
            server.stop(60)
        cluster.shutdown()
