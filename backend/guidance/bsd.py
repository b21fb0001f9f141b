"""Bootstrapped score distillation (BSD; DreamCraft3D, Sun et al. 2023, eq. 7, Algorithm 1):
the texture-boosting gradient from a Stable Diffusion teacher personalised on the object.

    grad = w(t) (eps_DreamBooth(x_t; y, c) - eps_lora(x_t; y)),   w(t) = 1 - alpha_bar_t

``eps_DreamBooth`` is the UNet with its ``dreambooth`` LoRA adapter (``guidance.lora``, fine-tuned by ``stages.dreambooth``,
fine-tuned on the object's augmented renders), with classifier-free guidance ``guidance_scale``
(2.0, ``configs/dreamcraft3d-texture.yaml``) and the view-dependent prompt "a <token> <class>,
<view>"; ``eps_lora`` is the same UNet with its ``lora`` adapter, VSD's estimate of the current
renders' score (ProlificDreamer, Wang et al. 2023, eq. 9, one particle), conditioned on the
view-independent prompt with CFG ``lora_guidance_scale`` (1.0 in the public code, i.e. the
conditional branch alone) and trained on the current renders with the usual denoising loss
after every gradient (``stable_diffusion_bsd_guidance.py`` ``compute_grad_vsd`` and
``train_lora``). Both adapters live on one UNet and are switched by name.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..cameras import Cameras, orbit_angles
from .lora import denoising_loss, lora_parameters, use_adapter
from .base import cfg
from .stable_diffusion import VIEW_SUFFIXES, StableDiffusionGuidance, view_index


def personal_prompts(token: str, class_name: str, views: Sequence[str] = VIEW_SUFFIXES) -> list[str]:
    """DreamBooth's prompts "a <token> <class>, <view>" per view suffix (Ruiz et al. 2023,
    section 3.2; DreamCraft3D conditions on the view as well)."""
    return [f"a {token} {class_name}, {view}" for view in views]


class BootstrappedScoreDistillation:
    """BSD on a Stable Diffusion teacher whose UNet holds the adapters ``dreambooth`` and
    ``lora`` (:func:`backend.stages.dreambooth.add_lora`).

    Args:
        sd: the teacher.
        prompt: the user's prompt (the ``lora`` adapter's condition).
        token, class_name: the DreamBooth identifier and class word.
        guidance_scale: CFG of the DreamBooth branch (2.0).
        lora_guidance_scale: CFG of the ``lora`` branch (1.0: conditional only).
        lora_lr: AdamW learning rate of the ``lora`` adapter's training on the renders.
    """

    def __init__(self, sd: StableDiffusionGuidance, prompt: str, token: str, class_name: str, *,
                 guidance_scale: float = 2.0, lora_guidance_scale: float = 1.0, lora_lr: float = 1e-3):
        self.sd, self.guidance_scale, self.lora_guidance_scale = sd, guidance_scale, lora_guidance_scale
        unet = sd.parts.unet
        self.personal = sd._embed(personal_prompts(token, class_name)).float()
        self.plain = sd._embed([prompt]).float()
        self.uncond = sd._embed([""]).float()
        self.optimizer = torch.optim.AdamW(lora_parameters(unet, "lora"), lr=lora_lr, weight_decay=0.0)
        self.evaluations = 0

    def loss(self, images: torch.Tensor, cameras: Cameras, t: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """The BSD loss of renders ``images`` float [B, 3, H, W] in [0, 1] (with gradient) from
        ``cameras`` at timestep ``t``: :meth:`latent_loss` of their latents (the VAE's posterior
        sample, differentiable in the renders)."""
        return self.latent_loss(self.sd.encode(images), cameras, t, generator)

    def gradient(self, z: torch.Tensor, noise: torch.Tensor, cameras: Cameras, t: int) -> torch.Tensor:
        """BSD's gradient w.r.t. the latents, w(t) (eps_DreamBooth(z_t) - eps_lora(z_t)) with
        z_t = sqrt(ab_t) z + sqrt(1 - ab_t) ``noise`` and w(t) = 1 - ab_t (eq. 7). ``z``, ``noise``:
        float [B, 4, h, w]; returns float32 [B, 4, h, w] (no gradient)."""
        sd, parts = self.sd, self.sd.parts
        unet = parts.unet
        B = z.shape[0]
        tt = torch.full((B,), int(t), dtype=torch.long, device=z.device)
        el, az, _ = orbit_angles(cameras)
        cond = self.personal[view_index(el, az).to(self.personal.device)]
        uncond = self.uncond.expand(B, -1, -1)
        with torch.no_grad():
            noisy = parts.scheduler.add_noise(z.detach(), noise, tt)
            both = torch.cat([noisy, noisy]).to(parts.dtype)
            with use_adapter(unet, "dreambooth"):
                e = unet(both, torch.cat([tt, tt]), encoder_hidden_states=torch.cat([uncond, cond]).to(parts.dtype)).sample
            eps_db = cfg(*e.float().chunk(2), self.guidance_scale)
            plain = self.plain.expand(B, -1, -1)
            with use_adapter(unet, "lora"):
                e = unet(both, torch.cat([tt, tt]), encoder_hidden_states=torch.cat([uncond, plain]).to(parts.dtype)).sample
            eps_lora = cfg(*e.float().chunk(2), self.lora_guidance_scale)
            self.evaluations += 2
            w = (1.0 - sd.alphas_cumprod[tt]).view(B, 1, 1, 1)
            return torch.nan_to_num(w * (eps_db - eps_lora))

    def latent_loss(self, z: torch.Tensor, cameras: Cameras, t: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """0.5 ||z - stopgrad(z - grad)||^2 / B with grad = :meth:`gradient` (noise drawn from
        ``generator``): its gradient w.r.t. ``z`` float [B, 4, h, w] is BSD's gradient averaged
        over the batch (DreamGaussian's SDS convention, ``guidance/sd_utils.py``). Then one
        training step of the ``lora`` adapter on these latents (:meth:`train_lora`)."""
        noise = torch.randn(z.shape, generator=generator, dtype=torch.float32).to(z.device, z.dtype)
        grad = self.gradient(z, noise, cameras, t)
        target = (z.float() - grad).detach()
        loss = 0.5 * F.mse_loss(z.float(), target, reduction="sum") / z.shape[0]
        self.train_lora(z.detach().float(), generator)
        return loss

    def train_lora(self, latents: torch.Tensor, generator: torch.Generator | None) -> float:
        """One AdamW step of the ``lora`` adapter on the current renders' latents (denoising loss
        at a random timestep, view-independent prompt); returns that loss before the step."""
        parts = self.sd.parts
        T = int(parts.scheduler.config.num_train_timesteps)
        t = torch.randint(0, T, (len(latents),), generator=generator).to(latents.device)
        noise = torch.randn(latents.shape, generator=generator).to(latents.device)
        with torch.enable_grad(), use_adapter(parts.unet, "lora"):
            loss = denoising_loss(parts, latents, self.plain.expand(len(latents), -1, -1), t, noise)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return float(loss.detach())
