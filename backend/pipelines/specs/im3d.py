"""What the server knows of IM-3D without importing torch (see ``backend.pipelines.im3d``): the
paper's numbers (section 3, appendix A.1; ``../shared/papers/implementation-notes.md``)."""
from __future__ import annotations

from ...guidance.registry import STABLE_DIFFUSION, ZERO123
from .fitting import fit_params
from .reference import TEXT_ONLY, check_reference, reference_params
from ..base import (OUTPUT_PARAMS, BYTES_PER_GAUSSIAN, BYTES_PER_TEACHER_PIXEL, BYTES_PER_TEXEL, BYTES_PER_VOXEL, TEACHER_BYTES, InputSpec,
                    PRIOR_ORACLE_PARAMS, PRIOR_ORACLE_WHEN, Param, ParamError, Pipeline, check_reference_inputs,
                    check_teacher_inputs, grouped, reference_inputs, reference_memory, register)


@register
class IM3DSpec(Pipeline):
    """Image- or text-to-3D by multi-view generation and robust Gaussian reconstruction, iterated."""

    implementation = "backend.pipelines.im3d:IM3DPipeline"

    name = "im3d"
    title = "IM-3D (multi-view generation + reconstruction)"
    params = {
        "mode": Param("choice", "image", "image-to-3D, or text-to-3D (Stable Diffusion draws the reference image first)",
                      choices=("image", "text")),
        "prompt": Param("str", "", "text prompt (text mode)", max_len=500),
        "negative_prompt": Param("str", "", "what the reference image should avoid (text mode)", max_len=500),
        "teacher": Param("choice", "auto", "auto: Zero-1-to-3 generates the views; oracle: exact renders (verification)",
                         choices=("auto", "oracle")),
        "oracle_mesh": Param("str", "", "ground-truth GLB for teacher=oracle (a path on the server)", max_len=4096, path=True),
        **PRIOR_ORACLE_PARAMS,
        **OUTPUT_PARAMS,
        "oracle_jitter": Param("float", 0.0, "teacher=oracle: the first generation's cameras jittered by up to this many "
                               "degrees in azimuth and elevation (inconsistent views, to verify that the loop repairs "
                               "them)", min=0, max=45),
        "weights": Param("choice", "default", "generator weights: default, stable (stable-zero123) or tiny",
                         choices=("default", "stable", "tiny")),
        "guidance_scale": Param("float", None, "the generator's CFG scale (unset: Zero-1-to-3's 5)", min=0, max=100),
        **reference_params(),
        "views": Param("int", 16, "K, views generated per orbit (uniform azimuth steps of 360/K)", min=2, max=64),
        "view_elevations": Param("str", "0", "elevation offsets of the views from the orbit's, degrees, cycled over the K "
                                 "views in azimuth order: 0 is the paper's flat orbit; e.g. 20,-20 a wavy orbit that also "
                                 "sees the top and the bottom", max_len=200),
        "view_size": Param("int", 512, "side of the generated views, pixels", min=32, max=1024),
        "elevation": Param("float", 0.0, "elevation of the orbit and of the reference view, degrees, positive when the "
                           "camera is above the object", min=-80, max=80),
        "radius": Param("float", 2.0, "camera distance, metres (fixed)", min=0.5, max=20),
        "fovy": Param("float", 49.1, "vertical field of view, degrees", min=5, max=120),
        "ref_size": Param("int", 256, "side of the recentred reference image, pixels", min=32, max=1024),
        "solver": Param("choice", "ddim", "the generator's solver", choices=("ddim", "dpmsolver++")),
        "gen_steps": Param("int", 40, "solver steps of the first generation (the paper: about 40 evaluations)", min=1,
                           max=500),
        "loops": Param("int", 2, "regenerations: render -> noise -> regenerate -> refit ('we iterate this process two "
                       "times')", min=0, max=10),
        "regen_strength": Param("str", "0.5,0.3", "noise strength of each regeneration, one per loop (0-1: the share of "
                                "the schedule re-run)", max_len=100),
        "regen_steps": Param("int", 10, "solver steps each regeneration runs (the paper: 10)", min=1, max=200),
        "iters": Param("int", 1200, "reconstruction steps in all (the paper: 1200)", min=1, max=100_000),
        "regen_every": Param("int", 500, "reconstruction steps between regenerations (the paper: 500)", min=1,
                             max=100_000),
        "views_per_step": Param("int", 16, "views rendered per step (all K: full-image renders every iteration, as the "
                                "paper)", min=1, max=64),
        "init": Param("choice", "centre", "initial Gaussians: centre (the paper: a small ball at the centre) or hull "
                      "(inside every generated silhouette, coloured by the views: converges in fewer steps)",
                      choices=("centre", "hull")),
        "init_points": Param("int", 5000, "initial Gaussians (the paper: 5000)", min=10, max=1_000_000),
        "init_radius": Param("float", 0.3, "radius of the initial ball, metres", min=0.01, max=5),
        "lr_means": Param("float", 1.6e-3, "position learning rate, in object sizes (decays to 1%)", min=0, max=1),
        "loss": Param("choice", "im3d", "image loss (stages.reconstruction): im3d (LPIPS + MS-SSIM + mask) or l1_ssim",
                      choices=("im3d", "l1_ssim")),
        "w_lpips": Param("float", 10.0, "weight of LPIPS (L1 in its place without its weights; the paper: 10)", min=0,
                         max=100),
        "w_ssim": Param("float", 0.2, "weight of (1 - MS-SSIM) (the paper: 0.2)", min=0, max=10),
        "w_mask": Param("float", 1.0, "weight of the mask loss (the paper: 1)", min=0, max=100),
        "densify_from": Param("int", 50, "first densification step", min=0, max=100_000),
        "densify_every": Param("int", 50, "steps between densifications (the paper: 50)", min=1, max=100_000),
        "densify_until": Param("int", 1000, "last densification step", min=0, max=100_000),
        **fit_params(),
    }
    params = grouped(params, groups={
        "input": ("mode", "prompt", "negative_prompt", "elevation", "ref_size") + TEXT_ONLY,
        "teacher": ("teacher", "oracle_mesh", "oracle_modes", "oracle_sigma", "oracle_jitter", "weights", "guidance_scale", "solver", "gen_steps", "loops", "regen_strength",
                    "regen_steps", "views", "view_elevations", "view_size", "radius", "fovy", "mask_threshold"),
        "gaussians": ("iters", "regen_every", "views_per_step", "init", "init_points", "init_radius", "sh_degree", "lr_means",
                      "lr_scales", "lr_quats", "lr_opacities", "lr_colors", "loss", "w_lpips", "w_ssim", "w_mask"),
        "densification": ("densify_from", "densify_every", "densify_until", "densify_grad", "prune_opacity",
                          "opacity_reset_every"),
        "mesh": ("mesh_resolution", "density_threshold", "max_faces", "unwrap_time_limit"),
        "texture": ("texture_size",),
    }, basic=("mode", "prompt", "negative_prompt", "elevation", "views", "loops", "texture_size"),
       when={**{name: ("mode", ("text",)) for name in ("prompt", "negative_prompt") + TEXT_ONLY},
             "oracle_jitter": ("teacher", ("oracle",)), **PRIOR_ORACLE_WHEN})
    works_on = ("prompt", "image")
    presets = {
        "default": {},
        "fast": {"views": 16, "view_elevations": "0,25,0,-25", "view_size": 128, "ref_size": 128, "reference_size": 256,
                 "reference_steps": 30, "gen_steps": 20, "regen_steps": 6, "iters": 600,
                 "regen_every": 200, "views_per_step": 1, "init": "hull", "init_points": 6000, "densify_from": 100,
                 "densify_every": 100, "densify_until": 420, "mesh_resolution": 128, "max_faces": 20_000,
                 "texture_size": 512},
        "tiny": {"weights": "tiny", "views": 4, "view_size": 64, "ref_size": 64, "gen_steps": 4, "regen_steps": 2,
                 "reference_steps": 4, "reference_size": 32, "iters": 60, "regen_every": 25, "views_per_step": 2, "init": "hull", "init_points": 1000,
                 "densify_until": 50, "mesh_resolution": 48, "max_faces": 4000, "texture_size": 128},
    }
    inputs = {
        "image": InputSpec(("uint8",), (None, None, (3, 4)), help="reference image uint8 [H, W, 3|4]; alpha = object",
                           when=("mode", ("image",))),
        "mask": InputSpec(("uint8",), (None, None), help="foreground mask uint8 [H, W] for an RGB image (non-zero = object)",
                          when=("mode", ("image",))),
        **reference_inputs(),
    }
    models = {"default": [STABLE_DIFFUSION.model()[0], ZERO123.model()[0]], "stable": [ZERO123.model("stable")[0]]}

    @classmethod
    def check_request(cls, params, inputs):
        if params["mode"] == "image" and "image" not in inputs and params["teacher"] != "oracle":
            raise ParamError("image mode needs the input 'image' (an RGBA image, or RGB plus 'mask')")
        if params["mode"] == "text" and not params["prompt"].strip() and params["teacher"] != "oracle":
            raise ParamError("text mode needs a 'prompt'")
        check_teacher_inputs(params, inputs)
        check_reference_inputs(params, inputs)
        check_reference(params)
        view_elevations(params)
        strengths = regen_strengths(params)
        if len(strengths) != params["loops"]:
            raise ParamError(f"'regen_strength' lists {len(strengths)} strengths for {params['loops']} loops: give one per "
                             "loop, e.g. 0.5,0.3")

    @classmethod
    def estimate_memory(cls, params, inputs):
        return {
            "view_size": params["views"] * params["view_size"] ** 2 * BYTES_PER_TEACHER_PIXEL,
            "init_points": params["init_points"] * 4 * BYTES_PER_GAUSSIAN,
            "mesh_resolution": params["mesh_resolution"] ** 3 * BYTES_PER_VOXEL,
            "texture_size": params["texture_size"] ** 2 * BYTES_PER_TEXEL,
            "weights": TEACHER_BYTES[params["weights"]],
            "references": reference_memory(params, inputs),
        }


def _numbers(params: dict, name: str, example: str, low: float, high: float, low_open: bool) -> list[float]:
    """The comma-separated numbers of the string parameter ``name``, each in [low, high] ((low, high]
    when ``low_open``). Raises ParamError naming the parameter, the range and an example."""
    text = params[name].strip()
    try:
        values = [float(x) for x in text.split(",")] if text else []
    except ValueError:
        values = None
    inside = (lambda v: low < v <= high) if low_open else (lambda v: low <= v <= high)
    if values is None or not all(inside(v) for v in values):
        bracket = "(" if low_open else "["
        raise ParamError(f"'{name}' must be numbers in {bracket}{low:g}, {high:g}] separated by commas, e.g. {example}; "
                         f"got {text!r}")
    return values


def view_elevations(params: dict) -> list[float]:
    """Elevation offsets of the K views, degrees, one per view: ``view_elevations`` (``"20,-20"``)
    cycled in azimuth order, each in [-80, 80] and the orbit's elevation plus it too.

    Raises:
        ParamError: not numbers, none given, or a view's elevation outside [-80, 80].
    """
    offsets = _numbers(params, "view_elevations", "0 or 20,-20", -80.0, 80.0, False)
    if not offsets:
        raise ParamError("'view_elevations' is empty: give at least one offset, e.g. 0 (the paper's flat orbit)")
    k = params["views"]
    out = [offsets[i % len(offsets)] for i in range(k)]
    worst = max(out, key=lambda v: abs(params["elevation"] + v))
    if abs(params["elevation"] + worst) > 80:
        raise ParamError(f"elevation {params['elevation']:g} plus the view offset {worst:g} leaves [-80, 80] degrees: "
                         "lower the offsets or the elevation")
    return out


def regen_strengths(params: dict) -> list[float]:
    """The regeneration strengths of ``regen_strength`` (``"0.5,0.3"`` -> [0.5, 0.3]).

    Raises:
        ParamError: not numbers in [0, 1].
    """
    return _numbers(params, "regen_strength", "0.5,0.3", 0.0, 1.0, True)
