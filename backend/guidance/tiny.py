"""Tiny, randomly initialised diffusion teachers in exactly the on-disk layouts of the real ones.

They let the whole chain run without downloaded weights: :func:`write_tiny_stable_diffusion`
writes a ``StableDiffusionPipeline`` folder (model_index.json, tokenizer with vocab.json and
merges.txt, text_encoder, unet, vae, scheduler) and :func:`write_tiny_zero123` a folder in the
layout of ``ashawkey/zero123-xl-diffusers`` (unet with 8 input channels, vae, image_encoder,
feature_extractor, scheduler, clip_camera_projection, and a model_index.json that names the
custom pipeline class). Both are written with ``save_pretrained`` and read back by the same
loaders as the real models. They prove the plumbing, never the quality: the outputs are noise.

The tokenizer is CLIP's byte-level BPE with a minimal vocabulary (every byte symbol, alone and
word-final, plus the special tokens) and no merges.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

_DDIM_CONFIG = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon",
}


def _bytes_to_unicode() -> list[str]:
    """CLIP/GPT-2's reversible byte -> printable unicode table (256 symbols)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_tiny_tokenizer(folder: Path) -> int:
    """Write a CLIPTokenizer (vocab.json, merges.txt) to ``folder``; returns the vocab size."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    symbols = _bytes_to_unicode()
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": len(symbols) + i for i, s in enumerate(symbols)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    tokenizer.save_pretrained(str(folder))
    return len(vocab)


def _tiny_unet(in_channels: int, cross_attention_dim: int, sample_size: int):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=cross_attention_dim,
        attention_head_dim=8, norm_num_groups=32,
    )


def _real_size_unet(in_channels: int, cross_attention_dim: int, sample_size: int, head_dim, linear: bool):
    """The UNet architecture of Stable Diffusion (2.1 base: 1024-d context, head dims 5..20,
    linear projections; 1.x / Zero-1-to-3: 768-d context, 8 heads), randomly initialised."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=cross_attention_dim,
        attention_head_dim=head_dim, use_linear_projection=linear, norm_num_groups=32,
    )


def _tiny_vae(real_size: bool = False):
    from diffusers import AutoencoderKL

    if real_size:  # Stable Diffusion's VAE (8x downsampling)
        return AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), latent_channels=4,
            layers_per_block=2, norm_num_groups=32, sample_size=512,
        )
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(32, 64), latent_channels=4,
        layers_per_block=1, norm_num_groups=32, sample_size=32,
    )


def write_tiny_stable_diffusion(folder: str | Path, seed: int = 0, real_size: bool = False, arch: str = "sd21") -> Path:
    """Write a tiny Stable Diffusion (32x32 images, 16x16 latents) in diffusers' layout, or
    with ``real_size`` one with the real architecture of ``arch``: ``"sd21"`` Stable Diffusion 2.1
    base (OpenCLIP ViT-H text tower, 1024-d context), ``"sd15"`` Stable Diffusion 1.5 (CLIP ViT-L/14
    text tower, 768-d context), 512x512 images; random weights either way (for benchmarks of the
    real compute)."""
    folder = Path(folder)
    with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
        torch.manual_seed(seed)
        return _write_tiny_sd(folder, real_size, arch)


def _write_tiny_sd(folder: Path, real_size: bool = False, arch: str = "sd21") -> Path:
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab_size = write_tiny_tokenizer(folder / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
    # OpenCLIP ViT-H's text tower (SD 2.1, its penultimate layer: 23 of 24) or CLIP ViT-L/14's (SD 1.5)
    towers = {"sd21": (1024, 23, 16, 4096), "sd15": (768, 12, 12, 3072)}
    width, layers, heads, inner = towers[arch] if real_size else (32, 2, 4, 64)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=width, intermediate_size=inner, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=77, projection_dim=32, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    unets = {"sd21": lambda: _real_size_unet(4, 1024, 64, (5, 10, 20, 20), True),
             "sd15": lambda: _real_size_unet(4, 768, 64, 8, False)}
    unet = unets[arch]() if real_size else _tiny_unet(4, 32, 16)
    pipe = StableDiffusionPipeline(
        vae=_tiny_vae(real_size), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=DDIMScheduler.from_config(_DDIM_CONFIG), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder


def write_tiny_zero123(folder: str | Path, seed: int = 0, real_size: bool = False) -> Path:
    """Write a tiny Zero-1-to-3 (32x32 images, 16x16 latents) in the layout of
    ``ashawkey/zero123-xl-diffusers``, or with ``real_size`` one with its real architecture
    (256x256 images, SD 1.x UNet with 8 input channels, CLIP ViT-L/14 image encoder), random
    weights either way."""
    from .zero123 import CLIPCameraProjection

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
        torch.manual_seed(seed)
        _write_tiny_zero123(folder, CLIPCameraProjection, real_size)
    return folder


def _write_tiny_zero123(folder: Path, CLIPCameraProjection, real_size: bool = False) -> None:
    from diffusers import DDIMScheduler
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    dim = 768 if real_size else 32
    unet = _real_size_unet(8, dim, 32, 8, False) if real_size else _tiny_unet(8, dim, 16)
    unet.save_pretrained(str(folder / "unet"), safe_serialization=True)
    _tiny_vae(real_size).save_pretrained(str(folder / "vae"), safe_serialization=True)
    width, layers, heads, inner, image, patch, crop = (1024, 24, 16, 4096, 224, 14, 224) if real_size else (32, 2, 4, 64, 32, 8, 32)
    CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=width, intermediate_size=inner, num_hidden_layers=layers, num_attention_heads=heads, image_size=image,
        patch_size=patch, projection_dim=dim,
    )).save_pretrained(str(folder / "image_encoder"), safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": crop}, crop_size={"height": crop, "width": crop}, do_center_crop=True,
                       do_resize=True, do_normalize=True, do_rescale=True).save_pretrained(str(folder / "feature_extractor"))
    DDIMScheduler.from_config(_DDIM_CONFIG).save_pretrained(str(folder / "scheduler"))
    CLIPCameraProjection(embedding_dim=dim, additional_embeddings=4).save_pretrained(
        str(folder / "clip_camera_projection"), safe_serialization=True)
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "Zero1to3StableDiffusionPipeline", "_diffusers_version": "0.24.0",
        "clip_camera_projection": ["pipeline_zero1to3", "CLIPCameraProjection"],
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        "requires_safety_checker": False, "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }, indent=2))


def ensure_tiny(model_id: str, cache_dir: str | Path, writer) -> Path:
    """The folder of tiny model ``model_id`` under ``cache_dir``, written on first use by
    ``writer(folder)`` (the teacher's ``tiny_writer``). Safe when several workers (Ray actors,
    test processes) ask at once: each writes its own temporary folder and the first rename
    wins; the others discard theirs."""
    import os
    import shutil

    from .quiet import quiet_libraries

    quiet_libraries()
    folder = Path(cache_dir) / model_id
    if (folder / "model_index.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f"{folder.name}.partial-{os.getpid()}-{os.urandom(3).hex()}")
    try:
        writer(tmp)
        if folder.exists() and not (folder / "model_index.json").is_file():
            shutil.rmtree(folder, ignore_errors=True)  # an incomplete folder left by an older version
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def real_size_overrides(root: str | Path) -> dict[str, str]:
    """Random-weight models with the real architectures of the default teachers (Stable
    Diffusion 2.1 base, Zero-1-to-3 XL), written once under ``root``, as model-id overrides
    (``backend.models.set_model_overrides``): the real loading and guidance code then runs the
    real compute without any download (benchmarks and the GPU check)."""
    from .registry import STABLE_DIFFUSION, ZERO123

    root = Path(root)
    out = {}
    for spec, writer, name in ((ZERO123, write_tiny_zero123, "zero123"),
                               (STABLE_DIFFUSION, write_tiny_stable_diffusion, "sd")):
        folder = root / name
        if not (folder / "model_index.json").is_file():
            print(f"writing a real-size random {spec.name} to {folder} ...", flush=True)
            writer(folder, real_size=True)
        out[spec.model()[0]] = str(folder)
    return out


def _tiny_sdxl_unet(real_size: bool = False):
    """A tiny UNet in SDXL's layout: 64-d context (two 32-d text towers side by side) and the
    "text_time" added embedding (the pooled text embedding and six size/crop numbers); with
    ``real_size`` SDXL base 1.0's (``unet/config.json``: 320/640/1280 channels, 1/2/10 transformer
    layers, head dims 5/10/20, 2048-d context, 1280-d pooled embedding + 6 x 256 time ids,
    128^2 latents; 2.57 B parameters)."""
    from diffusers import UNet2DConditionModel

    if real_size:
        return UNet2DConditionModel(
            sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
            use_linear_projection=True, norm_num_groups=32, addition_embed_type="text_time",
            addition_time_embed_dim=256, projection_class_embeddings_input_dim=1280 + 6 * 256,
        )
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64, attention_head_dim=8, norm_num_groups=32, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8,
    )


def write_tiny_sdxl(folder: str | Path, seed: int = 0, real_size: bool = False) -> Path:
    """Write a tiny SDXL in the layout of ``stabilityai/stable-diffusion-xl-base-1.0`` (tokenizer and
    text_encoder, tokenizer_2 and text_encoder_2 with a projection, a UNet with SDXL's added
    embeddings, vae, scheduler), random weights, 32x32 images: the ``xl`` code path without a
    download; or with ``real_size`` SDXL's architectures (CLIP ViT-L/14's and OpenCLIP ViT-bigG's
    text towers, the UNet of :func:`_tiny_sdxl_unet`, Stable Diffusion's VAE at SDXL's scaling
    factor 0.13025; 1024^2 images), random weights, for benchmarks of the real compute."""
    from diffusers import DDIMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vocab_size = write_tiny_tokenizer(folder / "tokenizer")
        write_tiny_tokenizer(folder / "tokenizer_2")
        tok = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
        ids = dict(vocab_size=vocab_size, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                   eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        # (width, layers, heads, inner, projection, activation): SDXL's text_encoder (CLIP ViT-L/14) and
        # text_encoder_2 (OpenCLIP ViT-bigG/14) config.json files
        towers = ((768, 12, 12, 3072, 768, "quick_gelu"), (1280, 32, 20, 5120, 1280, "gelu")) if real_size else \
            ((32, 2, 4, 64, 32, "quick_gelu"),) * 2
        for (width, layers, heads, inner, proj, act), name, cls in zip(
                towers, ("text_encoder", "text_encoder_2"), (CLIPTextModel, CLIPTextModelWithProjection)):
            config = CLIPTextConfig(hidden_size=width, intermediate_size=inner, num_hidden_layers=layers,
                                    num_attention_heads=heads, projection_dim=proj, hidden_act=act, **ids)
            cls(config).save_pretrained(str(folder / name), safe_serialization=True)
        _tiny_sdxl_unet(real_size).save_pretrained(str(folder / "unet"), safe_serialization=True)
        vae = _tiny_vae(real_size)
        if real_size:
            vae.register_to_config(scaling_factor=0.13025, sample_size=1024)
        vae.save_pretrained(str(folder / "vae"), safe_serialization=True)
    DDIMScheduler.from_config(_DDIM_CONFIG).save_pretrained(str(folder / "scheduler"))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    return folder


def write_tiny_controlnet_xl(folder: str | Path, seed: int = 0) -> Path:
    """A tiny depth ControlNet of the tiny SDXL UNet (:func:`write_tiny_controlnet`, SDXL's layout)."""
    return write_tiny_controlnet(folder, seed, xl=True)


def write_tiny_controlnet(folder: str | Path, seed: int = 0, real_size: bool = False, xl: bool = False) -> Path:
    """Write a tiny depth ControlNet in ``ControlNetModel``'s layout (config.json and safetensors
    at the top of the folder, as ``lllyasviel/control_v11f1p_sd15_depth``), made with diffusers'
    ``ControlNetModel.from_unet`` from the tiny Stable Diffusion UNet's architecture (its
    conditioning embedding downsamples 2x, as the tiny VAE does; its zero convolutions given
    random weights; ``xl``: of the tiny SDXL UNet), or with ``real_size`` from Stable Diffusion 1.5's
    (768-d context, 8x), random weights either way. A ``model_index.json`` marks the folder complete
    (:func:`ensure_tiny`)."""
    from diffusers import ControlNetModel

    folder = Path(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if real_size:
            net = ControlNetModel.from_unet(_tiny_sdxl_unet(True) if xl else _real_size_unet(4, 768, 64, 8, False))
        else:
            net = ControlNetModel.from_unet(_tiny_sdxl_unet() if xl else _tiny_unet(4, 32, 16),
                                            conditioning_embedding_out_channels=(16, 32))
        if not real_size:
            # from_unet zero-initialises the "zero convolutions" (ControlNet's training start, Zhang
            # et al. 2023 section 3.1), which would make an untrained ControlNet a no-op: give them
            # random weights so that the depth reaches the UNet, as in a trained one.
            for conv in [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]:
                torch.nn.init.normal_(conv.weight, std=0.05)
    net.save_pretrained(str(folder), safe_serialization=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "ControlNetModel"}))
    return folder


def real_size_paint_overrides(root: str | Path, variant: str = "default") -> dict[str, str]:
    """Random-weight models with the real architectures of a texture painting teacher variant
    (``default``: Stable Diffusion 1.5 and its depth ControlNet; ``xl``: SDXL base 1.0 and its depth
    ControlNet), written once under ``root``, as model-id overrides
    (``backend.models.set_model_overrides``), for benchmarks of the real compute.

    Raises:
        ValueError: ``variant`` is neither.
    """
    from .quiet import quiet_libraries
    from .registry import DEPTH_CONTROLNET, SD_DEPTH

    writers = {"default": (("sd15", lambda f: write_tiny_stable_diffusion(f, real_size=True, arch="sd15")),
                           ("controlnet-sd15", lambda f: write_tiny_controlnet(f, real_size=True))),
               "xl": (("sdxl", lambda f: write_tiny_sdxl(f, real_size=True)),
                      ("controlnet-sdxl", lambda f: write_tiny_controlnet(f, real_size=True, xl=True)))}
    if variant not in writers:
        raise ValueError(f"no real-size stand-in for the variant {variant!r}: use one of {', '.join(writers)}")
    quiet_libraries()
    root = Path(root)
    out = {}
    for spec, (name, write) in zip((SD_DEPTH, DEPTH_CONTROLNET), writers[variant]):
        folder = root / name
        if not (folder / "model_index.json").is_file():
            print(f"writing a real-size random {spec.name} ({variant}) to {folder} ...", flush=True)
            write(folder)
        out[spec.model(variant)[0]] = str(folder)
    return out


def write_tiny_ip_adapter(folder: str | Path, seed: int = 0) -> Path:
    """Write a tiny IP-Adapter in the layout of ``h94/IP-Adapter`` for the tiny Stable Diffusion
    UNet: ``models/image_encoder`` (a ``CLIPVisionModelWithProjection``) and
    ``models/ip-adapter_sd15.safetensors`` with the keys diffusers' ``load_ip_adapter`` reads
    (``image_proj.proj``/``norm``: the image embedding to 4 tokens of the UNet's context;
    ``ip_adapter.{1,3,5,...}.to_k_ip``/``to_v_ip``: one pair per cross-attention layer, in the
    order of ``unet.attn_processors``), random weights."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    folder = Path(folder)
    sub = folder / "models"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        embed = 32
        CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8,
            projection_dim=embed)).save_pretrained(str(sub / "image_encoder"), safe_serialization=True)
        unet = _tiny_unet(4, 32, 16)
        cross, tokens = unet.config.cross_attention_dim, 4
        tensors = {"image_proj.proj.weight": torch.randn(cross * tokens, embed) * 0.2,
                   "image_proj.proj.bias": torch.zeros(cross * tokens),
                   "image_proj.norm.weight": torch.ones(cross), "image_proj.norm.bias": torch.zeros(cross)}
        key_id = 1
        for name, proc in unet.attn_processors.items():
            if name.endswith("attn1.processor"):
                continue
            block = name.split(".")[0]
            channels = unet.config.block_out_channels
            hidden = (channels[-1] if block == "mid_block" else
                      list(reversed(channels))[int(name.split(".")[1])] if block == "up_blocks" else channels[int(name.split(".")[1])])
            for kind in ("to_k_ip", "to_v_ip"):
                tensors[f"ip_adapter.{key_id}.{kind}.weight"] = torch.randn(hidden, cross) * 0.2
            key_id += 2
    save_file(tensors, str(sub / "ip-adapter_sd15.safetensors"))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "IPAdapter"}))
    return folder
