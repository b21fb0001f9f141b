"""DTC123's method: the curriculum trace (bands moving down, Zero-1-to-3 alone first, Stable
Diffusion dominant last), the progressive student's stages, the teacher without a prompt, bad
requests, the CLI, and an oracle run against DreamGaussian's figures on the same object."""
from __future__ import annotations

import json

import pytest
import torch
import trimesh

from backend.jobs import JobStore
from backend.pipelines import load_builtin
from backend.pipelines.base import Emitter, ParamError
from backend.pipelines.dtc123 import DTC123Pipeline, build_curriculum
from backend.worker import run_local
from scenes import load_asset, make_test_object, write_object_glb
from conftest import cli


class Record(Emitter):
    def __init__(self):
        super().__init__()
        self.stages: list[str] = []
        self.kinds: set[str] = set()
        self.log_lines: list[str] = []

    def _on_progress(self, msg):
        if not self.stages or self.stages[-1] != msg["stage"]:
            self.stages.append(msg["stage"])

    def _on_preview(self, msg):
        self.kinds.add(msg["kind"])

    def _on_log(self, line):
        self.log_lines.append(line)


@pytest.mark.slow
def test_tiny_run_over_a_server_traces_the_curriculum_and_hands_the_teachers_over(make_server, make_client):
    from backend.images import demo_photo

    rgb, mask = demo_photo()
    server = make_server(pipelines=load_builtin())
    client = make_client(server.endpoint)
    progress: list[dict] = []
    handle = client.submit("dtc123", preset="tiny", params={"class_name": "cat", "coarse_iters": 8, "middle_iters": 8,
                                                           "fine_iters": 4}, inputs={"image": rgb, "mask": mask},
                           seed=0, on_event=lambda _h, m: progress.append(m) if m["type"] == "progress" else None)
    result = client.wait(handle, timeout=600)
    assert result["meta"]["stable_diffusion_prompt"] == "a photo of a cat"
    stages = [m["stage"] for m in progress]
    assert [s for i, s in enumerate(stages) if s in ("coarse", "middle", "fine") and s not in stages[:i]] == [
        "coarse", "middle", "fine"]
    # Progress names the stage and the teachers: Zero-1-to-3 alone first, both last.
    first = next(m for m in progress if m["stage"] == "coarse")
    last = [m for m in progress if m["stage"] == "fine"][-1]
    assert "Zero-1-to-3 x1.00" in first["message"] and "Stable Diffusion" not in first["message"]
    assert "Stable Diffusion x1.00" in last["message"] and "Zero-1-to-3 x0.10" in last["message"]
    assert set(handle.preview_counts) >= {"gaussians", "mesh", "texture"}
    assert {"asset.glb", "gaussians.ply", "curriculum.json"} <= set(result["files"])
    assert result["meta"]["curriculum"]["fine"]["stable_diffusion"] == [1.0, 1.0]
    job = server.store.all()[-1]
    trace = json.loads((job.dir / "curriculum.json").read_text())
    steps = trace["steps"]
    assert [r["step"] for r in steps] == list(range(1, 8 + 8 + 4 + 1))
    # Bands never rise from stage to stage; every t lies in its stage's band.
    bands = {s["name"]: (s["t_low"], s["t_high"]) for s in trace["stages"]}
    assert bands["coarse"] >= bands["middle"] >= bands["fine"]
    assert all(bands[r["stage"]][0] <= r["t"] <= bands[r["stage"]][1] for r in steps)
    # Zero-1-to-3 alone at the start, Stable Diffusion ramping in, dominant at the end.
    assert steps[0]["zero123"] == 1.0 and steps[0]["stable_diffusion"] == 0.0
    sd = [r["stable_diffusion"] for r in steps]
    assert all(a <= b for a, b in zip(sd, sd[1:]))
    assert steps[-1]["stable_diffusion"] >= 5 * steps[-1]["zero123"] > 0
    assert result["meta"]["curriculum"]["fine"]["steps"] == 4
    assert len(trimesh.load(job.dir / "asset.glb", force="mesh").faces) > 50 and (job.dir / "gaussians.ply").is_file()


def test_without_prompt_or_class_stable_diffusion_stays_out_and_says_so(tmp_path):
    from backend.images import demo_photo

    rgb, mask = demo_photo()
    record = Record()
    job, result = run_local(JobStore(tmp_path / "jobs"), DTC123Pipeline, "tiny",
                            {"coarse_iters": 4, "middle_iters": 4, "fine_iters": 2}, {"image": rgb, "mask": mask}, 0,
                            record)
    assert any("Stable Diffusion does not take part" in line for line in record.log_lines)
    assert any("reference depth estimated by splatsmith/tiny-dpt" in line for line in record.log_lines)
    steps = json.loads((job.dir / "curriculum.json").read_text())["steps"]
    assert all(r["stable_diffusion"] == 0.0 for r in steps) and result.meta["stable_diffusion_prompt"] == ""


def test_without_the_depth_estimators_weights_the_depth_loss_is_skipped_and_said(tmp_path, monkeypatch):
    mesh, raw = make_test_object(texture_size=64)
    glb = write_object_glb(tmp_path / "gt.glb", raw)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    record = Record()
    run_local(JobStore(tmp_path / "jobs"), DTC123Pipeline, "tiny", {
        "teacher": "oracle", "oracle_mesh": str(glb), "weights": "default", "coarse_iters": 3, "middle_iters": 3,
        "fine_iters": 2}, {}, 0, record)
    skipped = [line for line in record.log_lines if "depth correlation loss is skipped" in line]
    assert len(skipped) == 1 and "splatsmith models download Intel/dpt-hybrid-midas" in skipped[0]


@pytest.mark.parametrize("params, words", [
    ({"middle_band": "990,300"}, "rises above"),
    ({"fine_band": "20"}, "two timesteps"),
    ({"coarse_band": "500,900"}, "bottom <= top"),
    ({"band_width": "10,10"}, "three widths"),
    ({"coarse_iters": 0, "middle_iters": 0}, "Gaussian stages need at least one step"),
])
def test_bad_requests_are_refused_in_one_sentence(params, words):
    from backend.images import demo_photo

    rgb, mask = demo_photo()
    with pytest.raises(ParamError, match=words):
        load_builtin()["dtc123"].resolve("tiny", params, {"image": rgb, "mask": mask})
    with pytest.raises(ParamError, match="needs the input 'image'"):
        load_builtin()["dtc123"].resolve("tiny", {}, {})


def test_curriculum_follows_the_stage_lengths():
    _, p = load_builtin()["dtc123"].merge_params("default", {"coarse_iters": 300, "middle_iters": 100, "fine_iters": 600})
    curriculum, handover, total = build_curriculum(p)
    assert total == 1000 and [s.until for s in curriculum.stages] == [0.3, 0.4, 1.0]
    assert curriculum.stage(300, total)[1].name == "coarse" and curriculum.stage(301, total)[1].name == "middle"
    assert handover.at(400, total)["stable-diffusion"] == 1.0 and handover.at(401, total)["zero123"] == 0.1


@pytest.mark.slow
def test_cli_generate_dtc123(tmp_path):
    from PIL import Image

    from backend.images import demo_photo

    rgb, mask = demo_photo()
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "out.glb"
    done = cli("generate", "--pipeline", "dtc123", "--image", tmp_path / "photo.png", "--mask", tmp_path / "mask.png",
               "--prompt", "a cat", "--preset", "tiny", "--seed", "1", "--out", out, "--device", "cpu", "--output-dir",
               tmp_path / "jobs")
    assert done.exit_code == 0, done.output[-2000:]
    assert len(trimesh.load(out, force="mesh").faces) > 50 and out.with_suffix(".ply").is_file()


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_oracle_run_matches_dreamgaussian_on_the_same_object(tmp_path):
    """The oracle for both teachers, the ``fast`` preset, seed 0: held-out mask IoU and
    textured-mesh PSNR about 1.5 dB under the measured 0.986 / 28.47 dB, where DreamGaussian's
    fast image run on the same object and seed gives 0.982 / 25.64 dB (``python bench/dtc123.py
    --oracle`` runs both; docs/methods.md)."""
    from scenes import held_out_scores

    mesh, raw = make_test_object()
    glb = write_object_glb(tmp_path / "gt.glb", raw)
    job, result = run_local(JobStore(tmp_path / "jobs"), DTC123Pipeline, "fast", {"teacher": "oracle",
                            "oracle_mesh": str(glb)}, {}, 0, Emitter())
    scores = held_out_scores(mesh, result.meta["radius"], None, load_asset(job.dir))
    print("dtc123 oracle fast:", scores, result.meta["seconds"])
    assert scores["mesh_iou"] >= 0.97 and scores["mesh_psnr"] >= 27.0, scores  # measured 0.986 / 28.47 dB


def test_schedules_show_prints_and_plots_a_jobs_trace(tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from backend.cli import app
    from backend.images import demo_photo

    rgb, mask = demo_photo()
    job, _ = run_local(JobStore(tmp_path / "jobs"), DTC123Pipeline, "tiny", {"coarse_iters": 3, "middle_iters": 3,
                       "fine_iters": 2}, {"image": rgb, "mask": mask}, 0, Emitter())
    runner = CliRunner()
    shown = runner.invoke(app, ["schedules", "show", "--trace", str(job.dir / "curriculum.json"), "--plot",
                                str(tmp_path / "trace.png")])
    assert shown.exit_code == 0, shown.output
    lines = [line for line in shown.output.splitlines() if line[:1].isdigit()]
    assert len(lines) == 8 and lines[0].split()[1] == "coarse" and lines[-1].split()[1] == "fine"
    assert Image.open(tmp_path / "trace.png").size[0] > 500
    bad = runner.invoke(app, ["schedules", "show", "--trace", str(tmp_path / "nothing.json")])
    assert bad.exit_code == 1 and "curriculum.json" in bad.output


@pytest.mark.slow
def test_batch_size_gives_every_sds_step_that_many_views(tmp_path, monkeypatch):
    """Issue 27, item 3: B cameras per step from the curriculum's own de-biased sampler, in the
    Gaussian stages and the fine stage; a batch of 4 gives another mesh than a batch of 1."""
    from backend.guidance.oracle import OracleGuidance

    _, raw = make_test_object(texture_size=64)
    glb = write_object_glb(tmp_path / "gt.glb", raw)
    batches: list[int] = []
    inner = OracleGuidance.predict_noise

    def predict_noise(self, x_t, t, cameras, background):
        batches.append(int(x_t.shape[0]))
        return inner(self, x_t, t, cameras, background)
    monkeypatch.setattr(OracleGuidance, "predict_noise", predict_noise)
    params = {"teacher": "oracle", "oracle_mesh": str(glb), "coarse_iters": 4, "middle_iters": 4, "fine_iters": 3}
    one, _ = run_local(JobStore(tmp_path / "a"), DTC123Pipeline, "tiny", params, {}, 0, Emitter())
    assert set(batches) == {1} and len(batches) >= 11
    batches.clear()
    four, _ = run_local(JobStore(tmp_path / "b"), DTC123Pipeline, "tiny", dict(params, batch_size=4), {}, 0, Emitter())
    assert set(batches) == {4} and len(batches) >= 11
    assert not torch.equal(load_asset(one.dir).vertices, load_asset(four.dir).vertices)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_texture_detail_arrives_when_stable_diffusion_takes_over(tmp_path):
    """Issue 27, item 9, with two different oracles: Zero-1-to-3's stand-in knows the shape but a
    texture blurred by 8 texels, Stable Diffusion's the sharp texture (``oracle_zero123_blur``).
    The curriculum's claim: the detail arrives in the late stages, where Stable Diffusion
    teaches. Held-out PSNR of the fine stage's textured mesh stands 3 dB above the coarse stage's
    Gaussians (measured 20.6 -> 25.1 dB), and 0.8 dB above the same run with Stable Diffusion's
    weight 0, where only the blurred teacher teaches (measured 23.5 dB)."""
    from backend.render.gaussians import GaussianModel
    from scenes import held_out_scores

    mesh, raw = make_test_object(texture_size=256)
    glb = write_object_glb(tmp_path / "gt.glb", raw)
    params = {"teacher": "oracle", "oracle_mesh": str(glb), "oracle_zero123_blur": 8.0, "coarse_iters": 60,
              "middle_iters": 60, "fine_iters": 50, "middle_size": 96, "fine_size": 96, "mesh_resolution": 56,
              "texture_size": 256, "bake_size": 96, "coarse_densify_until": 60, "init_points": 2000}

    def final_psnr(job):
        return held_out_scores(mesh, 2.0, None, load_asset(job.dir), size=64)["mesh_psnr"]
    job, _ = run_local(JobStore(tmp_path / "handover"), DTC123Pipeline, "fast", params, {}, 0, Emitter())
    coarse = held_out_scores(mesh, 2.0, GaussianModel.load_ply(job.dir / "gaussians_coarse.ply"), size=64)
    fine = final_psnr(job)
    alone, _ = run_local(JobStore(tmp_path / "alone"), DTC123Pipeline, "fast", dict(params, sd_weight=0.0), {}, 0,
                         Emitter())
    blurred_only = final_psnr(alone)
    print(f"dtc123 hand-over: coarse {coarse['gaussian_psnr']:.2f} dB, fine {fine:.2f} dB, "
          f"without Stable Diffusion {blurred_only:.2f} dB")
    assert fine >= coarse["gaussian_psnr"] + 3.0 and fine >= blurred_only + 0.8, (coarse, fine, blurred_only)
