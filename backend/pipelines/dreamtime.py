"""DreamTime (Huang et al. 2023, arXiv 2306.12422): score distillation with time-prioritised
timesteps (TP-SDS, ``schedules.DreamTime``): a deterministic, non-increasing t(i) that spends
iterations on each timestep in proportion to W(t) = W_d(t) W_p(t), with the SDS gradient taken
at w(t) = 1 because the weight is carried by the schedule (section 4).

The paper distils a NeRF; here the student is DreamGaussian's (``stages.distillation``):
Gaussians distilled from Stable Diffusion (text mode, the paper's setting) or Zero-1-to-3
(image mode, with the reference-view losses; the schedule is teacher-agnostic), then the mesh,
UV atlas, baked texture and texture refinement. Only the schedule, its prior (``m1, m2, s1,
s2``) and the budget differ from DreamGaussian; ``timestep_schedule`` stays a parameter, so the
same method runs any schedule for comparison (``bench/schedules.py``).
"""
from __future__ import annotations

from ..stages.distillation import run_distillation
from ..contracts import CancelToken, Emitter, JobRequest, Result
from .specs.dreamtime import DreamTimeSpec


class DreamTimePipeline(DreamTimeSpec):
    """Text- (or image-) to-3D with TP-SDS, a mesh and a refined UV texture."""

    def run(self, request: JobRequest, emit: Emitter, cancel: CancelToken) -> Result:
        return run_distillation(request, emit, cancel, "dreamtime")
