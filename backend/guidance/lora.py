"""LoRA adapters on a latent-diffusion teacher's UNet (peft, through diffusers' ``UNet2DConditionModel``
adapter methods): several named adapters on one UNet, switched by name instead of UNet copies,
the denoising loss that trains them, and their safetensors files. The teachers' side of
DreamCraft3D's texture boosting (Sun et al. 2023, section 3.3): the DreamBooth adapter
(``stages.dreambooth`` fine-tunes it) and BSD's VSD adapter (``guidance.bsd`` trains it).

- :func:`add_lora`: an adapter on the attention projections ``to_q``, ``to_k``, ``to_v``,
  ``to_out.0`` (the targets of diffusers' ``examples/dreambooth/train_dreambooth_lora.py``);
  :func:`use_adapter` runs a block with one of them (``set_adapter``) or none.
- :func:`denoising_loss`: the epsilon-prediction MSE at a timestep (DDPM, Ho et al. 2020, eq. 14),
  the loss of DreamBooth (Ruiz et al. 2023, eq. 1) and of VSD's LoRA (Wang et al. 2023, eq. 10).
- :func:`save_lora` / :func:`load_lora`: an adapter as one safetensors file (diffusers'
  ``save_lora_adapter`` / ``load_lora_adapter``).
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

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

    if name in adapter_names(unet):
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


def adapter_names(unet) -> set[str]:
    """The names of the adapters on ``unet``."""
    config = getattr(unet, "peft_config", None) or {}
    return set(config)


def lora_parameters(unet, name: str) -> list[torch.nn.Parameter]:
    """The weights of adapter ``name`` (the ``lora_A``/``lora_B`` matrices of every target)."""
    return [p for n, p in unet.named_parameters() if f".{name}." in n and "lora_" in n]


@contextmanager
def use_adapter(unet, name: str | None) -> Iterator[None]:
    """Run the block with only adapter ``name`` active (None: the base UNet, all adapters
    disabled), then restore the adapters that were active before."""
    before = list(unet.active_adapters()) if adapter_names(unet) else []
    try:
        if name is None:
            unet.disable_adapters()
        else:
            unet.enable_adapters()
            unet.set_adapter(name)
        yield
    finally:
        if adapter_names(unet):
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
    if name in adapter_names(unet):
        raise ValueError(f"the UNet already has an adapter named {name!r}")
    unet.load_lora_adapter(str(path.parent), weight_name=path.name, adapter_name=name, prefix=None)
    unet.set_adapter(name)
