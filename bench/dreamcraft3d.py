"""DreamCraft3D: time per stage and peak memory; the oracle's figures.

Prints figures; asserts nothing.

    python bench/dreamcraft3d.py                   # CPU, tiny models, the tiny preset (image mode: the cat photo)
    python bench/dreamcraft3d.py --weights real-size --preset default   # GPU: real-size random weights
    python bench/dreamcraft3d.py --oracle          # oracle teachers, text mode, preset fast, the test object

The tiny and real-size runs start from scikit-image's cat photo (image mode, prompt "a cat"), so
that no background remover is needed; they run every stage: sculpting, mesh, geometry
refinement, DreamBooth fine-tuning and BSD boosting. ``--oracle`` prints the held-out mask IoU
and PSNR of the textured mesh before and after boosting.

``--weights real-size`` writes randomly initialised models with the real architectures
(Zero-1-to-3 XL / Stable Diffusion 2.1 base) once into the cache and points the real loading
code at them, so the teachers' and the LoRAs' share is measured without downloading anything.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from backend.cli import demo_photo  # noqa: E402
from backend.jobs import JobStore  # noqa: E402
from backend.models import set_model_overrides, splatsmith_cache_dir  # noqa: E402
from backend.pipelines.base import Emitter  # noqa: E402
from backend.pipelines.dreamcraft3d import DreamCraft3DPipeline  # noqa: E402
from backend.worker import run_local  # noqa: E402
from clock import print_clock, print_peak_memory  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", choices=("tiny", "real-size", "default"), default="tiny")
    parser.add_argument("--preset", choices=("tiny", "fast", "default"), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--oracle", action="store_true", help="oracle teachers, text mode, preset fast")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.oracle:
        oracle_figures(args.seed, device)
        return
    from backend.guidance import tiny

    if args.weights == "real-size":
        set_model_overrides(tiny.real_size_overrides(splatsmith_cache_dir() / "bench-real-size" / "splatsmith-bench"))
    rgb, mask = demo_photo()
    params = {"mode": "image", "prompt": "a cat", "weights": "tiny" if args.weights == "tiny" else "default"}
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        _, result = run_local(JobStore(Path(tmp) / "jobs"), DreamCraft3DPipeline, args.preset, params,
                              {"image": rgb, "mask": mask}, args.seed, Emitter(), device=device)
    meta = result.meta
    print(f"dreamcraft3d image mode, preset {args.preset}, weights {args.weights}, device {device}")
    print_clock("stage", meta["seconds"], time.monotonic() - start)
    print(f"denoiser evaluations: {meta['denoiser_evaluations']}, Gaussians {meta['gaussians']}, faces {meta['faces']}, "
          f"DreamBooth loss per round (first, last): {meta['boost'].get('dreambooth_loss')}")
    print_peak_memory(device)


def oracle_figures(seed: int, device: str) -> None:
    from PIL import Image

    from backend.render.mesh import TexturedMesh
    from scenes import held_out_scores, load_asset, make_test_object, write_object_glb

    with tempfile.TemporaryDirectory() as tmp:
        mesh, raw = make_test_object()
        glb = write_object_glb(Path(tmp) / "gt.glb", raw)
        start = time.monotonic()
        job, result = run_local(JobStore(Path(tmp) / "jobs"), DreamCraft3DPipeline, "fast", {
            "teacher": "oracle", "oracle_mesh": str(glb), "prompt": "the test object"}, {}, seed, Emitter(), device=device)
        seconds = time.monotonic() - start
        final = load_asset(job.dir)
        before = torch.from_numpy(np.asarray(Image.open(job.dir / "texture_before_boost.png"), np.float32) / 255.0)
        s_after = held_out_scores(mesh, result.meta["radius"], None, final)
        s_before = held_out_scores(mesh, result.meta["radius"], None,
                                   TexturedMesh(final.vertices, final.faces, final.uv, before))
    print(f"dreamcraft3d oracle, text mode, preset fast, seed {seed}, device {device}: {seconds:.1f} s")
    print_clock("stage", result.meta["seconds"], seconds)
    print(f"held-out mesh IoU {s_after['mesh_iou']:.3f}, PSNR before boosting {s_before['mesh_psnr']:.2f} dB, after "
          f"{s_after['mesh_psnr']:.2f} dB")


if __name__ == "__main__":
    main()
