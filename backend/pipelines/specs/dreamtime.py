"""What the server knows of DreamTime's method without importing torch (see
``backend.pipelines.dreamtime``): the distillation stages' parameters with TP-SDS as the
schedule, text mode first, and the paper's iteration budget."""
from __future__ import annotations

import dataclasses

from ..base import register
from .distillation import FAST_PRESET, PARAMS, TINY_PRESET, DistillationSpec

#: Stage-1 steps of the ``default`` preset. The DreamTime paper's text (as stored for this
#: project) states no step count; its text-to-3D baselines are DreamFusion-style runs, whose
#: public configuration is threestudio's ``configs/dreamfusion-sd.yaml`` (``trainer.max_steps:
#: 10000``), the set-up TP-SDS was ported into (threestudio pull request 206). That budget is
#: used here.
PAPER_ITERS = 10_000


def _params() -> dict:
    params = dict(PARAMS)
    params["mode"] = dataclasses.replace(params["mode"], default="text", help="text-to-3D (the paper's setting, "
                                         "Stable Diffusion) or image-to-3D (Zero-1-to-3); TP-SDS either way")
    params["timestep_schedule"] = dataclasses.replace(params["timestep_schedule"], default="dreamtime")
    params["iters"] = dataclasses.replace(params["iters"], default=PAPER_ITERS,
                                          help=f"stage 1 steps (default: {PAPER_ITERS}, the DreamFusion budget of the paper's "
                                               "comparisons)")
    return params


@register
class DreamTimeSpec(DistillationSpec):
    """Text- (or image-) to-3D with time-prioritised score distillation (TP-SDS)."""

    implementation = "backend.pipelines.dreamtime:DreamTimePipeline"

    name = "dreamtime"
    title = "DreamTime (text or image to 3D, TP-SDS)"
    params = _params()
    presets = {
        "default": {},
        "fast": FAST_PRESET,
        "tiny": TINY_PRESET,
    }
