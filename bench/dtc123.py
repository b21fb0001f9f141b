"""DTC123: time per stage, and the oracle comparison with DreamGaussian.

Prints figures; asserts nothing.

    python bench/dtc123.py                         # CPU, tiny models, the tiny preset: seconds per stage
    python bench/dtc123.py --preset fast
    python bench/dtc123.py --weights real-size --preset default   # GPU: real-size random weights
    python bench/dtc123.py --oracle                # the acceptance check: DTC123 and DreamGaussian,
                                                   # oracle teachers, preset fast, same object and seed

``--oracle`` runs both methods one after the other on the test object of ``tests/scenes.py``
(image mode, the oracle standing in for every teacher) and prints for each the wall-clock time,
its stage clock and the held-out mask IoU and PSNR of its Gaussians and of its textured mesh,
then the DTC123 curriculum's per-stage summary (t range, teacher weights).

``--weights real-size`` writes randomly initialised models with the real architectures
(Zero-1-to-3 XL / Stable Diffusion 2.1 base) once into the cache and points the real loading
code at them, so the teachers' share is measured without downloading anything.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from backend.cli import demo_photo  # noqa: E402
from backend.jobs import JobStore  # noqa: E402
from backend.models import set_model_overrides, splatsmith_cache_dir  # noqa: E402
from backend.pipelines.base import Emitter  # noqa: E402
from backend.pipelines.dreamgaussian import DreamGaussianPipeline  # noqa: E402
from backend.pipelines.dtc123 import DTC123Pipeline  # noqa: E402
from backend.worker import run_local  # noqa: E402
from clock import print_clock, print_peak_memory  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", choices=("tiny", "real-size", "default"), default="tiny")
    parser.add_argument("--preset", choices=("tiny", "fast", "default"), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--oracle", action="store_true", help="DTC123 against DreamGaussian, oracle teachers, fast")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.oracle:
        oracle_comparison(args.seed, device)
        return
    from backend.guidance import tiny

    if args.weights == "real-size":
        set_model_overrides(tiny.real_size_overrides(splatsmith_cache_dir() / "bench-real-size" / "splatsmith-bench"))
    rgb, mask = demo_photo()
    params = {"weights": "tiny" if args.weights == "tiny" else "default", "class_name": "cat"}
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        _, result = run_local(JobStore(Path(tmp) / "jobs"), DTC123Pipeline, args.preset, params,
                              {"image": rgb, "mask": mask}, args.seed, Emitter(), device=device)
    total = time.monotonic() - start
    meta = result.meta
    print(f"dtc123, preset {args.preset}, weights {args.weights}, device {device}")
    print_clock("stage", meta["seconds"], total)
    print(f"denoiser evaluations: {meta['denoiser_evaluations']}, Gaussians {meta['gaussians']}, faces {meta['faces']}")
    print_peak_memory(device)


def oracle_comparison(seed: int, device: str) -> None:
    from backend.render.gaussians import GaussianModel
    from scenes import held_out_scores, load_asset, make_test_object, write_object_glb

    with tempfile.TemporaryDirectory() as tmp:
        mesh, raw = make_test_object()
        glb = write_object_glb(Path(tmp) / "gt.glb", raw)
        params = {"teacher": "oracle", "oracle_mesh": str(glb)}
        print(f"oracle teachers, image mode, preset fast, seed {seed}, device {device}, the test object")
        print(f"{'method':<15}{'seconds':>9}{'Gaussians IoU':>15}{'PSNR':>8}{'mesh IoU':>10}{'PSNR':>8}  stage clock")
        summary = None
        for name, cls in (("dtc123", DTC123Pipeline), ("dreamgaussian", DreamGaussianPipeline)):
            start = time.monotonic()
            job, result = run_local(JobStore(Path(tmp) / name), cls, "fast", params, {}, seed, Emitter(), device=device)
            seconds = time.monotonic() - start
            s = held_out_scores(mesh, result.meta["radius"], GaussianModel.load_ply(job.dir / "gaussians.ply"),
                                load_asset(job.dir))
            clock = result.meta.get("seconds") or {k: round(v, 1) for k, v in result.meta["stage1_seconds"].items()
                                                  if k != "steps"}
            print(f"{name:<15}{seconds:>9.1f}{s['gaussian_iou']:>15.3f}{s['gaussian_psnr']:>8.2f}{s['mesh_iou']:>10.3f}"
                  f"{s['mesh_psnr']:>8.2f}  {clock}")
            summary = summary or result.meta.get("curriculum")
        print("dtc123 curriculum:")
        for stage, row in summary.items():
            print(f"  {stage:<7} {row['steps']:>5} steps, t {row['t_first']} -> {row['t_last']} (range {row['t_min']}-"
                  f"{row['t_max']}), Zero-1-to-3 {row['zero123'][0]} -> {row['zero123'][1]}, Stable Diffusion "
                  f"{row['stable_diffusion'][0]} -> {row['stable_diffusion'][1]}")


if __name__ == "__main__":
    main()
