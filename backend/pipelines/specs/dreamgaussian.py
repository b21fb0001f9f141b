"""What the server knows of DreamGaussian without importing torch: its parameters (the public
code's numbers, see ``backend.pipelines.dreamgaussian``), presets, inputs, models and checks."""
from __future__ import annotations

from ..base import register
from .distillation import FAST_PRESET, TINY_PRESET, DistillationSpec


@register
class DreamGaussianSpec(DistillationSpec):
    """Image- or text-to-3D with Gaussians, a mesh and a refined UV texture."""

    implementation = "backend.pipelines.dreamgaussian:DreamGaussianPipeline"

    name = "dreamgaussian"
    title = "DreamGaussian (image or text to 3D)"
    presets = {
        "default": {},
        "fast": FAST_PRESET,
        "tiny": TINY_PRESET,
    }
