"""IM-3D's method: the loop (generate -> fit -> render, noise, regenerate -> refit), its
parameters, previews and meta, the CLI in image, text and oracle forms, and an oracle run
that proves it."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import trimesh

from backend.cameras import orbit_cameras
from backend.jobs import JobStore
from backend.pipelines import load_builtin
from backend.pipelines.base import Emitter, ParamError
from backend.pipelines.im3d import IM3DPipeline, masked_views
from backend.stages.progress import contact_sheet
from backend.worker import run_local
from scenes import load_asset, make_test_object, render_rgba, write_object_glb
from conftest import cli


class Record(Emitter):
    def __init__(self):
        super().__init__()
        self.seen: list[tuple[str, dict]] = []
        self.stages: set[str] = set()

    def _on_preview(self, msg):
        self.seen.append((msg["kind"], msg.get("meta") or {}))

    def _on_progress(self, msg):
        self.stages.add(msg["stage"])


@pytest.mark.slow
def test_tiny_image_run_loops_and_reports_evaluations_and_phases(tmp_path):
    from backend.images import demo_photo

    rgb, mask = demo_photo()
    record = Record()
    job, result = run_local(JobStore(tmp_path / "jobs"), IM3DPipeline, "tiny", {}, {"image": rgb, "mask": mask}, 0, record)
    meta = result.meta
    assert meta["mode"] == "image" and meta["views"] == 4 and meta["loops"] == 2
    # tiny: 4 generation steps, then two regenerations of 2 steps each (strengths 0.5 and 0.3 run
    # 2 steps of schedules of 4 and 7): one batched denoiser call per solver step for all 4 views.
    assert meta["denoiser_evaluations"] == 4 + 2 + 2
    assert list(meta["seconds"]) == ["generate", "fit_1", "regenerate_1", "fit_2", "regenerate_2", "fit_3", "mesh"]
    assert all(v >= 0 for v in meta["seconds"].values())
    phases = [m.get("phase") for kind, m in record.seen if kind == "views"]
    assert phases == ["reference", "generate", "regenerate 1", "regenerate 2"]
    assert {"gaussians", "mesh", "texture"} <= {kind for kind, _ in record.seen}
    assert len(trimesh.load(job.dir / "asset.glb", force="mesh").faces) > 50 and (job.dir / "gaussians.ply").is_file()


@pytest.mark.slow
def test_loops_follow_the_strengths_and_no_loop_means_one_fit(tmp_path):
    from backend.images import demo_photo

    rgb, mask = demo_photo()
    _, once = run_local(JobStore(tmp_path / "a"), IM3DPipeline, "tiny", {"loops": 0, "regen_strength": "", "iters": 10},
                        {"image": rgb, "mask": mask}, 0, Emitter())
    assert once.meta["loops"] == 0 and list(once.meta["seconds"]) == ["generate", "fit_1", "mesh"]
    assert once.meta["denoiser_evaluations"] == 4
    _, three = run_local(JobStore(tmp_path / "b"), IM3DPipeline, "tiny",
                         {"loops": 3, "regen_strength": "1,0.5,0.2", "iters": 16, "regen_every": 4},
                         {"image": rgb, "mask": mask}, 0, Emitter())
    assert three.meta["loops"] == 3 and three.meta["denoiser_evaluations"] == 4 + 3 * 2


@pytest.mark.parametrize("params, inputs, words", [
    ({"loops": 2, "regen_strength": "0.5"}, True, "one per loop"),
    ({"regen_strength": "0.5,lots"}, True, "numbers in (0, 1]"),
    ({"regen_strength": "0.5,1.5"}, True, "numbers in (0, 1]"),
    ({"view_elevations": "20,up"}, True, "numbers in [-80, 80]"),
    ({"view_elevations": " "}, True, "'view_elevations' is empty"),
    ({"elevation": 60, "view_elevations": "0,30"}, True, "leaves [-80, 80] degrees"),
    ({}, False, "needs the input 'image'"),
    ({"mode": "text"}, False, "needs a 'prompt'"),
])
def test_bad_requests_are_refused_in_one_sentence(params, inputs, words):
    from backend.images import demo_photo

    spec = load_builtin()["im3d"]
    rgb, mask = demo_photo()
    with pytest.raises(ParamError, match=re.escape(words)):
        spec.resolve("tiny", params, {"image": rgb, "mask": mask} if inputs else {})


def test_view_elevations_cycle_over_the_orbit(tmp_path):
    """The K cameras' elevations are the orbit's plus ``view_elevations`` cycled in azimuth order,
    and the oracle's views are the object seen from them (its top from above)."""
    gt = write_object_glb(tmp_path / "gt.glb", make_test_object(texture_size=64)[1])
    params = {"teacher": "oracle", "oracle_mesh": str(gt), "views": 5, "elevation": 10, "view_elevations": "30,-40",
              "loops": 0, "regen_strength": "", "iters": 4}
    record = Record()
    _, result = run_local(JobStore(tmp_path / "jobs"), IM3DPipeline, "tiny", params, {}, 0, record)
    assert result.meta["view_elevations"] == [40.0, -30.0, 40.0, -30.0, 40.0]
    sheet = record.previews["views"]["data"]["rgba"][..., :3].astype(np.float32)  # the generated views, 3 per row
    mesh = make_test_object(texture_size=64)[0]

    def orbit_sheet(elevations):
        rgba = render_rgba(mesh, orbit_cameras(torch.tensor(elevations), torch.arange(5) * 72.0, 2.0, 49.1, 64, 64))
        on_white = rgba[..., :3] * (rgba[..., 3:] / 255.0) + 255.0 * (1.0 - rgba[..., 3:] / 255.0)
        return contact_sheet(torch.from_numpy(on_white / 255.0).permute(0, 3, 1, 2).float())[..., :3].astype(np.float32)

    wavy = np.abs(sheet - orbit_sheet([40.0, -30.0, 40.0, -30.0, 40.0])).mean()
    flat = np.abs(sheet - orbit_sheet([10.0] * 5)).mean()
    assert wavy < 2.0 and flat > 4 * wavy, (wavy, flat)


def test_views_are_masked_against_white_and_tiled():
    images = torch.ones(5, 3, 8, 8)
    images[2, :, 2:4, 2:4] = 0.5
    rgba = masked_views(images, 0.04)
    assert rgba.shape == (5, 8, 8, 4) and int(rgba[..., 3].sum()) == 4 and float(rgba[2, 2, 2, 3]) == 1.0
    sheet = contact_sheet(images)
    assert sheet.shape == (16, 24, 4)  # 3 per row, 2 rows
    assert (sheet[2:4, 16 + 2:16 + 4, :3] == 128).all() and (sheet[..., :3] == 255).sum() == 16 * 24 * 3 - 12


def test_default_preset_is_the_papers_and_within_the_evaluation_budget():
    """Section 3 / appendix A.1: K = 16 at 512, 1200 steps, regenerate every 500 with 10 steps,
    twice, losses 10 / 0.2 / 1. Denoiser evaluations: 40 + 2 x 10 = 60 <= the paper's ~80."""
    spec = load_builtin()["im3d"]
    _, p = spec.merge_params("default", {})
    assert (p["views"], p["view_size"], p["iters"], p["regen_every"], p["regen_steps"], p["loops"]) == (16, 512, 1200, 500,
                                                                                                       10, 2)
    assert (p["w_lpips"], p["w_ssim"], p["w_mask"], p["init"], p["init_points"], p["densify_every"]) == (10.0, 0.2, 1.0,
                                                                                                        "centre", 5000, 50)
    assert p["gen_steps"] + p["loops"] * p["regen_steps"] <= 80


@pytest.mark.slow
def test_a_default_run_counts_60_denoiser_evaluations(tmp_path):
    """A ``default`` run's schedule (40 generation steps, regenerations at strengths 0.5 and 0.3
    of 10 steps each) with the sizes shrunk and the tiny models: the meta counts 40 + 10 + 10."""
    from backend.images import demo_photo

    rgb, mask = demo_photo()
    small = {"weights": "tiny", "view_size": 64, "ref_size": 64, "iters": 3, "regen_every": 1, "init_points": 500,
             "mesh_resolution": 32, "texture_size": 64}
    _, result = run_local(JobStore(tmp_path / "jobs"), IM3DPipeline, "default", small, {"image": rgb, "mask": mask}, 0,
                          Emitter())
    assert result.meta["loops"] == 2 and result.meta["denoiser_evaluations"] == 60
    assert result.meta["view_evaluations"] == 60 * 16  # each call denoises the 16 views


@pytest.mark.slow
def test_cli_generate_im3d_text(tmp_path):
    """`splatsmith generate --pipeline im3d --prompt`: the reference is drawn first, cut out of its
    white background (tests/test_cli_messages.py runs the image form through the CLI)."""
    out = tmp_path / "out.glb"
    done = cli("generate", "--pipeline", "im3d", "--prompt", "a red chair", "--preset", "tiny", "--seed", "1", "--out",
               out, "--device", "cpu", "--output-dir", tmp_path / "jobs")
    assert done.exit_code == 0, done.output[-2000:]
    assert len(trimesh.load(out, force="mesh").faces) > 50 and out.with_suffix(".ply").is_file()
    job = next((tmp_path / "jobs").iterdir())
    assert (job / "reference_drawn.png").is_file() and (job / "reference.png").is_file()


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_oracle_image_run_recovers_the_object(tmp_path):
    """Image mode, the oracle, the ``fast`` preset (16 views on the wavy orbit): held-out mask
    IoU >= 0.95 and textured-mesh PSNR >= 25 dB, the issue's figures (measured 0.980 / 26.8).
    What each loop gains on a jittered first generation is measured by ``bench/im3d.py
    --loop-check``."""
    from backend.render.gaussians import GaussianModel
    from scenes import held_out_scores

    mesh, raw = make_test_object()
    glb = write_object_glb(tmp_path / "gt.glb", raw)
    params = {"teacher": "oracle", "oracle_mesh": str(glb)}
    job, result = run_local(JobStore(tmp_path / "jobs"), IM3DPipeline, "fast", params, {}, 0, Emitter())
    scores = held_out_scores(mesh, result.meta["radius"], GaussianModel.load_ply(job.dir / "gaussians.ply"),
                             load_asset(job.dir))
    print("im3d oracle fast:", scores, result.meta)
    assert scores["mesh_iou"] >= 0.95 and scores["mesh_psnr"] >= 25.0, scores



@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_loop_repairs_an_inconsistent_first_generation(tmp_path):
    """Issue 27, item 8: the oracle's first generation with its cameras jittered by up to 10
    degrees (views that disagree, as a real generator's do), cheap sizes (8 views at 64 px, 300
    steps, regenerations at 100 and 200). Held-out PSNR of the Gaussians after the last loop
    stands above that after the first generation's fit, and above 300 steps on the jittered
    views without regenerating (so the gain is the loop's, not more steps'). Measured: 21.6 dB
    after the first fit, 24.8 after the last loop, 21.6 without the loop."""
    from backend.render.gaussians import GaussianModel
    from scenes import held_out_scores

    mesh, raw = make_test_object(texture_size=256)
    glb = write_object_glb(tmp_path / "gt.glb", raw)
    params = {"teacher": "oracle", "oracle_mesh": str(glb), "oracle_jitter": 10.0, "views": 8, "view_size": 64,
              "iters": 300, "regen_every": 100, "densify_until": 220, "mesh_resolution": 48, "texture_size": 128,
              "max_faces": 4000}

    def psnr(job_dir, name):
        return held_out_scores(mesh, 2.0, GaussianModel.load_ply(job_dir / name), size=64)["gaussian_psnr"]
    job, result = run_local(JobStore(tmp_path / "loop"), IM3DPipeline, "fast", params, {}, 0, Emitter())
    assert result.meta["loops"] == 2
    first, last = psnr(job.dir, "gaussians_fit1.ply"), psnr(job.dir, "gaussians.ply")
    still, _ = run_local(JobStore(tmp_path / "still"), IM3DPipeline, "fast", dict(params, loops=0, regen_strength=""),
                         {}, 0, Emitter())
    without = psnr(still.dir, "gaussians.ply")
    print(f"im3d loop on a jittered generation: first fit {first:.2f} dB, after the loops {last:.2f} dB, "
          f"no loop {without:.2f} dB")
    assert last >= first + 2.0 and last >= without + 2.0, (first, last, without)
