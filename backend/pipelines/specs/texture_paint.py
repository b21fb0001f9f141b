"""What the server knows of texture painting without importing torch: parameters, presets,
inputs and the submit checks (the method is ``backend.pipelines.texture_paint``).

The numbers are SyncMVD's (Liu et al. 2023, arXiv 2311.12891; ``src/configs.py`` and
``src/pipeline.py``): 30 denoising steps, CFG 15.5, its negative prompt, the ControlNet's
conditioning scale 0.7 moving to 0.9, eight views on a ring at elevation 0 plus two from 30
degrees above (azimuths 0 and 180), texture-space synchronisation while t > (1 - 0.8) T, the
cosine exponent rising from 0 to 6 over the steps, views of 768^2 pixels (SyncMVD's
``latent_view_size`` 96 x 8), a 1536^2 latent texture and a 1024^2 colour texture.
"""
from __future__ import annotations

from ...guidance.registry import DEPTH_CONTROLNET, IP_ADAPTER, SD_DEPTH
from ..base import (BYTES_PER_TEACHER_PIXEL, BYTES_PER_TEXEL, PRIOR_ORACLE_PARAMS, PRIOR_ORACLE_WHEN, TEACHER_BYTES, InputSpec,
                    Param, ParamError, Pipeline, check_teacher_inputs, grouped, register)
from .texture_refine import MESH_INPUTS, check_mesh_inputs

#: SyncMVD's default negative prompt (``src/configs.py``).
SYNCMVD_NEGATIVE_PROMPT = "oversmoothed, blurry, depth of field, out of focus, low quality, bloom, glowing effect."
#: Views of each set of ``cap_views`` besides the ring: (elevation sign, azimuth) pairs.
CAP_VIEWS = {"above": ((1, 0.0), (1, 180.0)), "above_below": ((1, 0.0), (-1, 180.0)), "none": ()}


@register
class TexturePaintSpec(Pipeline):
    """A new texture painted on a given mesh from a prompt (and optionally a reference image):
    depth-conditioned views denoised together, synchronised through the mesh's own UV texture
    (SyncMVD)."""

    implementation = "backend.pipelines.texture_paint:TexturePaintPipeline"

    name = "texture_paint"
    title = "Paint Texture"
    params = {
        "prompt": Param("str", "", "what the texture should show", max_len=500),
        "negative_prompt": Param("str", SYNCMVD_NEGATIVE_PROMPT, "what the teacher should avoid", max_len=500),
        "teacher": Param("choice", "auto", "auto: Stable Diffusion with a depth ControlNet; oracle: verification",
                         choices=("auto", "oracle")),
        "oracle_mesh": Param("str", "", "ground-truth GLB for teacher=oracle, in the mesh's frame (a path on the server)",
                             max_len=4096, path=True),
        **PRIOR_ORACLE_PARAMS,
        "weights": Param("choice", "default", "default: Stable Diffusion 1.5 + depth ControlNet (SyncMVD); xl: SDXL + "
                         "its depth ControlNet; tiny, tiny-xl: random stand-ins in those layouts",
                         choices=("default", "xl", "tiny", "tiny-xl")),
        "steps": Param("int", 30, "denoising steps", min=1, max=1000),
        "guidance_scale": Param("float", None, "classifier-free guidance scale (unset: the teacher's own, 15.5 as SyncMVD)",
                                min=0, max=1000),
        "conditioning_scale": Param("float", 0.7, "weight of the depth ControlNet at the first step", min=0.0, max=5.0),
        "conditioning_scale_end": Param("float", 0.9, "weight of the depth ControlNet it moves to (SyncMVD's schedule)",
                                        min=0.0, max=5.0),
        "ip_adapter_scale": Param("float", 1.0, "weight of the reference image through the IP-Adapter (diffusers' "
                                  "default 1.0)", min=0.0, max=5.0),
        "synchronise": Param("bool", True, "make the views agree through the texture at every step (false: denoise "
                             "them apart and blend the results, the baseline)"),
        "latent_sync_end": Param("float", 0.8, "synchronise in the teacher's latent space while t > (1 - this) T, then "
                                 "in RGB (decoded views baked into a colour texture)", min=0.0, max=1.0),
        "reference_sync_end": Param("float", 0.2, "while t > (1 - this) T the views are synchronised one after another "
                                    "outward from the front view (our stand-in for SyncMVD's reference attention; 0: off)",
                                    min=0.0, max=1.0),
        "cos_power_start": Param("float", 0.0, "exponent of the view-surface cosine in the texel weights, first step",
                                 min=0.0, max=32.0),
        "cos_power_end": Param("float", 6.0, "exponent of the cosine at the last step", min=0.0, max=32.0),
        "shared_noise": Param("bool", True, "start every view from one noise texture rendered into it (SyncMVD; false: "
                              "fresh noise per view)"),
        "sampler": Param("choice", "ddpm", "each view's scheduler step from the synchronised x0: DDPM (SyncMVD) "
                         "or DDIM (eta 0)", choices=("ddpm", "ddim")),
        "ring_views": Param("int", 8, "views on the ring around the object", min=1, max=32),
        "ring_elevation": Param("float", 0.0, "elevation of the ring, degrees", min=-89, max=89),
        "cap_views": Param("choice", "above", "views besides the ring: two from above (SyncMVD), one above and one "
                           "below, or none", choices=tuple(CAP_VIEWS)),
        "cap_elevation": Param("float", 30.0, "elevation of those views, degrees", min=1, max=89),
        "view_size": Param("int", 768, "side of every view, pixels (a multiple of 8)", min=32, max=2048),
        "latent_texture_size": Param("int", 1536, "side of the texture the latents are synchronised in, texels",
                                     min=32, max=4096),
        "texture_size": Param("int", 1024, "side of the colour texture, texels", min=64, max=4096),
        "radius": Param("float", 1.8, "camera distance in the normalised frame (object radius 0.5)", min=0.6, max=20),
        "fovy": Param("float", 40.0, "vertical field of view of the views, degrees", min=5, max=120),
        "max_batch": Param("int", 10, "views per denoiser call (fewer: less memory)", min=1, max=64),
        "polish_iters": Param("int", 0, "texture_refine steps after painting (0: off)", min=0, max=10_000),
        "unwrap_time_limit": Param("float", 120.0, "seconds before xatlas is stopped (a mesh without UVs)", min=1, max=3600),
    }
    params = grouped(params, groups={
        "input": ("prompt", "negative_prompt"),
        "teacher": ("teacher", "oracle_mesh", "oracle_modes", "oracle_sigma", "weights", "steps", "guidance_scale",
                    "conditioning_scale", "conditioning_scale_end", "ip_adapter_scale"),
        "texture": ("synchronise", "latent_sync_end", "reference_sync_end", "cos_power_start", "cos_power_end", "shared_noise", "sampler", "ring_views",
                    "ring_elevation", "cap_views", "cap_elevation", "view_size", "latent_texture_size", "texture_size",
                    "radius", "fovy", "max_batch", "polish_iters"),
        "mesh": ("unwrap_time_limit",),
    }, basic=("prompt", "negative_prompt", "steps", "texture_size"), when=PRIOR_ORACLE_WHEN)
    works_on = ("mesh", "prompt", "image")
    presets = {
        "default": {},
        "fast": {"view_size": 128, "latent_texture_size": 512, "texture_size": 512},
        "tiny": {"weights": "tiny", "steps": 4, "view_size": 32, "latent_texture_size": 64, "texture_size": 128},
    }
    inputs = {
        **MESH_INPUTS,
        "image": InputSpec(("uint8",), (None, None, (3, 4)), help="optional reference image uint8 [H, W, 3|4] (alpha = "
                           "object), given to the teacher through an IP-Adapter"),
        "mask": InputSpec(("uint8",), (None, None), help="foreground mask uint8 [H, W] for an RGB reference image"),
    }
    models = {"default": [SD_DEPTH.model()[0], DEPTH_CONTROLNET.model()[0], IP_ADAPTER.model()[0]],
              "xl": [SD_DEPTH.model("xl")[0], DEPTH_CONTROLNET.model("xl")[0], IP_ADAPTER.model("xl")[0]]}

    @classmethod
    def check_request(cls, params, inputs):
        check_mesh_inputs(inputs, "texture painting")
        if not params["prompt"].strip() and params["teacher"] != "oracle":
            raise ParamError("give a 'prompt': what the new texture should show")
        if params["view_size"] % 8:
            raise ParamError(f"'view_size' must be a multiple of 8 (the teacher's latents are 8x smaller), got "
                             f"{params['view_size']}; try {params['view_size'] // 8 * 8 or 8}")
        if "image" in inputs and params["weights"] == "tiny-xl" and params["teacher"] != "oracle":
            raise ParamError("the tiny-xl stand-ins have no IP-Adapter: paint from the prompt alone, or use weights=tiny "
                             "or xl with a reference image")
        check_teacher_inputs(params, inputs)

    @classmethod
    def estimate_memory(cls, params, inputs):
        views = params["ring_views"] + len(CAP_VIEWS[params["cap_views"]])
        return {
            "texture_size": (params["texture_size"] ** 2 + params["latent_texture_size"] ** 2) * BYTES_PER_TEXEL,
            "render_size": params["view_size"] ** 2 * min(views, params["max_batch"]) * BYTES_PER_TEACHER_PIXEL // 16,
            "vertices": sum(int(a.nbytes) for a in inputs.values()) * 8,
            "weights": TEACHER_BYTES[params["weights"]],
        }
