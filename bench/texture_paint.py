"""Texture painting time per phase (prepare, latent, rgb, fill) and peak memory.

Prints figures; asserts nothing. Paints the test object of ``tests/scenes.py`` (its own UVs,
grey) from a prompt with the real pipeline and prints the job's own phase clock
(``meta["seconds"]``), the denoiser calls, the whole-job time and the peak memory.

    python bench/texture_paint.py                          # CPU, tiny models, the tiny preset
    python bench/texture_paint.py --teacher oracle --preset fast   # CPU, the oracle, the fast preset
    python bench/texture_paint.py --weights real-size --preset default   # GPU: SD 1.5 + ControlNet sizes
    python bench/texture_paint.py --weights real-size --variant xl --preset default   # GPU: SDXL + ControlNet sizes
    python bench/texture_paint.py --acceptance --seeds 2 [--objects test,capsule,boxball]   # prior oracle figures

``--acceptance`` paints the test object, a capsule and a box under a ball (``tests/scenes.py``),
grey with their own UVs, ``fast``, with the prior oracle (K=2, sigma=0.3): synchronised, with the
views denoised apart, synchronised without the reference sweep (``reference_sync_end=0``), from
fresh noise in every view (``shared_noise=false``), with DDIM steps (``sampler=ddim``), and with the plain oracle, and prints per object and seed the held-out PSNR against the closer mode
(``tests/test_texture_paint.py``'s cameras) and how many modes the ten views settled on.

``--weights real-size`` writes randomly initialised models with the real architectures of the
``default`` teacher (Stable Diffusion 1.5's UNet, VAE and CLIP ViT-L text tower, and a depth
ControlNet of the same UNet) once into the cache and points the real loading code at them, so
the compute of 10 views at 768^2 and 30 steps is measured without downloading anything;
``--variant xl`` does the same with SDXL base 1.0's architectures (its UNet of 2.57 B parameters,
both text towers) and its depth ControlNet (about 11 GB written once, fp32).
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


def modes_settled(job_dir: Path, mesh) -> int:
    """How many of the prior's two modes the painted texture shows across the ten painting views
    (each view counted for the mode its render is closer to)."""
    from backend.geometry.export import load_glb
    from backend.guidance.oracle import OracleGuidance
    from backend.pipelines.specs.texture_paint import TexturePaintSpec
    from backend.pipelines.texture_paint import painting_cameras
    from backend.render.mesh import TexturedMesh, render_mesh
    from backend.stages.mesh_input import normalising_transform
    from backend.stages.reconstruction import psnr

    centre, scale = normalising_transform(mesh.vertices.numpy())

    def framed(m):
        return TexturedMesh((m.vertices - torch.from_numpy(centre)) * scale, m.faces, m.uv, m.texture)

    p = {k: v.default for k, v in TexturePaintSpec.params.items()} | TexturePaintSpec.presets["fast"]
    cams = painting_cameras(p, p["view_size"])
    with torch.no_grad():
        got = render_mesh(framed(load_glb(job_dir / "textured.glb")), cams, background=1.0).rgb
        modes = [render_mesh(m, cams, background=1.0).rgb for m in OracleGuidance(framed(mesh), modes=2).mode_meshes]
    return len({max(range(2), key=lambda k: psnr(got[i:i + 1], modes[k][i:i + 1])) for i in range(len(cams))})


def acceptance(seeds: int, objects: list[str]) -> None:
    from scenes import make_simple_object
    from test_texture_paint import _scores

    runs = {"synchronised": {}, "apart": {"synchronise": False}, "no sweep": {"reference_sync_end": 0.0},
            "fresh noise": {"shared_noise": False}, "DDIM": {"sampler": "ddim"}}
    print(f"{'object':<9}{'seed':>5}" + "".join(f"{name:>22}" for name in runs) + f"{'plain oracle':>14}")
    for kind in objects:
        mesh, raw = make_test_object() if kind == "test" else make_simple_object(kind)
        inputs = {"vertices": raw["vertices"].astype(np.float32), "faces": raw["faces"].astype(np.int32),
                  "uv": raw["uv"][raw["faces"]].reshape(-1, 2).astype(np.float32)}
        with tempfile.TemporaryDirectory() as tmp:
            glb = str(write_object_glb(Path(tmp) / "gt.glb", raw))
            for seed in range(seeds):
                cells = []
                for extra in runs.values():
                    params = {"teacher": "oracle", "oracle_mesh": glb, "oracle_modes": 2, "oracle_sigma": 0.3, **extra}
                    job, result = run_local(JobStore(Path(tmp) / "jobs"), TexturePaintPipeline, "fast", params, inputs,
                                            seed, Emitter())
                    cells.append(f"{max(_scores(job.dir, mesh, 2)):.2f} dB, {modes_settled(job.dir, mesh)} mode(s)")
                job, _ = run_local(JobStore(Path(tmp) / "jobs"), TexturePaintPipeline, "fast",
                                   {"teacher": "oracle", "oracle_mesh": glb}, inputs, seed, Emitter())
                print(f"{kind:<9}{seed:>5}" + "".join(f"{c:>22}" for c in cells) + f"{max(_scores(job.dir, mesh, 1)):>11.2f} dB")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", choices=("tiny", "real-size", "default"), default="tiny")
    parser.add_argument("--teacher", choices=("auto", "oracle"), default="auto")
    parser.add_argument("--variant", choices=("default", "xl"), default="default",
                        help="the teacher variant of --weights real-size / default")
    parser.add_argument("--preset", choices=("tiny", "fast", "default"), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--acceptance", action="store_true")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--objects", default="test,capsule,boxball", help="comma-separated: test, capsule, boxball")
    args = parser.parse_args()
    if args.acceptance:
        acceptance(args.seeds, args.objects.split(","))
        return
    from backend.guidance import tiny

    if args.weights == "real-size":
        set_model_overrides(tiny.real_size_paint_overrides(splatsmith_cache_dir() / "bench-real-size" / "texture-paint",
                                                           args.variant))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        _, raw = make_test_object(texture_size=128)
        inputs = {"vertices": raw["vertices"].astype(np.float32), "faces": raw["faces"].astype(np.int32),
                  "uv": raw["uv"][raw["faces"]].reshape(-1, 2).astype(np.float32)}
        params: dict = {"prompt": "a glazed ceramic vase with blue flowers"}
        if args.teacher == "oracle":
            params.update(teacher="oracle", oracle_mesh=str(write_object_glb(Path(tmp) / "gt.glb", raw)))
        elif args.weights != "tiny":
            params["weights"] = args.variant
        start = time.monotonic()
        _, result = run_local(JobStore(Path(tmp) / "jobs"), TexturePaintPipeline, args.preset, params, inputs, args.seed,
                              Emitter(), device=device)
    total = time.monotonic() - start
    meta = result.meta
    print(f"texture_paint, preset {args.preset}, teacher {args.teacher}, weights {args.weights} ({args.variant}), "
          f"device {device}: "
          f"{meta['views']} views of {meta['view_size']}^2, {meta['steps']} steps, {meta['faces']} faces, "
          f"texture {meta['texture_size']}^2")
    print_clock("phase", meta["seconds"], total)
    print(f"denoiser calls {meta['evaluations']}")
    print_peak_memory(device)


if __name__ == "__main__":
    main()
