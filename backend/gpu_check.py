"""``splatsmith doctor --gpu-check``: every CUDA path of the backend in one run, each with its
time, so that the first GPU the project gets validates them all:

1. gsplat: probe (compiles its kernels on first use), then a 512x512 render of 100k Gaussians,
   forward and backward;
2. nvdiffrast: rasterisation and ``linear-mipmap-linear`` texture sampling of a mesh, forward
   and backward (skipped with a sentence when nvdiffrast is not installed);
3. one SDS step in fp16 with random-weight teachers of the real architectures (Stable
   Diffusion 2.1 base at 512x512, Zero-1-to-3 XL at 256x256), gradients finite;
4. DreamGaussian's ``default`` preset in image mode with those teachers, to the GLB.

Random weights measure the real compute without downloads (``guidance.tiny.real_size_overrides``).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable

import torch


def _timed(fn: Callable[[], str]) -> tuple[bool, str, float]:
    torch.cuda.synchronize()
    start = time.perf_counter()
    try:
        detail = fn()
        ok = True
    except Exception as exc:  # noqa: BLE001 - each check reports its own failure
        detail, ok = f"{type(exc).__name__}: {str(exc)[:300]}", False
    torch.cuda.synchronize()
    return ok, detail, time.perf_counter() - start


def _gsplat() -> str:
    from .cameras import orbit_cameras
    from .render.gaussians import GaussianModel, probe_gsplat, render

    reason = probe_gsplat("cuda")
    if reason:
        raise RuntimeError(reason)
    model = GaussianModel.init_sphere(100_000, 0.5, 0.1, 0, torch.Generator().manual_seed(0)).to("cuda")
    for p in model.params.values():
        p.requires_grad_(True)
    out = render(model, orbit_cameras(0.0, 0.0, 2.0, 49.1, 512, 512), backend="gsplat")
    out.rgb.sum().backward()
    if not torch.isfinite(model.params["means"].grad).all():
        raise RuntimeError("non-finite gradient")
    return "100k Gaussians, 512x512, forward + backward"


def _nvdiffrast() -> str:
    import trimesh

    from .cameras import orbit_cameras
    from .render.mesh import TexturedMesh, nvdiffrast_available, render_mesh

    if not nvdiffrast_available("cuda"):
        raise RuntimeError("nvdiffrast is not installed (see README: pip install --no-build-isolation ...)")
    sphere = trimesh.creation.icosphere(5, 0.5)
    v = torch.as_tensor(sphere.vertices, dtype=torch.float32, device="cuda")
    f = torch.as_tensor(sphere.faces, dtype=torch.int64, device="cuda")
    uv = torch.rand(len(f), 3, 2, device="cuda")
    texture = torch.rand(1024, 1024, 3, device="cuda", requires_grad=True)
    out = render_mesh(TexturedMesh(v, f, uv, texture), orbit_cameras(0.0, 0.0, 2.0, 49.1, 512, 512),
                      backend="nvdiffrast", texture_filter="linear-mipmap-linear")
    out.rgb.sum().backward()
    if not torch.isfinite(texture.grad).all():
        raise RuntimeError("non-finite gradient")
    return f"{len(f)} faces, 512x512, mipmapped 1024^2 texture, forward + backward"


def _sds(kind: str, size: int) -> Callable[[], str]:
    def run() -> str:
        from .cameras import orbit_cameras
        from .guidance import load_teacher

        teacher = load_teacher(kind, "default", "cuda", fp16=True)
        if kind == "zero123":
            teacher.encode_condition(image=torch.rand(1, 3, 256, 256, device="cuda"), elevation=0.0, azimuth=0.0,
                                     radius=2.0)
        else:
            teacher.encode_condition(prompt="a ceramic teapot")
        images = torch.rand(1, 3, size, size, device="cuda", requires_grad=True)
        out = teacher.sds(images, orbit_cameras(10.0, 30.0, 2.0, 49.1, size, size), 500)
        out.loss.backward()
        if not torch.isfinite(images.grad).all():
            raise RuntimeError("non-finite gradient")
        return f"one fp16 SDS step at {size}x{size}, gradients finite"
    return run


def _dreamgaussian() -> str:
    from .images import demo_photo
    from .jobs import JobStore
    from .pipelines.base import Emitter
    from .pipelines.dreamgaussian import DreamGaussianPipeline
    from .worker import run_local

    rgb, mask = demo_photo()
    with tempfile.TemporaryDirectory() as tmp:
        job, result = run_local(JobStore(Path(tmp)), DreamGaussianPipeline, "default", {"mode": "image"},
                                {"image": rgb, "mask": mask}, 0, Emitter(), "cuda")
        size = (job.dir / "asset.glb").stat().st_size
    return f"default preset to the GLB ({result.meta['faces']} faces, {size / 2**20:.1f} MiB)"


def run_gpu_check(report: Callable[[str, bool, str, float], None]) -> bool:
    """Run every check; ``report(name, ok, detail, seconds)`` after each. Returns whether all
    passed.

    Raises:
        RuntimeError: no CUDA device.
    """
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA GPU here: the GPU check needs one")
    from .guidance.tiny import real_size_overrides
    from .models import model_overrides, set_model_overrides, splatsmith_cache_dir

    set_model_overrides({**model_overrides(), **real_size_overrides(splatsmith_cache_dir() / "gpu-check")})
    checks = [("gsplat", _gsplat), ("nvdiffrast", _nvdiffrast),
              ("SDS Stable Diffusion", _sds("stable-diffusion", 512)), ("SDS Zero-1-to-3", _sds("zero123", 256)),
              ("DreamGaussian default", _dreamgaussian)]
    passed = True
    for name, fn in checks:
        ok, detail, seconds = _timed(fn)
        report(name, ok, detail, seconds)
        passed &= ok
    return passed
