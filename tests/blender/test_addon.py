"""The Blender extension in real Blender (bpy from PyPI) against a real backend process."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

bpy = pytest.importorskip("bpy")

import blender_addon  # noqa: E402
from blender_addon import client_glue  # noqa: E402
from shared_protocol.client import Client, ClientError  # noqa: E402


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    root = tmp_path_factory.mktemp("backend")
    address = f"tcp://127.0.0.1:{_port()}"
    env = dict(os.environ, SPLATSMITH_CACHE=str(root / "cache"))
    proc = subprocess.Popen([sys.executable, "-m", "backend.cli", "serve", "--bind", address, "--device", "cpu",
                             "--output-dir", str(root / "jobs")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.monotonic() + 90
    while True:
        try:
            with Client(address) as probe:
                probe.ping(timeout=1.0)
            break
        except ClientError:
            assert time.monotonic() < end and proc.poll() is None, "the backend did not start"
    yield address
    proc.terminate()
    proc.wait(30)


@pytest.fixture
def addon():
    blender_addon.register()
    yield
    blender_addon.unregister()


def test_register_and_unregister_twice():
    for _ in range(2):
        blender_addon.register()
        assert hasattr(bpy.ops.splatsmith, "generate") and hasattr(bpy.types, "VIEW3D_PT_splatsmith")
        blender_addon.unregister()
    assert not hasattr(bpy.types, "VIEW3D_PT_splatsmith")


def test_text_generation_streams_into_the_scene(addon, backend):
    assert bpy.ops.splatsmith.connect(address=backend) == {"FINISHED"}
    assert "dreamgaussian" in client_glue.session.welcome["pipelines"]
    result = bpy.ops.splatsmith.generate(mode="TEXT", prompt="a small wooden chair", preset="tiny", seed=4, wait=True,
                                         timeout=300)
    assert result == {"FINISHED"}
    state = client_glue.session.jobs[-1]
    assert set(state.applied) == {"gaussians", "mesh", "texture"}  # each preview kind was applied while it ran
    obj = bpy.data.objects[state.result_object]
    assert obj.name.startswith("a small wooden chair") and obj.users_collection[0].name == "Splatsmith"
    assert len(obj.data.polygons) > 100 and "UVMap" in obj.data.uv_layers
    image = obj.data.materials[0].node_tree.nodes["Image Texture"].image
    assert image.packed_file is not None and image.size[0] >= 64
    assert obj["splatsmith_job_id"] == state.job_id and obj["splatsmith_seed"] == 4
    assert obj["splatsmith_prompt"] == "a small wooden chair" and obj["splatsmith_preset"] == "tiny"
    assert bpy.data.objects.get(state.preview_name) is None  # the preview object is gone
    # Blender-space axes: the glTF up axis (+Y) became +Z.
    import numpy as np

    co = np.empty(len(obj.data.vertices) * 3, np.float32)
    obj.data.vertices.foreach_get("co", co)
    verts = np.asarray(state.handle.result["arrays"]["vertices"])
    assert np.allclose(co.reshape(-1, 3)[:, 2], verts[:, 1], atol=1e-6)


def test_unreachable_backend_gives_a_clear_error(addon):
    with pytest.raises(RuntimeError, match="is it running"):
        bpy.ops.splatsmith.connect(address=f"tcp://127.0.0.1:{_port()}")
    assert "is it running" in client_glue.session.error
