"""Texturing the active mesh object: a new texture painted (``texture_paint``) or the existing one
refined (``texture_refine``), streamed onto it.

The evaluated mesh (modifiers applied, triangulated, object space, glTF axes) is sent with its
active UV map and base-colour image; neither pipeline changes geometry. While the job runs, the texture updates live on a new material in a new slot (or in
the existing image, with ``update_in_place``). The previous material stays in the file and in
its slot: Undo, or assigning the old slot back, restores the old look.
"""
from __future__ import annotations

import bpy
import numpy as np

from shared_protocol.client import ClientError

from . import properties, scene_io
from .operators import MethodRequest, _fail, _load_inputs, run_request

NEW_UV = "Splatsmith UV"


class _Target:
    """Where one refinement job writes on the object: the image shown live, the UV map."""

    def __init__(self, obj: bpy.types.Object, arrays: dict, in_place: bool, existing: bpy.types.Image | None,
                 word: str = "refined"):
        self.object_name, self.word = obj.name, word
        self.tri_loops = arrays["tri_loops"]
        self.uv_name = arrays["uv_name"] or NEW_UV
        self.in_place = in_place and existing is not None
        self.previous_indices = np.empty(len(obj.data.polygons), np.int32)
        obj.data.polygons.foreach_get("material_index", self.previous_indices)
        self.previous_pixels = None
        if self.in_place:
            self.previous_pixels = np.empty(len(existing.pixels), np.float32)
            existing.pixels.foreach_get(self.previous_pixels)
            self.previous_size = tuple(existing.size)
            self.image = existing
        else:
            self.image = bpy.data.images.new(f"{obj.name} {word}", 64, 64, alpha=True)
            self.material = scene_io.textured_material(f"{obj.name} {word}", self.image, self.uv_name)
            obj.data.materials.append(self.material)  # a new slot; the old slots keep their materials
            slot = len(obj.data.materials) - 1
            obj.data.polygons.foreach_set("material_index", np.full(len(obj.data.polygons), slot, np.int32))
            obj.active_material_index = slot
            obj.data.update()

    def on_preview(self, state, kind: str, data: dict) -> None:
        obj = bpy.data.objects.get(self.object_name)
        if obj is None:
            return
        if kind == "mesh" and "uv" in data:  # the backend unwrapped the mesh: its new UVs come first
            scene_io.set_corner_uv(obj.data, self.uv_name, np.asarray(data["uv"]), self.tri_loops)
        elif kind == "texture":
            scene_io.write_pixels(self.image, data["rgba"])

    def on_failure(self, state) -> None:
        """The job failed or was cancelled: put the object back as it was."""
        obj = bpy.data.objects.get(self.object_name)
        if self.in_place:
            if tuple(self.image.size) != self.previous_size:
                self.image.scale(*self.previous_size)
            self.image.pixels.foreach_set(self.previous_pixels)
            self.image.update()
            return
        if obj is not None:
            slot = obj.data.materials.find(self.material.name)
            obj.data.polygons.foreach_set("material_index", self.previous_indices)
            if slot >= 0:
                obj.data.materials.pop(index=slot)
            obj.data.update()
        bpy.data.materials.remove(self.material)
        bpy.data.images.remove(self.image)

    def on_result(self, state, result: dict) -> str:
        obj = bpy.data.objects[self.object_name]
        arrays = result["arrays"]
        scene_io.set_corner_uv(obj.data, self.uv_name, np.asarray(arrays["uv"]), self.tri_loops)
        texture = np.asarray(arrays["texture"])
        rgba = np.concatenate([texture, np.full(texture.shape[:2] + (1,), 255, np.uint8)], -1)
        scene_io.write_pixels(self.image, rgba)
        if not self.in_place:
            packed = scene_io.packed_image_from_png(f"{obj.name} {self.word} texture",
                                                    np.asarray(result["files"]["texture.png"]).tobytes())
            for node in self.material.node_tree.nodes:
                if node.type == "TEX_IMAGE":
                    node.image = packed
            bpy.data.images.remove(self.image)
            self.image = packed
        else:
            self.image.pack()
        obj["splatsmith_refine_job_id"] = result["job_id"]
        return obj.name


class SPLATSMITH_OT_refine_texture(MethodRequest, bpy.types.Operator):
    bl_idname = "splatsmith.refine_texture"
    bl_label = "Refine Texture"
    bl_description = ("Run a method that works on a mesh (Refine Texture by default) on the active object: a new or "
                      "improved texture from a prompt and/or a reference image")

    use_scene_settings: bpy.props.BoolProperty(default=False, options={"HIDDEN", "SKIP_SAVE"})
    pipeline: bpy.props.StringProperty(name="Method", default="texture_refine", description="A pipeline that works on a mesh")
    texturing: bpy.props.EnumProperty(name="Texturing", default="METHOD", items=[
        ("METHOD", "The method", "run the method named by 'pipeline' (the panel's method with the panel's settings)"),
        *properties.TEXTURING_ITEMS], description="Paint a new texture (texture_paint) or refine the existing one "
                                                 "(texture_refine); METHOD keeps 'pipeline'")
    view: bpy.props.EnumProperty(name="Reference view", default="CAMERA", items=[
        ("CAMERA", "Active camera", "the reference image was taken from the scene's active camera"),
        ("VIEWPORT", "Viewport", "the reference image matches the current 3D viewport"),
        ("FRONT", "Front", "in front of the object (-Y), the backend's default")])
    update_in_place: bpy.props.BoolProperty(name="Update the image in place", default=False)

    @classmethod
    def poll(cls, context):
        obj = context.active_object
        return obj is not None and obj.type == "MESH"

    def read_scene(self, context) -> dict:
        s = context.scene.splatsmith
        if self.texturing != "METHOD" and s.pipeline != properties.TEXTURING_PIPELINES[self.texturing]:
            s.texturing = self.texturing  # selects that method in the panel, with its own settings
        chosen = super().read_scene(context)
        self.update_in_place = s.update_in_place
        self.view = s.reference_view if s.reference_view != "CAMERA" or context.scene.camera is not None else "VIEWPORT"
        return chosen

    def _reference_camera(self, context, obj, image: np.ndarray) -> dict:
        h, w = image.shape[:2]
        if self.view == "FRONT":
            return {}
        if self.view == "CAMERA":
            camera = context.scene.camera
            if camera is None:
                raise ValueError("the scene has no active camera: add one, or choose the Viewport or Front view")
            fovy = scene_io.camera_fovy(camera, w, h)
            return {"c2w": scene_io.camera_in_object_space(obj, camera.matrix_world, fovy), "fovy": fovy}
        region = getattr(context.space_data, "region_3d", None)
        if region is None:
            raise ValueError("no 3D viewport here (background mode): use the active camera or the Front view")
        import math

        sensor = 72.0  # Blender's viewport: lens over a 72 mm sensor on the larger side
        fov_long = 2 * math.atan(sensor / (2 * context.space_data.lens))
        fovy = math.degrees(fov_long if h >= w else 2 * math.atan(math.tan(fov_long / 2) * h / w))
        c2w = region.view_matrix.inverted()
        return {"c2w": scene_io.camera_in_object_space(obj, c2w, fovy), "fovy": fovy}

    def execute(self, context):
        obj = context.active_object
        if obj is None or obj.type != "MESH":
            return _fail(self, "Splatsmith: select a mesh object to texture")
        if self.texturing != "METHOD":
            self.pipeline = properties.TEXTURING_PIPELINES[self.texturing]
        try:
            info, request = self.method(context, self.use_scene_settings)
        except ClientError as exc:
            return _fail(self, f"Splatsmith: {exc.message}")
        if "mesh" not in info.get("works_on", ()):
            return _fail(self, f"Splatsmith: the method {self.pipeline!r} does not work on a mesh; use Generate")
        arrays = scene_io.evaluated_mesh_arrays(obj, context.evaluated_depsgraph_get())
        if not len(arrays["faces"]):
            return _fail(self, f"Splatsmith: {obj.name!r} has no faces to texture")
        if arrays["uv"] is None and not arrays["same_topology"]:
            return _fail(self, f"Splatsmith: {obj.name!r} has no UV map and its modifiers change its topology: "
                               "add a UV map or apply the modifiers first")
        inputs = {"vertices": arrays["vertices"], "faces": arrays["faces"]}
        if arrays["uv"] is not None:
            inputs["uv"] = arrays["uv"]
        existing, _ = scene_io.base_color_image(obj)
        if existing is not None and existing.size[0] > 0:
            inputs["texture"] = scene_io.rgba_from_image(existing)  # the method's parameters say whether it starts from it
        try:
            inputs.update(_load_inputs({"image_path": self.image_path, "image_name": self.image_name}))
            if "image" in inputs:
                camera = self._reference_camera(context, obj, inputs["image"])
                if camera:
                    inputs["ref_camera"] = camera["c2w"]
                    inputs["ref_fovy"] = np.array([camera["fovy"]], np.float32)
        except ValueError as exc:
            return _fail(self, f"Splatsmith: {exc}")
        inputs = {k: v for k, v in inputs.items() if k in info.get("inputs", {})}

        def attach(state) -> None:
            # Only once the job is accepted does the object get its new slot (nothing to undo on refusal).
            target = _Target(obj, arrays, self.update_in_place, existing, word)
            state.on_preview, state.on_result, state.on_failure = target.on_preview, target.on_result, target.on_failure

        word = "painted" if self.pipeline == "texture_paint" else "refined"
        request = dict(request, label=f"{obj.name} texture", image_path="", image_name="")
        return run_request(self, request, self.wait, self.timeout, inputs, attach, what="texture job",
                           done=f"{word} {obj.name}")


def register():
    bpy.utils.register_class(SPLATSMITH_OT_refine_texture)


def unregister():
    bpy.utils.unregister_class(SPLATSMITH_OT_refine_texture)

