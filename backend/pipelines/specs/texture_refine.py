"""What the server knows of texture refinement without importing torch: parameters, presets,
inputs and the mesh checks done at submit (the method is ``backend.pipelines.texture_refine``)."""
from __future__ import annotations

import numpy as np

from ...guidance.registry import STABLE_DIFFUSION, ZERO123
from ..base import (BYTES_PER_TEACHER_PIXEL, BYTES_PER_TEXEL, TEACHER_BYTES, PRIOR_ORACLE_PARAMS, PRIOR_ORACLE_WHEN, InputSpec, Param,
                    ParamError, Pipeline,
                    check_teacher_inputs, grouped, register,
                    schedule_params, check_schedule_params)

#: The largest mesh texture refinement accepts (it never decimates).
MAX_TRIANGLES = 200_000
#: The reference camera's vertical field of view when no ``ref_fovy`` input is given, degrees
#: (DreamGaussian's default camera, ``configs/image.yaml`` ``fovy: 49.1``), and its bounds.
DEFAULT_REF_FOVY = 49.1
MIN_FOVY, MAX_FOVY = 1.0, 170.0


def non_manifold_edges(faces: np.ndarray) -> int:
    """The number of edges shared by more than two triangles (faces int [F, 3])."""
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    return int((counts > 2).sum())


#: The mesh a texturing method takes (texture refinement, texture painting).
MESH_INPUTS = {
    "vertices": InputSpec(("float32",), (None, 3), True, 3 * 4 * MAX_TRIANGLES,
                          "vertices float32 [V, 3], glTF axes (+Y up), object space, metres"),
    "faces": InputSpec(("int32", "uint32"), (None, 3), True, 3 * MAX_TRIANGLES * 4,
                       "triangles int32 [F, 3], counter-clockwise seen from outside"),
    "uv": InputSpec(("float32",), (None, 2), help="per-corner UVs float32 [F*3, 2], origin bottom-left"),
    "texture": InputSpec(("uint8",), (None, None, (3, 4)), help="existing texture uint8 [H, W, 3|4], row 0 at the top"),
}


def check_mesh_inputs(inputs: dict, method: str) -> None:
    """The submit checks of a texturing method's mesh (``method`` names it in the messages).

    Raises:
        ParamError: too many triangles (never decimated silently), non-finite or collapsed
            vertices, faces that index missing vertices, a non-manifold mesh, or UVs that are not
            one per corner; each message says what to do.
    """
    verts, faces = inputs["vertices"], inputs["faces"]
    if len(faces) > MAX_TRIANGLES:
        raise ParamError(f"the mesh has {len(faces)} triangles; {method} takes at most {MAX_TRIANGLES}. "
                         "Decimate it (e.g. Blender's Decimate modifier) and try again.")
    if not np.isfinite(verts).all():
        raise ParamError("the mesh has vertices that are NaN or infinite: remove them (in Blender: Mesh > Clean Up) "
                         "and try again")
    extent = float((verts.max(0) - verts.min(0)).max()) if len(verts) else 0.0
    if not extent > 1e-6:
        raise ParamError(f"the mesh's bounding box has size {extent:g}: all its vertices are (nearly) at one point, "
                         "so there is no surface to texture")
    if "uv" in inputs and not np.isfinite(inputs["uv"]).all():
        raise ParamError("'uv' holds NaN or infinite values: fix or recreate the UV map")
    if faces.min() < 0 or faces.max() >= len(verts):
        raise ParamError(f"'faces' index vertices 0..{int(faces.max())} but there are {len(verts)} vertices")
    bad = non_manifold_edges(np.asarray(faces, np.int64))
    if bad:
        raise ParamError(f"the mesh is non-manifold: {bad} edges are shared by more than two triangles. In Blender: "
                         "Edit Mode > Select > All by Trait > Non Manifold, then fix or separate those parts.")
    if "uv" in inputs and inputs["uv"].shape[0] != 3 * len(faces):
        raise ParamError(f"'uv' must hold one UV per triangle corner: [{3 * len(faces)}, 2], got {inputs['uv'].shape}")


@register
class TextureRefineSpec(Pipeline):
    """A new or improved texture for a given mesh, from a prompt and/or a reference image."""

    implementation = "backend.pipelines.texture_refine:TextureRefinePipeline"

    name = "texture_refine"
    title = "Refine Texture"
    params = {
        "prompt": Param("str", "", "what the texture should show (Stable Diffusion teacher)", max_len=500),
        "negative_prompt": Param("str", "", "what the teacher should avoid", max_len=500),
        "teacher": Param("choice", "auto", "auto: Zero-1-to-3 with a reference image, else Stable Diffusion; "
                         "oracle: verification", choices=("auto", "oracle")),
        "oracle_mesh": Param("str", "", "ground-truth GLB for teacher=oracle, in the mesh's frame (a path on the server)",
                             max_len=4096, path=True),
        **PRIOR_ORACLE_PARAMS,
        "weights": Param("choice", "default", "teacher weights: default or tiny", choices=("default", "stable", "tiny")),
        "texture_iters": Param("int", 200, "texture optimisation steps", min=0, max=100_000),
        "texture_size": Param("int", 1024, "texture side, texels", min=512, max=4096),
        "use_existing_texture": Param("bool", True, "start from the input 'texture' when given"),
        "refine_strength_start": Param("float", 0.2, "SDEdit noise strength at the first step", min=0.0, max=1.0),
        "refine_strength_end": Param("float", 0.05, "SDEdit noise strength at the last step", min=0.0, max=1.0),
        "refine_steps": Param("int", 50, "DDIM steps of the teacher's full schedule", min=1, max=1000),
        "views": Param("int", 1, "views rendered per step", min=1, max=16),
        "texture_render_size": Param("int", 512, "side of the rendered views, pixels", min=32, max=2048),
        "texture_lr": Param("float", 0.2, "Adam learning rate on the texture logits", min=0.0, max=10.0),
        "texture_supersample": Param("bool", True, "render views at a random scale of 0.125-2x and resize (DreamGaussian "
                                     "main2.py ssaa)"),
        "lambda_ref": Param("float", 1.0, "weight of the reference view's masked MSE", min=0.0, max=1e6),
        "lambda_sds": Param("float", 0.0, "weight of an added SDS term (0: off)", min=0.0, max=1e6),
        # The SDS option's timesteps: fine detail only (DreamGaussian's stage 2 refines texture at
        # small noise levels), t in [20, 500] by default.
        **schedule_params("dreamgaussian", 20, 500),
        "guidance_scale": Param("float", None, "classifier-free guidance scale (unset: the teacher's own, 5 for "
                                "Zero-1-to-3 with an image, 100 for Stable Diffusion with a prompt)", min=0, max=1000),
        "elevation_min": Param("float", -20.0, "lowest elevation of the random views, degrees", min=-89, max=89),
        "elevation_max": Param("float", 60.0, "highest elevation of the random views, degrees", min=-89, max=89),
        "radius": Param("float", 2.0, "camera distance in the normalised frame (object radius 0.5)", min=0.6, max=20),
        "fovy": Param("float", 49.1, "vertical field of view of the random views, degrees", min=5, max=120),
        "unwrap_time_limit": Param("float", 120.0, "seconds before xatlas is stopped", min=1, max=3600),
    }
    params = grouped(params, groups={
        "input": ("prompt", "negative_prompt", "use_existing_texture"),
        "teacher": ("teacher", "oracle_mesh", "oracle_modes", "oracle_sigma", "weights", "guidance_scale", "refine_strength_start", "refine_strength_end", "refine_steps", "lambda_sds"),
        "texture": ("texture_iters", "texture_size", "views", "texture_render_size", "texture_supersample", "texture_lr", "lambda_ref", "elevation_min", "elevation_max",
                    "radius", "fovy"),
        "mesh": ("unwrap_time_limit",),
    }, basic=("prompt", "negative_prompt", "texture_iters", "texture_size", "use_existing_texture",
                 "refine_strength_start"), when=PRIOR_ORACLE_WHEN)
    works_on = ("mesh", "prompt", "image")
    presets = {
        "default": {},
        "fast": {"texture_iters": 150, "texture_size": 512, "texture_render_size": 128, "refine_steps": 20, "views": 2},
        "tiny": {"weights": "tiny", "texture_iters": 6, "texture_size": 512, "texture_render_size": 64, "refine_steps": 4},
    }
    inputs = {
        **MESH_INPUTS,
        "image": InputSpec(("uint8",), (None, None, (3, 4)), help="reference image uint8 [H, W, 3|4]; alpha = object"),
        "mask": InputSpec(("uint8",), (None, None), help="foreground mask uint8 [H, W] for an RGB reference image"),
        "ref_camera": InputSpec(("float32",), (4, 4), help="reference camera-to-world float32 [4, 4], glTF axes, object "
                                                           "space, OpenGL camera axes (default: in front, +Z)"),
        "ref_fovy": InputSpec(("float32",), (1,), help="vertical field of view of the reference image's camera, degrees "
                                                       f"float32 [1], {MIN_FOVY:g} to {MAX_FOVY:g} (default {DEFAULT_REF_FOVY})"),
    }
    models = {"default": [STABLE_DIFFUSION.model()[0], ZERO123.model()[0]], "stable": [ZERO123.model("stable")[0]]}

    @classmethod
    def check_request(cls, params, inputs):
        check_schedule_params(params)
        check_mesh_inputs(inputs, "texture refinement")
        if "ref_fovy" in inputs and not MIN_FOVY <= float(inputs["ref_fovy"][0]) <= MAX_FOVY:
            raise ParamError(f"'ref_fovy' is {float(inputs['ref_fovy'][0]):g} degrees; it must be from {MIN_FOVY:g} to "
                             f"{MAX_FOVY:g} (NaN is not allowed)")
        if "ref_camera" in inputs and not np.isfinite(inputs["ref_camera"]).all():
            raise ParamError("'ref_camera' holds NaN or infinite values: send a valid camera matrix")
        if not params["prompt"].strip() and "image" not in inputs and params["teacher"] != "oracle":
            raise ParamError("give a 'prompt', a reference 'image', or both")
        check_teacher_inputs(params, inputs)
        if params["elevation_min"] > params["elevation_max"]:
            raise ParamError("'elevation_min' must not exceed 'elevation_max'")

    @classmethod
    def estimate_memory(cls, params, inputs):
        return {
            "texture_size": params["texture_size"] ** 2 * BYTES_PER_TEXEL,
            "render_size": params["texture_render_size"] ** 2 * params["views"] * BYTES_PER_TEACHER_PIXEL,
            "vertices": sum(int(a.nbytes) for a in inputs.values()) * 8,
            "weights": TEACHER_BYTES[params["weights"]],
        }
