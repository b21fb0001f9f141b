"""DreamBooth fine-tuning of a LoRA adapter on a teacher's UNet: the stage of DreamCraft3D's texture
boosting (Sun et al. 2023, section 3.3, Algorithm 1) that personalises Stable Diffusion on the
object's own renders. The adapters themselves (add, switch, save, load, their denoising loss)
are the teachers' (``guidance.lora``).

- :func:`finetune_lora`: Adam on one adapter's weights with ``guidance.lora.denoising_loss`` on a
  set of images and prompts, plus DreamBooth's prior preservation (eq. 2: the same loss on the
  base model's own samples of the class prompt, weight ``prior_weight``, 1 in the paper).

The loop belongs to the caller's stage only in the sense of its schedule: everything here is a
plain function of (UNet parts, images, prompts).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..guidance.lora import adapter_names, denoising_loss, lora_parameters, use_adapter

def finetune_lora(teacher, name: str, images: torch.Tensor, prompts: Sequence[str], steps: int, *, lr: float,
                  batch_size: int = 1, prior: tuple[torch.Tensor, Sequence[str]] | None = None,
                  prior_weight: float = 1.0, generator: torch.Generator | None = None,
                  on_step: Callable[[int, float], None] | None = None, check: Callable[[], None] | None = None) -> list[float]:
    """Fine-tune adapter ``name`` of ``teacher``'s UNet on ``images`` with ``prompts``.

    Each step draws ``batch_size`` of the images, a timestep uniform over the whole training
    range and fresh noise, and takes an Adam step (``lr``) on the adapter's weights only on
    :func:`denoising_loss` (+ ``prior_weight`` x the same loss on a batch of ``prior``, the
    class images and their prompt: prior preservation).

    Args:
        teacher: a latent-diffusion teacher with a text encoder (``StableDiffusionGuidance``:
            ``encode`` for images, ``_embed`` for prompts, ``parts``).
        images: float [N, 3, H, W] in [0, 1] (resized to the model's size).
        prompts: N prompts, e.g. "a sks teapot, side view".
        steps: optimisation steps.
        prior: (images float [M, 3, H, W], M prompts) of the class, or None.
        on_step: ``callable(step, loss)`` after each step.
        check: called before each step (a job's ``CancelToken.check``).
    Returns:
        The loss of every step (float list).
    Raises:
        ValueError: no such adapter, or ``len(prompts) != len(images)``.
    """
    unet, parts = teacher.parts.unet, teacher.parts
    if name not in adapter_names(unet):
        raise ValueError(f"the UNet has no adapter named {name!r}; add it with add_lora first")
    if len(prompts) != len(images):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    with torch.no_grad():
        latents = torch.cat([teacher.encode(images[i:i + 1].to(teacher.device)) for i in range(len(images))]).float()
        text = teacher._embed(list(prompts)).float()
        if prior is not None:
            prior_latents = torch.cat([teacher.encode(x[None].to(teacher.device)) for x in prior[0]]).float()
            prior_text = teacher._embed(list(prior[1])).float()
    params = lora_parameters(unet, name)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)  # train_dreambooth_lora.py: AdamW, 1e-2
    T = int(parts.scheduler.config.num_train_timesteps)
    losses = []
    with use_adapter(unet, name):
        for step in range(1, steps + 1):
            if check is not None:
                check()
            loss = _batch_loss(parts, latents, text, batch_size, T, gen)
            if prior is not None and prior_weight > 0:
                loss = loss + prior_weight * _batch_loss(parts, prior_latents, prior_text, batch_size, T, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(step, losses[-1])
    return losses


def _batch_loss(parts, latents, text, batch_size: int, T: int, gen: torch.Generator) -> torch.Tensor:
    pick = torch.randint(0, len(latents), (batch_size,), generator=gen)
    t = torch.randint(0, T, (batch_size,), generator=gen).to(latents.device)
    noise = torch.randn(latents[pick].shape, generator=gen).to(latents.device)
    return denoising_loss(parts, latents[pick], text[pick], t, noise)
