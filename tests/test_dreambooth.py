"""LoRA adapters on the tiny Stable Diffusion's UNet (peft through diffusers, the real loaders):
two adapters on one UNet, DreamBooth fine-tuning with prior preservation, save and reload."""
from __future__ import annotations

import pytest
import torch

from backend.cameras import orbit_cameras
from backend.guidance import load_teacher
from backend.render.mesh import render_mesh
from backend.guidance.lora import add_lora, denoising_loss, load_lora, save_lora, use_adapter
from backend.stages.dreambooth import finetune_lora
from scenes import make_test_object


@pytest.fixture(scope="module")
def renders():
    mesh, _ = make_test_object(texture_size=64)
    cams = orbit_cameras(torch.full((6,), 10.0), torch.linspace(0.0, 300.0, 6), 2.0, 49.1, 32, 32)
    with torch.no_grad():
        return render_mesh(mesh, cams).rgb.permute(0, 3, 1, 2), cams


def _unet_out(unet, text, seed=3):
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return unet(x, torch.tensor([500]), encoder_hidden_states=text[:1]).sample


def test_two_adapters_live_on_one_unet_start_as_the_base_and_switch(renders):
    images, _ = renders
    sd = load_teacher("stable-diffusion", "tiny", "cpu")
    text = sd._embed(["a sks object"])
    base = _unet_out(sd.parts.unet, text)
    add_lora(sd.parts.unet, "dreambooth")
    add_lora(sd.parts.unet, "lora", seed=1)
    with pytest.raises(ValueError, match="already has an adapter named 'lora'"):
        add_lora(sd.parts.unet, "lora")
    for name in ("dreambooth", "lora"):
        with use_adapter(sd.parts.unet, name):
            assert torch.equal(_unet_out(sd.parts.unet, text), base)  # LoRA's up-projection starts at 0
    finetune_lora(sd, "dreambooth", images[:2], ["a sks object"] * 2, 5, lr=1e-2)
    with use_adapter(sd.parts.unet, "dreambooth"):
        tuned = _unet_out(sd.parts.unet, text)
    with use_adapter(sd.parts.unet, "lora"):
        other = _unet_out(sd.parts.unet, text)
    with use_adapter(sd.parts.unet, None):
        plain = _unet_out(sd.parts.unet, text)
    assert not torch.allclose(tuned, base) and torch.equal(other, base) and torch.equal(plain, base)
    with pytest.raises(ValueError, match="no adapter named 'vsd'"):
        finetune_lora(sd, "vsd", images[:2], ["x"] * 2, 1, lr=1e-2)
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        finetune_lora(sd, "lora", images[:2], ["x"], 1, lr=1e-2)


@pytest.mark.slow
def test_dreambooth_loss_on_the_restored_renders_falls_by_a_third_and_the_saved_lora_reloads(renders, tmp_path):
    images, cams = renders
    sd = load_teacher("stable-diffusion", "tiny", "cpu")
    prompts = ["a sks object"] * len(images)
    # The renders augmented as texture boosting does: noised to t' = 0.5 and restored.
    sd.encode_condition(prompt="an object")
    images = sd.refine(images, cams, strength=0.5, steps=4, generator=torch.Generator().manual_seed(6))
    # Prior preservation: the base model's own samples of the class prompt (SDEdit from noise).
    prior = sd.refine(torch.zeros(2, 3, 32, 32), cams[:2], strength=1.0, steps=5,
                      generator=torch.Generator().manual_seed(4))
    add_lora(sd.parts.unet, "dreambooth")
    with torch.no_grad():
        latents, text = sd.encode(images), sd._embed(prompts)
    fixed = torch.Generator().manual_seed(5)
    t = torch.randint(0, 1000, (len(images),), generator=fixed)
    noise = torch.randn(latents.shape, generator=fixed)

    def held_loss() -> float:
        with torch.no_grad(), use_adapter(sd.parts.unet, "dreambooth"):
            return float(denoising_loss(sd.parts, latents, text, t, noise))

    before = held_loss()
    losses = finetune_lora(sd, "dreambooth", images, prompts, 100, lr=1e-2, batch_size=2,
                           prior=(prior, ["an object"] * 2), generator=torch.Generator().manual_seed(0))
    after = held_loss()
    print(f"DreamBooth LoRA denoising loss on the restored renders: {before:.3f} -> {after:.3f}")
    assert len(losses) == 100 and after <= 0.7 * before, (before, after)

    path = save_lora(sd.parts.unet, "dreambooth", tmp_path / "job" / "dreambooth_lora.safetensors")
    fresh = load_teacher("stable-diffusion", "tiny", "cpu")
    base = _unet_out(fresh.parts.unet, text)
    load_lora(fresh.parts.unet, "dreambooth", path)
    reloaded = _unet_out(fresh.parts.unet, text)
    with use_adapter(sd.parts.unet, "dreambooth"):
        trained = _unet_out(sd.parts.unet, text)
    assert (reloaded - base).abs().max() > 1e-3 and torch.allclose(reloaded, trained, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="no LoRA adapter"):
        load_lora(fresh.parts.unet, "other", tmp_path / "missing.safetensors")
