"""What the server knows of DreamGaussian without importing torch: its parameters (the public
code's numbers, see ``backend.pipelines.dreamgaussian``), presets, inputs, models and checks."""
from __future__ import annotations

from ...guidance.registry import STABLE_DIFFUSION, ZERO123
from ..base import Pipeline, register
from .distillation import INPUTS, PARAMS
from .distillation import check_request as check_distillation_request
from .distillation import estimate_memory as distillation_memory


@register
class DreamGaussianSpec(Pipeline):
    """Image- or text-to-3D with Gaussians, a mesh and a refined UV texture."""

    implementation = "backend.pipelines.dreamgaussian:DreamGaussianPipeline"

    name = "dreamgaussian"
    title = "DreamGaussian (image or text to 3D)"
    params = PARAMS
    works_on = ("prompt", "image")
    presets = {
        "default": {},
        "fast": {"ref_size": 128, "iters": 400, "init_points": 3000, "resolutions": "64,96,128", "mesh_resolution": 96, "max_faces": 20_000,
                 "texture_size": 512, "bake_size": 192, "texture_iters": 30, "texture_render_size": 128, "refine_steps": 20,
                 "densify_until": 300, "opacity_reset_every": 0},
        "tiny": {"weights": "tiny", "ref_size": 64, "iters": 60, "lr_means_steps": 60, "init_points": 1500, "resolutions": "32,48,64", "mesh_resolution": 48,
                 "max_faces": 4000, "texture_size": 128, "bake_size": 64, "texture_iters": 8, "texture_render_size": 64,
                 "refine_steps": 4, "densify_until": 60, "opacity_reset_every": 0},
    }
    inputs = INPUTS
    models = {"default": [STABLE_DIFFUSION.model()[0], ZERO123.model()[0]], "stable": [ZERO123.model("stable")[0]]}

    @classmethod
    def check_request(cls, params, inputs):
        check_distillation_request(params, inputs)

    @classmethod
    def estimate_memory(cls, params, inputs):
        return distillation_memory(params, inputs)
