"""DreamTime's method: TP-SDS through the whole job (the schedule the run draws, its prior
parameters, w(t) = 1), the CLI, the parameter checks, and an oracle run that proves it."""
from __future__ import annotations


import pytest
import torch
import trimesh

from backend.jobs import JobStore
from backend.pipelines import load_builtin
from backend.pipelines.base import Emitter, ParamError
from backend.pipelines.dreamtime import DreamTimePipeline
from backend.schedules import make_schedule
from backend.worker import run_local
from scenes import make_test_object
from conftest import cli


class RecordT(Emitter):
    """Records the timestep of every stage-1 step from the progress messages."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[int, int]] = []

    def _on_progress(self, msg):
        if msg["stage"] == "gaussians" and msg["message"]:
            self.seen.append((msg["step"], int(msg["message"].split("t=")[1].split(",")[0])))


@pytest.mark.slow
def test_the_method_runs_tp_sds_with_its_prior_and_the_teachers_noise_schedule(tmp_path):
    from backend.guidance import load_teacher

    record = RecordT()
    params = {"prompt": "a vase", "iters": 50, "texture_iters": 1, "m1": 700.0, "m2": 400.0, "s1": 150.0, "s2": 80.0}
    job, result = run_local(JobStore(tmp_path / "jobs"), DreamTimePipeline, "tiny", params, {}, 0, record)
    steps, ts = zip(*record.seen)
    assert steps == tuple(range(1, 51)) and result.meta["timestep_schedule"] == "dreamtime"
    teacher = load_teacher("stable-diffusion", "tiny", "cpu")
    expected = make_schedule("dreamtime", 20, 980, m1=700, m2=400, s1=150, s2=80, alphas_cumprod=teacher.alphas_cumprod)
    assert list(ts) == [expected(s, 50) for s in steps]
    assert list(ts) != [make_schedule("dreamtime", 20, 980)(s, 50) for s in steps]  # the prior changed the schedule
    assert all(a >= b for a, b in zip(ts, ts[1:])) and ts[-1] == 20
    assert result.meta["mode"] == "text" and (job.dir / "asset.glb").is_file() and (job.dir / "gaussians.ply").is_file()
    # One SDS evaluation per stage-1 step, then the one texture step's SDEdit: strength 0.05 of a
    # 4-step schedule is one denoiser evaluation.
    assert result.meta["denoiser_evaluations"] == 50 + 1


def test_tp_sds_takes_the_gradient_at_unit_weight():
    """DreamTime section 4: the weight is in the schedule, so SDS uses w(t) = 1; the teacher's
    own w = 1 - alpha_bar_t otherwise."""
    from backend.guidance.oracle import OracleGuidance
    from backend.cameras import orbit_cameras

    mesh, _ = make_test_object(texture_size=64)
    teacher = OracleGuidance(mesh)
    teacher.encode_condition(prompt="x")
    cams = orbit_cameras(10.0, 30.0, 2.0, 49.1, 32, 32)
    grads = {}
    for weighting in ("sds", "uniform"):
        images = torch.full((1, 3, 32, 32), 0.5, requires_grad=True)
        teacher.sds(images, cams, 600, generator=torch.Generator().manual_seed(0), weighting=weighting).loss.backward()
        grads[weighting] = images.grad
    ab = float(teacher.alphas_cumprod[600])
    assert torch.allclose(grads["sds"], grads["uniform"] * (1 - ab), atol=1e-6)
    assert make_schedule("dreamtime").sds_weighting == "uniform"
    assert not hasattr(make_schedule("dreamgaussian"), "sds_weighting")


def test_every_distilling_stage_takes_the_dreamtime_prior():
    registry = load_builtin()
    for name in ("dreamgaussian", "dreamtime", "texture_refine"):
        spec = registry[name]
        assert "dreamtime" in spec.params["timestep_schedule"].choices
        for p in ("m1", "m2", "s1", "s2"):
            assert spec.params[p].when == ("timestep_schedule", ("dreamtime",)), (name, p)
    assert registry["dreamtime"].params["timestep_schedule"].default == "dreamtime"
    assert registry["dreamtime"].params["iters"].default == 10_000
    assert set(registry["dreamtime"].presets) == {"default", "fast", "tiny"}
    with pytest.raises(ParamError, match="'m2' .* must not exceed 'm1'"):
        registry["dreamtime"].resolve("default", {"prompt": "x", "m1": 300.0, "m2": 600.0}, {})
    with pytest.raises(ParamError, match="'t_min' must be below 't_max'"):
        registry["dreamgaussian"].resolve("default", {"mode": "text", "prompt": "x", "t_min": 900, "t_max": 100}, {})


@pytest.mark.slow
def test_cli_generate_dreamtime_text_and_image(tmp_path):
    """`splatsmith generate --pipeline dreamtime (--prompt | --image --mask)`."""
    from PIL import Image

    from backend.images import demo_photo

    rgb, mask = demo_photo()
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    for args in (["--prompt", "a red chair"], ["--image", tmp_path / "photo.png", "--mask", tmp_path / "mask.png"]):
        out = tmp_path / f"out{len(args)}.glb"
        done = cli("generate", "--pipeline", "dreamtime", *args, "--preset", "tiny", "--seed", "1", "--out", out,
                   "--device", "cpu", "--output-dir", tmp_path / "jobs")
        assert done.exit_code == 0, done.output[-2000:]
        assert len(trimesh.load(out, force="mesh").faces) > 100 and out.with_suffix(".ply").is_file()
