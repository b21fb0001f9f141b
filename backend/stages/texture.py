"""Texture optimisation against a teacher (DreamGaussian's stage 2, Tang et al. 2023, section
3.3): the texture, kept in logit space as the public code's ``raw_albedo``, follows the MSE to
the teacher's SDEdit targets of random views (``Guidance.refine``), optionally plus an SDS term
(Poole et al. 2022, eq. 3) and a reference view's masked MSE. Used by DreamGaussian's stage 2
and by texture refinement; the geometry is never changed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..pipelines.base import CancelToken, Emitter
from ..render.mesh import TexturedMesh, render_mesh
from ..schedules import make_schedule
from .mesh_export import rgba_preview
from .progress import PreviewThrottle


def optimise_texture(mesh: TexturedMesh, texture: torch.Tensor, teacher, sample_cameras, iters: int, *, lr: float,
                     strength_start: float, strength_end: float, refine_steps: int, ref: dict | None, emit: Emitter,
                     cancel: CancelToken, generator: torch.Generator, lambda_ref: float = 1.0, lambda_sds: float = 0.0,
                     sds_t_range: tuple[int, int] = (20, 500), timestep_schedule: str = "dreamgaussian",
                     stage: str = "texture") -> torch.Tensor:
    """DreamGaussian stage 2: optimise a UV texture against the teacher's refined views.

    Args:
        mesh: the geometry with per-corner UVs (its ``texture`` is ignored).
        texture: float [H, W, 3] in [0, 1], the initial texture.
        teacher: a :class:`backend.guidance.base.Guidance` with its condition encoded.
        sample_cameras: ``callable(step) -> Cameras``, the views rendered at that step.
        iters: optimisation steps (0: the texture is returned unchanged).
        lr: Adam learning rate on the texture's logits (DreamGaussian: 0.2).
        strength_start, strength_end: SDEdit noise strength, linear over the steps, in [0, 1].
        refine_steps: DDIM steps of the teacher's full schedule.
        ref: optional reference view ``{"rgb": [1, 3, h, w], "alpha": [1, 1, h, w], "camera"}``;
            its MSE under the mask is added with weight ``lambda_ref``.
        lambda_sds: weight of an added SDS term (0: off), its timesteps from ``timestep_schedule``
            (``schedules.make_schedule``) over ``sds_t_range``.
    Returns:
        The optimised texture, float [H, W, 3] in [0, 1] (detached).
    """
    if iters == 0:
        return texture
    raw = torch.nn.Parameter(torch.logit(texture.clamp(1e-3, 1 - 1e-3)))
    opt = torch.optim.Adam([raw], lr=lr, betas=(0.9, 0.99), eps=1e-15)
    schedule = make_schedule(timestep_schedule, *sds_t_range)
    previews = PreviewThrottle(first=False)
    for step in range(1, iters + 1):
        cancel.check()
        strength = strength_start + (strength_end - strength_start) * step / iters
        cams = sample_cameras(step)
        bg = torch.ones(3, device=raw.device)
        textured = TexturedMesh(mesh.vertices, mesh.faces, mesh.uv, torch.sigmoid(raw))
        image = render_mesh(textured, cams, background=bg).rgb.permute(0, 3, 1, 2)
        with torch.no_grad():
            target = teacher.refine(image.detach(), cams, strength, refine_steps, background=bg, generator=generator,
                                    check=cancel.check)
        loss = F.mse_loss(image, target)
        if lambda_sds > 0:
            t = schedule(step, iters, generator)
            loss = loss + lambda_sds * teacher.sds(image, cams, t, background=bg, generator=generator).loss
        if ref is not None and lambda_ref > 0:
            rout = render_mesh(textured, ref["camera"], background=bg)
            mask = ref["alpha"]
            loss = loss + lambda_ref * F.mse_loss(rout.rgb.permute(0, 3, 1, 2) * mask, ref["rgb"] * mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        emit.progress(stage, step, iters, loss.item(), message=f"strength {strength:.2f}")
        if previews.due(step, iters):
            emit.preview("texture", {"rgba": rgba_preview(torch.sigmoid(raw.detach()))}, {"step": step})
    return torch.sigmoid(raw.detach())
