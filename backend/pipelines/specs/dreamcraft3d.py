"""What the server knows of DreamCraft3D without importing torch (see
``backend.pipelines.dreamcraft3d``): text -> reference image -> geometry sculpting -> texture
boosting. Numbers from the paper (Sun et al. 2023, arXiv 2310.16818) and its public configs
(github deepseek-ai/DreamCraft3D ``configs/dreamcraft3d-{coarse-nerf,geometry,texture}.yaml``),
each with its source in the parameter's help or in ``docs/methods.md``."""
from __future__ import annotations

import dataclasses
import re

from ...guidance.registry import STABLE_DIFFUSION, ZERO123
from ...contracts import parse_sizes
from ..base import (BYTES_PER_TEACHER_PIXEL, Param, ParamError, check_schedule_params, grouped, register,
                    schedule_params)
from .distillation import PARAMS, DistillationSpec
from .reference import TEXT_ONLY, check_reference, reference_params


def parse_interval(params: dict, name: str) -> tuple[int, int]:
    """A ``"lo,hi"`` timestep interval parameter as two ints in [0, 999] with lo <= hi.

    Raises:
        ParamError: anything else (the message names the parameter and gives an example).
    """
    text = params[name]
    try:
        lo, hi = (int(x) for x in text.split(","))
    except ValueError:
        raise ParamError(f"'{name}' must be two timesteps lo,hi, e.g. 700,850; got {text!r}") from None
    if not 0 <= lo <= hi <= 999:
        raise ParamError(f"'{name}' needs 0 <= lo <= hi <= 999; got {text!r}")
    return lo, hi


def boost_strengths(params: dict) -> list[float]:
    """The augmentation strength t' of each texture-boosting round (the last one repeats).

    Raises:
        ParamError: not a comma-separated list of numbers in (0, 1].
    """
    try:
        values = [float(x) for x in params["boost_strengths"].split(",")]
    except ValueError:
        values = []
    if not values or not all(0 < v <= 1 for v in values):
        raise ParamError(f"'boost_strengths' must be numbers in (0, 1], e.g. 0.5,0.1; got {params['boost_strengths']!r}")
    return values


#: DreamCraft3D's own timestep schedule (``timestep_schedule=interval``, the default).
INTERVAL_HELP = ("DreamCraft3D's configs: sculpting at t ~ U(t_start) annealed to U(t_end) over t_anneal_steps, "
                 "geometry refinement at t ~ U(geometry_t)")


def _params() -> dict:
    base = {k: v for k, v in PARAMS.items() if k not in (
        "timestep_schedule", "t_min", "t_max", "m1", "m2", "s1", "s2", "guidance_scale", "texture_iters", "texture_lr",
        "texture_render_size", "texture_supersample", "refine_steps", "refine_strength_start", "refine_strength_end",
        "view_prompts")}
    base["mode"] = dataclasses.replace(base["mode"], default="text", help="text: a reference image is drawn first; "
                                       "image: the given image is the reference")
    base["iters"] = dataclasses.replace(base["iters"], default=1000, help="geometry sculpting steps (Gaussians)")
    # Every mode ends up with a reference image, so the image-mode values hold in both modes.
    for name, value in (("lr_means_steps", 500), ("densify_from", 100), ("densify_every", 100), ("radius", 2.0)):
        base[name] = dataclasses.replace(base[name], default=value, default_by=None,
                                         help=base[name].help.split(" (image")[0] + " (a reference image in both modes: "
                                         "DreamGaussian's image-mode value)")
    base["elevation_min"] = dataclasses.replace(base["elevation_min"], default=-10.0, help="random cameras' lowest "
                                                "elevation, degrees (the configs' elevation_range -10..45)")
    base["elevation_max"] = dataclasses.replace(base["elevation_max"], default=45.0, help="random cameras' highest "
                                                "elevation, degrees")
    return {
        **base,
        **schedule_params("interval", own={"interval": INTERVAL_HELP}),
        "class_name": Param("str", "", "the object's class word for DreamBooth's prompt 'a <token> <class>' (empty: "
                            "the prompt's last word)", max_len=100),
        "token": Param("str", "sks", "DreamBooth's rare identifier token", max_len=20),
        "reference_only": Param("bool", False, "stop after the reference image (keep it, or run again with another "
                                "reference_seed)"),
        **reference_params(),
        "sd_cfg": Param("float", 100.0, "Stable Diffusion's CFG in the SDS terms (DreamFusion's 100; the code's 20 is "
                        "DeepFloyd IF's)", min=0, max=1000),
        "zero123_cfg": Param("float", 5.0, "Zero-1-to-3's CFG (configs: 5)", min=0, max=1000),
        "sd_weight": Param("float", 0.5, "hybrid SDS (eq. 6): Stable Diffusion's weight; with zero123_weight 1 the "
                           "paper's mu = 2", min=0, max=100),
        "zero123_weight": Param("float", 1.0, "hybrid SDS: Zero-1-to-3's weight (3D-aware SDS)", min=0, max=100),
        "t_start": Param("str", "700,850", "sculpting timesteps at the start: U(lo, hi) (configs: 0.7, 0.85)",
                         max_len=20),
        "t_end": Param("str", "200,500", "sculpting timesteps after the anneal (configs: 0.2, 0.5)", max_len=20),
        "t_anneal_steps": Param("int", 200, "steps of the linear anneal from t_start to t_end (configs: 200)", min=0,
                                max=100_000),
        "widen_steps": Param("int", 200, "steps over which the random views widen from the reference view to the whole "
                             "orbit (configs: progressive_until 200)", min=0, max=100_000),
        "start_azimuth": Param("float", 15.0, "half-width of the azimuth range at the start, degrees", min=1, max=180),
        "azimuth_block": Param("int", 8, "steps per stratified block of azimuths", min=1, max=360),
        "lambda_depth": Param("float", 0.5, "reference depth correlation weight (configs: lambda_depth_rel 0.05 beside "
                              "lambda_rgb 1000, scaled to lambda_rgb 10000); needs DPT-Hybrid's weights locally",
                              min=0, max=1e6),
        "lambda_normal_ref": Param("float", 0.0, "reference normal loss weight (configs: 0); no monocular normal "
                                   "estimator is installed, so a value > 0 logs that the loss is skipped", min=0,
                                   max=1e6),
        "geometry_iters": Param("int", 500, "geometry refinement steps on the extracted mesh (vertex offsets)", min=0,
                                max=100_000),
        "geometry_size": Param("int", 512, "geometry refinement render side, pixels (configs: 512)", min=16, max=2048),
        "geometry_t": Param("str", "20,500", "geometry refinement timesteps U(lo, hi) (configs: 0.02, 0.5)", max_len=20),
        "lr_offsets": Param("float", 3e-4, "geometry refinement: vertex offset learning rate, metres", min=0, max=1),
        "geometry_texture_lr": Param("float", 0.05, "geometry refinement: texture learning rate (logits)", min=0,
                                     max=10),
        "lambda_normal": Param("float", 1.0, "geometry refinement: normal consistency weight (configs: 10 -> 1)", min=0,
                               max=1e6),
        "lambda_laplacian": Param("float", 100.0, "geometry refinement: Laplacian of the offsets weight", min=0,
                                  max=1e6),
        "fine_lambda_rgb": Param("float", 1000.0, "mesh stages: reference RGB weight (configs: 1000)", min=0, max=1e6),
        "fine_lambda_mask": Param("float", 100.0, "mesh stages: reference mask weight (configs: 100)", min=0, max=1e6),
        "boost_rounds": Param("int", 2, "texture boosting rounds (paper: 2)", min=0, max=20),
        "boost_iters": Param("int", 1000, "texture steps per round (code: 1000-step cycles)", min=1, max=100_000),
        "boost_views": Param("int", 16, "renders per round that DreamBooth learns from", min=1, max=256),
        "boost_strengths": Param("str", "0.5,0.1", "augmentation strength t' per round: noise to t' and restore (paper: "
                                 "0.5 first, 0.1 later)", max_len=60),
        "boost_size": Param("int", 512, "texture boosting render side, pixels", min=16, max=2048),
        "boost_t_start": Param("str", "50,500", "BSD timesteps at the start (configs: 0.05, 0.5)", max_len=20),
        "boost_t_end": Param("str", "50,200", "BSD timesteps at the end of all rounds (configs: 0.05, 0.2)", max_len=20),
        "boost_texture_lr": Param("float", 0.01, "texture boosting: texture learning rate (logits; chosen on the oracle: "
                                  "0.05 lowered the texture's PSNR by 0.1 dB, 0.01 raised it by 0.1-0.3 dB)", min=0,
                                  max=10),
        "bsd_weight": Param("float", 0.01, "BSD's weight beside the reference losses (configs: lambda_sd 0.01)", min=0,
                            max=100),
        "bsd_cfg": Param("float", 2.0, "CFG of the DreamBooth branch (configs: 2.0)", min=0, max=100),
        "dreambooth_steps": Param("int", 200, "DreamBooth fine-tuning steps per round (code: 200)", min=0,
                                  max=100_000),
        "dreambooth_lr": Param("float", 1e-4, "DreamBooth LoRA learning rate (diffusers' DreamBooth LoRA; the code "
                               "fine-tunes a whole UNet copy at 1e-5)", min=0, max=1),
        "dreambooth_rank": Param("int", 4, "LoRA rank of both adapters", min=1, max=256),
        "prior_images": Param("int", 4, "class images for DreamBooth's prior preservation (0: off)", min=0, max=64),
        "prior_weight": Param("float", 1.0, "prior preservation weight (DreamBooth: 1)", min=0, max=100),
        "lora_lr": Param("float", 1e-3, "the VSD LoRA's learning rate (ProlificDreamer's 1e-3)", min=0, max=1),
        "reuse_lora": Param("str", "", "the id of an earlier dreamcraft3d job of this server whose DreamBooth LoRA "
                            "(dreambooth_lora.safetensors) the first round loads instead of fine-tuning (Regenerate)",
                            max_len=64),
    }


#: The file a dreamcraft3d job saves its DreamBooth LoRA in (``reuse_lora`` reads it back).
DREAMBOOTH_LORA_FILE = "dreambooth_lora.safetensors"


@register
class DreamCraft3DSpec(DistillationSpec):
    """Text -> reference image -> geometry sculpting -> texture boosting (DreamCraft3D)."""

    implementation = "backend.pipelines.dreamcraft3d:DreamCraft3DPipeline"

    name = "dreamcraft3d"
    title = "DreamCraft3D (text or image to 3D, geometry sculpting and texture boosting)"
    works_on = ("prompt", "image")
    params = grouped(_params(), groups={
        "input": ("mode", "prompt", "negative_prompt", "class_name", "token", "elevation", "ref_size", "reference_only",
                  "reference_seed", "reference_size", "reference_steps", "reference_cfg", "mask_threshold"),
        "teacher": ("teacher", "oracle_mesh", "oracle_modes", "oracle_sigma", "weights", "sd_cfg", "zero123_cfg", "sd_weight", "zero123_weight",
                    "batch_size"),
        "schedule": ("timestep_schedule", "t_min", "t_max", "m1", "m2", "s1", "s2", "t_start", "t_end",
                     "t_anneal_steps", "resolutions", "widen_steps", "start_azimuth", "azimuth_block"),
        "gaussians": ("iters", "init_points", "init_radius", "init_opacity", "sh_degree", "lr_means", "lr_means_final",
                      "lr_means_steps", "lr_colors", "lr_opacities", "lr_scales", "lr_quats", "radius", "fovy",
                      "elevation_min", "elevation_max", "lambda_rgb", "lambda_mask", "lambda_depth", "lambda_normal_ref",
                      "reference_warmup", "invert_bg_prob"),
        "densification": ("densify_from", "densify_every", "densify_until", "densify_grad", "prune_opacity",
                          "scene_extent", "grow_scale3d", "prune_scale3d", "opacity_reset_every"),
        "mesh": ("mesh_resolution", "density_threshold", "max_faces", "bake_size", "unwrap_time_limit", "geometry_iters",
                 "geometry_size", "geometry_t", "lr_offsets", "geometry_texture_lr", "lambda_normal",
                 "lambda_laplacian", "fine_lambda_rgb", "fine_lambda_mask"),
        "texture": ("texture_size", "boost_rounds", "boost_iters", "boost_views", "boost_strengths", "boost_size",
                    "boost_t_start", "boost_t_end", "boost_texture_lr", "bsd_weight", "bsd_cfg", "dreambooth_steps",
                    "dreambooth_lr", "dreambooth_rank", "prior_images", "prior_weight", "lora_lr", "reuse_lora"),
    }, basic=("mode", "prompt", "class_name", "reference_only", "reference_seed", "iters", "boost_rounds",
              "texture_size"),
        when={name: ("mode", ("image",)) for name in ("elevation", "ref_size")}
        | {name: ("mode", ("text",)) for name in ("reference_only", "mask_threshold") + TEXT_ONLY}
        | {name: ("timestep_schedule", ("interval",)) for name in ("t_start", "t_end", "t_anneal_steps", "geometry_t")})
    models = {"default": [STABLE_DIFFUSION.model()[0], ZERO123.model()[0]]}
    presets = {
        "default": {},
        "fast": {"ref_size": 128, "iters": 300, "init_points": 3000, "resolutions": "64,96,128", "mesh_resolution": 96,
                 "max_faces": 20_000, "texture_size": 512, "bake_size": 192, "densify_until": 200,
                 "opacity_reset_every": 0, "reference_size": 256, "reference_steps": 30, "geometry_iters": 100,
                 "geometry_size": 128, "boost_rounds": 2, "boost_iters": 50, "boost_views": 8, "boost_size": 256,
                 "dreambooth_steps": 50, "prior_images": 2, "t_anneal_steps": 100, "widen_steps": 100},
        "tiny": {"weights": "tiny", "ref_size": 64, "iters": 20, "lr_means_steps": 20, "init_points": 1500,
                 "resolutions": "32,48,64", "mesh_resolution": 48, "max_faces": 4000, "texture_size": 128, "bake_size": 64,
                 "densify_until": 20, "densify_every": 10, "densify_from": 0, "opacity_reset_every": 0,
                 "reference_size": 32, "reference_steps": 4, "geometry_iters": 4, "geometry_size": 64, "boost_rounds": 2,
                 "boost_iters": 3, "boost_views": 4, "boost_size": 64, "dreambooth_steps": 5, "dreambooth_lr": 1e-2,
                 "prior_images": 2, "lora_lr": 1e-2, "t_anneal_steps": 10, "widen_steps": 10},
    }

    @classmethod
    def check_request(cls, params, inputs):
        from ..base import check_reference_inputs, check_teacher_inputs

        if params["mode"] == "image" and "image" not in inputs and params["teacher"] != "oracle":
            raise ParamError("image mode needs the input 'image' (an RGBA image, or RGB plus 'mask')")
        if params["mode"] == "text" and not params["prompt"].strip():
            raise ParamError("text mode needs a 'prompt' (what to draw the reference image of)")
        check_teacher_inputs(params, inputs)
        check_reference_inputs(params, inputs)
        for name in ("t_start", "t_end", "geometry_t", "boost_t_start", "boost_t_end"):
            parse_interval(params, name)
        boost_strengths(params)
        if params["reuse_lora"] and not re.fullmatch(r"[A-Za-z0-9_.-]+", params["reuse_lora"]):
            raise ParamError(f"'reuse_lora' must be a job id (see `splatsmith jobs`); got {params['reuse_lora']!r}")
        check_reference(params)
        check_schedule_params(params)
        if params["elevation_min"] > params["elevation_max"]:
            raise ParamError("'elevation_min' must not exceed 'elevation_max'")
        parse_sizes(params)

    @classmethod
    def needed_job_files(cls, params):
        """The reused DreamBooth LoRA (``reuse_lora``), the one file another job lends."""
        return [(params["reuse_lora"], DREAMBOOTH_LORA_FILE)] if params.get("reuse_lora") else []

    @classmethod
    def estimate_memory(cls, params, inputs):
        est = dict(super().estimate_memory(dict(params, texture_render_size=params["boost_size"]), inputs))
        est.pop("texture_render_size", None)
        est["geometry_size"] = params["geometry_size"] ** 2 * params["batch_size"] * BYTES_PER_TEACHER_PIXEL
        est["boost_size"] = params["boost_size"] ** 2 * params["batch_size"] * BYTES_PER_TEACHER_PIXEL
        return est
