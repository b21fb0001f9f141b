"""Intrinsic image decomposition of an asset's views: base colour without baked lighting,
roughness and metallic, for PBR maps (``stages.asset_output`` with ``pbr=true``).

The estimator is Marigold's appearance model (Ke et al. 2025, "Marigold: Affordable Adaptation
of Diffusion-Based Image Generators for Image Analysis", arXiv 2505.09358, section on intrinsic
image decomposition; ``prs-eth/marigold-iid-appearance-v1-1``) through diffusers'
``MarigoldIntrinsicsPipeline``, with the model's own default number of denoising steps and
processing resolution (its ``model_index.json``). It predicts two targets per image: ``albedo``
(sRGB) and ``material``, a stack whose first two channels are roughness and metallicity (linear),
as the pipeline's ``target_properties`` say. Licence of the weights: OpenRAIL++-M (the Marigold
repository's ``LICENSE-MODEL.txt``, added with the v1-1 models): use-based restrictions, no
restriction on commercial use.

Like the depth estimator it is declared in the teacher registry (``guidance.registry.INTRINSICS``)
so that ``splatsmith models list/download`` know it, but it is not a teacher: :func:`load_intrinsics`
loads it and returns None when its weights are not present locally (the output stage then writes
no PBR maps and says so). ``tiny`` is a random model in its layout (:func:`write_tiny_marigold_iid`)
that proves the plumbing, never the quality. For verification :class:`IntrinsicsOracle` renders a
known object's true maps at the asked views.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

#: Marigold's appearance targets (``target_properties`` of ``prs-eth/marigold-iid-appearance-v1-1``).
APPEARANCE_TARGETS = {
    "target_names": ["albedo", "material"],
    "albedo": {"prediction_space": "srgb", "up_to_scale": False},
    "material": {"prediction_space": "stack", "sub_target_names": ["roughness", "metallicity", None]},
    "roughness": {"prediction_space": "linear", "up_to_scale": False},
    "metallicity": {"prediction_space": "linear", "up_to_scale": False},
}


class MarigoldIntrinsics:
    """A loaded ``MarigoldIntrinsicsPipeline`` (appearance model).

    Args:
        pipe: the pipeline on its device.
    """

    def __init__(self, pipe):
        self.pipe = pipe
        props = pipe.target_properties or APPEARANCE_TARGETS
        self.names = list(props["target_names"])
        self.material = props.get("material", {}).get("sub_target_names", ["roughness", "metallicity", None])
        if "albedo" not in self.names or "material" not in self.names:
            raise ValueError(f"this intrinsics model predicts {self.names}, not albedo and material: use an "
                             "appearance model such as prs-eth/marigold-iid-appearance-v1-1")

    @torch.no_grad()
    def estimate(self, images: torch.Tensor, cameras=None, generator: torch.Generator | None = None) -> dict:
        """Decompose views.

        Args:
            images: float [N, H, W, 3] in [0, 1], the asset's views (over a background).
            cameras: unused (the oracle's interface).
            generator: for the denoising noise.
        Returns:
            ``albedo`` float [N, H, W, 3] in [0, 1] (sRGB), ``roughness`` and ``metallic`` float
            [N, H, W] in [0, 1].
        """
        device = self.pipe.unet.device
        x = images.permute(0, 3, 1, 2).to(device, self.pipe.unet.dtype).clamp(0, 1)
        out = self.pipe(x, output_type="pt", generator=generator).prediction.float()
        N, H, W = images.shape[0], images.shape[1], images.shape[2]
        pred = out.reshape(N, len(self.names), 3, *out.shape[-2:])
        if pred.shape[-2:] != (H, W):
            pred = torch.nn.functional.interpolate(pred.flatten(0, 1), (H, W), mode="bilinear",
                                                   align_corners=False).reshape(N, len(self.names), 3, H, W)
        albedo = pred[:, self.names.index("albedo")].permute(0, 2, 3, 1)
        material = pred[:, self.names.index("material")]
        return {"albedo": albedo.clamp(0, 1).cpu(),
                "roughness": material[:, self.material.index("roughness")].clamp(0, 1).cpu(),
                "metallic": material[:, self.material.index("metallicity")].clamp(0, 1).cpu()}


class IntrinsicsOracle:
    """The true intrinsics of a known object at the asked views (for verification).

    Args:
        mesh: a :class:`~backend.render.mesh.TexturedMesh` whose ``texture`` is the albedo.
        metallic_roughness: float [S, S, 3] on the same UVs in glTF's layout (G roughness, B
            metallic), or None (the constant ``roughness`` and ``metallic``).
    """

    def __init__(self, mesh, metallic_roughness: torch.Tensor | None = None, roughness: float = 0.9,
                 metallic: float = 0.0):
        self.mesh = mesh
        if metallic_roughness is None:
            metallic_roughness = torch.tensor([0.0, roughness, metallic]).expand(4, 4, 3).clone()
        self.metallic_roughness = metallic_roughness.float()

    @torch.no_grad()
    def estimate(self, images: torch.Tensor, cameras, generator=None) -> dict:
        """The same outputs as :meth:`MarigoldIntrinsics.estimate`, rendered from the truth at
        ``cameras`` (``images`` only give the size)."""
        from ..render.mesh import TexturedMesh, render_mesh

        albedo = render_mesh(self.mesh, cameras, background=1.0).rgb
        mr = render_mesh(TexturedMesh(self.mesh.vertices, self.mesh.faces, self.mesh.uv, self.metallic_roughness),
                         cameras, background=0.0).rgb
        return {"albedo": albedo.cpu(), "roughness": mr[..., 1].cpu(), "metallic": mr[..., 2].cpu()}


def load_marigold(folder: Path, model_id: str, device: str, fp16=None, attention_slicing=False, cpu_offload=False):
    """The registry loader: a :class:`MarigoldIntrinsics` from a ``MarigoldIntrinsicsPipeline``
    folder (fp16 on CUDA)."""
    from diffusers import MarigoldIntrinsicsPipeline

    from .quiet import quiet_libraries

    quiet_libraries()
    dtype = torch.float16 if (fp16 if fp16 is not None else str(device).startswith("cuda")) else torch.float32
    pipe = MarigoldIntrinsicsPipeline.from_pretrained(str(folder), dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    return MarigoldIntrinsics(pipe)


def load_intrinsics(weights: str, device: str, *, models_dir=None, cache=None) -> MarigoldIntrinsics | None:
    """The intrinsics estimator of a weights variant (``tiny``: the random tiny model; anything
    else: Marigold's appearance model), or None when its weights are not present locally."""
    from . import load_estimator

    return load_estimator("intrinsics", "tiny" if weights.startswith("tiny") else "default", device,
                          models_dir=models_dir, cache=cache)


def write_tiny_marigold_iid(folder: str | Path, seed: int = 0) -> Path:
    """Write a tiny random ``MarigoldIntrinsicsPipeline`` in the layout of
    ``prs-eth/marigold-iid-appearance-v1-1`` (unet with 4 + 2 x 4 input and 2 x 4 output latent
    channels, vae, DDIM scheduler with v-prediction and trailing timesteps, an empty-text
    encoder and its tokenizer, the appearance ``target_properties``), 1 denoising step at 64 px."""
    from diffusers import DDIMScheduler, MarigoldIntrinsicsPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from .tiny import _DDIM_CONFIG, _tiny_vae, write_tiny_tokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vocab = write_tiny_tokenizer(folder / "tokenizer")
        tok = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
        text = CLIPTextModel(CLIPTextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, max_position_embeddings=77,
                                            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                            pad_token_id=tok.pad_token_id))
        unet = UNet2DConditionModel(
            sample_size=32, in_channels=12, out_channels=8, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32)
        scheduler = DDIMScheduler.from_config({**_DDIM_CONFIG, "prediction_type": "v_prediction",
                                               "timestep_spacing": "trailing"})
        pipe = MarigoldIntrinsicsPipeline(unet=unet, vae=_tiny_vae(), scheduler=scheduler, text_encoder=text,
                                          tokenizer=tok, prediction_type="intrinsics",
                                          target_properties=APPEARANCE_TARGETS, default_denoising_steps=1,
                                          default_processing_resolution=64)
        pipe.save_pretrained(str(folder), safe_serialization=True)
    json.loads((folder / "model_index.json").read_text())  # written by save_pretrained: marks the folder complete
    return folder
