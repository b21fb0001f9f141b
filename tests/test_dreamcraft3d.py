"""DreamCraft3D's method: the whole pipeline with the tiny Stable Diffusion and Zero-1-to-3 over a
real server (DreamBooth and BSD included, the LoRA saved and reused), the reference-only step,
the reference without a background mask, bad requests, the CLI, and the oracle's acceptance
figures."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from backend.jobs import JobStore
from backend.pipelines import load_builtin
from backend.pipelines.base import Emitter, ParamError
from backend.pipelines.dreamcraft3d import DreamCraft3DPipeline, class_word
from backend.worker import run_local
from shared_protocol.client import JobError
from scenes import load_asset, make_test_object, write_object_glb
from conftest import cli


class Record(Emitter):
    def __init__(self):
        super().__init__()
        self.log_lines: list[str] = []

    def _on_log(self, line):
        self.log_lines.append(line)


@pytest.mark.slow
def test_tiny_image_run_over_a_server_boosts_with_dreambooth_and_bsd(make_server, make_client):
    from backend.images import demo_photo

    rgb, mask = demo_photo()
    server = make_server(pipelines=load_builtin())
    client = make_client(server.endpoint)
    stages: list[str] = []
    handle = client.submit("dreamcraft3d", preset="tiny", params={"mode": "image", "prompt": "a cat"},
                           inputs={"image": rgb, "mask": mask}, seed=0,
                           on_event=lambda _h, m: stages.append(m["stage"]) if m["type"] == "progress" else None)
    result = client.wait(handle, timeout=600)
    order = list(dict.fromkeys(stages))
    assert order[:2] == ["sculpt", "mesh"] and order[2:] == ["geometry", "dreambooth 1", "boost 1", "dreambooth 2",
                                                             "boost 2", "output"], order  # the normal map last
    assert set(handle.preview_counts) >= {"views", "gaussians", "mesh", "texture"}
    assert {"asset.glb", "gaussians.ply", "reference.png", "texture_before_boost.png",
            "dreambooth_lora.safetensors"} <= set(result["files"])
    boost = result["meta"]["boost"]
    assert boost["rounds"] == 2 and boost["class_name"] == "cat" and len(boost["dreambooth_loss"]) == 2
    job = server.store.all()[-1]
    assert (job.dir / "dreambooth_lora.safetensors").is_file()
    assert len(trimesh.load(job.dir / "asset.glb", force="mesh").faces) > 50
    # Reusing a LoRA (Blender's Regenerate; tests/blender) that a job does not have: refused at once.
    with pytest.raises(JobError, match="has no DreamBooth LoRA"):
        client.wait(client.submit("dreamcraft3d", preset="tiny", params={"mode": "image", "prompt": "a cat",
                                                                        "reuse_lora": "20200101-000000-abcdef"},
                                  inputs={"image": rgb, "mask": mask}), timeout=600)
    assert client.ping(timeout=30) >= 0  # the server keeps serving


def test_text_mode_draws_a_reference_and_stops_there_when_asked(tmp_path):
    """reference_only: the drawing (its own seed) and the object cut out of its white background
    and recentred, then stop."""
    record = Record()
    job, result = run_local(JobStore(tmp_path / "jobs"), DreamCraft3DPipeline, "tiny",
                            {"prompt": "a red chair", "reference_only": True, "reference_seed": 7}, {}, 0, record)
    drawn = np.asarray(Image.open(job.dir / "reference_drawn.png"))
    assert drawn.shape == (32, 32, 3) and result.meta["reference_only"] and result.meta["reference_seed"] == 7
    assert set(result.files) == {"reference_drawn.png", "reference.png"} and not (job.dir / "asset.glb").exists()
    reference = np.asarray(Image.open(job.dir / "reference.png"))
    assert reference.shape == (64, 64, 4) and result.meta["masked"] and result.meta["masked_by"] == "white"
    assert reference[..., 3].max() == 255 and reference[0, :, 3].max() == 0  # the object, with a margin
    job2, again = run_local(JobStore(tmp_path / "jobs2"), DreamCraft3DPipeline, "tiny",
                            {"prompt": "a red chair", "reference_only": True, "reference_seed": 7}, {}, 0, Emitter())
    assert np.array_equal(np.asarray(Image.open(job2.dir / "reference_drawn.png")), drawn)  # its own seed


@pytest.mark.parametrize("params, words", [
    ({"mode": "text", "prompt": ""}, "text mode needs a 'prompt'"),
    ({"prompt": "x", "t_start": "900"}, "'t_start' must be two timesteps"),
    ({"prompt": "x", "boost_t_end": "300,100"}, "lo <= hi"),
    ({"prompt": "x", "boost_strengths": "0.5,2"}, "'boost_strengths' must be numbers in (0, 1]"),
    ({"prompt": "x", "reference_size": 100}, "multiple of 8"),
    ({"prompt": "x", "reuse_lora": "../other"}, "'reuse_lora' must be a job id"),
    ({"prompt": "x", "timestep_schedule": "dreamtime", "m1": 400, "m2": 600}, "must not exceed 'm1'"),
])
def test_bad_requests_are_refused_in_one_sentence(params, words):
    spec = load_builtin()["dreamcraft3d"]
    _, merged = spec.merge_params("tiny", params)
    with pytest.raises(ParamError, match=None) as caught:
        spec.check_request(merged, {})
    assert words in str(caught.value)


@pytest.mark.slow
def test_class_word_and_the_cli_text_to_3d_without_rembg_and_reference_only(tmp_path, monkeypatch):
    """Text -> 3D through the CLI on the default install (issue 27, item 1): no matting package
    (``import rembg`` fails here, whatever is installed), the drawn reference cut out of its white
    background, a GLB at the end; then ``--reference-only``."""
    assert class_word({"class_name": "", "prompt": "a ceramic teapot."}) == "teapot"
    assert class_word({"class_name": "mug", "prompt": "x"}) == "mug"
    assert class_word({"class_name": "", "prompt": ""}) == "object"
    monkeypatch.setitem(sys.modules, "rembg", None)  # Python's own "not importable" mark
    from backend.images import rembg_available

    assert not rembg_available()
    out = tmp_path / "out" / "asset.glb"
    common = ["generate", "--pipeline", "dreamcraft3d", "--preset", "tiny", "--seed", "1", "--device", "cpu",
              "--output-dir", tmp_path / "jobs"]
    done = cli(*common, "--prompt", "a red chair", "--out", out)
    assert done.exit_code == 0, done.output[-2000:]
    assert len(trimesh.load(out, force="mesh").faces) > 50 and out.with_suffix(".ply").is_file()
    job = next(p for p in (tmp_path / "jobs").iterdir() if p.is_dir())
    meta = json.loads((job / "result.json").read_text())["meta"]
    assert meta["masked_by"] == "white" and (job / "reference_drawn.png").is_file()
    ref = cli(*common, "--prompt", "a chair", "--reference-only", "--out", tmp_path / "ref" / "x.glb")
    assert ref.exit_code == 0, ref.output[-2000:]
    assert {"reference_drawn.png", "reference.png"} <= {p.name for p in (tmp_path / "ref").iterdir()}
    other = cli("generate", "--pipeline", "dreamgaussian", "--prompt", "x", "--reference-only")
    assert other.exit_code == 1 and "draws no reference image" in other.output


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_oracle_text_run_sculpts_and_boosting_does_not_hurt_the_texture(tmp_path):
    """The oracle for both teachers (its front render the reference image, its exact noise both
    LoRA terms), text mode, ``fast``, seed 0: held-out mask IoU and textured-mesh PSNR about 1.5
    dB under the measured figures, and the texture after boosting no worse than before it."""
    from backend.render.mesh import TexturedMesh
    from scenes import held_out_scores

    mesh, raw = make_test_object()
    glb = write_object_glb(tmp_path / "gt.glb", raw)
    job, result = run_local(JobStore(tmp_path / "jobs"), DreamCraft3DPipeline, "fast", {
        "teacher": "oracle", "oracle_mesh": str(glb), "prompt": "the test object"}, {}, 0, Emitter())
    final = load_asset(job.dir)
    after = held_out_scores(mesh, result.meta["radius"], None, final)
    before_texture = torch.from_numpy(np.asarray(Image.open(job.dir / "texture_before_boost.png"), np.float32) / 255.0)
    before = held_out_scores(mesh, result.meta["radius"], None,
                             TexturedMesh(final.vertices, final.faces, final.uv, before_texture))
    print("dreamcraft3d oracle fast:", after, "before boosting:", before, result.meta["seconds"])
    # About 1.5 dB under the measured 0.983 / 27.87 dB (27.60 before boosting; seed 0, CPU).
    assert after["mesh_iou"] >= 0.96 and after["mesh_psnr"] >= 26.3, after
    assert after["mesh_psnr"] >= before["mesh_psnr"], (before, after)


def _sds_batches(monkeypatch) -> list[int]:
    """The batch of every noise prediction the (real) oracle makes in a run."""
    from backend.guidance.oracle import OracleGuidance

    batches: list[int] = []
    inner = OracleGuidance.predict_noise

    def predict_noise(self, x_t, t, cameras, background):
        batches.append(int(x_t.shape[0]))
        return inner(self, x_t, t, cameras, background)
    monkeypatch.setattr(OracleGuidance, "predict_noise", predict_noise)
    return batches


class Progress(Emitter):
    def __init__(self):
        super().__init__()
        self.messages: list[tuple[str, str]] = []

    def _on_progress(self, msg):
        self.messages.append((msg["stage"], msg["message"] or ""))


@pytest.mark.slow
def test_batch_size_and_the_timestep_schedule_are_honoured(tmp_path, monkeypatch):
    """batch_size B gives B views to every SDS step of sculpting, geometry refinement and boosting
    (issue 27, item 3), and timestep_schedule=dreamtime replaces the configs' interval anneal in
    sculpting and geometry refinement with TP-SDS's non-increasing t (item 5)."""
    import re

    from backend.schedules import make_schedule, timesteps

    _, raw = make_test_object(texture_size=64)
    glb = write_object_glb(tmp_path / "gt.glb", raw)
    oracle = {"teacher": "oracle", "oracle_mesh": str(glb), "prompt": "the test object", "iters": 12,
              "geometry_iters": 3, "boost_iters": 2}
    batches = _sds_batches(monkeypatch)
    job1, _ = run_local(JobStore(tmp_path / "b1"), DreamCraft3DPipeline, "tiny", oracle, {}, 0, Emitter())
    assert set(batches) == {1}
    batches.clear()
    record = Progress()
    job4, result = run_local(JobStore(tmp_path / "b4"), DreamCraft3DPipeline, "tiny",
                             dict(oracle, batch_size=4, timestep_schedule="dreamtime"), {}, 0, record)
    assert set(batches) == {4} and len(batches) == 12 + 3 + 2 * 2
    assert not torch.equal(load_asset(job1.dir).texture, load_asset(job4.dir).texture)
    assert result.meta["timestep_schedule"] == "dreamtime"

    def drawn(stage):
        return [int(re.search(r"t=(\d+)", m).group(1)) for s, m in record.messages if s == stage and "t=" in m]
    # TP-SDS over each stage's own steps, with the teacher's alpha_bar (the oracle's: Stable Diffusion's).
    expected = make_schedule("dreamtime", 20, 980)
    assert drawn("sculpt") == timesteps(expected, 12) and drawn("geometry") == timesteps(expected, 3)
    # The configs' interval anneal otherwise: U(700, 850) annealed to U(200, 500) (over the tiny
    # preset's 10 steps), then U(20, 500) in the geometry refinement.
    from backend.schedules import IntervalAnneal

    record = Progress()
    run_local(JobStore(tmp_path / "b5"), DreamCraft3DPipeline, "tiny", oracle, {}, 0, record)
    anneal = IntervalAnneal((700, 850), (200, 500), 10)
    assert all(anneal.bounds(i)[0] <= t <= anneal.bounds(i)[1] for i, t in enumerate(drawn("sculpt"), 1))
    assert drawn("sculpt")[0] > 600 and all(20 <= t <= 500 for t in drawn("geometry"))
