"""Zero-1-to-3 (Liu et al. 2023) as an SDS / SDEdit teacher for one or several reference images.

Loaded component by component from the diffusers conversions ``ashawkey/zero123-xl-diffusers``
and ``ashawkey/stable-zero123-diffusers`` (their model_index.json names a custom pipeline
class, so the folder is not loaded as a pipeline): unet (8 input channels), vae,
image_encoder (CLIP vision with projection), feature_extractor, scheduler, and the camera
projection in ``clip_camera_projection`` (a 772 -> 768 linear layer named ``proj``; the
:class:`CLIPCameraProjection` class below reproduces the layout of the public conversion).

Conditioning (as in DreamGaussian's ``zero123_utils``):

- cross-attention: proj(concat(CLIP image embedding of the reference, camera embedding));
- the reference's VAE latents (the posterior mode, unscaled) concatenated to the noisy latents;
- CFG against zeroed cross-attention and zeroed reference latents.

Camera embedding, relative to the reference camera. Zero-1-to-3 uses the polar angle, which
grows downwards, so in this project's convention (elevation positive above):
[deg2rad(el_ref - el), sin(deg2rad(az - az_ref)), cos(deg2rad(az - az_ref)), r - r_ref] for
zero123-xl; stable-zero123 replaces the last entry by deg2rad(90 - el_ref), the reference's
polar angle (DreamGaussian's deg2rad(90 + its elevation), whose sign is flipped). The relative
camera is the one of threestudio's ``Zero123Guidance.get_cond``
(``threestudio/models/guidance/zero123_guidance.py``) and DreamGaussian's ``zero123_utils``.

Several references (views of one object, e.g. front and back): each view to denoise is
conditioned on the reference nearest to its camera by the great-circle angle between the two
orbit directions (``cameras.nearest_view``), with the relative camera computed from that
reference. Zero-1-to-3 was trained on one condition image; the per-view choice of the nearest one
is our choice (threestudio and DreamGaussian take a single image), in the spirit of conditioning
each novel view on the input it can see best.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..cameras import Cameras, nearest_view, orbit_angles
from ..models import check_model_folder, weights_variant
from .base import LatentDiffusionGuidance, cfg, freeze, precision_and_placement  # noqa: I001 (before diffusers)
from diffusers.configuration_utils import ConfigMixin, register_to_config  # noqa: E402
from diffusers.models.modeling_utils import ModelMixin  # noqa: E402

_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.safetensors")
ZERO123_COMPONENTS = {
    "unet": _WEIGHTS,
    "vae": _WEIGHTS,
    "image_encoder": ("model.safetensors", "pytorch_model.bin", "model.fp16.safetensors"),
    "feature_extractor": ("preprocessor_config.json",),
    "scheduler": ("scheduler_config.json",),
    "clip_camera_projection": _WEIGHTS,
}


class CLIPCameraProjection(ModelMixin, ConfigMixin):
    """Projects concat(CLIP image embedding [.., D], camera embedding [.., 4]) back to D.

    Layout of the public diffusers conversion: one ``torch.nn.Linear`` named ``proj`` from
    ``embedding_dim + additional_embeddings`` to ``embedding_dim``.
    """

    @register_to_config
    def __init__(self, embedding_dim: int = 768, additional_embeddings: int = 4):
        super().__init__()
        self.embedding_dim = embedding_dim
        self.additional_embeddings = additional_embeddings
        self.proj = torch.nn.Linear(embedding_dim + additional_embeddings, embedding_dim)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.proj(embedding)


@dataclass
class Zero123Components:
    unet: Any
    vae: Any
    image_encoder: Any
    feature_extractor: Any
    scheduler: Any
    projection: CLIPCameraProjection
    dtype: torch.dtype
    device: torch.device
    stable: bool


def load_zero123(folder: str | Path, model_id: str, device: str = "cpu", fp16: bool | None = None,
                 attention_slicing: bool = False, cpu_offload: bool = False) -> Zero123Components:
    """Load Zero-1-to-3's components from a diffusers conversion folder.

    ``stable`` (the stable-zero123 camera embedding) is detected from the model id.

    Raises:
        ModelMissingError: a component is missing (named in the message).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    from .quiet import quiet_libraries

    quiet_libraries()
    folder = Path(folder)
    check_model_folder(folder, model_id, ZERO123_COMPONENTS)
    dev, dtype, place = precision_and_placement(device, fp16, cpu_offload)
    unet = UNet2DConditionModel.from_pretrained(str(folder), subfolder="unet", torch_dtype=dtype, variant=weights_variant(folder, "unet")).to(place).eval()
    if unet.config.in_channels != 8:
        raise ValueError(f"{folder}/unet has {unet.config.in_channels} input channels; Zero-1-to-3's has 8")
    if attention_slicing:
        unet.set_attention_slice("auto")
    parts = Zero123Components(
        unet=unet,
        vae=AutoencoderKL.from_pretrained(str(folder), subfolder="vae", torch_dtype=dtype, variant=weights_variant(folder, "vae")).to(place).eval(),
        image_encoder=CLIPVisionModelWithProjection.from_pretrained(
            str(folder), subfolder="image_encoder", torch_dtype=dtype,
            variant=weights_variant(folder, "image_encoder")).to(place).eval(),
        feature_extractor=CLIPImageProcessor.from_pretrained(str(folder), subfolder="feature_extractor"),
        scheduler=DDIMScheduler.from_pretrained(str(folder), subfolder="scheduler"),
        projection=CLIPCameraProjection.from_pretrained(
            str(folder), subfolder="clip_camera_projection", torch_dtype=dtype,
            variant=weights_variant(folder, "clip_camera_projection")).to(place).eval(),
        dtype=dtype, device=dev, stable="stable" in model_id,
    )
    freeze((parts.unet, parts.vae, parts.image_encoder, parts.projection), dev, cpu_offload)
    return parts


def camera_embedding(elevation: torch.Tensor, azimuth: torch.Tensor, radius: torch.Tensor, ref_elevation,
                     ref_azimuth, ref_radius: float, stable: bool) -> torch.Tensor:
    """Zero-1-to-3's relative camera embedding float [B, 4] (see the module doc for the
    convention). ``elevation``, ``azimuth`` (degrees), ``radius`` (metres): [B]; the reference's
    ``ref_elevation`` and ``ref_azimuth``: numbers or [B] (each view's own reference)."""
    ref_el = torch.as_tensor(ref_elevation, dtype=torch.float32, device=elevation.device)
    ref_az = torch.as_tensor(ref_azimuth, dtype=torch.float32, device=elevation.device)
    d_polar = torch.deg2rad(ref_el - elevation)
    d_az = torch.deg2rad(azimuth - ref_az)
    last = torch.deg2rad(90.0 - ref_el).expand_as(d_polar) if stable else radius - ref_radius
    return torch.stack([d_polar, torch.sin(d_az), torch.cos(d_az), last], -1)


def _per_reference(value, K: int) -> torch.Tensor:
    """float32 [K] from a number (the same for each reference) or a sequence."""
    v = torch.as_tensor(value, dtype=torch.float32).reshape(-1)
    return v.expand(K).clone() if v.numel() == 1 else v


class Zero123Guidance(LatentDiffusionGuidance):
    """Image-conditioned novel-view teacher (DreamGaussian's image mode: CFG 5)."""

    def __init__(self, parts: Zero123Components, guidance_scale: float = 5.0, weighting: str = "sds"):
        super().__init__(parts, guidance_scale, weighting)

    @torch.no_grad()
    def encode_condition(self, image: torch.Tensor | None = None, elevation=0.0, azimuth=0.0,
                         radius: float = 2.0, **_: Any) -> None:
        """Cache the references: ``image`` float [K, 3, H, W] in [0, 1] (the object on white), K >= 1
        views of one object seen from the orbit cameras ``elevation`` and ``azimuth`` (degrees:
        a number, or a sequence of K) at ``radius`` metres.

        Raises:
            ValueError: no image, or angles whose count is not K.
        """
        if image is None:
            raise ValueError("the Zero-1-to-3 teacher needs a reference image")
        x = self.resize(image.to(self.device, torch.float32))
        K = x.shape[0]
        elevations, azimuths = (_per_reference(v, K) for v in (elevation, azimuth))
        if elevations.numel() != K or azimuths.numel() != K:
            raise ValueError(f"{K} reference images need {K} elevations and azimuths, got {elevations.numel()} and "
                             f"{azimuths.numel()}")
        pixels = self.parts.feature_extractor(images=list(x.clamp(0, 1)), do_rescale=False, return_tensors="pt").pixel_values
        clip = self.parts.image_encoder(pixels.to(self.device, self.parts.dtype)).image_embeds  # [K, D]
        latents = self.parts.vae.encode((x * 2 - 1).to(self.parts.dtype)).latent_dist.mode()  # unscaled
        self.condition = {"clip": clip[:, None, :], "latents": latents, "elevation": elevations.to(self.device),
                          "azimuth": azimuths.to(self.device), "radius": float(radius)}

    def predict_noise(self, x_t, t, cameras: Cameras, background=None) -> torch.Tensor:
        B = x_t.shape[0]
        c = self.condition
        el, az, r = orbit_angles(cameras)
        el, az, r = el.to(self.device), az.to(self.device), r.to(self.device)
        pick = nearest_view(el, az, c["elevation"], c["azimuth"])  # [B]: each view's reference
        T = camera_embedding(el, az, r, c["elevation"][pick], c["azimuth"][pick], c["radius"], self.parts.stable)
        cc = self.parts.projection(torch.cat([c["clip"][pick], T[:, None, :].to(self.parts.dtype)], -1))
        cc = torch.cat([cc, torch.zeros_like(cc)])
        ref = c["latents"][pick]
        ref = torch.cat([ref, torch.zeros_like(ref)])
        x_in = torch.cat([torch.cat([x_t, x_t]).to(self.parts.dtype), ref], 1)
        eps = self.parts.unet(x_in, torch.cat([t, t]), encoder_hidden_states=cc).sample
        eps_cond, eps_uncond = eps.chunk(2)
        return cfg(eps_uncond, eps_cond, self.guidance_scale).to(x_t.dtype)
