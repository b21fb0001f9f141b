"""IM-3D time per phase: reference (text mode), generation, each fit, each regeneration, mesh.

Prints figures; asserts nothing. Runs the real pipeline (image mode on scikit-image's cat photo,
or text mode) and prints the job's own phase clock (``meta["seconds"]``), the denoiser
evaluations, the whole-job time and peak memory.

    python bench/im3d.py                                   # CPU, tiny models, the tiny preset
    python bench/im3d.py --preset fast                     # CPU, tiny models, the fast preset
    python bench/im3d.py --weights real-size --preset default   # GPU: real-size random weights
    python bench/im3d.py --loop-check     # oracle, fast: held-out scores before and after each loop

``--loop-check`` runs the oracle generator (the test object of ``tests/scenes.py``) with its
first generation's cameras jittered by ``--jitter`` degrees and prints the held-out mask IoU
and PSNR of the Gaussians before any regeneration and after each loop.

``--weights real-size`` writes randomly initialised models with the real architectures
(Zero-1-to-3 XL / Stable Diffusion 2.1 base) once into the cache and points the real loading
code at them, so the generator's share is measured without downloading anything.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.cli import demo_photo  # noqa: E402
from backend.jobs import JobStore  # noqa: E402
from backend.models import set_model_overrides, splatsmith_cache_dir  # noqa: E402
from backend.pipelines.base import Emitter  # noqa: E402
from backend.pipelines.im3d import IM3DPipeline  # noqa: E402
from backend.worker import run_local  # noqa: E402
from clock import print_clock, print_peak_memory  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("image", "text"), default="image")
    parser.add_argument("--weights", choices=("tiny", "real-size", "default"), default="tiny")
    parser.add_argument("--preset", choices=("tiny", "fast", "default"), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--loop-check", action="store_true")
    parser.add_argument("--jitter", type=float, default=10.0)
    args = parser.parse_args()
    if args.loop_check:
        loop_check(args.jitter, args.seed)
        return
    from backend.guidance import tiny

    params: dict = {"mode": args.mode, "weights": "tiny" if args.weights == "tiny" else "default"}
    if args.mode == "text":
        params["prompt"] = "a ceramic teapot"
    if args.weights == "real-size":
        set_model_overrides(tiny.real_size_overrides(splatsmith_cache_dir() / "bench-real-size" / "splatsmith-bench"))
    inputs = {}
    if args.mode == "image":
        rgb, mask = demo_photo()
        inputs = {"image": rgb, "mask": mask}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        _, result = run_local(JobStore(Path(tmp) / "jobs"), IM3DPipeline, args.preset, params, inputs, args.seed, Emitter(),
                              device=device)
    total = time.monotonic() - start
    meta = result.meta
    print(f"im3d {args.mode} mode, preset {args.preset}, weights {args.weights}, device {device}")
    print_clock("phase", meta["seconds"], total)
    print(f"denoiser evaluations: {meta['denoiser_evaluations']}, views {meta['views']}, loops {meta['loops']}, "
          f"Gaussians {meta['gaussians']}, faces {meta['faces']}")
    print_peak_memory(device)


def loop_check(jitter: float, seed: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from backend.render.gaussians import GaussianModel
    from scenes import held_out_scores, make_test_object, write_object_glb

    with tempfile.TemporaryDirectory() as tmp:
        mesh, raw = make_test_object()
        glb = write_object_glb(Path(tmp) / "gt.glb", raw)
        params = {"teacher": "oracle", "oracle_mesh": str(glb), "oracle_jitter": jitter}
        job, result = run_local(JobStore(Path(tmp) / "jobs"), IM3DPipeline, "fast", params, {}, seed, Emitter())
        names = [f"gaussians_fit{i}.ply" for i in range(1, result.meta["loops"] + 1)] + ["gaussians.ply"]
        print(f"im3d oracle fast, first generation jittered by up to {jitter} degrees; held-out Gaussians:")
        for i, name in enumerate(names):
            s = held_out_scores(mesh, result.meta["radius"], GaussianModel.load_ply(job.dir / name))
            label = "before any loop" if i == 0 else f"after loop {i}"
            print(f"{label:<16} IoU {s['gaussian_iou']:.3f}  PSNR {s['gaussian_psnr']:.2f} dB")


if __name__ == "__main__":
    main()
