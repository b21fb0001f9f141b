"""DreamGaussian stage-1 step profile and whole-job time.

Prints figures; asserts nothing. Runs the real pipeline (image mode on scikit-image's cat
photo, or text mode) and reports, per stage-1 step: render, teacher (VAE encode + UNet +
CFG), backward and densification time, the UNet's own share (timed by a hook around the
UNet's forward), steps per second, the whole-job time and peak memory.

    python bench/dreamgaussian.py                               # CPU, tiny models
    python bench/dreamgaussian.py --weights real-size --iters 4 --size 256   # real-size random weights

``--weights real-size`` writes randomly initialised models with the real architectures
(Zero-1-to-3 XL / Stable Diffusion 2.1 base) once into the cache, so the UNet share of a step
is measured without downloading anything; on a GPU that is the figure that shows the
project's own overhead (target: everything but the UNet under 25% of a step at 256x256).
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.cli import demo_photo  # noqa: E402
from backend.jobs import JobStore  # noqa: E402
from backend.worker import run_local  # noqa: E402
from backend.models import set_model_overrides, splatsmith_cache_dir  # noqa: E402
from backend.pipelines.base import Emitter  # noqa: E402
from backend.pipelines.dreamgaussian import DreamGaussianPipeline  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("image", "text"), default="image")
    parser.add_argument("--weights", choices=("tiny", "real-size", "default"), default="tiny")
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--size", type=int, default=0, help="stage-1 render size (0: the preset's schedule)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    from backend.guidance import tiny

    params: dict = {"mode": args.mode, "iters": args.iters}
    if args.mode == "text":
        params["prompt"] = "a ceramic teapot"
    if args.size:
        params["resolutions"] = f"{args.size},{args.size},{args.size}"
    preset = "tiny" if args.weights in ("tiny", "real-size") else "default"
    if args.weights == "real-size":
        # The real loading code, pointed at random real-size folders by model-id overrides.
        set_model_overrides(tiny.real_size_overrides(splatsmith_cache_dir() / "bench-real-size" / "splatsmith-bench"))
        params["weights"] = "default"

    unet_time = {"s": 0.0, "calls": 0}
    import diffusers

    forward = diffusers.UNet2DConditionModel.forward

    def timed_forward(self, *a, **kw):
        if args.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = forward(self, *a, **kw)
        if args.device == "cuda":
            torch.cuda.synchronize()
        unet_time["s"] += time.perf_counter() - t0
        unet_time["calls"] += 1
        return out

    diffusers.UNet2DConditionModel.forward = timed_forward
    inputs = {}
    if args.mode == "image":
        rgb, mask = demo_photo()
        inputs = {"image": rgb, "mask": mask}
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        job, result = run_local(JobStore(tmp), DreamGaussianPipeline, preset, params, inputs, 0, Emitter(), args.device)
        total = time.perf_counter() - start
    st = result.meta["stage1_seconds"]
    steps = st["steps"]
    step_time = (st["render"] + st["teacher"] + st["backward"] + st["densify"]) / steps
    unet_per_step = unet_time["s"] / max(unet_time["calls"], 1)
    print(f"device {args.device}, weights {args.weights}, mode {args.mode}, {steps} stage-1 steps, "
          f"{torch.get_num_threads()} CPU threads")
    for key in ("render", "teacher", "backward", "densify"):
        print(f"  {key:9s} {st[key] / steps * 1e3:9.1f} ms/step  ({st[key] / steps / step_time:5.1%})")
    print(f"  step      {step_time * 1e3:9.1f} ms  -> {1 / step_time:.2f} steps/s")
    print(f"  UNet forward {unet_per_step * 1e3:9.1f} ms/call; share of a stage-1 step {unet_per_step / step_time:5.1%}; "
          f"everything else {1 - unet_per_step / step_time:5.1%}")
    print(f"whole job {total:.1f} s ({result.meta['faces']} faces, {result.meta['gaussians']} Gaussians)")
    if args.device == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    print(f"peak host memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
