"""Texture painting time per phase (prepare, latent, rgb, fill) and peak memory.

Prints figures; asserts nothing. Paints the test object of ``tests/scenes.py`` (its own UVs,
grey) from a prompt with the real pipeline and prints the job's own phase clock
(``meta["seconds"]``), the denoiser calls, the whole-job time and the peak memory.

    python bench/texture_paint.py                          # CPU, tiny models, the tiny preset
    python bench/texture_paint.py --teacher oracle --preset fast   # CPU, the oracle, the fast preset
    python bench/texture_paint.py --weights real-size --preset default   # GPU: SD 1.5 + ControlNet sizes

``--weights real-size`` writes randomly initialised models with the real architectures of the
``default`` teacher (Stable Diffusion 1.5's UNet, VAE and CLIP ViT-L text tower, and a depth
ControlNet of the same UNet) once into the cache and points the real loading code at them, so
the compute of 10 views at 768^2 and 30 steps is measured without downloading anything. The
``xl`` variant has no real-size stand-in here yet.
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
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from backend.jobs import JobStore  # noqa: E402
from backend.models import set_model_overrides, splatsmith_cache_dir  # noqa: E402
from backend.pipelines.base import Emitter  # noqa: E402
from backend.pipelines.texture_paint import TexturePaintPipeline  # noqa: E402
from backend.worker import run_local  # noqa: E402
from clock import print_clock, print_peak_memory  # noqa: E402
from scenes import make_test_object, write_object_glb  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", choices=("tiny", "real-size", "default"), default="tiny")
    parser.add_argument("--teacher", choices=("auto", "oracle"), default="auto")
    parser.add_argument("--preset", choices=("tiny", "fast", "default"), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from backend.guidance import tiny

    if args.weights == "real-size":
        set_model_overrides(tiny.real_size_paint_overrides(splatsmith_cache_dir() / "bench-real-size" / "texture-paint"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        _, raw = make_test_object(texture_size=128)
        inputs = {"vertices": raw["vertices"].astype(np.float32), "faces": raw["faces"].astype(np.int32),
                  "uv": raw["uv"][raw["faces"]].reshape(-1, 2).astype(np.float32)}
        params: dict = {"prompt": "a glazed ceramic vase with blue flowers"}
        if args.teacher == "oracle":
            params.update(teacher="oracle", oracle_mesh=str(write_object_glb(Path(tmp) / "gt.glb", raw)))
        elif args.weights != "tiny":
            params["weights"] = "default"
        start = time.monotonic()
        _, result = run_local(JobStore(Path(tmp) / "jobs"), TexturePaintPipeline, args.preset, params, inputs, args.seed,
                              Emitter(), device=device)
    total = time.monotonic() - start
    meta = result.meta
    print(f"texture_paint, preset {args.preset}, teacher {args.teacher}, weights {args.weights}, device {device}: "
          f"{meta['views']} views of {meta['view_size']}^2, {meta['steps']} steps, {meta['faces']} faces, "
          f"texture {meta['texture_size']}^2")
    print_clock("phase", meta["seconds"], total)
    print(f"denoiser calls {meta['evaluations']}")
    print_peak_memory(device)


if __name__ == "__main__":
    main()
