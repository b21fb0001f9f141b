"""The parameters, inputs and checks of ``backend.stages.distillation`` (Gaussians distilled
from a teacher, then mesh and texture), without torch: DreamGaussian's public code's numbers
(see ``backend.pipelines.dreamgaussian`` for the sources). DreamGaussian's and DreamTime's
specifications are built from this table."""
from __future__ import annotations

from ...contracts import parse_sizes
from ...guidance.registry import STABLE_DIFFUSION, ZERO123
from ..base import (OUTPUT_PARAMS, BYTES_PER_GAUSSIAN, BYTES_PER_TEACHER_PIXEL, BYTES_PER_TEXEL, BYTES_PER_VOXEL, TEACHER_BYTES, InputSpec,
                    PRIOR_ORACLE_PARAMS, PRIOR_ORACLE_WHEN, Param, ParamError, Pipeline, check_reference_inputs, check_schedule_params,
                    check_teacher_inputs, grouped, reference_inputs, reference_memory, schedule_params)

PARAMS = {
    "mode": Param("choice", "image", "image-to-3D or text-to-3D", choices=("image", "text")),
    "prompt": Param("str", "", "text prompt (text mode; optional extra context in image mode)", max_len=500),
    "negative_prompt": Param("str", "", "what the teacher should avoid (text mode)", max_len=500),
    "teacher": Param("choice", "auto", "auto: Zero-1-to-3 (image) / Stable Diffusion (text); oracle: verification",
                     choices=("auto", "oracle")),
    "oracle_mesh": Param("str", "", "ground-truth GLB for teacher=oracle (a path on the server)", max_len=4096, path=True),
    **PRIOR_ORACLE_PARAMS,
    **OUTPUT_PARAMS,
    "weights": Param("choice", "default", "teacher weights: default, stable (stable-zero123) or tiny",
                     choices=("default", "stable", "tiny")),
    "iters": Param("int", 500, "stage 1 steps", min=1, max=100_000),
    "init_points": Param("int", 5000, "initial Gaussians, uniform in a ball", min=10, max=1_000_000),
    "init_radius": Param("float", 0.5, "radius of the initial ball, metres", min=0.01, max=10),
    "init_opacity": Param("float", 0.1, "initial opacity", min=0.001, max=0.999),
    "sh_degree": Param("int", 0, "SH degree of the colour", min=0, max=3),
    "lr_means": Param("float", 0.01, "position learning rate at the start, metres (the public code's 0.001 times "
                      "spatial_lr_scale 10)", min=0, max=1),
    "lr_means_final": Param("float", 2e-4, "position learning rate at the end of its decay (0.00002 x 10)", min=0, max=1),
    "lr_means_steps": Param("int", None, "steps of the position learning rate's exponential decay, constant after "
                            "(position_lr_max_steps: image 500, text 300)", min=1, max=100_000,
                            default_by=("mode", {"image": 500, "text": 300})),
    "lr_colors": Param("float", 0.01, "colour learning rate", min=0, max=1),
    "lr_opacities": Param("float", 0.05, "opacity learning rate", min=0, max=1),
    "lr_scales": Param("float", 0.005, "scale learning rate", min=0, max=1),
    "lr_quats": Param("float", 0.005, "rotation learning rate", min=0, max=1),
    "densify_from": Param("int", None, "first densification step (image: 100, text: 0)", min=0, max=100_000,
                          default_by=("mode", {"image": 100, "text": 0})),
    "densify_every": Param("int", None, "steps between densifications (image: 100, text: 50)", min=1, max=100_000,
                           default_by=("mode", {"image": 100, "text": 50})),
    "densify_until": Param("int", 3000, "last densification step", min=0, max=100_000),
    "densify_grad": Param("float", 0.01, "image-plane gradient threshold (densify_grad_threshold; gsplat's units are "
                          "the original rasteriser's)", min=0, max=10),
    "prune_opacity": Param("float", 0.01, "Gaussians below this opacity are pruned (min_opacity)", min=0, max=1),
    "scene_extent": Param("float", 4.0, "the extent that size thresholds are fractions of (densify_and_prune extent=4)",
                          min=0.01, max=100),
    "grow_scale3d": Param("float", 0.01, "clone below / split above this size, fraction of scene_extent (percent_dense)",
                          min=0, max=1),
    "prune_scale3d": Param("float", 0.1, "Gaussians larger than this fraction of scene_extent are pruned at each "
                           "densification", min=0, max=10),
    "opacity_reset_every": Param("int", 700, "steps between opacity resets (0: never)", min=0, max=100_000),
    "resolutions": Param("str", "128,256,512", "stage 1 render sizes, switched at 30% and 60% of training", max_len=40),
    "batch_size": Param("int", 1, "views per SDS step", min=1, max=16),
    "guidance_scale": Param("float", None, "classifier-free guidance scale (image: 5, text: 100)", min=0, max=1000,
                            default_by=("mode", {"image": 5.0, "text": 100.0})),
    **schedule_params("dreamgaussian"),
    "elevation": Param("float", 0.0, "elevation of the reference view, degrees, positive when the camera is above "
                       "the object (DreamGaussian's --elevation has the opposite sign: its -30 is 30 here)", min=-89, max=89),
    "ref_size": Param("int", 256, "side of the recentred reference view, pixels", min=32, max=1024),
    "radius": Param("float", None, "camera distance, metres (image: 2, text: 2.5)", min=0.1, max=100,
                    default_by=("mode", {"image": 2.0, "text": 2.5})),
    "fovy": Param("float", 49.1, "vertical field of view, degrees", min=5, max=120),
    "elevation_min": Param("float", -30.0, "random cameras cover at least this absolute elevation, degrees (min_ver)",
                           min=-80, max=80),
    "elevation_max": Param("float", 30.0, "random cameras cover at least up to this absolute elevation, degrees "
                           "(max_ver)", min=-80, max=80),
    "view_prompts": Param("bool", False, "append 'front/side/back/overhead view' to the prompt per camera (text mode; "
                          "the public code conditions on the plain prompt)"),
    "reference_warmup": Param("bool", None, "ramp the reference losses up over training (warmup_rgb_loss: on, "
                              "off for stable-zero123)", default_by=("weights", {"default": True, "stable": False,
                                                                                 "tiny": True})),
    "lambda_rgb": Param("float", 10000.0, "reference-view RGB loss weight (ramped linearly)", min=0, max=1e6),
    "lambda_mask": Param("float", 1000.0, "reference-view mask loss weight (ramped linearly)", min=0, max=1e6),
    "invert_bg_prob": Param("float", 0.5, "probability of a black background", min=0, max=1),
    "mesh_resolution": Param("int", 128, "density grid for marching cubes", min=16, max=512),
    "density_threshold": Param("float", 1.0, "density iso-level", min=1e-4, max=100),
    "max_faces": Param("int", 100_000, "face budget (decimation)", min=100, max=2_000_000),
    "texture_size": Param("int", 1024, "texture side, texels", min=64, max=4096),
    "bake_size": Param("int", 512, "render size of the 26 baking views", min=32, max=2048),
    "texture_iters": Param("int", 50, "stage 2 (texture) steps", min=0, max=10_000),
    "texture_lr": Param("float", 0.2, "texture learning rate", min=0, max=10),
    "texture_render_size": Param("int", 512, "stage 2 render size", min=32, max=2048),
    "texture_supersample": Param("bool", True, "render stage 2 views at a random scale of 0.125-2x and resize "
                                 "(main2.py ssaa)"),
    "refine_steps": Param("int", 50, "DDIM steps of the teacher's refine", min=1, max=1000),
    "refine_strength_start": Param("float", 0.2, "SDEdit noise strength at the start of stage 2", min=0, max=1),
    "refine_strength_end": Param("float", 0.05, "SDEdit noise strength at the end of stage 2", min=0, max=1),
    "unwrap_time_limit": Param("float", 300.0, "seconds allowed for UV unwrapping", min=1, max=3600),
}
PARAMS = grouped(PARAMS, groups={
    "input": ("mode", "prompt", "negative_prompt", "elevation", "ref_size"),
    "teacher": ("teacher", "oracle_mesh", "oracle_modes", "oracle_sigma", "weights", "guidance_scale", "batch_size",
                "view_prompts"),
    "schedule": ("t_min", "t_max", "resolutions"),
    "gaussians": ("iters", "init_points", "init_radius", "init_opacity", "sh_degree", "lr_means",
                  "lr_means_final", "lr_means_steps", "lr_colors", "lr_opacities", "lr_scales", "lr_quats", "radius",
                  "fovy", "elevation_min", "elevation_max", "lambda_rgb", "lambda_mask", "reference_warmup",
                  "invert_bg_prob"),
    "densification": ("densify_from", "densify_every", "densify_until", "densify_grad", "prune_opacity",
                      "scene_extent", "grow_scale3d", "prune_scale3d", "opacity_reset_every"),
    "mesh": ("mesh_resolution", "density_threshold", "max_faces", "bake_size", "unwrap_time_limit"),
    "texture": ("texture_size", "texture_iters", "texture_lr", "texture_render_size", "texture_supersample", "refine_steps",
                "refine_strength_start",
                "refine_strength_end"),
}, basic=("mode", "prompt", "negative_prompt", "elevation", "iters", "guidance_scale", "texture_size",
          "timestep_schedule"),
   when={**{name: ("mode", ("image",)) for name in ("elevation", "ref_size", "lambda_rgb", "lambda_mask", "reference_warmup")},
         **PRIOR_ORACLE_WHEN}
   | {name: ("mode", ("text",)) for name in ("negative_prompt", "view_prompts")})

INPUTS = {
    "image": InputSpec(("uint8",), (None, None, (3, 4)), help="reference image uint8 [H, W, 3|4]; alpha = object",
                       when=("mode", ("image",))),
    "mask": InputSpec(("uint8",), (None, None), help="foreground mask uint8 [H, W] for an RGB image (non-zero = object)",
                      when=("mode", ("image",))),
    **reference_inputs(),
}


def check_request(params: dict, inputs: dict) -> None:
    """The checks of a request for these stages.

    Raises:
        ParamError: a missing image or prompt, bad ``resolutions``, an empty elevation or
            timestep range, a bad DreamTime prior; the message says what to change.
    """
    if params["mode"] == "image" and "image" not in inputs and params["teacher"] != "oracle":
        raise ParamError("image mode needs the input 'image' (an RGBA image, or RGB plus 'mask')")
    if params["mode"] == "text" and not params["prompt"].strip():
        raise ParamError("text mode needs a 'prompt'")
    check_teacher_inputs(params, inputs)
    check_reference_inputs(params, inputs)
    parse_sizes(params)
    if params["elevation_min"] > params["elevation_max"]:
        raise ParamError("'elevation_min' must not exceed 'elevation_max'")
    check_schedule_params(params)


def estimate_memory(params: dict, inputs: dict) -> dict:
    """Bytes by the parameter that drives them (``Pipeline.estimate_memory``)."""
    render = max(parse_sizes(params))
    return {
        "resolutions": render * render * params["batch_size"] * BYTES_PER_TEACHER_PIXEL,
        "init_points": params["init_points"] * 4 * BYTES_PER_GAUSSIAN,  # densification grows the count
        "mesh_resolution": params["mesh_resolution"] ** 3 * BYTES_PER_VOXEL,
        "texture_size": params["texture_size"] ** 2 * BYTES_PER_TEXEL,
        "bake_size": 26 * params["bake_size"] ** 2 * 32,
        "texture_render_size": params["texture_render_size"] ** 2 * BYTES_PER_TEACHER_PIXEL,
        "weights": TEACHER_BYTES[params["weights"]],
        "references": reference_memory(params, inputs),
    }


#: The ``fast`` preset (CPUs, the oracle check: 400 steps at 64-128 px, a 20k-face mesh, a 512^2
#: texture) and the ``tiny`` one (the tiny random teachers; seconds).
FAST_PRESET = {"ref_size": 128, "iters": 400, "init_points": 3000, "resolutions": "64,96,128", "mesh_resolution": 96,
               "max_faces": 20_000, "texture_size": 512, "bake_size": 192, "texture_iters": 30, "texture_render_size": 128,
               "refine_steps": 20, "densify_until": 300, "opacity_reset_every": 0}
TINY_PRESET = {"weights": "tiny", "ref_size": 64, "iters": 60, "lr_means_steps": 60, "init_points": 1500,
               "resolutions": "32,48,64", "mesh_resolution": 48, "max_faces": 4000, "texture_size": 128, "bake_size": 64,
               "texture_iters": 8, "texture_render_size": 64, "refine_steps": 4, "densify_until": 60, "opacity_reset_every": 0}


class DistillationSpec(Pipeline):
    """What methods built on these stages share (not registered itself): image or text input,
    the teachers of both modes, the checks and the memory estimate. A subclass sets ``name``,
    ``title``, ``params`` (from :data:`PARAMS`), ``presets`` and ``implementation``."""

    works_on = ("prompt", "image")
    params = PARAMS
    inputs = INPUTS
    models = {"default": [STABLE_DIFFUSION.model()[0], ZERO123.model()[0]], "stable": [ZERO123.model("stable")[0]]}

    @classmethod
    def check_request(cls, params, inputs):
        check_request(params, inputs)

    @classmethod
    def estimate_memory(cls, params, inputs):
        return estimate_memory(params, inputs)
