"""DreamGaussian (Tang et al. 2023): image-to-3D and text-to-3D in two stages, with the public
code's numbers (github dreamgaussian/dreamgaussian: ``configs/image.yaml``, ``image_sai.yaml``,
``text.yaml``, ``main.py``, ``main2.py``, ``gs_renderer.py``, ``mesh_renderer.py``).

Stage 1 (section 3.1): 5000 Gaussians uniform in a 0.5 m ball, opacity 0.1, grey
(``SH2RGB(random / 255)``), scales from the 3 nearest neighbours (``GaussianModel.init_sphere``);
SDS from Zero-1-to-3 (image mode, plus the reference view's RGB and mask MSE, weights 10000 and
1000, ramped by the step ratio except for stable-zero123) or Stable Diffusion (text mode, the
plain prompt; view-dependent prompts optional); timesteps annealed (``DreamGaussianAnneal``, or
any ``timestep_schedule``); render size 128 -> 256 -> 512 at 30% and 60%; random orbit cameras
whose elevation window always covers [-30, 30] (``elevation_window``); white or black
background at random. Adam per parameter: position 0.01 -> 0.0002 over 500 (image) / 300
(text) steps (``create_from_pcd(pcd, 10)`` scales 0.001 -> 0.00002 by 10), colour 0.01,
opacity 0.05, scale 0.005, rotation 0.005. Densification (``stages.gaussians.Densification``,
``densify_and_prune(0.01, min_opacity=0.01, extent=4, max_screen_size=1)``): from step 100
every 100 (image) or from 0 every 50 (text) until 3000, clone below / split above 0.04,
prune opacity < 0.01 or size > 0.4, opacities reset to at most 0.01 every 700 steps.
Mesh (section 3.2): density-field extraction (``geometry.extract``), decimation, xatlas
unwrap, and back-projection of 26 Gaussian renders (8 azimuths x elevations {-45, 0, 45}, top
and bottom) into the texture.
Stage 2 (section 3.3): the texture alone (geometry frozen, texels in logit space as the public
code's ``raw_albedo``) is optimised with Adam (lr 0.2, torch's default betas) for 50 steps:
each step renders a random view at a random supersampling scale with mipmapped texturing, asks
the teacher to ``refine`` it (SDEdit with a 50-step DDIM schedule, the noise strength falling
from 0.2 to 0.05 over training, i.e. the public code's 0.8 -> 0.95 in its inverted convention)
and minimises the MSE to that target; in image mode also the reference view's MSE where the
mesh faces the camera.
The stages are ``backend.stages.distillation``'s (shared with DreamTime's method). Every number is a
parameter. The ``fast`` preset shortens everything for the CPU, ``tiny``
uses the tiny random teachers and runs in seconds. ``teacher="oracle"`` with ``oracle_mesh``
swaps the diffusion teacher for the verification oracle (DESIGN.md section 5).
"""
from __future__ import annotations

from ..stages.distillation import OPACITY_RESET_VALUE, elevation_window, run_distillation
from ..contracts import CancelToken, Emitter, JobRequest, Result
from .specs.dreamgaussian import DreamGaussianSpec

__all__ = ["DreamGaussianPipeline", "OPACITY_RESET_VALUE", "elevation_window"]


class DreamGaussianPipeline(DreamGaussianSpec):
    """Image- or text-to-3D with Gaussians, a mesh and a refined UV texture."""

    def run(self, request: JobRequest, emit: Emitter, cancel: CancelToken) -> Result:
        return run_distillation(request, emit, cancel, "dreamgaussian")
