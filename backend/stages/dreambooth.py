"""LoRA adapters on a latent-diffusion teacher's UNet, fine-tuned DreamBooth-style: the parts of
DreamCraft3D's texture boosting (Sun et al. 2023, section 3.3, Algorithm 1) that personalise
Stable Diffusion on the object's own renders.

- :func:`add_lora`: a named LoRA adapter (peft, through diffusers' ``UNet2DConditionModel.
  add_adapter``) on the attention projections ``to_q``, ``to_k``, ``to_v``, ``to_out.0`` (the
  targets of diffusers' ``examples/dreambooth/train_dreambooth_lora.py``). Several adapters live
  on one UNet and are switched with :func:`use_adapter` (``set_adapter``), not UNet copies.
- :func:`denoising_loss`: the epsilon-prediction MSE at a random timestep (DDPM, Ho et al. 2020,
  eq. 14), the loss of DreamBooth (Ruiz et al. 2023, eq. 1) and of VSD's LoRA (Wang et al.
  2023, eq. 10).
- :func:`finetune_lora`: Adam on one adapter's weights with that loss on a set of images and
  prompts, plus DreamBooth's prior preservation (eq. 2: the same loss on the base model's own
  samples of the class prompt, weight ``prior_weight``, 1 in the paper).
- :func:`save_lora` / :func:`load_lora`: an adapter as one safetensors file (diffusers'
  ``save_lora_adapter`` / ``load_lora_adapter``).

The loop belongs to the caller's stage only in the sense of its schedule: everything here is a
plain function of (UNet parts, images, prompts).
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

#: The attention projections LoRA adapts (diffusers ``train_dreambooth_lora.py``).
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def add_lora(unet, name: str, rank: int = 4, alpha: float | None = None, seed: int = 0) -> None:
    """Add a LoRA adapter ``name`` of rank ``rank`` (scale ``alpha / rank``, alpha = rank by
    default as in ``train_dreambooth_lora.py``) to ``unet``; its up-projection starts at zero,
    so the UNet's output is unchanged until it is trained (peft's default initialisation).
    ``seed`` fixes the down-projection's random initialisation.

    Raises:
        ValueError: an adapter of that name exists already.
    """
    from peft import LoraConfig

    if name in _adapter_names(unet):
        raise ValueError(f"the UNet already has an adapter named {name!r}")
    config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, init_lora_weights=True,
                        target_modules=list(LORA_TARGETS))
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # peft warns whenever a second adapter joins a model: several adapters are the point here.
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        torch.manual_seed(seed)
        unet.add_adapter(config, adapter_name=name)
    unet.set_adapter(name)
    for param in lora_parameters(unet, name):
        param.data = param.data.float()  # adapters train in float32 even on an fp16 UNet


def _adapter_names(unet) -> set[str]:
    config = getattr(unet, "peft_config", None) or {}
    return set(config)


def lora_parameters(unet, name: str) -> list[torch.nn.Parameter]:
    """The weights of adapter ``name`` (the ``lora_A``/``lora_B`` matrices of every target)."""
    return [p for n, p in unet.named_parameters() if f".{name}." in n and "lora_" in n]


@contextmanager
def use_adapter(unet, name: str | None) -> Iterator[None]:
    """Run the block with only adapter ``name`` active (None: the base UNet, all adapters
    disabled), then restore the adapters that were active before."""
    before = list(unet.active_adapters()) if _adapter_names(unet) else []
    try:
        if name is None:
            unet.disable_adapters()
        else:
            unet.enable_adapters()
            unet.set_adapter(name)
        yield
    finally:
        if _adapter_names(unet):
            unet.enable_adapters()
            if before:
                unet.set_adapter(before)


def denoising_loss(parts, latents: torch.Tensor, text: torch.Tensor, t: torch.Tensor,
                   noise: torch.Tensor) -> torch.Tensor:
    """mean ||eps - eps_theta(sqrt(ab_t) z + sqrt(1 - ab_t) eps, t, text)||^2.

    Args:
        parts: the teacher's components (``unet``, ``scheduler``, ``dtype``).
        latents: float [B, 4, h, w] (VAE latents times the scaling factor).
        text: float [B, L, D] text embeddings.
        t: int64 [B] timesteps; noise: float [B, 4, h, w].
    """
    noisy = parts.scheduler.add_noise(latents, noise, t)
    eps = parts.unet(noisy.to(parts.dtype), t, encoder_hidden_states=text.to(parts.dtype)).sample
    return F.mse_loss(eps.float(), noise.float())


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
    if name not in _adapter_names(unet):
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


def save_lora(unet, name: str, path: str | Path) -> Path:
    """Write adapter ``name`` to ``path`` (a ``.safetensors`` file; its folder is created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    unet.save_lora_adapter(str(path.parent), adapter_name=name, weight_name=path.name, safe_serialization=True)
    return path


def load_lora(unet, name: str, path: str | Path) -> None:
    """Load the adapter written by :func:`save_lora` into ``unet`` as ``name`` and activate it.

    Raises:
        FileNotFoundError: no such file. ValueError: an adapter of that name exists already.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no LoRA adapter at {path}")
    if name in _adapter_names(unet):
        raise ValueError(f"the UNet already has an adapter named {name!r}")
    unet.load_lora_adapter(str(path.parent), weight_name=path.name, adapter_name=name, prefix=None)
    unet.set_adapter(name)
