"""Gaussian rendering speed: forward + backward at 128^2 and 256^2 with 10k and 50k Gaussians,
on the CPU (the project's torch rasteriser) and, when CUDA is present, on the GPU (gsplat).

Prints figures; asserts nothing. Run: ``python bench/render.py [--repeats N]``.
The Gaussians are a trained-looking cloud: a shell of radius 0.5 m (as a reconstructed
surface is), opacity 0.8, sizes from their spacing, seen from 2 m with a 49.1 degree fovy.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.cameras import orbit_cameras  # noqa: E402
from backend.render.gaussians import GaussianModel, render  # noqa: E402


def shell(n: int, device: str) -> GaussianModel:
    g = torch.Generator().manual_seed(0)
    pts = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1) * 0.5
    spacing = (4 * 3.1416 * 0.25 / n) ** 0.5
    return GaussianModel.from_points(pts, torch.rand(n, 3, generator=g), scale=0.6 * spacing, opacity=0.8).to(device)


def time_step(model: GaussianModel, size: int, repeats: int, device: str) -> float:
    cam = orbit_cameras(20.0, 30.0, 2.0, 49.1, size, size)
    times = []
    for i in range(repeats + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = render(model, cam, background=1.0)
        (out.rgb.mean() + out.alpha.mean()).backward()
        if device == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    for device in devices:
        for n in (10_000, 50_000):
            model = shell(n, device)
            for size in (128, 256):
                t = time_step(model, size, args.repeats, device)
                print(f"{device:4s} {n:6d} Gaussians {size}x{size}: forward+backward {t * 1e3:8.1f} ms  ({1 / t:6.1f} it/s)")


if __name__ == "__main__":
    main()
