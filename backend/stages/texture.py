"""Texture optimisation against a teacher (DreamGaussian's stage 2, Tang et al. 2023, section
3.3): the texture, kept in logit space as the public code's ``raw_albedo``, follows the MSE to
the teacher's SDEdit targets of random views (``Guidance.refine``), optionally plus an SDS term
(Poole et al. 2022, eq. 3) and a reference view's masked MSE. Used by DreamGaussian's stage 2
and by texture refinement; the geometry is never changed.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..contracts import CancelToken, Emitter
from ..render.mesh import TexturedMesh, render_mesh
from ..schedules import TimestepSchedule, make_schedule, sds_weighting
from .mesh_export import rgba_preview
from .progress import PreviewThrottle


def optimise_texture(mesh: TexturedMesh, texture: torch.Tensor, teacher, sample_cameras, iters: int, *, lr: float,
                     strength_start: float, strength_end: float, refine_steps: int, ref: dict | None, emit: Emitter,
                     cancel: CancelToken, generator: torch.Generator, lambda_ref: float = 1.0, lambda_sds: float = 0.0,
                     sds_schedule: TimestepSchedule | None = None,
                     stage: str = "texture", supersample: bool = True,
                     texture_filter: str = "linear-mipmap-linear", reference_mask: str = "render") -> torch.Tensor:
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
        ref: optional reference views ``{"rgb": [N, 3, h, w], "alpha": [N, 1, h, w], "camera"}``
            (the MSE over all N, each view weighing 1/N);
            its MSE is added with weight ``lambda_ref`` where the rendered mesh covers the pixel
            and faces the camera (``main2.py`` line 187: alpha > 0 and the normal's cosine to the
            view direction > 0.5); ``reference_mask="render+reference"`` also requires the
            reference's own alpha (a photo that does not match the mesh's silhouette exactly).
        lambda_sds: weight of an added SDS term (0: off), its timesteps from ``sds_schedule``
            (``schedules.make_schedule``; None: DreamGaussian's anneal over [20, 500]) with the
            weighting w(t) that schedule prescribes (``schedules.sds_weighting``).
        supersample: render each view at a random scale ``clamp(2 U(0,1), 0.125, 2)`` of its
            size (rounded up to a multiple of 8) and resize it back bilinearly (``main2.py``
            lines 182 and 213, ``mesh_renderer.py`` ``ssaa``).
        texture_filter: the renders' texture filter (``render_mesh``; the public code samples
            ``linear-mipmap-linear``).

    The optimiser is Adam with torch's defaults (betas 0.9/0.999, eps 1e-8) at ``lr``, as
    ``main2.py`` line 104 builds it.

    Returns:
        The optimised texture, float [H, W, 3] in [0, 1] (detached).
    """
    if iters == 0:
        return texture
    raw = torch.nn.Parameter(torch.logit(texture.clamp(1e-3, 1 - 1e-3)))
    opt = torch.optim.Adam([raw], lr=lr)
    schedule = sds_schedule if sds_schedule is not None else make_schedule("dreamgaussian", 20, 500)
    weighting = sds_weighting(schedule, None)
    previews = PreviewThrottle(first=False)

    def draw(textured: TexturedMesh, cams, bg: torch.Tensor, with_facing: bool = False):
        scale = min(2.0, max(0.125, 2.0 * torch.rand((), generator=generator).item())) if supersample else 1.0
        w, h = cams.width, cams.height
        big = cams.resized(_divisible(w * scale), _divisible(h * scale)) if scale != 1.0 else cams
        out = render_mesh(textured, big, background=bg, texture_filter=texture_filter)
        rgb = out.rgb.permute(0, 3, 1, 2)
        facing = facing_mask(textured, big, out) if with_facing else None
        if scale != 1.0:
            rgb = _resize(rgb, h, w)
            if facing is not None:
                facing = _resize(facing.float(), h, w) > 0.5
        return rgb, facing

    for step in range(1, iters + 1):
        cancel.check()
        strength = strength_start + (strength_end - strength_start) * step / iters
        cams = sample_cameras(step)
        bg = torch.ones(3, device=raw.device)
        textured = TexturedMesh(mesh.vertices, mesh.faces, mesh.uv, torch.sigmoid(raw))
        image, _ = draw(textured, cams, bg)
        with torch.no_grad():
            target = teacher.refine(image.detach(), cams, strength, refine_steps, background=bg, generator=generator,
                                    check=cancel.check)
        loss = F.mse_loss(image, target)
        note = f"strength {strength:.2f}"
        if lambda_sds > 0:
            t = schedule(step, iters, generator)
            note += f", t={t}"
            loss = loss + lambda_sds * teacher.sds(image, cams, t, background=bg, generator=generator,
                                                  weighting=weighting).loss
        if ref is not None and lambda_ref > 0:
            rimage, facing = draw(textured, ref["camera"], bg, with_facing=True)
            mask = facing.detach().float()
            if reference_mask == "render+reference":
                mask = mask * (ref["alpha"] > 0.5).float()
            loss = loss + lambda_ref * F.mse_loss(rimage * mask, ref["rgb"] * mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        emit.progress(stage, step, iters, loss.item(), message=note)
        if previews.due(step, iters):
            emit.preview("texture", {"rgba": rgba_preview(torch.sigmoid(raw.detach()))}, {"step": step})
    return torch.sigmoid(raw.detach())


def _divisible(x: float, m: int = 8) -> int:
    """``x`` rounded up to a multiple of ``m`` (``mesh_renderer.py`` ``make_divisible``)."""
    return int(math.ceil(x / m) * m)


def _resize(image: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[B, C, H, W] to h x w: bilinear, ``align_corners=True`` when magnifying (``mesh_renderer.py``
    ``scale_img_nhwc``)."""
    if image.shape[-2] > h and image.shape[-1] > w:
        return F.interpolate(image, (h, w), mode="bilinear")
    return F.interpolate(image, (h, w), mode="bilinear", align_corners=True)


def facing_mask(mesh: TexturedMesh, cameras, out) -> torch.Tensor:
    """bool [C, 1, H, W]: pixels where the mesh is drawn and its normal turns towards the
    camera: the normal's z in camera space (OpenGL axes, +z towards the viewer) above 0.5
    (``main2.py`` line 187's ``viewcos``; face normals here, counter-clockwise winding)."""
    normals = mesh.face_normals()  # [F, 3]
    n = normals[out.rast.tri_id.clamp_min(0)]  # [C, H, W, 3]
    backward = cameras.c2w[:, :3, 2].to(n.device)  # the camera's +z axis in world space, [C, 3]
    cos = (n * backward[:, None, None, :]).sum(-1)
    return ((cos > 0.5) & out.rast.mask)[:, None]
