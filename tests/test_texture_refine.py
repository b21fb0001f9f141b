"""Texture refinement: the oracle run that proves it, tiny-model runs through a real server with a
prompt and with a real photo, the mesh kept as it was, clear errors, and the CLI."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from backend.cli import demo_photo
from backend.geometry.export import load_glb
from backend.jobs import JobStore
from backend.worker import run_local
from backend.pipelines import load_builtin
from backend.pipelines.base import Emitter, ParamError
from backend.stages.reconstruction import psnr
from backend.pipelines.specs.texture_refine import MAX_TRIANGLES, non_manifold_edges
from backend.pipelines.texture_refine import TextureRefinePipeline
from backend.stages.mesh_input import corner_uv_mesh
from backend.render.mesh import render_mesh
from scenes import make_test_object, render_rgba, spiral_views, write_object_glb
from shared_protocol.client import JobError
from conftest import cli


def _student(raw: dict, with_uv: bool) -> dict:
    inputs = {"vertices": raw["vertices"].astype(np.float32), "faces": raw["faces"].astype(np.int32)}
    if with_uv:
        inputs["uv"] = raw["uv"][raw["faces"]].reshape(-1, 2).astype(np.float32)
    return inputs


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_oracle_run_recovers_the_texture(tmp_path):
    """The acceptance run: the object's own UVs, a grey start, the oracle, ``fast``."""
    with_uv = True
    mesh, raw = make_test_object()
    glb = write_object_glb(tmp_path / "gt.glb", raw)
    inputs = _student(raw, with_uv)
    start = time.monotonic()
    job, result = run_local(JobStore(tmp_path / "jobs"), TextureRefinePipeline, "fast",
                            {"teacher": "oracle", "oracle_mesh": str(glb)}, inputs, 0, Emitter())
    elapsed = time.monotonic() - start
    # The mesh is never changed: same vertices, faces and order.
    assert np.array_equal(result.arrays["vertices"], inputs["vertices"])
    assert np.array_equal(result.arrays["faces"], inputs["faces"])
    assert result.meta["unwrapped"] is (not with_uv) and result.meta["init"] == "grey"
    if with_uv:
        assert np.array_equal(result.arrays["uv"], inputs["uv"])
    # 8 held-out views (not the training distribution's seed), against the ground truth.
    cams = spiral_views(8, size=128, seed=11)
    gt = torch.from_numpy(render_rgba(mesh, cams)).float() / 255.0
    gt_rgb = gt[..., :3] * gt[..., 3:] + (1.0 - gt[..., 3:])
    with torch.no_grad():
        refined = render_mesh(load_glb(job.dir / "textured.glb"), cams, background=1.0)
    grey = torch.where(refined.alpha > 0.5, torch.full_like(refined.rgb, 0.5), torch.ones_like(refined.rgb))
    score = psnr(refined.rgb, gt_rgb)
    print(f"texture_refine oracle ({'uv' if with_uv else 'no uv'}): {elapsed:.0f} s, PSNR {score:.2f} dB")
    assert score >= 25.0
    assert score > psnr(grey, gt_rgb) + 8  # far from the grey start


def test_a_mesh_without_uvs_is_unwrapped_and_textured_geometry_untouched(tmp_path):
    """The no-UV case differs from the UV case only by the unwrap: xatlas gives the mesh an atlas
    (meta ``unwrapped``), a few texture steps paint it, and the vertices and faces come back
    unchanged, in order."""
    _, raw = make_test_object(texture_size=64)
    glb = write_object_glb(tmp_path / "gt.glb", raw)
    inputs = _student(raw, with_uv=False)
    job, result = run_local(JobStore(tmp_path / "jobs"), TextureRefinePipeline, "tiny",
                            {"teacher": "oracle", "oracle_mesh": str(glb), "texture_iters": 3}, inputs, 0, Emitter())
    assert result.meta["unwrapped"] and result.meta["init"] == "grey"
    assert np.array_equal(result.arrays["vertices"], inputs["vertices"])
    assert np.array_equal(result.arrays["faces"], inputs["faces"])
    uv = result.arrays["uv"].reshape(-1, 3, 2)
    assert uv.shape[0] == len(inputs["faces"]) and 0 <= uv.min() and uv.max() <= 1
    assert (np.abs(np.cross(uv[:, 1] - uv[:, 0], uv[:, 2] - uv[:, 0])) > 0).mean() > 0.99  # every face gets texels
    assert load_glb(job.dir / "textured.glb").texture is not None


@pytest.mark.slow
def test_prompt_and_real_photo_through_a_server(make_server, make_client):
    server = make_server(pipelines=load_builtin())
    client = make_client(server.endpoint)
    _, raw = make_test_object(texture_size=128)
    inputs = _student(raw, with_uv=True)
    with_prompt = client.submit("texture_refine", preset="tiny", params={"prompt": "a mossy stone"}, inputs=inputs,
                                seed=1)
    result = client.wait(with_prompt, timeout=300)
    assert with_prompt.preview_counts.get("texture", 0) >= 1 and with_prompt.progress["stage"] == "texture"
    assert result["meta"]["teacher"] == "StableDiffusionGuidance" and result["meta"]["init"] == "grey"
    assert np.array_equal(result["arrays"]["faces"], inputs["faces"])
    assert result["arrays"]["texture"].shape == (512, 512, 3) and result["files"]["textured.glb"].nbytes > 1000
    # A real photo (RGB, no mask): the mesh's own silhouette from the reference camera is the mask,
    # and the texture starts from the photo baked onto the mesh.
    photo, _ = demo_photo()
    inputs = _student(raw, with_uv=False)
    inputs["image"] = photo
    with_photo = client.submit("texture_refine", preset="tiny", params={}, inputs=inputs, seed=2)
    result = client.wait(with_photo, timeout=300)
    assert result["meta"]["teacher"] == "Zero123Guidance" and result["meta"]["init"] == "reference bake"
    assert result["meta"]["unwrapped"] and result["arrays"]["uv"].shape == (3 * len(inputs["faces"]), 2)
    assert with_photo.preview_counts.get("mesh", 0) == 1  # the new UVs were streamed before the texture
    ref = np.asarray(result["files"]["reference.png"])
    assert ref.size > 0
    texture = result["arrays"]["texture"].astype(np.float32)
    assert texture.std() > 5 and abs(texture.mean() - 128) > 1  # photo colours, not the grey default


def test_existing_texture_is_the_start(tmp_path):
    _, raw = make_test_object(texture_size=512)
    inputs = _student(raw, with_uv=True)
    inputs["texture"] = raw["texture"] if raw["texture"].dtype == np.uint8 else (raw["texture"] * 255 + 0.5).astype(np.uint8)
    _, result = run_local(JobStore(tmp_path / "jobs"), TextureRefinePipeline, "tiny", {"prompt": "x", "texture_iters": 0},
                          inputs, 0, Emitter())
    assert result.meta["init"] == "existing"
    assert np.abs(result.arrays["texture"].astype(int) - inputs["texture"][..., :3].astype(int)).max() <= 1


def test_bad_meshes_get_clear_messages(tmp_path):
    store = JobStore(tmp_path / "jobs")
    too_big = {"vertices": np.zeros((3, 3), np.float32), "faces": np.zeros((MAX_TRIANGLES + 1, 3), np.int32)}
    with pytest.raises(ParamError, match="at most 200000.*Decimate"):
        run_local(store, TextureRefinePipeline, "tiny", {"prompt": "x"}, too_big, 0, Emitter())
    fin = {"vertices": np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0, -1, 0]], np.float32),
           "faces": np.array([[0, 1, 2], [1, 0, 3], [0, 1, 4]], np.int32)}  # edge 0-1 shared by three triangles
    assert non_manifold_edges(fin["faces"]) == 1
    with pytest.raises(ParamError, match="non-manifold: 1 edges"):
        run_local(store, TextureRefinePipeline, "tiny", {"prompt": "x"}, fin, 0, Emitter())
    ok = {"vertices": fin["vertices"], "faces": fin["faces"][:2]}
    with pytest.raises(ParamError, match="give a 'prompt', a reference 'image', or both"):
        run_local(store, TextureRefinePipeline, "tiny", {}, ok, 0, Emitter())
    with pytest.raises(ParamError, match="one UV per triangle corner"):
        run_local(store, TextureRefinePipeline, "tiny", {"prompt": "x"}, dict(ok, uv=np.zeros((5, 2), np.float32)), 0,
                  Emitter())
    with pytest.raises(ParamError, match="index vertices"):
        run_local(store, TextureRefinePipeline, "tiny", {"prompt": "x"}, dict(ok, faces=np.array([[0, 1, 9]], np.int32)),
                  0, Emitter())
    assert not any(store.root.iterdir())  # nothing was written for a refused job


def test_the_sds_option_takes_dreamtimes_schedule_and_prior(tmp_path):
    from backend.guidance import load_teacher
    from backend.schedules import make_schedule

    seen = []

    class Record(Emitter):
        def _on_progress(self, msg):
            if msg["stage"] == "texture" and "t=" in (msg["message"] or ""):
                seen.append(int(msg["message"].split("t=")[1]))

    _, raw = make_test_object(texture_size=128)
    params = {"prompt": "x", "texture_iters": 12, "lambda_sds": 0.1, "timestep_schedule": "dreamtime", "m1": 400.0,
              "m2": 200.0, "s1": 100.0, "s2": 50.0}
    run_local(JobStore(tmp_path / "jobs"), TextureRefinePipeline, "tiny", params, _student(raw, True), 0, Record())
    teacher = load_teacher("stable-diffusion", "tiny", "cpu")
    expected = make_schedule("dreamtime", 20, 500, m1=400, m2=200, s1=100, s2=50, alphas_cumprod=teacher.alphas_cumprod)
    assert seen == [expected(step, 12) for step in range(1, 13)] and seen[-1] == 20


def test_corner_uv_mesh_splits_only_at_seams():
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    verts = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    shared = np.array([[0, 0], [1, 0], [1, 1], [0, 0], [1, 1], [0, 1]], np.float32)
    assert len(corner_uv_mesh(verts, faces, shared).vertices) == 4
    seam = shared.copy()
    seam[3] = [0.5, 0.5]  # vertex 0 has two UVs
    split = corner_uv_mesh(verts, faces, seam)
    assert len(split.vertices) == 5
    assert np.allclose(split.uv[split.faces].reshape(-1, 2), seam) and np.allclose(split.vertices[split.faces],
                                                                                   verts[faces])


def test_cli_refine_texture(tmp_path):
    _, raw = make_test_object(texture_size=128)
    glb = write_object_glb(tmp_path / "object.glb", raw)
    out = tmp_path / "refined.glb"
    done = cli("refine-texture", glb, "--prompt", "rusty metal", "--preset", "tiny", "--fresh", "--out", out, "--device",
               "cpu", "--output-dir", tmp_path / "jobs")
    assert done.exit_code == 0, done.output[-2000:]
    refined, original = load_glb(out), load_glb(glb)
    assert refined.texture.shape == (512, 512, 3) and out.with_suffix(".png").stat().st_size > 1000
    assert np.allclose(np.sort(refined.vertices.numpy(), 0), np.sort(original.vertices.numpy(), 0), atol=1e-6)
    nothing = cli("refine-texture", glb, "--preset", "tiny")
    assert nothing.exit_code == 1 and "--prompt TEXT, --image PATH, or both" in " ".join(nothing.output.split())


def test_server_refuses_a_bad_mesh_and_keeps_serving(make_server, make_client):
    server = make_server(pipelines=load_builtin())
    client = make_client(server.endpoint)
    bad = {"vertices": np.eye(3, dtype=np.float32), "faces": np.array([[0, 1, 5]], np.int32)}
    with pytest.raises(JobError, match="index vertices"):
        client.wait(client.submit("texture_refine", preset="tiny", params={"prompt": "x"}, inputs=bad), timeout=120)
    assert client.ping() < 30
