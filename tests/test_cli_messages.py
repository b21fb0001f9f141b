"""What a new user reads (issue 28, items 5 and 6): messages that point the right way, the same
option names everywhere, in-process jobs with their log, tables that wrap instead of cutting."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from backend.cli import app
from conftest import free_port


def _run(*args: str, columns: int = 250):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": str(columns)})


def test_fetch_from_an_address_where_nothing_listens_says_so_at_once():
    start = time.monotonic()
    result = _run("fetch", "20260101-000000-abcdef", "--server", f"127.0.0.1:{free_port()}")
    assert result.exit_code == 1 and "is it running" in result.output and "stopped answering" not in result.output
    assert time.monotonic() - start < 60  # a ceiling: the sentence comes after a second's ping


def test_jobs_takes_server_like_every_command_and_wraps_at_80_columns(make_server, make_client):
    server = make_server()
    client = make_client(server.endpoint)
    handle = client.submit("fit", params={"steps": 3, "file_mb": 0.001}, label="a label long enough to wrap twice over")
    client.wait(handle, timeout=600)
    address = server.endpoint.replace("tcp://", "")
    for flag in ("--server", "--address"):
        result = _run("jobs", flag, address, columns=80)
        assert result.exit_code == 0, result.output
        assert handle.job_id in result.output and "…" not in result.output and "..." not in result.output
        assert "twice" in result.output and "over" in result.output  # the label's end is there, folded


def test_schedules_show_says_what_it_wrote(tmp_path):
    result = _run("schedules", "show", "dreamtime", "--steps", "5", "--plot", str(tmp_path / "s.png"))
    assert result.exit_code == 0 and result.output.strip().splitlines()[-1] == f"wrote {tmp_path / 's.png'}"


@pytest.mark.slow
def test_in_process_im3d_keeps_a_log_finds_models_dir_reports_each_step_and_keeps_the_common_scale(tmp_path):
    """``generate --models-dir`` reaches the job (LPIPS's backbone found there: no "LPIPS off"
    in its log.txt, which in-process jobs now keep too; 8 fitting steps with LPIPS suffice); IM-3D reports each solver step of its
    generations; its mesh stays within the framing every method shares (+- radius tan(fovy/2))."""
    from scenes import load_asset
    from PIL import Image

    from backend.images import demo_photo
    from backend.jobs import JobStore
    from backend.pipelines.base import Emitter
    from backend.pipelines.im3d import IM3DPipeline
    from backend.worker import run_local
    from test_perceptual import _write_random_checkpoint

    models = tmp_path / "models"
    _write_random_checkpoint(models / "torchvision" / "vgg16-397923af.pth", "vgg")
    rgb, mask = demo_photo()
    Image.fromarray(rgb).save(tmp_path / "cat.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    result = _run("generate", "--pipeline", "im3d", "--image", str(tmp_path / "cat.png"), "--mask",
                  str(tmp_path / "mask.png"), "--preset", "tiny", "--param", "iters=8", "--param", "regen_every=4",
                  "--device", "cpu", "--output-dir",
                  str(tmp_path / "jobs"), "--models-dir", str(models), "--out", str(tmp_path / "out.glb"))
    assert result.exit_code == 0, result.output
    job = next((tmp_path / "jobs").iterdir())
    log = (job / "log.txt").read_text()
    assert "state running: im3d" in log and "state done" in log and "LPIPS off" not in log

    class Steps(Emitter):
        def __init__(self):
            super().__init__()
            self.seen: dict[str, list[int]] = {}

        def _on_progress(self, msg):
            self.seen.setdefault(msg["stage"], []).append(msg["step"])
    steps = Steps()
    job2, out = run_local(JobStore(tmp_path / "jobs2"), IM3DPipeline, "tiny", {}, {"image": rgb, "mask": mask}, 0, steps)
    assert steps.seen["generate"] == [0, 0, 1, 2, 3, 4] and steps.seen["regenerate 1"] == [0, 1, 2]
    extent = 2.0 * np.tan(np.radians(49.1) / 2)
    got = load_asset(job2.dir).vertices.numpy()  # in the job's frame, where the bounds apply
    bounds = np.stack([got.min(0), got.max(0)])
    voxel = 2 * extent / 48
    assert np.abs(bounds).max() <= extent + 2 * voxel, bounds
    assert "LPIPS off" in (job2.dir / "log.txt").read_text()  # without the backbone: said in the log
    assert json.loads((job2.dir / "state.json").read_text())["state"] == "done" and torch.is_tensor(torch.zeros(1))
