"""Texture painting (SyncMVD): the projection links and the fill, the depth ControlNet teacher,
the acceptance runs with the plain and the prior oracle against their baselines, the mesh kept,
a real server, and the CLI."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from backend.cameras import orbit_cameras
from backend.geometry.export import load_glb
from backend.geometry.view_projection import ViewTextureProjection, fill_texture
from backend.jobs import JobStore
from backend.pipelines import load_builtin
from backend.pipelines.base import Emitter, ParamError
from backend.pipelines.specs.texture_refine import MAX_TRIANGLES
from backend.pipelines.texture_paint import TexturePaintPipeline, painting_cameras
from backend.pipelines.texture_refine import TextureRefinePipeline
from backend.render.mesh import TexturedMesh, render_mesh
from backend.stages.mesh_input import normalising_transform
from backend.stages.reconstruction import psnr
from backend.worker import run_local
from conftest import cli
from scenes import make_test_object, write_object_glb


def _grey_student(raw: dict, with_uv: bool = True) -> dict:
    inputs = {"vertices": raw["vertices"].astype(np.float32), "faces": raw["faces"].astype(np.int32)}
    if with_uv:
        inputs["uv"] = raw["uv"][raw["faces"]].reshape(-1, 2).astype(np.float32)
    return inputs


def _held_out(size: int = 128):
    """12 held-out cameras in the normalised frame of the painting: elevations -10..25, azimuths
    between the ring's views (seed 21), the painting's radius and field of view."""
    g = torch.Generator().manual_seed(21)
    el = torch.empty(12).uniform_(-10, 25, generator=g)
    az = (torch.arange(12) * 30.0 + 15.0 + torch.empty(12).uniform_(-5, 5, generator=g)) % 360 - 180
    return orbit_cameras(el, az, 1.8, 40.0, size, size)


def _scores(job_dir, mesh: TexturedMesh, modes: int) -> list[float]:
    """Held-out PSNR (over white) of the painted GLB against each prior mode's render (mode 0
    the truth; mode k the texture's hue turned by 360 k / K degrees)."""
    from backend.guidance.oracle import OracleGuidance

    centre, scale = normalising_transform(mesh.vertices.numpy())
    oracle = OracleGuidance(TexturedMesh((mesh.vertices - torch.from_numpy(centre)) * scale, mesh.faces, mesh.uv,
                                         mesh.texture), modes=modes)
    painted = load_glb(job_dir / "textured.glb")
    painted = TexturedMesh((painted.vertices - torch.from_numpy(centre)) * scale, painted.faces, painted.uv, painted.texture)
    cams = _held_out()
    with torch.no_grad():
        got = render_mesh(painted, cams, background=1.0).rgb
        return [psnr(got, render_mesh(m, cams, background=1.0).rgb) for m in oracle.mode_meshes]


# ---------------------------------------------------------------------------------- parts
def test_views_projected_into_the_texture_and_back_are_the_views():
    """A texture rendered into views and projected back is the texture where the views see it;
    rendering that back gives the same views (the links agree both ways)."""
    mesh, _ = make_test_object(texture_size=128)
    centre, scale = normalising_transform(mesh.vertices.numpy())
    normal = TexturedMesh((mesh.vertices - torch.from_numpy(centre)) * scale, mesh.faces, mesh.uv, mesh.texture)
    cams = painting_cameras({"ring_views": 8, "ring_elevation": 0.0, "cap_views": "above", "cap_elevation": 30.0,
                             "radius": 1.8, "fovy": 40.0}, 128)
    links = ViewTextureProjection.build(normal, cams, 128)
    assert links.views == 10 and links.pixel_mask.float().mean() > 0.1
    truth = normal.texture
    views, ok = links.to_views(truth)
    with torch.no_grad():
        rendered = render_mesh(normal, cams, background=0.0)
    assert torch.equal(ok[:, 0], rendered.alpha[..., 0] > 0.5)
    assert (views.permute(0, 2, 3, 1) - rendered.rgb)[ok[:, 0]].abs().max() < 1e-4  # the mesh renderer's own sampling
    texture, weight = links.to_texture(views, power=2.0)
    seen = weight > 0
    assert seen.float().sum() > 0.6 * links.covered.float().sum()
    err = (texture - truth)[seen].abs()
    assert err.mean() < 0.03  # resampled once at the views' resolution
    again = links.synchronise(views, power=2.0)
    assert (again - views)[ok.expand_as(views)].abs().mean() < 0.03


def test_the_fill_stays_inside_each_uv_island_and_pads_outside():
    covered = np.zeros((32, 32), bool)
    covered[2:12, 2:12] = True   # island A
    covered[2:12, 14:24] = True  # island B, 2 texels away
    covered[20:30, 2:12] = True  # island C, seen nowhere
    seen = np.zeros_like(covered)
    seen[2:12, 2:4] = True       # A seen at its left edge only
    seen[2:12, 14:24] = True
    tex = np.zeros((32, 32, 3), np.float32)
    tex[2:12, 2:4] = (1.0, 0.0, 0.0)
    tex[2:12, 14:24] = (0.0, 0.0, 1.0)
    out = fill_texture(tex, seen, covered)
    assert np.allclose(out[2:12, 2:12], (1, 0, 0))  # A is red up to its right edge, next to blue B
    assert np.allclose(out[2:12, 14:24], (0, 0, 1))
    mean = tex[seen].mean(0)
    assert np.allclose(out[20:30, 2:12], mean)  # an island no view saw: the mean of what was seen, never black
    assert np.allclose(out[0, 0], (1, 0, 0)) and np.allclose(out[31, 31], out[29, 11])  # padding from the nearest chart
    assert np.isfinite(out).all()


def test_depth_control_image_is_normalised_inverse_depth():
    from backend.guidance.controlnet import normalised_inverse_depth

    depth = torch.tensor([[[0.0, 2.0], [1.0, 4.0]]])
    out = normalised_inverse_depth(depth)
    # 1/z = 0.5, 1, 0.25 over the object -> (x - 0.25) / 0.75; the background stays 0
    assert torch.allclose(out, torch.tensor([[[0.0, 1 / 3], [1.0, 0.0]]]), atol=1e-6)
    assert normalised_inverse_depth(torch.zeros(1, 3, 3)).abs().max() == 0


def test_tiny_depth_controlnet_teacher_is_conditioned_on_the_depth():
    """The real loading code on the tiny models (random weights in ControlNetModel's layout): the
    noise prediction changes with the depth it is shown, and with the conditioning scale."""
    from backend.guidance import load_teacher

    teacher = load_teacher("sd-depth", "tiny", "cpu")
    assert type(teacher).__name__ == "DepthControlNetGuidance" and teacher.guidance_scale == 15.5
    mesh, _ = make_test_object(texture_size=64)
    centre, scale = normalising_transform(mesh.vertices.numpy())
    teacher.geometry = TexturedMesh((mesh.vertices - torch.from_numpy(centre)) * scale, mesh.faces, mesh.uv)
    teacher.encode_condition(prompt="a wooden toy", negative_prompt="blurry")
    cams = orbit_cameras(torch.tensor([0.0, 0.0]), torch.tensor([0.0, 90.0]), 1.8, 40.0, 32, 32)
    control = teacher.control_image(cams)
    assert control.shape == (2, 3, 32, 32) and 0 <= control.min() and control.max() <= 1
    assert not torch.allclose(control[0], control[1])  # two views of the object, two depth maps
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)).expand(2, -1, -1, -1)
    t = torch.tensor([500, 500])
    with torch.no_grad():
        eps = teacher.predict_noise(x, t, cams)
        teacher.conditioning_scale = 0.0
        off = teacher.predict_noise(x, t, cams)
    assert eps.shape == x.shape and torch.isfinite(eps).all()
    assert not torch.allclose(eps[0], eps[1])  # same noise, different depth: different prediction
    assert torch.allclose(off[0], off[1], atol=1e-5)  # scale 0: the depth has no say


# ---------------------------------------------------------------------------------- acceptance
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_prior_oracle_paints_one_mode_where_apart_and_refine_do_not(tmp_path):
    """The acceptance runs: a grey mesh with its own UVs, the prior oracle (K=2, sigma=0.3),
    ``fast``, seed 0; synchronised painting against the same views denoised apart and against
    texture_refine from grey; then the plain oracle (K=1, sigma=0)."""
    mesh, raw = make_test_object()
    glb = write_object_glb(tmp_path / "gt.glb", raw)
    inputs = _grey_student(raw)
    prior = {"teacher": "oracle", "oracle_mesh": str(glb), "oracle_modes": 2, "oracle_sigma": 0.3}
    store = JobStore(tmp_path / "jobs")
    figures = {}
    for name, pipeline, params in (("synchronised", TexturePaintPipeline, prior),
                                   ("apart", TexturePaintPipeline, dict(prior, synchronise=False)),
                                   ("texture_refine", TextureRefinePipeline, prior),
                                   ("plain oracle", TexturePaintPipeline, {"teacher": "oracle", "oracle_mesh": str(glb)})):
        start = time.monotonic()
        job, result = run_local(store, pipeline, "fast", params, inputs, 0, Emitter())
        # The mesh is never changed: same vertices, faces, order and UVs.
        assert np.array_equal(result.arrays["vertices"], inputs["vertices"])
        assert np.array_equal(result.arrays["faces"], inputs["faces"])
        assert np.array_equal(result.arrays["uv"], inputs["uv"]) and not result.meta["unwrapped"]
        scores = _scores(job.dir, mesh, params.get("oracle_modes", 1))
        figures[name] = max(scores)
        print(f"texture_paint acceptance, {name}: {time.monotonic() - start:.0f} s, held-out PSNR against the closer "
              f"mode {max(scores):.2f} dB (modes: {', '.join(f'{s:.2f}' for s in scores)})")
    assert figures["synchronised"] >= 27.0
    assert figures["synchronised"] >= figures["apart"] + 3.0
    assert figures["synchronised"] >= figures["texture_refine"] + 3.0
    assert figures["plain oracle"] >= 30.0


def test_a_mesh_without_uvs_is_unwrapped_and_painted_geometry_untouched(tmp_path):
    _, raw = make_test_object(texture_size=64)
    glb = write_object_glb(tmp_path / "gt.glb", raw)
    inputs = _grey_student(raw, with_uv=False)
    events = []

    class Record(Emitter):
        def _on_progress(self, msg):
            events.append(msg["stage"])

    job, result = run_local(JobStore(tmp_path / "jobs"), TexturePaintPipeline, "tiny",
                            {"teacher": "oracle", "oracle_mesh": str(glb)}, inputs, 0, Record())
    assert result.meta["unwrapped"] and result.meta["synchronised"]
    assert np.array_equal(result.arrays["vertices"], inputs["vertices"])
    assert np.array_equal(result.arrays["faces"], inputs["faces"])
    assert result.arrays["uv"].shape == (3 * len(inputs["faces"]), 2)
    assert {"prepare", "latent", "rgb", "fill"} <= set(events)  # progress names the phases
    texture = result.arrays["texture"]
    assert texture.shape == (128, 128, 3) and (texture.reshape(-1, 3).max(1) > 10).all()  # never black


def test_bad_requests_get_one_sentence(tmp_path):
    store = JobStore(tmp_path / "jobs")
    too_big = {"vertices": np.zeros((3, 3), np.float32), "faces": np.zeros((MAX_TRIANGLES + 1, 3), np.int32)}
    with pytest.raises(ParamError, match="at most 200000.*Decimate"):
        run_local(store, TexturePaintPipeline, "tiny", {"prompt": "x"}, too_big, 0, Emitter())
    ok = {"vertices": np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32),
          "faces": np.array([[0, 1, 2], [0, 2, 3]], np.int32)}
    with pytest.raises(ParamError, match="give a 'prompt'"):
        run_local(store, TexturePaintPipeline, "tiny", {}, ok, 0, Emitter())
    with pytest.raises(ParamError, match="multiple of 8.*try 96"):
        run_local(store, TexturePaintPipeline, "tiny", {"prompt": "x", "view_size": 100}, ok, 0, Emitter())
    assert not any(store.root.iterdir())


# ---------------------------------------------------------------------------------- service
@pytest.mark.slow
def test_tiny_models_through_a_server_with_live_previews(make_server, make_client):
    server = make_server(pipelines=load_builtin())
    client = make_client(server.endpoint)
    _, raw = make_test_object(texture_size=64)
    inputs = _grey_student(raw)
    handle = client.submit("texture_paint", preset="tiny", params={"prompt": "a mossy stone"}, inputs=inputs, seed=1)
    result = client.wait(handle, timeout=600)
    assert result["meta"]["teacher"] == "DepthControlNetGuidance" and result["meta"]["init"] == "painted"
    assert handle.preview_counts.get("views", 0) >= 1 and handle.preview_counts.get("texture", 0) >= 2
    assert np.array_equal(result["arrays"]["faces"], inputs["faces"])
    assert np.array_equal(result["arrays"]["uv"], inputs["uv"])
    assert result["arrays"]["texture"].shape == (128, 128, 3) and result["files"]["textured.glb"].nbytes > 1000


def test_cli_paint_texture(tmp_path):
    _, raw = make_test_object(texture_size=64)
    glb = write_object_glb(tmp_path / "object.glb", raw)
    out = tmp_path / "painted.glb"
    from PIL import Image

    from backend.cli import demo_photo

    Image.fromarray(demo_photo()[0]).save(tmp_path / "ref.png")
    done = cli("paint-texture", glb, "--prompt", "rusty metal", "--image", tmp_path / "ref.png", "--preset", "tiny",
               "--param", "steps=3", "--out", out, "--device", "cpu", "--output-dir", tmp_path / "jobs")
    assert done.exit_code == 0, done.output[-2000:]
    painted, original = load_glb(out), load_glb(glb)
    assert painted.texture.shape == (128, 128, 3) and out.with_suffix(".png").stat().st_size > 100
    assert np.allclose(np.sort(painted.vertices.numpy(), 0), np.sort(original.vertices.numpy(), 0), atol=1e-6)
    nothing = cli("paint-texture", glb, "--preset", "tiny")
    assert nothing.exit_code == 1 and "--prompt" in nothing.output
    bad = cli("paint-texture", glb, "--prompt", "x", "--param", "view_size=100")
    assert bad.exit_code == 1 and "multiple of 8" in " ".join(bad.output.split())


def test_the_sdxl_layout_paints_through_the_same_code(tmp_path):
    """The ``xl`` path (two text towers, pooled embeddings and SDXL's size ids into the UNet and
    the ControlNet) on tiny random models in SDXL's layout, read by the same loader."""
    from backend.guidance import load_teacher

    teacher = load_teacher("sd-depth", "tiny-xl", "cpu")
    assert teacher.parts.xl and teacher.parts.controlnet.config.addition_embed_type == "text_time"
    _, raw = make_test_object(texture_size=64)
    inputs = _grey_student(raw)
    _, result = run_local(JobStore(tmp_path / "jobs"), TexturePaintPipeline, "tiny",
                          {"prompt": "a marble bust", "weights": "tiny-xl", "steps": 2}, inputs, 0, Emitter())
    assert result.meta["teacher"] == "DepthControlNetGuidance" and result.arrays["texture"].shape == (128, 128, 3)
    assert np.array_equal(result.arrays["uv"], inputs["uv"])
    teacher.encode_condition(prompt="a marble bust")  # an empty negative prompt is zeros, as SDXL's pipeline has it
    assert teacher.condition["uncond"].abs().max() == 0 and teacher.condition["pooled"].shape == (1, 32)


def test_a_reference_image_conditions_the_painting_through_the_ip_adapter(tmp_path):
    """An optional reference image reaches the UNet through the IP-Adapter (tiny: a random image
    encoder and adapter in h94/IP-Adapter's layout, loaded by diffusers' load_ip_adapter): the same
    seed paints a different texture with it, and the shared UNet gets its own processors back."""
    from backend.cli import demo_photo
    from backend.guidance import load_teacher
    from backend.models import ModelCache

    _, raw = make_test_object(texture_size=64)
    inputs = _grey_student(raw)
    photo, _ = demo_photo()
    store, cache = JobStore(tmp_path / "jobs"), ModelCache()
    params = {"prompt": "a painted wooden toy", "steps": 3}
    _, plain = run_local(store, TexturePaintPipeline, "tiny", params, inputs, 0, Emitter(), models=cache)
    _, with_image = run_local(store, TexturePaintPipeline, "tiny", params, dict(inputs, image=photo), 0, Emitter(),
                              models=cache)
    _, plain_again = run_local(store, TexturePaintPipeline, "tiny", params, inputs, 0, Emitter(), models=cache)
    difference = np.abs(plain.arrays["texture"].astype(int) - with_image.arrays["texture"].astype(int)).mean()
    assert difference > 1.0
    opaque = np.concatenate([photo, np.full(photo.shape[:2] + (1,), 255, np.uint8)], -1)  # RGBA, nothing transparent
    _, as_rgba = run_local(store, TexturePaintPipeline, "tiny", params, dict(inputs, image=opaque), 0, Emitter(),
                           models=cache)
    assert np.array_equal(as_rgba.arrays["texture"], with_image.arrays["texture"])  # taken as the photo it is
    assert np.array_equal(plain.arrays["texture"], plain_again.arrays["texture"])  # the adapter was unloaded
    teacher = load_teacher("sd-depth", "tiny", "cpu", cache=cache)
    assert not any("IPAdapter" in type(p).__name__ for p in teacher.parts.unet.attn_processors.values())
    with pytest.raises(ParamError, match="tiny-xl stand-ins have no IP-Adapter"):
        run_local(store, TexturePaintPipeline, "tiny", dict(params, weights="tiny-xl"), dict(inputs, image=photo), 0,
                  Emitter())


@pytest.mark.slow
def test_the_reference_sweep_makes_all_views_settle_on_one_mode():
    """With the prior oracle (K=2, sigma=0.3) the texture alone couples only neighbouring views:
    for these seeds (``fast``'s settings) the views decide at once and settle into regions of
    different modes. Swept outward from the front view while t > 0.8 T, every view ends on the
    same mode."""
    from backend.contracts import CancelToken
    from backend.guidance.oracle import OracleGuidance
    from backend.pipelines.specs.texture_paint import TexturePaintSpec
    from backend.stages.synchronised_views import SyncSettings, synchronised_denoise

    mesh, _ = make_test_object()
    centre, scale = normalising_transform(mesh.vertices.numpy())
    normal = TexturedMesh((mesh.vertices - torch.from_numpy(centre)) * scale, mesh.faces, mesh.uv, mesh.texture)
    p = {k: v.default for k, v in TexturePaintSpec.params.items()} | TexturePaintSpec.presets["fast"]
    oracle = OracleGuidance(normal, modes=2, sigma=0.3)
    cams = painting_cameras(p, p["view_size"])
    links = ViewTextureProjection.build(TexturedMesh(normal.vertices, normal.faces, normal.uv), cams, p["texture_size"])
    with torch.no_grad():
        modes = [render_mesh(m, cams, background=1.0).rgb.permute(0, 3, 1, 2) for m in oracle.mode_meshes]

    def chosen(seed: int, sweep: float) -> set[int]:
        settings = SyncSettings(**{k: p[k] for k in SyncSettings.__dataclass_fields__} | {"reference_sync_end": sweep})
        views = synchronised_denoise(oracle, cams, links, links, settings, torch.Generator().manual_seed(seed), Emitter(),
                                     CancelToken())
        return {int(np.argmax([psnr(views[i:i + 1], m[i:i + 1]) for m in modes])) for i in range(len(cams))}

    for seed in (0, 3):
        assert len(chosen(seed, 0.0)) == 2, seed  # apart regions
        assert len(chosen(seed, 0.2)) == 1, seed  # one mode everywhere


def test_the_ip_adapter_download_takes_its_variants_adapter_and_image_encoder_only():
    from backend.guidance.registry import IP_ADAPTER
    from backend.models import select_download_files

    listing = {"models/ip-adapter_sd15.safetensors": 44_642_768, "models/ip-adapter-plus_sd15.safetensors": 98_183_288,
               "models/image_encoder/config.json": 560, "models/image_encoder/model.safetensors": 2_528_373_448,
               "models/image_encoder/pytorch_model.bin": 2_528_481_905,
               "sdxl_models/ip-adapter_sdxl.safetensors": 702_585_376, "sdxl_models/image_encoder/config.json": 576,
               "sdxl_models/image_encoder/model.safetensors": 3_689_912_664}
    assert select_download_files(listing, IP_ADAPTER.components_of("default")) == [
        "models/image_encoder/config.json", "models/image_encoder/model.safetensors", "models/ip-adapter_sd15.safetensors"]
    assert select_download_files(listing, IP_ADAPTER.components_of("xl")) == [
        "sdxl_models/image_encoder/config.json", "sdxl_models/image_encoder/model.safetensors",
        "sdxl_models/ip-adapter_sdxl.safetensors"]


def test_the_real_size_sdxl_stand_in_has_sdxls_architecture():
    """The bench's real-size SDXL stand-in is built with SDXL base 1.0's UNet (2,567,463,684
    parameters, its published count) and a ControlNet of it; an unknown variant is refused.
    Built on the meta device: no memory, no weights."""
    from diffusers import ControlNetModel

    from backend.guidance import tiny

    with torch.device("meta"):
        unet = tiny._tiny_sdxl_unet(real_size=True)
        controlnet = ControlNetModel.from_unet(unet)
    assert sum(p.numel() for p in unet.parameters()) == 2_567_463_684
    assert unet.config.cross_attention_dim == 2048 and unet.config.addition_embed_type == "text_time"
    assert 1.2e9 < sum(p.numel() for p in controlnet.parameters()) < 1.3e9
    with pytest.raises(ValueError, match="no real-size stand-in for the variant 'tiny'"):
        tiny.real_size_paint_overrides("/nonexistent", "tiny")
