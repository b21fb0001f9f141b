"""The guidance (teacher) interface every score-distillation pipeline uses.

A teacher predicts the noise in a noisy sample x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps
of a view, given a camera (and its cached condition: text or image embeddings). From that:

- :meth:`Guidance.sds`: score distillation sampling (DreamFusion, Poole et al. 2022, eq. 3):
  the gradient with respect to x0 (latents, or pixels for pixel-space teachers) is
  w(t) (eps_hat - eps), eps_hat with classifier-free guidance
  eps_hat = eps_uncond + s (eps_cond - eps_uncond) (Ho & Salimans 2022), w(t) = 1 - alpha_bar_t
  by default (DreamGaussian's public code). It is returned as the loss
  0.5 ||x0 - stopgrad(x0 - grad)||^2 / B, whose gradient is exactly that averaged over the
  batch. Every teacher divides by the batch B: DreamGaussian's Stable Diffusion guidance does
  (``guidance/sd_utils.py`` ``train_step``), and so does threestudio's for every guidance; its
  Zero-1-to-3 guidance does not (``guidance/zero123_utils.py``). Kept for all: the SDS term's
  weight against the reference-view losses then does not grow with ``batch_size``; at
  DreamGaussian's image-mode batch of 1 (``configs/image.yaml``) the two agree exactly.
- :meth:`Guidance.refine`: SDEdit (Meng et al. 2022): noise the view to the timestep of
  ``strength`` on a DDIM schedule of ``steps`` steps, then denoise it with DDIM (Song et al.
  2021). ``strength`` in [0, 1] is the fraction of the schedule re-run: 0 returns the input,
  1 samples from pure noise (the input only gives the shape). (DreamGaussian's code passes
  1 - strength under that name.)
- :meth:`Guidance.encode_condition`: done once per job; the result is cached on the teacher.
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..cameras import Cameras
from .quiet import hide_broken_torchvision

# Before any teacher imports diffusers or transformers: they decide once whether torchvision is
# usable (``quiet.hide_broken_torchvision``).
hide_broken_torchvision()


@dataclass
class SDSOutput:
    """``loss`` (differentiable; its gradient w.r.t. x0 is the SDS gradient), the timestep
    used, and ``value``: the mean squared SDS gradient, for progress reports."""

    loss: torch.Tensor
    t: torch.Tensor
    value: float


class Guidance(abc.ABC):
    """A diffusion teacher.

    Attributes:
        guidance_scale: the CFG scale s.
        weighting: ``"sds"`` (w = 1 - alpha_bar_t), ``"uniform"`` (w = 1) or ``"snr"``
            (w = sqrt(alpha_bar_t (1 - alpha_bar_t)), the "fantasia3d"-style weight).
        alphas_cumprod: float32 [T] on the teacher's device.
        scheduler: a diffusers ``DDIMScheduler`` for :meth:`refine`.
    """

    #: "latent" or "pixel".
    space: str = "latent"

    def __init__(self, guidance_scale: float, weighting: str = "sds", device: str = "cpu"):
        if weighting not in ("sds", "uniform", "snr"):
            raise ValueError(f"unknown SDS weighting {weighting!r}; use sds, uniform or snr")
        self.guidance_scale = float(guidance_scale)
        self.weighting = weighting
        self.device = torch.device(device)
        self.condition: Any = None
        #: Denoiser (UNet) evaluations so far: one per batched ``predict_noise`` call, whatever
        #: the batch (every view of a step, CFG's two branches), as IM-3D counts them.
        self.evaluations = 0
        #: Single-view evaluations so far: the views in every batched call added up (a call on
        #: 16 views counts 16; CFG's two branches still count once).
        self.view_evaluations = 0

    # ------------------------------------------------------------------ to implement
    @property
    @abc.abstractmethod
    def alphas_cumprod(self) -> torch.Tensor: ...

    @property
    @abc.abstractmethod
    def scheduler(self): ...

    @abc.abstractmethod
    def encode_condition(self, **condition: Any) -> None:
        """Compute and cache the job's condition (text/image embeddings, reference latents)."""

    @abc.abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images float [B, 3, H, W] in [0, 1] -> x0 (differentiable)."""

    @abc.abstractmethod
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """x0 -> images float [B, 3, H', W'] in [0, 1]."""

    @abc.abstractmethod
    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, cameras: Cameras, background: torch.Tensor | None) -> torch.Tensor:
        """eps_hat (with CFG) for x_t at integer timesteps t [B] seen from ``cameras``."""

    # ------------------------------------------------------------------ shared
    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def weight(self, t: torch.Tensor, weighting: str | None = None) -> torch.Tensor:
        """w(t) for integer timesteps [B] -> [B], by ``weighting`` (None: the teacher's own)."""
        weighting = weighting or self.weighting
        if weighting not in ("sds", "uniform", "snr"):
            raise ValueError(f"unknown SDS weighting {weighting!r}; use sds, uniform or snr")
        ab = self.alphas_cumprod[t]
        if weighting == "sds":
            return 1.0 - ab
        if weighting == "snr":
            return torch.sqrt(ab * (1.0 - ab))
        return torch.ones_like(ab)

    def _require_condition(self) -> None:
        if self.condition is None:
            raise RuntimeError(f"{type(self).__name__}.encode_condition() must be called before sds() or refine()")

    def sds(self, images: torch.Tensor, cameras: Cameras, t: int | torch.Tensor, background: torch.Tensor | None = None,
            generator: torch.Generator | None = None, weighting: str | None = None) -> SDSOutput:
        """Score distillation on rendered views.

        Args:
            images: float [B, 3, H, W] in [0, 1], with gradient.
            cameras: the B cameras the views were rendered from.
            t: integer timestep(s) in [0, T-1], a scalar or [B].
            background: float [B, 3] or [3], the background colour the student rendered
                over (used by teachers that render, e.g. the oracle).
            generator: for the noise eps.
            weighting: w(t) for this call (``"sds"``, ``"uniform"``, ``"snr"``; None: the
                teacher's own), e.g. ``"uniform"`` under DreamTime's schedule
                (``schedules.sds_weighting``).
        Returns:
            :class:`SDSOutput`.
        """
        self._require_condition()
        B = images.shape[0]
        x0 = self.encode(images)
        t = torch.as_tensor(t, device=x0.device, dtype=torch.long).reshape(-1).expand(B)
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.device, x0.dtype)
        ab = self.alphas_cumprod[t].to(x0.dtype).view(B, 1, 1, 1)
        with torch.no_grad():
            x_t = ab.sqrt() * x0.detach() + (1.0 - ab).sqrt() * noise
            eps_hat = self.predict_noise(x_t, t, cameras, background)
            self.evaluations += 1
            self.view_evaluations += B
        grad = self.weight(t, weighting).to(x0.dtype).view(B, 1, 1, 1) * (eps_hat - noise)
        grad = torch.nan_to_num(grad)
        target = (x0 - grad).detach()
        loss = 0.5 * F.mse_loss(x0.float(), target.float(), reduction="sum") / B
        return SDSOutput(loss, t, float(grad.float().pow(2).mean()))

    @torch.no_grad()
    def refine(self, images: torch.Tensor, cameras: Cameras, strength: float, steps: int = 50,
               background: torch.Tensor | None = None, generator: torch.Generator | None = None,
               check=None, scheduler=None) -> torch.Tensor:
        """SDEdit with DDIM: returns refined images float [B, 3, H, W] in [0, 1] (resized back to
        the input size). All B views go through one batched denoiser call per solver step.

        ``check`` (e.g. a job's ``CancelToken.check``) is called before every DDIM step.
        ``scheduler``: another diffusers solver built from this teacher's scheduler config (e.g.
        ``DPMSolverMultistepScheduler``; default: the teacher's DDIM).

        Raises:
            ValueError: ``strength`` outside [0, 1] or ``steps`` < 1.
        """
        self._require_condition()
        if not 0.0 <= strength <= 1.0 or steps < 1:
            raise ValueError(f"refine needs 0 <= strength <= 1 and steps >= 1, got {strength}, {steps}")
        if strength == 0.0:
            return images.clone()
        B, _, H, W = images.shape
        sched = scheduler if scheduler is not None else self.scheduler
        sched.set_timesteps(steps, device=self.device)
        timesteps = sched.timesteps
        start = sdedit_start_step(steps, strength)
        x0 = self.encode(images)
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.device, x0.dtype)
        if strength == 1.0:  # a sample from noise alone (the input only gives the shape)
            x = noise * sched.init_noise_sigma
        else:
            x = sched.add_noise(x0, noise, timesteps[start:start + 1].expand(B))
        if hasattr(sched, "set_begin_index"):
            sched.set_begin_index(start)
        for t in timesteps[start:]:
            if check is not None:
                check()
            eps = self.predict_noise(x, t.expand(B).long(), cameras, background)
            self.evaluations += 1
            self.view_evaluations += B
            x = sched.step(eps, t, x).prev_sample
        out = self.decode(x).float()
        if out.shape[-2:] != (H, W):
            out = F.interpolate(out, size=(H, W), mode="bilinear", align_corners=False, antialias=True)
        return out.clamp(0, 1)


class LatentDiffusionGuidance(Guidance):
    """Shared part of the latent-diffusion teachers (Stable Diffusion, Zero-1-to-3): their
    ``parts`` hold a diffusers ``vae``, ``unet`` and ``scheduler`` plus ``dtype`` and ``device``.
    Views are resized to the UNet's native image size (sample_size x the VAE's downsampling);
    x0 is the VAE posterior sample times the scaling factor (DreamGaussian's ``encode_imgs``)."""

    space = "latent"

    def __init__(self, parts: Any, guidance_scale: float, weighting: str = "sds"):
        super().__init__(guidance_scale, weighting, str(parts.device))
        self.parts = parts
        self._alphas = parts.scheduler.alphas_cumprod.to(parts.device, torch.float32)
        #: Image pixels per latent pixel along a side (8 for Stable Diffusion's VAE).
        self.latent_factor = 2 ** (len(parts.vae.config.block_out_channels) - 1)
        self.image_size = int(parts.unet.config.sample_size) * self.latent_factor

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self._alphas

    @property
    def scheduler(self):
        return self.parts.scheduler

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """float [B, 3, H, W] -> [B, 3, S, S] at the model's native size S."""
        return F.interpolate(images, (self.image_size, self.image_size), mode="bilinear", align_corners=False)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        posterior = self.parts.vae.encode((self.resize(images) * 2 - 1).to(self.parts.dtype)).latent_dist
        return posterior.sample() * self.parts.vae.config.scaling_factor

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        images = self.parts.vae.decode(x0.to(self.parts.dtype) / self.parts.vae.config.scaling_factor).sample
        return (images.float() / 2 + 0.5).clamp(0, 1)


def sdedit_start_step(steps: int, strength: float) -> int:
    """The index into a ``steps``-step DDIM schedule where SDEdit at ``strength`` starts:
    floor(steps * (1 - strength)), at most ``steps - 1``. DreamGaussian's public code floors it
    (``guidance/sd_utils.py`` and ``zero123_utils.py``, ``refine``: ``init_step = int(steps *
    strength)`` with its strength = 1 - ours); a product within 1e-6 of a whole number counts as
    that number (30 * (1 - 1/6) is 24.999999999999996 in floating point). The denoiser then runs
    ``steps - start`` = ceil(steps * strength) times."""
    return min(int(math.floor(steps * (1.0 - strength) + 1e-6)), steps - 1)


def precision_and_placement(device: str, fp16: bool | None, cpu_offload: bool) -> tuple[torch.device, torch.dtype, torch.device]:
    """(execution device, dtype, where the weights are loaded) for a teacher's components:
    fp16 by default on CUDA only; with ``cpu_offload`` on CUDA the weights stay on the host."""
    dev = torch.device(device)
    dtype = torch.float16 if (fp16 if fp16 is not None else dev.type == "cuda") else torch.float32
    place = torch.device("cpu") if (cpu_offload and dev.type == "cuda") else dev
    return dev, dtype, place


def freeze(modules, dev: torch.device, cpu_offload: bool) -> None:
    """No gradients for the teacher's weights; with ``cpu_offload`` on CUDA each module is
    streamed to the GPU while it runs (accelerate's ``cpu_offload``)."""
    for module in modules:
        module.requires_grad_(False)
        if cpu_offload and dev.type == "cuda":
            from accelerate import cpu_offload as offload

            offload(module, execution_device=dev)


def cfg(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022): eps_u + s (eps_c - eps_u)."""
    return eps_uncond + scale * (eps_cond - eps_uncond)
