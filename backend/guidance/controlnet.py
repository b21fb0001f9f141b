"""Stable Diffusion with a depth ControlNet: the geometry-conditioned teacher of texture painting.

SyncMVD's set-up (Liu et al. 2023, arXiv 2311.12891; its ``src/pipeline.py``): Stable Diffusion
1.5 (``stable-diffusion-v1-5/stable-diffusion-v1-5``, the maintained copy of runwayml's weights)
with ``lllyasviel/control_v11f1p_sd15_depth``; the ``xl`` variant is SDXL base 1.0 with
``diffusers/controlnet-depth-sdxl-1.0``. Components are loaded one by one from diffusers
folders (fp16 on CUDA, float32 on the CPU), the ControlNet from its own folder (the teacher's
registry ``companions``).

The conditioning image is the mesh's depth in each view, made as SyncMVD makes it
(``src/renderer/project.py`` ``decode_normalized_depth``, ``src/pipeline.py``
``get_conditioning_images``): inverse depth 1/z, normalised per view to [0, 1] over the object's
pixels (the nearest point 1, the farthest 0), the background 0, three equal channels, then a
Gaussian blur of kernel 5 and sigma 5 // 3 + 1 = 2 pixels. This is the layout both ControlNets
were trained on: MiDaS-style relative inverse depth, near bright (the model cards; diffusers'
ControlNet depth examples normalise the estimator's output to [0, 1] the same way). The
teacher renders it itself from :attr:`DepthControlNetGuidance.geometry` at whatever cameras it
is asked about, so SDS and SDEdit (``refine``) work with it as with any teacher.

CFG with the negative prompt: eps = eps_neg + s (eps_pos - eps_neg), the ControlNet's residuals
added to both branches (diffusers' ``StableDiffusionControlNetPipeline`` outside guess mode);
the conditioning scale (SyncMVD: 0.7, rising to 0.9 by the end) is :attr:`conditioning_scale`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..cameras import Cameras
from ..models import check_model_folder, weights_variant
from ..render.mesh import TexturedMesh, rasterize
from .base import LatentDiffusionGuidance, cfg, freeze, precision_and_placement

_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.safetensors")
_TEXT = ("model.safetensors", "pytorch_model.bin", "model.fp16.safetensors")
#: The sub-folders (and a file each must hold) of the base model, per architecture.
BASE_COMPONENTS = {
    "sd": {"tokenizer": ("vocab.json",), "text_encoder": _TEXT, "unet": _WEIGHTS, "vae": _WEIGHTS,
           "scheduler": ("scheduler_config.json",)},
    "sdxl": {"tokenizer": ("vocab.json",), "text_encoder": _TEXT, "tokenizer_2": ("vocab.json",), "text_encoder_2": _TEXT,
             "unet": _WEIGHTS, "vae": _WEIGHTS, "scheduler": ("scheduler_config.json",)},
}
#: SyncMVD's blur of the conditioning image (``get_conditioning_images``: ``GaussianBlur(5, 5 // 3 + 1)``).
BLUR_KERNEL, BLUR_SIGMA = 5, 5 // 3 + 1


@dataclass
class ControlNetComponents:
    """Loaded parts: Stable Diffusion's (``tokenizer_2``/``text_encoder_2`` only for SDXL) and the
    ControlNet."""

    tokenizer: Any
    text_encoder: Any
    unet: Any
    vae: Any
    scheduler: Any
    controlnet: Any
    dtype: torch.dtype
    device: torch.device
    tokenizer_2: Any = None
    text_encoder_2: Any = None

    @property
    def xl(self) -> bool:
        return self.text_encoder_2 is not None


def load_depth_controlnet(folder: str | Path, model_id: str, device: str = "cpu", fp16: bool | None = None,
                          attention_slicing: bool = False, cpu_offload: bool = False, *,
                          companions: dict[str, tuple[str, Path]] | None = None) -> ControlNetComponents:
    """Load the base model from ``folder`` and the ControlNet from ``companions["controlnet-depth"]``
    ((model id, folder); both diffusers layouts, no pipeline class). SDXL is recognised by its
    ``text_encoder_2``.

    Raises:
        ModelMissingError: a component or the ControlNet's weights are missing (named).
    """
    from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from .quiet import quiet_libraries

    quiet_libraries()
    folder = Path(folder)
    xl = (folder / "text_encoder_2").is_dir()
    check_model_folder(folder, model_id, BASE_COMPONENTS["sdxl" if xl else "sd"])
    control_id, control_folder = (companions or {})["controlnet-depth"]
    control_folder = Path(control_folder)
    for needed in (("config.json",), _WEIGHTS):
        check_model_folder(control_folder, control_id, {".": needed})
    dev, dtype, place = precision_and_placement(device, fp16, cpu_offload)

    def part(cls, sub):
        return cls.from_pretrained(str(folder), subfolder=sub, torch_dtype=dtype,
                                   variant=weights_variant(folder, sub)).to(place).eval()

    unet = part(UNet2DConditionModel, "unet")
    controlnet = ControlNetModel.from_pretrained(str(control_folder), torch_dtype=dtype,
                                                 variant=weights_variant(control_folder, "."))
    controlnet = controlnet.to(place).eval()
    if attention_slicing:
        unet.set_attention_slice("auto")
        controlnet.set_attention_slice("auto")
    vae = part(AutoencoderKL, "vae")
    if xl and dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        vae = vae.to(torch.float32)  # SDXL's VAE overflows in fp16 (diffusers' pipelines upcast it the same way)
    parts = ControlNetComponents(
        tokenizer=CLIPTokenizer.from_pretrained(str(folder), subfolder="tokenizer"),
        text_encoder=part(CLIPTextModel, "text_encoder"), unet=unet, vae=vae,
        scheduler=DDIMScheduler.from_pretrained(str(folder), subfolder="scheduler"), controlnet=controlnet,
        dtype=dtype, device=dev,
        tokenizer_2=CLIPTokenizer.from_pretrained(str(folder), subfolder="tokenizer_2") if xl else None,
        text_encoder_2=part(CLIPTextModelWithProjection, "text_encoder_2") if xl else None,
    )
    freeze([m for m in (unet, vae, parts.text_encoder, parts.text_encoder_2, controlnet) if m is not None], dev, cpu_offload)
    return parts


def normalised_inverse_depth(depth: torch.Tensor) -> torch.Tensor:
    """SyncMVD's ControlNet depth image from camera depth float [B, H, W] (metres, 0 = empty):
    1/z normalised per view to [0, 1] over the covered pixels (nearest 1, farthest 0), 0 on the
    background; returns float [B, H, W]. A view that sees nothing is all 0."""
    covered = depth > 0
    inv = torch.where(covered, 1.0 / depth.clamp_min(1e-6), torch.zeros_like(depth))
    big = torch.finfo(depth.dtype).max
    lo = torch.where(covered, inv, torch.full_like(inv, big)).flatten(1).amin(1).view(-1, 1, 1)
    hi = inv.flatten(1).amax(1).view(-1, 1, 1)
    out = (inv - lo) / (hi - lo).clamp_min(1e-8)
    return torch.where(covered, out.clamp(0, 1), torch.zeros_like(out))


def gaussian_blur(images: torch.Tensor, kernel: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """Separable Gaussian blur of float [B, C, H, W] with reflect padding (torchvision's
    ``GaussianBlur``, which SyncMVD uses; written out here because torchvision may not load beside
    a CPU-only torch, ``guidance.quiet``)."""
    x = torch.arange(kernel, dtype=images.dtype, device=images.device) - (kernel - 1) / 2
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    C = images.shape[1]
    out = F.pad(images, (kernel // 2,) * 4, mode="reflect")
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(C, 1, 1, kernel), groups=C)
    return F.conv2d(out, k.view(1, 1, -1, 1).expand(C, 1, kernel, 1), groups=C)


class DepthControlNetGuidance(LatentDiffusionGuidance):
    """Text-conditioned teacher that sees the object's shape through a depth ControlNet.

    Attributes:
        geometry: the mesh whose depth conditions every view (set by the pipeline, in the frame
            of the cameras it will be asked about); required before :meth:`predict_noise`.
        conditioning_scale: the ControlNet residuals' weight (SyncMVD ``--conditioning_scale``
            0.7).
        image_size: the side the views are encoded at (a multiple of 8; the pipeline sets its
            view size; default the UNet's native size).
    """

    def __init__(self, parts: ControlNetComponents, guidance_scale: float = 15.5, weighting: str = "sds"):
        super().__init__(parts, guidance_scale, weighting)
        self.geometry: TexturedMesh | None = None
        self.conditioning_scale = 0.7
        self._control: dict[tuple, torch.Tensor] = {}
        self._ip_pipe = None  # a diffusers pipeline over these components, while an IP-Adapter is loaded
        self._image_embeds: torch.Tensor | None = None

    # ------------------------------------------------------------------ IP-Adapter
    def load_ip_adapter(self, folder: str | Path, subfolder: str, weight_name: str, scale: float = 1.0) -> None:
        """Load an IP-Adapter (Ye et al. 2023; ``h94/IP-Adapter``) into this teacher's UNet with
        diffusers' ``load_ip_adapter`` (its image encoder from ``subfolder/image_encoder``) at
        ``scale``. The UNet is shared through the model cache: :meth:`unload_ip_adapter` must
        follow (the pipeline does it when the job ends, however it ends).

        Raises:
            ModelMissingError: the weights file or the image encoder is missing.
        """
        from diffusers import StableDiffusionControlNetPipeline, StableDiffusionXLControlNetPipeline

        from ..models import ModelMissingError

        folder = Path(folder)
        for needed in (folder / subfolder / weight_name, folder / subfolder / "image_encoder" / "config.json"):
            if not needed.is_file():
                raise ModelMissingError("h94/IP-Adapter", f"{needed} is missing")
        p = self.parts
        common = dict(vae=p.vae, text_encoder=p.text_encoder, tokenizer=p.tokenizer, unet=p.unet, controlnet=p.controlnet,
                      scheduler=p.scheduler, feature_extractor=None, image_encoder=None)
        if p.xl:
            pipe = StableDiffusionXLControlNetPipeline(text_encoder_2=p.text_encoder_2, tokenizer_2=p.tokenizer_2, **common)
        else:
            pipe = StableDiffusionControlNetPipeline(safety_checker=None, requires_safety_checker=False, **common)
        pipe.load_ip_adapter(str(folder), subfolder=subfolder, weight_name=weight_name)
        pipe.image_encoder.to(self.device, p.dtype).requires_grad_(False)
        pipe.set_ip_adapter_scale(scale)
        self._ip_pipe = pipe

    def unload_ip_adapter(self) -> None:
        """Give the UNet its own attention processors back (diffusers' ``unload_ip_adapter``)."""
        if self._ip_pipe is not None:
            self._ip_pipe.unload_ip_adapter()
            self._ip_pipe, self._image_embeds = None, None

    # ------------------------------------------------------------------ condition
    @torch.no_grad()
    def _embed(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(token embeddings [N, 77, D], pooled [N, D2] or None): SD 1.5 the text encoder's last
        hidden state; SDXL both encoders' penultimate hidden states side by side and the second's
        pooled projection (diffusers' ``StableDiffusionXLPipeline.encode_prompt``)."""
        p = self.parts

        def tokens(tokenizer):
            return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                             return_tensors="pt").input_ids.to(self.device)

        if not p.xl:
            return p.text_encoder(tokens(p.tokenizer))[0], None
        one = p.text_encoder(tokens(p.tokenizer), output_hidden_states=True)
        two = p.text_encoder_2(tokens(p.tokenizer_2), output_hidden_states=True)
        return torch.cat([one.hidden_states[-2], two.hidden_states[-2]], -1), two[0]

    def encode_condition(self, prompt: str = "", negative_prompt: str = "", image: Any = None, **_: Any) -> None:
        """Embeddings of the prompt and the negative prompt (CFG's other branch). SDXL with an
        empty negative prompt uses zeros there, as its pipeline does (``force_zeros_for_empty_prompt``).
        With an IP-Adapter loaded, ``image`` (a PIL image or uint8 [H, W, 3]) is its reference:
        its CLIP image embedding conditions the UNet, zeros the unconditional branch (diffusers'
        ``prepare_ip_adapter_image_embeds``).

        Raises:
            ValueError: an empty prompt, or an image without a loaded IP-Adapter.
        """
        if not prompt.strip():
            raise ValueError("the depth ControlNet teacher needs a prompt")
        self._image_embeds = None
        if image is not None:
            if self._ip_pipe is None:
                raise ValueError("a reference image needs an IP-Adapter: call load_ip_adapter first")
            from PIL import Image

            picture = image if isinstance(image, Image.Image) else Image.fromarray(image)
            with torch.no_grad():
                embeds = self._ip_pipe.prepare_ip_adapter_image_embeds(picture, None, self.device, 1, True)[0]
            self._image_embeds = embeds.to(self.parts.dtype)  # [2, 1, D]: zeros' embedding, then the image's
        cond, pooled = self._embed([prompt])
        uncond, pooled_u = self._embed([negative_prompt])
        if self.parts.xl and not negative_prompt.strip():
            uncond, pooled_u = torch.zeros_like(uncond), torch.zeros_like(pooled_u)
        self.condition = {"cond": cond, "uncond": uncond, "pooled": pooled, "pooled_uncond": pooled_u, "prompt": prompt}

    def control_image(self, cameras: Cameras) -> torch.Tensor:
        """The ControlNet's input for ``cameras``: float [B, 3, S, S] in [0, 1] at the encode size
        S (see the module docstring), cached per camera set.

        Raises:
            RuntimeError: :attr:`geometry` is not set.
        """
        if self.geometry is None:
            raise RuntimeError("DepthControlNetGuidance.geometry must be set to the mesh before predicting noise")
        key = (self.image_size, tuple(cameras.c2w.detach().cpu().reshape(-1).tolist()), tuple(cameras.fovy.reshape(-1).tolist()))
        if key not in self._control:
            if len(self._control) >= 64:  # one entry per camera set: a batch, or one view of the sweep
                self._control.clear()
            cams = cameras.resized(self.image_size, self.image_size).to(self.geometry.vertices.device)
            with torch.no_grad():
                depth = rasterize(self.geometry.vertices, self.geometry.faces, cams).depth
            image = gaussian_blur(normalised_inverse_depth(depth)[:, None].expand(-1, 3, -1, -1).contiguous())
            self._control[key] = image.clamp(0, 1).to(self.device)
        return self._control[key]

    # ------------------------------------------------------------------ denoiser
    def predict_noise(self, x_t, t, cameras: Cameras, background=None) -> torch.Tensor:
        """eps_hat with CFG for latents x_t [B, 4, h, w] at timesteps t [B], the ControlNet seeing
        the depth of :attr:`geometry` from ``cameras`` (h = w = image_size / latent_factor, 8 for
        Stable Diffusion's VAE)."""
        p = self.parts
        B = x_t.shape[0]
        c = self.condition
        text = torch.cat([c["uncond"].expand(B, -1, -1), c["cond"].expand(B, -1, -1)]).to(p.dtype)
        control = self.control_image(cameras).to(p.dtype)
        sample, steps = torch.cat([x_t, x_t]).to(p.dtype), torch.cat([t, t])
        added = None
        unet_added: dict | None = None
        if p.xl:
            side = self.image_size
            time_ids = torch.tensor([side, side, 0, 0, side, side], device=self.device, dtype=p.dtype).expand(2 * B, 6)
            pooled = torch.cat([c["pooled_uncond"].expand(B, -1), c["pooled"].expand(B, -1)]).to(p.dtype)
            added = {"text_embeds": pooled, "time_ids": time_ids}
        if self._image_embeds is not None:
            neg, pos = self._image_embeds.chunk(2)
            unet_added = {**(added or {}), "image_embeds": [torch.cat([neg.expand(B, -1, -1), pos.expand(B, -1, -1)])]}
        down, mid = p.controlnet(sample, steps, encoder_hidden_states=text, controlnet_cond=torch.cat([control, control]),
                                 conditioning_scale=float(self.conditioning_scale), added_cond_kwargs=added,
                                 return_dict=False)
        eps = p.unet(sample, steps, encoder_hidden_states=text, down_block_additional_residuals=down,
                     mid_block_additional_residual=mid, added_cond_kwargs=unet_added or added).sample
        eps_uncond, eps_cond = eps.chunk(2)
        return cfg(eps_uncond, eps_cond, self.guidance_scale).to(x_t.dtype)
