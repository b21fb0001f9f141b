"""Bootstrapped score distillation on the tiny Stable Diffusion (issue 27, item 10): the texture's
gradient is w(t) (eps_DreamBooth - eps_lora), the VSD LoRA learns the current renders as BSD
goes, and BSD never changes the DreamBooth adapter."""
from __future__ import annotations

import pytest
import torch

from backend.cameras import orbit_cameras
from backend.guidance import load_teacher
from backend.guidance.base import cfg
from backend.guidance.bsd import BootstrappedScoreDistillation, personal_prompts
from backend.guidance.stable_diffusion import view_index
from backend.render.mesh import render_mesh
from backend.guidance.lora import add_lora, denoising_loss, lora_parameters, use_adapter
from backend.stages.dreambooth import finetune_lora
from scenes import make_test_object


@pytest.fixture(scope="module")
def boosted():
    """The tiny Stable Diffusion with a DreamBooth adapter fine-tuned a few steps on renders of
    the test object (so that it differs from the base) and a fresh VSD adapter, and BSD over it."""
    mesh, _ = make_test_object(texture_size=64)
    cams = orbit_cameras(torch.tensor([10.0, 20.0]), torch.tensor([0.0, 150.0]), 2.0, 49.1, 32, 32)
    with torch.no_grad():
        images = render_mesh(mesh, cams).rgb.permute(0, 3, 1, 2)
    sd = load_teacher("stable-diffusion", "tiny", "cpu")
    add_lora(sd.parts.unet, "dreambooth", seed=1)
    add_lora(sd.parts.unet, "lora", seed=2)
    finetune_lora(sd, "dreambooth", images, ["a sks object, front view", "a sks object, back view"], 5, lr=1e-2,
                  generator=torch.Generator().manual_seed(0))
    bsd = BootstrappedScoreDistillation(sd, "an object", "sks", "object", guidance_scale=2.0, lora_lr=1e-2)
    yield sd, bsd, images, cams
    sd.parts.unet.delete_adapters(["dreambooth", "lora"])


def test_the_gradient_is_w_times_the_dreambooth_minus_the_lora_noise(boosted):
    sd, bsd, images, cams = boosted
    unet = sd.parts.unet
    with torch.no_grad():
        z = sd.encode(images)
    t = 300
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(4))
    # eps of each adapter computed here, on its own, before BSD's step changes the VSD LoRA.
    tt = torch.full((len(z),), t)
    noisy = sd.parts.scheduler.add_noise(z, noise, tt)
    el, az, _ = __import__("backend.cameras", fromlist=["orbit_angles"]).orbit_angles(cams)
    personal = sd._embed(personal_prompts("sks", "object"))[view_index(el, az)]
    uncond = sd._embed([""]).expand(len(z), -1, -1)
    plain = sd._embed(["an object"]).expand(len(z), -1, -1)
    with torch.no_grad():
        with use_adapter(unet, "dreambooth"):
            e_db = cfg(unet(noisy, tt, encoder_hidden_states=uncond).sample,
                       unet(noisy, tt, encoder_hidden_states=personal).sample, 2.0)
        with use_adapter(unet, "lora"):
            e_lora = unet(noisy, tt, encoder_hidden_states=plain).sample  # CFG 1: the conditional branch
    w = 1.0 - sd.alphas_cumprod[t]
    expected = w * (e_db - e_lora)
    assert float(expected.abs().mean()) > 1e-4  # the adapters differ: a gradient that can be checked
    assert torch.allclose(bsd.gradient(z, noise, cams, t), expected, atol=1e-5, rtol=1e-4)
    # The loss's gradient w.r.t. the latents is that gradient over the batch (noise from the same seed).
    leaf = z.clone().requires_grad_(True)
    bsd.latent_loss(leaf, cams, t, torch.Generator().manual_seed(4)).backward()
    assert torch.allclose(leaf.grad, expected / len(z), atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_the_vsd_lora_learns_the_renders_and_the_dreambooth_adapter_stays_as_it_was(boosted):
    sd, bsd, images, cams = boosted
    unet = sd.parts.unet
    dreambooth = [p.detach().clone() for p in lora_parameters(unet, "dreambooth")]
    lora_before = [p.detach().clone() for p in lora_parameters(unet, "lora")]
    with torch.no_grad():
        z = sd.encode(images)
    plain = bsd.plain.expand(len(z), -1, -1)
    fixed = torch.Generator().manual_seed(9)
    t = torch.randint(0, 1000, (len(z),), generator=fixed)
    noise = torch.randn(z.shape, generator=fixed)

    def vsd_loss() -> float:
        with torch.no_grad(), use_adapter(unet, "lora"):
            return float(denoising_loss(sd.parts, z, plain, t, noise))

    start = vsd_loss()
    gen = torch.Generator().manual_seed(3)
    for _ in range(30):
        leaf = z.clone().requires_grad_(True)
        bsd.latent_loss(leaf, cams, 200, gen).backward()
    end = vsd_loss()
    print("VSD LoRA denoising loss on the renders:", start, "->", end)
    assert end < 0.8 * start, (start, end)
    assert any(not torch.equal(a, b) for a, b in zip(lora_before, lora_parameters(unet, "lora")))
    assert all(torch.equal(a, b) for a, b in zip(dreambooth, lora_parameters(unet, "dreambooth")))
