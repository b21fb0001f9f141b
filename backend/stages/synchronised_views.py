"""Synchronised multi-view denoising through a UV texture (SyncMVD, Liu et al. 2023, arXiv
2311.12891, section 3.2): N fixed views of a mesh denoised together so that they agree.

At every denoising step each view's noise prediction eps (the teacher conditioned
on that view, e.g. on its depth) gives its x0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab); all x0 are
projected into one texture (per texel, the cos^power-weighted mean over the views that see it,
:class:`~backend.geometry.view_projection.ViewTextureProjection`), the texture is rendered back
into every view, and each view takes its scheduler step from that synchronised x0: DDPM's
(Ho et al. 2020, eq. 6-7), the sampler SyncMVD runs (``run_experiment.py`` sets
``DDPMScheduler``), its step noise drawn on the texture (:func:`_ddpm_step`); or, with
``sampler="ddim"``, DDIM's (Song et al. 2021, eta 0) along the noise direction
(x_t - sqrt(ab) x0_sync) / sqrt(1 - ab). While t > (1 - ``latent_sync_end``) T the
synchronisation runs in the teacher's latent space (latent views, a latent texture), after it in
RGB: the x0 are decoded, baked into a colour texture, rendered back and encoded again.
SyncMVD's own code steps the noisy texture itself and stops synchronising after
``mvd_end`` = 0.8 (``src/syncmvd/step.py``, ``src/pipeline.py``); here every view keeps its own
noisy sample, stepped from the synchronised x0, and the rest of the schedule is synchronised in
RGB instead of not at all. Measured on the prior oracle (``bench/texture_paint.py
--acceptance``): DDPM paints 0.6-0.8 dB closer to the prior's mode than DDIM on all three test
objects, seeds 0-2 (its fresh noise in every step is averaged by the projection). The cosine's exponent rises linearly over the steps
(SyncMVD ``exp_start`` 0 -> ``exp_end`` 6). The starting noise is one noise texture rendered into
every view (nearest texel, so it stays unit-variance; SyncMVD ``set_noise_texture``), fresh noise
off the mesh; ``shared_noise=False`` starts every view from its own noise. While
t > (1 - ``reference_sync_end``) T the views are denoised one after another outward from the
front view (:func:`_reference_sweep`). With ``synchronise=False`` the same views are denoised
apart (the baseline).

The depth ControlNet's conditioning scale follows SyncMVD's code (``src/pipeline.py``, the
update after each step): with u = 1 - t/T, scale = a s0 + (1 - a) s1, a = u / 0.99, from the
second step on (the first uses s0); the option's help text says it rises towards s1, the code
moves it from about s1 back to s0, and the code is what is followed here.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from ..cameras import Cameras, orbit_angles
from ..contracts import CancelToken, Emitter
from ..geometry.view_projection import ViewTextureProjection
from .progress import PreviewThrottle, contact_sheet

#: SyncMVD's ``control_guidance_end`` (``src/pipeline.py``).
CONTROL_GUIDANCE_END = 0.99


def syncmvd_conditioning_scale(t: int, train_steps: int, start: float, end: float) -> float:
    """The ControlNet's conditioning scale after a step at timestep ``t`` (module docstring)."""
    u = 1.0 - t / train_steps
    if u > CONTROL_GUIDANCE_END:
        return end
    a = u / CONTROL_GUIDANCE_END
    return a * start + (1.0 - a) * end


@dataclass
class SyncSettings:
    """The loop's settings (the ``texture_paint`` parameters of the same names)."""

    steps: int = 30
    synchronise: bool = True
    latent_sync_end: float = 0.8
    cos_power_start: float = 0.0
    cos_power_end: float = 6.0
    shared_noise: bool = True
    max_batch: int = 10
    reference_sync_end: float = 0.2
    sampler: str = "ddpm"  # or "ddim"
    conditioning_scale: float = 0.7
    conditioning_scale_end: float = 0.9


def synchronised_denoise(teacher, cameras: Cameras, latent_links: ViewTextureProjection,
                         rgb_links: ViewTextureProjection, settings: SyncSettings, generator: torch.Generator,
                         emit: Emitter, cancel: CancelToken, background: float = 1.0,
                         on_texture=None, clock: dict[str, float] | None = None) -> torch.Tensor:
    """Denoise N views of a mesh together (module docstring).

    Args:
        teacher: a :class:`~backend.guidance.base.Guidance` whose ``predict_noise`` sees each view
            through its camera; a pixel-space teacher (the oracle) uses ``rgb_links`` for both phases.
        cameras: the N views at the colour size (``rgb_links``' views).
        latent_links: the links at the latent views' size (the colour size / 8 for a latent teacher).
        rgb_links: the links at the colour views' size.
        generator: for the starting noise.
        emit: progress (phase ``latent`` / ``rgb``, step/total) and ``views`` previews (the current
            x0 as a contact sheet).
        background: the background colour the views are composited over (the oracle's targets).
        on_texture: called after every step as ``on_texture(step, make)``; ``make()`` returns the
            colour texture as it stands (texture float [S, S, 3], weight [S, S]: the current x0
            decoded and projected, or the RGB phase's own texture), so that a live preview pays for
            it only when it shows it.
        clock: seconds per phase (``latent``, ``rgb``, or ``denoise`` unsynchronised) are added to it.
    Returns:
        The final views, float [N, 3, H, W] in [0, 1] (the last step's synchronised x0, decoded).
    Raises:
        JobCancelled: ``cancel`` fired (checked before every step).
    """
    from diffusers import DDIMScheduler, DDPMScheduler

    N, H, W = len(cameras), cameras.height, cameras.width
    pixel = teacher.space == "pixel"
    if pixel:
        latent_links = rgb_links
    device = teacher.device
    sched = (DDPMScheduler if settings.sampler == "ddpm" else DDIMScheduler).from_config(teacher.scheduler.config)
    sched.set_timesteps(settings.steps, device=device)
    T = sched.config.num_train_timesteps
    bg = torch.full((N, 3), float(background), device=device)
    with torch.no_grad():
        shape = teacher.encode(torch.full((1, 3, H, W), float(background), device=device)).shape[1:]
    shared = settings.shared_noise and settings.synchronise
    x = _noise(torch.Size((N, *shape)), shared, latent_links, generator).to(device) * sched.init_noise_sigma
    alphas = sched.alphas_cumprod.to(device)
    throttle = PreviewThrottle()
    if hasattr(teacher, "conditioning_scale"):
        teacher.conditioning_scale = settings.conditioning_scale
    x0_sync = torch.zeros_like(x)  # x_T holds no signal yet
    order = _outward_from_reference(cameras)
    total = len(sched.timesteps)
    clock = {} if clock is None else clock
    for i, t in enumerate(sched.timesteps):
        cancel.check()
        started = time.monotonic()
        ab = alphas[t].to(x.dtype)
        with torch.no_grad():
            power = settings.cos_power_start + (settings.cos_power_end - settings.cos_power_start) * i / max(total - 1, 1)
            latent_phase = int(t) > (1.0 - settings.latent_sync_end) * T
            sweep = (settings.synchronise and (latent_phase or pixel)
                     and int(t) > (1.0 - settings.reference_sync_end) * T)
            if sweep:
                x, eps = _reference_sweep(teacher, x, x0_sync, t, ab, cameras, bg, latent_links, order, power)
                teacher.evaluations += N
            else:
                eps = torch.cat([teacher.predict_noise(x[s:s + settings.max_batch],
                                                       t.expand(len(x[s:s + settings.max_batch])).long(),
                                                       cameras[s:s + settings.max_batch], bg[s:s + settings.max_batch])
                                 for s in range(0, N, settings.max_batch)])
                teacher.evaluations += math.ceil(N / settings.max_batch)
            teacher.view_evaluations += N
            x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
            phase = "latent" if latent_phase else "rgb"
            if not settings.synchronise:
                x0_sync = x0
            elif latent_phase or pixel:
                x0_sync = latent_links.synchronise(x0, power)
            else:
                images = _decoded(teacher, x0, H, W)
                texture, weight = rgb_links.to_texture(images, power)
                rendered, ok = rgb_links.to_views(texture, weight)
                x0_sync = teacher.encode(torch.where(ok, rendered, images))
            if on_texture is not None:
                latest = x0_sync
                made = (texture, weight) if settings.synchronise and not (latent_phase or pixel) else None
                on_texture(i + 1, lambda: made or rgb_links.to_texture(_decoded(teacher, latest, H, W), power))
            if settings.sampler == "ddpm":
                x = _ddpm_step(sched, x, x0_sync, int(t), alphas, shared, latent_links, generator)
            else:
                x = sched.step((x - ab.sqrt() * x0_sync) / (1 - ab).sqrt(), t, x).prev_sample
            if hasattr(teacher, "conditioning_scale"):
                teacher.conditioning_scale = syncmvd_conditioning_scale(int(t), T, settings.conditioning_scale,
                                                                        settings.conditioning_scale_end)
        phase = phase if settings.synchronise else "denoise"
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        clock[phase] = clock.get(phase, 0.0) + time.monotonic() - started
        emit.progress(phase, i + 1, total, message=f"t={int(t)}")
        if throttle.due(i + 1, total):
            with torch.no_grad():
                emit.preview("views", {"rgba": contact_sheet(_decoded(teacher, x0_sync, H, W))},
                             {"phase": phase, "step": i + 1, "of": total})
    with torch.no_grad():
        return _decoded(teacher, x0_sync, H, W)


def _outward_from_reference(cameras: Cameras) -> list[int]:
    """The views ordered by the angle between their direction and the reference view's (the one
    closest to the front: azimuth 0 at the lowest elevation given), nearest first."""
    el, az, _ = orbit_angles(cameras.to("cpu"))
    front = ((az + 180) % 360 - 180).abs() + 1e-3 * (el - el.min())
    ref = int(front.argmin())
    dirs = torch.nn.functional.normalize(cameras.centers.detach().cpu().float(), dim=-1)
    return torch.argsort(-(dirs @ dirs[ref]), stable=True).tolist()


def _reference_sweep(teacher, x: torch.Tensor, x0_prev: torch.Tensor, t: torch.Tensor, ab: torch.Tensor,
                     cameras: Cameras, bg: torch.Tensor, links: ViewTextureProjection, order: list[int],
                     power: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One step's noise predictions made view after view outward from the reference view, each
    view first moved to agree with the texture of the views before it where they overlap
    (x_t + sqrt(ab) (render - its previous x0): its signal replaced, its noise kept). Returns
    (x_t as moved [N, C, h, w], eps [N, C, h, w]).

    The texture alone couples only neighbouring views, and views that all decide at once settle
    into regions that disagree (measured on the prior oracle: see docs/methods.md); SyncMVD couples
    them globally by letting every view attend to a reference view while t > 0.8 T
    (``ref_attention_end`` 0.2, ``src/pipeline.py``), which needs the teacher's attention layers.
    This sweep is a teacher-agnostic stand-in in the same window: information travels from the
    reference view round the object within one step, as in sequential texturing (TEXTure,
    Richardson et al. 2023)."""
    x = x.clone()
    eps = torch.empty_like(x)
    acc = x.new_zeros(links.texel_yx[0].shape[0], x.shape[1], dtype=torch.float32)
    wsum = x.new_zeros(links.texel_yx[0].shape[0], dtype=torch.float32)
    for k, c in enumerate(order):
        if k:
            texture, weight = links.texture_of(acc, wsum)
            rendered, ok = links.to_views(texture, weight, only=c)
            x[c] = torch.where(ok[0], x[c] + ab.sqrt() * (rendered[0].to(x.dtype) - x0_prev[c]), x[c])
        eps[c] = teacher.predict_noise(x[c:c + 1], t.expand(1).long(), cameras[c:c + 1], bg[c:c + 1])[0]
        links.accumulate(acc, wsum, c, (x[c] - (1 - ab).sqrt() * eps[c]) / ab.sqrt(), power)
    return x, eps


def _decoded(teacher, x0: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """x0 (latents or pixels) as images float [N, 3, H, W] in [0, 1] at the colour views' size."""
    images = teacher.decode(x0).float()
    if images.shape[-2:] != (H, W):
        images = torch.nn.functional.interpolate(images, (H, W), mode="bilinear", align_corners=False)
    return images.clamp(0, 1)



def _ddpm_step(sched, x: torch.Tensor, x0: torch.Tensor, t: int, alphas: torch.Tensor, shared_noise: bool,
               links: ViewTextureProjection, generator: torch.Generator) -> torch.Tensor:
    """One DDPM step (Ho et al. 2020, eq. 6-7; diffusers' ``DDPMScheduler.step`` with its default
    ``fixed_small`` variance) from the synchronised x0: x_{t-1} = c0 x0 + ct x_t + sqrt(var) z.
    With ``shared_noise`` z is one noise texture rendered into every view (nearest texel), fresh
    per view off the mesh, as SyncMVD draws its step noise on the texture (``src/syncmvd/step.py``).
    float [N, C, h, w] -> same."""
    prev = int(sched.previous_timestep(t))
    ab = alphas[t].to(x.dtype)
    ab_prev = alphas[prev].to(x.dtype) if prev >= 0 else torch.ones((), dtype=x.dtype, device=x.device)
    beta = 1 - ab / ab_prev
    mean = (ab_prev.sqrt() * beta / (1 - ab)) * x0 + ((ab / ab_prev).sqrt() * (1 - ab_prev) / (1 - ab)) * x
    if prev < 0:
        return mean
    var = ((1 - ab_prev) / (1 - ab) * beta).clamp_min(1e-20)
    return mean + var.sqrt() * _noise(x.shape, shared_noise, links, generator).to(x.device, x.dtype)


def _noise(shape: torch.Size, shared: bool, links: ViewTextureProjection, generator: torch.Generator) -> torch.Tensor:
    """Unit Gaussian noise float [N, C, h, w]: with ``shared``, one noise texture rendered into every
    view (nearest texel, so it stays unit-variance; SyncMVD ``set_noise_texture``), fresh noise
    off the mesh; else fresh in every view."""
    noise = torch.randn(shape, generator=generator)
    if shared:
        texture = torch.randn((links.size, links.size, shape[1]), generator=generator).to(links.pixel_uv.device)
        rendered, ok = links.to_views(texture, mode="nearest")
        noise = torch.where(ok.cpu(), rendered.cpu().to(noise.dtype), noise)
    return noise
