"""What the server knows of DTC123 without importing torch (see ``backend.pipelines.dtc123``):
the distillation stages' parameters in image mode, plus the curriculum (stages, bands, hand-over,
camera de-biasing) and the fine stage's mesh refinement. The paper publishes the structure, not
these numbers (``../shared/papers/implementation-notes.md``); each choice is stated in
``backend/pipelines/dtc123.py`` and ``docs/methods.md``."""
from __future__ import annotations

import dataclasses

from ..base import BYTES_PER_TEACHER_PIXEL, Param, ParamError, grouped, register
from .distillation import PARAMS, DistillationSpec

#: The curriculum's stages in order.
STAGES = ("coarse", "middle", "fine")


def _params() -> dict:
    base = {k: v for k, v in PARAMS.items() if k not in (
        "timestep_schedule", "t_min", "t_max", "m1", "m2", "s1", "s2", "iters", "resolutions", "guidance_scale",
        "texture_iters", "texture_lr", "texture_render_size", "texture_supersample", "refine_steps",
        "refine_strength_start", "refine_strength_end", "view_prompts", "negative_prompt", "densify_until")}
    base["mode"] = dataclasses.replace(base["mode"], choices=("image",), help="image-to-3D (an optional prompt feeds "
                                       "Stable Diffusion)")
    base["prompt"] = dataclasses.replace(base["prompt"], help="optional: what Stable Diffusion is told the object is "
                                         "(an enriched description may be pasted here); view suffixes are added")
    return {
        **base,
        "class_name": Param("str", "", "without a prompt: the object's class (e.g. 'teapot'), giving Stable Diffusion the "
                            "neutral prompt 'a photo of a <class>'; with neither, Stable Diffusion's weight stays 0",
                            max_len=100),
        "coarse_iters": Param("int", 1000, "coarse stage steps: Gaussians at low resolution, limited densification",
                              min=0, max=100_000),
        "coarse_densify_until": Param("int", 500, "coarse stage: its last densification step (limited densification; "
                                      "0: none, the student keeps init_points)", min=0, max=100_000),
        "middle_densify_until": Param("int", 3000, "middle stage: its last densification step (DreamGaussian's "
                                      "densify_until)", min=0, max=100_000),
        "middle_iters": Param("int", 1000, "middle stage steps: Gaussians at higher resolution, densification on",
                              min=0, max=100_000),
        "fine_iters": Param("int", 1000, "fine stage steps: the extracted mesh's vertex offsets and texture", min=0,
                            max=100_000),
        "coarse_size": Param("int", 64, "coarse stage render side, pixels", min=16, max=2048),
        "middle_size": Param("int", 256, "middle stage render side, pixels", min=16, max=2048),
        "fine_size": Param("int", 512, "fine stage render side, pixels", min=16, max=2048),
        "coarse_band": Param("str", "980,650", "coarse stage timestep band: top,bottom (t anneals from top to bottom)",
                             max_len=20),
        "middle_band": Param("str", "650,300", "middle stage timestep band: top,bottom", max_len=20),
        "fine_band": Param("str", "300,20", "fine stage timestep band: top,bottom", max_len=20),
        "band_width": Param("str", "200,150,100", "local randomness per stage: t drawn within +-width/2 of the annealed "
                            "value, inside the band", max_len=30),
        "oracle_zero123_blur": Param("float", 0.0, "teacher=oracle: Zero-1-to-3's stand-in sees the object's texture "
                                     "blurred by a Gaussian of this many texels while Stable Diffusion's sees it sharp "
                                     "(0: one exact oracle for both), to verify that the hand-over brings the texture's "
                                     "detail", min=0, max=64),
        "zero123_cfg": Param("float", 5.0, "Zero-1-to-3's classifier-free guidance scale", min=0, max=1000),
        "sd_cfg": Param("float", 100.0, "Stable Diffusion's classifier-free guidance scale (DreamFusion's SDS: 100)",
                        min=0, max=1000),
        "sd_weight": Param("float", 1.0, "Stable Diffusion's weight once handed over (it ramps 0 -> this over the middle "
                           "stage)", min=0, max=100),
        "zero123_fine_weight": Param("float", 0.1, "Zero-1-to-3's weight in the fine stage (1 before)", min=0, max=100),
        "widen_fraction": Param("float", 0.5, "share of the coarse stage over which the views widen from the reference "
                                "view to the whole orbit (camera de-biasing, our reading)", min=0, max=1),
        "start_azimuth": Param("float", 45.0, "half-width of the azimuth range at the start, degrees", min=1, max=180),
        "azimuth_block": Param("int", 8, "steps per stratified block: each block visits every 360/N sector once", min=1,
                               max=360),
        # DreamCraft3D's lambda_depth_rel 0.05 beside its lambda_rgb 1000 (configs/dreamcraft3d-coarse-nerf.yaml),
        # scaled to this method's reference weights (lambda_rgb 10000, fine_lambda_rgb 1000).
        "lambda_depth": Param("float", 0.5, "Gaussian stages: weight of 1 - the correlation of the reference view's "
                              "rendered inverse depth with a monocular estimate (DPT-Hybrid; needs its weights locally, "
                              "else skipped with a log line; 0: off)", min=0, max=1e6),
        "fine_lambda_depth": Param("float", 0.05, "fine stage: the same depth correlation's weight on the mesh", min=0,
                                   max=1e6),
        "lr_offsets": Param("float", 3e-4, "fine stage: learning rate of the vertex offsets along the normals, metres "
                            "(chosen on the oracle: 1e-4, 3e-4, 1e-3 gave mesh PSNR 28.3, 28.5, 27.7 dB)", min=0, max=1),
        "fine_texture_lr": Param("float", 0.05, "fine stage: texture learning rate (on logits)", min=0, max=10),
        "fine_lambda_rgb": Param("float", 1000.0, "fine stage: reference RGB weight", min=0, max=1e6),
        "fine_lambda_mask": Param("float", 100.0, "fine stage: reference mask weight", min=0, max=1e6),
        "lambda_normal": Param("float", 1.0, "fine stage: normal consistency weight", min=0, max=1e6),
        "lambda_laplacian": Param("float", 100.0, "fine stage: Laplacian of the offsets weight", min=0, max=1e6),
    }


def curriculum_numbers(params: dict) -> tuple[list[tuple[int, int]], list[int]]:
    """The three bands [(top, bottom)] and widths of a request's curriculum.

    Raises:
        ParamError: not two integers per band in [0, 999] with top >= bottom, not three widths
            >= 0, or bands that rise from one stage to the next.
    """
    bands = []
    for stage in STAGES:
        text = params[f"{stage}_band"]
        try:
            top, bottom = (int(x) for x in text.split(","))
        except ValueError:
            raise ParamError(f"'{stage}_band' must be two timesteps top,bottom, e.g. 980,650; got {text!r}") from None
        if not 0 <= bottom <= top <= 999:
            raise ParamError(f"'{stage}_band' needs 0 <= bottom <= top <= 999; got {text!r}")
        bands.append((top, bottom))
    for (a, b), (c, d), name in zip(bands, bands[1:], STAGES[1:]):
        if c > a or d > b:
            raise ParamError(f"the '{name}' band {c},{d} rises above the stage before it ({a},{b}): bands must move down")
    try:
        widths = [int(x) for x in params["band_width"].split(",")]
    except ValueError:
        widths = []
    if len(widths) != 3 or min(widths) < 0:
        raise ParamError(f"'band_width' must be three widths >= 0, e.g. 200,150,100; got {params['band_width']!r}")
    return bands, widths


@register
class DTC123Spec(DistillationSpec):
    """Image-to-3D with a diffusion time-step curriculum for teacher and student."""

    implementation = "backend.pipelines.dtc123:DTC123Pipeline"

    name = "dtc123"
    title = "DTC123 (image to 3D, time-step curriculum)"
    works_on = ("image",)
    params = grouped(_params(), groups={
        "input": ("mode", "prompt", "class_name", "elevation", "ref_size"),
        "teacher": ("teacher", "oracle_mesh", "oracle_modes", "oracle_sigma", "oracle_zero123_blur", "weights", "zero123_cfg", "sd_cfg", "sd_weight",
                    "zero123_fine_weight", "batch_size"),
        "schedule": ("coarse_iters", "middle_iters", "fine_iters", "coarse_band", "middle_band", "fine_band",
                     "band_width", "coarse_size", "middle_size", "fine_size", "widen_fraction", "start_azimuth",
                     "azimuth_block"),
        "gaussians": ("init_points", "init_radius", "init_opacity", "sh_degree", "lr_means", "lr_means_final",
                      "lr_means_steps", "lr_colors", "lr_opacities", "lr_scales", "lr_quats", "radius", "fovy",
                      "elevation_min", "elevation_max", "lambda_rgb", "lambda_mask", "lambda_depth", "reference_warmup",
                      "invert_bg_prob"),
        "densification": ("coarse_densify_until", "middle_densify_until", "densify_from", "densify_every", "densify_grad", "prune_opacity", "scene_extent",
                          "grow_scale3d", "prune_scale3d", "opacity_reset_every"),
        "mesh": ("mesh_resolution", "density_threshold", "max_faces", "bake_size", "unwrap_time_limit", "lr_offsets",
                 "fine_texture_lr", "fine_lambda_rgb", "fine_lambda_mask", "fine_lambda_depth", "lambda_normal", "lambda_laplacian"),
        "texture": ("texture_size",),
    }, basic=("prompt", "class_name", "elevation", "coarse_iters", "middle_iters", "fine_iters", "texture_size"),
        when={"oracle_zero123_blur": ("teacher", ("oracle",))})
    presets = {
        "default": {},
        "fast": {"ref_size": 128, "coarse_iters": 200, "middle_iters": 200, "fine_iters": 100, "init_points": 3000,
                 "coarse_size": 64, "middle_size": 128, "fine_size": 128, "mesh_resolution": 96, "max_faces": 20_000,
                 "texture_size": 512, "bake_size": 192, "opacity_reset_every": 0, "lr_means_steps": 400,
                 "densify_from": 0, "densify_every": 100, "coarse_densify_until": 200, "middle_densify_until": 0},
        "tiny": {"weights": "tiny", "ref_size": 64, "coarse_iters": 20, "middle_iters": 20, "fine_iters": 6,
                 "init_points": 1500, "coarse_size": 32, "middle_size": 48, "fine_size": 64, "mesh_resolution": 48,
                 "max_faces": 4000, "texture_size": 128, "bake_size": 64, "opacity_reset_every": 0, "lr_means_steps": 40,
                 "densify_from": 0, "densify_every": 10},
    }

    @classmethod
    def check_request(cls, params, inputs):
        if "image" not in inputs and params["teacher"] != "oracle":
            raise ParamError("dtc123 needs the input 'image' (an RGBA image, or RGB plus 'mask')")
        from ..base import check_reference_inputs, check_teacher_inputs

        check_teacher_inputs(params, inputs)
        check_reference_inputs(params, inputs)
        curriculum_numbers(params)
        if params["coarse_iters"] + params["middle_iters"] == 0:
            raise ParamError("'coarse_iters' and 'middle_iters' are both 0: the Gaussian stages need at least one step")
        if params["elevation_min"] > params["elevation_max"]:
            raise ParamError("'elevation_min' must not exceed 'elevation_max'")

    @classmethod
    def estimate_memory(cls, params, inputs):
        est = dict(super().estimate_memory(dict(params, resolutions=",".join([str(params["middle_size"])] * 3), texture_render_size=params[
            "fine_size"]), inputs))
        est.pop("resolutions", None)
        est.pop("texture_render_size", None)
        est["middle_size"] = params["middle_size"] ** 2 * params["batch_size"] * BYTES_PER_TEACHER_PIXEL
        est["fine_size"] = params["fine_size"] ** 2 * params["batch_size"] * BYTES_PER_TEACHER_PIXEL
        return est
