"""Multi-view generation for IM-3D (Melas-Kyriazi et al. 2024, section 3): K views of one object
from K cameras, each solver step one batched denoiser call for all K views, and SDEdit of a set
of renders ("render the Gaussians -> noise the renders -> regenerate").

:class:`MultiViewGenerator` is the interface, built over any view-conditioned teacher
(``guidance.base.Guidance``): Zero-1-to-3 (the reference image and each view's camera relative to
it condition the views, DreamGaussian's weights), the oracle (exact renders of its mesh: a
generation at strength 1 returns them, a regeneration noises and denoises with the exact
score), and the tiny random models. A video-model generator (SV3D) fits the same two calls.
IM-3D's own generator, Emu Video, is closed.

:attr:`MultiViewGenerator.evaluations` counts denoiser evaluations as the paper does (about 40
for the first generation, at most about 80 for a whole asset): one per batched call.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from ..cameras import Cameras
from .base import Guidance

#: Solvers of :class:`MultiViewGenerator`: diffusers scheduler classes built from the teacher's
#: own scheduler configuration.
SOLVERS = {"ddim": "DDIMScheduler", "dpmsolver++": "DPMSolverMultistepScheduler"}


class MultiViewGenerator:
    """K views of an object from a view-conditioned teacher.

    Args:
        teacher: a :class:`~backend.guidance.base.Guidance` whose ``predict_noise`` takes a
            batch of views with one camera each (Zero-1-to-3, the oracle, their tiny stand-ins).
        solver: ``"ddim"`` (Song et al. 2021) or ``"dpmsolver++"`` (Lu et al. 2022, diffusers'
            ``DPMSolverMultistepScheduler`` with its defaults: second order, ``dpmsolver++``).
    Raises:
        ValueError: an unknown solver.
    """

    def __init__(self, teacher: Guidance, solver: str = "ddim"):
        if solver not in SOLVERS:
            raise ValueError(f"unknown solver {solver!r}; use one of {', '.join(SOLVERS)}")
        import diffusers

        self.teacher = teacher
        self.solver = solver
        self.scheduler = getattr(diffusers, SOLVERS[solver]).from_config(teacher.scheduler.config)

    @property
    def evaluations(self) -> int:
        """Denoiser evaluations so far (the teacher's count: one per batched call)."""
        return self.teacher.evaluations

    def generate(self, condition: dict[str, Any], cameras: Cameras, steps: int, *,
                 generator: torch.Generator | None = None, check: Callable[[], None] | None = None) -> torch.Tensor:
        """Generate the K views seen from ``cameras`` from noise.

        Args:
            condition: the teacher's condition (``encode_condition`` keywords: Zero-1-to-3's
                ``image`` float [1, 3, H, W] in [0, 1] on white with its ``elevation``,
                ``azimuth`` (degrees) and ``radius`` (metres); ignored by the oracle).
            cameras: K cameras; their width and height set the output size.
            steps: solver steps (denoiser evaluations added: ``steps``).
            generator: for the initial noise. check: called before every step (cancellation).
        Returns:
            float [K, 3, H, W] in [0, 1].
        Raises:
            ValueError: ``steps`` < 1.
        """
        self.teacher.encode_condition(**condition)
        grey = torch.full((len(cameras), 3, cameras.height, cameras.width), 0.5, device=self.teacher.device)
        return self.teacher.refine(grey, cameras, 1.0, steps, generator=generator, check=check, scheduler=self.scheduler)

    def regenerate(self, images: torch.Tensor, cameras: Cameras, strength: float, steps: int, *,
                   generator: torch.Generator | None = None, check: Callable[[], None] | None = None) -> torch.Tensor:
        """SDEdit of K renders: noise them to the timestep of ``strength`` on a ``steps``-step
        schedule and denoise them with the condition of the last :meth:`generate`.

        Args:
            images: float [K, 3, H, W] in [0, 1] (renders of the current reconstruction).
            cameras: the K cameras they were rendered from.
            strength: in [0, 1], the share of the schedule re-run (about ``strength * steps``
                denoiser evaluations).
            steps: the schedule's length.
        Returns:
            float [K, 3, H, W] in [0, 1].
        Raises:
            ValueError: ``strength`` outside [0, 1], ``steps`` < 1, or no :meth:`generate` yet.
        """
        if self.teacher.condition is None:
            raise ValueError("regenerate() needs the condition of a generate() call first")
        return self.teacher.refine(images, cameras, strength, steps, generator=generator, check=check,
                                   scheduler=self.scheduler)
