"""Refine Texture in real Blender (bpy from PyPI) against a real backend process."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from blender_addon import client_glue, scene_io  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from blender.test_addon import addon, backend  # noqa: E402,F401  (fixtures)

from conftest import JOB_CEILING  # noqa: E402


def _geometry(obj) -> tuple[np.ndarray, np.ndarray]:
    co = np.empty(len(obj.data.vertices) * 3, np.float32)
    obj.data.vertices.foreach_get("co", co)
    corner = np.empty(len(obj.data.loops), np.int32)
    obj.data.attributes[".corner_vert"].data.foreach_get("value", corner)
    return co, corner


def _assigning_the_old_slot_back_restores_the_old_look(obj, old_image, old) -> None:
    """Every face uses the new slot (1); switched back to slot 0, the object shows the old image
    and the old material is still in the file."""
    indices = np.empty(len(obj.data.polygons), np.int32)
    obj.data.polygons.foreach_get("material_index", indices)
    assert (indices == 1).all()
    obj.data.polygons.foreach_set("material_index", np.zeros_like(indices))
    obj.active_material_index = 0
    assert scene_io.base_color_image(obj)[0] == old_image and bpy.data.materials.get(old.name) is not None


@pytest.mark.slow
def test_refine_a_mesh_with_uvs_keeps_geometry_and_the_old_material(addon, backend):
    from scenes import make_test_object

    _, raw = make_test_object(texture_size=128)
    obj = scene_io.apply_mesh("statue", raw["vertices"], raw["faces"], raw["uv"])
    texture = raw["texture"] if raw["texture"].dtype == np.uint8 else (raw["texture"] * 255 + 0.5).astype(np.uint8)
    old_image = scene_io.image_from_rgba("old texture", np.concatenate([texture, np.full(texture.shape[:2] + (1,), 255,
                                                                                                np.uint8)], -1))
    old = scene_io.assign_texture(obj, old_image, "old material")
    obj.location, obj.rotation_euler = (2.0, 0.0, 0.5), (0.0, 0.0, math.radians(30))
    bpy.context.view_layer.objects.active = obj
    before = _geometry(obj)
    uv_before = np.empty(len(obj.data.loops) * 2, np.float32)
    obj.data.uv_layers["UVMap"].data.foreach_get("uv", uv_before)
    bpy.ops.splatsmith.connect(address=backend)
    assert bpy.ops.splatsmith.refine_texture(params='{"prompt": "a mossy stone statue"}', preset="tiny", seed=3, wait=True,
                                             timeout=JOB_CEILING) == {"FINISHED"}
    state = client_glue.session.jobs[-1]
    assert "texture" in state.applied and state.handle.state == "done"
    after = _geometry(obj)
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])  # positions, face order
    uv_after = np.empty(len(obj.data.loops) * 2, np.float32)
    obj.data.uv_layers["UVMap"].data.foreach_get("uv", uv_after)
    assert np.allclose(uv_before, uv_after, atol=1e-6)  # its own UVs were used and kept
    # The new material is in a new slot, its image packed; the old one is still there.
    assert [m.name for m in obj.data.materials] == ["old material", "statue refined"]
    image, _ = scene_io.base_color_image(obj)
    assert image.packed_file is not None and tuple(image.size) == (512, 512)
    assert image.name == "statue refined texture" and bpy.data.images.get("statue refined") is None
    pixels = np.empty(512 * 512 * 4, np.float32)
    image.pixels.foreach_get(pixels)
    assert pixels.reshape(-1, 4)[:, :3].std() > 0.01
    _assigning_the_old_slot_back_restores_the_old_look(obj, old_image, old)


def test_refine_a_mesh_without_uvs_from_a_photo_and_the_active_camera(addon, backend, tmp_path):
    from PIL import Image

    from backend.cli import demo_photo

    bpy.ops.mesh.primitive_monkey_add(size=1.0, location=(0.0, 0.0, 0.0))
    obj = bpy.context.active_object
    obj.name = "monkey"
    while obj.data.uv_layers:
        obj.data.uv_layers.remove(obj.data.uv_layers[0])
    obj.modifiers.new("subdivide", "SUBSURF")
    photo, _ = demo_photo()
    Image.fromarray(photo).save(tmp_path / "cat.png")
    bpy.ops.splatsmith.connect(address=backend)
    with pytest.raises(RuntimeError, match="no UV map and its modifiers change its topology"):
        bpy.ops.splatsmith.refine_texture(image_path=str(tmp_path / "cat.png"), preset="tiny")
    assert [m for m in obj.data.materials] == []  # nothing was changed by the refused request
    obj.modifiers.remove(obj.modifiers["subdivide"])
    camera = bpy.data.objects.new("camera", bpy.data.cameras.new("camera"))
    bpy.context.scene.collection.objects.link(camera)
    camera.location, camera.rotation_euler = (0.0, -3.0, 0.3), (math.radians(85), 0.0, 0.0)
    bpy.context.scene.camera = camera
    before = _geometry(obj)
    assert bpy.ops.splatsmith.refine_texture(image_path=str(tmp_path / "cat.png"), view="CAMERA", preset="tiny", seed=1,
                                             wait=True, timeout=JOB_CEILING) == {"FINISHED"}
    state = client_glue.session.jobs[-1]
    assert state.handle.result["meta"]["unwrapped"] and state.handle.result["meta"]["init"] == "reference bake"
    assert {"mesh", "texture"} <= set(state.applied)
    after = _geometry(obj)
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])
    uv = np.empty(len(obj.data.loops) * 2, np.float32)
    obj.data.uv_layers["Splatsmith UV"].data.foreach_get("uv", uv)
    assert 0.0 <= uv.min() and uv.max() <= 1.0 and uv.std() > 0.1  # a real atlas on every loop
    image, node = scene_io.base_color_image(obj)
    assert image.packed_file is not None
    uv_node = node.inputs["Vector"].links[0].from_node
    assert uv_node.type == "UVMAP" and uv_node.uv_map == "Splatsmith UV"


@pytest.mark.slow
def test_paint_a_new_texture_from_the_panel_live_in_a_new_slot_and_undo_restores_the_old(addon, backend):
    """The panel's texturing choice "Paint a new texture" selects texture_paint; run from the
    panel's settings with the tiny models, the texture lands live in a new material slot (the UVs
    and geometry kept), and the old material is kept in its slot: assigning it back restores the
    old look, which is what Undo does in the UI (``ed.undo`` needs a window, and bpy in background
    mode has none: its poll fails)."""
    from panel_layout import PanelLayout
    from blender_addon import panels, params
    from scenes import make_test_object

    _, raw = make_test_object(texture_size=64)
    obj = scene_io.apply_mesh("vase", raw["vertices"], raw["faces"], raw["uv"])
    old_image = scene_io.image_from_rgba("vase old", np.full((8, 8, 4), 200, np.uint8))
    old = scene_io.assign_texture(obj, old_image, "vase old material")
    bpy.context.view_layer.objects.active = obj
    before = _geometry(obj)
    bpy.ops.splatsmith.connect(address=backend)
    settings = bpy.context.scene.splatsmith
    settings.pipeline = "texture_refine"

    drawn: list = []
    panels.draw_method(PanelLayout(drawn), settings, obj)
    assert ("prop", "texturing", None) in drawn  # the choice is offered on a mesh
    settings.texturing = "PAINT"
    assert settings.pipeline == "texture_paint"
    settings.preset = "tiny"
    settings.image_source, settings.image_path = "FILE", ""  # from the prompt alone
    settings[params.key("texture_paint", "prompt")] = "a blue glazed vase"
    assert bpy.ops.splatsmith.refine_texture(use_scene_settings=True, wait=True, timeout=JOB_CEILING) == {"FINISHED"}
    state = client_glue.session.jobs[-1]
    assert state.handle.state == "done" and state.request["pipeline"] == "texture_paint"
    assert state.handle.preview_counts.get("texture", 0) >= 2 and "texture" in state.applied  # it formed live
    after = _geometry(obj)
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])
    assert [m.name for m in obj.data.materials] == ["vase old material", "vase painted"]
    image, _ = scene_io.base_color_image(obj)
    assert image.packed_file is not None and image.name == "vase painted texture" and tuple(image.size) == (128, 128)
    _assigning_the_old_slot_back_restores_the_old_look(obj, old_image, old)
