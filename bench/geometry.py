"""Mesh extraction + UV unwrap + texture bake time for a result of about 50k faces.

Prints figures; asserts nothing. Run: ``python bench/geometry.py``.
The Gaussians are a dense shell (a sphere of radius 0.5 m with bumps) so that marching
cubes on the 128^3 grid yields more than 50k faces, decimated to 50k; the texture (1024^2)
is baked from 26 views (DreamGaussian's 8 azimuths x 3 elevations + top + bottom) at 256^2
(the CPU default; pass --view-size 512 on a GPU).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.cameras import orbit_cameras  # noqa: E402
from backend.geometry.extract import density_grid, extract_mesh  # noqa: E402
from backend.geometry.uv import bake_texture, unwrap  # noqa: E402
from backend.render.gaussians import GaussianModel, render  # noqa: E402


def bake_cameras(size: int):
    el = [-45.0] * 8 + [0.0] * 8 + [45.0] * 8 + [89.9, -89.9]
    az = [i * 45.0 for i in range(8)] * 3 + [0.0, 0.0]
    return orbit_cameras(el, az, 2.0, 49.1, size, size)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--view-size", type=int, default=512 if torch.cuda.is_available() else 256)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(60_000, 3, generator=g), dim=-1)
    r = 0.5 + 0.04 * torch.sin(9 * d[:, 0]) * torch.cos(7 * d[:, 1])
    model = GaussianModel.from_points(d * r[:, None], torch.rand(60_000, 3, generator=g), scale=0.012, opacity=0.9).to(device)
    t = {}
    t0 = time.perf_counter()
    density_grid(model, 128)
    t["(of which density grid 128^3)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    extracted = extract_mesh(model, 128, threshold=1.0, max_faces=50_000)
    mesh = extracted.mesh
    t["extract (grid, fill, MC, clean, decimate)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    uvm = unwrap(mesh.vertices, mesh.faces, resolution=1024, time_limit=600)
    t["xatlas unwrap"] = time.perf_counter() - t0
    cams = bake_cameras(args.view_size)
    t0 = time.perf_counter()
    with torch.no_grad():
        views = render(model, cams, background=0.0)
    t[f"render 26 views {args.view_size}^2"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    colour = views.rgb / views.alpha.clamp_min(1e-6)
    texture, seen = bake_texture(uvm, cams, colour.clamp(0, 1), views.alpha[..., 0], size=1024)
    from backend.render.mesh import rasterize_uv
    charts = float(rasterize_uv(torch.from_numpy(uvm.corner_uv), 1024).mask.float().mean())
    t["bake 1024^2 from 26 views"] = time.perf_counter() - t0
    print(f"device {device}; {len(mesh.faces)} faces after decimation; "
          f"charts cover {charts:.1%} of the atlas, {seen.mean() / charts:.1%} of their texels seen by a view")
    for k, v in t.items():
        print(f"{k:42s} {v:7.2f} s")
    print(f"{'total':42s} {sum(v for k, v in t.items() if not k.startswith('(')):7.2f} s")
    assert np.isfinite(texture).all()


if __name__ == "__main__":
    main()
