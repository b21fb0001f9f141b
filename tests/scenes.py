"""Test objects and datasets built in code: a textured, concave object and its multi-view
renders by the project's own mesh renderer, written as a NeRF-synthetic dataset."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import trimesh
from PIL import Image

from backend.cameras import Cameras, orbit_cameras, save_transforms_json
from backend.geometry.export import texture_to_uint8, write_glb
from backend.geometry.uv import unwrap
from backend.render.mesh import TexturedMesh, interpolate, rasterize_uv, render_mesh


def procedural_color(p: torch.Tensor) -> torch.Tensor:
    """A non-trivial colour field on 3D points [N, 3] -> [N, 3] in [0, 1]: smooth colour
    waves along each axis, plus a dark stripe band."""
    r = 0.55 + 0.35 * torch.sin(7.0 * p[:, 0] + 1.0)
    g = 0.50 + 0.35 * torch.sin(6.0 * p[:, 1] + 2.0 * p[:, 2])
    b = 0.50 + 0.35 * torch.cos(5.0 * p[:, 2] - 3.0 * p[:, 0])
    stripe = (torch.sin(9.0 * p[:, 1]) > 0.85).float()
    return torch.stack([r, g, b], -1) * (1.0 - 0.6 * stripe[:, None])


#: The test object's atlas per texture size, made once per process: xatlas takes seconds on it
#: (the same input gives the same atlas), and many tests build the object.
_ATLASES: dict[int, object] = {}


def _unwrapped(vertices, faces, texture_size: int):
    if texture_size not in _ATLASES:
        # time_limit: a ceiling against hangs, far above a loaded run (not the product's default).
        _ATLASES[texture_size] = unwrap(vertices, faces, resolution=texture_size, padding=4, time_limit=1800.0)
    uvm = _ATLASES[texture_size]
    return type(uvm)(**{k: v.copy() if isinstance(v, np.ndarray) else v for k, v in vars(uvm).items()})


def make_test_object(texture_size: int = 512) -> tuple[TexturedMesh, dict]:
    """A torus (concave inside its hole) standing on a slab with a notch, about 1.1 m wide,
    centred near the origin, UV-unwrapped with a procedural colour texture.

    Returns (mesh with per-corner UVs and texture, raw arrays for GLB export)."""
    torus = trimesh.creation.torus(major_radius=0.32, minor_radius=0.13, major_sections=48, minor_sections=24)
    torus.apply_transform(trimesh.transformations.rotation_matrix(math.pi / 2, [1, 0, 0]))  # ring faces +Z
    torus.apply_translation([0.0, 0.12, 0.0])
    slab = trimesh.creation.box(extents=[0.9, 0.14, 0.5])
    slab.apply_translation([0.0, -0.38, 0.0])
    block = trimesh.creation.box(extents=[0.18, 0.3, 0.18])
    block.apply_translation([0.32, -0.17, 0.12])
    mesh = trimesh.util.concatenate([torus, slab, block])
    mesh = mesh.subdivide_to_size(0.06)
    uvm = _unwrapped(mesh.vertices, mesh.faces, texture_size)
    verts = torch.from_numpy(uvm.vertices)
    faces = torch.from_numpy(uvm.faces)
    corner_uv = torch.from_numpy(uvm.corner_uv)
    rast = rasterize_uv(corner_uv, texture_size)
    pos = interpolate(verts, faces, rast)[0]
    texture = procedural_color(pos.reshape(-1, 3)).reshape(texture_size, texture_size, 3)
    # Texels outside every chart get the colour of their nearest chart texel (as a baker would).
    from backend.geometry.uv import fill_empty_texels
    tex = fill_empty_texels(texture.numpy(), rast.mask[0].numpy())
    tex_t = torch.from_numpy(np.ascontiguousarray(tex)).float().clamp(0, 1)
    textured = TexturedMesh(verts, faces, corner_uv, tex_t)
    raw = {"vertices": uvm.vertices, "faces": uvm.faces, "uv": uvm.uv, "texture": texture_to_uint8(tex_t)}
    return textured, raw


def make_simple_object(kind: str, texture_size: int = 512) -> tuple[TexturedMesh, dict]:
    """Two more textured objects for checks beyond the test object: ``"capsule"`` (lying along Z)
    or ``"boxball"`` (a ball resting on a box), unwrapped, with the procedural colour field
    (scaled and shifted so it differs from the test object's). Returns as :func:`make_test_object`."""
    if kind == "capsule":
        mesh = trimesh.creation.capsule(height=0.6, radius=0.25, count=[32, 32])
        mesh.apply_transform(trimesh.transformations.rotation_matrix(math.pi / 2, [1, 0, 0]))
    elif kind == "boxball":
        ball = trimesh.creation.icosphere(3, 0.22)
        ball.apply_translation([0, 0.3, 0])
        mesh = trimesh.util.concatenate([trimesh.creation.box(extents=[0.6, 0.4, 0.4]), ball])
    else:
        raise ValueError(f"unknown object {kind!r}; use capsule or boxball")
    mesh = mesh.subdivide_to_size(0.05)
    uvm = unwrap(mesh.vertices, mesh.faces, resolution=texture_size, padding=4, time_limit=1800.0)
    verts, faces, corner_uv = torch.from_numpy(uvm.vertices), torch.from_numpy(uvm.faces), torch.from_numpy(uvm.corner_uv)
    rast = rasterize_uv(corner_uv, texture_size)
    pos = interpolate(verts, faces, rast)[0]
    texture = procedural_color(pos.reshape(-1, 3) * 1.3 + 0.2).reshape(texture_size, texture_size, 3)
    from backend.geometry.uv import fill_empty_texels
    tex = torch.from_numpy(np.ascontiguousarray(fill_empty_texels(texture.numpy(), rast.mask[0].numpy()))).float().clamp(0, 1)
    raw = {"vertices": uvm.vertices, "faces": uvm.faces, "uv": uvm.uv, "texture": texture_to_uint8(tex)}
    return TexturedMesh(verts, faces, corner_uv, tex), raw


def spiral_views(n: int, radius: float = 1.8, fovy: float = 49.1, size: int = 128, seed: int = 0) -> Cameras:
    """``n`` cameras spread over the sphere (golden-angle azimuths, elevations in [-25, 55])."""
    golden = math.degrees(math.pi * (3.0 - math.sqrt(5.0)))
    rng = np.random.default_rng(seed)
    az = (np.arange(n) * golden + rng.uniform(0, 10)) % 360.0 - 180.0
    el = np.linspace(-25.0, 55.0, n)
    rng.shuffle(el)
    return orbit_cameras(torch.tensor(el, dtype=torch.float32), torch.tensor(az, dtype=torch.float32), radius, fovy, size, size)


def render_rgba(mesh: TexturedMesh, cameras: Cameras) -> np.ndarray:
    """uint8 [C, H, W, 4] renders (straight alpha) of the mesh."""
    with torch.no_grad():
        out = render_mesh(mesh, cameras, background=0.0)
    rgba = torch.cat([out.rgb, out.alpha], -1)
    return texture_to_uint8(rgba)


def write_dataset(root: Path, mesh: TexturedMesh, cameras: Cameras, indices) -> Path:
    """Write views ``indices`` as a NeRF-synthetic dataset (PNG + transforms.json). Returns
    the transforms.json path."""
    root.mkdir(parents=True, exist_ok=True)
    images = render_rgba(mesh, cameras)
    names = []
    for i in indices:
        name = f"r_{i:03d}"
        Image.fromarray(images[i]).save(root / f"{name}.png")
        names.append(f"./{name}")
    save_transforms_json(root / "transforms.json", cameras[list(indices)], names)
    return root / "transforms.json"


def write_object_glb(path: Path, raw: dict) -> Path:
    return write_glb(path, raw["vertices"], raw["faces"], raw["uv"], raw["texture"], name="test_object")


def held_out_scores(mesh: TexturedMesh, radius: float, gaussians=None, textured: TexturedMesh | None = None,
                    views: int = 8, size: int = 128) -> dict:
    """Mask IoU and PSNR (over white) of Gaussians and/or a textured mesh against ``mesh`` from
    ``views`` held-out cameras (elevations in [-25, 25], any azimuth, seed 5, fovy 49.1) at
    ``radius``. Keys: ``gaussian_iou``, ``gaussian_psnr``, ``mesh_iou``, ``mesh_psnr`` (those
    given)."""
    from backend.stages.reconstruction import psnr
    from backend.render.gaussians import render

    g = torch.Generator().manual_seed(5)
    el = torch.empty(views).uniform_(-25, 25, generator=g)
    az = torch.empty(views).uniform_(-180, 180, generator=g)
    cams = orbit_cameras(el, az, radius, 49.1, size, size)
    gt = torch.from_numpy(render_rgba(mesh, cams)).float() / 255.0
    gt_rgb = gt[..., :3] * gt[..., 3:] + (1.0 - gt[..., 3:])

    def iou(a, b):
        return float((a & b).sum()) / float((a | b).sum())
    scores = {}
    with torch.no_grad():
        if gaussians is not None:
            splats = render(gaussians, cams.to(gaussians.device), background=1.0)
            alpha, rgb = splats.alpha.cpu(), splats.rgb.cpu()
            scores.update(gaussian_iou=iou(alpha[..., 0] > 0.5, gt[..., 3] > 0.5), gaussian_psnr=psnr(rgb, gt_rgb))
        if textured is not None:
            out = render_mesh(textured, cams, background=1.0)
            scores.update(mesh_iou=iou(out.alpha[..., 0] > 0.5, gt[..., 3] > 0.5), mesh_psnr=psnr(out.rgb, gt_rgb))
    return scores


def load_asset(job_dir: Path) -> TexturedMesh:
    """A job's ``asset.glb`` moved back into the job's own frame (the one its cameras and the
    oracle's truth live in): ``stages.asset_output`` placed it (placed = x scale + offset,
    ``result.json``'s ``meta["output"]``), so held-out views compare like with like."""
    import json

    from backend.geometry.export import load_glb

    mesh = load_glb(Path(job_dir) / "asset.glb")
    output = json.loads((Path(job_dir) / "result.json").read_text())["meta"]["output"]
    offset = torch.tensor(output["offset"], dtype=mesh.vertices.dtype)
    return TexturedMesh((mesh.vertices - offset) / output["scale"], mesh.faces, mesh.uv, mesh.texture)
