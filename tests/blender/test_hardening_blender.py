"""The add-on never trusts the server's arrays and never stops updating (issue 11, item 9): in
real Blender, against a real server whose test pipeline sends malformed previews and results."""
from __future__ import annotations

import time

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

import blender_addon  # noqa: E402
from blender_addon import client_glue, scene_io  # noqa: E402


@pytest.fixture
def registered():
    blender_addon.register()  # starts the add-on's timer
    yield
    blender_addon.unregister()


def test_scene_io_refuses_malformed_arrays_before_touching_blender():
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32)
    cases = [
        (lambda: scene_io.apply_mesh("bad faces", verts, np.array([[0, 1, 2], [0, 1, 1_000_000]], np.int32)), "indexing"),
        (lambda: scene_io.apply_mesh("bad faces", verts, np.array([[0, 1, -1]], np.int32)), "indexing"),
        (lambda: scene_io.apply_mesh("bad faces", verts[:, :2], np.array([[0, 1, 2]], np.int32)), "shape"),
        (lambda: scene_io.apply_mesh("bad faces", verts * np.nan, np.array([[0, 1, 2]], np.int32)), "NaN"),
        (lambda: scene_io.apply_mesh("bad faces", verts, np.array([[0, 1, 2]], np.float32)), "dtype"),
        (lambda: scene_io.apply_mesh("bad faces", verts, np.array([[0, 1, 2]], np.int32),
                                     polygons=np.array([0, 1, 2, 7], np.int32), polygon_sizes=np.array([4], np.int32)),
         "indexing vertex 7"),
        (lambda: scene_io.apply_mesh("bad faces", verts, np.array([[0, 1, 2]], np.int32),
                                     polygons=np.array([0, 1, 2], np.int32), polygon_sizes=np.array([4], np.int32)),
         "do not add up"),
        (lambda: scene_io.apply_mesh("bad faces", verts, np.array([[0, 1, 2]], np.int32),
                                     normals=np.zeros((2, 3), np.float32)), "2 normals for 3 vertices"),
        (lambda: scene_io.apply_gaussian_preview("bad faces", verts, np.zeros((2, 3), np.uint8), np.ones(3, np.float32)),
         "3 points but 2 colours"),
        (lambda: scene_io.image_from_rgba("bad faces", np.zeros((4, 4, 3), np.uint8)), "[H, W, 4]"),
        (lambda: scene_io.packed_image_from_png("bad faces", b"GIF89a" + b"\0" * 40), "not a PNG"),
    ]
    for call, words in cases:
        with pytest.raises(scene_io.SceneDataError, match=words.replace("[", r"\[").replace("]", r"\]")):
            call()
    assert bpy.data.objects.get("bad faces") is None and bpy.data.images.get("bad faces") is None
    obj = scene_io.apply_mesh("good", verts, np.array([[0, 1, 2]], np.int32))
    assert len(obj.data.vertex_normals) == 3  # what segfaulted Blender with the out-of-range face


@pytest.mark.parametrize("defect", ["faces", "shape", "nan"])
def test_pump_survives_a_malformed_job_keeps_its_timer_and_the_next_job_lands(registered, make_server, defect):
    server = make_server()
    client_glue.connect(server.endpoint)
    state = client_glue.submit("mesh", {"defect": defect}, {}, "default", 1, f"broken {defect}")
    end = time.monotonic() + 120
    while not state.ended:
        assert time.monotonic() < end, "the job did not end in the add-on"
        client_glue.session.client.poll(0.05)
        assert client_glue._tick() == client_glue.TICK_S  # the timer's own callback: never raises, keeps running
    assert bpy.app.timers.is_registered(client_glue._tick)
    assert "could not be brought into the scene" in state.message and not state.result_object
    assert "skipped" in client_glue.session.error
    assert bpy.data.objects.get(state.preview_name) is None
    good = client_glue.submit("mesh", {"defect": "none"}, {}, "default", 1, "good tetra")
    end = time.monotonic() + 120
    while not good.ended:
        assert time.monotonic() < end
        client_glue.session.client.poll(0.05)
        client_glue._tick()
    obj = bpy.data.objects[good.result_object]
    assert len(obj.data.polygons) == 4 and len(obj.data.vertex_normals) == 4
