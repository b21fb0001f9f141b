"""DreamGaussian end to end: tiny teachers on a real photo and a real prompt, determinism,
cancellation, streaming through a real server, and oracle runs that prove the method."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import trimesh

from backend.cli import demo_photo
from backend.jobs import JobStore
from backend.worker import run_local
from backend.pipelines import load_builtin
from backend.contracts import CancelToken, Emitter, JobCancelled
from backend.pipelines.dreamgaussian import DreamGaussianPipeline
from backend.render.gaussians import GaussianModel
from scenes import held_out_scores, load_asset, make_test_object, write_object_glb
from shared_protocol.client import JobError
from conftest import cli


def _check_glb(path):
    scene = trimesh.load(path, force="scene")
    mesh = next(iter(scene.geometry.values()))
    assert len(mesh.faces) > 100 and mesh.visual.uv is not None
    assert np.isfinite(mesh.vertices).all() and np.isfinite(mesh.visual.uv).all()
    image = np.asarray(mesh.visual.material.baseColorTexture)
    assert image.ndim == 3 and image.shape[0] >= 64
    return mesh


@pytest.mark.slow
def test_tiny_image_to_3d_on_a_real_photo_is_deterministic(tmp_path):
    rgb, mask = demo_photo()
    store = JobStore(tmp_path / "jobs")
    job, result = run_local(store, DreamGaussianPipeline, "tiny", {"mode": "image"}, {"image": rgb, "mask": mask}, 7, Emitter())
    mesh = _check_glb(job.dir / "asset.glb")
    assert (job.dir / "reference.png").is_file() and (job.dir / "gaussians.ply").is_file()
    again, _ = run_local(store, DreamGaussianPipeline, "tiny", {"mode": "image"}, {"image": rgb, "mask": mask}, 7, Emitter())
    assert np.array_equal(trimesh.load(again.dir / "asset.glb", force="mesh").vertices,
                          trimesh.load(job.dir / "asset.glb", force="mesh").vertices)
    assert result.arrays["faces"].shape[1] == 3 and len(mesh.faces) == len(result.arrays["faces"])


@pytest.mark.slow
def test_tiny_text_to_3d(tmp_path):
    job, result = run_local(JobStore(tmp_path / "jobs"), DreamGaussianPipeline, "tiny",
                            {"mode": "text", "prompt": "a wooden chair, studio lighting"}, {}, 1, Emitter())
    _check_glb(job.dir / "asset.glb")
    assert result.meta["mode"] == "text" and result.meta["radius"] == 2.5


def test_rgb_without_mask_gets_a_clear_error(tmp_path):
    rgb, _ = demo_photo()
    from backend.images import MaskError

    with pytest.raises(MaskError, match="--mask"):
        run_local(JobStore(tmp_path / "jobs"), DreamGaussianPipeline, "tiny", {"mode": "image"}, {"image": rgb}, 0, Emitter())


@pytest.mark.parametrize("stage, when, sizes", [
    ("gaussians", lambda m: m["stage"] == "gaussians" and m["step"] == 3, {"iters": 200, "mesh_resolution": 32}),
    # Each later stage reached cheaply, the stage itself made long enough that the cancel lands in it.
    ("extraction", lambda m: m.get("message") == "extracting the surface", {"mesh_resolution": 192}),
    ("unwrapping", lambda m: m.get("message") == "UV unwrapping", {"mesh_resolution": 48}),  # xatlas in its own process
    ("baking", lambda m: (m.get("message") or "").startswith("baking"), {"mesh_resolution": 48, "texture_size": 1024,
                                                                          "bake_size": 256}),
    ("texture", lambda m: m["stage"] == "texture" and m["step"] == 3, {"mesh_resolution": 32, "texture_iters": 200}),
])
def test_cancel_in_every_stage_ends_the_job(tmp_path, stage, when, sizes):
    """The cancel flag is set from another thread while the stage runs; the job must end there,
    with JobCancelled."""
    token = CancelToken()
    fired = {}

    class CancelIn(Emitter):
        def _on_progress(self, msg):
            if when(msg) and "at" not in fired:
                fired["at"] = time.monotonic()
                threading.Timer(0.05, token.cancel).start()  # lands inside the stage's work

    params = {"mode": "text", "prompt": "a teapot", "iters": 20, **sizes}
    with pytest.raises(JobCancelled):
        run_local(JobStore(tmp_path / "jobs"), DreamGaussianPipeline, "tiny", params, {}, 0, CancelIn(), cancel=token)
    assert "at" in fired, f"the {stage} stage was never reached"
    assert time.monotonic() - fired["at"] < 30  # a ceiling against a stage that ignores cancel; figures: bench/hardening.py


@pytest.mark.slow
def test_previews_of_all_kinds_arrive_over_a_server(make_server, make_client):
    server = make_server(pipelines=load_builtin())
    client = make_client(server.endpoint)
    rgb, mask = demo_photo()
    handle = client.submit("dreamgaussian", preset="tiny", params={"mode": "image", "texture_iters": 4},
                           inputs={"image": rgb, "mask": mask}, seed=3)
    result = client.wait(handle, timeout=300)
    assert set(handle.preview_counts) == {"gaussians", "mesh", "texture"}
    g = handle.previews["gaussians"]["data"]
    assert g["means"].shape[0] <= 50_000 and g["rgb"].dtype == np.uint8 and g["opacity"].shape == g["means"].shape[:1]
    assert handle.previews["texture"]["data"]["rgba"].shape[-1] == 4
    # the last stage is the output stage's normal map (the tiny mesh was decimated from a finer surface)
    assert handle.progress["stage"] == "output" and handle.progress["step"] == handle.progress["total"] == 1
    assert "normal" in result["meta"]["output"]["maps"]
    assert result["files"]["asset.glb"].nbytes > 1000 and result["meta"]["mode"] == "image"
    with pytest.raises(JobError, match="text mode needs a 'prompt'"):
        client.wait(client.submit("dreamgaussian", preset="tiny", params={"mode": "text"}), timeout=120)


@pytest.mark.slow
def test_cli_generate_text_tiny(tmp_path):
    out = tmp_path / "chair.glb"
    done = cli("generate", "--prompt", "a chair", "--preset", "tiny", "--out", out, "--device", "cpu", "--output-dir",
               tmp_path / "jobs")
    assert done.exit_code == 0, done.output[-2000:]
    _check_glb(out)
    both = cli("generate", "--device", "cpu")
    assert both.exit_code == 1 and "exactly one of --image" in both.output


def _held_out_scores(job_dir, mesh, radius):
    return held_out_scores(mesh, radius, GaussianModel.load_ply(job_dir / "gaussians.ply"), load_asset(job_dir))


@pytest.mark.slow
@pytest.mark.timeout(1500)
@pytest.mark.parametrize("mode", ["image"])
def test_oracle_run_recovers_the_object(tmp_path, mode):
    """The acceptance run of the distillation stages (DreamGaussian image mode, oracle, ``fast``).
    Text mode's oracle run (the textured mesh at 0.979 / 27.80 dB) and DreamTime's, the same code
    with another schedule (0.978 / 27.97 dB), are measured by ``bench/schedules.py``
    (``docs/schedules.md``, its ``dreamgaussian`` and ``dreamtime`` rows);
    DreamCraft3D's acceptance run distils in text mode with the oracle too."""
    mesh, raw = make_test_object()
    glb = write_object_glb(tmp_path / "gt.glb", raw)
    params = {"mode": mode, "teacher": "oracle", "oracle_mesh": str(glb)}
    if mode == "text":
        params["prompt"] = "the test object"
    inputs = {}  # in image mode the oracle renders the reference itself
    start = time.monotonic()
    job, result = run_local(JobStore(tmp_path / "jobs"), DreamGaussianPipeline, "fast", params, inputs, 0, Emitter())
    scores = _held_out_scores(job.dir, mesh, result.meta["radius"])
    print(f"dreamgaussian oracle {mode}: {time.monotonic() - start:.0f} s", {k: round(v, 3) for k, v in scores.items()})
    # About 1.5 dB under the measured figure (seed 0, CPU): 0.982 / 25.64 dB.
    floor = {"image": 24.0}[mode]
    assert scores["mesh_iou"] >= 0.96 and scores["mesh_psnr"] >= floor, scores


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dreamtime", "uniform"])
def test_the_timestep_schedule_is_chosen_by_name(tmp_path, name):
    from backend.schedules import make_schedule

    seen = []

    class Record(Emitter):
        def _on_progress(self, msg):
            if msg["stage"] == "gaussians" and msg["message"]:
                seen.append((msg["step"], int(msg["message"].split("t=")[1].split(",")[0])))

    params = {"mode": "text", "prompt": "a vase", "iters": 40, "texture_iters": 1, "timestep_schedule": name}
    run_local(JobStore(tmp_path / "jobs"), DreamGaussianPipeline, "tiny", params, {}, 0, Record())
    steps, ts = zip(*seen)
    assert len(ts) == 40 and all(20 <= t <= 980 for t in ts)
    if name == "dreamtime":
        schedule = make_schedule("dreamtime", 20, 980)
        assert list(ts) == [schedule(s, 40) for s in steps]
    else:
        assert any(a < b for a, b in zip(ts, ts[1:]))  # random, not annealed
