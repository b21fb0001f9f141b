"""The add-on in Blender 5.2 LTS (``bpy==5.2.*``, Python 3.13), run in its own environment
(``tools/blender_lts_env.py``: bpy, pyzmq, msgpack and the shared_protocol wheel, no torch) by
``tests/blender/test_blender_lts.py``, against a backend of the main environment over loopback
(``$SPLATSMITH_BACKEND_PYTHON -m backend.cli serve``). Deprecation warnings are errors here
(``-W error::DeprecationWarning``): nothing the add-on does may be on Blender 6.0's way out."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import bpy

import blender_addon
from blender_addon import client_glue
from shared_protocol.client import Client, ClientError

ROOT = Path(__file__).resolve().parents[2]
#: A ceiling against hangs, far above a loaded run.
CEILING = 1800.0


def test_this_is_blender_52_on_python_313():
    import sys

    assert bpy.app.version[:2] == (5, 2) and sys.version_info[:2] == (3, 13), (bpy.app.version, sys.version)
    import shared_protocol

    assert "site-packages" in shared_protocol.__file__  # the wheel the extension ships, not the checkout


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    root = tmp_path_factory.mktemp("backend")
    log = open(root / "serve.log", "wb")
    proc = subprocess.Popen([os.environ["SPLATSMITH_BACKEND_PYTHON"], "-m", "backend.cli", "serve", "--bind", address,
                             "--device", "cpu", "--output-dir", str(root / "jobs")], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT)
    end = time.monotonic() + 300
    while True:
        assert proc.poll() is None, (root / "serve.log").read_text()
        try:
            with Client(address) as probe:
                probe.ping(timeout=1.0)
            break
        except ClientError:
            assert time.monotonic() < end, "the backend did not start"
    yield address
    proc.terminate()
    proc.wait(30)
    log.close()


@pytest.fixture
def addon(backend):
    blender_addon.register()
    yield
    blender_addon.unregister()


def _pump_until(condition, seconds: float = CEILING) -> None:
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, "timed out"
        client_glue.session.client.poll(0.05)
        client_glue.pump(budget_s=1.0)


def test_generate_refine_fetch_after_reconnect_and_cancel(addon, backend):
    """Connect; a tiny text job lands a textured object with its parameters; Refine Texture
    paints it in a new material slot, its geometry kept; after a reconnect the job is fetched
    again; a running job is cancelled."""
    assert bpy.ops.splatsmith.connect(address=backend) == {"FINISHED"}
    params = json.dumps({"mode": "text", "prompt": "a clay teapot"})
    assert bpy.ops.splatsmith.generate(params=params, preset="tiny", seed=1, wait=True, timeout=CEILING) == {"FINISHED"}
    state = client_glue.session.jobs[-1]
    obj = bpy.data.objects[state.result_object]
    assert len(obj.data.polygons) > 100 and "UVMap" in obj.data.uv_layers
    image = obj.data.materials[0].node_tree.nodes["Image Texture"].image
    assert image.packed_file is not None and image.size[0] >= 64
    assert obj["splatsmith_pipeline"] == "dreamgaussian" and obj["splatsmith_prompt"] == "a clay teapot"
    assert obj["splatsmith_seed"] == 1 and json.loads(obj["splatsmith_request"])["preset"] == "tiny"

    bpy.context.view_layer.objects.active = obj
    co = np.empty(len(obj.data.vertices) * 3, np.float32)
    obj.data.vertices.foreach_get("co", co)
    slots = len(obj.material_slots)
    assert bpy.ops.splatsmith.refine_texture(params='{"prompt": "glazed blue porcelain"}', preset="tiny", seed=2,
                                             wait=True, timeout=CEILING) == {"FINISHED"}
    after = np.empty(len(obj.data.vertices) * 3, np.float32)
    obj.data.vertices.foreach_get("co", after)
    assert np.array_equal(co, after) and len(obj.material_slots) == slots + 1

    job_id = state.job_id
    assert bpy.ops.splatsmith.connect(address=backend) == {"FINISHED"}  # a new connection
    assert bpy.ops.splatsmith.fetch_job(job_id=job_id, wait=True, timeout=CEILING) == {"FINISHED"}
    fetched = bpy.data.objects[client_glue.session.jobs[-1].result_object]
    assert fetched is not obj and len(fetched.data.polygons) == len(obj.data.polygons)

    long = json.dumps({"mode": "text", "prompt": "a stone lantern", "iters": 3000, "lr_means_steps": 3000})
    assert bpy.ops.splatsmith.generate(params=long, preset="tiny", seed=3) == {"FINISHED"}
    running = client_glue.session.jobs[-1]
    _pump_until(lambda: running.handle.progress is not None and running.handle.state == "running")
    assert bpy.ops.splatsmith.cancel() == {"FINISHED"}
    _pump_until(lambda: running.ended, 120)
    assert running.handle.state == "cancelled" and not running.result_object
